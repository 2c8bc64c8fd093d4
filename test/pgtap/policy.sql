-- register_tool(): validation, replacement; tier_defaults(); privileges of
-- PUBLIC and the three roles; SECURITY DEFINER functions pin search_path.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SELECT plan(75);

SELECT results_eq(
	$$SELECT name, idempotency, side_effect, max_attempts, base_delay, max_delay, multiplier, jitter,
			 deadline, lease, ttl, compensate_tool, requires_approval
	  FROM register_tool('tap_t', 'non_idempotent', 'write', 3, '2 seconds', '1 minute', 1.5,
						 'equal', '1 hour', '45 seconds', '2 days', 'tap_undo', true)$$,
	$$VALUES ('tap_t', 'non_idempotent'::idempotency_class, 'write'::side_effect_class, 3,
			  interval '2 seconds', interval '1 minute', 1.5::float8, 'equal'::jitter_mode,
			  interval '1 hour', interval '45 seconds', interval '2 days', 'tap_undo', true)$$,
	'register_tool returns the registered row');
SELECT results_eq(
	$$SELECT name, idempotency, side_effect, max_attempts, base_delay, max_delay, multiplier, jitter,
			 deadline, lease, ttl, compensate_tool, requires_approval
	  FROM tools WHERE name = 'tap_t'$$,
	$$VALUES ('tap_t', 'non_idempotent'::idempotency_class, 'write'::side_effect_class, 3,
			  interval '2 seconds', interval '1 minute', 1.5::float8, 'equal'::jitter_mode,
			  interval '1 hour', interval '45 seconds', interval '2 days', 'tap_undo', true)$$,
	'the tool is stored as given');

-- every rejected call below must leave the registry exactly as it is now
CREATE TEMP TABLE tools_before ON COMMIT DROP AS SELECT * FROM tools;
CREATE FUNCTION pg_temp.registry_unchanged(what text) RETURNS text
LANGUAGE sql AS $$
	SELECT set_eq('SELECT * FROM agentretry.tools', 'SELECT * FROM tools_before',
				  'a rejected ' || what || ' changes nothing')
$$;

SELECT throws_ok($$SELECT register_tool(NULL, 'idempotent', 'read')$$, '22004', NULL, 'NULL name');
SELECT pg_temp.registry_unchanged('NULL name');
SELECT throws_ok($$SELECT register_tool('tap_t', NULL, 'read')$$, '22004', NULL, 'NULL idempotency');
SELECT pg_temp.registry_unchanged('NULL idempotency');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', NULL)$$, '22004', NULL, 'NULL side_effect');
SELECT pg_temp.registry_unchanged('NULL side_effect');
SELECT throws_ok($$SELECT register_tool('', 'idempotent', 'read')$$, '22023', NULL, 'empty name');
SELECT pg_temp.registry_unchanged('empty name');
SELECT throws_ok($$SELECT register_tool(repeat('x', 129), 'idempotent', 'read')$$, '22023', NULL,
	'a name of 129 bytes');
SELECT pg_temp.registry_unchanged('name of 129 bytes');
SELECT throws_ok($$SELECT register_tool(repeat('é', 65), 'idempotent', 'read')$$, '22023', NULL,
	'a name of 65 two-byte characters (130 bytes)');
SELECT pg_temp.registry_unchanged('name of 130 bytes');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', max_attempts => 0)$$, '22023', NULL,
	'max_attempts 0');
SELECT pg_temp.registry_unchanged('max_attempts 0');
SELECT throws_ok($$SELECT register_tool('tap_new', 'idempotent', 'read', max_attempts => -1)$$, '22023', NULL,
	'negative max_attempts');
SELECT pg_temp.registry_unchanged('negative max_attempts');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', base_delay => '-1 second')$$,
	'22023', NULL, 'negative base_delay');
SELECT pg_temp.registry_unchanged('negative base_delay');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', max_delay => '-1 second')$$,
	'22023', NULL, 'negative max_delay');
SELECT pg_temp.registry_unchanged('negative max_delay');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', base_delay => '10 seconds',
										max_delay => '9 seconds')$$,
	'22023', NULL, 'max_delay below base_delay');
SELECT pg_temp.registry_unchanged('max_delay below base_delay');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', multiplier => 0.5)$$,
	'22023', NULL, 'multiplier below 1');
SELECT pg_temp.registry_unchanged('multiplier below 1');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', multiplier => 'NaN')$$,
	'22023', NULL, 'NaN multiplier');
