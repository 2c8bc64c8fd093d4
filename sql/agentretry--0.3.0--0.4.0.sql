/* agentretry--0.3.0--0.4.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION agentretry UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- 0.4.0: runs with versioned context, compensation (sagas) and approval
-- gates.
--
-- Behaviour change: a tool registered as destructive now requires a
-- person's approval before its first attempt (policy field
-- requires_approval, default true for destructive tools).  The first claim
-- of such an operation answers outcome 'approval' and leaves it in state
-- awaiting_approval until an operator calls approve() or reject().  Keep
-- the 0.3.0 behaviour for a tool with
--	 SELECT agentretry.register_tool(..., requires_approval => false);
-- Operations already claimed before the update are not affected.
--
-- New values of existing enums cannot be used by name in the transaction
-- that adds them, so the views below compare those states as text.
-- ---------------------------------------------------------------------------

ALTER TYPE agentretry.operation_state ADD VALUE 'awaiting_approval';
ALTER TYPE agentretry.outcome ADD VALUE 'approval';

CREATE TYPE agentretry.run_state AS ENUM
	('running', 'succeeded', 'failed', 'compensating', 'compensated', 'needs_review');
COMMENT ON TYPE agentretry.run_state IS
	'lifecycle of a run: running, finished (succeeded or failed), or undoing its steps (compensating, then compensated or needs_review)';

-- ---------------------------------------------------------------------------
-- runs
--
-- A run is one execution of an agent's multi-step workflow.  It replaces
-- run_retries: its retry_events column is the per-run retry limit's
-- counter, checked against max_retry_events (NULL: the GUC
-- agentretry.run_max_retries).  context_version is the newest checkpoint.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.runs (
	tenant text NOT NULL,
	run_id text NOT NULL,
	state agentretry.run_state NOT NULL,
	workflow_version text,
	correlation_id text,
	max_retry_events integer CHECK (max_retry_events >= 0),
	retry_events integer NOT NULL DEFAULT 0,
	context_version integer NOT NULL DEFAULT 0,
	compensate_reason text,
	started_at timestamptz NOT NULL,
	updated_at timestamptz NOT NULL,
	finished_at timestamptz,
	PRIMARY KEY (tenant, run_id)
);
COMMENT ON TABLE agentretry.runs IS
	'one row per run: state, workflow version, correlation id, retry events used and allowed, newest context version';
COMMENT ON COLUMN agentretry.runs.max_retry_events IS
	'retry events allowed in the run; NULL: agentretry.run_max_retries';
COMMENT ON COLUMN agentretry.runs.updated_at IS
	'last change; the sweep purges a run idle for agentretry.default_ttl once none of its operations is left';
CREATE INDEX runs_updated_at ON agentretry.runs (updated_at);
-- the sweep advances the sagas of runs being compensated or under review
CREATE INDEX runs_compensating ON agentretry.runs (updated_at)
	WHERE state IN ('compensating', 'needs_review');
SELECT pg_catalog.pg_extension_config_dump('agentretry.runs', '');

-- The counters of 0.3.0 and the runs its operations name become runs.
INSERT INTO agentretry.runs (tenant, run_id, state, retry_events, started_at, updated_at)
SELECT x.tenant, x.run_id, 'running', max(x.retries), min(x.at), max(x.at)
FROM (SELECT r.tenant, r.run_id, r.retries, r.updated_at AS at
	  FROM agentretry.run_retries r
	  UNION ALL
	  SELECT o.tenant, o.run_id, 0, o.created_at
	  FROM agentretry.operations o WHERE o.run_id IS NOT NULL) x
GROUP BY x.tenant, x.run_id;

ALTER EXTENSION agentretry DROP TABLE agentretry.run_retries;
DROP TABLE agentretry.run_retries;

-- Versioned context: checkpoint() appends version n + 1, context() reads
-- the newest committed one.  Purged with the run.
CREATE TABLE agentretry.run_context (
	tenant text NOT NULL,
	run_id text NOT NULL,
	version integer NOT NULL CHECK (version >= 1),
	step text NOT NULL,
	context jsonb NOT NULL,
	created_at timestamptz NOT NULL,
	PRIMARY KEY (tenant, run_id, version)
);
COMMENT ON TABLE agentretry.run_context IS
	'versions of a run''s shared context, one row per checkpoint; a rolled-back checkpoint leaves none';
SELECT pg_catalog.pg_extension_config_dump('agentretry.run_context', '');

-- ---------------------------------------------------------------------------
-- operations: compensations and approval
-- ---------------------------------------------------------------------------
ALTER TABLE agentretry.operations ADD COLUMN compensation_of text;
COMMENT ON COLUMN agentretry.operations.compensation_of IS
	'for a compensation (key <step key>:compensate): the key of the step it undoes';
ALTER TABLE agentretry.operations ADD COLUMN compensating boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN agentretry.operations.compensating IS
	'the operation''s run is being compensated: a late success of a step is compensated too, a failed step is not retried, a compensation''s end moves the saga on';

CREATE INDEX operations_run ON agentretry.operations (tenant, run_id)
	WHERE run_id IS NOT NULL;

ALTER TABLE agentretry.events ADD COLUMN correlation_id text;
ALTER TABLE agentretry.events ADD COLUMN actor text;
COMMENT ON COLUMN agentretry.events.actor IS
	'the role that acted, for operator actions and approvals';

-- ---------------------------------------------------------------------------
-- approval gates: policy field requires_approval at every level
-- ---------------------------------------------------------------------------
ALTER TABLE agentretry.tools ADD COLUMN requires_approval boolean;
COMMENT ON COLUMN agentretry.tools.requires_approval IS
	'claims wait for approve() before the first attempt; NULL: true for destructive tools, else false';
ALTER TABLE agentretry.tenant_policies ADD COLUMN requires_approval boolean;

-- Backends cache whether any tool requires approval (claims of new keys
-- then use a statement without the gate while none does); every change
-- tells them to ask again.
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.tools FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

DROP FUNCTION agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text);
CREATE FUNCTION agentretry.register_tool(
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
	compensate_tool text DEFAULT NULL,
	requires_approval boolean DEFAULT NULL)
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
		 multiplier, jitter, deadline, lease, ttl, compensate_tool, requires_approval)
	VALUES
		(register_tool.name, register_tool.idempotency, register_tool.side_effect,
		 register_tool.max_attempts, register_tool.base_delay, register_tool.max_delay,
		 register_tool.multiplier, register_tool.jitter, register_tool.deadline,
		 register_tool.lease, register_tool.ttl, register_tool.compensate_tool,
		 register_tool.requires_approval)
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
		requires_approval = excluded.requires_approval,
		updated_at = pg_catalog.clock_timestamp()
	RETURNING t.* INTO r;
	RETURN r;
END
$$;
COMMENT ON FUNCTION agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean) IS
	'register or replace a tool: idempotency, side-effect tier and policy fields (NULL takes the tier default)';

DROP FUNCTION agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text);
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
	compensate_tool text DEFAULT NULL,
	requires_approval boolean DEFAULT NULL)
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
		 deadline, lease, ttl, compensate_tool, requires_approval)
	VALUES
		(t, k, set_tenant_policy.max_attempts, set_tenant_policy.base_delay,
		 set_tenant_policy.max_delay, set_tenant_policy.multiplier,
		 set_tenant_policy.jitter, set_tenant_policy.deadline,
		 set_tenant_policy.lease, set_tenant_policy.ttl,
		 set_tenant_policy.compensate_tool, set_tenant_policy.requires_approval)
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
		requires_approval = excluded.requires_approval,
		updated_at = pg_catalog.clock_timestamp()
	RETURNING p.* INTO r;
	RETURN r;
END
$$;
COMMENT ON FUNCTION agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean) IS
	'set or replace a tenant''s policy override for one tool, or for every tool when tool is NULL';

-- ---------------------------------------------------------------------------
-- runs, context and compensation
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.start_run(
	run_id text,
	tenant text DEFAULT NULL,
	workflow_version text DEFAULT NULL,
	max_retry_events integer DEFAULT NULL,
	correlation_id text DEFAULT NULL)
RETURNS agentretry.run_state
AS 'MODULE_PATHNAME', 'agentretry_start_run'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.start_run(text, text, text, integer, text) IS
	'start a run, or return the state of the run already started; AR001 when it was started with another workflow_version';

CREATE FUNCTION agentretry.finish_run(
	run_id text,
	tenant text DEFAULT NULL,
	succeeded boolean DEFAULT true)
RETURNS agentretry.run_state
AS 'MODULE_PATHNAME', 'agentretry_finish_run'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.finish_run(text, text, boolean) IS
	'end a running run as succeeded or failed';

CREATE FUNCTION agentretry.checkpoint(
	run_id text,
	step text,
	context jsonb,
	tenant text DEFAULT NULL,
	expected_version integer DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'agentretry_checkpoint'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.checkpoint(text, text, jsonb, text, integer) IS
	'store the next version of the run''s context and return its number; AR005 when expected_version is not the newest';

CREATE FUNCTION agentretry.context(
	run_id text,
	tenant text DEFAULT NULL,
	version integer DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'agentretry_context'
LANGUAGE C STABLE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.context(text, text, integer) IS
	'the newest committed context of the run, or the version asked for; NULL when there is none';

-- The GUC's value; run_status calls it, which loads the library that
-- defines the setting (current_setting() would not).
CREATE FUNCTION agentretry.run_max_retries()
RETURNS integer
AS 'MODULE_PATHNAME', 'agentretry_run_max_retries'
LANGUAGE C STABLE;
COMMENT ON FUNCTION agentretry.run_max_retries() IS
	'the value of agentretry.run_max_retries: retry events allowed to a run that sets no max_retry_events';
REVOKE ALL ON FUNCTION agentretry.run_max_retries() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agentretry.run_max_retries()
TO agentretry_agent, agentretry_operator, agentretry_admin;

CREATE FUNCTION agentretry.compensate(
	run_id text,
	tenant text DEFAULT NULL,
	reason text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'agentretry_compensate'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.compensate(text, text, text) IS
	'undo the run''s completed steps in reverse completion order; returns how many compensations it scheduled (0 when called again)';

-- ---------------------------------------------------------------------------
-- approvals
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.approve(
	key text,
	tenant text DEFAULT NULL,
	note text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_approve'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.approve(text, text, text) IS
	'approve an operation awaiting approval, for exactly its stored arguments; it is due at once';

CREATE FUNCTION agentretry.reject(
	key text,
	tenant text,
	reason text)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_reject'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.reject(text, text, text) IS
	'refuse an operation awaiting approval: it is cancelled (reason rejected)';

-- ---------------------------------------------------------------------------
-- the sweep purges idle runs with their context
-- ---------------------------------------------------------------------------
ALTER TYPE agentretry.sweep_summary ADD ATTRIBUTE runs_purged integer;

-- ---------------------------------------------------------------------------
-- views
-- ---------------------------------------------------------------------------
CREATE VIEW agentretry.run_status AS
SELECT r.tenant, r.run_id, r.state, r.workflow_version, r.correlation_id,
	   r.started_at, r.updated_at, r.finished_at,
	   coalesce(o.steps, 0) AS steps,
	   coalesce(o.in_progress, 0) AS in_progress,
	   coalesce(o.retry_wait, 0) AS retry_wait,
	   coalesce(o.verify, 0) AS verify,
	   coalesce(o.awaiting_approval, 0) AS awaiting_approval,
	   coalesce(o.succeeded, 0) AS succeeded,
	   coalesce(o.dead, 0) AS dead,
	   coalesce(o.cancelled, 0) AS cancelled,
	   r.retry_events AS retry_events_used,
	   coalesce(r.max_retry_events,
				agentretry.run_max_retries())
		   AS retry_events_allowed,
	   coalesce(o.compensations_pending, 0) AS compensations_pending,
	   coalesce(o.compensations_done, 0) AS compensations_done,
	   coalesce(o.compensations_dead, 0) AS compensations_dead,
	   nullif(r.context_version, 0) AS context_version,
	   r.compensate_reason
FROM agentretry.runs r
LEFT JOIN LATERAL (
	SELECT count(*) FILTER (WHERE s.compensation_of IS NULL) AS steps,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'in_progress') AS in_progress,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'retry_wait') AS retry_wait,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'verify') AS verify,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'awaiting_approval') AS awaiting_approval,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'succeeded') AS succeeded,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'dead') AS dead,
		   count(*) FILTER (WHERE s.compensation_of IS NULL AND s.state::text = 'cancelled') AS cancelled,
		   count(*) FILTER (WHERE s.compensation_of IS NOT NULL
							  AND s.state::text NOT IN ('succeeded', 'dead', 'cancelled')) AS compensations_pending,
		   count(*) FILTER (WHERE s.compensation_of IS NOT NULL AND s.state::text = 'succeeded') AS compensations_done,
		   count(*) FILTER (WHERE s.compensation_of IS NOT NULL
							  AND s.state::text IN ('dead', 'cancelled')) AS compensations_dead
	FROM agentretry.operations s
	WHERE s.tenant = r.tenant AND s.run_id = r.run_id) o ON true;
COMMENT ON VIEW agentretry.run_status IS
	'per run: state, workflow version, times, steps by state, retry events used and allowed, compensations pending / done / dead, newest context version';

CREATE VIEW agentretry.approval_queue AS
SELECT o.tenant, o.key, o.tool, o.args, o.lease_owner AS requested_by,
	   coalesce(o.state_since, o.created_at) AS since,
	   pg_catalog.clock_timestamp() - coalesce(o.state_since, o.created_at) AS waiting,
	   o.run_id, o.step
FROM agentretry.operations o
WHERE o.state::text = 'awaiting_approval';
COMMENT ON VIEW agentretry.approval_queue IS
	'operations waiting for a person''s approve() or reject(): what, asked by whom, since when, with its arguments';

-- ---------------------------------------------------------------------------
-- privileges
-- ---------------------------------------------------------------------------
REVOKE ALL ON agentretry.runs, agentretry.run_context, agentretry.run_status,
	agentretry.approval_queue FROM PUBLIC;
REVOKE ALL ON FUNCTION
	agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean),
	agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean),
	agentretry.start_run(text, text, text, integer, text),
	agentretry.finish_run(text, text, boolean),
	agentretry.checkpoint(text, text, jsonb, text, integer),
	agentretry.context(text, text, integer),
	agentretry.compensate(text, text, text),
	agentretry.approve(text, text, text),
	agentretry.reject(text, text, text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
	agentretry.start_run(text, text, text, integer, text),
	agentretry.finish_run(text, text, boolean),
	agentretry.checkpoint(text, text, jsonb, text, integer),
	agentretry.context(text, text, integer),
	agentretry.compensate(text, text, text)
TO agentretry_agent;

GRANT EXECUTE ON FUNCTION
	agentretry.context(text, text, integer),
	agentretry.compensate(text, text, text),
	agentretry.approve(text, text, text),
	agentretry.reject(text, text, text)
TO agentretry_operator;

GRANT EXECUTE ON FUNCTION
	agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean),
	agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean)
TO agentretry_admin;

GRANT SELECT ON agentretry.runs, agentretry.run_context, agentretry.run_status,
	agentretry.approval_queue
TO agentretry_operator;
