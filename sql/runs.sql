--
-- runs: start_run(), finish_run(), the implicit start by a claim, the
-- per-run retry limit, run_status, versioned context (checkpoint(),
-- context()) and the sweep of idle runs
--
SELECT name FROM agentretry.register_tool('rn_idem', 'idempotent', 'read',
	max_attempts => 10, base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');
SELECT name FROM agentretry.register_tool('rn_fast', 'idempotent', 'read',
	max_attempts => 10, base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name FROM agentretry.register_tool('rn_nonidem', 'non_idempotent', 'write');
SELECT name FROM agentretry.register_tool('rn_destr', 'idempotent', 'destructive');

-- a run's row, without its times
CREATE VIEW rn_runs AS
SELECT run_id, state, workflow_version, correlation_id, max_retry_events, retry_events,
	context_version, compensate_reason, finished_at IS NOT NULL AS finished
FROM agentretry.runs WHERE tenant = 'rn';

--
-- start_run
--
SELECT agentretry.start_run('rn-1', 'rn', 'wf-1', 3, 'corr-1');
SELECT * FROM rn_runs WHERE run_id = 'rn-1';
SELECT started_at = updated_at AS same_times, started_at <= clock_timestamp() AS started_past,
	finished_at
FROM agentretry.runs WHERE tenant = 'rn' AND run_id = 'rn-1';
CREATE TABLE rn_before AS SELECT * FROM agentretry.runs WHERE tenant = 'rn';
-- again, with the same arguments, with none, and with other values of the
-- fields already set: the state, and nothing changes
SELECT agentretry.start_run('rn-1', 'rn', 'wf-1', 3, 'corr-1');
SELECT agentretry.start_run('rn-1', 'rn');
SELECT agentretry.start_run('rn-1', 'rn', 'wf-1', 9, 'corr-9');
SELECT r = b AS unchanged FROM agentretry.runs r JOIN rn_before b USING (tenant, run_id)
WHERE r.tenant = 'rn' AND r.run_id = 'rn-1';
-- another workflow version: AR001, nothing changes
SELECT try_stmt($$SELECT agentretry.start_run('rn-1', 'rn', 'wf-2')$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-1', 'rn', 'wf-2', 3, 'corr-1')$$);
SELECT r = b AS unchanged FROM agentretry.runs r JOIN rn_before b USING (tenant, run_id)
WHERE r.tenant = 'rn' AND r.run_id = 'rn-1';

-- a repeated call fills in what the first left NULL, and never overwrites
SELECT agentretry.start_run('rn-2', 'rn');
SELECT * FROM rn_runs WHERE run_id = 'rn-2';
SELECT agentretry.start_run('rn-2', 'rn', correlation_id => 'corr-2');
SELECT * FROM rn_runs WHERE run_id = 'rn-2';
SELECT agentretry.start_run('rn-2', 'rn', 'wf-2', 4, 'corr-other');
SELECT * FROM rn_runs WHERE run_id = 'rn-2';
SELECT agentretry.start_run('rn-2', 'rn', 'wf-2', 0, 'corr-x');
SELECT * FROM rn_runs WHERE run_id = 'rn-2';
SELECT try_stmt($$SELECT agentretry.start_run('rn-2', 'rn', 'wf-1')$$);
-- the same run id in another tenant is another run
SELECT agentretry.start_run('rn-2', 'rn-other', 'wf-other');
SELECT tenant, run_id, workflow_version FROM agentretry.runs
WHERE run_id = 'rn-2' ORDER BY tenant;

--
-- the implicit start: a claim of a new key naming an unknown run starts it
--
SELECT outcome, attempt, lease_token
FROM agentretry.claim('rn-imp-a', '{}', 'rn_idem', 'rn', run_id => 'rn-imp', step => 'a');
SELECT * FROM rn_runs WHERE run_id = 'rn-imp';
-- its first retry event carries no workflow version: the run has none yet
SELECT action, reason FROM agentretry.fail('rn-imp-a', 1, 'transient', 'pre_execution', tenant => 'rn');
-- start_run then names it (and the rest), for the events from now on
SELECT agentretry.start_run('rn-imp', 'rn', 'wf-imp', 5, 'corr-imp');
SELECT * FROM rn_runs WHERE run_id = 'rn-imp';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'rn' AND key = 'rn-imp-a';
SELECT outcome, attempt FROM agentretry.claim('rn-imp-a', '{}', 'rn_idem', 'rn');
SELECT action, reason FROM agentretry.fail('rn-imp-a', 2, 'transient', 'pre_execution', tenant => 'rn');
-- a claim naming the run again joins it: no second row, no change
SELECT outcome FROM agentretry.claim('rn-imp-b', '{}', 'rn_idem', 'rn', run_id => 'rn-imp', step => 'b');
SELECT count(*) AS rows FROM agentretry.runs WHERE tenant = 'rn' AND run_id = 'rn-imp';
SELECT * FROM rn_runs WHERE run_id = 'rn-imp';
-- events of a run's operations carry the run's workflow version and
-- correlation id as they were when the event was recorded; events of an
-- operation outside any run carry none
SELECT outcome FROM agentretry.claim('rn-norun', '{}', 'rn_idem', 'rn');
SELECT action FROM agentretry.fail('rn-norun', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT key, kind, attempt, run_id, step, workflow_version, correlation_id
FROM agentretry.events WHERE tenant = 'rn' AND key IN ('rn-imp-a', 'rn-norun') ORDER BY id;

--
-- finish_run
--
SELECT agentretry.start_run('rn-ok', 'rn', 'wf-1', correlation_id => 'corr-ok');
SELECT outcome FROM agentretry.claim('rn-ok-a', '{}', 'rn_idem', 'rn', run_id => 'rn-ok', step => 'a');
SELECT agentretry.complete('rn-ok-a', 1, '{"done": 1}', 'rn');
SELECT agentretry.finish_run('rn-ok', 'rn');
SELECT * FROM rn_runs WHERE run_id = 'rn-ok';
SELECT finished_at = updated_at AS finished_now FROM agentretry.runs
WHERE tenant = 'rn' AND run_id = 'rn-ok';
DELETE FROM rn_before;
INSERT INTO rn_before SELECT * FROM agentretry.runs WHERE tenant = 'rn';
-- again: the same state, nothing changes
SELECT agentretry.finish_run('rn-ok', 'rn', true);
SELECT r = b AS unchanged FROM agentretry.runs r JOIN rn_before b USING (tenant, run_id)
WHERE r.tenant = 'rn' AND r.run_id = 'rn-ok';
-- the other outcome: AR004
SELECT try_stmt($$SELECT agentretry.finish_run('rn-ok', 'rn', false)$$);
-- a finished run is still started: start_run returns its state
SELECT agentretry.start_run('rn-ok', 'rn', 'wf-1');

SELECT agentretry.start_run('rn-bad', 'rn');
SELECT agentretry.finish_run('rn-bad', 'rn', false);
SELECT * FROM rn_runs WHERE run_id = 'rn-bad';
SELECT agentretry.finish_run('rn-bad', 'rn', false);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-bad', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-bad', 'rn', true)$$);

-- finishing with a step still open is allowed; the step stays as it is
SELECT outcome FROM agentretry.claim('rn-open-a', '{}', 'rn_idem', 'rn', run_id => 'rn-open', step => 'a');
SELECT agentretry.finish_run('rn-open', 'rn');
SELECT state, attempts FROM agentretry.lookup('rn-open-a', 'rn');
-- and that step may still complete
SELECT agentretry.complete('rn-open-a', 1, '{}', 'rn');
SELECT state FROM agentretry.lookup('rn-open-a', 'rn');

-- the trace: one event per finish
SELECT run_id, kind, key, reason, workflow_version, correlation_id
FROM agentretry.events WHERE tenant = 'rn' AND kind = 'finish_run' ORDER BY id;

--
-- a run that is not running accepts no new step: AR004, nothing inserted;
-- claims of its existing keys are answered as before
--
-- succeeded
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('rn-ok-b', '{}', 'rn_idem', 'rn', run_id => 'rn-ok', step => 'b')$$);
SELECT count(*) AS inserted FROM agentretry.operations WHERE tenant = 'rn' AND key = 'rn-ok-b';
SELECT outcome, result FROM agentretry.claim('rn-ok-a', '{}', 'rn_idem', 'rn', run_id => 'rn-ok', step => 'a');
-- failed, with a step waiting for its retry: the claim of that step
-- is answered wait, then executes once due
SELECT agentretry.start_run('rn-f', 'rn');
SELECT outcome FROM agentretry.claim('rn-f-a', '{}', 'rn_idem', 'rn', run_id => 'rn-f', step => 'a');
SELECT action FROM agentretry.fail('rn-f-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT agentretry.finish_run('rn-f', 'rn', false);
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('rn-f-b', '{}', 'rn_idem', 'rn', run_id => 'rn-f')$$);
SELECT count(*) AS inserted FROM agentretry.operations WHERE tenant = 'rn' AND key = 'rn-f-b';
SELECT outcome, attempt, retry_at > clock_timestamp() AS later
FROM agentretry.claim('rn-f-a', '{}', 'rn_idem', 'rn', run_id => 'rn-f', step => 'a');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'rn' AND key = 'rn-f-a';
SELECT outcome, attempt FROM agentretry.claim('rn-f-a', '{}', 'rn_idem', 'rn', run_id => 'rn-f', step => 'a');
-- compensating (a step in flight keeps it there)
SELECT outcome FROM agentretry.claim('rn-c-a', '{}', 'rn_idem', 'rn', run_id => 'rn-c', step => 'a');
SELECT agentretry.compensate('rn-c', 'rn', 'user gave up');
SELECT * FROM rn_runs WHERE run_id = 'rn-c';
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('rn-c-b', '{}', 'rn_idem', 'rn', run_id => 'rn-c', step => 'b')$$);
SELECT count(*) AS inserted FROM agentretry.operations WHERE tenant = 'rn' AND key = 'rn-c-b';
SELECT outcome, attempt FROM agentretry.claim('rn-c-a', '{}', 'rn_idem', 'rn', run_id => 'rn-c', step => 'a');
-- finish_run of a compensating run: AR004 either way
SELECT try_stmt($$SELECT agentretry.finish_run('rn-c', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-c', 'rn', false)$$);
-- start_run returns its state
SELECT agentretry.start_run('rn-c', 'rn');
-- the step completes (nothing to undo): the run is compensated, and that
-- state too accepts no new step and cannot be finished
SELECT agentretry.complete('rn-c-a', 1, '{}', 'rn');
SELECT * FROM rn_runs WHERE run_id = 'rn-c';
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('rn-c-b', '{}', 'rn_idem', 'rn', run_id => 'rn-c', step => 'b')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-c', 'rn')$$);
-- a claim without run_id of a new key is not affected by any run
SELECT outcome FROM agentretry.claim('rn-c-b', '{}', 'rn_idem', 'rn');
SELECT run_id FROM agentretry.lookup('rn-c-b', 'rn');
-- unknown run, other tenant's run
SELECT try_stmt($$SELECT agentretry.finish_run('rn-nope', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-1', 'rn-elsewhere')$$);
SELECT count(*) AS started FROM agentretry.runs WHERE run_id = 'rn-nope' OR tenant = 'rn-elsewhere';

--
-- the per-run retry limit: max_retry_events of start_run, else the GUC
-- agentretry.run_max_retries (default 5)
--
SELECT agentretry.start_run('rn-lim', 'rn', max_retry_events => 2);
SELECT outcome, attempt FROM agentretry.claim('rn-lim-a', '{}', 'rn_fast', 'rn', run_id => 'rn-lim');
SELECT action, attempt, reason FROM agentretry.fail('rn-lim-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome, attempt FROM agentretry.claim('rn-lim-a', '{}', 'rn_fast', 'rn');
SELECT action, attempt, reason FROM agentretry.fail('rn-lim-a', 2, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome, attempt FROM agentretry.claim('rn-lim-a', '{}', 'rn_fast', 'rn');
SELECT action, attempt, reason, retry_at FROM agentretry.fail('rn-lim-a', 3, 'transient', 'pre_execution', tenant => 'rn');
SELECT state, attempts, reason FROM agentretry.lookup('rn-lim-a', 'rn');
-- a later step of the run finds the limit used up too
SELECT outcome FROM agentretry.claim('rn-lim-b', '{}', 'rn_fast', 'rn', run_id => 'rn-lim');
SELECT action, reason FROM agentretry.fail('rn-lim-b', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT scope, subject, key, amount, reason, failure_class, retry_at
FROM agentretry.budget_ledger WHERE tenant = 'rn' AND subject = 'rn-lim' ORDER BY id;
SELECT key, kind, attempt, reason FROM agentretry.events
WHERE tenant = 'rn' AND run_id = 'rn-lim' ORDER BY id;
SELECT * FROM rn_runs WHERE run_id = 'rn-lim';
-- 0 allows none
SELECT agentretry.start_run('rn-lim0', 'rn', max_retry_events => 0);
SELECT outcome FROM agentretry.claim('rn-lim0-a', '{}', 'rn_fast', 'rn', run_id => 'rn-lim0');
SELECT action, reason FROM agentretry.fail('rn-lim0-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT reason FROM agentretry.budget_ledger WHERE tenant = 'rn' AND subject = 'rn-lim0' ORDER BY id;
-- the GUC, for runs without a limit of their own (implicitly started here)
SET agentretry.run_max_retries = 1;
SELECT outcome FROM agentretry.claim('rn-guc-a', '{}', 'rn_fast', 'rn', run_id => 'rn-guc');
SELECT action, reason FROM agentretry.fail('rn-guc-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome, attempt FROM agentretry.claim('rn-guc-a', '{}', 'rn_fast', 'rn');
SELECT action, reason FROM agentretry.fail('rn-guc-a', 2, 'transient', 'pre_execution', tenant => 'rn');
SELECT run_id, retry_events_used, retry_events_allowed FROM agentretry.run_status
WHERE tenant = 'rn' AND run_id IN ('rn-lim', 'rn-lim0', 'rn-guc') ORDER BY run_id;
RESET agentretry.run_max_retries;
SELECT run_id, retry_events_used, retry_events_allowed FROM agentretry.run_status
WHERE tenant = 'rn' AND run_id IN ('rn-lim', 'rn-lim0', 'rn-guc') ORDER BY run_id;
-- a run's own limit applies whatever the GUC says, even 0
SET agentretry.run_max_retries = 0;
SELECT agentretry.start_run('rn-own', 'rn', max_retry_events => 1);
SELECT outcome FROM agentretry.claim('rn-own-a', '{}', 'rn_fast', 'rn', run_id => 'rn-own');
SELECT action, reason FROM agentretry.fail('rn-own-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome FROM agentretry.claim('rn-own-b', '{}', 'rn_fast', 'rn', run_id => 'rn-guc0');
SELECT action, reason FROM agentretry.fail('rn-own-b', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT run_id, retry_events_used, retry_events_allowed FROM agentretry.run_status
WHERE tenant = 'rn' AND run_id IN ('rn-own', 'rn-guc0') ORDER BY run_id;
RESET agentretry.run_max_retries;
SELECT reason FROM agentretry.budget_ledger WHERE tenant = 'rn' AND subject IN ('rn-own', 'rn-guc0')
ORDER BY id;
-- a limit filled in by start_run after the implicit start applies
SELECT outcome FROM agentretry.claim('rn-late-a', '{}', 'rn_fast', 'rn', run_id => 'rn-late');
SELECT agentretry.start_run('rn-late', 'rn', max_retry_events => 1);
SELECT action, reason FROM agentretry.fail('rn-late-a', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome, attempt FROM agentretry.claim('rn-late-a', '{}', 'rn_fast', 'rn');
SELECT action, reason FROM agentretry.fail('rn-late-a', 2, 'transient', 'pre_execution', tenant => 'rn');
SELECT * FROM rn_runs WHERE run_id = 'rn-late';

--
-- run_status: steps by state, against a count by hand
--
SELECT agentretry.start_run('rn-st', 'rn', 'wf-st', 4, 'corr-st');
SELECT outcome FROM agentretry.claim('rn-st-inprogress', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT outcome FROM agentretry.claim('rn-st-wait', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT action FROM agentretry.fail('rn-st-wait', 1, 'transient', 'pre_execution', tenant => 'rn');
SELECT outcome FROM agentretry.claim('rn-st-verify', '{}', 'rn_nonidem', 'rn', run_id => 'rn-st');
SELECT action FROM agentretry.fail('rn-st-verify', 1, 'ambiguous', 'post_execution', tenant => 'rn');
SELECT outcome FROM agentretry.claim('rn-st-approval', '{}', 'rn_destr', 'rn', run_id => 'rn-st');
SELECT outcome FROM agentretry.claim('rn-st-ok1', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT agentretry.complete('rn-st-ok1', 1, '{}', 'rn');
SELECT outcome FROM agentretry.claim('rn-st-ok2', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT agentretry.complete('rn-st-ok2', 1, '{}', 'rn');
SELECT outcome FROM agentretry.claim('rn-st-dead', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT action FROM agentretry.fail('rn-st-dead', 1, 'permanent', tenant => 'rn');
SELECT outcome FROM agentretry.claim('rn-st-cancel', '{}', 'rn_idem', 'rn', run_id => 'rn-st');
SELECT agentretry.cancel('rn-st-cancel', 'rn', 'not needed');
SELECT agentretry.checkpoint('rn-st', 'ok1', '{"n": 1}', 'rn');
SELECT run_id, state, workflow_version, correlation_id, steps, in_progress, retry_wait, verify,
	awaiting_approval, succeeded, dead, cancelled, retry_events_used, retry_events_allowed,
	compensations_pending, compensations_done, compensations_dead, context_version,
	compensate_reason, finished_at
FROM agentretry.run_status WHERE tenant = 'rn' AND run_id = 'rn-st';
-- the view's counts equal a count by hand, for every run of the tenant
SELECT v.run_id,
	(v.steps, v.in_progress, v.retry_wait, v.verify, v.awaiting_approval, v.succeeded,
	 v.dead, v.cancelled, v.retry_events_used)
	= (SELECT count(*), count(*) FILTER (WHERE o.state = 'in_progress'),
			   count(*) FILTER (WHERE o.state = 'retry_wait'),
			   count(*) FILTER (WHERE o.state = 'verify'),
			   count(*) FILTER (WHERE o.state = 'awaiting_approval'),
			   count(*) FILTER (WHERE o.state = 'succeeded'),
			   count(*) FILTER (WHERE o.state = 'dead'),
			   count(*) FILTER (WHERE o.state = 'cancelled'),
			   (SELECT count(*)::integer FROM agentretry.events e
				WHERE e.tenant = 'rn' AND e.run_id = v.run_id AND e.kind = 'retry')
	   FROM agentretry.operations o WHERE o.tenant = 'rn' AND o.run_id = v.run_id)
	AS matches_hand_count,
	v.started_at = r.started_at AND v.updated_at = r.updated_at
	AND v.finished_at IS NOT DISTINCT FROM r.finished_at AS times
FROM agentretry.run_status v JOIN agentretry.runs r USING (tenant, run_id)
WHERE v.tenant = 'rn' ORDER BY v.run_id;

-- the view needs nothing loaded in the session: a new session that has
-- called no agentretry function sees the same limits
CREATE TABLE rn_status AS SELECT run_id, retry_events_used, retry_events_allowed
FROM agentretry.run_status WHERE tenant = 'rn';
\c
SELECT v.run_id, v.retry_events_allowed, s.retry_events_allowed AS before
FROM agentretry.run_status v JOIN rn_status s USING (run_id)
WHERE v.tenant = 'rn' AND v.retry_events_allowed IS DISTINCT FROM s.retry_events_allowed
ORDER BY v.run_id;
SELECT count(*) AS unknown_limits FROM agentretry.run_status
WHERE tenant = 'rn' AND retry_events_allowed IS NULL;
DROP TABLE rn_status;

--
-- versioned context
--
SELECT agentretry.start_run('rn-ctx', 'rn', 'wf-1');
-- none yet
SELECT agentretry.context('rn-ctx', 'rn') IS NULL AS none;
SELECT agentretry.context('rn-ctx', 'rn', 1) IS NULL AS none;
-- expected_version 0: none written yet
SELECT agentretry.checkpoint('rn-ctx', 'plan', '{"plan": ["a", "b"]}', 'rn', expected_version => 0);
SELECT agentretry.checkpoint('rn-ctx', 'a', '{"plan": ["a", "b"], "a": "done"}', 'rn');
SELECT agentretry.checkpoint('rn-ctx', 'b', '{"plan": ["a", "b"], "a": "done", "b": "done"}', 'rn',
	expected_version => 2);
SELECT agentretry.context('rn-ctx', 'rn');
SELECT v, agentretry.context('rn-ctx', 'rn', v) FROM generate_series(1, 4) v;
SELECT version, step, context, created_at <= clock_timestamp() AS created_past
FROM agentretry.run_context WHERE tenant = 'rn' AND run_id = 'rn-ctx' ORDER BY version;
SELECT context_version FROM agentretry.run_status WHERE tenant = 'rn' AND run_id = 'rn-ctx';
-- a stale expected_version: AR005, nothing stored, no version used up
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ctx', 'c', '{"stale": true}', 'rn', expected_version => 2)$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ctx', 'c', '{"stale": true}', 'rn', expected_version => 0)$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ctx', 'c', '{"stale": true}', 'rn', expected_version => 4)$$);
SELECT count(*) AS versions, max(version) AS newest FROM agentretry.run_context
WHERE tenant = 'rn' AND run_id = 'rn-ctx';
SELECT agentretry.checkpoint('rn-ctx', 'c', '{"c": 4}', 'rn', expected_version => 3);
-- on a fresh run only 0 (or none) is current
SELECT agentretry.start_run('rn-ctx2', 'rn');
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ctx2', 'x', '{}', 'rn', expected_version => 1)$$);
SELECT agentretry.checkpoint('rn-ctx2', 'x', '{"x": 1}', 'rn', expected_version => 0);

-- a checkpoint that rolls back is never seen, and its number is used again
BEGIN;
SELECT agentretry.checkpoint('rn-ctx', 'd', '{"d": "rolled back"}', 'rn');
-- the transaction sees its own checkpoint
SELECT agentretry.context('rn-ctx', 'rn');
ROLLBACK;
SELECT agentretry.context('rn-ctx', 'rn');
SELECT agentretry.context('rn-ctx', 'rn', 5) IS NULL AS none;
SELECT context_version FROM agentretry.runs WHERE tenant = 'rn' AND run_id = 'rn-ctx';
SELECT agentretry.checkpoint('rn-ctx', 'd', '{"d": 5}', 'rn', expected_version => 4);
-- the same with a savepoint
BEGIN;
SAVEPOINT before_e;
SELECT agentretry.checkpoint('rn-ctx', 'e', '{"e": "rolled back"}', 'rn', expected_version => 5);
ROLLBACK TO SAVEPOINT before_e;
SELECT agentretry.context('rn-ctx', 'rn');
SELECT agentretry.checkpoint('rn-ctx', 'e', '{"e": 6}', 'rn', expected_version => 5);
COMMIT;
SELECT version, step, context FROM agentretry.run_context
WHERE tenant = 'rn' AND run_id = 'rn-ctx' ORDER BY version;

-- while the run is being compensated context is still written; once it
-- is finished it is not (AR004), but it is still read
SELECT outcome FROM agentretry.claim('rn-cc-a', '{}', 'rn_idem', 'rn', run_id => 'rn-cc');
SELECT agentretry.compensate('rn-cc', 'rn');
SELECT agentretry.checkpoint('rn-cc', 'undo', '{"undoing": true}', 'rn');
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ok', 'late', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-bad', 'late', '{}', 'rn', expected_version => 0)$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-c', 'late', '{}', 'rn')$$);
SELECT agentretry.finish_run('rn-ctx2', 'rn');
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-ctx2', 'late', '{}', 'rn')$$);
SELECT agentretry.context('rn-ctx2', 'rn');
-- unknown runs: AR003 (a checkpoint does not start a run)
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-nope', 'a', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-nope', 'a', '{}', 'rn', expected_version => 0)$$);
SELECT try_stmt($$SELECT agentretry.context('rn-nope', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.context('rn-nope', 'rn', 1)$$);
SELECT try_stmt($$SELECT agentretry.context('rn-ctx', 'rn-elsewhere')$$);
SELECT count(*) AS started FROM agentretry.runs WHERE run_id = 'rn-nope';

--
-- bad input: every error changes nothing
--
-- start_run
SELECT try_stmt($$SELECT agentretry.start_run(NULL, 'rn')$$);
SELECT try_stmt($$SELECT agentretry.start_run('', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.start_run(repeat('r', 513), 'rn')$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-bi', 'rn', repeat('v', 129))$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-bi', 'rn', '')$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-bi', 'rn', max_retry_events => -1)$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-bi', 'rn', correlation_id => repeat('c', 513))$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-bi', '')$$);
-- on an existing run, too
SELECT try_stmt($$SELECT agentretry.start_run('rn-2', 'rn', repeat('v', 129))$$);
SELECT try_stmt($$SELECT agentretry.start_run('rn-2', 'rn', max_retry_events => -1)$$);
SELECT count(*) AS started FROM agentretry.runs
WHERE tenant = 'rn' AND (run_id = 'rn-bi' OR run_id LIKE 'rrr%');
-- the limits themselves are accepted
SELECT agentretry.start_run(repeat('r', 512), 'rn', repeat('v', 128), 0, repeat('c', 512));
SELECT octet_length(run_id) AS run_id_bytes, octet_length(workflow_version) AS version_bytes,
	octet_length(correlation_id) AS correlation_bytes, max_retry_events
FROM agentretry.runs WHERE tenant = 'rn' AND run_id LIKE 'rrr%';
-- finish_run
SELECT try_stmt($$SELECT agentretry.finish_run(NULL, 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run(repeat('r', 513), 'rn')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('rn-2', 'rn', NULL)$$);
SELECT state FROM agentretry.runs WHERE tenant = 'rn' AND run_id = 'rn-2';
-- checkpoint
SELECT try_stmt($$SELECT agentretry.checkpoint(NULL, 'a', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', NULL, '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', 'a', NULL, 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('', 'a', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint(repeat('r', 513), 'a', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', '', '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', repeat('s', 513), '{}', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', 'a', '{}', 'rn', expected_version => -1)$$);
SET agentretry.max_payload = 1024;
SELECT try_stmt($$SELECT agentretry.checkpoint('rn-2', 'a', jsonb_build_object('big', repeat('x', 2000)), 'rn')$$);
SELECT agentretry.checkpoint('rn-2', 'a', jsonb_build_object('small', repeat('x', 900)), 'rn');
RESET agentretry.max_payload;
SELECT agentretry.checkpoint('rn-2', repeat('s', 512), '{}', 'rn', expected_version => 1);
SELECT version, octet_length(step) AS step_bytes, octet_length(context::text) > 900 AS big
FROM agentretry.run_context WHERE tenant = 'rn' AND run_id = 'rn-2' ORDER BY version;
-- context
SELECT try_stmt($$SELECT agentretry.context(NULL, 'rn')$$);
SELECT try_stmt($$SELECT agentretry.context('', 'rn')$$);
SELECT try_stmt($$SELECT agentretry.context(repeat('r', 513), 'rn')$$);
SELECT try_stmt($$SELECT agentretry.context('rn-ctx', 'rn', 0)$$);
SELECT try_stmt($$SELECT agentretry.context('rn-ctx', 'rn', -1)$$);
-- compensate
SELECT try_stmt($$SELECT agentretry.compensate(NULL, 'rn')$$);
SELECT try_stmt($$SELECT agentretry.compensate('rn-nope', 'rn')$$);

--
-- the sweep purges runs idle longer than agentretry.default_ttl once none
-- of their operations is left, with their context
--
SET agentretry.default_ttl = '1h';
-- first, whatever earlier files left idle
SELECT FROM agentretry.sweep();
-- idle, no operations: purged with its context
SELECT agentretry.start_run('rn-sw-idle', 'rn');
SELECT agentretry.checkpoint('rn-sw-idle', 'a', '{"a": 1}', 'rn');
SELECT agentretry.checkpoint('rn-sw-idle', 'b', '{"b": 2}', 'rn');
-- idle, its only operation past its TTL: the operation goes, then the run
SELECT outcome FROM agentretry.claim('rn-sw-done-a', '{}', 'rn_idem', 'rn', run_id => 'rn-sw-done');
SELECT agentretry.complete('rn-sw-done-a', 1, '{}', 'rn');
SELECT agentretry.checkpoint('rn-sw-done', 'a', '{"a": 1}', 'rn');
SELECT agentretry.finish_run('rn-sw-done', 'rn');
UPDATE agentretry.operations SET expires_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'rn' AND key = 'rn-sw-done-a';
-- idle, with an operation left: kept
SELECT outcome FROM agentretry.claim('rn-sw-busy-a', '{}', 'rn_idem', 'rn', run_id => 'rn-sw-busy');
SELECT agentretry.checkpoint('rn-sw-busy', 'a', '{"a": 1}', 'rn');
-- not idle long enough: kept
SELECT agentretry.start_run('rn-sw-recent', 'rn');
SELECT agentretry.checkpoint('rn-sw-recent', 'a', '{"a": 1}', 'rn');
UPDATE agentretry.runs SET updated_at = clock_timestamp() - interval '2 hours'
WHERE tenant = 'rn' AND run_id IN ('rn-sw-idle', 'rn-sw-done', 'rn-sw-busy');
UPDATE agentretry.runs SET updated_at = clock_timestamp() - interval '30 minutes'
WHERE tenant = 'rn' AND run_id = 'rn-sw-recent';
SELECT runs_purged FROM agentretry.sweep();
SELECT r.run_id, r.state, (SELECT count(*) FROM agentretry.run_context c
	WHERE c.tenant = r.tenant AND c.run_id = r.run_id) AS context_versions
FROM agentretry.runs r WHERE r.tenant = 'rn' AND r.run_id LIKE 'rn-sw-%' ORDER BY r.run_id;
SELECT count(*) AS orphan_context FROM agentretry.run_context c
WHERE c.tenant = 'rn' AND NOT EXISTS (SELECT FROM agentretry.runs r WHERE r.tenant = c.tenant AND r.run_id = c.run_id);
SELECT count(*) AS left FROM agentretry.operations WHERE tenant = 'rn' AND key = 'rn-sw-done-a';
-- a purged run is unknown; its id may start a new run, from version 1
SELECT try_stmt($$SELECT agentretry.context('rn-sw-idle', 'rn')$$);
SELECT agentretry.start_run('rn-sw-idle', 'rn', 'wf-new');
SELECT agentretry.checkpoint('rn-sw-idle', 'a', '{"new": true}', 'rn', expected_version => 0);
-- nothing more to purge
SELECT runs_purged FROM agentretry.sweep();
RESET agentretry.default_ttl;

-- leave nothing behind for the files that follow
DROP VIEW rn_runs;
DROP TABLE rn_before;
DROP FUNCTION try_stmt(text), rn_digest();
DELETE FROM agentretry.events WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.budget_ledger WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.run_context WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.runs WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.token_floors WHERE tenant LIKE 'rn%';
DELETE FROM agentretry.tools WHERE name LIKE 'rn\_%';
