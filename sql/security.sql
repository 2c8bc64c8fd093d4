--
-- security: nothing for PUBLIC; what each agentretry role may do
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_agent, regress_ar_operator, regress_ar_admin, regress_ar_nobody;
RESET client_min_messages;
CREATE ROLE regress_ar_agent IN ROLE agentretry_agent;
CREATE ROLE regress_ar_operator IN ROLE agentretry_operator;
CREATE ROLE regress_ar_admin IN ROLE agentretry_admin;
CREATE ROLE regress_ar_nobody;

-- the roles the extension creates cannot log in
SELECT rolname, rolcanlogin, rolsuper FROM pg_roles
WHERE rolname LIKE 'agentretry\_%' ORDER BY rolname;

--
-- the catalog: grants
--
SELECT has_schema_privilege('public', 'agentretry', 'USAGE') AS public_usage;
SELECT p.oid::regprocedure AS executable_by_public
FROM pg_proc p
WHERE p.pronamespace = 'agentretry'::regnamespace
	AND has_function_privilege('public', p.oid, 'EXECUTE');
SELECT c.oid::regclass AS readable_by_public
FROM pg_class c
WHERE c.relnamespace = 'agentretry'::regnamespace
	AND c.relkind IN ('r', 'v', 'S')
	AND (has_table_privilege('public', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
		OR (c.relkind = 'S' AND has_sequence_privilege('public', c.oid, 'USAGE')));

SELECT p.proname,
	has_function_privilege('agentretry_agent', p.oid, 'EXECUTE') AS agent,
	has_function_privilege('agentretry_operator', p.oid, 'EXECUTE') AS operator,
	has_function_privilege('agentretry_admin', p.oid, 'EXECUTE') AS admin
FROM pg_proc p
WHERE p.pronamespace = 'agentretry'::regnamespace
ORDER BY p.proname;

SELECT c.relname,
	has_table_privilege('agentretry_agent', c.oid, 'SELECT') AS agent_select,
	has_table_privilege('agentretry_agent', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS agent_write,
	has_table_privilege('agentretry_operator', c.oid, 'SELECT') AS operator_select,
	has_table_privilege('agentretry_operator', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS operator_write,
	has_table_privilege('agentretry_admin', c.oid, 'SELECT') AS admin_select,
	has_table_privilege('agentretry_admin', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS admin_write
FROM pg_class c
WHERE c.relnamespace = 'agentretry'::regnamespace AND c.relkind = 'r'
ORDER BY c.relname;

-- SECURITY DEFINER functions never depend on the caller's search_path: the
-- C functions pin it themselves, the PL/pgSQL ones with SET
SELECT p.proname, l.lanname, p.proconfig
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'agentretry'::regnamespace AND p.prosecdef
ORDER BY p.proname;
SELECT count(*) AS plpgsql_definer_without_search_path
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'agentretry'::regnamespace AND p.prosecdef AND l.lanname <> 'c'
	AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false);

-- a caller's search_path cannot hijack the C functions: a shadowing table
-- and an "=" operator for text that would raise if it were ever used
CREATE SCHEMA regress_ar_evil;
CREATE FUNCTION regress_ar_evil.texteq(text, text) RETURNS boolean
	LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;
CREATE OPERATOR regress_ar_evil.= (LEFTARG = text, RIGHTARG = text,
	FUNCTION = regress_ar_evil.texteq);
CREATE TABLE regress_ar_evil.operations (LIKE agentretry.operations);
CREATE TABLE regress_ar_evil.tools (LIKE agentretry.tools);
SET search_path = regress_ar_evil, pg_catalog;
SELECT 'a'::text = 'b'::text AS "hostile operator is active";
SELECT outcome, attempt, lease_token FROM agentretry.claim('sec-evil', '{}');
SELECT action, reason FROM agentretry.fail('sec-evil', 1, 'transient', 'pre_execution');
RESET search_path;
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 second'
	WHERE key = 'sec-evil';
SET search_path = regress_ar_evil, pg_catalog;
SELECT outcome, attempt, lease_token FROM agentretry.claim('sec-evil', '{}');
SELECT agentretry.complete('sec-evil', 2, '{"ok": true}');
SELECT outcome, result FROM agentretry.claim('sec-evil', '{}');
SELECT (agentretry.lookup('sec-evil')).state;
RESET search_path;
SELECT count(*) AS shadow_rows FROM regress_ar_evil.operations;
DROP SCHEMA regress_ar_evil CASCADE;
DELETE FROM agentretry.events WHERE key = 'sec-evil';
DELETE FROM agentretry.operations WHERE key = 'sec-evil';

--
-- a role with no agentretry role: nothing at all
--
SET ROLE regress_ar_nobody;
SELECT expect_error($$SELECT agentretry.claim('sec-nobody', '{}')$$);
SELECT expect_error($$SELECT agentretry.lookup('sec-nobody')$$);
SELECT expect_error($$SELECT agentretry.op_hash('{}')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '1s')$$);
SELECT expect_error($$SELECT count(*) FROM agentretry.operations$$);
SELECT expect_error($$SELECT count(*) FROM agentretry.tools$$);
SELECT expect_error($$SELECT agentretry.register_tool('sec_t', 'idempotent', 'read')$$);
RESET ROLE;

--
-- agent: the call protocol, nothing else
--
SET ROLE regress_ar_agent;
SELECT outcome, attempt, lease_token FROM agentretry.claim('sec-agent', '{"a": 1}');
SELECT action, reason FROM agentretry.fail('sec-agent', 1, 'transient', 'pre_execution');
RESET ROLE;
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() WHERE key = 'sec-agent';
SET ROLE regress_ar_agent;
SELECT outcome, attempt, lease_token FROM agentretry.claim('sec-agent', '{"a": 1}');
SELECT agentretry.heartbeat('sec-agent', 2, '1 minute') > clock_timestamp() AS extended;
SELECT agentretry.complete('sec-agent', 2, '{"done": true}');
SELECT outcome, result FROM agentretry.claim('sec-agent', '{"a": 1}');
SELECT (agentretry.lookup('sec-agent')).state;
SELECT outcome FROM agentretry.claim('sec-agent-2', '{}');
SELECT agentretry.release('sec-agent-2', 1);
SELECT agentretry.op_hash('{"a": 1}') = agentretry.op_hash('{"a": 1.0}') AS op_hash_ok;
SELECT (agentretry.backoff(3, '1s', '1 minute', jitter => 'none')) AS backoff;
SELECT action, reason FROM agentretry.decide('permanent', NULL, 'idempotent', 'read', 1, 3);
SELECT count(*) AS tiers FROM agentretry.tier_defaults();
SELECT count(*) > 0 AS reads_tools FROM agentretry.tools;
-- tracing is the caller's choice; limits and retention are not
SET agentretry.trace_all = on;
SELECT outcome FROM agentretry.claim('sec-agent-3', '{}');
RESET agentretry.trace_all;
SELECT expect_error($$SET agentretry.max_payload = 2048$$);
SELECT expect_error($$SET agentretry.default_ttl = 60$$);
SELECT expect_error($$SET agentretry.event_retention = 60$$);
-- the tables are reachable only through the functions
SELECT expect_error($$SELECT count(*) FROM agentretry.operations$$);
SELECT expect_error($$SELECT count(*) FROM agentretry.events$$);
SELECT expect_error($$UPDATE agentretry.operations SET state = 'succeeded'$$);
SELECT expect_error($$DELETE FROM agentretry.operations$$);
SELECT expect_error($$INSERT INTO agentretry.events (tenant, at, kind) VALUES ('default', now(), 'claim')$$);
SELECT expect_error($$DELETE FROM agentretry.tools$$);
SELECT expect_error($$SELECT agentretry.register_tool('sec_t', 'idempotent', 'read')$$);
RESET ROLE;

-- the lease owner and the trace name the calling role
SELECT key, lease_owner FROM agentretry.operations WHERE key LIKE 'sec-agent%' ORDER BY key;
SELECT key, kind, owner FROM agentretry.events WHERE key LIKE 'sec-agent%' ORDER BY id;

--
-- operator: reads, does not act
--
SET ROLE regress_ar_operator;
SELECT key, state FROM agentretry.operations WHERE key LIKE 'sec-%' ORDER BY key;
SELECT count(*) AS sec_events FROM agentretry.events WHERE key LIKE 'sec-%';
SELECT (agentretry.lookup('sec-agent')).state;
SELECT expect_error($$SELECT agentretry.claim('sec-operator', '{}')$$);
SELECT expect_error($$SELECT agentretry.complete('sec-agent-2', 1)$$);
SELECT expect_error($$SELECT agentretry.fail('sec-agent-2', 1, 'permanent')$$);
SELECT expect_error($$SELECT agentretry.resolve('sec-agent-2', 1, true)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('sec-agent-2', 1)$$);
SELECT expect_error($$SELECT agentretry.release('sec-agent-2', 1)$$);
SELECT expect_error($$SELECT agentretry.register_tool('sec_t', 'idempotent', 'read')$$);
SELECT expect_error($$UPDATE agentretry.operations SET state = 'cancelled' WHERE key = 'sec-agent-2'$$);
SELECT expect_error($$DELETE FROM agentretry.events$$);
RESET ROLE;

--
-- admin: registers tools and reads, does not act
--
SET ROLE regress_ar_admin;
SELECT name, idempotency, side_effect FROM agentretry.register_tool('sec_t', 'idempotent', 'read');
SELECT count(*) AS sec_rows FROM agentretry.operations WHERE key LIKE 'sec-%';
SELECT expect_error($$SELECT agentretry.claim('sec-admin', '{}', 'sec_t')$$);
SELECT expect_error($$DELETE FROM agentretry.tools WHERE name = 'sec_t'$$);
RESET ROLE;

DROP ROLE regress_ar_agent, regress_ar_operator, regress_ar_admin, regress_ar_nobody;
