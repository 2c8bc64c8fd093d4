--
-- upgrade: ALTER EXTENSION agentretry UPDATE keeps the rows written under
-- an older version working, and builds exactly what a fresh
-- CREATE EXTENSION builds, which runs the complete script of the version
-- (agentretry--0.5.0.sql) instead of 0.1.0 and the update scripts.  Three
-- upgrades: from 0.1.0 through every update, from 0.3.0 with rows as
-- 0.3.0 left them, and from 0.4.0 with rows as 0.4.0 left them.
--
-- Each install gets a database of its own; drop leftovers of an
-- interrupted run first.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ar_fresh;
DROP DATABASE IF EXISTS ar_upgrade;
DROP DATABASE IF EXISTS ar_v030;
DROP DATABASE IF EXISTS ar_v040;
RESET client_min_messages;
CREATE DATABASE ar_upgrade;
\c ar_upgrade

-- Every member object of the extension, its schema, and the columns,
-- indexes, constraints, triggers, rules and policies of its relations,
-- with what a description leaves out: a function's whole definition (body,
-- settings, volatility, security); a column's number (so its place), type,
-- default, identity, collation, storage and privileges; a constraint's or
-- trigger's definition (their names are in the description); a sequence's
-- options and owning column; a table's options and whether pg_dump dumps
-- its rows (pg_extension_config_dump, with the condition); an index's or
-- view's definition; a type's labels; privileges, with the initial
-- privileges recorded for pg_dump (pg_init_privs), and the schema's
-- default privileges; comments.  Long definitions are reduced to their
-- md5.  parent is the relation of a column, index, constraint, trigger,
-- rule or policy.
CREATE FUNCTION ar_acl(acl aclitem[], classid regclass, objid oid, subid integer DEFAULT 0)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce(acl::text, '-') || ' init ' || coalesce(
		(SELECT i.privtype::text || ' ' || i.initprivs::text FROM pg_init_privs i
		 WHERE i.classoid = classid AND i.objoid = objid AND i.objsubid = subid), '-')
$$;
CREATE FUNCTION ar_objects() RETURNS TABLE (object text, parent text, definition text)
LANGUAGE sql AS $$
	WITH ext AS (
		SELECT e.oid, e.extnamespace, e.extconfig, e.extcondition
		FROM pg_extension e WHERE e.extname = 'agentretry'),
	members AS (
		SELECT d.classid, d.objid
		FROM pg_depend d
		WHERE d.refclassid = 'pg_extension'::regclass
			AND d.refobjid = (SELECT ext.oid FROM ext)
			AND d.deptype = 'e'
		UNION ALL
		-- and its schema, which CREATE EXTENSION creates but not as a member
		SELECT 'pg_namespace'::regclass, ext.extnamespace FROM ext),
	relations AS (
		SELECT m.objid AS oid FROM members m WHERE m.classid = 'pg_class'::regclass
		UNION ALL
		SELECT t.typrelid FROM members m JOIN pg_type t ON t.oid = m.objid
		WHERE m.classid = 'pg_type'::regclass AND t.typrelid <> 0)
	SELECT pg_describe_object(m.classid, m.objid, 0), NULL,
		CASE m.classid
		WHEN 'pg_proc'::regclass THEN
			(SELECT md5(pg_get_functiondef(p.oid)) || ' ' || ar_acl(p.proacl, 'pg_proc', p.oid)
				|| ' ' || coalesce(md5(obj_description(p.oid, 'pg_proc')), '-')
			 FROM pg_proc p WHERE p.oid = m.objid)
		WHEN 'pg_class'::regclass THEN
			(SELECT c.relkind::text || c.relpersistence::text || c.relreplident::text
				|| CASE WHEN c.relrowsecurity THEN ' rls' ELSE '' END
				|| CASE WHEN c.relforcerowsecurity THEN ' force_rls' ELSE '' END
				|| coalesce(' with ' || c.reloptions::text, '')
				|| ' ' || ar_acl(c.relacl, 'pg_class', c.oid)
				|| ' ' || coalesce(md5(obj_description(c.oid, 'pg_class')), '-')
				|| ' ' || coalesce(md5(pg_get_viewdef(c.oid)), '-')
				|| coalesce((SELECT ' dump ' || quote_literal(ext.extcondition[i])
							 FROM ext, generate_subscripts(ext.extconfig, 1) i
							 WHERE ext.extconfig[i] = c.oid), '')
				|| coalesce((SELECT format(' %s start %s increment %s min %s max %s cache %s%s',
										   format_type(q.seqtypid, NULL), q.seqstart, q.seqincrement,
										   q.seqmin, q.seqmax, q.seqcache,
										   CASE WHEN q.seqcycle THEN ' cycle' ELSE '' END)
							 FROM pg_sequence q WHERE q.seqrelid = c.oid), '')
				|| coalesce((SELECT ' owned by ' || pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
								|| ' ' || d.deptype::text
							 FROM pg_depend d
							 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
								AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '')
			 FROM pg_class c WHERE c.oid = m.objid)
		WHEN 'pg_type'::regclass THEN
			(SELECT t.typtype::text || ' ' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
							  FROM pg_enum e WHERE e.enumtypid = t.oid), '-')
				|| ' ' || ar_acl(t.typacl, 'pg_type', t.oid)
				|| ' ' || coalesce(md5(obj_description(t.oid, 'pg_type')), '-')
			 FROM pg_type t WHERE t.oid = m.objid)
		WHEN 'pg_namespace'::regclass THEN
			(SELECT ar_acl(n.nspacl, 'pg_namespace', n.oid)
				|| ' ' || coalesce(md5(obj_description(n.oid, 'pg_namespace')), '-')
				|| coalesce(' defaults ' || (SELECT string_agg(a.defaclobjtype::text || ' '
											|| pg_get_userbyid(a.defaclrole) || ' ' || a.defaclacl::text, ', ' ORDER BY 1)
										 FROM pg_default_acl a WHERE a.defaclnamespace = n.oid), '')
			 FROM pg_namespace n WHERE n.oid = m.objid)
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
			|| coalesce(' generated ' || nullif(a.attgenerated::text, ''), '')
			|| CASE WHEN a.attcollation <> t.typcollation THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END
			|| CASE WHEN a.attstorage <> t.typstorage THEN ' storage ' || a.attstorage::text ELSE '' END
			|| coalesce(' compression ' || nullif(a.attcompression::text, ''), '')
			|| CASE WHEN a.attstattarget <> -1 THEN ' statistics ' || a.attstattarget ELSE '' END
			|| ' ' || ar_acl(a.attacl, 'pg_class', a.attrelid, a.attnum)
			|| coalesce(' ' || md5(col_description(a.attrelid, a.attnum)), '')
	FROM relations r
	JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
	JOIN pg_type t ON t.oid = a.atttypid
	LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	UNION ALL
	SELECT pg_describe_object('pg_class'::regclass, i.indexrelid, 0),
		pg_describe_object('pg_class'::regclass, i.indrelid, 0),
		md5(pg_get_indexdef(i.indexrelid))
			|| CASE WHEN i.indisclustered THEN ' clustered' ELSE '' END
			|| ' ' || coalesce(md5(obj_description(i.indexrelid, 'pg_class')), '-')
	FROM relations r JOIN pg_index i ON i.indrelid = r.oid
	UNION ALL
	SELECT pg_describe_object('pg_constraint'::regclass, k.oid, 0),
		pg_describe_object('pg_class'::regclass, k.conrelid, 0),
		md5(pg_get_constraintdef(k.oid))
			|| ' ' || coalesce(md5(obj_description(k.oid, 'pg_constraint')), '-')
	FROM relations r JOIN pg_constraint k ON k.conrelid = r.oid
	UNION ALL
	-- not the internal triggers of foreign keys, named after their oid
	SELECT pg_describe_object('pg_trigger'::regclass, g.oid, 0),
		pg_describe_object('pg_class'::regclass, g.tgrelid, 0),
		md5(pg_get_triggerdef(g.oid)) || ' ' || g.tgenabled::text
			|| ' ' || coalesce(md5(obj_description(g.oid, 'pg_trigger')), '-')
	FROM relations r JOIN pg_trigger g ON g.tgrelid = r.oid AND NOT g.tgisinternal
	UNION ALL
	-- a view's own rule is its definition, above
	SELECT pg_describe_object('pg_rewrite'::regclass, w.oid, 0),
		pg_describe_object('pg_class'::regclass, w.ev_class, 0),
		md5(pg_get_ruledef(w.oid)) || ' ' || w.ev_enabled::text
	FROM relations r JOIN pg_rewrite w ON w.ev_class = r.oid AND w.rulename <> '_RETURN'
	UNION ALL
	SELECT pg_describe_object('pg_policy'::regclass, o.oid, 0),
		pg_describe_object('pg_class'::regclass, o.polrelid, 0),
		md5(format('%s %s %s %s %s', o.polcmd, o.polpermissive, o.polroles::regrole[],
				   pg_get_expr(o.polqual, o.polrelid), pg_get_expr(o.polwithcheck, o.polrelid)))
	FROM relations r JOIN pg_policy o ON o.polrelid = r.oid