SELECT pg_temp.registry_unchanged('NaN multiplier');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', multiplier => 'Infinity')$$,
	'22023', NULL, 'infinite multiplier');
SELECT pg_temp.registry_unchanged('infinite multiplier');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', deadline => '0')$$,
	'22023', NULL, 'zero deadline');
SELECT pg_temp.registry_unchanged('zero deadline');
SELECT throws_ok($$SELECT register_tool('tap_new', 'idempotent', 'read', deadline => '-1 hour')$$,
	'22023', NULL, 'negative deadline');
SELECT pg_temp.registry_unchanged('negative deadline');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', lease => '0.999999 seconds')$$,
	'22023', NULL, 'lease below 1 second');
SELECT pg_temp.registry_unchanged('lease below 1 second');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', lease => '1 day 0.000001 seconds')$$,
	'22023', NULL, 'lease above 1 day');
SELECT pg_temp.registry_unchanged('lease above 1 day');
SELECT throws_ok($$SELECT register_tool('tap_t', 'idempotent', 'read', ttl => '0')$$,
	'22023', NULL, 'zero ttl');
SELECT pg_temp.registry_unchanged('zero ttl');
SELECT throws_ok($$SELECT register_tool('tap_new', 'idempotent', 'read', compensate_tool => '')$$,
	'22023', NULL, 'empty compensate_tool');
SELECT pg_temp.registry_unchanged('empty compensate_tool');
SELECT throws_ok($$SELECT register_tool('tap_new', 'idempotent', 'read', compensate_tool => repeat('x', 129))$$,
	'22023', NULL, 'compensate_tool of 129 bytes');
SELECT pg_temp.registry_unchanged('compensate_tool of 129 bytes');

-- the limits themselves are accepted
SELECT lives_ok($$
	SELECT register_tool(repeat('é', 64), 'idempotent', 'read', max_attempts => 1, base_delay => '0',
						 max_delay => '0', multiplier => 1, lease => '1 second', ttl => '0.000001 seconds',
						 deadline => '0.000001 seconds');
	SELECT register_tool(repeat('x', 128), 'idempotent', 'read', lease => '1 day',
						 compensate_tool => repeat('y', 128));
$$, 'a 128-byte name and the boundary values of every field are accepted');
SELECT is((SELECT count(*) FROM tools WHERE octet_length(name) = 128), 2::bigint,
	'both boundary tools are registered');

-- re-register replaces the whole definition: fields not given fall back to
-- NULL (the tier default), they are not merged with the old ones
CREATE TEMP TABLE first_reg ON COMMIT DROP AS SELECT created_at, updated_at FROM tools WHERE name = 'tap_t';
SELECT results_eq(
	$$SELECT name, idempotency, side_effect, max_attempts, base_delay, max_delay, multiplier, jitter,
			 deadline, lease, ttl, compensate_tool, requires_approval
	  FROM register_tool('tap_t', 'idempotent', 'read', max_attempts => 9)$$,
	$$VALUES ('tap_t', 'idempotent'::idempotency_class, 'read'::side_effect_class, 9,
			  NULL::interval, NULL::interval, NULL::float8, NULL::jitter_mode,
			  NULL::interval, NULL::interval, NULL::interval, NULL::text, NULL::boolean)$$,
	're-register returns the new definition');
SELECT results_eq(
	$$SELECT count(*), min(idempotency::text), min(max_attempts), bool_and(base_delay IS NULL AND deadline IS NULL
				 AND compensate_tool IS NULL AND requires_approval IS NULL)
	  FROM tools WHERE name = 'tap_t'$$,
	$$VALUES (1::bigint, 'idempotent', 9, true)$$,
	're-register replaces the one row of the tool');
SELECT results_eq(
	$$SELECT t.created_at = f.created_at, t.updated_at > f.updated_at FROM tools t, first_reg f
	  WHERE t.name = 'tap_t'$$,
	$$VALUES (true, true)$$,
	're-register keeps created_at and moves updated_at');

-- tier defaults
SELECT results_eq(
	$$SELECT side_effect, max_attempts, base_delay, max_delay, multiplier, jitter
	  FROM tier_defaults() WHERE side_effect <> 'destructive' ORDER BY side_effect$$,
	$$VALUES ('read'::side_effect_class, 6, interval '200 milliseconds', interval '30 seconds', 2::float8,
			  'full'::jitter_mode),
			 ('write', 2, interval '1 second', interval '30 seconds', 2, 'full')$$,
	'tier defaults of read and write');
