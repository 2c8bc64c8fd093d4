-- sweep_data.sql
--
-- Operations for the sweep and reconcile benchmarks, written straight into
-- agentretry.operations by a superuser (INSERT ... SELECT generate_series:
-- going through claim() would take hours at 10 M rows).  The rows look
-- like the ones agentretry writes: same columns set, same states, one
-- tenant, a registered idempotent tool and, for the operations awaiting
-- verification, a registered non-idempotent one.
--
-- A table of total rows holds
--   - total - due - waiting - reconcile settled operations: succeeded with
--     their result and a receipt (the provider's reference: receipts fill
--     operations_receipt, as they would where callers pass them),
--     reconcile_at NULL (reconciled long ago), expires_at spread over the
--     next 7 days (the default TTL), so they sit in operations_expiry but
--     none is due for the purge;
--   - waiting operations in flight that are not due: half retry_wait due in
--     a day, half in_progress with a lease that expires in a day;
--   - due operations, which the sweep must act on, in three parts (the
--     last takes the remainder of due / 3):
--     expired leases (in_progress, lease expired an hour ago), retries
--     waiting past their deadline and its grace (retry_wait due two hours
--     ago, deadline an hour ago), and terminal operations past their TTL
--     (succeeded, expires_at a day ago);
--   - reconcile operations (keys rec-1 .. rec-<reconcile>): recent
--     successes and verifications, already reconciled when loaded
--     (reconcile_at NULL); reconcile_bench_rows(reconcile, true) makes them
--     due for reconcile() before each timed drain (see there for the mix).
--
-- sweep_bench_load(total, due, waiting, reconcile) fills the table from
-- empty; sweep_bench_due(due) puts the due operations back before each
-- timed sweep (the sweep decided, dead-lettered or deleted them);
-- reconcile_bench_rows(reconcile, true) puts the reconcile operations back
-- due, and reconcile_bench_expect(reconcile) says what reconcile() must
-- find in them.

SELECT name AS registered FROM agentretry.register_tool('bench_sweep', 'idempotent', 'write');
-- a charge: an ambiguous failure of it awaits verification
SELECT name AS registered FROM agentretry.register_tool('bench_charge', 'non_idempotent', 'write');

-- what the loader left for the reconcile operations to refer to
CREATE TABLE sweep_bench_facts (settled bigint NOT NULL);

-- the receipt of settled operation g (op-<g>)
CREATE FUNCTION sweep_bench_receipt(g bigint) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT 'ch_' || lpad(g::text, 10, '0') $$;

-- the same args and fingerprint on every row: their size is what matters
CREATE FUNCTION sweep_bench_args() RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$ SELECT '{"to": "ops@example.com", "amount": 42}'::jsonb $$;

-- Replace the due operations (keys due-1 .. due-<due>) with fresh ones.
CREATE FUNCTION sweep_bench_due(due integer) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	t timestamptz := now();
	a jsonb := sweep_bench_args();
	h bytea := agentretry.op_hash(sweep_bench_args());
	third integer := due / 3;
BEGIN
	-- whatever the last sweep made of them (retry_wait, dead, or gone)
	DELETE FROM agentretry.operations o
		USING generate_series(1, due) g
		WHERE o.tenant = 'default' AND o.key = 'due-' || g;

	INSERT INTO agentretry.operations
		(tenant, key, op_hash, args, tool, state, attempts, lease_token,
		 lease_owner, lease_expires_at, next_attempt_at, first_attempt_at,
		 last_attempt_at, deadline, last_failure_class, last_failure_phase,
		 last_delay, result, created_at, updated_at, completed_at, expires_at,
		 state_since)
	SELECT 'default', 'due-' || g, h, a, 'bench_sweep', k.state, 1, 1,
		   k.lease_owner, k.lease_expires_at, k.next_attempt_at,
		   k.attempted, k.attempted, k.deadline,
		   k.failure, k.phase, k.last_delay, k.result,
		   k.attempted, k.since, k.completed_at, k.expires_at,
		   k.since
	FROM generate_series(1, due) g,
	LATERAL (SELECT * FROM (VALUES
		-- expired lease: claimed with a 5 minute lease, the worker went
		-- away, the lease expired an hour ago
		(1, 'in_progress'::agentretry.operation_state, 'worker',
		 t - interval '1 hour', NULL::timestamptz, t + interval '1 day',
		 NULL::agentretry.failure_class, NULL::agentretry.failure_phase,
		 NULL::interval, NULL::jsonb, t - interval '65 minutes',
		 t - interval '65 minutes', NULL::timestamptz, NULL::timestamptz),
		-- failed, retry due two hours ago, deadline an hour ago (the grace
		-- is 60 s): nobody claimed it in time
		(2, 'retry_wait', NULL,
		 NULL, t - interval '2 hours', t - interval '1 hour',
		 'transient', 'pre_execution',
		 interval '1 second', NULL, t - interval '2 hours 1 second',
		 t - interval '2 hours 1 second', NULL, NULL),
		-- succeeded 8 days ago, kept until a day ago (TTL 7 days)
		(3, 'succeeded', 'worker',
		 NULL, NULL, NULL,
		 NULL, NULL,
		 NULL, '{"ok": true}', t - interval '8 days',
		 t - interval '8 days', t - interval '8 days', t - interval '1 day')
		) v (kind, state, lease_owner,
			 lease_expires_at, next_attempt_at, deadline,
			 failure, phase,
			 last_delay, result, attempted,
			 since, completed_at, expires_at)
		WHERE v.kind = CASE WHEN g <= third THEN 1 WHEN g <= 2 * third THEN 2 ELSE 3 END
	) k;
