-- op_hash(): equal exactly when the jsonb values are equal, ignore drops
-- top-level keys only, and the canonical encoding is pinned.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SELECT plan(50);

CREATE FUNCTION pg_temp.same(a jsonb, b jsonb, ignore text[] DEFAULT NULL) RETURNS boolean
LANGUAGE sql AS $$ SELECT op_hash(a, ignore) = op_hash(b, ignore) $$;

-- equal values hash alike
SELECT ok(pg_temp.same('{"a": 1, "b": 2}', '{"b": 2, "a": 1}'), 'key order does not matter');
SELECT ok(pg_temp.same('1.0', '1'), 'numeric scale does not matter: 1.0 and 1');
SELECT ok(pg_temp.same('1e2', '100'), 'exponent notation: 1e2 and 100');
SELECT ok(pg_temp.same('0.00001', '1e-5'), 'negative exponent: 1e-5 and 0.00001');
SELECT ok(pg_temp.same('-0.0', '0'), 'zero with a sign and a scale is zero');
SELECT ok(pg_temp.same('[1.50, {"x": 2.000}]', '[1.5, {"x": 2}]'), 'scale inside arrays and objects');
SELECT ok(pg_temp.same('{"o": {"z": [1, {"q": 1, "p": 2}], "y": null}}',
					   '{"o": {"y": null, "z": [1.0, {"p": 2, "q": 1}]}}'),
	'key order and scale inside nested objects');
SELECT ok(pg_temp.same('{"a": 1, "a": 2}', '{"a": 2}'), 'a duplicate key keeps the last value, as jsonb does');
SELECT ok(pg_temp.same('"\u0041\n"', '"A\n"'), 'an escaped and a literal character are the same string');
SELECT ok(pg_temp.same('{ "a" : [ 1 , 2 ] }', '{"a":[1,2]}'), 'whitespace does not matter');

-- different values differ
SELECT ok(NOT pg_temp.same('[1, 2]', '[2, 1]'), 'array order matters');
SELECT ok(NOT pg_temp.same('"1"', '1'), 'a string is not a number');
SELECT ok(NOT pg_temp.same('{"a": null}', '{}'), 'a null member is not a missing key');
SELECT ok(NOT pg_temp.same('null', '"null"'), 'null is not the string "null"');
SELECT ok(NOT pg_temp.same('true', '"true"'), 'true is not the string "true"');
SELECT ok(NOT pg_temp.same('true', 'false'), 'true is not false');
SELECT ok(NOT pg_temp.same('1', '[1]'), 'a raw scalar is not a one-element array');
SELECT ok(NOT pg_temp.same('[[1]]', '[1]'), 'nesting depth matters');
SELECT ok(NOT pg_temp.same('["ab", "c"]', '["a", "bc"]'), 'string boundaries matter');
SELECT ok(NOT pg_temp.same('{"ab": "c"}', '{"a": "bc"}'), 'key and value boundaries matter');
SELECT ok(NOT pg_temp.same('{"a": "b"}', '["a", "b"]'), 'an object is not an array of its key and value');
SELECT ok(NOT pg_temp.same('[{}]', '[[]]'), 'an empty object is not an empty array');
SELECT ok(NOT pg_temp.same('[[], []]', '[[[]]]'), 'sibling containers are not nested ones');
SELECT ok(NOT pg_temp.same('{"a": {"b": 1}, "c": 2}', '{"a": {"b": 1, "c": 2}}'),
	'which object a key belongs to matters');
SELECT ok(NOT pg_temp.same('""', '[]'), 'an empty string is not an empty array');
SELECT ok(NOT pg_temp.same('0', '0.000000000000000000001'), 'a tiny difference in a number counts');

-- ignore
SELECT ok(pg_temp.same('{"a": 1, "ts": "2030-01-01"}', '{"a": 1, "ts": "2031-06-30"}', '{ts}'),
	'an ignored top-level key does not count');
SELECT is(op_hash('{"a": 1, "ts": 5, "rid": "x"}', '{ts,rid}'), op_hash('{"a": 1}'),
	'ignoring keys equals leaving them out');
SELECT ok(NOT pg_temp.same('{"a": {"ts": 1}}', '{"a": {"ts": 2}}', '{ts}'),
	'a nested key of an ignored name still counts');
SELECT is(op_hash('{"a": {"ts": 1}}', '{ts}'), op_hash('{"a": {"ts": 1}}'),
	'ignore leaves nested keys in place');
SELECT is(op_hash('{"a": 1}', '{missing}'), op_hash('{"a": 1}'), 'ignoring a missing key is harmless');
SELECT is(op_hash('{"a": 1, "ts": 2}', ARRAY[NULL, 'ts', NULL]), op_hash('{"a": 1}'),
	'NULL elements of ignore are skipped');
SELECT is(op_hash('{"a": 1}', ARRAY[NULL]::text[]), op_hash('{"a": 1}'), 'an ignore of only NULL ignores nothing');
SELECT is(op_hash('{"a": 1}', '{}'), op_hash('{"a": 1}'), 'an empty ignore ignores nothing');
SELECT is(op_hash('{"a": 1}', NULL), op_hash('{"a": 1}'), 'a NULL ignore ignores nothing');
SELECT is(op_hash('{"a": 1, "b": 2}', '{a,b}'), op_hash('{}'), 'ignoring every key leaves the empty object');
SELECT is(op_hash('["ts", {"ts": 1}]', '{ts}'), op_hash('["ts", {"ts": 1}]'),
	'ignore does not touch arrays or their elements');
