--
-- compensation (sagas): compensate() undoes a run's completed steps in
-- strict reverse completion order, one compensation at a time
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_cp_agent;
RESET client_min_messages;
CREATE ROLE regress_ar_cp_agent IN ROLE agentretry_agent;

-- steps: one tool with a registered compensate tool, one whose tenant
-- policy names it, one with none (its steps are not compensated)
SELECT name, compensate_tool FROM agentretry.register_tool('cp_book', 'idempotent', 'write',
	compensate_tool => 'cp_unbook');
SELECT name, compensate_tool FROM agentretry.register_tool('cp_charge', 'idempotent', 'write');
SELECT tenant, tool, compensate_tool FROM agentretry.set_tenant_policy('cp', 'cp_charge',
	compensate_tool => 'cp_refund');
SELECT name, compensate_tool FROM agentretry.register_tool('cp_email', 'idempotent', 'write');
SELECT name FROM agentretry.register_tool('cp_pay', 'non_idempotent', 'write',
	compensate_tool => 'cp_refund');
SELECT name FROM agentretry.register_tool('cp_wipe', 'idempotent', 'destructive');
SELECT name FROM agentretry.register_tool('cp_fragile', 'idempotent', 'write',
	compensate_tool => 'cp_undo_once');
-- compensate tools: retried after a minute, up to 3 attempts; one never
SELECT name FROM agentretry.register_tool('cp_unbook', 'idempotent', 'write',
	max_attempts => 3, base_delay => '1 minute', max_delay => '1 minute', jitter => 'none');
SELECT name FROM agentretry.register_tool('cp_refund', 'idempotent', 'write',
	max_attempts => 3, base_delay => '1 minute', max_delay => '1 minute', jitter => 'none');
SELECT name FROM agentretry.register_tool('cp_unship', 'idempotent', 'write',
	max_attempts => 3, base_delay => '1 minute', max_delay => '1 minute', jitter => 'none');
SELECT name FROM agentretry.register_tool('cp_undo_once', 'idempotent', 'write',
	max_attempts => 1);
-- the tenant policy names cp_charge's compensate tool for tenant cp only
SELECT field, value, source FROM agentretry.effective_policy('cp', 'cp_charge')
WHERE field = 'compensate_tool';
SELECT field, value, source FROM agentretry.effective_policy('cp-other', 'cp_charge')
WHERE field = 'compensate_tool';

-- A step of run r that succeeded: claimed and completed by worker-1
CREATE FUNCTION cp_step(r text, k text, tool text, args jsonb, result jsonb,
	comp_tool text DEFAULT NULL, comp_args jsonb DEFAULT NULL)
RETURNS agentretry.operation_state
LANGUAGE plpgsql AS $$
DECLARE
	c agentretry.claim_result;
BEGIN
	c := agentretry.claim(k, args, tool, 'cp', run_id => r, step => k, owner => 'worker-1');
	PERFORM agentretry.complete(k, c.lease_token, result, 'cp', comp_tool, comp_args);
	RETURN (SELECT o.state FROM agentretry.operations o WHERE o.tenant = 'cp' AND o.key = k);
END
$$;

-- the compensations of a run: what, and whether a waiting one has a
-- time to run (scheduled) or waits for the ones before it (pending)
CREATE VIEW cp_comps AS
SELECT run_id, key, tool, state, attempts, reason, compensation_of, step,
	CASE WHEN state = 'retry_wait' THEN next_attempt_at IS NOT NULL END AS scheduled,
	compensating
FROM agentretry.operations WHERE tenant = 'cp' AND compensation_of IS NOT NULL;

-- a run's status, without its times
CREATE VIEW cp_status AS
SELECT run_id, state, steps, in_progress, retry_wait, verify, awaiting_approval, succeeded,
	dead, cancelled, compensations_pending, compensations_done, compensations_dead,
	compensate_reason, finished_at IS NOT NULL AS finished
FROM agentretry.run_status WHERE tenant = 'cp';

