/* agentretry--0.1.0--0.2.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION agentretry UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- 0.2.0: retry scheduling (claim_due), the sweep and pg_cron, tenant
-- policies, operator controls (requeue, cancel) and the operator's views.
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- operations: when the current state began, and the scheduling indexes
--
-- operations_retry_due holds only waiting rows by due time,
-- operations_lease_expiry only leased rows by lease expiry, so claim_due
-- and the sweep read the rows that are due, whatever the size of the
-- table.  operations_expiry holds terminal rows by purge time.  All are
-- partial, so a row enters an index only while it needs to.  (One index
-- over both kinds would see three entries per retry cycle instead of one
-- for the part claim_due reads most.)
-- ---------------------------------------------------------------------------
ALTER TABLE agentretry.operations ADD COLUMN state_since timestamptz;
COMMENT ON COLUMN agentretry.operations.state_since IS
	'when the operation entered its current state (NULL for rows last changed before 0.2.0: see updated_at)';

CREATE INDEX operations_retry_due ON agentretry.operations (tenant, next_attempt_at)
	WHERE state = 'retry_wait';
COMMENT ON INDEX agentretry.operations_retry_due IS 'operations waiting for a retry, by due time';

CREATE INDEX operations_lease_expiry ON agentretry.operations (tenant, lease_expires_at)
	WHERE state = 'in_progress';
COMMENT ON INDEX agentretry.operations_lease_expiry IS 'leased operations, by lease expiry';

CREATE INDEX operations_expiry ON agentretry.operations (expires_at)
	WHERE expires_at IS NOT NULL;
COMMENT ON INDEX agentretry.operations_expiry IS 'terminal operations by the time they may be purged';

CREATE INDEX events_at ON agentretry.events (at);

-- Fencing tokens must keep growing when a key is used again after the
-- sweep purged its old row: a worker of the old operation may still hold
-- one of its tokens.  New operations start above their tenant's floor, the
-- highest token of any operation purged in it.  Rows are only appended
-- (when a purge raises the floor), never updated, so that overlapping
-- sweeps never wait for each other; tokens are small numbers, so a tenant
-- has few rows.
CREATE TABLE agentretry.token_floors (
	tenant text NOT NULL,
	id bigint GENERATED ALWAYS AS IDENTITY,
	floor bigint NOT NULL CHECK (floor >= 0),
	raised_at timestamptz NOT NULL,
	PRIMARY KEY (tenant, id)
);
CREATE INDEX token_floors_floor ON agentretry.token_floors (tenant, floor);
COMMENT ON TABLE agentretry.token_floors IS
	'per tenant, the fencing tokens of purged operations: new operations'' tokens start above the highest';
SELECT pg_catalog.pg_extension_config_dump('agentretry.token_floors', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.token_floors_id_seq', '');
COMMENT ON INDEX agentretry.events_at IS 'events by time, for the retention purge';

-- ---------------------------------------------------------------------------
-- policy validation, shared by register_tool and set_tenant_policy
--
-- Not granted to anybody: the SECURITY DEFINER functions call it as the
-- extension owner.
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.check_policy(
	max_attempts integer,
	base_delay interval,
	max_delay interval,
	multiplier double precision,
	deadline interval,
	lease interval,
	ttl interval,
	compensate_tool text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF max_attempts IS NOT NULL AND max_attempts < 1 THEN
		RAISE EXCEPTION 'max_attempts must be at least 1'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('max_attempts is %s.', max_attempts);
	END IF;
	-- intervals are bounded so that now + interval can never overflow
	IF base_delay IS NOT NULL AND base_delay NOT BETWEEN interval '0' AND interval '100 years' THEN
		RAISE EXCEPTION 'base_delay must be between 0 and 100 years'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF max_delay IS NOT NULL AND max_delay NOT BETWEEN interval '0' AND interval '100 years' THEN
		RAISE EXCEPTION 'max_delay must be between 0 and 100 years'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF base_delay IS NOT NULL AND max_delay IS NOT NULL AND max_delay < base_delay THEN
		RAISE EXCEPTION 'max_delay must not be less than base_delay'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('base_delay is %s, max_delay is %s.', base_delay, max_delay);
	END IF;
	IF multiplier IS NOT NULL AND (multiplier < 1 OR multiplier = 'NaN'::float8 OR multiplier = 'Infinity'::float8) THEN
		RAISE EXCEPTION 'multiplier must be a finite number of at least 1'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF deadline IS NOT NULL AND (deadline <= interval '0' OR deadline > interval '100 years') THEN
		RAISE EXCEPTION 'deadline must be positive and at most 100 years'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF lease IS NOT NULL AND lease NOT BETWEEN interval '1 second' AND interval '1 day' THEN
		RAISE EXCEPTION 'lease must be between 1 second and 1 day'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('lease is %s.', lease);
	END IF;
	IF ttl IS NOT NULL AND (ttl <= interval '0' OR ttl > interval '100 years') THEN
		RAISE EXCEPTION 'ttl must be positive and at most 100 years'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF compensate_tool IS NOT NULL AND octet_length(compensate_tool) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'compensate_tool must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION agentretry.check_policy(integer, interval, interval, double precision, interval, interval, interval, text) IS
	'raise invalid_parameter_value for a policy field out of range (internal)';

-- register_tool: same behaviour, validation shared, and the name '*' is
-- reserved (it stands for "every tool" in tenant_policies)
CREATE OR REPLACE FUNCTION agentretry.register_tool(
	name text,
	idempotency agentretry.idempotency_class,
	side_effect agentretry.side_effect_class,
	max_attempts integer DEFAULT NULL,
	base_delay interval DEFAULT NULL,
	max_delay interval DEFAULT NULL,
	multiplier double precision DEFAULT NULL,
	jitter agentretry.jitter_mode DEFAULT NULL,
	deadline interval DEFAULT NULL,
	lease interval DEFAULT NULL,
	ttl interval DEFAULT NULL,
	compensate_tool text DEFAULT NULL)
RETURNS agentretry.tools
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r agentretry.tools;
BEGIN
	IF name IS NULL OR idempotency IS NULL OR side_effect IS NULL THEN
		RAISE EXCEPTION 'name, idempotency and side_effect must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(name) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tool name must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF name = '*' THEN
		RAISE EXCEPTION 'tool name "*" is reserved'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'In tenant policies "*" stands for every tool of the tenant.';
	END IF;
	PERFORM agentretry.check_policy(max_attempts, base_delay, max_delay, multiplier,
									deadline, lease, ttl, compensate_tool);

	INSERT INTO agentretry.tools AS t
		(name, idempotency, side_effect, max_attempts, base_delay, max_delay,
		 multiplier, jitter, deadline, lease, ttl, compensate_tool)
	VALUES
		(register_tool.name, register_tool.idempotency, register_tool.side_effect,
		 register_tool.max_attempts, register_tool.base_delay, register_tool.max_delay,
		 register_tool.multiplier, register_tool.jitter, register_tool.deadline,
		 register_tool.lease, register_tool.ttl, register_tool.compensate_tool)
	ON CONFLICT ON CONSTRAINT tools_pkey DO UPDATE SET
		idempotency = excluded.idempotency,
		side_effect = excluded.side_effect,
		max_attempts = excluded.max_attempts,
		base_delay = excluded.base_delay,
		max_delay = excluded.max_delay,
		multiplier = excluded.multiplier,
		jitter = excluded.jitter,
		deadline = excluded.deadline,
		lease = excluded.lease,
		ttl = excluded.ttl,
		compensate_tool = excluded.compensate_tool,
		updated_at = pg_catalog.clock_timestamp()
	RETURNING t.* INTO r;
	RETURN r;
END
$$;

-- ---------------------------------------------------------------------------
-- tenant policies
--
-- Merge order, field by field (a NULL field is not set): the tier default
-- of the tool's side effect < the tool < the tenant's row for tool '*'
-- (every tool) < the tenant's row for the tool.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.tenant_policies (
	tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 128),
	tool text NOT NULL CHECK (octet_length(tool) BETWEEN 1 AND 128),
	max_attempts integer CHECK (max_attempts >= 1),
	base_delay interval CHECK (base_delay BETWEEN interval '0' AND interval '100 years'),
	max_delay interval CHECK (max_delay BETWEEN interval '0' AND interval '100 years'),
	multiplier double precision CHECK (multiplier >= 1),
	jitter agentretry.jitter_mode,
	deadline interval CHECK (deadline > interval '0' AND deadline <= interval '100 years'),
	lease interval CHECK (lease BETWEEN interval '1 second' AND interval '1 day'),
	ttl interval CHECK (ttl > interval '0' AND ttl <= interval '100 years'),
	compensate_tool text CHECK (octet_length(compensate_tool) BETWEEN 1 AND 128),
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	PRIMARY KEY (tenant, tool)
);
COMMENT ON TABLE agentretry.tenant_policies IS
	'per-tenant policy overrides; tool ''*'' applies to every tool of the tenant; NULL fields are not overridden';
SELECT pg_catalog.pg_extension_config_dump('agentretry.tenant_policies', '');

-- Backends cache whether any tenant has a policy (the hot statements skip
-- the lookups while none has); every change tells them to ask again.
CREATE FUNCTION agentretry.invalidate_cache()
RETURNS trigger
AS 'MODULE_PATHNAME', 'agentretry_invalidate_cache'
LANGUAGE C;
COMMENT ON FUNCTION agentretry.invalidate_cache() IS
	'trigger: make every backend forget what it cached about this table (internal)';
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.tenant_policies FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

CREATE FUNCTION agentretry.set_tenant_policy(
	tenant text,
	tool text DEFAULT NULL,
	max_attempts integer DEFAULT NULL,
	base_delay interval DEFAULT NULL,
	max_delay interval DEFAULT NULL,
	multiplier double precision DEFAULT NULL,
	jitter agentretry.jitter_mode DEFAULT NULL,
	deadline interval DEFAULT NULL,
	lease interval DEFAULT NULL,
	ttl interval DEFAULT NULL,
	compensate_tool text DEFAULT NULL)
RETURNS agentretry.tenant_policies
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r agentretry.tenant_policies;
	t text := coalesce(set_tenant_policy.tenant, 'default');
	k text := coalesce(set_tenant_policy.tool, '*');
BEGIN
	IF octet_length(t) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(k) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tool name must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM agentretry.check_policy(max_attempts, base_delay, max_delay, multiplier,
									deadline, lease, ttl, compensate_tool);

	INSERT INTO agentretry.tenant_policies AS p
		(tenant, tool, max_attempts, base_delay, max_delay, multiplier, jitter,
		 deadline, lease, ttl, compensate_tool)
	VALUES
		(t, k, set_tenant_policy.max_attempts, set_tenant_policy.base_delay,
		 set_tenant_policy.max_delay, set_tenant_policy.multiplier,
		 set_tenant_policy.jitter, set_tenant_policy.deadline,
		 set_tenant_policy.lease, set_tenant_policy.ttl,
		 set_tenant_policy.compensate_tool)
	ON CONFLICT ON CONSTRAINT tenant_policies_pkey DO UPDATE SET
		max_attempts = excluded.max_attempts,
		base_delay = excluded.base_delay,
		max_delay = excluded.max_delay,
		multiplier = excluded.multiplier,
		jitter = excluded.jitter,
		deadline = excluded.deadline,
		lease = excluded.lease,
		ttl = excluded.ttl,
		compensate_tool = excluded.compensate_tool,
		updated_at = pg_catalog.clock_timestamp()
	RETURNING p.* INTO r;
	RETURN r;
END
$$;
COMMENT ON FUNCTION agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text) IS
	'set or replace a tenant''s policy override for one tool, or for every tool when tool is NULL';

CREATE FUNCTION agentretry.drop_tenant_policy(tenant text, tool text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text := coalesce(drop_tenant_policy.tenant, 'default');
	k text := coalesce(drop_tenant_policy.tool, '*');
BEGIN
	IF octet_length(t) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(k) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tool name must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM agentretry.tenant_policies p WHERE p.tenant = t AND p.tool = k;
	RETURN FOUND;
END
$$;
COMMENT ON FUNCTION agentretry.drop_tenant_policy(text, text) IS
	'remove a tenant''s policy override for one tool (NULL: the override for every tool); false when there was none';

CREATE FUNCTION agentretry.effective_policy(tenant text DEFAULT NULL, tool text DEFAULT 'default')
RETURNS TABLE (field text, value text, source text)
AS 'MODULE_PATHNAME', 'agentretry_effective_policy'
LANGUAGE C STABLE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.effective_policy(text, text) IS
	'the policy decisions use for a tenant''s tool, field by field, and where each value came from: default, tool, tenant or tenant_tool';

-- ---------------------------------------------------------------------------
-- scheduling: claim_due and the sweep
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.claim_due(
	owner text,
	max integer DEFAULT 10,
	tools text[] DEFAULT NULL,
	tenant text DEFAULT NULL,
	lease interval DEFAULT NULL)
RETURNS TABLE (tenant text, key text, tool text, args jsonb, attempt integer,
			   lease_token bigint, lease_expires_at timestamptz,
			   run_id text, step text)
AS 'MODULE_PATHNAME', 'agentretry_claim_due'
LANGUAGE C VOLATILE SECURITY DEFINER ROWS 10;
COMMENT ON FUNCTION agentretry.claim_due(text, integer, text[], text, interval) IS
	'lease up to max due retries (and expired leases of idempotent tools), oldest due first, skipping rows other workers hold';

CREATE TYPE agentretry.sweep_summary AS (
	leases_expired integer,
	deadlines_exceeded integer,
	operations_purged integer,
	events_purged integer,
	due_retries bigint,
	more boolean
);
COMMENT ON TYPE agentretry.sweep_summary IS
	'what one sweep() did; more = a step stopped at max, call again';

CREATE FUNCTION agentretry.sweep(max integer DEFAULT 1000)
RETURNS agentretry.sweep_summary
AS 'MODULE_PATHNAME', 'agentretry_sweep'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.sweep(integer) IS
	'decide expired leases, dead-letter waits past their deadline, purge rows past TTL and retention (at most max of each), NOTIFY agentretry with the due count';

-- pg_cron.  SECURITY INVOKER: the job belongs to, and runs as, the role
-- that schedules it, which needs pg_cron's own privileges.  The statements
-- run through EXECUTE with parameters so that this function can be created
-- and called where the cron schema does not exist.  pg_cron overloads
-- schedule and unschedule, hence to_regprocedure with the signature used.
CREATE FUNCTION agentretry.schedule_sweep(schedule text DEFAULT '* * * * *')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	job_name text := 'agentretry-sweep:' || current_database();
	cron_db text := current_setting('cron.database_name', true);
	job bigint;
BEGIN
	IF schedule IS NULL THEN
		RAISE EXCEPTION 'schedule must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF to_regprocedure('cron.schedule(text, text, text)') IS NULL THEN
		IF cron_db IS NULL OR cron_db = '' THEN
			RAISE EXCEPTION 'pg_cron is not installed'
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Add pg_cron to shared_preload_libraries and CREATE EXTENSION pg_cron, or call agentretry.sweep() from another scheduler.';
		ELSIF cron_db = current_database() THEN
			RAISE EXCEPTION 'pg_cron is loaded but not created in this database'
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Run CREATE EXTENSION pg_cron in this database.';
		ELSE
			RAISE EXCEPTION 'pg_cron runs in database "%", not in this one', cron_db
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = format('Run in database %I: SELECT cron.schedule_in_database(%L, %L, %L, %L);',
									cron_db, job_name, schedule, 'SELECT agentretry.sweep()',
									current_database());
		END IF;
	END IF;
	IF cron_db IS NULL OR cron_db = current_database() THEN
		EXECUTE 'SELECT cron.schedule($1, $2, $3)'
			INTO job USING job_name, schedule, 'SELECT agentretry.sweep()';
	ELSE
		EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
			INTO job USING job_name, schedule, 'SELECT agentretry.sweep()', current_database();
	END IF;
	RETURN job;
END
$$;
COMMENT ON FUNCTION agentretry.schedule_sweep(text) IS
	'schedule agentretry.sweep() with pg_cron (job "agentretry-sweep:<database>"); calling it again replaces the schedule';

CREATE FUNCTION agentretry.unschedule_sweep()
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	job_name text := 'agentretry-sweep:' || current_database();
	cron_db text := current_setting('cron.database_name', true);
	found boolean;
BEGIN
	IF to_regprocedure('cron.unschedule(name)') IS NULL THEN
		IF cron_db IS NULL OR cron_db = '' OR cron_db = current_database() THEN
			RAISE EXCEPTION 'pg_cron is not installed'
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Nothing was scheduled through pg_cron in this database.';
		END IF;
		RAISE EXCEPTION 'pg_cron runs in database "%", not in this one', cron_db
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = format('Run in database %I: SELECT cron.unschedule(%L);', cron_db, job_name);
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT FROM cron.job WHERE jobname = $1 AND username = current_user)'
		INTO found USING job_name;
	IF found THEN
		EXECUTE 'SELECT cron.unschedule($1)' USING job_name;
	END IF;
	RETURN found;
END
$$;
COMMENT ON FUNCTION agentretry.unschedule_sweep() IS
	'remove the pg_cron job of schedule_sweep(); false when there was none';

-- ---------------------------------------------------------------------------
-- operator controls
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.requeue(
	key text,
	tenant text DEFAULT NULL,
	reset_attempts boolean DEFAULT false)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_requeue'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.requeue(text, text, boolean) IS
	'make a dead, cancelled, waiting or unverified operation due now, fencing out earlier leases; restarts its deadline';

CREATE FUNCTION agentretry.cancel(
	key text,
	tenant text DEFAULT NULL,
	reason text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_cancel'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.cancel(text, text, text) IS
	'end an operation that has not succeeded; claims then answer cancelled with the reason';

-- ---------------------------------------------------------------------------
-- operator views
-- ---------------------------------------------------------------------------
CREATE VIEW agentretry.in_flight AS
SELECT o.tenant, o.key, o.tool, o.state, o.attempts,
	   o.lease_owner, o.lease_token, o.lease_expires_at,
	   o.state = 'in_progress' AND o.lease_expires_at <= pg_catalog.clock_timestamp() AS lease_expired,
	   o.next_attempt_at, o.deadline,
	   o.last_failure_class, o.last_failure_phase, o.last_failure_code,
	   o.last_failure_message, o.reason,
	   o.first_attempt_at, o.last_attempt_at,
	   coalesce(o.state_since, o.updated_at) AS since,
	   o.run_id, o.step
FROM agentretry.operations o
WHERE o.state IN ('in_progress', 'retry_wait');
COMMENT ON VIEW agentretry.in_flight IS
	'operations being attempted or waiting for a retry: who holds them, until when, and why the last attempt failed';

CREATE VIEW agentretry.dead_letters AS
SELECT o.tenant, o.key, o.tool, o.attempts, o.reason,
	   o.last_failure_class, o.last_failure_phase, o.last_failure_code,
	   o.last_failure_message,
	   o.first_attempt_at, o.last_attempt_at,
	   coalesce(o.state_since, o.completed_at, o.updated_at) AS since,
	   o.deadline, o.expires_at, o.run_id, o.step, o.args
FROM agentretry.operations o
WHERE o.state = 'dead';
COMMENT ON VIEW agentretry.dead_letters IS
	'dead-lettered operations awaiting an operator: requeue() or cancel()';

CREATE VIEW agentretry.verify_queue AS
SELECT o.tenant, o.key, o.tool, o.attempts, o.reason,
	   o.last_failure_class, o.last_failure_phase, o.last_failure_code,
	   o.last_failure_message,
	   coalesce(o.state_since, o.updated_at) AS since,
	   CASE WHEN o.lease_expires_at > pg_catalog.clock_timestamp() THEN o.lease_owner END AS verifier,
	   CASE WHEN o.lease_expires_at > pg_catalog.clock_timestamp() THEN o.lease_expires_at END AS verifier_lease_expires_at,
	   o.last_attempt_at, o.run_id, o.step, o.args
FROM agentretry.operations o
WHERE o.state = 'verify';
COMMENT ON VIEW agentretry.verify_queue IS
	'operations whose last attempt may or may not have happened: check the target system, then resolve(), requeue() or cancel()';

-- ---------------------------------------------------------------------------
-- privileges: nothing for PUBLIC
-- ---------------------------------------------------------------------------
REVOKE ALL ON agentretry.tenant_policies, agentretry.token_floors, agentretry.in_flight,
	agentretry.dead_letters, agentretry.verify_queue FROM PUBLIC;
REVOKE ALL ON FUNCTION
	agentretry.invalidate_cache(),
	agentretry.check_policy(integer, interval, interval, double precision, interval, interval, interval, text),
	agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text),
	agentretry.drop_tenant_policy(text, text),
	agentretry.effective_policy(text, text),
	agentretry.claim_due(text, integer, text[], text, interval),
	agentretry.sweep(integer),
	agentretry.schedule_sweep(text),
	agentretry.unschedule_sweep(),
	agentretry.requeue(text, text, boolean),
	agentretry.cancel(text, text, text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION agentretry.effective_policy(text, text)
TO agentretry_agent, agentretry_operator, agentretry_admin;

GRANT EXECUTE ON FUNCTION agentretry.claim_due(text, integer, text[], text, interval)
TO agentretry_agent;

GRANT EXECUTE ON FUNCTION
	agentretry.sweep(integer),
	agentretry.requeue(text, text, boolean),
	agentretry.cancel(text, text, text)
TO agentretry_operator;

GRANT EXECUTE ON FUNCTION
	agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text),
	agentretry.drop_tenant_policy(text, text),
	agentretry.schedule_sweep(text),
	agentretry.unschedule_sweep()
TO agentretry_admin;

GRANT SELECT ON agentretry.tenant_policies TO agentretry_agent, agentretry_operator, agentretry_admin;
GRANT SELECT ON agentretry.token_floors TO agentretry_operator;
GRANT SELECT ON agentretry.in_flight, agentretry.dead_letters, agentretry.verify_queue
TO agentretry_operator;