SELECT is(op_hash('"ts"', '{ts}'), op_hash('"ts"'), 'ignore does not touch a scalar');
SELECT ok(NOT pg_temp.same('{"TS": 1}', '{"TS": 2}', '{ts}'), 'ignore is case sensitive');
SELECT ok(NOT pg_temp.same('{"a": 1}', '{"a": 1, "ts": 2}', '{t}'), 'ignore matches whole key names');

SELECT is(op_hash(NULL), NULL, 'NULL args give NULL');
SELECT throws_ok($$SELECT op_hash('{"a": 1}', '{{a},{b}}')$$, '22023', NULL,
	'a multi-dimensional ignore is rejected');

-- The fingerprint of one fixed value.  Stored operations keep the op_hash
-- of their first claim: if this value changes, every stored fingerprint
-- stops matching its key and retries raise AR001.  Changing the encoding
-- needs an upgrade that rehashes stored rows.
SELECT is(encode(op_hash('{"b": [1, 2.50, "x", null, true, false, {"c": {}}], "a": "é"}'), 'hex'),
	'66fa959f8e852cc6ef1b8f34f96223377220fabd7c85d2ce21becc9ef29e657f',
	'the fingerprint of a fixed value is pinned');
-- the same value from the encoding written out byte by byte: tag, 4-byte
-- big-endian length and bytes for keys, strings and normalised numbers
SELECT is(op_hash('{"b": [1, 2.50, "x", null, true, false, {"c": {}}], "a": "é"}'),
	sha256('\x7b'::bytea
		   || 'k'::bytea || '\x00000001'::bytea || 'a'::bytea
		   || 's'::bytea || '\x00000002'::bytea || '\xc3a9'::bytea
		   || 'k'::bytea || '\x00000001'::bytea || 'b'::bytea
		   || '['::bytea
		   || 'n'::bytea || '\x00000001'::bytea || '1'::bytea
		   || 'n'::bytea || '\x00000003'::bytea || '2.5'::bytea
		   || 's'::bytea || '\x00000001'::bytea || 'x'::bytea
		   || 'z'::bytea || 't'::bytea || 'f'::bytea
		   || '\x7b'::bytea || 'k'::bytea || '\x00000001'::bytea || 'c'::bytea || '\x7b7d'::bytea
		   || '\x7d'::bytea
		   || ']'::bytea
		   || '\x7d'::bytea),
	'the pinned fingerprint is SHA-256 of the documented canonical encoding');

-- A generated set of 300 values: numbers in several spellings, strings,
-- one-element arrays, objects with keys in either order and scaled
-- numbers, nested objects, string boundaries, empty containers, nulls.
-- Many pairs are equal as jsonb while written differently.
CREATE TEMP TABLE gen ON COMMIT DROP AS
SELECT i, v, op_hash(v) AS h
FROM generate_series(0, 299) AS i,
LATERAL (SELECT i / 12 AS j) AS n,
LATERAL (SELECT CASE i % 12
	WHEN 0 THEN to_jsonb(j % 20)
	WHEN 1 THEN ((j * 7 % 20)::text || '.0')::jsonb
	WHEN 2 THEN to_jsonb((j % 20)::text)
	WHEN 3 THEN format('[%s]', j % 20)::jsonb
	WHEN 4 THEN format('{"a": %s, "b": [%s, "%s"]}', j % 5, j % 3, j % 2)::jsonb
	WHEN 5 THEN format('{"b": [%s.00, "%s"], "a": %se0}', (j + 1) % 3, j % 2, j % 5)::jsonb
	WHEN 6 THEN format('{"a": {"a": %s, "b": "%s"}}', j % 4, j % 3)::jsonb
	WHEN 7 THEN format('[["%s", "%s"]]', repeat('a', j % 3), repeat('a', j / 3 % 4))::jsonb
	WHEN 8 THEN (ARRAY['null', 'true', 'false', '{}', '[]', '""', '[null]', '{"": null}',
					   '[{}]', '[[]]'])[j % 10 + 1]::jsonb
	WHEN 9 THEN format('{"k%s": %s}', j % 2,
					   (ARRAY['null', '"null"', '0', 'false', '[]', '{}'])[j / 2 % 6 + 1])::jsonb
	WHEN 10 THEN format('[%s, %s]', j % 3, j / 3 % 3)::jsonb
	ELSE format('%se%s', j % 7, j % 3 - 1)::jsonb
	END AS v) AS x;

SELECT is((SELECT count(*) FROM gen WHERE octet_length(h) = 32), 300::bigint,
	'every fingerprint is 32 bytes');
SELECT is_empty(
	$$SELECT a.v, b.v FROM gen a, gen b WHERE (a.h = b.h) <> (a.v = b.v)$$,
	'over all 90000 pairs of the generated set: equal fingerprints exactly when equal jsonb');
SELECT is((SELECT count(DISTINCT h) FROM gen), (SELECT count(DISTINCT v) FROM gen),
	'as many distinct fingerprints as distinct values');
-- the set must exercise both directions, or the property above is vacuous
SELECT is((SELECT count(*) FROM gen a, gen b WHERE a.i < b.i AND a.v = b.v AND a.v::text <> b.v::text),
	74::bigint, 'the generated set has 74 pairs equal as jsonb but written differently');
SELECT is((SELECT count(DISTINCT v) FROM gen), 156::bigint, 'the generated set has 156 distinct values');
SELECT is_empty(
	$$SELECT a.v, b.v FROM gen a, gen b
	  WHERE (op_hash(a.v, '{a}') = op_hash(b.v, '{a}')) <> ((a.v - 'a') = (b.v - 'a'))
		AND jsonb_typeof(a.v) = 'object' AND jsonb_typeof(b.v) = 'object'$$,
	'over all pairs of generated objects: ignoring a key is the same as removing it');

SELECT * FROM finish();
ROLLBACK;