END
$$;

CREATE FUNCTION sweep_bench_load(total bigint, due integer, waiting integer,
								 reconcile integer DEFAULT 0) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	t timestamptz := now();
	a jsonb := sweep_bench_args();
	h bytea := agentretry.op_hash(sweep_bench_args());
	settled bigint := total - due - waiting - reconcile;
BEGIN
	-- the reconcile operations need settled receipts to duplicate, one for
	-- every ten of them
	IF settled < 1 OR settled <= reconcile / 10 THEN
		RAISE EXCEPTION 'total % leaves too few settled operations for due % + waiting % + reconcile %',
			total, due, waiting, reconcile;
	END IF;
	TRUNCATE agentretry.operations, agentretry.events, agentretry.token_floors,
		agentretry.anomalies, sweep_bench_facts;
	INSERT INTO sweep_bench_facts VALUES (settled);

	-- Keys in index order and expires_at and receipts growing with them, so
	-- that the primary key, operations_expiry and operations_receipt are
	-- filled at their right edge.
	INSERT INTO agentretry.operations
		(tenant, key, op_hash, args, tool, state, attempts, lease_token,
		 lease_owner, first_attempt_at, last_attempt_at, result, created_at,
		 updated_at, completed_at, expires_at, state_since, receipt)
	SELECT 'default', 'op-' || lpad(g::text, 10, '0'), h, a, 'bench_sweep',
		   'succeeded', 1, 1, 'worker', t - interval '1 hour',
		   t - interval '1 hour', '{"ok": true}', t - interval '1 hour',
		   t - interval '1 hour', t - interval '1 hour',
		   t + interval '1 hour' + (interval '7 days' * g / settled),
		   t - interval '1 hour', sweep_bench_receipt(g)
	FROM generate_series(1, settled) g;

	INSERT INTO agentretry.operations
		(tenant, key, op_hash, args, tool, state, attempts, lease_token,
		 lease_owner, lease_expires_at, next_attempt_at, first_attempt_at,
		 last_attempt_at, deadline, last_failure_class, last_failure_phase,
		 last_delay, created_at, updated_at, state_since)
	SELECT 'default', 'wait-' || g, h, a, 'bench_sweep',
		   CASE WHEN g % 2 = 0 THEN 'retry_wait' ELSE 'in_progress' END::agentretry.operation_state,
		   1, 1,
		   CASE WHEN g % 2 = 0 THEN NULL ELSE 'worker' END,
		   CASE WHEN g % 2 = 0 THEN NULL ELSE t + interval '1 day' END,
		   CASE WHEN g % 2 = 0 THEN t + interval '1 day' END,
		   t - interval '1 minute', t - interval '1 minute', t + interval '2 days',
		   CASE WHEN g % 2 = 0 THEN 'transient'::agentretry.failure_class END,
		   CASE WHEN g % 2 = 0 THEN 'pre_execution'::agentretry.failure_phase END,
		   CASE WHEN g % 2 = 0 THEN interval '1 hour' END,
		   t - interval '1 minute', t - interval '1 minute', t - interval '1 minute'
	FROM generate_series(1, waiting) g;

	PERFORM sweep_bench_due(due);
	PERFORM reconcile_bench_rows(reconcile, false);
END
$$;

-- The kind of reconcile operation rec-<g>: a mix that repeats every ten
-- keys, as agentretry's transitions would leave them due (reconcile_at set)
--   0  succeeded after 2 attempts, no receipt         success_after_retry
--   1  succeeded after 3 attempts, its own receipt    success_after_retry
--   2-4 succeeded at the first attempt, own receipt   (none: the receipt is
--                                                     looked up, unique)
--   5  succeeded at the first attempt with the receipt of a settled
--      operation (a side effect done twice under two keys)
--                                                     duplicate_receipt
--   6  succeeded at the first attempt, receipt shared with rec-<g+1>
--   7  succeeded after 2 attempts with the receipt of rec-<g-1>
--                                                     success_after_retry,
--                                                     duplicate_receipt (one
--                                                     for the pair)
--   8-9 awaiting verification (bench_charge, ambiguous failure mid
--      execution) for 60 to 90 minutes: past agentretry.verify_stale_after
--      (default 15 minutes)                           stale_verification
-- Successes completed over the last 10 minutes (reconcile_at = completion,
-- as complete() sets it), verifications due since they went stale
-- (reconcile_at = state_since + 15 minutes, as fail() sets it).
CREATE FUNCTION reconcile_bench_kind(g bigint) RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT (g % 10)::integer $$;

