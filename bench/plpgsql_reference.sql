-- plpgsql_reference.sql
--
-- The comparison point of the benchmark: claim() and complete() written by
-- hand in PL/pgSQL, with the semantics of agentretry's for the paths the
-- benchmark measures and those a claim can take (new key, replay, busy,
-- wait, due retry, expired lease, verification, dead/cancelled,
-- fingerprint conflict, fencing in complete).  It is meant to be what a
-- competent engineer would write without the extension: one SELECT for the
-- common answers, an INSERT ... ON CONFLICT DO NOTHING for a new key, a
-- row lock only for transitions, and a single UPDATE whose WHERE clause is
-- the fencing check.
--
-- Deliberate simplifications, none on the measured paths:
--   * the fingerprint is sha256 of args::text (jsonb's text form sorts keys,
--     but does not normalise numeric scale as op_hash does);
--   * the defaults (lease 300 s, TTL 7 days, payload limit 1 MB) are
--     constants rather than GUCs, and claims are never traced;
--   * owner defaults to session_user.
--
-- Installed into its own schema, next to the extension, by bench/run.sh.

CREATE SCHEMA plpgsql_ref;

CREATE TYPE plpgsql_ref.operation_state AS ENUM
	('in_progress', 'retry_wait', 'verify', 'succeeded', 'dead', 'cancelled');
CREATE TYPE plpgsql_ref.outcome AS ENUM
	('execute', 'replay', 'busy', 'wait', 'verify', 'dead', 'cancelled', 'denied');
CREATE TYPE plpgsql_ref.failure_class AS ENUM ('transient', 'permanent', 'ambiguous');
CREATE TYPE plpgsql_ref.failure_phase AS ENUM ('pre_execution', 'mid_execution', 'post_execution');
CREATE TYPE plpgsql_ref.idempotency_class AS ENUM ('idempotent', 'non_idempotent', 'unknown');
CREATE TYPE plpgsql_ref.side_effect_class AS ENUM ('read', 'write', 'destructive');
CREATE TYPE plpgsql_ref.jitter_mode AS ENUM ('none', 'full', 'equal', 'decorrelated');

CREATE TYPE plpgsql_ref.claim_result AS (
	outcome plpgsql_ref.outcome,
	attempt integer,
	lease_token bigint,
	lease_expires_at timestamptz,
	result jsonb,
	retry_at timestamptz,
	reason text
);