SELECT results_eq(
	$$SELECT side_effect, max_attempts, auto_retry FROM tier_defaults() ORDER BY side_effect$$,
	$$VALUES ('read'::side_effect_class, 6, 'yes'), ('write', 2, 'once, with the same key'),
			 ('destructive', 1, 'never')$$,
	'one row per tier; destructive has one attempt and is never retried');

-- privileges
CREATE ROLE agentretry_tap_nobody NOLOGIN;
CREATE ROLE agentretry_tap_agent NOLOGIN IN ROLE agentretry_agent;
CREATE ROLE agentretry_tap_operator NOLOGIN IN ROLE agentretry_operator;
CREATE ROLE agentretry_tap_admin NOLOGIN IN ROLE agentretry_admin;

CREATE TEMP VIEW ext_functions AS
SELECT p.oid, p.proname, p.prosecdef, p.proconfig
FROM pg_proc p
	JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'agentretry';
CREATE TEMP VIEW ext_relations AS
SELECT c.oid, c.relname, c.relkind
FROM pg_class c
WHERE c.relnamespace = 'agentretry'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S');

SELECT ok((SELECT count(*) FROM ext_functions
		   WHERE proname IN ('claim', 'complete', 'fail', 'resolve', 'heartbeat', 'release', 'lookup',
							 'op_hash', 'backoff', 'decide', 'register_tool', 'tier_defaults')) = 12,
	'the function list covers the whole interface');
SELECT results_eq(
	$$SELECT proname::text COLLATE "default" FROM ext_functions WHERE has_function_privilege('agentretry_tap_nobody', oid, 'EXECUTE')$$,
	$$VALUES ('tenant_visible')$$,
	'a role with no grants (PUBLIC) can execute no agentretry function but the row level security policy');
SELECT is_empty(
	$$SELECT relname FROM ext_relations WHERE relkind <> 'S' AND has_table_privilege('agentretry_tap_nobody', oid,
		'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')$$,
	'a role with no grants has no privilege on any agentretry table');
SELECT is_empty(
	$$SELECT relname FROM ext_relations
	  WHERE CASE WHEN relkind = 'S'
				 THEN has_sequence_privilege('agentretry_tap_nobody', oid, 'USAGE, SELECT, UPDATE') END$$,
	'a role with no grants has no privilege on any agentretry sequence');
SELECT ok(NOT has_schema_privilege('agentretry_tap_nobody', 'agentretry', 'USAGE, CREATE'),
	'a role with no grants cannot use the schema');

SELECT is_empty(
	$$SELECT f FROM unnest(ARRAY['claim', 'complete', 'fail', 'resolve', 'heartbeat', 'release', 'lookup',
								 'op_hash', 'backoff', 'decide', 'tier_defaults']) f
	  WHERE NOT EXISTS (SELECT FROM ext_functions WHERE proname = f
						AND has_function_privilege('agentretry_tap_agent', oid, 'EXECUTE'))$$,
	'agentretry_agent can execute claim, complete, fail, resolve, heartbeat, release, lookup and the pure functions');
SELECT ok(NOT has_function_privilege('agentretry_tap_agent',
		  (SELECT oid FROM ext_functions WHERE proname = 'register_tool'), 'EXECUTE'),
	'agentretry_agent cannot execute register_tool');
SELECT ok(has_function_privilege('agentretry_tap_admin',
		  (SELECT oid FROM ext_functions WHERE proname = 'register_tool'), 'EXECUTE'),
	'agentretry_admin can execute register_tool');
SELECT ok(NOT has_function_privilege('agentretry_tap_operator',
		  (SELECT oid FROM ext_functions WHERE proname = 'register_tool'), 'EXECUTE'),
	'agentretry_operator cannot execute register_tool');
SELECT is_empty(
	$$SELECT relname FROM ext_relations
	  WHERE relname IN ('operations', 'events', 'tools')
		AND NOT has_table_privilege('agentretry_tap_operator', oid, 'SELECT')$$,
	'agentretry_operator can read operations, events and tools');
SELECT ok(NOT has_table_privilege('agentretry_tap_agent', 'agentretry.operations', 'SELECT')
		  AND NOT has_table_privilege('agentretry_tap_agent', 'agentretry.events', 'SELECT'),
	'agentretry_agent cannot read operations or events directly');
SELECT is_empty(
	$$SELECT r, relname FROM ext_relations,
		unnest(ARRAY['agentretry_tap_agent', 'agentretry_tap_operator', 'agentretry_tap_admin']) r
	  WHERE relkind <> 'S' AND has_table_privilege(r, oid, 'INSERT, UPDATE, DELETE, TRUNCATE')$$,
	'no agentretry role can write a table directly: state changes only through the functions');

