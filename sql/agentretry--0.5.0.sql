/* agentretry--0.5.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION agentretry" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The complete install script of agentretry 0.5.0: the whole schema, its
-- comments and its grants in one file.  CREATE EXTENSION agentretry runs
-- this script alone.  Existing installations are upgraded by the update
-- scripts agentretry--A--B.sql (agentretry--0.1.0--0.2.0.sql, then
-- agentretry--0.2.0--0.3.0.sql, agentretry--0.3.0--0.4.0.sql and
-- agentretry--0.4.0--0.5.0.sql), and CREATE EXTENSION agentretry VERSION
-- '0.1.0' still installs agentretry--0.1.0.sql (an older VERSION: 0.1.0
-- and the updates up to that version).
--
-- This script builds exactly what 0.1.0 and those updates build, object
-- for object (the regression test upgrade compares the two): the same
-- names, including those PostgreSQL chose for constraints, the same
-- function definitions and comments, the same privileges.  So a column,
-- attribute or enum label that an update added with ALTER ... ADD comes
-- last here too, in the order the updates added them:
-- operations.state_since (0.2.0), sweep_summary.ledger_purged (0.3.0),
-- and from 0.4.0 operation_state 'awaiting_approval', outcome 'approval',
-- tools.requires_approval, operations.compensation_of and compensating,
-- events.correlation_id and actor, tenant_policies.requires_approval,
-- sweep_summary.runs_purged, and from 0.5.0 decision_action 'succeeded',
-- sweep_summary.anomalies_found, operations.receipt, observed_receipt and
-- reconcile_at, runs.reconcile_at, events.receipt, source and detail.
--
-- Released scripts are not edited: a change of the schema goes into a new
-- update script agentretry--0.5.0--X.sql, and into the complete script of
-- version X.
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- roles
--
-- Roles are cluster-wide, so they are created only when absent and are not
-- dropped with the extension.  agentretry_admin includes the operator role.
-- ---------------------------------------------------------------------------
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'agentretry_agent') THEN
		CREATE ROLE agentretry_agent NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'agentretry_operator') THEN
		CREATE ROLE agentretry_operator NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'agentretry_admin') THEN
		CREATE ROLE agentretry_admin NOLOGIN;
	END IF;
	IF NOT pg_catalog.pg_has_role('agentretry_admin', 'agentretry_operator', 'MEMBER') THEN
		GRANT agentretry_operator TO agentretry_admin;
	END IF;
END
$roles$;

REVOKE ALL ON SCHEMA agentretry FROM PUBLIC;
GRANT USAGE ON SCHEMA agentretry TO agentretry_agent, agentretry_operator, agentretry_admin;

-- ---------------------------------------------------------------------------
-- types
-- ---------------------------------------------------------------------------
-- awaiting_approval was added by 0.4.0 (ALTER TYPE ... ADD VALUE), hence last
CREATE TYPE agentretry.operation_state AS ENUM
	('in_progress', 'retry_wait', 'verify', 'succeeded', 'dead', 'cancelled',
	 'awaiting_approval');
COMMENT ON TYPE agentretry.operation_state IS
	'lifecycle of an operation: leased, waiting for a retry, awaiting verification, or terminal';

-- approval was added by 0.4.0 (ALTER TYPE ... ADD VALUE), hence last
CREATE TYPE agentretry.outcome AS ENUM
	('execute', 'replay', 'busy', 'wait', 'verify', 'dead', 'cancelled', 'denied',
	 'approval');
COMMENT ON TYPE agentretry.outcome IS 'what claim() tells its caller to do';

CREATE TYPE agentretry.failure_class AS ENUM ('transient', 'permanent', 'ambiguous');
COMMENT ON TYPE agentretry.failure_class IS
	'transient: may succeed if retried; permanent: never will; ambiguous: the action may have happened';

CREATE TYPE agentretry.failure_phase AS ENUM ('pre_execution', 'mid_execution', 'post_execution');
COMMENT ON TYPE agentretry.failure_phase IS
	'when the failure happened relative to the side effect; NULL means unknown and is treated as mid_execution';

CREATE TYPE agentretry.idempotency_class AS ENUM ('idempotent', 'non_idempotent', 'unknown');
COMMENT ON TYPE agentretry.idempotency_class IS 'whether repeating a tool call with the same key is harmless';

CREATE TYPE agentretry.side_effect_class AS ENUM ('read', 'write', 'destructive');
COMMENT ON TYPE agentretry.side_effect_class IS 'risk tier of a tool: 1 read, 2 write, 3 destructive';

CREATE TYPE agentretry.jitter_mode AS ENUM ('none', 'full', 'equal', 'decorrelated');
COMMENT ON TYPE agentretry.jitter_mode IS 'randomisation applied to exponential backoff';

-- succeeded was added by 0.5.0 (ALTER TYPE ... ADD VALUE), hence last
CREATE TYPE agentretry.decision_action AS ENUM ('retry', 'verify', 'dead', 'succeeded');
COMMENT ON TYPE agentretry.decision_action IS 'what happens after a failed attempt';

CREATE TYPE agentretry.claim_result AS (
	outcome agentretry.outcome,
	attempt integer,
	lease_token bigint,
	lease_expires_at timestamptz,
	result jsonb,
	retry_at timestamptz,
	reason text
);
COMMENT ON TYPE agentretry.claim_result IS 'answer of claim(): the outcome and what goes with it';

CREATE TYPE agentretry.decision AS (
	action agentretry.decision_action,
	retry_at timestamptz,
	attempt integer,
	reason text
);
COMMENT ON TYPE agentretry.decision IS 'answer of fail() and decide(): retry when, verify, or dead-letter, and why';

CREATE TYPE agentretry.budget_scope AS ENUM ('tenant', 'user', 'tool');
COMMENT ON TYPE agentretry.budget_scope IS
	'what a budget bounds: a tenant''s retries, one owner''s (the lease owner), or one tool''s';

CREATE TYPE agentretry.run_state AS ENUM
	('running', 'succeeded', 'failed', 'compensating', 'compensated', 'needs_review');
COMMENT ON TYPE agentretry.run_state IS
	'lifecycle of a run: running, finished (succeeded or failed), or undoing its steps (compensating, then compensated or needs_review)';

CREATE TYPE agentretry.anomaly_kind AS ENUM
	('duplicate_side_effect', 'outcome_corrected', 'orphan_side_effect',
	 'success_after_retry', 'stale_verification', 'run_finished_open',
	 'duplicate_receipt');
COMMENT ON TYPE agentretry.anomaly_kind IS
	'what reconciliation found: a side effect done twice, an outcome believed wrong, evidence of an unknown key, a success that needed retries, a verification left waiting, a run finished with open steps, one receipt on two keys';

-- The sweep purges ledger rows with the events' retention (ledger_purged,
-- added by 0.3.0), idle runs with their context (runs_purged, added by
-- 0.4.0), and reconciles (anomalies_found, added by 0.5.0); all were added
-- with ALTER TYPE ... ADD ATTRIBUTE, hence last.
CREATE TYPE agentretry.sweep_summary AS (
	leases_expired integer,
	deadlines_exceeded integer,
	operations_purged integer,
	events_purged integer,
	due_retries bigint,
	more boolean,
	ledger_purged integer,
	runs_purged integer,
	anomalies_found integer
);
COMMENT ON TYPE agentretry.sweep_summary IS
	'what one sweep() did; more = a step stopped at max, call again';

-- ---------------------------------------------------------------------------
-- tool registry
--
-- Policy columns left NULL take the default of the tool's tier (see
-- README); they are merged at decision time, so changing a tool's policy
-- affects operations already in flight.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.tools (
	name text PRIMARY KEY,
	idempotency agentretry.idempotency_class NOT NULL,
	side_effect agentretry.side_effect_class NOT NULL,
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
	requires_approval boolean,	-- added by 0.4.0 (ALTER TABLE ... ADD COLUMN), hence last
	CHECK (octet_length(name) BETWEEN 1 AND 128)
);
COMMENT ON COLUMN agentretry.tools.deadline IS
	'wall-clock budget of an operation from its first attempt (fixed on the operation at its first claim)';
COMMENT ON COLUMN agentretry.tools.requires_approval IS
	'claims wait for approve() before the first attempt; NULL: true for destructive tools, else false';
COMMENT ON TABLE agentretry.tools IS
	'registered tools: idempotency, side-effect tier and retry policy; NULL policy fields take the tier default';

-- Policy validation, shared by register_tool and set_tenant_policy.  Not
-- granted to anybody: the SECURITY DEFINER functions call it as the
-- extension owner.
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
	IF compensate_tool = '*' THEN
		RAISE EXCEPTION 'tool name "*" is reserved'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'In tenant policies "*" stands for every tool of the tenant.';
	END IF;
END
$$;
COMMENT ON FUNCTION agentretry.check_policy(integer, interval, interval, double precision, interval, interval, interval, text) IS
	'raise invalid_parameter_value for a policy field out of range (internal)';

-- register_tool: the name '*' is reserved (it stands for "every tool" in
-- tenant_policies)
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

CREATE FUNCTION agentretry.tier_defaults()
RETURNS TABLE (side_effect agentretry.side_effect_class, max_attempts integer,
			   base_delay interval, max_delay interval, multiplier double precision,
			   jitter agentretry.jitter_mode, auto_retry text)
AS 'MODULE_PATHNAME', 'agentretry_tier_defaults'
LANGUAGE C STABLE;
COMMENT ON FUNCTION agentretry.tier_defaults() IS
	'the built-in policy of each side-effect tier, used where a tool leaves a field NULL';

-- ---------------------------------------------------------------------------
-- idempotency core
--
-- The C functions run as their caller and switch to the owner of the
-- tables for their queries, pinning search_path to pg_catalog themselves
-- for every query they run (ar_spi_begin in src/spi.c), which protects
-- them as SET search_path would at a fraction of the cost.  The PL/pgSQL
-- functions use SET search_path.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.operations (
	tenant text NOT NULL,
	key text NOT NULL,
	op_hash bytea NOT NULL,
	args jsonb NOT NULL,
	tool text NOT NULL,
	state agentretry.operation_state NOT NULL,
	attempts integer NOT NULL DEFAULT 0,
	lease_token bigint NOT NULL,
	lease_owner text,
	lease_expires_at timestamptz,
	next_attempt_at timestamptz,
	first_attempt_at timestamptz,
	last_attempt_at timestamptz,
	deadline timestamptz,
	last_failure_class agentretry.failure_class,
	last_failure_phase agentretry.failure_phase,
	last_failure_code text,
	last_failure_message text,
	last_delay interval,
	reason text,
	result jsonb,
	compensate_tool text,
	compensate_args jsonb,
	run_id text,
	step text,
	created_at timestamptz NOT NULL,
	updated_at timestamptz NOT NULL,
	completed_at timestamptz,
	expires_at timestamptz,
	-- added by updates (ALTER TABLE ... ADD COLUMN), hence last: state_since
	-- by 0.2.0, compensation_of and compensating by 0.4.0 (compensating below),
	-- receipt, observed_receipt and reconcile_at by 0.5.0 (below)
	state_since timestamptz,
	compensation_of text,
	PRIMARY KEY (tenant, key)
);
-- compensating is added as the update to 0.4.0 adds it (ADD COLUMN with a
-- default), so that it has the same "missing value" in the catalog
-- (pg_attribute.attmissingval, which pg_dump --binary-upgrade carries);
-- then the columns of 0.5.0, in their order
ALTER TABLE agentretry.operations ADD COLUMN compensating boolean NOT NULL DEFAULT false;
ALTER TABLE agentretry.operations
	ADD COLUMN receipt text,
	ADD COLUMN observed_receipt text,
	ADD COLUMN reconcile_at timestamptz;
COMMENT ON TABLE agentretry.operations IS
	'one row per idempotency key: state, lease and fencing token, attempts, last failure, receipt';
COMMENT ON COLUMN agentretry.operations.lease_token IS
	'fencing token: strictly increasing per key; only the newest may complete or fail the operation';
COMMENT ON COLUMN agentretry.operations.lease_expires_at IS
	'expiry of the current lease; NULL when nobody holds one';
COMMENT ON COLUMN agentretry.operations.last_delay IS
	'backoff delay chosen after the last failure (input of decorrelated jitter)';
COMMENT ON COLUMN agentretry.operations.reason IS
	'reason code of the last decision (e.g. attempts_exhausted, review_required)';
COMMENT ON COLUMN agentretry.operations.expires_at IS
	'terminal rows may be purged after this time';
COMMENT ON COLUMN agentretry.operations.state_since IS
	'when the operation entered its current state (NULL for rows last changed before 0.2.0: see updated_at)';
COMMENT ON COLUMN agentretry.operations.compensation_of IS
	'for a compensation (key <step key>:compensate): the key of the step it undoes';
COMMENT ON COLUMN agentretry.operations.compensating IS
	'the operation''s run is being compensated: a late success of a step is compensated too, a failed step is not retried, a compensation''s end moves the saga on';
COMMENT ON COLUMN agentretry.operations.receipt IS
	'the side effect''s external reference (the provider''s id), from complete(), resolve() or observe()';
COMMENT ON COLUMN agentretry.operations.observed_receipt IS
	'receipt that observe() reported while the operation was leased; compared when the lease holder reports';
COMMENT ON COLUMN agentretry.operations.reconcile_at IS
	'when reconcile() must look at this operation; NULL: nothing to check';

CREATE INDEX operations_receipt ON agentretry.operations (tenant, tool, receipt)
	WHERE receipt IS NOT NULL;
COMMENT ON INDEX agentretry.operations_receipt IS 'operations by receipt, to find one receipt on two keys';

CREATE INDEX operations_reconcile ON agentretry.operations (reconcile_at)
	WHERE reconcile_at IS NOT NULL;
COMMENT ON INDEX agentretry.operations_reconcile IS 'operations reconcile() must look at, by when';

-- verifications by age (claim_verifications), and the states that wait for
-- a person (dead, awaiting_approval), so that their counts never read the
-- whole table.  The predicate names the states left out, all of 0.1.0:
-- an update from 0.3.0 or older runs in the transaction that adds the label
-- awaiting_approval, which cannot be named there.  A query for any one of
-- the three states is proved to match it.
CREATE INDEX operations_attention ON agentretry.operations (tenant, state, state_since)
	WHERE state NOT IN ('in_progress', 'retry_wait', 'succeeded', 'cancelled');
COMMENT ON INDEX agentretry.operations_attention IS
	'operations awaiting verification, dead-lettered or awaiting approval, by tenant and age';

-- The scheduling indexes: operations_retry_due holds only waiting rows by
-- due time, operations_lease_expiry only leased rows by lease expiry, so
-- claim_due and the sweep read the rows that are due, whatever the size of
-- the table.  operations_expiry holds terminal rows by purge time.  All are
-- partial, so a row enters an index only while it needs to.  (One index
-- over both kinds would see three entries per retry cycle instead of one
-- for the part claim_due reads most.)
CREATE INDEX operations_retry_due ON agentretry.operations (tenant, next_attempt_at)
	WHERE state = 'retry_wait';
COMMENT ON INDEX agentretry.operations_retry_due IS 'operations waiting for a retry, by due time';

CREATE INDEX operations_lease_expiry ON agentretry.operations (tenant, lease_expires_at)
	WHERE state = 'in_progress';
COMMENT ON INDEX agentretry.operations_lease_expiry IS 'leased operations, by lease expiry';

CREATE INDEX operations_expiry ON agentretry.operations (expires_at)
	WHERE expires_at IS NOT NULL;
COMMENT ON INDEX agentretry.operations_expiry IS 'terminal operations by the time they may be purged';

-- A run's operations: its steps and their compensations.
CREATE INDEX operations_run ON agentretry.operations (tenant, run_id)
	WHERE run_id IS NOT NULL;

CREATE TABLE agentretry.events (
	tenant text NOT NULL,
	id bigint GENERATED ALWAYS AS IDENTITY,
	at timestamptz NOT NULL,
	kind text NOT NULL,
	key text,
	tool text,
	run_id text,
	workflow_version text,
	step text,
	attempt integer,
	failure_class agentretry.failure_class,
	failure_phase agentretry.failure_phase,
	code text,
	message text,
	reason text,
	delay interval,
	lease_token bigint,
	owner text,
	-- added by 0.4.0 (ALTER TABLE ... ADD COLUMN), hence last
	correlation_id text,
	actor text,
	-- added by 0.5.0 (ALTER TABLE ... ADD COLUMN), hence last
	receipt text,
	source text,
	detail jsonb,
	PRIMARY KEY (tenant, id)
);
COMMENT ON TABLE agentretry.events IS
	'append-only trace of decisions: retries, verifications, dead-letters; with agentretry.trace_all also claims, replays and completions';
COMMENT ON COLUMN agentretry.events.actor IS
	'the role that acted, for operator actions and approvals';
COMMENT ON COLUMN agentretry.events.receipt IS 'the receipt completed or observed';
COMMENT ON COLUMN agentretry.events.source IS 'for an observation: where the evidence came from';
COMMENT ON COLUMN agentretry.events.detail IS 'for an observation: the evidence as reported';

CREATE INDEX events_at ON agentretry.events (at);
COMMENT ON INDEX agentretry.events_at IS 'events by time, for the retention purge';

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

SELECT pg_catalog.pg_extension_config_dump('agentretry.tools', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.operations', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.events', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.token_floors', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.token_floors_id_seq', '');

CREATE FUNCTION agentretry.op_hash(args jsonb, ignore text[] DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'agentretry_op_hash'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION agentretry.op_hash(jsonb, text[]) IS
	'SHA-256 of the canonical form of args: equal exactly when the jsonb values are equal; ignore drops top-level keys';

CREATE FUNCTION agentretry.claim(
	key text,
	args jsonb,
	tool text DEFAULT 'default',
	tenant text DEFAULT NULL,
	run_id text DEFAULT NULL,
	step text DEFAULT NULL,
	lease interval DEFAULT NULL,
	owner text DEFAULT NULL,
	in_transaction boolean DEFAULT false)
RETURNS agentretry.claim_result
AS 'MODULE_PATHNAME', 'agentretry_claim'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.claim(text, jsonb, text, text, text, text, interval, text, boolean) IS
	'lease an operation by idempotency key, or say why not: execute, replay, busy, wait, verify, dead, cancelled';

CREATE FUNCTION agentretry.complete(
	key text,
	lease_token bigint,
	result jsonb DEFAULT NULL,
	tenant text DEFAULT NULL,
	compensate_tool text DEFAULT NULL,
	compensate_args jsonb DEFAULT NULL,
	receipt text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'agentretry_complete'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.complete(text, bigint, jsonb, text, text, jsonb, text) IS
	'record success and its receipt; raises AR002 unless lease_token is the newest and the operation is not terminal';

CREATE FUNCTION agentretry.fail(
	key text,
	lease_token bigint,
	failure agentretry.failure_class,
	phase agentretry.failure_phase DEFAULT NULL,
	code text DEFAULT NULL,
	message text DEFAULT NULL,
	retry_after interval DEFAULT NULL,
	tenant text DEFAULT NULL)
RETURNS agentretry.decision
AS 'MODULE_PATHNAME', 'agentretry_fail'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.fail(text, bigint, agentretry.failure_class, agentretry.failure_phase, text, text, interval, text) IS
	'record a failed attempt and decide: retry (when), verify, or dead';

CREATE FUNCTION agentretry.resolve(
	key text,
	lease_token bigint,
	executed boolean,
	result jsonb DEFAULT NULL,
	tenant text DEFAULT NULL,
	receipt text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_resolve'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.resolve(text, bigint, boolean, jsonb, text, text) IS
	'end a verification: executed stores the receipt; not executed makes the operation due for retry';

CREATE FUNCTION agentretry.heartbeat(
	key text,
	lease_token bigint,
	extend interval DEFAULT NULL,
	tenant text DEFAULT NULL)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'agentretry_heartbeat'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.heartbeat(text, bigint, interval, text) IS
	'extend a held lease to now + extend (default: the tool''s lease) and return the new expiry';

CREATE FUNCTION agentretry.release(
	key text,
	lease_token bigint,
	tenant text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'agentretry_release'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.release(text, bigint, text) IS
	'give a lease back before acting; the attempt does not count and the operation is due at once';

CREATE FUNCTION agentretry.lookup(key text, tenant text DEFAULT NULL)
RETURNS agentretry.operations
AS 'MODULE_PATHNAME', 'agentretry_lookup'
LANGUAGE C STABLE;
COMMENT ON FUNCTION agentretry.lookup(text, text) IS
	'read one operation; raises AR003 when the key does not exist';

-- ---------------------------------------------------------------------------
-- backoff and decisions (pure functions)
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.backoff(
	attempt integer,
	base interval,
	cap interval,
	multiplier double precision DEFAULT 2,
	jitter agentretry.jitter_mode DEFAULT 'full',
	previous interval DEFAULT NULL)
RETURNS interval
AS 'MODULE_PATHNAME', 'agentretry_backoff'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION agentretry.backoff(integer, interval, interval, double precision, agentretry.jitter_mode, interval) IS
	'exponential backoff delay before retry number attempt, with jitter; never negative, never above cap';

CREATE FUNCTION agentretry.decide(
	failure agentretry.failure_class,
	phase agentretry.failure_phase,
	idempotency agentretry.idempotency_class,
	side_effect agentretry.side_effect_class,
	attempt integer,
	max_attempts integer,
	delay interval DEFAULT '0',
	retry_after interval DEFAULT NULL,
	deadline timestamptz DEFAULT NULL,
	now timestamptz DEFAULT pg_catalog.clock_timestamp())
RETURNS agentretry.decision
AS 'MODULE_PATHNAME', 'agentretry_decide'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION agentretry.decide(agentretry.failure_class, agentretry.failure_phase, agentretry.idempotency_class, agentretry.side_effect_class, integer, integer, interval, interval, timestamptz, timestamptz) IS
	'the decision matrix as a pure function: what fail() decides for these inputs';

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
	requires_approval boolean,	-- added by 0.4.0 (ALTER TABLE ... ADD COLUMN), hence last
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

-- Backends cache whether any tool requires approval (claims of new keys
-- then use a statement without the gate while none does); every change
-- tells them to ask again.
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.tools FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

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
LANGUAGE C STABLE;
COMMENT ON FUNCTION agentretry.effective_policy(text, text) IS
	'the policy decisions use for a tenant''s tool, field by field, and where each value came from: default, tool, tenant or tenant_tool';

-- ---------------------------------------------------------------------------
-- scheduling and sweep
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.claim_due(
	owner text,
	max integer DEFAULT 10,
	tools text[] DEFAULT NULL,
	tenant text DEFAULT NULL,
	lease interval DEFAULT NULL,
	in_transaction boolean DEFAULT false)
RETURNS TABLE (tenant text, key text, tool text, args jsonb, attempt integer,
			   lease_token bigint, lease_expires_at timestamptz,
			   run_id text, step text)
AS 'MODULE_PATHNAME', 'agentretry_claim_due'
LANGUAGE C VOLATILE ROWS 10;
COMMENT ON FUNCTION agentretry.claim_due(text, integer, text[], text, interval, boolean) IS
	'lease up to max due retries (and expired leases of idempotent tools), oldest due first, skipping rows other workers hold';

CREATE FUNCTION agentretry.sweep(max integer DEFAULT 1000)
RETURNS agentretry.sweep_summary
AS 'MODULE_PATHNAME', 'agentretry_sweep'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.sweep(integer) IS
	'decide expired leases, dead-letter waits past their deadline, purge rows past TTL and retention (at most max of each), NOTIFY agentretry with the due count';

-- pg_cron.  SECURITY INVOKER: the job belongs to, and runs as, the role
-- that schedules it, which needs pg_cron's own privileges.  The statements
-- run through EXECUTE with parameters so that this function can be created
-- and called where the cron schema does not exist.  pg_cron overloads
-- schedule and unschedule, hence to_regprocedure with the signature used.
-- Where pg_cron runs (cron.database_name) is read through cron_database(),
-- a SECURITY DEFINER function: reading a setting of another extension
-- needs pg_read_all_settings, which an admin role need not have.
CREATE FUNCTION agentretry.cron_database()
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN nullif(current_setting('cron.database_name', true), '');
COMMENT ON FUNCTION agentretry.cron_database() IS
	'the database pg_cron runs in (cron.database_name), NULL when pg_cron is not loaded';

CREATE FUNCTION agentretry.schedule_sweep(schedule text DEFAULT '* * * * *')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	job_name text := 'agentretry-sweep:' || current_database();
	cron_db text := agentretry.cron_database();
	job bigint;
BEGIN
	IF schedule IS NULL THEN
		RAISE EXCEPTION 'schedule must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- looking pg_cron up needs the use of its schema
	IF to_regnamespace('cron') IS NOT NULL AND NOT has_schema_privilege('cron', 'USAGE') THEN
		RAISE EXCEPTION 'role "%" may not use pg_cron', current_user
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = format('As a superuser, run GRANT USAGE ON SCHEMA cron TO %I; or schedule as a superuser: SELECT cron.schedule(%L, %L, %L);',
								current_user, job_name, schedule, 'SELECT agentretry.sweep()');
	END IF;
	IF to_regprocedure('cron.schedule(text, text, text)') IS NULL THEN
		IF cron_db IS NULL THEN
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
	cron_db text := agentretry.cron_database();
	found boolean;
BEGIN
	IF to_regnamespace('cron') IS NOT NULL AND NOT has_schema_privilege('cron', 'USAGE') THEN
		RAISE EXCEPTION 'role "%" may not use pg_cron', current_user
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = format('As a superuser, run GRANT USAGE ON SCHEMA cron TO %I; or SELECT cron.unschedule(%L);',
								current_user, job_name);
	END IF;
	IF to_regprocedure('cron.unschedule(name)') IS NULL THEN
		IF cron_db IS NULL OR cron_db = current_database() THEN
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
-- budgets: retry budgets, kept in a transactional ledger (since 0.3.0)
--
-- Every retry (a failure decided as retry by fail, resolve, a claim or
-- claim_due finding an expired lease, the sweep) is checked, in the
-- caller's transaction, against
--	 - the run's limit: at most max_retry_events retry events per run
--	   (counted in runs.retry_events; NULL: agentretry.run_max_retries,
--	   default 5);
--	 - every budget defined for the operation's tenant, owner (scope user)
--	   and tool: a token bucket (capacity, refill per second, a cost per
--	   failure class) and/or a ratio budget (retries at most ratio x first
--	   attempts over ratio_window, but always at least ratio_floor).
-- A retry that a budget denies is scheduled when the budget allows it
-- again, if that is before the deadline (reason budget_wait), else
-- dead-lettered (budget_exhausted).  Debits and denials are appended to
-- budget_ledger.  Rolling the retry back rolls its debit back.
--
-- Hot budgets: a budget's tokens and counters are split over `stripes`
-- rows; a debit locks one stripe that can pay, skipping stripes other
-- transactions hold, so concurrent retries of one tenant do not queue on
-- one row for the length of their transactions.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.budgets (
	tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 128),
	scope agentretry.budget_scope NOT NULL,
	subject text NOT NULL CHECK (octet_length(subject) BETWEEN 1 AND 128),
	capacity double precision CHECK (capacity > 0 AND capacity <= 1e9),
	refill_per_sec double precision NOT NULL DEFAULT 0 CHECK (refill_per_sec >= 0 AND refill_per_sec <= 1e9),
	cost_transient double precision NOT NULL DEFAULT 1 CHECK (cost_transient > 0 AND cost_transient <= 1e6),
	cost_ambiguous double precision NOT NULL DEFAULT 2 CHECK (cost_ambiguous > 0 AND cost_ambiguous <= 1e6),
	ratio double precision CHECK (ratio > 0 AND ratio <= 100),
	ratio_window interval NOT NULL DEFAULT interval '1 minute'
		CHECK (ratio_window BETWEEN interval '1 second' AND interval '1 day'),
	ratio_floor integer NOT NULL DEFAULT 10 CHECK (ratio_floor >= 0),
	stripes integer NOT NULL DEFAULT 4 CHECK (stripes BETWEEN 1 AND 64),
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	PRIMARY KEY (tenant, scope, subject),
	CHECK (capacity IS NOT NULL OR ratio IS NOT NULL)
);
COMMENT ON TABLE agentretry.budgets IS
	'retry budgets: a token bucket (capacity, refill, cost by failure class) and/or a ratio of retries to first attempts, per tenant, owner or tool';
COMMENT ON COLUMN agentretry.budgets.ratio IS
	'retries allowed per first attempt over ratio_window (0.1 = 10 %); NULL: no ratio budget';
COMMENT ON COLUMN agentretry.budgets.ratio_floor IS
	'retries always allowed per ratio_window, whatever the ratio (so that a quiet tool can still retry)';
COMMENT ON COLUMN agentretry.budgets.stripes IS
	'rows the budget is split over, so that concurrent debits lock different rows';
SELECT pg_catalog.pg_extension_config_dump('agentretry.budgets', '');

-- A budget's live state, one row per stripe: its share of the tokens (lazy
-- refill: tokens as of refilled_at) and its share of the ratio counters
-- (a sliding window of two fixed windows: the current one from win_start
-- and the one before).
CREATE TABLE agentretry.budget_stripes (
	tenant text NOT NULL,
	scope agentretry.budget_scope NOT NULL,
	subject text NOT NULL,
	stripe integer NOT NULL,
	tokens double precision NOT NULL,
	refilled_at timestamptz NOT NULL,
	win_start timestamptz NOT NULL,
	cur_first bigint NOT NULL DEFAULT 0,
	cur_retries bigint NOT NULL DEFAULT 0,
	prev_first bigint NOT NULL DEFAULT 0,
	prev_retries bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (tenant, scope, subject, stripe),
	FOREIGN KEY (tenant, scope, subject) REFERENCES agentretry.budgets ON DELETE CASCADE
);
COMMENT ON TABLE agentretry.budget_stripes IS
	'live state of each budget, split over stripes: tokens as of refilled_at, and first attempts and retries of the current and previous ratio window';
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_stripes', '');

CREATE TABLE agentretry.budget_ledger (
	tenant text NOT NULL,
	id bigint GENERATED ALWAYS AS IDENTITY,
	at timestamptz NOT NULL,
	scope text NOT NULL,
	subject text NOT NULL,
	key text NOT NULL,
	amount double precision NOT NULL,
	balance_after double precision,
	reason text NOT NULL,
	failure_class agentretry.failure_class,
	retry_at timestamptz,
	PRIMARY KEY (tenant, id)
);
COMMENT ON TABLE agentretry.budget_ledger IS
	'append-only: every retry debit (reason debit) and every denial (reason denied_tokens, denied_ratio, denied_run, denied_held), with the balance after it';
COMMENT ON COLUMN agentretry.budget_ledger.scope IS
	'tenant, user or tool, or run for the per-run limit';
COMMENT ON COLUMN agentretry.budget_ledger.balance_after IS
	'tokens in the whole budget after this row (all stripes, refilled to at); NULL for ratio-only budgets and run rows';
CREATE INDEX budget_ledger_subject ON agentretry.budget_ledger (tenant, scope, subject, at);
CREATE INDEX budget_ledger_at ON agentretry.budget_ledger (at);
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_ledger_id_seq', '');

-- Backends cache whether any budget exists, so that operations without
-- budgets pay nothing; every change tells them to ask again.
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.budgets FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

CREATE FUNCTION agentretry.set_budget(
	tenant text,
	scope agentretry.budget_scope,
	subject text,
	capacity double precision DEFAULT NULL,
	refill_per_sec double precision DEFAULT 0,
	cost_transient double precision DEFAULT 1,
	cost_ambiguous double precision DEFAULT 2,
	ratio double precision DEFAULT NULL,
	ratio_window interval DEFAULT '1 minute',
	ratio_floor integer DEFAULT 10,
	stripes integer DEFAULT 4)
RETURNS agentretry.budgets
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r agentretry.budgets;
	t text := coalesce(set_budget.tenant, 'default');
	now timestamptz := clock_timestamp();
BEGIN
	IF scope IS NULL OR subject IS NULL OR refill_per_sec IS NULL OR cost_transient IS NULL
	   OR cost_ambiguous IS NULL OR ratio_window IS NULL OR ratio_floor IS NULL OR stripes IS NULL THEN
		RAISE EXCEPTION 'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(t) NOT BETWEEN 1 AND 128 OR octet_length(subject) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant and subject must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF scope = 'tenant' AND subject IS DISTINCT FROM t THEN
		RAISE EXCEPTION 'the subject of a tenant budget is its tenant'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('tenant is %s, subject is %s.', t, subject);
	END IF;
	IF capacity IS NULL AND ratio IS NULL THEN
		RAISE EXCEPTION 'a budget needs a capacity, a ratio, or both'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF capacity IS NOT NULL AND NOT (capacity > 0 AND capacity <= 1e9) THEN
		RAISE EXCEPTION 'capacity must be positive and at most 1e9'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('capacity is %s.', capacity);
	END IF;
	IF NOT (refill_per_sec >= 0 AND refill_per_sec <= 1e9) THEN
		RAISE EXCEPTION 'refill_per_sec must be between 0 and 1e9'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('refill_per_sec is %s.', refill_per_sec);
	END IF;
	IF NOT (cost_transient > 0 AND cost_transient <= 1e6 AND cost_ambiguous > 0 AND cost_ambiguous <= 1e6) THEN
		RAISE EXCEPTION 'costs must be positive and at most 1e6'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ratio IS NOT NULL AND NOT (ratio > 0 AND ratio <= 100) THEN
		RAISE EXCEPTION 'ratio must be positive and at most 100'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('ratio is %s.', ratio);
	END IF;
	IF ratio_window NOT BETWEEN interval '1 second' AND interval '1 day' THEN
		RAISE EXCEPTION 'ratio_window must be between 1 second and 1 day'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ratio_floor < 0 THEN
		RAISE EXCEPTION 'ratio_floor must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF stripes NOT BETWEEN 1 AND 64 THEN
		RAISE EXCEPTION 'stripes must be between 1 and 64'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- (any positive capacity: a retry that no stripe can pay alone is paid
	-- from several, and one costing more than the capacity is never paid)

	INSERT INTO agentretry.budgets AS b
		(tenant, scope, subject, capacity, refill_per_sec, cost_transient, cost_ambiguous,
		 ratio, ratio_window, ratio_floor, stripes)
	VALUES
		(t, set_budget.scope, set_budget.subject, set_budget.capacity, set_budget.refill_per_sec,
		 set_budget.cost_transient, set_budget.cost_ambiguous, set_budget.ratio,
		 set_budget.ratio_window, set_budget.ratio_floor, set_budget.stripes)
	ON CONFLICT ON CONSTRAINT budgets_pkey DO UPDATE SET
		capacity = excluded.capacity,
		refill_per_sec = excluded.refill_per_sec,
		cost_transient = excluded.cost_transient,
		cost_ambiguous = excluded.cost_ambiguous,
		ratio = excluded.ratio,
		ratio_window = excluded.ratio_window,
		ratio_floor = excluded.ratio_floor,
		stripes = excluded.stripes,
		updated_at = now
	RETURNING b.* INTO r;

	-- replacing a budget starts it full, with fresh counters
	DELETE FROM agentretry.budget_stripes s
	WHERE s.tenant = r.tenant AND s.scope = r.scope AND s.subject = r.subject;
	INSERT INTO agentretry.budget_stripes (tenant, scope, subject, stripe, tokens, refilled_at, win_start)
	SELECT r.tenant, r.scope, r.subject, i, coalesce(r.capacity / r.stripes, 0), now, now
	FROM generate_series(0, r.stripes - 1) AS i;
	RETURN r;
END
$$;
COMMENT ON FUNCTION agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer) IS
	'set or replace a retry budget for a tenant, an owner (scope user) or a tool; it starts full';

CREATE FUNCTION agentretry.drop_budget(tenant text, scope agentretry.budget_scope, subject text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text := coalesce(drop_budget.tenant, 'default');
BEGIN
	IF scope IS NULL OR subject IS NULL THEN
		RAISE EXCEPTION 'scope and subject must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(t) NOT BETWEEN 1 AND 128 OR octet_length(subject) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant and subject must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM agentretry.budgets b
	WHERE b.tenant = t AND b.scope = drop_budget.scope AND b.subject = drop_budget.subject;
	RETURN FOUND;
END
$$;
COMMENT ON FUNCTION agentretry.drop_budget(text, agentretry.budget_scope, text) IS
	'remove a retry budget (its ledger rows stay); false when there was none';

-- budget_status: one row per budget, its balance refilled to now
CREATE VIEW agentretry.budget_status AS
SELECT b.tenant, b.scope, b.subject, b.capacity,
	   CASE WHEN b.capacity IS NOT NULL THEN
		   (SELECT sum(least(b.capacity / b.stripes,
							 s.tokens + b.refill_per_sec / b.stripes
									  * extract(epoch FROM pg_catalog.clock_timestamp() - s.refilled_at)::float8))
			FROM agentretry.budget_stripes s
			WHERE s.tenant = b.tenant AND s.scope = b.scope AND s.subject = b.subject)
	   END AS balance,
	   b.refill_per_sec, b.cost_transient, b.cost_ambiguous,
	   b.ratio, b.ratio_window, b.ratio_floor,
	   l.debits_last_hour, l.tokens_last_hour, l.denials_last_hour, l.last_denial,
	   b.stripes, b.updated_at
FROM agentretry.budgets b
LEFT JOIN LATERAL (
	SELECT count(*) FILTER (WHERE g.reason = 'debit') AS debits_last_hour,
		   coalesce(sum(g.amount) FILTER (WHERE g.reason = 'debit'), 0) AS tokens_last_hour,
		   count(*) FILTER (WHERE g.reason LIKE 'denied%') AS denials_last_hour,
		   (SELECT max(d.at) FROM agentretry.budget_ledger d
			WHERE d.tenant = b.tenant AND d.scope = b.scope::text AND d.subject = b.subject
			  AND d.reason LIKE 'denied%') AS last_denial
	FROM agentretry.budget_ledger g
	WHERE g.tenant = b.tenant AND g.scope = b.scope::text AND g.subject = b.subject
	  AND g.at > pg_catalog.clock_timestamp() - interval '1 hour') l ON true;
COMMENT ON VIEW agentretry.budget_status IS
	'per budget: capacity, balance now, refill rate, costs, ratio, debits and denials in the last hour, last denial';

-- ---------------------------------------------------------------------------
-- runs, versioned context and compensation (since 0.4.0)
--
-- A run is one execution of an agent's multi-step workflow, started by
-- start_run() or by the first claim of a new key naming it.  Its
-- retry_events column is the per-run retry limit's counter, checked
-- against max_retry_events (NULL: the GUC agentretry.run_max_retries).
-- context_version is the newest checkpoint.  (0.3.0 counted retry events
-- in a table run_retries, which the update to 0.4.0 merged into runs.)
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
	-- added by 0.5.0 (ALTER TABLE ... ADD COLUMN), hence last
	reconcile_at timestamptz,
	PRIMARY KEY (tenant, run_id)
);
COMMENT ON TABLE agentretry.runs IS
	'one row per run: state, workflow version, correlation id, retry events used and allowed, newest context version';
COMMENT ON COLUMN agentretry.runs.max_retry_events IS
	'retry events allowed in the run; NULL: agentretry.run_max_retries';
COMMENT ON COLUMN agentretry.runs.updated_at IS
	'last change; the sweep purges a run idle for agentretry.default_ttl once none of its operations is left';
CREATE INDEX runs_updated_at ON agentretry.runs (updated_at);
COMMENT ON COLUMN agentretry.runs.reconcile_at IS
	'when reconcile() must check the finished run for open steps; NULL: nothing to check';
CREATE INDEX runs_reconcile ON agentretry.runs (reconcile_at)
	WHERE reconcile_at IS NOT NULL;
-- the sweep advances the sagas of runs being compensated or under review
CREATE INDEX runs_compensating ON agentretry.runs (updated_at)
	WHERE state IN ('compensating', 'needs_review');
SELECT pg_catalog.pg_extension_config_dump('agentretry.runs', '');

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

CREATE FUNCTION agentretry.start_run(
	run_id text,
	tenant text DEFAULT NULL,
	workflow_version text DEFAULT NULL,
	max_retry_events integer DEFAULT NULL,
	correlation_id text DEFAULT NULL)
RETURNS agentretry.run_state
AS 'MODULE_PATHNAME', 'agentretry_start_run'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.start_run(text, text, text, integer, text) IS
	'start a run, or return the state of the run already started; AR001 when it was started with another workflow_version';

CREATE FUNCTION agentretry.finish_run(
	run_id text,
	tenant text DEFAULT NULL,
	succeeded boolean DEFAULT true)
RETURNS agentretry.run_state
AS 'MODULE_PATHNAME', 'agentretry_finish_run'
LANGUAGE C VOLATILE;
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
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.checkpoint(text, text, jsonb, text, integer) IS
	'store the next version of the run''s context and return its number; AR005 when expected_version is not the newest';

CREATE FUNCTION agentretry.context(
	run_id text,
	tenant text DEFAULT NULL,
	version integer DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'agentretry_context'
LANGUAGE C STABLE;
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
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.compensate(text, text, text) IS
	'undo the run''s completed steps in reverse completion order; returns how many compensations it scheduled (0 when called again)';

-- ---------------------------------------------------------------------------
-- approval gates (since 0.4.0)
--
-- Policy field requires_approval (tools, tenant_policies; NULL: true for
-- destructive tools, else false): the first claim of a new key answers
-- 'approval' and leaves the operation awaiting_approval until an operator
-- calls approve() or reject().
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.approve(
	key text,
	tenant text DEFAULT NULL,
	note text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_approve'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.approve(text, text, text) IS
	'approve an operation awaiting approval, for exactly its stored arguments; it is due at once';

CREATE FUNCTION agentretry.reject(
	key text,
	tenant text,
	reason text)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_reject'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.reject(text, text, text) IS
	'refuse an operation awaiting approval: it is cancelled (reason rejected)';

-- ---------------------------------------------------------------------------
-- operator controls and views
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.requeue(
	key text,
	tenant text DEFAULT NULL,
	reset_attempts boolean DEFAULT false)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_requeue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.requeue(text, text, boolean) IS
	'make a dead, cancelled, waiting or unverified operation due now, fencing out earlier leases; restarts its deadline';

CREATE FUNCTION agentretry.cancel(
	key text,
	tenant text DEFAULT NULL,
	reason text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_cancel'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.cancel(text, text, text) IS
	'end an operation that has not succeeded; claims then answer cancelled with the reason';

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

-- run_status compares states as text (s.state::text = 'awaiting_approval',
-- ...), not as operation_state values: the update to 0.4.0 creates it in
-- the transaction that adds the label awaiting_approval, which cannot be
-- named there as an enum value yet ("unsafe use of new value").  This
-- script defines it exactly as the update does, so that an install and an
-- upgrade have the same views.  (It reads one run's operations through
-- operations_run.)  approval_queue, which 0.4.0 defined the same way, is
-- redefined by 0.5.0 to leave out the states of 0.1.0 as well, which can
-- be named and let it read the partial index operations_attention instead
-- of the whole table.
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
WHERE o.state NOT IN ('in_progress', 'retry_wait', 'verify', 'succeeded', 'dead', 'cancelled')
  AND o.state::text = 'awaiting_approval';
COMMENT ON VIEW agentretry.approval_queue IS
	'operations waiting for a person''s approve() or reject(): what, asked by whom, since when, with its arguments';

-- ---------------------------------------------------------------------------
-- anomalies
--
-- Each anomaly is recorded once: anomalies_once is its identity (the kind
-- and what it is about), and every writer inserts with ON CONFLICT DO
-- NOTHING, so overlapping reconciles and repeated evidence add nothing.
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.anomalies (
	tenant text NOT NULL,
	id bigint GENERATED ALWAYS AS IDENTITY,
	kind agentretry.anomaly_kind NOT NULL,
	key text,
	other_key text,
	run_id text,
	tool text,
	receipt text,
	attempt integer,
	detail jsonb,
	found_at timestamptz NOT NULL,
	acknowledged_at timestamptz,
	acknowledged_by text,
	note text,
	PRIMARY KEY (tenant, id)
);
COMMENT ON TABLE agentretry.anomalies IS
	'what reconciliation and late evidence found wrong or worth auditing; acknowledge() marks one as seen';
CREATE UNIQUE INDEX anomalies_once ON agentretry.anomalies
	(tenant, kind, key, other_key, run_id, receipt, attempt) NULLS NOT DISTINCT;
COMMENT ON INDEX agentretry.anomalies_once IS 'one anomaly per kind and subject, however often it is found';
CREATE INDEX anomalies_id ON agentretry.anomalies (id);
CREATE INDEX anomalies_found_at ON agentretry.anomalies (found_at);
CREATE INDEX anomalies_open ON agentretry.anomalies (tenant, kind)
	WHERE acknowledged_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('agentretry.anomalies', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.anomalies_id_seq', '');

-- ---------------------------------------------------------------------------
-- stats
--
-- Counts per tenant, tool and minute, written by each backend (backend is
-- its process id) about once a second from counts it keeps in memory, so
-- that no call, a replay least of all, writes a row for itself.  One row
-- per backend: backends never wait for each other's counts.
-- completion_hist: successes by time to stable completion (first attempt
-- to success), in the buckets of agentretry.stats_buckets().
-- ---------------------------------------------------------------------------
CREATE TABLE agentretry.stats_counts (
	tenant text NOT NULL,
	bucket timestamptz NOT NULL,
	tool text NOT NULL,
	backend integer NOT NULL,
	first_attempts bigint NOT NULL DEFAULT 0,
	executions bigint NOT NULL DEFAULT 0,
	replays bigint NOT NULL DEFAULT 0,
	successes bigint NOT NULL DEFAULT 0,
	successes_after_retry bigint NOT NULL DEFAULT 0,
	verifications bigint NOT NULL DEFAULT 0,
	dead_letters bigint NOT NULL DEFAULT 0,
	budget_denials bigint NOT NULL DEFAULT 0,
	approvals bigint NOT NULL DEFAULT 0,
	compensations_succeeded bigint NOT NULL DEFAULT 0,
	compensations_dead bigint NOT NULL DEFAULT 0,
	completion_hist bigint[] NOT NULL,
	PRIMARY KEY (tenant, bucket, tool, backend)
);
COMMENT ON TABLE agentretry.stats_counts IS
	'counts behind stats(), per tenant, minute, tool and backend; written about once a second per backend';
CREATE INDEX stats_counts_bucket ON agentretry.stats_counts (bucket);
SELECT pg_catalog.pg_extension_config_dump('agentretry.stats_counts', '');

-- upper bounds, in seconds, of the buckets of completion_hist (the last is
-- open)
CREATE FUNCTION agentretry.stats_buckets()
RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '{0.1,0.25,0.5,1,2.5,5,10,30,60,300,900,1800,3600,21600,86400,Infinity}'::double precision[];
COMMENT ON FUNCTION agentretry.stats_buckets() IS
	'upper bounds in seconds of the time-to-completion buckets of stats_counts.completion_hist';

-- ---------------------------------------------------------------------------
-- functions
-- ---------------------------------------------------------------------------
-- ---------------------------------------------------------------------------
-- reconciliation, verification workers and stats
-- ---------------------------------------------------------------------------
CREATE FUNCTION agentretry.observe(
	key text,
	receipt text,
	tenant text DEFAULT NULL,
	source text DEFAULT NULL,
	detail jsonb DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'agentretry_observe'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.observe(text, text, text, text, jsonb) IS
	'record late evidence that the side effect of key happened: resolved, confirmed, corrected, anomaly, pending or orphan';

CREATE FUNCTION agentretry.reconcile(max integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'agentretry_reconcile'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.reconcile(integer) IS
	'look at up to max operations and runs due for reconciliation; returns the number of anomalies recorded';

CREATE FUNCTION agentretry.acknowledge(id bigint, note text DEFAULT NULL)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'agentretry_acknowledge'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.acknowledge(bigint, text) IS
	'mark an anomaly as seen, with a note; returns when it was first acknowledged';

CREATE FUNCTION agentretry.claim_verifications(
	owner text DEFAULT NULL,
	max integer DEFAULT 10,
	tools text[] DEFAULT NULL,
	tenant text DEFAULT NULL,
	lease interval DEFAULT NULL)
RETURNS TABLE (tenant text, key text, tool text, args jsonb, attempt integer,
			   lease_token bigint, lease_expires_at timestamptz,
			   run_id text, step text,
			   last_failure_class agentretry.failure_class,
			   last_failure_code text, last_failure_message text,
			   since timestamptz)
AS 'MODULE_PATHNAME', 'agentretry_claim_verifications'
LANGUAGE C VOLATILE ROWS 10;
COMMENT ON FUNCTION agentretry.claim_verifications(text, integer, text[], text, interval) IS
	'lease up to max operations awaiting verification, oldest first, skipping those another verifier holds; resolve() each';

CREATE FUNCTION agentretry.flush_stats()
RETURNS integer
AS 'MODULE_PATHNAME', 'agentretry_flush_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION agentretry.flush_stats() IS
	'write the counts this session holds in memory to stats_counts now; returns the rows written';

-- The p-quantile of a completion_hist, interpolated within its bucket
-- (the open last bucket answers its lower bound); NULL for an empty one.
CREATE FUNCTION agentretry.stats_quantile(hist bigint[], p double precision)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result interval;
BEGIN
	IF p IS NULL THEN
		RETURN NULL;
	END IF;
	IF NOT (p >= 0 AND p <= 1) THEN
		RAISE EXCEPTION 'p must be between 0 and 1'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('p is %s.', p);
	END IF;
	SELECT make_interval(secs =>
		CASE WHEN b.hi = 'Infinity' THEN b.lo
			 ELSE b.lo + (b.hi - b.lo) * (b.target - b.below) / b.n END)
	INTO result
	FROM (SELECT h.n, h.hi,
				 coalesce(lag(h.hi) OVER (ORDER BY h.i), 0) AS lo,
				 coalesce(sum(h.n) OVER (ORDER BY h.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS below,
				 sum(h.n) OVER (ORDER BY h.i) AS upto,
				 p * sum(h.n) OVER () AS target
		  FROM unnest(hist, agentretry.stats_buckets()) WITH ORDINALITY AS h(n, hi, i)) b
	WHERE b.n > 0 AND b.upto >= b.target
	ORDER BY b.upto
	LIMIT 1;
	RETURN result;
END
$$;
COMMENT ON FUNCTION agentretry.stats_quantile(bigint[], double precision) IS
	'the p-quantile of a time-to-completion histogram, interpolated within its bucket';

-- The start of stats()'s window, after checking since and tenant and
-- writing this session's counts.  A window reaching before any timestamp
-- starts at -infinity.
CREATE FUNCTION agentretry.stats_since(since interval, tenant text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	start timestamptz;
BEGIN
	IF since IS NULL THEN
		RAISE EXCEPTION 'since must not be null' USING ERRCODE = '22004';
	END IF;
	IF since < interval '0' THEN
		RAISE EXCEPTION 'since must not be negative'
			USING ERRCODE = '22023', DETAIL = format('since is %s.', since);
	END IF;
	IF tenant IS NOT NULL AND octet_length(tenant) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant must be 1 to 128 bytes long'
			USING ERRCODE = '22023', DETAIL = format('The tenant is %s bytes long.', octet_length(tenant));
	END IF;
	IF tenant IS NOT NULL THEN
		PERFORM agentretry.check_caller_tenant(tenant);
	END IF;
	PERFORM agentretry.flush_stats();
	BEGIN
		start := clock_timestamp() - since;
	EXCEPTION WHEN datetime_field_overflow THEN
		start := '-infinity';
	END;
	RETURN start;
END
$$;
COMMENT ON FUNCTION agentretry.stats_since(interval, text) IS
	'the start of stats()''s window: checks since and tenant and writes this session''s counts first';

-- stats(): what retries did, per tenant and tool, over the last `since`
-- (whole minutes: a minute that began within the window counts).  This
-- session's counts are written first (stats_since); other sessions' reach
-- the table within about a second of their next call.  SQL, not
-- PL/pgSQL: the parameter tenant and the result column tenant share a
-- name.
CREATE FUNCTION agentretry.stats(since interval DEFAULT '1 hour', tenant text DEFAULT NULL)
RETURNS TABLE (tenant text, tool text,
			   first_attempts bigint, executions bigint, replays bigint,
			   retries bigint, successes bigint, successes_after_retry bigint,
			   verifications bigint, dead_letters bigint, budget_denials bigint,
			   approvals bigint, compensations_succeeded bigint,
			   compensations_dead bigint, anomalies jsonb,
			   duplicate_side_effects bigint, retry_rate double precision,
			   duplicate_side_effect_rate double precision,
			   compensation_success_rate double precision,
			   completion_p50 interval, completion_p95 interval)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT agentretry.stats_since(since, tenant);
WITH w AS (
	SELECT agentretry.stats_since(since, tenant) AS start,
		   agentretry.caller_tenants() AS ct),
c AS (
	SELECT s.tenant, s.tool,
		   sum(s.first_attempts)::bigint AS first_attempts,
		   sum(s.executions)::bigint AS executions,
		   sum(s.replays)::bigint AS replays,
		   sum(s.successes)::bigint AS successes,
		   sum(s.successes_after_retry)::bigint AS successes_after_retry,
		   sum(s.verifications)::bigint AS verifications,
		   sum(s.dead_letters)::bigint AS dead_letters,
		   sum(s.budget_denials)::bigint AS budget_denials,
		   sum(s.approvals)::bigint AS approvals,
		   sum(s.compensations_succeeded)::bigint AS compensations_succeeded,
		   sum(s.compensations_dead)::bigint AS compensations_dead
	FROM agentretry.stats_counts s, w
	WHERE s.bucket >= date_bin('1 minute', w.start, timestamptz '2000-01-01 00:00+00')
	  AND (stats.tenant IS NULL OR s.tenant = stats.tenant)
	  AND (w.ct IS NULL OR s.tenant = ANY (w.ct))
	GROUP BY s.tenant, s.tool),
h AS (
	SELECT x.tenant, x.tool, array_agg(x.n ORDER BY x.i) AS hist
	FROM (SELECT s.tenant, s.tool, e.i, sum(e.n)::bigint AS n
		  FROM agentretry.stats_counts s CROSS JOIN w,
			   unnest(s.completion_hist) WITH ORDINALITY AS e(n, i)
		  WHERE s.bucket >= date_bin('1 minute', w.start, timestamptz '2000-01-01 00:00+00')
			AND (stats.tenant IS NULL OR s.tenant = stats.tenant)
			AND (w.ct IS NULL OR s.tenant = ANY (w.ct))
		  GROUP BY s.tenant, s.tool, e.i) x
	GROUP BY x.tenant, x.tool),
a AS (
	SELECT y.tenant, y.tool, jsonb_object_agg(y.kind, y.n) AS by_kind,
		   coalesce(sum(y.n) FILTER (WHERE y.kind = 'duplicate_side_effect'), 0)::bigint AS dup
	FROM (SELECT an.tenant, an.tool, an.kind::text AS kind, count(*) AS n
		  FROM agentretry.anomalies an, w
		  WHERE an.found_at >= w.start
			AND (stats.tenant IS NULL OR an.tenant = stats.tenant)
			AND (w.ct IS NULL OR an.tenant = ANY (w.ct))
		  GROUP BY 1, 2, 3) y
	GROUP BY y.tenant, y.tool)
SELECT coalesce(c.tenant, a.tenant), coalesce(c.tool, a.tool),
	   coalesce(c.first_attempts, 0), coalesce(c.executions, 0),
	   coalesce(c.replays, 0),
	   coalesce(c.executions - c.first_attempts, 0),
	   coalesce(c.successes, 0), coalesce(c.successes_after_retry, 0),
	   coalesce(c.verifications, 0), coalesce(c.dead_letters, 0),
	   coalesce(c.budget_denials, 0), coalesce(c.approvals, 0),
	   coalesce(c.compensations_succeeded, 0), coalesce(c.compensations_dead, 0),
	   coalesce(a.by_kind, '{}'::jsonb),
	   coalesce(a.dup, 0),
	   (c.executions - c.first_attempts)::double precision / nullif(c.executions, 0),
	   coalesce(a.dup, 0)::double precision / nullif(c.executions, 0),
	   c.compensations_succeeded::double precision
		   / nullif(c.compensations_succeeded + c.compensations_dead, 0),
	   agentretry.stats_quantile(h.hist, 0.5),
	   agentretry.stats_quantile(h.hist, 0.95)
FROM c
LEFT JOIN h ON h.tenant = c.tenant AND h.tool = c.tool
FULL JOIN a ON a.tenant = c.tenant AND a.tool = c.tool
ORDER BY 1, 2;
$$;
COMMENT ON FUNCTION agentretry.stats(interval, text) IS
	'per tenant and tool over the last since: attempts, replays (duplicates prevented), retries, successes, verifications, dead-letters, denials, approvals, compensations, anomalies, rates, time to completion p50/p95';

-- ---------------------------------------------------------------------------
-- Tenancy: memberships, and row level security on every table of tenants
-- ---------------------------------------------------------------------------

-- Which roles act for which tenant.  While this table is empty agentretry
-- is single-tenant (tenant "default", every agent role); from its first
-- row on, a role acts only for the tenants it is a member of (directly or
-- through a role whose privileges it inherits), and agentretry_admin and
-- superusers for every tenant.  role is a regrole: a renamed role keeps
-- its memberships.
CREATE TABLE agentretry.tenant_members (
	tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 128),
	role regrole NOT NULL,
	added_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (tenant, role)
);
CREATE INDEX tenant_members_role ON agentretry.tenant_members (role);
COMMENT ON TABLE agentretry.tenant_members IS
	'which roles act for which tenant; empty: single-tenant';
SELECT pg_catalog.pg_extension_config_dump('agentretry.tenant_members', '');
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.tenant_members FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

-- May current_user see the rows of tenant?  The policy of every table
-- below; SECURITY INVOKER, so that it answers for the role reading.
CREATE FUNCTION agentretry.tenant_visible(tenant text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'agentretry_tenant_visible'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION agentretry.tenant_visible(text) IS
	'row level security: may current_user see the rows of tenant';

-- The tenants the caller (current_user) may act for; NULL for every tenant.
CREATE FUNCTION agentretry.caller_tenants()
RETURNS text[]
AS 'MODULE_PATHNAME', 'agentretry_caller_tenants'
LANGUAGE C STABLE;
COMMENT ON FUNCTION agentretry.caller_tenants() IS
	'the tenants the caller (current_user) may act for; NULL: every tenant';

-- 42501 unless the caller (current_user) may act for tenant (for SQL functions)
CREATE FUNCTION agentretry.check_caller_tenant(tenant text)
RETURNS void
AS 'MODULE_PATHNAME', 'agentretry_check_caller_tenant'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION agentretry.check_caller_tenant(text) IS
	'raises 42501 unless the caller (current_user) may act for tenant';

-- add_tenant_member(role, tenant): true when added, false when it was a
-- member already.  The first membership turns tenancy on.
CREATE FUNCTION agentretry.add_tenant_member(role regrole, tenant text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be null' USING ERRCODE = '22004';
	END IF;
	IF tenant IS NULL THEN
		RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = '22004';
	END IF;
	IF octet_length(tenant) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant must be 1 to 128 bytes long'
			USING ERRCODE = '22023', DETAIL = format('The tenant is %s bytes long.', octet_length(tenant));
	END IF;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
		RAISE EXCEPTION 'role with OID %s does not exist', role::oid USING ERRCODE = '42704';
	END IF;
	INSERT INTO agentretry.tenant_members AS m (tenant, role)
	VALUES (add_tenant_member.tenant, add_tenant_member.role)
	ON CONFLICT DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n = 1;
END
$$;
COMMENT ON FUNCTION agentretry.add_tenant_member(regrole, text) IS
	'let role act for tenant (and see its rows); the first membership turns tenancy on';

-- remove_tenant_member(role, tenant): true when removed.  Removing the
-- last membership turns tenancy off (single-tenant again).
CREATE FUNCTION agentretry.remove_tenant_member(role regrole, tenant text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be null' USING ERRCODE = '22004';
	END IF;
	IF tenant IS NULL THEN
		RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = '22004';
	END IF;
	DELETE FROM agentretry.tenant_members m
	 WHERE m.tenant = remove_tenant_member.tenant AND m.role = remove_tenant_member.role;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n = 1;
END
$$;
COMMENT ON FUNCTION agentretry.remove_tenant_member(regrole, text) IS
	'stop role acting for tenant; removing the last membership makes agentretry single-tenant again';

-- Row level security.  agentretry's functions run as the tables' owner,
-- which policies do not bind; they check the caller's tenants themselves.
-- What the policies bind is reading: operators (and agents, for tenant
-- policies and budgets) see only the rows of their tenants, through the
-- tables and through the views, which run as the role reading them.
ALTER TABLE agentretry.operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.token_floors ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.tenant_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.budgets ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.budget_stripes ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.budget_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.run_context ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.anomalies ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.stats_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentretry.tenant_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON agentretry.operations USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.events USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.token_floors USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.tenant_policies USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.budgets USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.budget_stripes USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.budget_ledger USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.runs USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.run_context USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.anomalies USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.stats_counts USING (agentretry.tenant_visible(tenant));
CREATE POLICY tenant_rows ON agentretry.tenant_members USING (agentretry.tenant_visible(tenant));
ALTER VIEW agentretry.in_flight SET (security_invoker = true);
ALTER VIEW agentretry.dead_letters SET (security_invoker = true);
ALTER VIEW agentretry.verify_queue SET (security_invoker = true);
ALTER VIEW agentretry.budget_status SET (security_invoker = true);
ALTER VIEW agentretry.run_status SET (security_invoker = true);
ALTER VIEW agentretry.approval_queue SET (security_invoker = true);

REVOKE ALL ON agentretry.tenant_members FROM PUBLIC;
REVOKE ALL ON FUNCTION
	agentretry.tenant_visible(text),
	agentretry.caller_tenants(),
	agentretry.check_caller_tenant(text),
	agentretry.add_tenant_member(regrole, text),
	agentretry.remove_tenant_member(regrole, text)
FROM PUBLIC;
GRANT SELECT ON agentretry.tenant_members TO agentretry_operator;
-- stats() runs as its caller: what it reads is bound by the policies, and
-- these tell it the caller's tenants
GRANT EXECUTE ON FUNCTION agentretry.caller_tenants(), agentretry.check_caller_tenant(text)
TO agentretry_operator;
GRANT EXECUTE ON FUNCTION
	agentretry.add_tenant_member(regrole, text),
	agentretry.remove_tenant_member(regrole, text)
TO agentretry_admin;

-- ---------------------------------------------------------------------------
-- privileges: nothing for PUBLIC
--
-- (The schema's privileges are set under roles, above.)  Here, at the
-- end, ALL TABLES (views included) and ALL FUNCTIONS are every one of the
-- extension's.  agentretry_admin is a member of agentretry_operator and so
-- also has what the operator has.  Not granted to anybody: check_policy
-- and invalidate_cache, which only the extension's own functions and
-- triggers call.
--
-- The sequences: 0.1.0 revoked PUBLIC's privileges on the sequences of the
-- schema, of which PUBLIC has none by default, and events_id_seq was the
-- only one then; the updates did not do so for the later sequences.  The
-- revoke changes no privilege, but it gives events_id_seq an explicit ACL
-- (the others have none, meaning the default), and it is kept so that an
-- install and an upgrade have the same catalog.
-- ---------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA agentretry FROM PUBLIC;
REVOKE ALL ON SEQUENCE agentretry.events_id_seq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA agentretry FROM PUBLIC;
-- but tenant_visible(), the policy on every table with a tenant column: it
-- only tells current_user what it may see, and every role reading such a
-- table calls it
GRANT EXECUTE ON FUNCTION agentretry.tenant_visible(text) TO PUBLIC;

-- every role: the pure functions, lookup, the effective policy, and the
-- tools, tenant policies and budgets
GRANT EXECUTE ON FUNCTION
	agentretry.op_hash(jsonb, text[]),
	agentretry.backoff(integer, interval, interval, double precision, agentretry.jitter_mode, interval),
	agentretry.decide(agentretry.failure_class, agentretry.failure_phase, agentretry.idempotency_class, agentretry.side_effect_class, integer, integer, interval, interval, timestamptz, timestamptz),
	agentretry.tier_defaults(),
	agentretry.lookup(text, text),
	agentretry.effective_policy(text, text),
	agentretry.stats_buckets(),
	agentretry.stats_quantile(bigint[], double precision),
	agentretry.flush_stats()
TO agentretry_agent, agentretry_operator, agentretry_admin;
GRANT SELECT ON agentretry.tools, agentretry.tenant_policies, agentretry.budgets
TO agentretry_agent, agentretry_operator, agentretry_admin;

-- agents: the operation's lifecycle, and runs with their context and
-- compensation
GRANT EXECUTE ON FUNCTION
	agentretry.claim(text, jsonb, text, text, text, text, interval, text, boolean),
	agentretry.complete(text, bigint, jsonb, text, text, jsonb, text),
	agentretry.fail(text, bigint, agentretry.failure_class, agentretry.failure_phase, text, text, interval, text),
	agentretry.resolve(text, bigint, boolean, jsonb, text, text),
	agentretry.heartbeat(text, bigint, interval, text),
	agentretry.release(text, bigint, text),
	agentretry.claim_due(text, integer, text[], text, interval, boolean),
	agentretry.start_run(text, text, text, integer, text),
	agentretry.finish_run(text, text, boolean),
	agentretry.checkpoint(text, text, jsonb, text, integer),
	agentretry.context(text, text, integer),
	agentretry.compensate(text, text, text),
	agentretry.observe(text, text, text, text, jsonb),
	agentretry.claim_verifications(text, integer, text[], text, interval)
TO agentretry_agent;

-- operators: the sweep, requeue and cancel, a run's context and its
-- compensation, approvals, and reading everything
GRANT EXECUTE ON FUNCTION
	agentretry.sweep(integer),
	agentretry.requeue(text, text, boolean),
	agentretry.cancel(text, text, text),
	agentretry.context(text, text, integer),
	agentretry.compensate(text, text, text),
	agentretry.approve(text, text, text),
	agentretry.reject(text, text, text),
	agentretry.observe(text, text, text, text, jsonb),
	agentretry.reconcile(integer),
	agentretry.acknowledge(bigint, text),
	agentretry.stats_since(interval, text),
	agentretry.stats(interval, text)
TO agentretry_operator;
GRANT SELECT ON agentretry.operations, agentretry.events, agentretry.token_floors,
	agentretry.in_flight, agentretry.dead_letters, agentretry.verify_queue,
	agentretry.budget_stripes, agentretry.budget_ledger, agentretry.budget_status,
	agentretry.runs, agentretry.run_context, agentretry.run_status,
	agentretry.approval_queue, agentretry.anomalies, agentretry.stats_counts
TO agentretry_operator;

-- admins: tools, tenant policies, budgets and the pg_cron job
GRANT EXECUTE ON FUNCTION
	agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean),
	agentretry.set_tenant_policy(text, text, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text, boolean),
	agentretry.drop_tenant_policy(text, text),
	agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer),
	agentretry.drop_budget(text, agentretry.budget_scope, text),
	agentretry.schedule_sweep(text),
	agentretry.unschedule_sweep(),
	agentretry.cron_database()
TO agentretry_admin;
