--
-- stats(): a workload counted by hand in this session, compared with what
-- stats() reports for it (tenant st)
--
-- Everything below runs in this one session, one statement per
-- transaction: stats() first writes the session's own counts, so it is
-- exact for what committed.  Nothing printed depends on the time.
--
SELECT name FROM agentretry.register_tool('st_read', 'idempotent', 'read',
	max_attempts => 3, base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name FROM agentretry.register_tool('st_pay', 'non_idempotent', 'write',
	max_attempts => 3, base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');
SELECT name FROM agentretry.register_tool('st_budget', 'idempotent', 'write',
	max_attempts => 5, base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name FROM agentretry.register_tool('st_gated', 'idempotent', 'write',
	requires_approval => true);
SELECT name FROM agentretry.register_tool('st_book', 'idempotent', 'write',
	compensate_tool => 'st_unbook');
SELECT name FROM agentretry.register_tool('st_fragile', 'idempotent', 'write',
	compensate_tool => 'st_undo_once');
SELECT name FROM agentretry.register_tool('st_unbook', 'idempotent', 'write',
	max_attempts => 3, base_delay => '1 minute', max_delay => '1 minute', jitter => 'none');
SELECT name FROM agentretry.register_tool('st_undo_once', 'idempotent', 'write',
	max_attempts => 1);
SELECT name FROM agentretry.register_tool('st_tx', 'idempotent', 'read');
-- one retry of st_budget costs the whole bucket, which never refills
SELECT scope, subject, capacity FROM agentretry.set_budget('st', 'tool', 'st_budget',
	capacity => 2, refill_per_sec => 0, cost_transient => 2, cost_ambiguous => 2, stripes => 1);

-- nothing counted yet for the tenant
SELECT count(*) AS rows FROM agentretry.stats(tenant => 'st');

--
-- st_read: two new keys completed, three replays, one failure retried by
-- claim_due and then completed, and evidence of a second receipt
--
SELECT outcome, attempt FROM agentretry.claim('st-r1', '{}', 'st_read', 'st');
SELECT agentretry.complete('st-r1', 1, '{}', 'st', receipt => 'rcpt-r1');
SELECT outcome, attempt FROM agentretry.claim('st-r2', '{}', 'st_read', 'st');
SELECT agentretry.complete('st-r2', 1, '{}', 'st');
SELECT outcome FROM agentretry.claim('st-r1', '{}', 'st_read', 'st');
SELECT outcome FROM agentretry.claim('st-r1', '{}', 'st_read', 'st');
SELECT outcome FROM agentretry.claim('st-r2', '{}', 'st_read', 'st');
SELECT outcome, attempt FROM agentretry.claim('st-r3', '{}', 'st_read', 'st');
SELECT action, reason FROM agentretry.fail('st-r3', 1, 'transient', 'pre_execution', tenant => 'st');
SELECT key, attempt, lease_token FROM agentretry.claim_due('st-worker', tenant => 'st');
SELECT agentretry.complete('st-r3', 2, '{}', 'st');
SELECT agentretry.observe('st-r1', 'rcpt-r1-again', 'st', 'webhook');
-- by hand: first_attempts 3 (r1, r2, r3), executions 4 (r3 twice),
-- replays 3, retries 1, successes 3, successes_after_retry 1 (r3),
-- duplicate_side_effect 1; retry_rate = 1/4, duplicate_side_effect_rate = 1/4

--
-- st_pay: a verification resolved as executed, a dead letter, and a
-- failure reported after evidence (a success)
--
SELECT outcome FROM agentretry.claim('st-p1', '{}', 'st_pay', 'st');
SELECT action FROM agentretry.fail('st-p1', 1, 'transient', 'mid_execution', tenant => 'st');
-- a verification lease is not an execution
SELECT outcome, lease_token FROM agentretry.claim('st-p1', '{}', 'st_pay', 'st');
SELECT agentretry.resolve('st-p1', 2, true, tenant => 'st');
SELECT outcome FROM agentretry.claim('st-p2', '{}', 'st_pay', 'st');
SELECT action, reason FROM agentretry.fail('st-p2', 1, 'permanent', tenant => 'st');
SELECT outcome FROM agentretry.claim('st-p3', '{}', 'st_pay', 'st');
SELECT agentretry.observe('st-p3', 'rcpt-p3', 'st', 'webhook');
SELECT action, reason FROM agentretry.fail('st-p3', 1, 'transient', 'mid_execution', tenant => 'st');
-- by hand: first_attempts 3, executions 3, successes 2 (p1 resolved, p3 by
-- evidence), verifications 1 (p1), dead_letters 1 (p2), outcome_corrected 1

--
-- st_budget: the first retry pays the whole bucket; the second is denied
-- and, as the bucket never refills, dead-lettered
--
SELECT outcome FROM agentretry.claim('st-b1', '{}', 'st_budget', 'st');
SELECT action, reason FROM agentretry.fail('st-b1', 1, 'transient', 'pre_execution', tenant => 'st');
SELECT key, attempt FROM agentretry.claim_due('st-worker', tenant => 'st');
SELECT action, reason FROM agentretry.fail('st-b1', 2, 'transient', 'pre_execution', tenant => 'st');
SELECT reason FROM agentretry.budget_ledger WHERE tenant = 'st' ORDER BY id;
-- by hand: first_attempts 1, executions 2, retries 1, budget_denials 1,
-- dead_letters 1; retry_rate = 1/2

--
-- st_gated: one approved and executed; one awaiting approval that
-- evidence shows done (a success, never an attempt)
--
SELECT outcome, attempt FROM agentretry.claim('st-g1', '{}', 'st_gated', 'st');
SELECT agentretry.approve('st-g1', 'st', 'fine');
SELECT outcome, attempt, lease_token FROM agentretry.claim('st-g1', '{}', 'st_gated', 'st');
SELECT agentretry.complete('st-g1', 2, '{}', 'st');
SELECT outcome, attempt FROM agentretry.claim('st-g2', '{}', 'st_gated', 'st');
SELECT agentretry.observe('st-g2', 'rcpt-g2', 'st', 'webhook');
-- by hand: first_attempts 1, executions 1, approvals 1, successes 2,
-- outcome_corrected 1

--
-- compensations: run st-run1 undoes st-c2 (st_fragile) with st_undo_once,
-- which fails and dies; run st-run2 undoes st-c3 (st_book) with
-- st_unbook, which succeeds
--
SELECT outcome FROM agentretry.claim('st-c1', '{"room": 1}', 'st_book', 'st', run_id => 'st-run1');
SELECT agentretry.complete('st-c1', 1, '{"booking": "b1"}', 'st');
SELECT outcome FROM agentretry.claim('st-c2', '{"n": 2}', 'st_fragile', 'st', run_id => 'st-run1');
SELECT agentretry.complete('st-c2', 1, '{"ok": true}', 'st');
SELECT agentretry.compensate('st-run1', 'st');
SELECT key, tool, attempt, lease_token FROM agentretry.claim_due('st-worker', tenant => 'st') \gset c2_
SELECT :'c2_key' AS key, :'c2_tool' AS tool, :c2_attempt AS attempt;
SELECT action, reason FROM agentretry.fail('st-c2:compensate', :c2_lease_token, 'transient',
	'pre_execution', tenant => 'st');
SELECT outcome FROM agentretry.claim('st-c3', '{"room": 3}', 'st_book', 'st', run_id => 'st-run2');
SELECT agentretry.complete('st-c3', 1, '{"booking": "b3"}', 'st');
SELECT agentretry.compensate('st-run2', 'st');
SELECT key, tool, attempt, lease_token FROM agentretry.claim_due('st-worker', tenant => 'st') \gset c3_
SELECT :'c3_key' AS key, :'c3_tool' AS tool, :c3_attempt AS attempt;
SELECT agentretry.complete('st-c3:compensate', :c3_lease_token, '{}', 'st');
SELECT key, tool, state, attempts, reason FROM agentretry.operations
WHERE tenant = 'st' AND compensation_of IS NOT NULL ORDER BY key;
SELECT run_id, state FROM agentretry.runs WHERE tenant = 'st' ORDER BY run_id;
-- by hand: st_book first_attempts 2, executions 2, successes 2 (c1, c3);
-- st_fragile 1, 1, 1 (c2); st_undo_once first_attempts 1, executions 1,
-- dead_letters 1, compensations_dead 1 (rate 0); st_unbook first_attempts 1,
-- executions 1, successes 1, compensations_succeeded 1 (rate 1); st-c1's
-- compensation waits for the run's review: nothing

--
-- evidence for an unknown key: an anomaly with no tool, a row of its own
--
SELECT agentretry.observe('st-orphan', 'rcpt-orphan', 'st', 'webhook');

--
-- a rolled-back transaction: what agentretry answered in it is counted,
-- as pg_stat_statements counts calls (the caller may have acted on the
-- execute; it was told not to act on the replay)
--
BEGIN;
SELECT outcome FROM agentretry.claim('st-rb1', '{}', 'st_read', 'st', in_transaction => true);
SELECT agentretry.complete('st-rb1', 1, '{}', 'st');
SELECT outcome FROM agentretry.claim('st-r2', '{}', 'st_read', 'st', in_transaction => true);
ROLLBACK;
-- by hand: st_read first attempts 3 + 1 = 4, executions 4 + 1 = 5,
-- successes 3 + 1 = 4, replays 3 + 1 = 4

--
-- within a transaction, stats() sees the counts of the transaction's own
-- calls: they are written in it (and would go with it if it rolled back,
-- to be written again)
--
BEGIN;
SELECT outcome FROM agentretry.claim('st-tx1', '{}', 'st_tx', 'st', in_transaction => true);
SELECT agentretry.complete('st-tx1', 1, '{}', 'st');
SELECT count(*) AS rows FROM agentretry.stats(tenant => 'st') WHERE tool = 'st_tx';
COMMIT;
-- by hand: st_tx first_attempts 1, executions 1, successes 1

--
-- agentretry.track_stats = off counts nothing
--
SHOW agentretry.track_stats;
SET agentretry.track_stats = off;
SELECT outcome FROM agentretry.claim('st-off1', '{}', 'st_read', 'st');
SELECT agentretry.complete('st-off1', 1, '{}', 'st');
SELECT outcome FROM agentretry.claim('st-r1', '{}', 'st_read', 'st');
SELECT outcome FROM agentretry.claim('st-off2', '{}', 'st_pay', 'st');
SELECT action FROM agentretry.fail('st-off2', 1, 'permanent', tenant => 'st');
SELECT outcome FROM agentretry.claim('st-off3', '{}', 'st_gated', 'st');
SELECT agentretry.approve('st-off3', 'st');
RESET agentretry.track_stats;
SHOW agentretry.track_stats;

--
-- what stats() reports, per tool, against the counts by hand above
--
SELECT tool, first_attempts, executions, replays, retries, successes, successes_after_retry,
	verifications, dead_letters, budget_denials, approvals,
	compensations_succeeded AS comp_ok, compensations_dead AS comp_dead
FROM agentretry.stats(since => '1 hour', tenant => 'st');
SELECT tool, anomalies, duplicate_side_effects, retry_rate, duplicate_side_effect_rate,
	compensation_success_rate
FROM agentretry.stats(since => '1 hour', tenant => 'st');
-- the same, compared with the hand count in one go: no row differs
SELECT s.tool, 'differs' AS compared
FROM agentretry.stats(since => '1 hour', tenant => 'st') s
FULL JOIN (VALUES
	-- tool, first, executions, replays, retries, successes, after_retry, verifications,
	-- dead, denials, approvals, comp_ok, comp_dead, anomalies, dups, retry_rate,
	-- dup_rate, comp_rate
	('st_book', 2, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, '{}'::jsonb, 0, 0.0, 0.0, NULL::float8),
	('st_budget', 1, 2, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, '{}', 0, 0.5, 0.0, NULL),
	('st_fragile', 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, '{}', 0, 0.0, 0.0, NULL),
	('st_gated', 1, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, '{"outcome_corrected": 1}', 0, 0.0, 0.0, NULL),
	('st_pay', 3, 3, 0, 0, 2, 0, 1, 1, 0, 0, 0, 0, '{"outcome_corrected": 1}', 0, 0.0, 0.0, NULL),
	('st_read', 4, 5, 4, 1, 4, 1, 0, 0, 0, 0, 0, 0, '{"duplicate_side_effect": 1}', 1, 0.2, 0.2, NULL),
	('st_tx', 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, '{}', 0, 0.0, 0.0, NULL),
	('st_undo_once', 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, '{}', 0, 0.0, 0.0, 0.0),
	('st_unbook', 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, '{}', 0, 0.0, 0.0, 1.0),
	(NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '{"orphan_side_effect": 1}', 0, NULL, NULL, NULL))
	AS h(tool, first, execs, replays, retries, successes, after_retry, verifications, dead,
		 denials, approvals, comp_ok, comp_dead, anomalies, dups, retry_rate, dup_rate, comp_rate)
	ON coalesce(s.tool, '(none)') = coalesce(h.tool, '(none)')
WHERE (s.first_attempts, s.executions, s.replays, s.retries, s.successes,
	   s.successes_after_retry, s.verifications, s.dead_letters, s.budget_denials,
	   s.approvals, s.compensations_succeeded, s.compensations_dead, s.anomalies,
	   s.duplicate_side_effects)
	IS DISTINCT FROM (h.first::bigint, h.execs::bigint, h.replays::bigint, h.retries::bigint,
	   h.successes::bigint, h.after_retry::bigint, h.verifications::bigint, h.dead::bigint,
	   h.denials::bigint, h.approvals::bigint, h.comp_ok::bigint, h.comp_dead::bigint,
	   h.anomalies, h.dups::bigint)
   OR s.retry_rate IS DISTINCT FROM h.retry_rate::float8
   OR s.duplicate_side_effect_rate IS DISTINCT FROM h.dup_rate::float8
   OR s.compensation_success_rate IS DISTINCT FROM h.comp_rate
ORDER BY 1;

-- the hand count agrees with the operations: every attempt counted is one
-- of theirs (those made with track_stats off aside), and the rolled-back
-- one: 16 + 1 in all, 14 + 1 of them first attempts
SELECT sum(attempts) AS attempts FROM agentretry.operations
WHERE tenant = 'st' AND key NOT LIKE 'st-off%';
SELECT sum(executions) AS executions, sum(first_attempts) AS first_attempts
FROM agentretry.stats(tenant => 'st');

-- time to stable completion: known for every tool with a success that had
-- an attempt, within bounds (a test run takes seconds)
SELECT tool, completion_p50 IS NOT NULL AS p50, completion_p95 IS NOT NULL AS p95,
	completion_p50 > interval '0' AND completion_p50 <= completion_p95
	AND completion_p95 < interval '10 seconds' AS plausible
FROM agentretry.stats(tenant => 'st');

-- the counts behind it: this session's rows only, filed under this
-- minute or the ones just before
SELECT count(*) > 0 AS some_rows, bool_and(backend = pg_backend_pid()) AS own_backend,
	bool_and(bucket <= clock_timestamp() AND bucket > clock_timestamp() - interval '10 minutes')
	AS recent,
	bool_and(bucket = date_bin('1 minute', bucket, timestamptz '2000-01-01 00:00+00')) AS whole_minutes,
	bool_and(cardinality(completion_hist) = cardinality(agentretry.stats_buckets())) AS hist_size
FROM agentretry.stats_counts WHERE tenant = 'st';
-- and their sum is what stats() reports
SELECT (SELECT sum(executions) FROM agentretry.stats_counts WHERE tenant = 'st')
	= (SELECT sum(executions) FROM agentretry.stats(tenant => 'st')) AS executions,
	(SELECT sum(replays) FROM agentretry.stats_counts WHERE tenant = 'st')
	= (SELECT sum(replays) FROM agentretry.stats(tenant => 'st')) AS replays;
-- nothing left to write: stats() wrote this session's counts
SELECT agentretry.flush_stats();

-- every tenant at once includes the same rows for st
SELECT count(*) AS differing FROM (
	(SELECT * FROM agentretry.stats() WHERE tenant = 'st'
	 EXCEPT SELECT * FROM agentretry.stats(tenant => 'st'))
	UNION ALL
	(SELECT * FROM agentretry.stats(tenant => 'st')
	 EXCEPT SELECT * FROM agentretry.stats() WHERE tenant = 'st')) d;
SELECT count(*) AS rows FROM agentretry.stats(tenant => 'st-nobody');

-- bad input
SELECT try_stmt($$SELECT count(*) FROM agentretry.stats(since => NULL)$$);
SELECT try_stmt($$SELECT count(*) FROM agentretry.stats(since => '-1 minute')$$);
SELECT try_stmt($$SELECT count(*) FROM agentretry.stats(NULL, 'st')$$);

-- leave nothing behind for the files that follow
SELECT agentretry.drop_budget('st', 'tool', 'st_budget');
DELETE FROM agentretry.anomalies WHERE tenant LIKE 'st%';
DELETE FROM agentretry.events WHERE tenant LIKE 'st%';
DELETE FROM agentretry.budget_ledger WHERE tenant LIKE 'st%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'st%';
DELETE FROM agentretry.run_context WHERE tenant LIKE 'st%';
DELETE FROM agentretry.runs WHERE tenant LIKE 'st%';
DELETE FROM agentretry.token_floors WHERE tenant LIKE 'st%';
DELETE FROM agentretry.stats_counts WHERE tenant LIKE 'st%';
DELETE FROM agentretry.tools WHERE name LIKE 'st\_%';
