--
-- resolve(), heartbeat() and release()
--
SELECT name FROM agentretry.register_tool('rl_nonidem', 'non_idempotent', 'write',
	max_attempts => 3, base_delay => '10 minutes', max_delay => '1 hour',
	jitter => 'none', lease => '30 seconds');
SELECT name FROM agentretry.register_tool('rl_once', 'non_idempotent', 'write',
	max_attempts => 1);
SELECT name FROM agentretry.register_tool('rl_switch', 'unknown', 'write');
SELECT name FROM agentretry.register_tool('rl_idem', 'idempotent', 'write',
	lease => '20 seconds');
SELECT name FROM agentretry.register_tool('rl_slow', 'idempotent', 'write',
	base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');

--
-- resolve: the verification found the action done
--
SELECT outcome, lease_token FROM agentretry.claim('rl-yes', '{"pay": 5}', 'rl_nonidem');
SELECT action, reason FROM agentretry.fail('rl-yes', 1, 'transient', 'mid_execution',
	code => 'timeout');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rl-yes', '{"pay": 5}', 'rl_nonidem');
SELECT agentretry.resolve('rl-yes', 2, true, '{"payment": "p-7"}');
SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at, reason,
	result, completed_at = updated_at AS completed_now,
	expires_at - completed_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('rl-yes');
SELECT outcome, attempt, result, reason FROM agentretry.claim('rl-yes', '{"pay": 5}', 'rl_nonidem');

-- the token that fail() left is still the newest: it may resolve directly
SELECT outcome FROM agentretry.claim('rl-direct', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-direct', 1, 'ambiguous');
SELECT agentretry.resolve(key => 'rl-direct', lease_token => 1, executed => true);
SELECT state, lease_token, result, reason FROM agentretry.lookup('rl-direct');

-- so may an expired verification lease that nobody took over
SELECT outcome FROM agentretry.claim('rl-exp', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-exp', 1, 'transient');
SELECT outcome, lease_token FROM agentretry.claim('rl-exp', '{}', 'rl_nonidem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-exp';
SELECT agentretry.resolve('rl-exp', 2, true);

--
-- resolve: the verification found the action not done
--
SELECT outcome FROM agentretry.claim('rl-no', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-no', 1, 'transient', 'post_execution');
SELECT outcome, lease_token FROM agentretry.claim('rl-no', '{}', 'rl_nonidem');
SELECT agentretry.resolve('rl-no', 2, false);
-- due at once, as a failure before execution
SELECT state, attempts, lease_token, lease_expires_at, reason,
	next_attempt_at = updated_at AS due_now, last_failure_class,
	last_failure_phase, last_failure_code
FROM agentretry.lookup('rl-no');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rl-no', '{}', 'rl_nonidem');

-- no retry left: dead, attempts_exhausted
SELECT outcome FROM agentretry.claim('rl-once', '{}', 'rl_once');
SELECT action, reason FROM agentretry.fail('rl-once', 1, 'transient', 'mid_execution');
SELECT agentretry.resolve('rl-once', 1, false);
SELECT outcome, attempt, result, reason FROM agentretry.claim('rl-once', '{}', 'rl_once');

-- the deadline passed during the verification: dead, deadline_exceeded
SELECT outcome FROM agentretry.claim('rl-late', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-late', 1, 'ambiguous');
UPDATE agentretry.operations SET deadline = clock_timestamp() - interval '1 second'
WHERE key = 'rl-late';
SELECT agentretry.resolve('rl-late', 1, false);
SELECT state, reason, next_attempt_at, expires_at - updated_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('rl-late');

-- the tool became destructive meanwhile (policies apply to operations in
-- flight): never retried automatically
SELECT outcome FROM agentretry.claim('rl-switch', '{}', 'rl_switch');
SELECT action FROM agentretry.fail('rl-switch', 1, 'transient', 'mid_execution');
SELECT name, side_effect FROM agentretry.register_tool('rl_switch', 'unknown', 'destructive');
SELECT agentretry.resolve('rl-switch', 1, false);
SELECT state, reason FROM agentretry.lookup('rl-switch');

-- refused: not awaiting verification, stale token, unknown key
SELECT outcome FROM agentretry.claim('rl-busy', '{}', 'rl_nonidem');
SELECT expect_error($$SELECT agentretry.resolve('rl-busy', 1, true)$$);
SELECT expect_error($$SELECT agentretry.resolve('rl-yes', 2, true)$$, true);
SELECT expect_error($$SELECT agentretry.resolve('rl-no', 3, false)$$);
SELECT outcome FROM agentretry.claim('rl-stale', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-stale', 1, 'transient');
SELECT outcome, lease_token FROM agentretry.claim('rl-stale', '{}', 'rl_nonidem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-stale';
SELECT outcome, lease_token FROM agentretry.claim('rl-stale', '{}', 'rl_nonidem');
SELECT expect_error($$SELECT agentretry.resolve('rl-stale', 2, true)$$, true);
SELECT expect_error($$SELECT agentretry.resolve('rl-stale', 1, false)$$, true);
SELECT expect_error($$SELECT agentretry.resolve('rl-nope', 1, true)$$, true);
SELECT state, lease_token, result FROM agentretry.lookup('rl-stale');

-- resolve is always traced
SELECT key, kind, attempt, failure_class, failure_phase, code, reason, delay,
	lease_token
FROM agentretry.events WHERE key IN ('rl-yes', 'rl-no', 'rl-once', 'rl-switch')
ORDER BY id;

--
-- heartbeat
--
SELECT outcome FROM agentretry.claim('rl-hb', '{}', 'rl_idem');
-- default extension: the tool's lease
SELECT agentretry.heartbeat('rl-hb', 1) AS new_expiry \gset
SELECT lease_expires_at = :'new_expiry' AS stored,
	extract(epoch FROM lease_expires_at - updated_at) AS lease_secs,
	state, attempts, lease_token
FROM agentretry.lookup('rl-hb');
SELECT agentretry.heartbeat(key => 'rl-hb', lease_token => 1, extend => '1 hour') AS new_expiry \gset
SELECT lease_expires_at = :'new_expiry' AS stored,
	extract(epoch FROM lease_expires_at - updated_at) AS lease_secs
FROM agentretry.lookup('rl-hb');
-- an expired lease nobody took over can still be extended
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-hb';
SELECT agentretry.heartbeat('rl-hb', 1, '1 minute') > clock_timestamp() AS extended;
SELECT outcome FROM agentretry.claim('rl-hb', '{}', 'rl_idem');
SELECT agentretry.complete('rl-hb', 1, '"done"');
SELECT expect_error($$SELECT agentretry.heartbeat('rl-hb', 1)$$, true);

-- a verification lease is extended the same way and stays a verification
SELECT outcome FROM agentretry.claim('rl-hb-verify', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-hb-verify', 1, 'transient');
SELECT outcome, lease_token FROM agentretry.claim('rl-hb-verify', '{}', 'rl_nonidem');
SELECT agentretry.heartbeat('rl-hb-verify', 2, '2 minutes') IS NOT NULL AS extended;
SELECT state, attempts, lease_token,
	extract(epoch FROM lease_expires_at - updated_at) AS lease_secs
FROM agentretry.lookup('rl-hb-verify');

-- a lease taken over, or decided as failed by another claimant, is lost
SELECT outcome FROM agentretry.claim('rl-hb-lost', '{}', 'rl_nonidem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-hb-lost';
SELECT outcome, lease_token FROM agentretry.claim('rl-hb-lost', '{}', 'rl_nonidem');
SELECT expect_error($$SELECT agentretry.heartbeat('rl-hb-lost', 1)$$, true);
SELECT outcome FROM agentretry.claim('rl-hb-wait', '{}', 'rl_slow');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-hb-wait';
SELECT outcome, lease_token, reason FROM agentretry.claim('rl-hb-wait', '{}', 'rl_slow');
SELECT expect_error($$SELECT agentretry.heartbeat('rl-hb-wait', 1)$$, true);
SELECT expect_error($$SELECT agentretry.heartbeat('rl-hb-nope', 1)$$);

--
-- release
--
SELECT outcome, attempt, lease_token FROM agentretry.claim('rl-rel', '{}', 'rl_idem');
SELECT agentretry.release('rl-rel', 1);
-- the attempt does not count and the operation is due at once
SELECT state, attempts, lease_token, lease_expires_at, reason,
	next_attempt_at = updated_at AS due_now
FROM agentretry.lookup('rl-rel');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rl-rel', '{}', 'rl_idem');
-- the old token is dead, and a lease can be released only once
SELECT expect_error($$SELECT agentretry.release('rl-rel', 1)$$, true);
SELECT agentretry.release(key => 'rl-rel', lease_token => 2);
SELECT expect_error($$SELECT agentretry.release('rl-rel', 2)$$, true);
SELECT outcome, attempt, lease_token FROM agentretry.claim('rl-rel', '{}', 'rl_idem');
SELECT agentretry.complete('rl-rel', 3);
SELECT expect_error($$SELECT agentretry.release('rl-rel', 3)$$, true);
SELECT state, attempts, lease_token FROM agentretry.lookup('rl-rel');

-- releasing a later attempt gives that attempt back only
SELECT outcome FROM agentretry.claim('rl-rel2', '{}', 'rl_slow');
SELECT action FROM agentretry.fail('rl-rel2', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() WHERE key = 'rl-rel2';
SELECT outcome, attempt, lease_token FROM agentretry.claim('rl-rel2', '{}', 'rl_slow');
SELECT agentretry.release('rl-rel2', 2);
SELECT state, attempts FROM agentretry.lookup('rl-rel2');
SELECT outcome, attempt, lease_token FROM agentretry.claim('rl-rel2', '{}', 'rl_slow');

-- an expired lease nobody took over can still be released
SELECT outcome FROM agentretry.claim('rl-rel-exp', '{}', 'rl_idem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'rl-rel-exp';
SELECT agentretry.release('rl-rel-exp', 1);
SELECT state, attempts, reason FROM agentretry.lookup('rl-rel-exp');

-- a verification lease released: still awaiting verification, no lease
SELECT outcome FROM agentretry.claim('rl-rel-verify', '{}', 'rl_nonidem');
SELECT action FROM agentretry.fail('rl-rel-verify', 1, 'transient');
SELECT outcome, lease_token FROM agentretry.claim('rl-rel-verify', '{}', 'rl_nonidem');
SELECT agentretry.release('rl-rel-verify', 2);
SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at, reason
FROM agentretry.lookup('rl-rel-verify');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rl-rel-verify', '{}', 'rl_nonidem');

SELECT expect_error($$SELECT agentretry.release('rl-rel-nope', 1)$$);

-- release is traced only with trace_all
SELECT count(*) AS release_events FROM agentretry.events WHERE kind = 'release';
SET agentretry.trace_all = on;
SELECT outcome FROM agentretry.claim('rl-rel-trace', '{}', 'rl_idem');
SELECT agentretry.release('rl-rel-trace', 1);
RESET agentretry.trace_all;
SELECT kind, attempt, reason, lease_token FROM agentretry.events
WHERE key = 'rl-rel-trace' ORDER BY id;
