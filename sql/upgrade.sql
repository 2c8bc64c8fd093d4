--
-- upgrade: ALTER EXTENSION agentretry UPDATE from 0.1.0 keeps the rows
-- written under 0.1.0 working, and builds exactly what a fresh
-- CREATE EXTENSION builds
--
-- Both installs get databases of their own; drop leftovers of an
-- interrupted run first.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ar_fresh;
DROP DATABASE IF EXISTS ar_upgrade;
RESET client_min_messages;
CREATE DATABASE ar_upgrade;
\c ar_upgrade

-- Every member object of the extension, and the columns and indexes of
-- its relations, with what a description leaves out: a function's whole
-- definition (body, settings, volatility, security), a column's type,
-- default and comment, a table's constraints, an index's or view's
-- definition, a type's labels, privileges and comments.  Long definitions
-- are reduced to their md5.  parent is the relation of a column or index.
CREATE FUNCTION ar_objects() RETURNS TABLE (object text, parent text, definition text)
LANGUAGE sql AS $$
	WITH members AS (
		SELECT d.classid, d.objid
		FROM pg_depend d
		WHERE d.refclassid = 'pg_extension'::regclass
			AND d.refobjid = (SELECT e.oid FROM pg_extension e WHERE e.extname = 'agentretry')
			AND d.deptype = 'e'),
	relations AS (
		SELECT m.objid AS oid FROM members m WHERE m.classid = 'pg_class'::regclass
		UNION ALL
		SELECT t.typrelid FROM members m JOIN pg_type t ON t.oid = m.objid
		WHERE m.classid = 'pg_type'::regclass AND t.typrelid <> 0)
	SELECT pg_describe_object(m.classid, m.objid, 0), NULL,
		CASE m.classid
		WHEN 'pg_proc'::regclass THEN
			(SELECT md5(pg_get_functiondef(p.oid)) || ' ' || coalesce(p.proacl::text, '-')
				|| ' ' || coalesce(md5(obj_description(p.oid, 'pg_proc')), '-')
			 FROM pg_proc p WHERE p.oid = m.objid)
		WHEN 'pg_class'::regclass THEN
			(SELECT c.relkind::text || ' ' || coalesce(c.relacl::text, '-')
				|| ' ' || coalesce(md5(obj_description(c.oid, 'pg_class')), '-')
				|| ' ' || coalesce(md5(pg_get_viewdef(c.oid)), '-')
				|| ' ' || coalesce(md5((SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), ', '
											ORDER BY k.conname)
										FROM pg_constraint k WHERE k.conrelid = c.oid)), '-')
			 FROM pg_class c WHERE c.oid = m.objid)
		WHEN 'pg_type'::regclass THEN
			(SELECT coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
							  FROM pg_enum e WHERE e.enumtypid = t.oid), '-')
				|| ' ' || coalesce(md5(obj_description(t.oid, 'pg_type')), '-')
			 FROM pg_type t WHERE t.oid = m.objid)
		WHEN 'pg_namespace'::regclass THEN
			(SELECT coalesce(n.nspacl::text, '-') FROM pg_namespace n WHERE n.oid = m.objid)
		ELSE '?'
		END
	FROM members m
	UNION ALL
	SELECT pg_describe_object('pg_class'::regclass, a.attrelid, a.attnum),
		pg_describe_object('pg_class'::regclass, a.attrelid, 0),
		a.attnum || ' ' || format_type(a.atttypid, a.atttypmod)
			|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
			|| coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
			|| coalesce(' identity ' || nullif(a.attidentity::text, ''), '')
			|| coalesce(' ' || md5(col_description(a.attrelid, a.attnum)), '')
	FROM relations r
	JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	UNION ALL
	SELECT pg_describe_object('pg_class'::regclass, i.indexrelid, 0),
		pg_describe_object('pg_class'::regclass, i.indrelid, 0),
		md5(pg_get_indexdef(i.indexrelid))
			|| ' ' || coalesce(md5(obj_description(i.indexrelid, 'pg_class')), '-')
	FROM relations r JOIN pg_index i ON i.indrelid = r.oid