$$;
-- The relations whose rows pg_dump dumps (pg_extension_config_dump), with
-- the condition, and whether the relation exists: the oid of a dropped
-- table left behind in extconfig shows as a number, present false.
CREATE FUNCTION ar_config() RETURNS TABLE (relation text, condition text, present boolean)
LANGUAGE sql AS $$
	SELECT u.c::regclass::text, u.w, EXISTS (SELECT FROM pg_class r WHERE r.oid = u.c)
	FROM pg_extension e, unnest(e.extconfig, e.extcondition) u (c, w)
	WHERE e.extname = 'agentretry'
$$;

--
-- a fresh install (ar_fresh, ar_v030 and ar_v040 are copies of this
-- database as it is now)
--
\c contrib_regression
CREATE DATABASE ar_fresh TEMPLATE ar_upgrade;
CREATE DATABASE ar_v030 TEMPLATE ar_upgrade;
CREATE DATABASE ar_v040 TEMPLATE ar_upgrade;
\c ar_fresh
CREATE EXTENSION agentretry;
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
SELECT * FROM ar_config() ORDER BY 1;
SELECT string_agg(format('%s %L %s', relation, condition, present), ', ' ORDER BY relation)
	AS fresh_config
FROM ar_config() \gset
-- CREATE EXTENSION runs the script of the version itself when there is
-- one, and 0.1.0 and the updates only when there is none: this test
-- compares the complete script with the updates while it is installed
SELECT (pg_stat_file(s.setting || '/extension/agentretry--' || e.extversion || '.sql', true)).size > 0
	AS complete_script
FROM pg_config s, pg_extension e WHERE s.name = 'SHAREDIR' AND e.extname = 'agentretry';
SELECT count(*) AS objects, count(DISTINCT object) AS names FROM ar_objects();
SELECT string_agg(object || E'\t' || definition, E'\n' ORDER BY object) AS fresh_objects
FROM ar_objects() \gset

--
-- 0.1.0, with rows written as 0.1.0 wrote them
--
\c ar_upgrade
CREATE EXTENSION agentretry VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
CREATE TABLE v010_objects AS SELECT * FROM ar_objects();

-- The library, of the newest version, does not serve claim() or fail()
-- under the 0.1.0 schema (the upgrade must come first), so the rows are
-- inserted as the 0.1.0 functions left them: a retry due a minute ago, a
-- success, and an operation dead after its attempts.
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
-- One ALTER EXTENSION runs the four update scripts in one transaction:
-- an update script must not use an enum label that an earlier update
-- added (ALTER TYPE ... ADD VALUE), as it is not committed yet.
ALTER EXTENSION agentretry UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
-- pg_dump dumps the rows of the same relations as in a fresh install:
-- 0.3.0 marked run_retries, and 0.4.0 dropped it from the extension and
-- from the list (ALTER EXTENSION ... DROP TABLE) before dropping it
SELECT count(*) AS config_relations, bool_and(present) AS all_present,
	string_agg(format('%s %L %s', relation, condition, present), ', ' ORDER BY relation)
		= :'fresh_config' AS as_installed
FROM ar_config();