-- the privileges hold when the roles act.  pgTAP keeps its state in temp
-- tables of the session user, so the statement runs as the role inside a
-- function and only its result (or SQLSTATE) comes back.
CREATE FUNCTION pg_temp.run_as(r text, q text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	res text;
BEGIN
	EXECUTE format('SET LOCAL ROLE %I', r);
	BEGIN
		EXECUTE q INTO res;
	EXCEPTION WHEN OTHERS THEN
		res := 'ERROR ' || SQLSTATE;
	END;
	RESET ROLE;
	RETURN res;
END
$$;

SELECT is(pg_temp.run_as('agentretry_tap_agent',
						 $q$SELECT agentretry.register_tool('tap_by_agent', 'idempotent', 'read')::text$q$),
	'ERROR 42501', 'an agent calling register_tool is refused');
SELECT is((SELECT count(*) FROM tools WHERE name = 'tap_by_agent'), 0::bigint,
	'the refused register_tool left no tool');
SELECT is(pg_temp.run_as('agentretry_tap_agent',
						 $q$SELECT (agentretry.claim('tap_priv_key', '{}', 'tap_t')).outcome::text$q$),
	'execute', 'an agent can claim');
SELECT is(pg_temp.run_as('agentretry_tap_agent', $q$SELECT count(*)::text FROM agentretry.operations$q$),
	'ERROR 42501', 'an agent cannot select from operations');
SELECT is(pg_temp.run_as('agentretry_tap_nobody', $q$SELECT agentretry.op_hash('{}')::text$q$),
	'ERROR 42501', 'a role with no grants cannot even hash');
SELECT is(pg_temp.run_as('agentretry_tap_nobody', $q$SELECT agentretry.claim('tap_nobody_key', '{}')::text$q$),
	'ERROR 42501', 'a role with no grants cannot claim');
SELECT is((SELECT count(*) FROM operations WHERE key = 'tap_nobody_key'), 0::bigint,
	'the refused claim left no operation');
SELECT is(pg_temp.run_as('agentretry_tap_admin',
						 $q$SELECT (agentretry.register_tool('tap_by_admin', 'idempotent', 'read')).name$q$),
	'tap_by_admin', 'an admin can register a tool');
SELECT is(pg_temp.run_as('agentretry_tap_admin',
						 $q$SELECT count(*)::text FROM agentretry.tools WHERE name = 'tap_by_admin'$q$),
	'1', 'an admin (an operator) can read the registry');

-- The C functions run as their caller (SECURITY INVOKER) and switch to the
-- tables' owner for their queries, pinning search_path themselves for
-- every query they run (no SET clause, which would cost a GUC assignment
-- per call); the SECURITY DEFINER PL/pgSQL ones pin it with SET.
SELECT results_eq(
	$$SELECT proname::text COLLATE "default", prosecdef, proconfig COLLATE "default" FROM ext_functions
	  WHERE proname IN ('claim', 'complete', 'fail', 'resolve', 'heartbeat', 'release', 'lookup',
						'register_tool')
	  ORDER BY proname$$,
	$$VALUES ('claim', false, NULL::text[]),
			 ('complete', false, NULL),
			 ('fail', false, NULL),
			 ('heartbeat', false, NULL),
			 ('lookup', false, NULL),
			 ('register_tool', true, ARRAY['search_path=pg_catalog, pg_temp']),
			 ('release', false, NULL),
			 ('resolve', false, NULL)$$,
	'the state-changing C functions run as their caller; register_tool is SECURITY DEFINER and pins search_path with SET');
SELECT is_empty(
	$$SELECT f.proname FROM ext_functions f JOIN pg_proc p ON p.oid = f.oid JOIN pg_language l ON l.oid = p.prolang
	  WHERE f.prosecdef AND l.lanname <> 'c'
		AND NOT EXISTS (SELECT FROM unnest(f.proconfig) c WHERE c LIKE 'search\_path=%')$$,
	'every SECURITY DEFINER function not written in C sets search_path');
SELECT is_empty(
	$$SELECT proname, c FROM ext_functions, unnest(proconfig) c
	  WHERE prosecdef AND c LIKE 'search\_path=%' AND c NOT LIKE '%pg\_temp'$$,
	'pg_temp comes last in every pinned search_path');

SELECT * FROM finish();
ROLLBACK;
