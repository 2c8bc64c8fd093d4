-- The decision rules through the real path: register_tool, claim, fail (or
-- an expired lease found by claim), and the state the operation is left in.
--
-- The passage of time is simulated by moving next_attempt_at,
-- lease_expires_at or deadline into the past, as superuser.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SET LOCAL timezone = 'UTC';
SELECT plan(71);

-- Claim, fail and make the retry due until the operation is no longer
-- retried; one row per claim.  wait is how far after the failure the retry
-- was scheduled (fail stamps updated_at with the failure time).
CREATE FUNCTION pg_temp.run_to_end(p_key text, p_tool text, p_failure failure_class,
								   p_phase failure_phase, p_retry_after interval DEFAULT NULL)
RETURNS TABLE (claim_outcome outcome, claim_attempt integer, token bigint,
			   action decision_action, failed_attempt integer, reason text,
			   retry_at_stored boolean, wait interval, last_delay interval)
LANGUAGE plpgsql AS $$
DECLARE
	c claim_result;
	d decision;
	o operations;
BEGIN
	FOR i IN 1..20 LOOP
		c := claim(p_key, '{"n": 1}', p_tool);
		claim_outcome := c.outcome;
		claim_attempt := c.attempt;
		token := c.lease_token;
		IF c.outcome <> 'execute' THEN
			action := NULL;
			failed_attempt := NULL;
			reason := c.reason;
			retry_at_stored := NULL;
			wait := NULL;
			last_delay := NULL;
			RETURN NEXT;
			RETURN;
		END IF;
		d := fail(p_key, c.lease_token, p_failure, p_phase, retry_after => p_retry_after);
		o := lookup(p_key);
		action := d.action;
		failed_attempt := d.attempt;
		reason := d.reason;
		retry_at_stored := d.retry_at IS NOT DISTINCT FROM o.next_attempt_at;
		wait := o.next_attempt_at - o.updated_at;
		last_delay := o.last_delay;
		RETURN NEXT;
		IF d.action <> 'retry' THEN
			RETURN;
		END IF;
		UPDATE operations SET next_attempt_at = clock_timestamp() - interval '1 millisecond'
		WHERE key = p_key;
	END LOOP;
END
$$;

-- tools; the destructive tools without an approval gate test rule 0 on the
-- first attempt, the gated ones after approve()
SELECT lives_ok($$
	SELECT register_tool('tap_read', 'idempotent', 'read');
	SELECT register_tool('tap_write_idem', 'idempotent', 'write');
	SELECT register_tool('tap_write', 'non_idempotent', 'write');
	SELECT register_tool('tap_destructive', 'idempotent', 'destructive',
		requires_approval => false);
	SELECT register_tool('tap_destructive_5', 'idempotent', 'destructive', max_attempts => 5,
		requires_approval => false);
	SELECT register_tool('tap_destructive_gated', 'idempotent', 'destructive');
	SELECT register_tool('tap_destructive_gated_5', 'idempotent', 'destructive', max_attempts => 5);
	SELECT register_tool('tap_write_4', 'non_idempotent', 'write', max_attempts => 4);
	SELECT register_tool('tap_exact', 'idempotent', 'write', max_attempts => 4,
		base_delay => '2 seconds', max_delay => '5 seconds', multiplier => 3, jitter => 'none');
	SELECT register_tool('tap_deadline', 'idempotent', 'read', jitter => 'none',
		base_delay => '2 hours', max_delay => '3 hours', deadline => '1 hour');
	SELECT register_tool('tap_zero', 'idempotent', 'read', jitter => 'none',
		base_delay => '0', max_delay => '0');
	SELECT register_tool('tap_hour', 'idempotent', 'read', jitter => 'none',
		base_delay => '1 hour', max_delay => '2 hours');
	SELECT register_tool('tap_once', 'idempotent', 'read', max_attempts => 1);
$$, 'tools register');

