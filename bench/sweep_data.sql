-- sweep_data.sql
--
-- Operations for the sweep benchmark, written straight into
-- agentretry.operations by a superuser (INSERT ... SELECT generate_series:
-- going through claim() would take hours at 10 M rows).  The rows look
-- like the ones agentretry writes: same columns set, same states, one
-- tenant, one registered idempotent tool.
--
-- A table of total rows holds
--   - total - due - waiting settled operations: succeeded, receipt stored,
--     expires_at spread over the next 7 days (the default TTL), so they sit
--     in operations_expiry but none is due for the purge;
--   - waiting operations in flight that are not due: half retry_wait due in
--     a day, half in_progress with a lease that expires in a day;
--   - due operations, which the sweep must act on, in three parts (the
--     last takes the remainder of due / 3):
--     expired leases (in_progress, lease expired an hour ago), retries
--     waiting past their deadline and its grace (retry_wait due two hours
--     ago, deadline an hour ago), and terminal operations past their TTL
--     (succeeded, expires_at a day ago).
--
-- sweep_bench_load(total, due, waiting) fills the table from empty;
-- sweep_bench_due(due) puts the due operations back before each timed
-- sweep (the sweep decided, dead-lettered or deleted them).

SELECT name AS registered FROM agentretry.register_tool('bench_sweep', 'idempotent', 'write');

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

CREATE FUNCTION sweep_bench_load(total bigint, due integer, waiting integer) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	t timestamptz := now();
	a jsonb := sweep_bench_args();
	h bytea := agentretry.op_hash(sweep_bench_args());
	settled bigint := total - due - waiting;
BEGIN
	IF settled < 0 THEN
		RAISE EXCEPTION 'total % is smaller than due % + waiting %', total, due, waiting;
	END IF;
	TRUNCATE agentretry.operations, agentretry.events, agentretry.token_floors;

	-- Keys in index order and expires_at growing with them, so that the
	-- primary key and operations_expiry are filled at their right edge.
	INSERT INTO agentretry.operations
		(tenant, key, op_hash, args, tool, state, attempts, lease_token,
		 lease_owner, first_attempt_at, last_attempt_at, result, created_at,
		 updated_at, completed_at, expires_at, state_since)
	SELECT 'default', 'op-' || lpad(g::text, 10, '0'), h, a, 'bench_sweep',
		   'succeeded', 1, 1, 'worker', t - interval '1 hour',
		   t - interval '1 hour', '{"ok": true}', t - interval '1 hour',
		   t - interval '1 hour', t - interval '1 hour',
		   t + interval '1 hour' + (interval '7 days' * g / settled),
		   t - interval '1 hour'
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
END
$$;