--
-- a run of four steps, three of them with something to undo; completed
-- in the order charge, email, ship, book
--
SELECT agentretry.start_run('cp-1', 'cp', 'wf-1', correlation_id => 'corr-1');
SELECT cp_step('cp-1', 'cp-1-charge', 'cp_charge', '{"amount": 30}', '{"charge": "ch_1"}');
SELECT cp_step('cp-1', 'cp-1-email', 'cp_email', '{"to": "ann"}', '{"sent": true}');
SELECT cp_step('cp-1', 'cp-1-ship', 'cp_email', '{"parcel": 7}', '{"tracking": "t7"}',
	'cp_unship', '{"shipment": 7}');
SELECT cp_step('cp-1', 'cp-1-book', 'cp_book', '{"room": 12}', '{"booking": "b12"}');
SELECT agentretry.finish_run('cp-1', 'cp');
-- a succeeded run is compensated: three compensations scheduled
SET ROLE regress_ar_cp_agent;
SELECT agentretry.compensate('cp-1', 'cp', 'customer cancelled');
RESET ROLE;
SELECT * FROM cp_status WHERE run_id = 'cp-1';
-- the compensations: ordinary operations of the run, the step's key with
-- ':compensate'; the tool and args given to complete(), else the
-- policy's compensate tool with the step's key, args and result
SELECT c.key, c.tool, c.args, c.state, c.attempts, c.reason, c.run_id, c.step,
	c.compensation_of, c.compensating, c.lease_owner, c.lease_expires_at, c.first_attempt_at,
	c.deadline, c.op_hash = agentretry.op_hash(c.args) AS op_hash_of_args
FROM agentretry.operations c WHERE c.tenant = 'cp' AND c.run_id = 'cp-1'
	AND c.compensation_of IS NOT NULL ORDER BY c.key;
-- only the one whose step completed last is due
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-1' ORDER BY key;
SELECT next_attempt_at <= clock_timestamp() AS due_now FROM agentretry.operations
WHERE tenant = 'cp' AND key = 'cp-1-book:compensate';
-- a claim of a pending one waits, with no time to come back
SELECT outcome, attempt, lease_token, retry_at, reason
FROM agentretry.claim('cp-1-ship:compensate', '{"shipment": 7}', 'cp_unship', 'cp');
SELECT outcome, attempt, lease_token, retry_at, reason
FROM agentretry.claim('cp-1-charge:compensate',
	'{"key": "cp-1-charge", "args": {"amount": 30}, "result": {"charge": "ch_1"}}', 'cp_refund', 'cp');
-- ... and with other args is a fingerprint conflict, like any claim
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('cp-1-ship:compensate', '{"shipment": 8}', 'cp_unship', 'cp')$$);
-- claim_due hands out exactly one: the due one
SELECT key, tool, args, attempt, lease_token, run_id, step
FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-1-book:compensate', 2, '{"unbooked": true}', 'cp');
-- its success makes the next one due: ship
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-1' ORDER BY key;
-- this time a claim of its key executes it, with the same args
SELECT outcome, attempt, lease_token
FROM agentretry.claim('cp-1-ship:compensate', '{"shipment": 7}', 'cp_unship', 'cp', owner => 'worker-3');
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
-- it fails transiently: retried as its tool's policy says (after a minute)
SELECT action, attempt, reason, retry_at - clock_timestamp() BETWEEN interval '50 seconds'
	AND interval '1 minute' AS in_a_minute
