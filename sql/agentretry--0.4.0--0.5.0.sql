/* agentretry--0.4.0--0.5.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION agentretry UPDATE TO '0.5.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- 0.5.0: receipts, late evidence (observe), reconciliation and anomalies,
-- verification workers, and stats.
--
-- complete() and resolve() gain a last parameter, receipt; calls by
-- position or by name keep working.  fail() may now answer action
-- 'succeeded': evidence that the side effect happened arrived (observe)
-- while the attempt was leased.  Existing rows keep NULL in the new
-- columns, so operations completed before the update are never reported
-- by reconcile(); only those awaiting verification get a reconcile_at.
-- ---------------------------------------------------------------------------

ALTER TYPE agentretry.decision_action ADD VALUE 'succeeded';
ALTER TYPE agentretry.sweep_summary ADD ATTRIBUTE anomalies_found integer;

CREATE TYPE agentretry.anomaly_kind AS ENUM
	('duplicate_side_effect', 'outcome_corrected', 'orphan_side_effect',
	 'success_after_retry', 'stale_verification', 'run_finished_open',
	 'duplicate_receipt');
COMMENT ON TYPE agentretry.anomaly_kind IS
	'what reconciliation found: a side effect done twice, an outcome believed wrong, evidence of an unknown key, a success that needed retries, a verification left waiting, a run finished with open steps, one receipt on two keys';

-- ---------------------------------------------------------------------------
-- receipts and evidence
--
-- receipt: the provider's reference of the side effect, stored by
-- complete(), resolve() and observe().  observed_receipt: evidence that
-- arrived while the operation was leased, compared when the lease holder
-- reports.  reconcile_at: when reconcile() must look at the row (a
-- success after retries or with a receipt, a verification that may go
-- stale); NULL for every other row, so reconcile() reads only these.
-- ---------------------------------------------------------------------------
ALTER TABLE agentretry.operations
	ADD COLUMN receipt text,
	ADD COLUMN observed_receipt text,
	ADD COLUMN reconcile_at timestamptz;
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

-- Operations already awaiting verification are looked at when they would
-- go stale, like those that enter verification from now on (read through
-- operations_attention: verifications are few).  The GUC is read if it is
-- set; the library may not be loaded yet.
UPDATE agentretry.operations
SET reconcile_at = coalesce(state_since, updated_at)
	+ coalesce(nullif(current_setting('agentretry.verify_stale_after', true), ''), '15min')::interval
WHERE state = 'verify';

ALTER TABLE agentretry.runs ADD COLUMN reconcile_at timestamptz;
COMMENT ON COLUMN agentretry.runs.reconcile_at IS
	'when reconcile() must check the finished run for open steps; NULL: nothing to check';
CREATE INDEX runs_reconcile ON agentretry.runs (reconcile_at)
	WHERE reconcile_at IS NOT NULL;

ALTER TABLE agentretry.events
	ADD COLUMN receipt text,
	ADD COLUMN source text,
	ADD COLUMN detail jsonb;
COMMENT ON COLUMN agentretry.events.receipt IS 'the receipt completed or observed';
COMMENT ON COLUMN agentretry.events.source IS 'for an observation: where the evidence came from';
COMMENT ON COLUMN agentretry.events.detail IS 'for an observation: the evidence as reported';

-- 0.4.0 compared the state as text alone (the label was new in its
-- transaction), which no index can serve.  The label still cannot be named
-- here (an update from 0.3.0 or older adds it in this transaction); the
-- states of 0.1.0 it leaves out can, and they let it read
-- operations_attention.
CREATE OR REPLACE VIEW agentretry.approval_queue AS
SELECT o.tenant, o.key, o.tool, o.args, o.lease_owner AS requested_by,
	   coalesce(o.state_since, o.created_at) AS since,
	   pg_catalog.clock_timestamp() - coalesce(o.state_since, o.created_at) AS waiting,
	   o.run_id, o.step
FROM agentretry.operations o
WHERE o.state NOT IN ('in_progress', 'retry_wait', 'verify', 'succeeded', 'dead', 'cancelled')
  AND o.state::text = 'awaiting_approval';

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
-- claim and claim_due take in_transaction: inside a transaction block a
-- lease must be asked for with in_transaction => true (pattern A), so
-- that a caller who acts before committing its claim is told instead of
-- getting a duplicate when it dies
DROP FUNCTION agentretry.claim(text, jsonb, text, text, text, text, interval, text);
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

DROP FUNCTION agentretry.claim_due(text, integer, text[], text, interval);
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

DROP FUNCTION agentretry.complete(text, bigint, jsonb, text, text, jsonb);
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

DROP FUNCTION agentretry.resolve(text, bigint, boolean, jsonb, text);
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

-- check_policy refuses "*" as a compensate_tool, like a tool name
CREATE OR REPLACE FUNCTION agentretry.check_policy(
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

-- ---------------------------------------------------------------------------
-- set_budget accepts any positive capacity: a retry that no stripe can pay
-- alone is paid from several (0.4.0 required capacity >= stripes x the
-- largest cost, and stranded what was left in each stripe)
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION agentretry.set_budget(
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

-- ---------------------------------------------------------------------------
-- schedule_sweep and unschedule_sweep for an admin that is not a superuser
-- ---------------------------------------------------------------------------
-- pg_cron.  0.4.0 read cron.database_name with current_setting(), which
-- fails with 42501 for a role without pg_read_all_settings (an admin that
-- is not a superuser), and called pg_cron without checking the caller may.
-- SECURITY INVOKER: the job belongs to, and runs as, the role that
-- schedules it, which needs pg_cron's own privileges.  The statements
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

CREATE OR REPLACE FUNCTION agentretry.schedule_sweep(schedule text DEFAULT '* * * * *')
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

CREATE OR REPLACE FUNCTION agentretry.unschedule_sweep()
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

-- The C functions run as their caller (SECURITY INVOKER) and switch to the
-- owner of the tables for their queries (src/spi.c): the role a call acts
-- for is then the role that calls, as PostgreSQL sees it, also inside a
-- SECURITY DEFINER function or an index expression of another role.
ALTER FUNCTION agentretry.acknowledge(bigint,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.approve(text,text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.cancel(text,text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.checkpoint(text,text,jsonb,text,integer) SECURITY INVOKER;
ALTER FUNCTION agentretry.claim(text,jsonb,text,text,text,text,interval,text,boolean) SECURITY INVOKER;
ALTER FUNCTION agentretry.claim_due(text,integer,text[],text,interval,boolean) SECURITY INVOKER;
ALTER FUNCTION agentretry.claim_verifications(text,integer,text[],text,interval) SECURITY INVOKER;
ALTER FUNCTION agentretry.compensate(text,text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.complete(text,bigint,jsonb,text,text,jsonb,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.context(text,text,integer) SECURITY INVOKER;
ALTER FUNCTION agentretry.effective_policy(text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.fail(text,bigint,agentretry.failure_class,agentretry.failure_phase,text,text,interval,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.finish_run(text,text,boolean) SECURITY INVOKER;
ALTER FUNCTION agentretry.flush_stats() SECURITY INVOKER;
ALTER FUNCTION agentretry.heartbeat(text,bigint,interval,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.lookup(text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.observe(text,text,text,text,jsonb) SECURITY INVOKER;
ALTER FUNCTION agentretry.reconcile(integer) SECURITY INVOKER;
ALTER FUNCTION agentretry.reject(text,text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.release(text,bigint,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.requeue(text,text,boolean) SECURITY INVOKER;
ALTER FUNCTION agentretry.resolve(text,bigint,boolean,jsonb,text,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.start_run(text,text,text,integer,text) SECURITY INVOKER;
ALTER FUNCTION agentretry.sweep(integer) SECURITY INVOKER;

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
-- tenant_visible() only tells current_user what it may see; every role
-- reading a table with a policy calls it
GRANT EXECUTE ON FUNCTION agentretry.tenant_visible(text) TO PUBLIC;
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
-- privileges
-- ---------------------------------------------------------------------------
REVOKE ALL ON agentretry.anomalies, agentretry.stats_counts FROM PUBLIC;
REVOKE ALL ON FUNCTION
	agentretry.claim(text, jsonb, text, text, text, text, interval, text, boolean),
	agentretry.claim_due(text, integer, text[], text, interval, boolean),
	agentretry.complete(text, bigint, jsonb, text, text, jsonb, text),
	agentretry.resolve(text, bigint, boolean, jsonb, text, text),
	agentretry.observe(text, text, text, text, jsonb),
	agentretry.reconcile(integer),
	agentretry.acknowledge(bigint, text),
	agentretry.claim_verifications(text, integer, text[], text, interval),
	agentretry.flush_stats(),
	agentretry.stats_buckets(),
	agentretry.stats_quantile(bigint[], double precision),
	agentretry.stats_since(interval, text),
	agentretry.stats(interval, text),
	agentretry.cron_database()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agentretry.cron_database() TO agentretry_admin;

GRANT EXECUTE ON FUNCTION
	agentretry.stats_buckets(),
	agentretry.stats_quantile(bigint[], double precision),
	agentretry.flush_stats()
TO agentretry_agent, agentretry_operator, agentretry_admin;

-- agents: the new complete and resolve, late evidence (a webhook handler
-- runs as an agent), and verification workers
GRANT EXECUTE ON FUNCTION
	agentretry.claim(text, jsonb, text, text, text, text, interval, text, boolean),
	agentretry.claim_due(text, integer, text[], text, interval, boolean),
	agentretry.complete(text, bigint, jsonb, text, text, jsonb, text),
	agentretry.resolve(text, bigint, boolean, jsonb, text, text),
	agentretry.observe(text, text, text, text, jsonb),
	agentretry.claim_verifications(text, integer, text[], text, interval)
TO agentretry_agent;

-- operators: evidence, reconciliation, anomalies and stats
GRANT EXECUTE ON FUNCTION
	agentretry.observe(text, text, text, text, jsonb),
	agentretry.reconcile(integer),
	agentretry.acknowledge(bigint, text),
	agentretry.stats_since(interval, text),
	agentretry.stats(interval, text)
TO agentretry_operator;
GRANT SELECT ON agentretry.anomalies, agentretry.stats_counts TO agentretry_operator;