-- what the updates added (0.2.0, 0.3.0, 0.4.0 and 0.5.0; not listing the
-- columns of new relations; the parent of an attribute of a composite
-- type is named "composite type ...", the type's member "type ...")
SELECT a.object FROM ar_objects() a
WHERE a.object NOT IN (SELECT v.object FROM v010_objects v)
	AND (a.parent IS NULL OR a.parent IN (SELECT v.object FROM v010_objects v)
		 OR a.parent IN (SELECT 'composite ' || v.object FROM v010_objects v))
ORDER BY 1;
-- what they removed: register_tool of 0.1.0, which 0.4.0 replaced by one
-- with a new last parameter, requires_approval, and complete and resolve,
-- which 0.5.0 replaced by ones with a new last parameter, receipt
SELECT object FROM v010_objects EXCEPT SELECT object FROM ar_objects() ORDER BY 1;
-- what they changed: three enums got a label, operation_state and outcome
-- (0.4.0) and decision_action (0.5.0), and check_policy, set_budget,
-- schedule_sweep and unschedule_sweep were redefined (0.5.0)
SELECT v.object FROM v010_objects v JOIN ar_objects() a USING (object)
WHERE a.definition IS DISTINCT FROM v.definition ORDER BY 1;
-- the same objects, defined the same way, as the fresh install by the
-- complete script: not one object differs
CREATE TABLE fresh_objects AS
SELECT split_part(o, E'\t', 1) AS object, split_part(o, E'\t', 2) AS definition
FROM unnest(string_to_array(:'fresh_objects', E'\n')) o;
CREATE VIEW install_vs_upgrade AS
SELECT object, f.definition AS installed, u.definition AS upgraded
FROM fresh_objects f FULL JOIN ar_objects() u USING (object)
WHERE f.definition IS DISTINCT FROM u.definition;
SELECT count(*) AS objects, count(DISTINCT object) AS names,
	(SELECT count(*) FROM fresh_objects) AS installed,
	(SELECT count(*) FROM install_vs_upgrade) AS differing
FROM ar_objects();
SELECT * FROM install_vs_upgrade ORDER BY 1;

-- The comparison sees each kind of difference a complete script could
-- have from the updates: here made by hand on the upgraded objects, in a
-- transaction that is rolled back.  A column in another place (dropped
-- and added again, it comes last), a default, a constraint's name, a
-- disabled trigger, a sequence option, an enum label, one byte of a
-- function's body, a view that names an enum value where the update
-- compares text, a comment, a unique index whose NULLs are distinct (so
-- one anomaly could be recorded twice), an explicit ACL that grants
-- nothing more (a REVOKE of nothing), a column privilege, the schema's
-- default privileges, a table that pg_extension_config_dump did not mark.
BEGIN;
ALTER TABLE agentretry.budget_ledger DROP COLUMN retry_at;
ALTER TABLE agentretry.budget_ledger ADD COLUMN retry_at timestamptz;
ALTER TABLE agentretry.budgets ALTER COLUMN stripes SET DEFAULT 8;
ALTER TABLE agentretry.budgets RENAME CONSTRAINT budgets_check TO budgets_capacity_or_ratio;
ALTER TABLE agentretry.tenant_policies DISABLE TRIGGER invalidate_cache;
ALTER TABLE agentretry.token_floors ALTER COLUMN id SET INCREMENT BY 2;
ALTER TYPE agentretry.budget_scope ADD VALUE 'run';
DO $$
BEGIN
	EXECUTE replace(pg_get_functiondef('agentretry.drop_budget(text, agentretry.budget_scope, text)'::regprocedure),
					'RETURN FOUND;', 'RETURN FOUND; ');
END
$$;
DO $$
BEGIN
	EXECUTE 'CREATE OR REPLACE VIEW agentretry.run_status AS '
		|| replace(pg_get_viewdef('agentretry.run_status'::regclass),
				   '(s.state)::text = ''awaiting_approval''::text',
				   's.state = ''awaiting_approval''::agentretry.operation_state');
END
$$;
COMMENT ON INDEX agentretry.events_at IS 'events by time';
DROP INDEX agentretry.anomalies_once;
CREATE UNIQUE INDEX anomalies_once ON agentretry.anomalies
	(tenant, kind, key, other_key, run_id, receipt, attempt);
COMMENT ON INDEX agentretry.anomalies_once IS 'one anomaly per kind and subject, however often it is found';
REVOKE ALL ON SEQUENCE agentretry.budget_ledger_id_seq FROM PUBLIC;
GRANT SELECT (key) ON agentretry.operations TO agentretry_agent;
ALTER DEFAULT PRIVILEGES IN SCHEMA agentretry GRANT SELECT ON TABLES TO agentretry_operator;
UPDATE pg_extension SET
	extconfig = array(SELECT c FROM unnest(extconfig, extcondition) u (c, w)
					  WHERE c <> 'agentretry.run_context'::regclass),
	extcondition = array(SELECT w FROM unnest(extconfig, extcondition) u (c, w)
						 WHERE c <> 'agentretry.run_context'::regclass)
WHERE extname = 'agentretry';
SELECT object,
	CASE WHEN installed IS NULL THEN 'only upgraded' WHEN upgraded IS NULL THEN 'only installed'
		 ELSE 'differs' END AS difference
FROM install_vs_upgrade ORDER BY 1;
ROLLBACK;
SELECT count(*) AS differing FROM install_vs_upgrade;

--
-- the 0.1.0 rows after the update: unchanged, and served by the new version
--
SELECT o.key, o.state, o.state_since,
	(o.tenant, o.key, o.op_hash, o.args, o.tool, o.state, o.attempts, o.lease_token,
	 o.lease_owner, o.lease_expires_at, o.next_attempt_at, o.first_attempt_at,
	 o.last_attempt_at, o.deadline, o.last_failure_class, o.last_failure_phase,
	 o.last_failure_code, o.last_failure_message, o.last_delay, o.reason, o.result,
	 o.compensate_tool, o.compensate_args, o.run_id, o.step, o.created_at, o.updated_at,
	 o.completed_at, o.expires_at)::text = v::text AS unchanged,
	o.compensation_of, o.compensating
FROM agentretry.operations o JOIN v010_rows v USING (tenant, key)
ORDER BY o.key;
-- the run an operation names became a run (0.4.0), running, started and
-- last changed when the operation was created
SELECT r.run_id, r.state, r.retry_events, r.max_retry_events, r.context_version,
	r.started_at = v.created_at AS started_created, r.updated_at = v.created_at AS updated_created,
	r.finished_at
FROM agentretry.runs r JOIN v010_rows v USING (tenant, run_id);
SELECT count(*) AS runs FROM agentretry.runs;
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
-- the sweep reconciles: the two operations that succeeded after a retry
-- since the update are anomalies to audit (0.5.0)
SELECT * FROM agentretry.sweep();
SELECT kind, key, tool, receipt, attempt, detail FROM agentretry.anomalies ORDER BY id;
SELECT kind, key, reason FROM agentretry.events ORDER BY id;

--
-- 0.3.0, with rows as 0.3.0 left them
--
-- CREATE EXTENSION ... VERSION '0.3.0' runs 0.1.0 and the updates to
-- 0.3.0: there is no complete script of 0.3.0.
\c ar_v030
CREATE EXTENSION agentretry VERSION '0.3.0';
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
SELECT (pg_stat_file(s.setting || '/extension/agentretry--0.3.0.sql', true)).size IS NULL
	AS no_complete_script
FROM pg_config s WHERE s.name = 'SHAREDIR';
SELECT * FROM ar_config() WHERE relation = 'agentretry.run_retries';
SELECT 'agentretry.run_retries'::regclass::oid AS run_retries_oid \gset
CREATE TABLE v030_objects AS SELECT * FROM ar_objects();

-- The library, of the newest version, does not serve claim() or fail()
-- under the 0.3.0 schema (the update must come first), so the rows are
-- inserted as the 0.3.0 functions left them (the PL/pgSQL functions
-- register_tool and set_budget still run):
--   run-a: v3-done succeeded; v3-retry failed twice (transient), due again
--     a while ago; each failure was a retry event of run-a, counted in
--     run_retries and debited from the run and the budget of v3_idem
--   run-b: v3-leased leased until 4 minutes from now; v3-verify awaiting
--     verification after an ambiguous failure
--   run-c: v3-drop, a destructive tool's operation, leased
--   no run: v3-dead dead after a permanent failure; v3-drop-released, a
--     destructive tool's operation whose lease was given back (release)
--   run-gone: one retry event 8 days ago; its operation was purged since
--     (raising the tenant's token floor to its last token, 2)
SELECT name, idempotency, side_effect
FROM agentretry.register_tool('v3_idem', 'idempotent', 'write', max_attempts => 6,
	base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name, idempotency, side_effect FROM agentretry.register_tool('v3_write', 'non_idempotent', 'write');
SELECT name, idempotency, side_effect FROM agentretry.register_tool('v3_drop', 'non_idempotent', 'destructive');
SELECT tenant, scope, subject, capacity FROM agentretry.set_budget('default', 'tool', 'v3_idem', capacity => 20);
INSERT INTO agentretry.operations (tenant, key, op_hash, args, tool, state, attempts,
	lease_token, lease_owner, lease_expires_at, next_attempt_at, first_attempt_at,
	last_attempt_at, last_failure_class, last_failure_phase, last_failure_code,
	last_failure_message, last_delay, reason, result, run_id, step, created_at,
	updated_at, completed_at, expires_at, state_since)
SELECT 'default', key, agentretry.op_hash(args), args, tool, state::agentretry.operation_state,
	attempts, lease_token, lease_owner, clock_timestamp() + lease_expires,
	clock_timestamp() - next_attempt, clock_timestamp() - first_attempt,
	clock_timestamp() - last_attempt, failure_class::agentretry.failure_class,
	failure_phase::agentretry.failure_phase, failure_code, failure_message, last_delay,
	reason, result, run_id, step, clock_timestamp() - created, clock_timestamp() - updated,
	clock_timestamp() - completed, clock_timestamp() - completed + interval '7 days',
	clock_timestamp() - updated
FROM (VALUES
	('v3-done', '{"n": 1}'::jsonb, 'v3_idem', 'succeeded', 1, 1, 'w1', NULL::interval, NULL::interval,
	 interval '20 minutes', interval '20 minutes', NULL, NULL, NULL, NULL, NULL::interval,
	 NULL, '{"receipt": 1}'::jsonb, 'run-a', 'fetch', interval '20 minutes', interval '19 minutes',
	 interval '19 minutes'),
	('v3-retry', '{"n": 2}', 'v3_idem', 'retry_wait', 2, 2, 'w1', NULL, interval '16 minutes',
	 interval '18 minutes', interval '17 minutes', 'transient', 'pre_execution', 'http_503',
	 'unavailable', interval '0', 'not_executed', NULL, 'run-a', 'store', interval '18 minutes',
	 interval '17 minutes', NULL),
	('v3-leased', '{"n": 3}', 'v3_idem', 'in_progress', 1, 1, 'w2', interval '4 minutes', NULL,
	 interval '1 minute', interval '1 minute', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	 'run-b', 'send', interval '1 minute', interval '1 minute', NULL),
	('v3-verify', '{"n": 4}', 'v3_write', 'verify', 1, 1, 'w2', NULL, NULL,
	 interval '15 minutes', interval '15 minutes', 'ambiguous', 'mid_execution', 'timeout',
	 'no answer', NULL, 'outcome_unknown', NULL, 'run-b', 'pay', interval '15 minutes',
	 interval '14 minutes', NULL),
	('v3-dead', '{"n": 5}', 'v3_write', 'dead', 1, 1, 'w3', NULL, NULL,
	 interval '13 minutes', interval '13 minutes', 'permanent', 'pre_execution', 'http_400',
	 'bad request', NULL, 'permanent', NULL, NULL, NULL, interval '13 minutes',
	 interval '12 minutes', interval '12 minutes'),
	('v3-drop', '{"table": "t1"}', 'v3_drop', 'in_progress', 1, 1, 'w4', interval '4 minutes', NULL,
	 interval '1 minute', interval '1 minute', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	 'run-c', 'drop', interval '1 minute', interval '1 minute', NULL),
	('v3-drop-released', '{"table": "t2"}', 'v3_drop', 'retry_wait', 0, 1, 'w4', NULL,
	 interval '10 minutes', interval '10 minutes', interval '10 minutes', NULL, NULL, NULL, NULL,
	 NULL, 'released', NULL, NULL, NULL, interval '10 minutes', interval '10 minutes', NULL))
	AS o (key, args, tool, state, attempts, lease_token, lease_owner, lease_expires,
		  next_attempt, first_attempt, last_attempt, failure_class, failure_phase,
		  failure_code, failure_message, last_delay, reason, result, run_id, step,
		  created, updated, completed);
INSERT INTO agentretry.run_retries (tenant, run_id, retries, updated_at)
SELECT 'default', 'run-a', 2, o.updated_at FROM agentretry.operations o WHERE o.key = 'v3-retry'
UNION ALL
SELECT 'default', 'run-gone', 1, clock_timestamp() - interval '8 days';
INSERT INTO agentretry.events (tenant, at, kind, key, tool, run_id, step, attempt,
	failure_class, failure_phase, code, message, reason, delay, lease_token, owner)
SELECT 'default', o.updated_at - d.before, d.kind, o.key, o.tool, o.run_id, o.step, d.attempt,
	o.last_failure_class, o.last_failure_phase, o.last_failure_code, o.last_failure_message,
	o.reason, o.last_delay, d.attempt, o.lease_owner
FROM agentretry.operations o
JOIN (VALUES ('v3-retry', 'retry', 1, interval '30 seconds'), ('v3-retry', 'retry', 2, interval '0'),
			 ('v3-verify', 'verify', 1, interval '0'), ('v3-dead', 'dead', 1, interval '0'))
	AS d (key, kind, attempt, before) USING (key)
ORDER BY 2;
INSERT INTO agentretry.events (tenant, at, kind, key, tool, run_id, attempt, failure_class,
	failure_phase, reason, delay, lease_token, owner)
VALUES ('default', clock_timestamp() - interval '8 days', 'retry', 'v3-gone', 'v3_idem', 'run-gone',
	1, 'transient', 'pre_execution', 'not_executed', interval '0', 1, 'w5');
INSERT INTO agentretry.budget_ledger (tenant, at, scope, subject, key, amount, balance_after,
	reason, failure_class)
SELECT 'default', e.at, l.scope, l.subject, e.key, 1,
	CASE WHEN l.scope = 'tool'
		THEN 20 - count(*) FILTER (WHERE l.scope = 'tool') OVER (ORDER BY e.at, l.scope) END,
	'debit', 'transient'
FROM agentretry.events e
JOIN (VALUES ('v3-gone', 'run', 'run-gone'), ('v3-gone', 'tool', 'v3_idem'),
			 ('v3-retry', 'run', 'run-a'), ('v3-retry', 'tool', 'v3_idem'))
	AS l (key, scope, subject) USING (key)
WHERE e.kind = 'retry'
ORDER BY e.at, l.scope;
UPDATE agentretry.budget_stripes SET tokens = tokens - 3, cur_retries = 3 WHERE stripe = 0;
INSERT INTO agentretry.token_floors (tenant, floor, raised_at)
VALUES ('default', 2, clock_timestamp() - interval '1 day');
SELECT key, tool, state, attempts, lease_token, run_id, step, reason FROM agentretry.operations ORDER BY key;
SELECT run_id, retries FROM agentretry.run_retries ORDER BY run_id;
SELECT scope, subject, key, amount, balance_after, reason FROM agentretry.budget_ledger ORDER BY id;
SELECT kind, key, run_id, attempt FROM agentretry.events ORDER BY id;
SELECT scope, subject, capacity, balance FROM agentretry.budget_status;
CREATE TABLE v030_rows AS SELECT * FROM agentretry.operations;
CREATE TABLE v030_run_retries AS SELECT * FROM agentretry.run_retries;
CREATE TABLE v030_ledger AS SELECT * FROM agentretry.budget_ledger;

--
-- the update from 0.3.0
--
ALTER EXTENSION agentretry UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
-- run_retries is gone, from the catalog and from pg_dump's list
SELECT to_regclass('agentretry.run_retries') AS run_retries,
	to_regtype('agentretry.run_retries') AS run_retries_type;
SELECT :run_retries_oid::oid = ANY (extconfig) AS run_retries_in_extconfig,
	cardinality(extconfig) = cardinality(extcondition) AS one_condition_each
FROM pg_extension WHERE extname = 'agentretry';
SELECT count(*) AS config_relations, bool_and(present) AS all_present,
	string_agg(format('%s %L %s', relation, condition, present), ', ' ORDER BY relation)
		= :'fresh_config' AS as_installed
FROM ar_config();

-- what the updates to 0.4.0 and 0.5.0 added (not listing the columns of
-- new relations), removed and changed
SELECT a.object FROM ar_objects() a
WHERE a.object NOT IN (SELECT v.object FROM v030_objects v)
	AND (a.parent IS NULL OR a.parent IN (SELECT v.object FROM v030_objects v)
		 OR a.parent IN (SELECT 'composite ' || v.object FROM v030_objects v))
ORDER BY 1;
SELECT object FROM v030_objects EXCEPT SELECT object FROM ar_objects() ORDER BY 1;
SELECT v.object FROM v030_objects v JOIN ar_objects() a USING (object)
WHERE a.definition IS DISTINCT FROM v.definition ORDER BY 1;
-- and the result is the fresh install, object for object
CREATE TABLE fresh_objects AS
SELECT split_part(o, E'\t', 1) AS object, split_part(o, E'\t', 2) AS definition
FROM unnest(string_to_array(:'fresh_objects', E'\n')) o;
CREATE VIEW install_vs_upgrade AS
SELECT object, f.definition AS installed, u.definition AS upgraded
FROM fresh_objects f FULL JOIN ar_objects() u USING (object)
WHERE f.definition IS DISTINCT FROM u.definition;
SELECT count(*) AS objects, count(DISTINCT object) AS names,
	(SELECT count(*) FROM fresh_objects) AS installed,
	(SELECT count(*) FROM install_vs_upgrade) AS differing
FROM ar_objects();
SELECT * FROM install_vs_upgrade ORDER BY 1;

--
-- the 0.3.0 rows after the update
--
-- operations: unchanged, in no compensation
SELECT o.key, (o.tenant, o.key, o.op_hash, o.args, o.tool, o.state, o.attempts,
	 o.lease_token, o.lease_owner, o.lease_expires_at, o.next_attempt_at,
	 o.first_attempt_at, o.last_attempt_at, o.deadline, o.last_failure_class,
	 o.last_failure_phase, o.last_failure_code, o.last_failure_message, o.last_delay,
	 o.reason, o.result, o.compensate_tool, o.compensate_args, o.run_id, o.step,
	 o.created_at, o.updated_at, o.completed_at, o.expires_at, o.state_since)::text
		= v::text AS unchanged,
	o.compensation_of, o.compensating
FROM agentretry.operations o FULL JOIN v030_rows v USING (tenant, key)
ORDER BY 1;
-- every run of 0.3.0, named by an operation or counted in run_retries, is
-- a run: running, with the old counter as its retry events, started at
-- the first and last changed at the last time 0.3.0 recorded for it
SELECT r.run_id, r.state, r.retry_events, coalesce(c.retries, 0) AS old_retries,
	r.max_retry_events, r.context_version, r.workflow_version, r.correlation_id,
	r.compensate_reason, r.finished_at,
	r.started_at = least(min(o.created_at), c.updated_at) AS started_first,
	r.updated_at = greatest(max(o.created_at), c.updated_at) AS updated_last
FROM agentretry.runs r
LEFT JOIN v030_run_retries c USING (tenant, run_id)
LEFT JOIN v030_rows o USING (tenant, run_id)
GROUP BY r.tenant, r.run_id, c.retries, c.updated_at
ORDER BY r.run_id;
SELECT (SELECT count(*) FROM agentretry.runs) AS runs,
	(SELECT count(*) FROM (SELECT tenant, run_id FROM v030_rows WHERE run_id IS NOT NULL
						   UNION SELECT tenant, run_id FROM v030_run_retries) x) AS runs_of_030;
SELECT run_id, state, steps, in_progress, retry_wait, verify, awaiting_approval, succeeded,
	dead, cancelled, retry_events_used, retry_events_allowed, compensations_pending,
	context_version
FROM agentretry.run_status ORDER BY run_id;
-- the ledger and the budget are as they were
SELECT count(*) AS ledger_rows,
	count(*) FILTER (WHERE (l.*)::text = (v.*)::text) AS unchanged
FROM agentretry.budget_ledger l FULL JOIN v030_ledger v USING (tenant, id);
SELECT scope, subject, capacity, balance FROM agentretry.budget_status;

-- claim replays the success
SELECT outcome, attempt, lease_token, result
FROM agentretry.claim('v3-done', '{"n": 1}', 'v3_idem', run_id => 'run-a', step => 'fetch');
-- the lease taken under 0.3.0 holds: busy for others, and its holder
-- completes with its token
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('v3-leased', '{"n": 3}', 'v3_idem', run_id => 'run-b', step => 'send');
SELECT agentretry.complete('v3-leased', 1, '{"receipt": 3}');
-- the verification: a verifier's lease with the next token, then resolve
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('v3-verify', '{"n": 4}', 'v3_write', run_id => 'run-b', step => 'pay');
SELECT agentretry.resolve('v3-verify', 2, true, '{"receipt": 4}');
-- claim_due leases the retry that was waiting, as attempt 3 of run-a,
-- whose count of retry events goes on from the 2 of 0.3.0: with a limit
-- of 3 the next failure is a retry, the one after is denied
SET agentretry.run_max_retries = 3;
SELECT key, attempt, lease_token, run_id, step
FROM agentretry.claim_due('worker-1', tools => ARRAY['v3_idem']);
SELECT action, attempt, reason FROM agentretry.fail('v3-retry', 3, 'transient', 'pre_execution');
SELECT retry_events FROM agentretry.runs WHERE run_id = 'run-a';
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-1', tools => ARRAY['v3_idem']);
SELECT action, attempt, reason FROM agentretry.fail('v3-retry', 4, 'transient', 'pre_execution');
RESET agentretry.run_max_retries;
SELECT retry_events FROM agentretry.runs WHERE run_id = 'run-a';
SELECT scope, subject, key, amount, balance_after, reason
FROM agentretry.budget_ledger WHERE id > (SELECT max(id) FROM v030_ledger) ORDER BY id;

-- destructive tools now require approval (the behaviour change of
-- 0.4.0), but only for new keys: v3-drop, leased under 0.3.0, is busy,
-- and its holder completes it; v3-drop-released, claimed under 0.3.0, is
-- executed at once
SELECT field, value, source FROM agentretry.effective_policy('default', 'v3_drop')
WHERE field = 'requires_approval';
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('v3-drop', '{"table": "t1"}', 'v3_drop', run_id => 'run-c', step => 'drop');
SELECT agentretry.complete('v3-drop', 1, '{"dropped": "t1"}');
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('v3-drop-released', '{"table": "t2"}', 'v3_drop', owner => 'w4');
-- a new key of the destructive tool waits for a person's approval
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('v3-drop-new', '{"table": "t3"}', 'v3_drop', run_id => 'run-c',
	step => 'drop-more', owner => 'w4');
SELECT key, state, attempts, lease_token, lease_expires_at, reason
FROM agentretry.operations WHERE key = 'v3-drop-new';
SELECT key, tool, args, requested_by, run_id, step FROM agentretry.approval_queue;

SELECT key, state, attempts, lease_token, reason, result FROM agentretry.operations ORDER BY key;
SELECT run_id, steps, in_progress, retry_wait, verify, awaiting_approval, succeeded, dead,
	retry_events_used
FROM agentretry.run_status ORDER BY run_id;
-- the sweep purges run-gone: idle for 8 days, more than
-- agentretry.default_ttl, and none of its operations is left; and it
-- finds no anomaly: no operation succeeded after a retry or with a receipt
SELECT operations_purged, runs_purged, anomalies_found FROM agentretry.sweep();
SELECT run_id FROM agentretry.runs ORDER BY run_id;

--
-- 0.4.0, with rows as 0.4.0 left them
--
-- CREATE EXTENSION ... VERSION '0.4.0' runs 0.1.0 and the updates to
-- 0.4.0: the complete script is of 0.5.0 now (an agentretry--0.4.0.sql
-- that an older installation left in place would run instead).
\c ar_v040
CREATE EXTENSION agentretry VERSION '0.4.0';
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
SELECT (pg_stat_file(s.setting || '/extension/agentretry--0.4.0.sql', true)).size IS NULL
	AS no_complete_script
FROM pg_config s WHERE s.name = 'SHAREDIR';
CREATE TABLE v040_objects AS SELECT * FROM ar_objects();

-- The library, of the newest version, reads and writes the columns 0.5.0
-- added, so under the 0.4.0 schema a call that touches operations fails,
-- with an error and no change (the update must come first); start_run()
-- and checkpoint() touch only runs and their context, and work.  The
-- rest is inserted as the 0.4.0 functions left it:
--   run-live (workflow wf-1, correlation corr-1, one checkpoint):
--     v4-leased leased until 4 minutes from now; v4-retry failed once
--     (transient), due again a while ago, a retry event of run-live
--   run-done, finished as failed 5 minutes ago with its step v4-verify
--     awaiting verification for half an hour (0.4.0 left open steps as
--     they were), which verifier-0 leased a minute ago; v4-done
--     succeeded, without a receipt
--   no run: v4-check awaiting verification too
SELECT name, idempotency, side_effect
FROM agentretry.register_tool('v4_idem', 'idempotent', 'write', max_attempts => 5,
	base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name, idempotency, side_effect FROM agentretry.register_tool('v4_write', 'non_idempotent', 'write');
SELECT agentretry.start_run('run-live', workflow_version => 'wf-1', correlation_id => 'corr-1');
SELECT agentretry.start_run('run-done', workflow_version => 'wf-1');
SELECT agentretry.checkpoint('run-live', 'plan', '{"items": 2}');
SELECT * FROM agentretry.claim('v4-new', '{"n": 9}', 'v4_idem', run_id => 'run-live');
SELECT count(*) AS operations FROM agentretry.operations;
INSERT INTO agentretry.operations (tenant, key, op_hash, args, tool, state, attempts,
	lease_token, lease_owner, lease_expires_at, next_attempt_at, first_attempt_at,
	last_attempt_at, last_failure_class, last_failure_phase, last_failure_code,
	last_failure_message, last_delay, reason, result, run_id, step, created_at,
	updated_at, completed_at, expires_at, state_since)
SELECT 'default', key, agentretry.op_hash(args), args, tool, state::agentretry.operation_state,
	1, lease_token, lease_owner, clock_timestamp() + lease_expires,
	clock_timestamp() - next_attempt, clock_timestamp() - first_attempt,
	clock_timestamp() - first_attempt, failure_class::agentretry.failure_class,
	failure_phase::agentretry.failure_phase, failure_code, failure_message, last_delay,
	reason, result, run_id, step, clock_timestamp() - first_attempt,
	clock_timestamp() - updated, clock_timestamp() - completed,
	clock_timestamp() - completed + interval '7 days', clock_timestamp() - since
FROM (VALUES
	('v4-done', '{"n": 1}'::jsonb, 'v4_idem', 'succeeded', 1, 'w1', NULL::interval,
	 NULL::interval, interval '40 minutes', NULL, NULL, NULL, NULL, NULL::interval, NULL,
	 '{"receipt": 1}'::jsonb, 'run-done', 'fetch', interval '39 minutes',
	 interval '39 minutes', interval '39 minutes'),
	('v4-verify', '{"n": 2}', 'v4_write', 'verify', 2, 'verifier-0', interval '4 minutes',
	 NULL, interval '32 minutes', 'ambiguous', 'mid_execution', 'timeout', 'no answer', NULL,
	 'outcome_unknown', NULL, 'run-done', 'pay', interval '1 minute', NULL,
	 interval '31 minutes'),
	('v4-retry', '{"n": 3}', 'v4_idem', 'retry_wait', 1, 'w2', NULL, interval '16 minutes',
	 interval '18 minutes', 'transient', 'pre_execution', 'http_503', 'unavailable',
	 interval '0', 'not_executed', NULL, 'run-live', 'store', interval '17 minutes', NULL,
	 interval '17 minutes'),
	('v4-leased', '{"n": 4}', 'v4_idem', 'in_progress', 1, 'w3', interval '4 minutes', NULL,
	 interval '2 minutes', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'run-live', 'send',
	 interval '2 minutes', NULL, interval '2 minutes'),
	('v4-check', '{"n": 5}', 'v4_write', 'verify', 1, 'w4', NULL, NULL,
	 interval '12 minutes', 'ambiguous', 'mid_execution', 'reset', 'connection reset', NULL,
	 'outcome_unknown', NULL, NULL, NULL, interval '11 minutes', NULL, interval '11 minutes'))
	AS o (key, args, tool, state, lease_token, lease_owner, lease_expires, next_attempt,
		  first_attempt, failure_class, failure_phase, failure_code, failure_message,
		  last_delay, reason, result, run_id, step, updated, completed, since);
UPDATE agentretry.runs r SET retry_events = 1, updated_at = o.updated_at
FROM agentretry.operations o
WHERE o.key = 'v4-retry' AND r.tenant = o.tenant AND r.run_id = o.run_id;
UPDATE agentretry.runs SET state = 'failed', finished_at = clock_timestamp() - interval '5 minutes',
	updated_at = clock_timestamp() - interval '5 minutes'
WHERE run_id = 'run-done';
INSERT INTO agentretry.events (tenant, at, kind, key, tool, run_id, workflow_version, step,
	attempt, failure_class, failure_phase, code, message, reason, delay, lease_token, owner,
	correlation_id)
SELECT o.tenant, clock_timestamp() - e.ago, e.kind, o.key, o.tool, o.run_id,
	r.workflow_version, o.step, o.attempts,
	CASE WHEN e.failed THEN o.last_failure_class END,
	CASE WHEN e.failed THEN o.last_failure_phase END,
	CASE WHEN e.failed THEN o.last_failure_code END,
	CASE WHEN e.failed THEN o.last_failure_message END,
	o.reason, CASE WHEN e.failed THEN o.last_delay END, e.lease_token, e.owner,
	r.correlation_id
FROM agentretry.operations o
JOIN (VALUES ('v4-verify', 'verify', interval '31 minutes', 1, 'w1', true),
			 ('v4-retry', 'retry', interval '17 minutes', 1, 'w2', true),
			 ('v4-check', 'verify', interval '11 minutes', 1, 'w4', true),
			 ('v4-verify', 'verifying', interval '1 minute', 2, 'verifier-0', false))
	AS e (key, kind, ago, lease_token, owner, failed) USING (key)
LEFT JOIN agentretry.runs r USING (tenant, run_id)
ORDER BY e.ago DESC;
INSERT INTO agentretry.events (tenant, at, kind, run_id, workflow_version, reason)
SELECT tenant, finished_at, 'finish_run', run_id, workflow_version, 'failed'
FROM agentretry.runs WHERE run_id = 'run-done';
INSERT INTO agentretry.budget_ledger (tenant, at, scope, subject, key, amount, reason,
	failure_class)
SELECT tenant, updated_at, 'run', run_id, key, 1, 'debit', 'transient'
FROM agentretry.operations WHERE key = 'v4-retry';
SELECT key, tool, state, attempts, lease_token, lease_owner, run_id, step, reason
FROM agentretry.operations ORDER BY key;
SELECT run_id, state, retry_events, context_version, workflow_version, correlation_id,
	finished_at IS NOT NULL AS finished
FROM agentretry.runs ORDER BY run_id;
SELECT kind, key, run_id, attempt, reason, lease_token, owner, workflow_version, correlation_id
FROM agentretry.events ORDER BY id;

-- a copy of every table, to compare after the update
CREATE SCHEMA v040;
DO $$
DECLARE
	t name;
BEGIN
	FOR t IN SELECT c.relname FROM pg_class c
			 WHERE c.relnamespace = 'agentretry'::regnamespace AND c.relkind = 'r'
	LOOP
		EXECUTE format('CREATE TABLE v040.%I AS SELECT * FROM agentretry.%I', t, t);
	END LOOP;
END
$$;
-- For one table: its rows, whether they are the copy's in the copy's
-- columns, the columns the copy lacks, and whether all of those are NULL.
CREATE FUNCTION v040_kept(rel name, OUT rows bigint, OUT unchanged boolean,
	OUT new_columns text, OUT new_columns_null boolean)
LANGUAGE plpgsql AS $$
DECLARE
	old_columns text;
	all_null text;
BEGIN
	SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO old_columns
	FROM pg_attribute a
	WHERE a.attrelid = format('v040.%I', rel)::regclass AND a.attnum > 0;
	SELECT string_agg(a.attname, ', ' ORDER BY a.attnum),
		string_agg(format('%I IS NULL', a.attname), ' AND ')
	INTO new_columns, all_null
	FROM pg_attribute a
	WHERE a.attrelid = format('agentretry.%I', rel)::regclass AND a.attnum > 0
		AND NOT a.attisdropped
		AND NOT EXISTS (SELECT FROM pg_attribute c
						WHERE c.attrelid = format('v040.%I', rel)::regclass
							AND c.attname = a.attname);
	EXECUTE format($q$
		SELECT (SELECT count(*) FROM agentretry.%1$I),
			(SELECT coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')
			 FROM (SELECT %2$s FROM agentretry.%1$I) x)
			= (SELECT coalesce(string_agg(v::text, E'\n' ORDER BY v::text), '')
			   FROM v040.%1$I v),
			(SELECT coalesce(bool_and(%3$s), true) FROM agentretry.%1$I)$q$,
		rel, old_columns, coalesce(all_null, 'true'))
	INTO rows, unchanged, new_columns_null;
END
$$;

--
-- the update from 0.4.0
--
ALTER EXTENSION agentretry UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'agentretry';
SELECT count(*) AS config_relations, bool_and(present) AS all_present,
	string_agg(format('%s %L %s', relation, condition, present), ', ' ORDER BY relation)
		= :'fresh_config' AS as_installed
FROM ar_config();

-- what the update to 0.5.0 added (not listing the columns of new
-- relations), removed (complete and resolve, replaced by ones with a new
-- last parameter, receipt) and changed (decision_action got a label;
-- approval_queue names the states it leaves out, so that it can read
-- operations_attention; schedule_sweep and unschedule_sweep read
-- cron.database_name through cron_database() and check the use of schema
-- cron; set_budget accepts any positive capacity; check_policy refuses
-- "*" as a compensate_tool)
SELECT a.object FROM ar_objects() a
WHERE a.object NOT IN (SELECT v.object FROM v040_objects v)
	AND (a.parent IS NULL OR a.parent IN (SELECT v.object FROM v040_objects v)
		 OR a.parent IN (SELECT 'composite ' || v.object FROM v040_objects v))
ORDER BY 1;
SELECT object FROM v040_objects EXCEPT SELECT object FROM ar_objects() ORDER BY 1;
SELECT v.object FROM v040_objects v JOIN ar_objects() a USING (object)
WHERE a.definition IS DISTINCT FROM v.definition ORDER BY 1;
-- and the result is the fresh install, object for object
CREATE TABLE fresh_objects AS
SELECT split_part(o, E'\t', 1) AS object, split_part(o, E'\t', 2) AS definition
FROM unnest(string_to_array(:'fresh_objects', E'\n')) o;
CREATE VIEW install_vs_upgrade AS
SELECT object, f.definition AS installed, u.definition AS upgraded
FROM fresh_objects f FULL JOIN ar_objects() u USING (object)
WHERE f.definition IS DISTINCT FROM u.definition;
SELECT count(*) AS objects, count(DISTINCT object) AS names,
	(SELECT count(*) FROM fresh_objects) AS installed,
	(SELECT count(*) FROM install_vs_upgrade) AS differing
FROM ar_objects();
SELECT * FROM install_vs_upgrade ORDER BY 1;

--
-- the 0.4.0 rows after the update
--
-- every row is as it was, in every column 0.4.0 had; the columns 0.5.0
-- added are NULL in all of them, but for the operations awaiting
-- verification, due for reconcile() when they go stale (15 minutes after
-- they began to wait), like those that begin to wait from now on
SELECT c.relname AS relation, k.*
FROM pg_class c, v040_kept(c.relname) k
WHERE c.relnamespace = 'v040'::regnamespace
ORDER BY 1;
SELECT key, state, receipt, observed_receipt,
	reconcile_at = state_since + interval '15 minutes' AS due_when_stale
FROM agentretry.operations
WHERE receipt IS NOT NULL OR observed_receipt IS NOT NULL OR reconcile_at IS NOT NULL
ORDER BY key;
SELECT count(*) AS anomalies FROM agentretry.anomalies;
SELECT count(*) AS stats_rows FROM agentretry.stats_counts;
-- so reconcile() finds nothing to look at but the verification that went
-- stale before the update (v4-verify, waiting for half an hour): not run-done,
-- finished with a step open, nor the other verification (v4-check, not
-- stale yet); otherwise only what happens from now on
SELECT agentretry.reconcile() AS anomalies_found;

-- the lease taken under 0.4.0 holds: busy for others, and its holder
-- completes with its token and a receipt
SELECT outcome, attempt, lease_token
FROM agentretry.claim('v4-leased', '{"n": 4}', 'v4_idem', run_id => 'run-live', step => 'send');
SELECT agentretry.complete('v4-leased', 1, '{"receipt": 4}', receipt => 'rcpt-4');
SELECT key, state, reason, result, receipt, observed_receipt,
	reconcile_at = completed_at AS reconcile_now
FROM agentretry.operations WHERE key = 'v4-leased';
-- a verification worker skips v4-verify, whose verification lease of
-- 0.4.0 holds, leases v4-check and resolves it with a receipt
SELECT key, tool, attempt, lease_token, run_id, last_failure_class, last_failure_code
FROM agentretry.claim_verifications('verifier-1');
SELECT agentretry.resolve('v4-check', 2, true, '{"receipt": 5}', receipt => 'rcpt-5');
-- late evidence resolves the verification verifier-0 holds; verifier-0,
-- finding the same receipt, agrees
SELECT agentretry.observe('v4-verify', 'rcpt-2', source => 'webhook',
	detail => '{"status": "paid"}');
SELECT key, state, reason, result, receipt, observed_receipt, lease_token,
	reconcile_at = completed_at AS reconcile_now
FROM agentretry.operations WHERE key = 'v4-verify';
SELECT agentretry.resolve('v4-verify', 2, true, receipt => 'rcpt-2');
-- a success of 0.4.0, which has no receipt: the evidence confirms it and
-- stores its receipt; evidence of an unknown key is an orphan side effect
SELECT agentretry.observe('v4-done', 'rcpt-1', source => 'audit');
SELECT agentretry.observe('v4-elsewhere', 'rcpt-9', source => 'audit');
-- claim_due leases the retry that 0.4.0 scheduled, as attempt 2, which
-- succeeds: a success after a retry
SELECT key, attempt, lease_token, run_id, step FROM agentretry.claim_due('worker-1');
SELECT agentretry.complete('v4-retry', 2, '{"receipt": 3}', receipt => 'rcpt-3');
-- a new step of run-live is still in progress when the run finishes
SELECT outcome, attempt, lease_token
FROM agentretry.claim('v4-new', '{"n": 9}', 'v4_idem', run_id => 'run-live', step => 'notify');
SELECT agentretry.finish_run('run-live');
SELECT key, state, attempts, reason, result, receipt, reconcile_at IS NOT NULL AS to_reconcile
FROM agentretry.operations ORDER BY key;
SELECT run_id, state, retry_events, reconcile_at IS NOT NULL AS to_reconcile
FROM agentretry.runs ORDER BY run_id;
-- reconcile() looks at what changed since the update: the success after a
-- retry, and run-live finished with a step open; the other successes had
-- one attempt, and no receipt is on two keys
SELECT agentretry.reconcile() AS anomalies_found;
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail - 'since' AS detail
FROM agentretry.anomalies ORDER BY id;
-- an operator acknowledges the orphan, once: a second call keeps the
-- first time and note
SELECT agentretry.acknowledge(id, 'checked with the provider') AS acknowledged_at
FROM agentretry.anomalies WHERE kind = 'orphan_side_effect' \gset
SELECT agentretry.acknowledge(id, 'again') = :'acknowledged_at' AS first_time
FROM agentretry.anomalies WHERE kind = 'orphan_side_effect';
SELECT kind, key, acknowledged_at = :'acknowledged_at' AS acknowledged, acknowledged_by, note
FROM agentretry.anomalies WHERE acknowledged_at IS NOT NULL;
-- the events of 0.5.0 carry the receipt and the evidence
SELECT kind, key, run_id, reason, receipt, source, detail, workflow_version, correlation_id
FROM agentretry.events WHERE id > (SELECT max(id) FROM v040.events) ORDER BY id;
-- stats() counts what this session did since the update
SELECT tenant, tool, first_attempts, executions, replays, retries, successes,
	successes_after_retry, verifications, dead_letters, anomalies, retry_rate,
	completion_p50, completion_p95
FROM agentretry.stats();
-- and the sweep, which reconciles too, has nothing left to do
SELECT * FROM agentretry.sweep();

\c contrib_regression
DROP DATABASE ar_upgrade;
DROP DATABASE ar_fresh;
DROP DATABASE ar_v030;
DROP DATABASE ar_v040;