$$;

--
-- a fresh install (ar_fresh is a copy of this database as it is now)
--
\c contrib_regression
CREATE DATABASE ar_fresh TEMPLATE ar_upgrade;
\c ar_fresh
CREATE EXTENSION agentretry;
SELECT extversion, array(SELECT c::regclass::text FROM unnest(extconfig) c ORDER BY 1) AS config_tables
FROM pg_extension WHERE extname = 'agentretry';
SELECT count(*) AS objects FROM ar_objects();
SELECT string_agg(object || ': ' || definition, E'\n' ORDER BY object) AS fresh_objects
FROM ar_objects() \gset

--
-- 0.1.0, with rows written as 0.1.0 wrote them
--
\c ar_upgrade
CREATE EXTENSION agentretry VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
CREATE TABLE v010_objects AS SELECT * FROM ar_objects();

-- The 0.2.0 library does not serve claim() or fail() under the 0.1.0
-- schema (the upgrade must come first), so the rows are inserted as the
-- 0.1.0 functions left them: a retry due a minute ago, a success, and an
-- operation dead after its attempts.
SELECT name, idempotency, side_effect
FROM agentretry.register_tool('up_idem', 'idempotent', 'read', max_attempts => 2,
	base_delay => '1 second', max_delay => '1 second', jitter => 'none');
INSERT INTO agentretry.operations (tenant, key, op_hash, args, tool, state, attempts,
	lease_token, lease_owner, lease_expires_at, next_attempt_at, first_attempt_at,
	last_attempt_at, last_failure_class, last_failure_phase, last_failure_code,
	last_failure_message, last_delay, reason, result, run_id, step, created_at,
	updated_at, completed_at, expires_at)
VALUES
	('default', 'up-waiting', agentretry.op_hash('{"n": 1}'), '{"n": 1}', 'up_idem',
	 'retry_wait', 1, 1, 'old-worker', NULL, clock_timestamp() - interval '1 minute',
	 clock_timestamp() - interval '10 minutes', clock_timestamp() - interval '10 minutes',
	 'transient', 'pre_execution', 'http_503', 'unavailable', interval '1 second',
	 'not_executed', NULL, 'run-old', 'step-1', clock_timestamp() - interval '10 minutes',
	 clock_timestamp() - interval '9 minutes', NULL, NULL),
	('default', 'up-done', agentretry.op_hash('{"n": 2}'), '{"n": 2}', 'up_idem',
	 'succeeded', 1, 1, 'old-worker', NULL, NULL,
	 clock_timestamp() - interval '10 minutes', clock_timestamp() - interval '10 minutes',
	 NULL, NULL, NULL, NULL, NULL, NULL, '{"receipt": 7}', NULL, NULL,
	 clock_timestamp() - interval '10 minutes', clock_timestamp() - interval '9 minutes',
	 clock_timestamp() - interval '9 minutes', clock_timestamp() + interval '7 days'),
	('default', 'up-dead', agentretry.op_hash('{"n": 3}'), '{"n": 3}', 'up_idem',
	 'dead', 2, 2, 'old-worker', NULL, NULL,
	 clock_timestamp() - interval '10 minutes', clock_timestamp() - interval '8 minutes',
	 'transient', 'pre_execution', 'http_503', 'unavailable', interval '1 second',
	 'attempts_exhausted', NULL, NULL, NULL, clock_timestamp() - interval '10 minutes',
	 clock_timestamp() - interval '8 minutes', clock_timestamp() - interval '8 minutes',
	 clock_timestamp() + interval '7 days');
CREATE TABLE v010_rows AS SELECT * FROM agentretry.operations;

--
-- the update
--
ALTER EXTENSION agentretry UPDATE;
SELECT extversion, array(SELECT c::regclass::text FROM unnest(extconfig) c ORDER BY 1) AS config_tables
FROM pg_extension WHERE extname = 'agentretry';

-- what the updates added (0.2.0 and 0.3.0; not listing the columns of new relations); nothing
-- was removed
SELECT a.object FROM ar_objects() a
WHERE a.object NOT IN (SELECT v.object FROM v010_objects v)
	AND (a.parent IS NULL OR a.parent IN (SELECT v.object FROM v010_objects v))