FROM agentretry.fail('cp-1-ship:compensate', 2, 'transient', 'pre_execution', 'http_503', tenant => 'cp');
SELECT key, state, attempts, reason, last_delay FROM agentretry.operations
WHERE tenant = 'cp' AND key = 'cp-1-ship:compensate';
-- meanwhile nothing else is due
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-1' ORDER BY key;
SELECT outcome, retry_at > clock_timestamp() AS later
FROM agentretry.claim('cp-1-ship:compensate', '{"shipment": 7}', 'cp_unship', 'cp');
-- once due, claim_due takes the retry
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'cp' AND key = 'cp-1-ship:compensate';
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-1-ship:compensate', 3, '{"unshipped": true}', 'cp');
-- then charge (the email step has nothing to undo)
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-1' ORDER BY key;
SELECT key, args, attempt, lease_token FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-1';
SELECT agentretry.complete('cp-1-charge:compensate', 2, '{"refund": "re_1"}', 'cp');
-- all done: the run is compensated
SELECT * FROM cp_status WHERE run_id = 'cp-1';
SELECT key, state, attempts, result FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-1' AND compensation_of IS NOT NULL ORDER BY completed_at;
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
-- the steps themselves are as they were
SELECT key, state, compensating FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-1' AND compensation_of IS NULL ORDER BY key;
-- compensate again: nothing new, 0
SELECT try_stmt($$SELECT agentretry.compensate('cp-1', 'cp')$$);
-- the trace, with the run's workflow version and correlation id; the
-- compensate event names who asked
SELECT kind, key, attempt, reason, workflow_version, correlation_id,
	CASE WHEN actor = 'regress_ar_cp_agent' THEN '(agent)' ELSE actor END AS actor
FROM agentretry.events WHERE tenant = 'cp' AND run_id = 'cp-1'
	AND kind NOT IN ('claim', 'complete') ORDER BY id;

--
-- compensating a running run: waiting retries and approvals are
-- cancelled; a step in flight is waited for, and compensated first if it
-- then completes
--
SELECT cp_step('cp-2', 'cp-2-a', 'cp_book', '{"room": 1}', '{"booking": "b1"}');
SELECT outcome FROM agentretry.claim('cp-2-wait', '{}', 'cp_book', 'cp', run_id => 'cp-2');
SELECT action FROM agentretry.fail('cp-2-wait', 1, 'transient', 'pre_execution', tenant => 'cp');
SELECT outcome, attempt FROM agentretry.claim('cp-2-appr', '{}', 'cp_wipe', 'cp', run_id => 'cp-2');
SELECT outcome, attempt, lease_token
FROM agentretry.claim('cp-2-fly', '{"room": 2}', 'cp_book', 'cp', run_id => 'cp-2', owner => 'worker-1');
SELECT agentretry.compensate('cp-2', 'cp');
SELECT key, state, reason, compensating FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-2' ORDER BY key;
SELECT * FROM cp_status WHERE run_id = 'cp-2';
-- the cancelled ones answer cancelled
SELECT outcome, reason FROM agentretry.claim('cp-2-wait', '{}', 'cp_book', 'cp');
SELECT outcome, reason FROM agentretry.claim('cp-2-appr', '{}', 'cp_wipe', 'cp');
SELECT key FROM agentretry.approval_queue WHERE tenant = 'cp';
-- nothing is due while the step is in flight
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT outcome, retry_at, reason FROM agentretry.claim('cp-2-a:compensate',
	'{"key": "cp-2-a", "args": {"room": 1}, "result": {"booking": "b1"}}', 'cp_unbook', 'cp');