-- Replace the reconcile operations (keys rec-1 .. rec-<n>) with fresh ones,
-- due for reconcile() or (due false) as reconcile() leaves them.
CREATE FUNCTION reconcile_bench_rows(n integer, due boolean) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	t timestamptz := now();
	a jsonb := sweep_bench_args();
	h bytea := agentretry.op_hash(sweep_bench_args());
	settled bigint := (SELECT f.settled FROM sweep_bench_facts f);
	-- spread the duplicated settled receipts over the whole index
	stride bigint := settled / (n / 10 + 1);
BEGIN
	DELETE FROM agentretry.operations o
		USING generate_series(1, n) g
		WHERE o.tenant = 'default' AND o.key = 'rec-' || g;

	INSERT INTO agentretry.operations
		(tenant, key, op_hash, args, tool, state, attempts, lease_token,
		 lease_owner, first_attempt_at, last_attempt_at, last_failure_class,
		 last_failure_phase, last_delay, reason, result, created_at,
		 updated_at, completed_at, expires_at, state_since, receipt,
		 reconcile_at)
	SELECT 'default', 'rec-' || g, h, a, v.tool, v.state, v.attempts,
		   v.attempts, 'worker', v.first_at, v.last_at, v.failure, v.phase,
		   v.delay, v.reason, v.result, v.first_at, v.since, v.completed_at,
		   v.expires_at, v.since, v.receipt,
		   CASE WHEN due THEN v.reconcile_at END
	FROM generate_series(1, n) g,
	LATERAL (SELECT reconcile_bench_kind(g) AS kind,
					-- a success: when it completed; a verification: since when
					CASE WHEN reconcile_bench_kind(g) <= 7
						 THEN t - interval '10 minutes' * (n - g + 1) / n
						 ELSE t - interval '1 hour' - interval '30 minutes' * (n - g + 1) / n
					END AS at) k,
	LATERAL (SELECT
		CASE WHEN k.kind <= 7 THEN 'bench_sweep' ELSE 'bench_charge' END AS tool,
		CASE WHEN k.kind <= 7 THEN 'succeeded' ELSE 'verify' END::agentretry.operation_state AS state,
		CASE k.kind WHEN 0 THEN 2 WHEN 1 THEN 3 WHEN 7 THEN 2 ELSE 1 END AS attempts,
		k.at - interval '1 second' * CASE k.kind WHEN 0 THEN 3 WHEN 1 THEN 5 WHEN 7 THEN 3 ELSE 1 END AS first_at,
		k.at - interval '1 second' AS last_at,
		CASE WHEN k.kind IN (0, 1, 7) THEN 'transient'
			 WHEN k.kind >= 8 THEN 'ambiguous' END::agentretry.failure_class AS failure,
		CASE WHEN k.kind IN (0, 1, 7) THEN 'pre_execution'
			 WHEN k.kind >= 8 THEN 'mid_execution' END::agentretry.failure_phase AS phase,
		CASE WHEN k.kind IN (0, 1, 7) THEN interval '1 second' END AS delay,
		CASE WHEN k.kind >= 8 THEN 'outcome_unknown' END AS reason,
		CASE WHEN k.kind <= 7 THEN '{"ok": true}'::jsonb END AS result,
		k.at AS since,
		CASE WHEN k.kind <= 7 THEN k.at END AS completed_at,
		CASE WHEN k.kind <= 7 THEN k.at + interval '7 days' END AS expires_at,
		CASE WHEN k.kind IN (1, 2, 3, 4) THEN 'ch_rec-' || g
			 WHEN k.kind = 5 THEN sweep_bench_receipt(1 + (g / 10) * stride)
			 WHEN k.kind = 6 THEN 'ch_pair-' || g
			 WHEN k.kind = 7 THEN 'ch_pair-' || (g - 1)
		END AS receipt,
		CASE WHEN k.kind <= 7 THEN k.at ELSE k.at + interval '15 minutes' END AS reconcile_at
	) v;
END
$$;

-- What reconcile() must record for reconcile_bench_rows(n, true), in the
-- order success_after_retry|duplicate_receipt|stale_verification|any other.
CREATE FUNCTION reconcile_bench_expect(n integer) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT concat_ws('|',
		count(*) FILTER (WHERE reconcile_bench_kind(g) IN (0, 1, 7)),
		count(*) FILTER (WHERE reconcile_bench_kind(g) IN (5, 7)),
		count(*) FILTER (WHERE reconcile_bench_kind(g) >= 8),
		0)
	FROM generate_series(1, n) g
$$;

-- What reconcile() recorded, in the same order.
CREATE FUNCTION reconcile_bench_found() RETURNS text
LANGUAGE sql STABLE
AS $$
	SELECT concat_ws('|',
		count(*) FILTER (WHERE kind = 'success_after_retry'),
		count(*) FILTER (WHERE kind = 'duplicate_receipt'),
		count(*) FILTER (WHERE kind = 'stale_verification'),
		count(*) FILTER (WHERE kind NOT IN ('success_after_retry', 'duplicate_receipt',
											'stale_verification')))
	FROM agentretry.anomalies
$$;