-- tier defaults
CREATE TEMP TABLE read_run ON COMMIT DROP AS
SELECT * FROM pg_temp.run_to_end('k_read', 'tap_read', 'transient', 'mid_execution');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, token, action, failed_attempt, reason, retry_at_stored
	  FROM read_run$$,
	$$VALUES ('execute'::outcome, 1, 1::bigint, 'retry'::decision_action, 1, 'idempotent_retry', true),
			 ('execute', 2, 2, 'retry', 2, 'idempotent_retry', true),
			 ('execute', 3, 3, 'retry', 3, 'idempotent_retry', true),
			 ('execute', 4, 4, 'retry', 4, 'idempotent_retry', true),
			 ('execute', 5, 5, 'retry', 5, 'idempotent_retry', true),
			 ('execute', 6, 6, 'dead', 6, 'attempts_exhausted', true)$$,
	'read tier: six attempts, then dead attempts_exhausted');
-- full jitter on 200 ms doubling: attempt n waits at most 200 ms * 2^(n-1)
SELECT is_empty(
	$$SELECT claim_attempt FROM read_run
	  WHERE action = 'retry'
		AND NOT (wait BETWEEN interval '0' AND interval '200 milliseconds' * 2 ^ (claim_attempt - 1)
				 AND last_delay = wait)$$,
	'read tier: each retry waits within the full-jitter bound of 200 ms doubling');
SELECT results_eq(
	$$SELECT state, attempts, reason, next_attempt_at, lease_expires_at, last_failure_class,
			 last_failure_phase
	  FROM lookup('k_read')$$,
	$$VALUES ('dead'::operation_state, 6, 'attempts_exhausted', NULL::timestamptz,
			  NULL::timestamptz, 'transient'::failure_class, 'mid_execution'::failure_phase)$$,
	'read tier: the exhausted operation is dead with no lease and nothing scheduled');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason, result FROM claim('k_read', '{"n": 1}', 'tap_read')$$,
	$$VALUES ('dead'::outcome, 6, NULL::bigint, 'attempts_exhausted',
			  '{"class": "transient", "phase": "mid_execution", "code": null, "message": null,
				"reason": "attempts_exhausted"}'::jsonb)$$,
	'claim of the exhausted key answers dead with the last failure');

SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_write_idem', 'tap_write_idem', 'transient', 'post_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'retry'::decision_action, 'idempotent_retry'),
			 ('execute', 2, 'dead', 'attempts_exhausted')$$,
	'write tier: two attempts, then dead');
SELECT ok((SELECT wait BETWEEN interval '0' AND interval '1 second' AND last_delay = wait
		   FROM pg_temp.run_to_end('k_write_idem_b', 'tap_write_idem', 'ambiguous', NULL)
		   WHERE claim_attempt = 1),
	'write tier: the first retry waits within full jitter of 1 s');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_write_pre', 'tap_write', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'retry'::decision_action, 'not_executed'),
			 ('execute', 2, 'dead', 'attempts_exhausted')$$,
	'non-idempotent write failing before execution: retried once, then dead');

SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason, retry_at_stored FROM pg_temp.run_to_end(
		'k_destructive', 'tap_destructive', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'dead'::decision_action, 'review_required', true)$$,
	'destructive tier: even a failure before execution is dead review_required');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_destructive_5', 'tap_destructive_5', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'dead'::decision_action, 'review_required')$$,
	'destructive tier: max_attempts cannot make it retried');
SELECT results_eq(
	$$SELECT state, attempts, reason, next_attempt_at, lease_expires_at FROM lookup('k_destructive_5')$$,
	$$VALUES ('dead'::operation_state, 1, 'review_required', NULL::timestamptz, NULL::timestamptz)$$,
	'destructive tier: the operation is dead');

-- an approved destructive operation is still never retried (rule 0)
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, token, action, reason FROM pg_temp.run_to_end(
		'k_gated', 'tap_destructive_gated', 'transient', 'pre_execution')$$,
	$$VALUES ('approval'::outcome, 0, NULL::bigint, NULL::decision_action, 'approval_required')$$,
	'destructive tier with its default gate: the first claim waits for approval');