ORDER BY 1;
SELECT object FROM v010_objects EXCEPT SELECT object FROM ar_objects() ORDER BY 1;
-- what the updates changed
SELECT v.object FROM v010_objects v JOIN ar_objects() a USING (object)
WHERE a.definition IS DISTINCT FROM v.definition ORDER BY 1;
-- the same objects, defined the same way, as in the fresh install (today
-- a fresh install runs the same two scripts; this keeps any later install
-- script for 0.2.0 equal to the upgrade path)
SELECT count(*) AS objects,
	string_agg(object || ': ' || definition, E'\n' ORDER BY object) = :'fresh_objects' AS same_as_fresh
FROM ar_objects();
SELECT o AS only_in_fresh FROM unnest(string_to_array(:'fresh_objects', E'\n')) o
EXCEPT SELECT object || ': ' || definition FROM ar_objects() ORDER BY 1;
SELECT object || ': ' || definition AS only_in_upgraded FROM ar_objects()
EXCEPT SELECT unnest(string_to_array(:'fresh_objects', E'\n')) ORDER BY 1;

--
-- the 0.1.0 rows after the update: unchanged, and served by the new version
--
SELECT o.key, o.state, o.state_since,
	(o.tenant, o.key, o.op_hash, o.args, o.tool, o.state, o.attempts, o.lease_token,
	 o.lease_owner, o.lease_expires_at, o.next_attempt_at, o.first_attempt_at,
	 o.last_attempt_at, o.deadline, o.last_failure_class, o.last_failure_phase,
	 o.last_failure_code, o.last_failure_message, o.last_delay, o.reason, o.result,
	 o.compensate_tool, o.compensate_args, o.run_id, o.step, o.created_at, o.updated_at,
	 o.completed_at, o.expires_at)::text = v::text AS unchanged
FROM agentretry.operations o JOIN v010_rows v USING (tenant, key)
ORDER BY o.key;
-- the views date rows without state_since by their last change
SELECT v.key, v.state, v.since = o.updated_at AS since_updated
FROM agentretry.in_flight v JOIN agentretry.operations o USING (tenant, key) ORDER BY v.key;
SELECT v.key, v.reason, v.since = o.completed_at AS since_completed
FROM agentretry.dead_letters v JOIN agentretry.operations o USING (tenant, key) ORDER BY v.key;

-- claim_due leases the retry that was waiting
SELECT tenant, key, tool, args, attempt, lease_token, run_id, step
FROM agentretry.claim_due('worker-1');
SELECT key, state, attempts, lease_token, lease_owner,
	lease_expires_at - last_attempt_at AS lease, state_since = updated_at AS state_since_now
FROM agentretry.operations WHERE key = 'up-waiting';
SELECT agentretry.complete('up-waiting', 2, '{"receipt": 8}');
-- claim replays the success
SELECT outcome, attempt, lease_token, result FROM agentretry.claim('up-done', '{"n": 2}', 'up_idem');
-- requeue gives the dead operation one more attempt
SELECT agentretry.requeue('up-dead');
SELECT key, state, attempts, lease_token, reason, next_attempt_at <= clock_timestamp() AS due
FROM agentretry.operations WHERE key = 'up-dead';
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-1');
SELECT agentretry.complete('up-dead', 4, '{"receipt": 9}');
SELECT key, state, attempts, lease_token, result FROM agentretry.operations ORDER BY key;
-- and the rest of 0.2.0 works in the upgraded database (budgets: test/pgtap/budgets.sql)
SELECT tenant, tool, max_attempts FROM agentretry.set_tenant_policy('acme', 'up_idem', max_attempts => 5);
SELECT field, value, source FROM agentretry.effective_policy('acme', 'up_idem') WHERE source <> 'default';
SELECT * FROM agentretry.sweep();
SELECT kind, key, reason FROM agentretry.events ORDER BY id;

\c contrib_regression
DROP DATABASE ar_upgrade;
DROP DATABASE ar_fresh;
