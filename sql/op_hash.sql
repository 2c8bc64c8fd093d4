--
-- op_hash(): the operation fingerprint
--
-- Equal exactly when the jsonb values are equal.  The fingerprints of
-- fixed values are printed on purpose: they are stored in operations.op_hash
-- and must never change between versions.
--
SELECT provolatile, proparallel, proisstrict
FROM pg_proc WHERE oid = 'agentretry.op_hash(jsonb, text[])'::regprocedure;

SELECT octet_length(agentretry.op_hash('{}')) AS bytes;
SELECT encode(agentretry.op_hash('{}'), 'hex') AS empty_object;
SELECT encode(agentretry.op_hash('[]'), 'hex') AS empty_array;
SELECT encode(agentretry.op_hash('{"a": 1}'), 'hex') AS a_1;
SELECT encode(agentretry.op_hash('{"to": "ann", "amount": 10.50, "tags": ["x", null, true]}'), 'hex') AS mixed;

-- every pair: jsonb equality and fingerprint equality agree
-- (kept as text so the output shows the values as written)
CREATE TEMP TABLE pairs (a text, b text);
INSERT INTO pairs VALUES
	('{"a": 1, "b": 2}', '{"b": 2, "a": 1}'),
	('{"a": {"x": 1, "y": [1, 2]}}', '{"a": {"y": [1, 2], "x": 1}}'),
	('1', '1.0'),
	('1.50', '1.5'),
	('100', '1e2'),
	('0.010', '1e-2'),
	('0', '-0'),
	('0', '0.000'),
	('123456789012345678901234567890', '123456789012345678901234567890.000'),
	('{"a": 1, "a": 2}', '{"a": 2}'),
	('"\u0041"', '"A"'),
	('{"n": 1.0}', '{"n": 1}'),
	('1', '[1]'),
	('"a"', '["a"]'),
	('{}', '[]'),
	('[]', '[[]]'),
	('null', '"null"'),
	('true', '"true"'),
	('1', '"1"'),
	('""', 'null'),
	('{"a": null}', '{}'),
	('{"a": []}', '{"a": {}}'),
	('[1, 2]', '[2, 1]'),
	('[[1], 2]', '[1, [2]]'),
	('["ab", "c"]', '["a", "bc"]'),
	('{"a": "bc"}', '{"ab": "c"}'),
	('{"a": 1}', '{"A": 1}'),
	('[1, 2, 3]', '[1, 2]'),
	('true', 'false'),
	('1', '1.0000000000000000000001');
SELECT a, b, a::jsonb = b::jsonb AS jsonb_equal,
	agentretry.op_hash(a::jsonb) = agentretry.op_hash(b::jsonb) AS hash_equal
FROM pairs;
SELECT count(*) AS disagreements FROM pairs
WHERE (a::jsonb = b::jsonb) IS DISTINCT FROM
	(agentretry.op_hash(a::jsonb) = agentretry.op_hash(b::jsonb));

-- nesting depth counts
SELECT agentretry.op_hash((repeat('[', 100) || repeat(']', 100))::jsonb) =
	agentretry.op_hash((repeat('[', 99) || repeat(']', 99))::jsonb) AS same_depth;

-- NULL in, NULL out
SELECT agentretry.op_hash(NULL) IS NULL AS null_args,
	agentretry.op_hash(NULL, '{ts}') IS NULL AS null_args_with_ignore;

--
-- ignore: top-level keys left out of the fingerprint
--
SELECT agentretry.op_hash('{"a": 1, "ts": "2024-01-01"}', '{ts}') =
	agentretry.op_hash('{"a": 1}') AS dropped;
SELECT agentretry.op_hash('{"a": 1, "ts": 1, "req": "r-9"}', '{ts,req}') =
	agentretry.op_hash('{"a": 1, "ts": 2, "req": "r-10"}', ARRAY['req', 'ts']) AS dropped_both;
SELECT agentretry.op_hash('{"ts": 1}', '{ts}') = agentretry.op_hash('{}') AS all_dropped;
-- only top-level keys: nested ones and values stay in
SELECT agentretry.op_hash('{"a": {"ts": 1}}', '{ts}') =
	agentretry.op_hash('{"a": {"ts": 1}}') AS nested_kept,
	agentretry.op_hash('{"a": {"ts": 1}}', '{ts}') =
	agentretry.op_hash('{"a": {}}') AS nested_dropped;
SELECT agentretry.op_hash('{"a": "ts"}', '{ts}') = agentretry.op_hash('{"a": "ts"}') AS value_kept;
SELECT agentretry.op_hash('["ts"]', '{ts}') = agentretry.op_hash('["ts"]') AS array_element_kept;
-- the remaining keys still matter, and names are case-sensitive
SELECT agentretry.op_hash('{"a": 1, "ts": 1}', '{ts}') =
	agentretry.op_hash('{"a": 2, "ts": 1}', '{ts}') AS other_key_differs;
SELECT agentretry.op_hash('{"a": 1, "ts": 1}', '{TS}') =
	agentretry.op_hash('{"a": 1}') AS case_sensitive;
-- an ignored key is not the same as a key with another name
SELECT agentretry.op_hash('{"a": 1, "ts": 1}', '{ts}') =
	agentretry.op_hash('{"a": 1, "tt": 1}', '{ts}') AS other_name_kept;
-- no-ops: NULL, empty, absent keys, NULL elements
SELECT agentretry.op_hash('{"a": 1}', NULL) = agentretry.op_hash('{"a": 1}') AS null_ignore,
	agentretry.op_hash('{"a": 1}', '{}') = agentretry.op_hash('{"a": 1}') AS empty_ignore,
	agentretry.op_hash('{"a": 1}', '{zz}') = agentretry.op_hash('{"a": 1}') AS absent_key,
	agentretry.op_hash('{"a": 1, "b": 2}', ARRAY[NULL, 'b']) =
	agentretry.op_hash('{"a": 1}') AS null_element;
-- ignore must be one-dimensional
SELECT expect_error($$SELECT agentretry.op_hash('{"a": 1}', '{{a}, {b}}')$$);

-- A value nested too deeply for the stack is refused with 54001, like
-- PostgreSQL's own functions, and never takes the server down: 50 000
-- levels parse with a larger stack limit, and fingerprinting them must
-- stop at the limit too (by op_hash, and by claim, which stores nothing).
SET max_stack_depth = '7MB';
CREATE TEMP TABLE deep AS
	SELECT (repeat('[', 50000) || repeat(']', 50000))::jsonb AS v;
SELECT expect_error($$SELECT agentretry.op_hash(v) FROM deep$$);
SELECT expect_error($$SELECT (agentretry.claim('deep-1', v)).outcome FROM deep$$);
SELECT count(*) AS stored FROM agentretry.operations WHERE key = 'deep-1';
RESET max_stack_depth;
-- a value just under the default limit still hashes
SELECT length(agentretry.op_hash((repeat('[', 5000) || repeat(']', 5000))::jsonb)) AS bytes;
DROP TABLE deep;