SELECT results_eq(
	$$SELECT state, attempts, reason, next_attempt_at, lease_expires_at, deadline FROM lookup('k_gated')$$,
	$$VALUES ('awaiting_approval'::operation_state, 0, 'approval_required', NULL::timestamptz,
			  NULL::timestamptz, NULL::timestamptz)$$,
	'the gated operation awaits approval with no attempt, no lease, nothing scheduled');
SELECT is(approve('k_gated', NULL, 'checked'), 'retry_wait'::operation_state,
	'approve makes the operation due');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, token, action, failed_attempt, reason, retry_at_stored
	  FROM pg_temp.run_to_end('k_gated', 'tap_destructive_gated', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 2::bigint, 'dead'::decision_action, 1, 'review_required', true)$$,
	'approved destructive operation: a failure before execution is dead review_required');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, reason, next_attempt_at, lease_expires_at,
			 last_failure_class, last_failure_phase
	  FROM lookup('k_gated')$$,
	$$VALUES ('dead'::operation_state, 1, 2::bigint, 'review_required', NULL::timestamptz,
			  NULL::timestamptz, 'transient'::failure_class, 'pre_execution'::failure_phase)$$,
	'the approved operation is dead after its one attempt');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_gated', '{"n": 1}', 'tap_destructive_gated')$$,
	$$VALUES ('dead'::outcome, 1, NULL::bigint, 'review_required')$$,
	'a later claim of it answers dead, not approval');
SELECT results_eq(
	$$SELECT kind, attempt, reason, lease_token FROM events WHERE key = 'k_gated' ORDER BY id$$,
	$$VALUES ('approval_requested', 0, 'approval_required', 1::bigint),
			 ('approved', 0, 'approved', 1),
			 ('dead', 1, 'review_required', 2)$$,
	'the gate, the approval and the one decision are traced');
SELECT lives_ok($$
	SELECT claim('k_gated_5', '{"n": 1}', 'tap_destructive_gated_5');
	SELECT approve('k_gated_5');
$$, 'a destructive operation with max_attempts 5 is approved');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_gated_5', 'tap_destructive_gated_5', 'transient', 'mid_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'dead'::decision_action, 'review_required')$$,
	'approved destructive operation: max_attempts cannot make it retried');
SELECT lives_ok($$
	SELECT claim('k_gated_exp', '{"n": 1}', 'tap_destructive_gated');
	SELECT approve('k_gated_exp');
	SELECT claim('k_gated_exp', '{"n": 1}', 'tap_destructive_gated');
	UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
	WHERE key = 'k_gated_exp';
$$, 'an approved destructive operation is claimed and its lease expires');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason, result FROM claim('k_gated_exp', '{"n": 1}', 'tap_destructive_gated')$$,
	$$VALUES ('dead'::outcome, 1, NULL::bigint, 'review_required',
			  '{"class": "ambiguous", "phase": null, "code": "lease_expired", "message": null,
				"reason": "review_required"}'::jsonb)$$,
	'approved destructive operation, expired lease: dead review_required');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, lease_expires_at FROM lookup('k_gated_exp')$$,
	$$VALUES ('dead'::operation_state, 1, 2::bigint, NULL::timestamptz)$$,
	'and it is dead without a lease');

-- an operation awaiting approval holds no lease: its stored token (never
-- handed out) cannot record a failure
SELECT is((claim('k_gated_token', '{"n": 1}', 'tap_destructive_gated')).outcome, 'approval'::outcome,
	'a second destructive operation awaits approval');
SELECT throws_ok(
	$$SELECT fail('k_gated_token', (SELECT lease_token FROM lookup('k_gated_token')),
				  'transient', 'pre_execution')$$,
	'AR002', NULL, 'fail with the token of an operation awaiting approval is refused');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, reason FROM lookup('k_gated_token')$$,
	$$VALUES ('awaiting_approval'::operation_state, 0, 1::bigint, 'approval_required')$$,
	'the refused fail changed nothing');

-- an unregistered tool is unknown / write
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_unreg_pre', 'tap_unregistered', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'retry'::decision_action, 'not_executed'),
			 ('execute', 2, 'dead', 'attempts_exhausted')$$,
	'unregistered tool: write tier, two attempts');
