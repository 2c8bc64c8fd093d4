/* agentretry--0.1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION agentretry" to load this file. \quit

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
CREATE TYPE agentretry.operation_state AS ENUM
	('in_progress', 'retry_wait', 'verify', 'succeeded', 'dead', 'cancelled');
COMMENT ON TYPE agentretry.operation_state IS
	'lifecycle of an operation: leased, waiting for a retry, awaiting verification, or terminal';

CREATE TYPE agentretry.outcome AS ENUM
	('execute', 'replay', 'busy', 'wait', 'verify', 'dead', 'cancelled', 'denied');
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

CREATE TYPE agentretry.decision_action AS ENUM ('retry', 'verify', 'dead');
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
	CHECK (octet_length(name) BETWEEN 1 AND 128)
);
COMMENT ON COLUMN agentretry.tools.deadline IS
	'wall-clock budget of an operation from its first attempt (fixed on the operation at its first claim)';
COMMENT ON TABLE agentretry.tools IS
	'registered tools: idempotency, side-effect tier and retry policy; NULL policy fields take the tier default';

-- ---------------------------------------------------------------------------
-- idempotency core
--
-- The C functions are SECURITY DEFINER without a SET clause: they pin
-- search_path to pg_catalog themselves for every query they run (see
-- ar_spi_begin in src/operation.c), which protects them the same way at a
-- fraction of the cost.  The PL/pgSQL functions use SET search_path.
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
	PRIMARY KEY (tenant, key)
);
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
	PRIMARY KEY (tenant, id)
);
COMMENT ON TABLE agentretry.events IS
	'append-only trace of decisions: retries, verifications, dead-letters; with agentretry.trace_all also claims, replays and completions';

SELECT pg_catalog.pg_extension_config_dump('agentretry.tools', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.operations', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.events', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.events_id_seq', '');

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
	owner text DEFAULT NULL)
RETURNS agentretry.claim_result
AS 'MODULE_PATHNAME', 'agentretry_claim'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.claim(text, jsonb, text, text, text, text, interval, text) IS
	'lease an operation by idempotency key, or say why not: execute, replay, busy, wait, verify, dead, cancelled';

CREATE FUNCTION agentretry.complete(
	key text,
	lease_token bigint,
	result jsonb DEFAULT NULL,
	tenant text DEFAULT NULL,
	compensate_tool text DEFAULT NULL,
	compensate_args jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'agentretry_complete'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.complete(text, bigint, jsonb, text, text, jsonb) IS
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
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.fail(text, bigint, agentretry.failure_class, agentretry.failure_phase, text, text, interval, text) IS
	'record a failed attempt and decide: retry (when), verify, or dead';

CREATE FUNCTION agentretry.resolve(
	key text,
	lease_token bigint,
	executed boolean,
	result jsonb DEFAULT NULL,
	tenant text DEFAULT NULL)
RETURNS agentretry.operation_state
AS 'MODULE_PATHNAME', 'agentretry_resolve'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.resolve(text, bigint, boolean, jsonb, text) IS
	'end a verification: executed stores the receipt; not executed makes the operation due for retry';

CREATE FUNCTION agentretry.heartbeat(
	key text,
	lease_token bigint,
	extend interval DEFAULT NULL,
	tenant text DEFAULT NULL)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'agentretry_heartbeat'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.heartbeat(text, bigint, interval, text) IS
	'extend a held lease to now + extend (default: the tool''s lease) and return the new expiry';

CREATE FUNCTION agentretry.release(
	key text,
	lease_token bigint,
	tenant text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'agentretry_release'
LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.release(text, bigint, text) IS
	'give a lease back before acting; the attempt does not count and the operation is due at once';

CREATE FUNCTION agentretry.lookup(key text, tenant text DEFAULT NULL)
RETURNS agentretry.operations
AS 'MODULE_PATHNAME', 'agentretry_lookup'
LANGUAGE C STABLE SECURITY DEFINER;
COMMENT ON FUNCTION agentretry.lookup(text, text) IS
	'read one operation; raises AR003 when the key does not exist';

-- ---------------------------------------------------------------------------
-- scheduling and decisions (pure functions)
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
-- tool registry functions
-- ---------------------------------------------------------------------------
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
COMMENT ON FUNCTION agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text) IS
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
-- privileges: nothing for PUBLIC
-- ---------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA agentretry FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA agentretry FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA agentretry FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
	agentretry.op_hash(jsonb, text[]),
	agentretry.backoff(integer, interval, interval, double precision, agentretry.jitter_mode, interval),
	agentretry.decide(agentretry.failure_class, agentretry.failure_phase, agentretry.idempotency_class, agentretry.side_effect_class, integer, integer, interval, interval, timestamptz, timestamptz),
	agentretry.tier_defaults(),
	agentretry.lookup(text, text)
TO agentretry_agent, agentretry_operator, agentretry_admin;

GRANT EXECUTE ON FUNCTION
	agentretry.claim(text, jsonb, text, text, text, text, interval, text),
	agentretry.complete(text, bigint, jsonb, text, text, jsonb),
	agentretry.fail(text, bigint, agentretry.failure_class, agentretry.failure_phase, text, text, interval, text),
	agentretry.resolve(text, bigint, boolean, jsonb, text),
	agentretry.heartbeat(text, bigint, interval, text),
	agentretry.release(text, bigint, text)
TO agentretry_agent;

GRANT EXECUTE ON FUNCTION
	agentretry.register_tool(text, agentretry.idempotency_class, agentretry.side_effect_class, integer, interval, interval, double precision, agentretry.jitter_mode, interval, interval, interval, text)
TO agentretry_admin;

GRANT SELECT ON agentretry.tools TO agentretry_agent, agentretry_operator, agentretry_admin;
GRANT SELECT ON agentretry.operations, agentretry.events TO agentretry_operator;