-- the step completes: its compensation is scheduled, and runs first
SELECT agentretry.complete('cp-2-fly', 1, '{"booking": "b2"}', 'cp');
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-2' ORDER BY key;
SELECT * FROM cp_status WHERE run_id = 'cp-2';
SELECT key, args, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-2-fly:compensate', 2, '{}', 'cp');
SELECT key, args, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-2-a:compensate', 2, '{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-2';
SELECT kind, key, reason FROM agentretry.events WHERE tenant = 'cp' AND run_id = 'cp-2'
	AND kind NOT IN ('claim', 'complete', 'approval_requested', 'retry') ORDER BY id;

--
-- a step in flight that then fails is not retried: cancelled
--
SELECT cp_step('cp-3', 'cp-3-a', 'cp_book', '{"room": 3}', '{"booking": "b3"}');
SELECT outcome FROM agentretry.claim('cp-3-fly', '{}', 'cp_book', 'cp', run_id => 'cp-3');
SELECT agentretry.finish_run('cp-3', 'cp', false);
SELECT agentretry.compensate('cp-3', 'cp');
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT action, retry_at, attempt, reason
FROM agentretry.fail('cp-3-fly', 1, 'transient', 'pre_execution', 'http_503', tenant => 'cp');
SELECT key, state, reason, attempts, next_attempt_at, last_failure_code FROM agentretry.operations
WHERE tenant = 'cp' AND key = 'cp-3-fly';
SELECT outcome, reason FROM agentretry.claim('cp-3-fly', '{}', 'cp_book', 'cp');
SELECT kind, key, reason FROM agentretry.events WHERE tenant = 'cp' AND key = 'cp-3-fly' ORDER BY id;
-- the compensation of the other step is now due
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-3-a:compensate', 2, '{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-3';

--
-- steps being verified: resolved executed, the step is compensated (first,
-- as it completed last); resolved not executed, it is cancelled
--
SELECT cp_step('cp-4', 'cp-4-a', 'cp_book', '{"room": 4}', '{"booking": "b4"}');
SELECT outcome FROM agentretry.claim('cp-4-v1', '{"amount": 1}', 'cp_pay', 'cp', run_id => 'cp-4');
SELECT action FROM agentretry.fail('cp-4-v1', 1, 'ambiguous', 'post_execution', tenant => 'cp');
SELECT outcome FROM agentretry.claim('cp-4-v2', '{"amount": 2}', 'cp_pay', 'cp', run_id => 'cp-4');
SELECT action FROM agentretry.fail('cp-4-v2', 1, 'ambiguous', 'post_execution', tenant => 'cp');
SELECT agentretry.compensate('cp-4', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-4';
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
-- the verifier of v1 finds the payment made
SELECT outcome, lease_token FROM agentretry.claim('cp-4-v1', '{"amount": 1}', 'cp_pay', 'cp');
SELECT agentretry.resolve('cp-4-v1', 2, true, '{"payment": "p1"}', 'cp');
-- v2 is still being verified: nothing due yet
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-4' ORDER BY key;
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
-- the verifier of v2 finds it not made: cancelled, not retried
SELECT outcome, lease_token FROM agentretry.claim('cp-4-v2', '{"amount": 2}', 'cp_pay', 'cp');
SELECT agentretry.resolve('cp-4-v2', 2, false, tenant => 'cp');
SELECT key, state, reason, next_attempt_at FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-4' AND compensation_of IS NULL ORDER BY key;
-- v1's compensation (from cp_pay's compensate tool) runs first
SELECT key, tool, args, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-4-v1:compensate', 2, '{}', 'cp');
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-4-a:compensate', 2, '{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-4';

--
-- a compensation that ends dead: the run needs review, and nothing further
-- runs until an operator requeues it
--
SELECT cp_step('cp-5', 'cp-5-a', 'cp_book', '{"room": 5}', '{"booking": "b5"}');
SELECT cp_step('cp-5', 'cp-5-b', 'cp_fragile', '{"n": 1}', '{"ok": true}');
SELECT cp_step('cp-5', 'cp-5-c', 'cp_book', '{"room": 6}', '{"booking": "b6"}');
SELECT agentretry.compensate('cp-5', 'cp', 'order failed');
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-5-c:compensate', 2, '{}', 'cp');
SELECT key, tool, attempt, lease_token FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT action, reason FROM agentretry.fail('cp-5-b:compensate', 2, 'transient', 'pre_execution',
	'http_503', 'undo service down', tenant => 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-5';
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-5' ORDER BY key;
-- nothing further is due: the pending one waits
SELECT key FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT outcome, retry_at, reason FROM agentretry.claim('cp-5-a:compensate',
	'{"key": "cp-5-a", "args": {"room": 5}, "result": {"booking": "b5"}}', 'cp_unbook', 'cp');
-- the dead letter, with its run
SELECT key, tool, reason, run_id, step, last_failure_code, last_failure_message
FROM agentretry.dead_letters WHERE tenant = 'cp';
-- compensate again changes nothing
SELECT try_stmt($$SELECT agentretry.compensate('cp-5', 'cp')$$);
SELECT try_stmt($$SELECT agentretry.finish_run('cp-5', 'cp')$$);
-- the operator requeues it: the saga resumes
SELECT agentretry.requeue('cp-5-b:compensate', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-5';
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-5' ORDER BY key;
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-5-b:compensate', 4, '{}', 'cp');
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-5-a:compensate', 2, '{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-5';
SELECT kind, key, reason FROM agentretry.events WHERE tenant = 'cp' AND run_id = 'cp-5'
	AND kind NOT IN ('claim', 'complete') ORDER BY id;

--
-- an operator cancels a compensation still waiting for its turn: the run
-- needs review; requeued, it waits for its turn again (one compensation
-- of a run at a time, newest step first)
--
SELECT cp_step('cp-8', 'cp-8-a', 'cp_book', '{"room": 81}', '{"booking": "b81"}');
SELECT cp_step('cp-8', 'cp-8-b', 'cp_book', '{"room": 82}', '{"booking": "b82"}');
SELECT agentretry.compensate('cp-8', 'cp');
SELECT agentretry.cancel('cp-8-a:compensate', 'cp', 'refund by hand');
SELECT * FROM cp_status WHERE run_id = 'cp-8';
SELECT agentretry.requeue('cp-8-a:compensate', 'cp');
SELECT run_id, state, compensations_pending, compensations_dead FROM cp_status WHERE run_id = 'cp-8';
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp') ORDER BY key;
SELECT agentretry.complete('cp-8-b:compensate',
	(SELECT lease_token FROM agentretry.operations WHERE tenant = 'cp' AND key = 'cp-8-b:compensate'),
	'{}', 'cp');
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp') ORDER BY key;
SELECT agentretry.complete('cp-8-a:compensate',
	(SELECT lease_token FROM agentretry.operations WHERE tenant = 'cp' AND key = 'cp-8-a:compensate'),
	'{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-8';
SELECT key, state FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-8' AND compensation_of IS NOT NULL ORDER BY completed_at;

--
-- a step in flight that gives its lease back does not run again: it is
-- cancelled like a waiting retry, and its run's compensation goes on
--
SELECT cp_step('cp-7', 'cp-7-a', 'cp_book', '{"room": 7}', '{"booking": "b7"}');
SELECT outcome, lease_token FROM agentretry.claim('cp-7-fly', '{"room": 8}', 'cp_book', 'cp',
	run_id => 'cp-7');
SELECT agentretry.compensate('cp-7', 'cp');
SELECT agentretry.release('cp-7-fly', 1, 'cp');
SELECT key, state, reason FROM agentretry.operations
WHERE tenant = 'cp' AND key = 'cp-7-fly';
SELECT outcome, reason FROM agentretry.claim('cp-7-fly', '{"room": 8}', 'cp_book', 'cp');
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-7' ORDER BY key;
SELECT key, attempt FROM agentretry.claim_due('worker-2', max => 10, tenant => 'cp');
SELECT agentretry.complete('cp-7-a:compensate', 2, '{}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-7';

--
-- a run with nothing to undo is compensated at once
--
SELECT cp_step('cp-6', 'cp-6-a', 'cp_email', '{}', '{}');
SELECT agentretry.compensate('cp-6', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-6';
SELECT try_stmt($$SELECT agentretry.compensate('cp-6', 'cp')$$);

--
-- keys ending in ':compensate' are reserved for compensations: a claim
-- cannot create one (22023; nothing stored, no run started), whatever
-- the run, tool or args; a claim of one that compensate() created acts
-- on it as its state says
--
SELECT cp_step('cp-9', 'cp-9-a', 'cp_book', '{"room": 91}', '{"booking": "b91"}');
SELECT cp_step('cp-9', 'cp-9-b', 'cp_book', '{"room": 92}', '{"booking": "b92"}');
-- the very call that will work once compensate() has created the key
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('cp-9-a:compensate',
	'{"key": "cp-9-a", "args": {"room": 91}, "result": {"booking": "b91"}}', 'cp_unbook', 'cp',
	run_id => 'cp-9')$$);
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('cp-9-a:compensate',
	'{"key": "cp-9-a", "args": {"room": 91}, "result": {"booking": "b91"}}', 'cp_unbook', 'cp')$$);
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('cp-9-new:compensate', '{}', 'cp_book', 'cp',
	run_id => 'cp-9-other')$$);
SELECT try_stmt($$SELECT outcome FROM agentretry.claim(':compensate', '{}')$$);
SELECT count(*) AS runs FROM agentretry.runs WHERE tenant = 'cp' AND run_id = 'cp-9-other';
-- a key that only contains the word is an ordinary one
SELECT outcome, attempt FROM agentretry.claim('cp-9:compensated', '{}', 'cp_email', 'cp');
SELECT outcome, attempt FROM agentretry.claim('cp-9:compensate:x', '{}', 'cp_email', 'cp');
SELECT agentretry.complete('cp-9:compensated', 1, '{}', 'cp');
SELECT agentretry.complete('cp-9:compensate:x', 1, '{}', 'cp');
-- compensate() creates the keys; a claim of one with its args answers as
-- its state says: pending waits, due executes, done replays
SELECT agentretry.compensate('cp-9', 'cp');
SELECT key, state, reason, scheduled FROM cp_comps WHERE run_id = 'cp-9' ORDER BY key;
SELECT outcome, attempt, lease_token, retry_at, reason FROM agentretry.claim('cp-9-a:compensate',
	'{"key": "cp-9-a", "args": {"room": 91}, "result": {"booking": "b91"}}', 'cp_unbook', 'cp',
	run_id => 'cp-9');
SELECT outcome, attempt, lease_token FROM agentretry.claim('cp-9-b:compensate',
	'{"key": "cp-9-b", "args": {"room": 92}, "result": {"booking": "b92"}}', 'cp_unbook', 'cp');
SELECT agentretry.complete('cp-9-b:compensate', 2, '{"unbooked": 92}', 'cp');
SELECT outcome, attempt, result FROM agentretry.claim('cp-9-b:compensate',
	'{"key": "cp-9-b", "args": {"room": 92}, "result": {"booking": "b92"}}', 'cp_unbook', 'cp');
SELECT outcome, attempt, lease_token FROM agentretry.claim('cp-9-a:compensate',
	'{"key": "cp-9-a", "args": {"room": 91}, "result": {"booking": "b91"}}', 'cp_unbook', 'cp',
	run_id => 'cp-9');
SELECT agentretry.complete('cp-9-a:compensate', 2, '{"unbooked": 91}', 'cp');
SELECT * FROM cp_status WHERE run_id = 'cp-9';
SELECT key, state, attempts, result FROM agentretry.operations
WHERE tenant = 'cp' AND run_id = 'cp-9' AND compensation_of IS NOT NULL ORDER BY completed_at;

--
-- bad input
--
SELECT try_stmt($$SELECT agentretry.compensate('cp-nope', 'cp')$$);
SELECT try_stmt($$SELECT agentretry.compensate('cp-1', 'cp-elsewhere')$$);
SELECT try_stmt($$SELECT agentretry.compensate(NULL, 'cp')$$);
SELECT try_stmt($$SELECT agentretry.compensate('', 'cp')$$);
SELECT try_stmt($$SELECT agentretry.compensate(repeat('r', 513), 'cp')$$);
SELECT count(*) AS runs FROM agentretry.runs WHERE run_id = 'cp-nope' OR tenant = 'cp-elsewhere';

-- leave nothing behind for the files that follow
DROP VIEW cp_comps, cp_status;
DROP FUNCTION cp_step(text, text, text, jsonb, jsonb, text, jsonb), try_stmt(text), cp_digest();
DROP ROLE regress_ar_cp_agent;
SELECT agentretry.drop_tenant_policy('cp', 'cp_charge');
DELETE FROM agentretry.events WHERE tenant = 'cp';
DELETE FROM agentretry.budget_ledger WHERE tenant = 'cp';
DELETE FROM agentretry.operations WHERE tenant = 'cp';
DELETE FROM agentretry.run_context WHERE tenant = 'cp';
DELETE FROM agentretry.runs WHERE tenant = 'cp';
DELETE FROM agentretry.tools WHERE name LIKE 'cp\_%';