SELECT ok((SELECT last_delay BETWEEN interval '0' AND interval '1 second' FROM lookup('k_unreg_pre')),
	'unregistered tool: write-tier backoff of at most 1 s');
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, failed_attempt, reason, retry_at_stored
	  FROM pg_temp.run_to_end('k_unreg_mid', 'tap_unregistered', 'transient', 'mid_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'verify'::decision_action, 1, 'outcome_unknown', true)$$,
	'unregistered tool: transient mid execution needs verification');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, reason, next_attempt_at, lease_expires_at FROM lookup('k_unreg_mid')$$,
	$$VALUES ('verify'::operation_state, 1, 1::bigint, 'outcome_unknown', NULL::timestamptz, NULL::timestamptz)$$,
	'verify state: no lease, nothing scheduled, attempts unchanged');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_unreg_mid', '{"n": 1}', 'tap_unregistered')$$,
	$$VALUES ('verify'::outcome, 1, 2::bigint, 'outcome_unknown')$$,
	'claim of a key awaiting verification hands out a verification lease');
SELECT throws_ok(
	$$SELECT fail('k_unreg_mid', 2, 'transient', 'pre_execution')$$,
	'AR004', NULL, 'fail during verification is refused');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, reason FROM lookup('k_unreg_mid')$$,
	$$VALUES ('verify'::operation_state, 1, 2::bigint, 'outcome_unknown')$$,
	'the refused fail changed nothing');

SELECT results_eq(
	$$SELECT claim_outcome, action, reason FROM pg_temp.run_to_end(
		'k_write_amb', 'tap_write', 'ambiguous', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 'verify'::decision_action, 'outcome_unknown')$$,
	'non-idempotent tool, ambiguous failure: verify');
SELECT results_eq(
	$$SELECT claim_outcome, action, reason FROM pg_temp.run_to_end(
		'k_read_perm', 'tap_read', 'permanent', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 'dead'::decision_action, 'permanent')$$,
	'permanent failure: dead at once, even for a read');

-- what fail records; retry_after keeps the retry from falling due before
-- the claim that expects wait
CREATE TEMP TABLE detail ON COMMIT DROP AS
SELECT (claim('k_detail', '{"n": 1}', 'tap_write')).lease_token AS token;
SELECT results_eq(
	$$SELECT (d).action, (d).attempt, (d).reason, (d).retry_at IS NULL
	  FROM (SELECT fail('k_detail', token, 'transient', 'pre_execution', 'http_503',
						'service unavailable', '1 hour') AS d FROM detail) x$$,
	$$VALUES ('retry'::decision_action, 1, 'not_executed', false)$$,
	'fail returns the decision for the attempt that failed');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, lease_expires_at, last_failure_class, last_failure_phase,
			 last_failure_code, last_failure_message, reason
	  FROM lookup('k_detail')$$,
	$$VALUES ('retry_wait'::operation_state, 1, 1::bigint, NULL::timestamptz,
			  'transient'::failure_class, 'pre_execution'::failure_phase, 'http_503',
			  'service unavailable', 'not_executed')$$,
	'fail records the failure and gives the lease up');
SELECT results_eq(
	$$SELECT e.kind, e.attempt, e.failure_class, e.failure_phase, e.code, e.message, e.reason,
			 e.lease_token, e.delay = o.next_attempt_at - o.updated_at, e.at = o.updated_at
	  FROM events e, lookup('k_detail') o WHERE e.key = 'k_detail'$$,
	$$VALUES ('retry', 1, 'transient'::failure_class, 'pre_execution'::failure_phase, 'http_503',
			  'service unavailable', 'not_executed', 1::bigint, true, true)$$,
	'fail traces the decision with its delay');
SELECT results_eq(
	$$SELECT c.outcome, c.attempt, c.lease_token, c.retry_at = o.next_attempt_at, c.reason
	  FROM claim('k_detail', '{"n": 1}', 'tap_write') c, lookup('k_detail') o$$,
	$$VALUES ('wait'::outcome, 1, NULL::bigint, true, 'not_executed')$$,
	'claim before the retry is due answers wait');