CREATE TABLE plpgsql_ref.tools (
	name text PRIMARY KEY,
	idempotency plpgsql_ref.idempotency_class NOT NULL,
	side_effect plpgsql_ref.side_effect_class NOT NULL,
	max_attempts integer CHECK (max_attempts >= 1),
	base_delay interval,
	max_delay interval,
	multiplier double precision,
	jitter plpgsql_ref.jitter_mode,
	deadline interval,
	lease interval,
	ttl interval,
	compensate_tool text,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE plpgsql_ref.operations (
	tenant text NOT NULL,
	key text NOT NULL,
	op_hash bytea NOT NULL,
	args jsonb NOT NULL,
	tool text NOT NULL,
	state plpgsql_ref.operation_state NOT NULL,
	attempts integer NOT NULL DEFAULT 0,
	lease_token bigint NOT NULL,
	lease_owner text,
	lease_expires_at timestamptz,
	next_attempt_at timestamptz,
	first_attempt_at timestamptz,
	last_attempt_at timestamptz,
	deadline timestamptz,
	last_failure_class plpgsql_ref.failure_class,
	last_failure_phase plpgsql_ref.failure_phase,
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

CREATE TABLE plpgsql_ref.events (
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
	failure_class plpgsql_ref.failure_class,
	failure_phase plpgsql_ref.failure_phase,
	code text,
	message text,
	reason text,
	delay interval,
	lease_token bigint,
	owner text,
	PRIMARY KEY (tenant, id)
);

-- {"class", "phase", "code", "message", "reason"} of the last failure
CREATE FUNCTION plpgsql_ref.last_error(op plpgsql_ref.operations)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object('class', op.last_failure_class, 'phase', op.last_failure_phase,
							  'code', op.last_failure_code, 'message', op.last_failure_message,
							  'reason', op.reason)
$$;

-- Write every mutable column of a locked operation back.
CREATE FUNCTION plpgsql_ref.store(op plpgsql_ref.operations, ttl interval, now timestamptz)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE plpgsql_ref.operations o SET
		state = op.state, attempts = op.attempts, lease_token = op.lease_token,
		lease_owner = op.lease_owner, lease_expires_at = op.lease_expires_at,
		next_attempt_at = op.next_attempt_at, first_attempt_at = op.first_attempt_at,
		last_attempt_at = op.last_attempt_at, last_failure_class = op.last_failure_class,
		last_failure_phase = op.last_failure_phase, last_failure_code = op.last_failure_code,
		last_failure_message = op.last_failure_message, last_delay = op.last_delay,
		reason = op.reason,
		completed_at = CASE WHEN op.state IN ('succeeded', 'dead', 'cancelled') THEN now END,
		expires_at = CASE WHEN op.state IN ('succeeded', 'dead', 'cancelled') THEN now + ttl END,
		updated_at = now
	WHERE o.tenant = op.tenant AND o.key = op.key
$$;

-- Trace a decision; with_failure adds the failure that caused it.
CREATE FUNCTION plpgsql_ref.event(op plpgsql_ref.operations, kind text, with_failure boolean,
								  delay interval, now timestamptz)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO plpgsql_ref.events
		(tenant, at, kind, key, tool, run_id, step, attempt, failure_class,
		 failure_phase, code, message, reason, delay, lease_token, owner)
	VALUES
		(op.tenant, now, kind, op.key, op.tool, op.run_id, op.step, op.attempts,
		 CASE WHEN with_failure THEN op.last_failure_class END,
		 CASE WHEN with_failure THEN op.last_failure_phase END,
		 CASE WHEN with_failure THEN op.last_failure_code END,
		 CASE WHEN with_failure THEN op.last_failure_message END,
		 op.reason, delay, op.lease_token, op.lease_owner)
$$;

CREATE FUNCTION plpgsql_ref.claim(
	key text,
	args jsonb,
	tool text DEFAULT 'default',
	tenant text DEFAULT NULL,
	run_id text DEFAULT NULL,
	step text DEFAULT NULL,
	lease interval DEFAULT NULL,
	owner text DEFAULT NULL)
RETURNS plpgsql_ref.claim_result
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_now timestamptz := clock_timestamp();
	v_tool text := coalesce(claim.tool, 'default');
	v_tenant text := coalesce(claim.tenant, 'default');
	v_owner text := coalesce(claim.owner, session_user);
	v_hash bytea;
	v_expires timestamptz;
	v_locked boolean;
	v_verification boolean := false;
	op plpgsql_ref.operations;
	t plpgsql_ref.tools;
	r plpgsql_ref.claim_result;
	-- policy: the tool's fields over its tier's defaults
	p_side_effect plpgsql_ref.side_effect_class;
	p_max_attempts integer;
	p_base interval;
	p_cap interval;
	p_ttl interval;
	v_e double precision;
	v_backoff interval;
	v_retry_at timestamptz;
BEGIN
	IF claim.key IS NULL THEN
		RAISE EXCEPTION 'key must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(claim.key) NOT BETWEEN 1 AND 512 THEN
		RAISE EXCEPTION 'key must be 1 to 512 bytes long' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF claim.args IS NULL THEN
		RAISE EXCEPTION 'args must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_column_size(claim.args) > 1048576 THEN
		RAISE EXCEPTION 'args exceeds the payload limit' USING ERRCODE = 'program_limit_exceeded';
	END IF;
	IF octet_length(v_tool) NOT BETWEEN 1 AND 128 OR octet_length(v_tenant) NOT BETWEEN 1 AND 128
	   OR octet_length(v_owner) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tool, tenant and owner must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(claim.run_id) NOT BETWEEN 1 AND 512 OR octet_length(claim.step) NOT BETWEEN 1 AND 512 THEN
		RAISE EXCEPTION 'run_id and step must be 1 to 512 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF claim.lease NOT BETWEEN interval '1 second' AND interval '1 day' THEN
		RAISE EXCEPTION 'lease must be between 1 second and 1 day' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v_hash := sha256(convert_to(claim.args::text, 'UTF8'));

	<<tries>>
	FOR try IN 1..5 LOOP
		SELECT * INTO op FROM plpgsql_ref.operations o
		WHERE o.tenant = v_tenant AND o.key = claim.key;

		IF NOT FOUND THEN
			INSERT INTO plpgsql_ref.operations AS o
				(tenant, key, op_hash, args, tool, state, attempts, lease_token,
				 lease_owner, lease_expires_at, first_attempt_at, last_attempt_at,
				 deadline, run_id, step, created_at, updated_at)
			SELECT v_tenant, claim.key, v_hash, claim.args, v_tool, 'in_progress', 1, 1,
				   v_owner, v_now + coalesce(claim.lease, tl.lease, interval '300 seconds'),
				   v_now, v_now, v_now + tl.deadline, claim.run_id, claim.step, v_now, v_now
			FROM (SELECT) AS one LEFT JOIN plpgsql_ref.tools tl ON tl.name = v_tool
			ON CONFLICT ON CONSTRAINT operations_pkey DO NOTHING
			RETURNING o.lease_expires_at INTO v_expires;
			IF FOUND THEN
				r := ROW('execute'::plpgsql_ref.outcome, 1, 1, v_expires, NULL, NULL, NULL);
				RETURN r;
			END IF;
			CONTINUE tries;		-- a concurrent claim inserted it first
		END IF;

		IF op.op_hash <> v_hash THEN
			RAISE EXCEPTION 'idempotency key "%" was already used with different arguments', claim.key
				USING ERRCODE = 'AR001',
					  DETAIL = format('Stored op_hash is %s; this call''s op_hash is %s.', op.op_hash, v_hash);
		END IF;
		IF op.tool <> v_tool THEN
			RAISE EXCEPTION 'idempotency key "%" was already used with a different tool', claim.key
				USING ERRCODE = 'AR001';
		END IF;

		-- answers that need no transition: first unlocked, then again under
		-- the row lock, since another claimant may have acted in between
		v_locked := false;
		LOOP
			CASE op.state
				WHEN 'succeeded' THEN
					r := ROW('replay', op.attempts, NULL, NULL, op.result, NULL, op.reason);
					RETURN r;
				WHEN 'dead', 'cancelled' THEN
					r := ROW(op.state::text, op.attempts, NULL, NULL,
							 plpgsql_ref.last_error(op), NULL, op.reason);
					RETURN r;
				WHEN 'in_progress', 'verify' THEN
					IF op.lease_expires_at > v_now THEN
						r := ROW('busy', op.attempts, NULL, NULL, NULL, op.lease_expires_at, op.reason);
						RETURN r;
					END IF;
				WHEN 'retry_wait' THEN
					IF op.next_attempt_at > v_now THEN
						r := ROW('wait', op.attempts, NULL, NULL, NULL, op.next_attempt_at, op.reason);
						RETURN r;
					END IF;
			END CASE;
			EXIT WHEN v_locked;
			SELECT * INTO op FROM plpgsql_ref.operations o
			WHERE o.tenant = v_tenant AND o.key = claim.key
			FOR UPDATE;
			IF NOT FOUND THEN
				CONTINUE tries;		-- purged meanwhile: insert anew
			END IF;
			v_locked := true;
		END LOOP;

		SELECT * INTO t FROM plpgsql_ref.tools tl WHERE tl.name = op.tool;
		p_side_effect := coalesce(t.side_effect, 'write');
		p_max_attempts := coalesce(t.max_attempts,
								   CASE p_side_effect WHEN 'read' THEN 6 WHEN 'write' THEN 2 ELSE 1 END);
		p_base := coalesce(t.base_delay,
						   CASE p_side_effect WHEN 'read' THEN interval '200 ms' ELSE interval '1 second' END);
		p_cap := coalesce(t.max_delay, interval '30 seconds');
		p_ttl := coalesce(t.ttl, interval '7 days');

		IF op.state = 'in_progress' THEN
			-- expired lease: an ambiguous failure dated at the expiry, so
			-- the time since then counts as backoff already waited
			v_e := least(extract(epoch FROM p_cap),
						 extract(epoch FROM p_base) * coalesce(t.multiplier, 2) ^ (greatest(op.attempts, 1) - 1));
			v_backoff := make_interval(secs => CASE coalesce(t.jitter, 'full')
					WHEN 'none' THEN v_e
					WHEN 'full' THEN random() * v_e
					WHEN 'equal' THEN v_e / 2 + random() * v_e / 2
					ELSE least(extract(epoch FROM p_cap),
							   extract(epoch FROM p_base) + random() *
							   greatest(0, 3 * extract(epoch FROM coalesce(op.last_delay, p_base))
										   - extract(epoch FROM p_base)))
				END);
			op.last_failure_class := 'ambiguous';
			op.last_failure_phase := NULL;
			op.last_failure_code := 'lease_expired';
			op.last_failure_message := NULL;
			op.lease_expires_at := NULL;
			op.next_attempt_at := NULL;
			IF p_side_effect = 'destructive' THEN
				op.state := 'dead';
				op.reason := 'review_required';
			ELSIF coalesce(t.idempotency, 'unknown') <> 'idempotent' THEN
				op.state := 'verify';
				op.reason := 'outcome_unknown';
			ELSIF greatest(op.attempts, 1) >= p_max_attempts THEN
				op.state := 'dead';
				op.reason := 'attempts_exhausted';
			ELSIF op.deadline IS NOT NULL AND v_now > op.deadline THEN
				op.state := 'dead';
				op.reason := 'deadline_exceeded';
			ELSE
				op.state := 'retry_wait';
				op.reason := 'idempotent_retry';
				v_retry_at := v_now + greatest(v_backoff - (v_now - op.lease_expires_at), interval '0');
				v_retry_at := least(v_retry_at, op.deadline);
				op.next_attempt_at := v_retry_at;
				op.last_delay := v_backoff;
			END IF;
			PERFORM plpgsql_ref.event(op, CASE op.state WHEN 'retry_wait' THEN 'retry' ELSE op.state::text END,
									  true, v_retry_at - v_now, v_now);
			IF op.state = 'dead' THEN
				PERFORM plpgsql_ref.store(op, p_ttl, v_now);
				r := ROW('dead', op.attempts, NULL, NULL, plpgsql_ref.last_error(op), NULL, op.reason);
				RETURN r;
			ELSIF op.state = 'retry_wait' AND op.next_attempt_at > v_now THEN
				PERFORM plpgsql_ref.store(op, p_ttl, v_now);
				r := ROW('wait', op.attempts, NULL, NULL, NULL, op.next_attempt_at, op.reason);
				RETURN r;
			END IF;
			v_verification := op.state = 'verify';
		ELSIF op.state = 'retry_wait' THEN
			-- the deadline was judged when the retry was scheduled: refuse
			-- only a retry that was due beyond it
			IF op.deadline IS NOT NULL AND coalesce(op.next_attempt_at, v_now) > op.deadline THEN
				op.state := 'dead';
				op.reason := 'deadline_exceeded';
				op.lease_expires_at := NULL;
				op.next_attempt_at := NULL;
				PERFORM plpgsql_ref.store(op, p_ttl, v_now);
				PERFORM plpgsql_ref.event(op, 'dead', false, NULL, v_now);
				r := ROW('dead', op.attempts, NULL, NULL, plpgsql_ref.last_error(op), NULL, op.reason);
				RETURN r;
			END IF;
		ELSE
			v_verification := true;		-- verify, and nobody holds its lease
		END IF;

		-- issue a lease: an attempt, or a verification
		op.lease_token := op.lease_token + 1;
		op.lease_owner := v_owner;
		op.lease_expires_at := v_now + coalesce(claim.lease, t.lease, interval '300 seconds');
		op.next_attempt_at := NULL;
		IF NOT v_verification THEN
			op.state := 'in_progress';
			op.attempts := op.attempts + 1;
			op.last_attempt_at := v_now;
			op.first_attempt_at := coalesce(op.first_attempt_at, v_now);
		END IF;
		PERFORM plpgsql_ref.store(op, p_ttl, v_now);
		IF v_verification THEN
			PERFORM plpgsql_ref.event(op, 'verifying', false, NULL, v_now);
		END IF;
		r := ROW(CASE WHEN v_verification THEN 'verify' ELSE 'execute' END,
				 op.attempts, op.lease_token, op.lease_expires_at, NULL, NULL, op.reason);
		RETURN r;
	END LOOP;

	RAISE EXCEPTION 'could not claim operation "%" while it was being purged', claim.key
		USING ERRCODE = 'serialization_failure', HINT = 'Retry the claim.';
END
$$;

CREATE FUNCTION plpgsql_ref.complete(
	key text,
	lease_token bigint,
	result jsonb DEFAULT NULL,
	tenant text DEFAULT NULL,
	compensate_tool text DEFAULT NULL,
	compensate_args jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_now timestamptz := clock_timestamp();
	v_tenant text := coalesce(complete.tenant, 'default');
	v_token bigint;
	v_state plpgsql_ref.operation_state;
BEGIN
	IF complete.key IS NULL THEN
		RAISE EXCEPTION 'key must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(complete.key) NOT BETWEEN 1 AND 512 THEN
		RAISE EXCEPTION 'key must be 1 to 512 bytes long' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF complete.lease_token IS NULL THEN
		RAISE EXCEPTION 'lease_token must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_column_size(complete.result) > 1048576 OR pg_column_size(complete.compensate_args) > 1048576 THEN
		RAISE EXCEPTION 'result or compensate_args exceeds the payload limit'
			USING ERRCODE = 'program_limit_exceeded';
	END IF;
	IF octet_length(v_tenant) NOT BETWEEN 1 AND 128
	   OR octet_length(complete.compensate_tool) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant and compensate_tool must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	-- the WHERE clause is the fencing check
	UPDATE plpgsql_ref.operations o SET
		state = 'succeeded', result = complete.result,
		compensate_tool = complete.compensate_tool, compensate_args = complete.compensate_args,
		reason = NULL, lease_expires_at = NULL, next_attempt_at = NULL,
		completed_at = v_now, updated_at = v_now,
		expires_at = v_now + coalesce((SELECT tl.ttl FROM plpgsql_ref.tools tl WHERE tl.name = o.tool),
									  interval '7 days')
	WHERE o.tenant = v_tenant AND o.key = complete.key AND o.lease_token = complete.lease_token
	  AND o.state IN ('in_progress', 'retry_wait', 'verify');
	IF FOUND THEN
		RETURN;
	END IF;

	SELECT o.lease_token, o.state INTO v_token, v_state
	FROM plpgsql_ref.operations o
	WHERE o.tenant = v_tenant AND o.key = complete.key;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'operation "%" does not exist', complete.key
			USING ERRCODE = 'AR003',
				  DETAIL = format('No operation has this key in tenant "%s".', v_tenant);
	ELSIF v_token <> complete.lease_token THEN
		RAISE EXCEPTION 'lease on operation "%" was lost', complete.key
			USING ERRCODE = 'AR002',
				  DETAIL = format('Lease token %s was superseded by %s.', complete.lease_token, v_token);
	ELSE
		RAISE EXCEPTION 'lease on operation "%" was lost', complete.key
			USING ERRCODE = 'AR002',
				  DETAIL = format('The operation is already %s.', v_state);
	END IF;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA plpgsql_ref FROM PUBLIC;