-- policy fields override the tier defaults; jitter none makes delays exact
SELECT results_eq(
	$$SELECT claim_outcome, claim_attempt, action, reason FROM pg_temp.run_to_end(
		'k_write_4', 'tap_write_4', 'transient', 'pre_execution')$$,
	$$VALUES ('execute'::outcome, 1, 'retry'::decision_action, 'not_executed'),
			 ('execute', 2, 'retry', 'not_executed'),
			 ('execute', 3, 'retry', 'not_executed'),
			 ('execute', 4, 'dead', 'attempts_exhausted')$$,
	'max_attempts 4 overrides the write default of 2');
SELECT results_eq(
	$$SELECT claim_attempt, action, reason, retry_at_stored, wait, last_delay FROM pg_temp.run_to_end(
		'k_exact', 'tap_exact', 'transient', 'mid_execution')$$,
	$$VALUES (1, 'retry'::decision_action, 'idempotent_retry', true, interval '2 seconds', interval '2 seconds'),
			 (2, 'retry', 'idempotent_retry', true, '5 seconds', '5 seconds'),
			 (3, 'retry', 'idempotent_retry', true, '5 seconds', '5 seconds'),
			 (4, 'dead', 'attempts_exhausted', true, NULL, '5 seconds')$$,
	'base 2 s, multiplier 3, cap 5 s, no jitter: waits 2 s, 5 s, 5 s');
SELECT results_eq(
	$$SELECT delay FROM events WHERE key = 'k_exact' ORDER BY id$$,
	$$VALUES (interval '2 seconds'), ('5 seconds'), ('5 seconds'), (NULL)$$,
	'the traced delays are the exact backoff');
SELECT results_eq(
	$$SELECT claim_attempt, wait, last_delay FROM pg_temp.run_to_end(
		'k_exact_ra', 'tap_exact', 'transient', 'pre_execution', '20 seconds')
	  WHERE action = 'retry'$$,
	$$VALUES (1, interval '20 seconds', interval '2 seconds'),
			 (2, '20 seconds', '5 seconds'),
			 (3, '20 seconds', '5 seconds')$$,
	'retry_after longer than the backoff sets the wait');
SELECT results_eq(
	$$SELECT claim_attempt, wait FROM pg_temp.run_to_end(
		'k_exact_ra_short', 'tap_exact', 'transient', 'pre_execution', '1 second')
	  WHERE action = 'retry'$$,
	$$VALUES (1, interval '2 seconds'), (2, '5 seconds'), (3, '5 seconds')$$,
	'retry_after shorter than the backoff leaves the backoff');
SELECT results_eq(
	$$SELECT claim_attempt, wait FROM pg_temp.run_to_end(
		'k_zero', 'tap_zero', 'transient', 'pre_execution')
	  WHERE action = 'retry'$$,
	$$VALUES (1, interval '0'), (2, '0'), (3, '0'), (4, '0'), (5, '0')$$,
	'zero base delay: retries are due at once');

-- the deadline is fixed at the first claim
CREATE TEMP TABLE dl ON COMMIT DROP AS
SELECT (claim('k_deadline', '{"n": 1}', 'tap_deadline')).lease_token AS token, NULL::timestamptz AS deadline;
UPDATE dl SET deadline = (lookup('k_deadline')).deadline;
SELECT results_eq(
	$$SELECT deadline - first_attempt_at, deadline - created_at FROM lookup('k_deadline')$$,
	$$VALUES (interval '1 hour', interval '1 hour')$$,
	'deadline = first claim + the policy deadline');
SELECT is((lookup('k_read')).deadline, NULL, 'no policy deadline, no deadline');
SELECT results_eq(
	$$SELECT (d).action, (d).reason, (d).retry_at = dl.deadline
	  FROM (SELECT fail('k_deadline', token, 'transient', 'pre_execution') AS d FROM dl) x, dl$$,
	$$VALUES ('retry'::decision_action, 'not_executed', true)$$,
	'a backoff of 2 h is capped at the deadline 1 h away');
SELECT results_eq(
	$$SELECT next_attempt_at = dl.deadline, last_delay FROM lookup('k_deadline'), dl$$,
	$$VALUES (true, interval '2 hours')$$,
	'the capped retry is stored at the deadline');
SELECT lives_ok($$
	SELECT register_tool('tap_deadline', 'idempotent', 'read', jitter => 'none',
		base_delay => '2 hours', max_delay => '3 hours', deadline => '10 hours');
	UPDATE operations SET next_attempt_at = clock_timestamp() - interval '1 millisecond'
	WHERE key = 'k_deadline';
	UPDATE dl SET token = (claim('k_deadline', '{"n": 1}', 'tap_deadline')).lease_token;
$$, 'the tool deadline changes and the retry starts');
SELECT results_eq(
	$$SELECT o.state, o.attempts, o.lease_token, o.deadline = dl.deadline FROM lookup('k_deadline') o, dl$$,
	$$VALUES ('in_progress'::operation_state, 2, 2::bigint, true)$$,
	'a retry keeps the deadline fixed at the first claim');
SELECT results_eq(
	$$SELECT (d).action, (d).attempt, (d).reason, (d).retry_at
	  FROM (SELECT fail('k_deadline', token, 'transient', 'pre_execution',
						retry_after => '61 minutes') AS d FROM dl) x$$,
	$$VALUES ('dead'::decision_action, 2, 'deadline_exceeded', NULL::timestamptz)$$,
	'retry_after beyond the deadline: dead deadline_exceeded');
SELECT results_eq(
	$$SELECT state, reason, next_attempt_at FROM lookup('k_deadline')$$,
	$$VALUES ('dead'::operation_state, 'deadline_exceeded', NULL::timestamptz)$$,
	'the operation is dead past its deadline');

SELECT lives_ok($$
	SELECT fail('k_deadline_wait', (claim('k_deadline_wait', '{"n": 1}', 'tap_deadline')).lease_token,
				'transient', 'pre_execution');
	UPDATE operations SET deadline = clock_timestamp() - interval '2 seconds',
		next_attempt_at = clock_timestamp() - interval '1 second'
	WHERE key = 'k_deadline_wait';
$$, 'a retry is scheduled after its deadline');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_deadline_wait', '{"n": 1}', 'tap_deadline')$$,
	$$VALUES ('dead'::outcome, 1, NULL::bigint, 'deadline_exceeded')$$,
	'a due retry scheduled after the deadline is dead instead of executed');
SELECT results_eq(
	$$SELECT state, attempts, reason FROM lookup('k_deadline_wait')$$,
	$$VALUES ('dead'::operation_state, 1, 'deadline_exceeded')$$,
	'and stays dead');

-- an expired lease is an ambiguous failure
CREATE TEMP TABLE exp ON COMMIT DROP AS
SELECT k AS key, t AS tool, (claim(k, '{"n": 1}', t)).lease_token AS token,
	   NULL::timestamptz AS expired_at
FROM (VALUES ('k_exp_zero', 'tap_zero'), ('k_exp_hour', 'tap_hour'), ('k_exp_write', 'tap_write'),
			 ('k_exp_unreg', 'tap_unregistered'), ('k_exp_destr', 'tap_destructive'),
			 ('k_exp_once', 'tap_once')) AS v(k, t);
UPDATE operations o SET lease_expires_at = clock_timestamp() - interval '10 minutes'
FROM exp WHERE o.key = exp.key;
UPDATE exp SET expired_at = o.lease_expires_at FROM operations o WHERE o.key = exp.key;

SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_exp_zero', '{"n": 1}', 'tap_zero')$$,
	$$VALUES ('execute'::outcome, 2, 2::bigint, 'idempotent_retry')$$,
	'expired lease, idempotent tool, retry already due: the claimant executes at once');
SELECT results_eq(
	$$SELECT kind, attempt, failure_class, failure_phase, code, reason, lease_token
	  FROM events WHERE key = 'k_exp_zero' ORDER BY id$$,
	$$VALUES ('retry', 1, 'ambiguous'::failure_class, NULL::failure_phase, 'lease_expired',
			  'idempotent_retry', 1::bigint)$$,
	'the takeover is traced as an ambiguous failure of attempt 1');
SELECT throws_ok(
	$$SELECT fail('k_exp_zero', 1, 'transient', 'pre_execution')$$,
	'AR002', NULL, 'the worker whose lease was taken over cannot fail');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, last_failure_class, last_failure_code FROM lookup('k_exp_zero')$$,
	$$VALUES ('in_progress'::operation_state, 2, 2::bigint, 'ambiguous'::failure_class, 'lease_expired')$$,
	'the refused fail changed nothing');

SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, retry_at = exp.expired_at + interval '1 hour', reason
	  FROM claim('k_exp_hour', '{"n": 1}', 'tap_hour'), exp WHERE exp.key = 'k_exp_hour'$$,
	$$VALUES ('wait'::outcome, 1, NULL::bigint, true, 'idempotent_retry')$$,
	'expired lease, idempotent tool: backoff counted from the expiry');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at = exp.expired_at + interval '1 hour',
			 last_failure_class, last_failure_phase, last_failure_code, reason
	  FROM lookup('k_exp_hour'), exp WHERE exp.key = 'k_exp_hour'$$,
	$$VALUES ('retry_wait'::operation_state, 1, 1::bigint, NULL::timestamptz, true,
			  'ambiguous'::failure_class, NULL::failure_phase, 'lease_expired', 'idempotent_retry')$$,
	'the expired lease is recorded as a failed attempt waiting for its retry');

SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_exp_write', '{"n": 1}', 'tap_write')$$,
	$$VALUES ('verify'::outcome, 1, 2::bigint, 'outcome_unknown')$$,
	'expired lease, non-idempotent tool: the claimant verifies');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, lease_expires_at > clock_timestamp(), reason FROM lookup('k_exp_write')$$,
	$$VALUES ('verify'::operation_state, 1, 2::bigint, true, 'outcome_unknown')$$,
	'the verification lease is live and attempts are unchanged');
SELECT results_eq(
	$$SELECT kind, reason, lease_token FROM events WHERE key = 'k_exp_write' ORDER BY id$$,
	$$VALUES ('verify', 'outcome_unknown', 1::bigint), ('verifying', 'outcome_unknown', 2)$$,
	'the takeover is traced as verify, then the verification lease');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_exp_unreg', '{"n": 1}', 'tap_unregistered')$$,
	$$VALUES ('verify'::outcome, 1, 2::bigint, 'outcome_unknown')$$,
	'expired lease, unregistered tool: the claimant verifies');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason, result FROM claim('k_exp_destr', '{"n": 1}', 'tap_destructive')$$,
	$$VALUES ('dead'::outcome, 1, NULL::bigint, 'review_required',
			  '{"class": "ambiguous", "phase": null, "code": "lease_expired", "message": null,
				"reason": "review_required"}'::jsonb)$$,
	'expired lease, destructive tool: dead review_required');
SELECT results_eq(
	$$SELECT state, attempts, lease_token, lease_expires_at FROM lookup('k_exp_destr')$$,
	$$VALUES ('dead'::operation_state, 1, 1::bigint, NULL::timestamptz)$$,
	'the destructive operation is dead without a lease');
SELECT results_eq(
	$$SELECT outcome, attempt, lease_token, reason FROM claim('k_exp_once', '{"n": 1}', 'tap_once')$$,
	$$VALUES ('dead'::outcome, 1, NULL::bigint, 'attempts_exhausted')$$,
	'expired lease with no attempt left: dead attempts_exhausted');
SELECT results_eq(
	$$SELECT state, reason, next_attempt_at FROM lookup('k_exp_once')$$,
	$$VALUES ('dead'::operation_state, 'attempts_exhausted', NULL::timestamptz)$$,
	'the exhausted operation is dead');

SELECT results_eq(
	$$SELECT kind, count(*) FROM events WHERE key LIKE 'k_exp_%' GROUP BY kind ORDER BY kind$$,
	$$VALUES ('dead', 2::bigint), ('retry', 2), ('verify', 2), ('verifying', 2)$$,
	'each takeover traced exactly once');

SELECT * FROM finish();
ROLLBACK;
