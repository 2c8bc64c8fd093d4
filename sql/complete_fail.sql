--
-- complete() and fail(): recording the outcome of an attempt
--
\set VERBOSITY terse

SELECT name FROM agentretry.register_tool('cf_idem', 'idempotent', 'write',
	max_attempts => 3, base_delay => '10 minutes', max_delay => '1 hour',
	jitter => 'none');
SELECT name FROM agentretry.register_tool('cf_nonidem', 'non_idempotent', 'write',
	max_attempts => 1, deadline => '1 minute');
SELECT name FROM agentretry.register_tool('cf_nonidem_w', 'non_idempotent', 'write');
-- without an approval gate: rule 0 is tested on the first attempt
SELECT name FROM agentretry.register_tool('cf_destr', 'idempotent', 'destructive',
	requires_approval => false);
SELECT name FROM agentretry.register_tool('cf_ttl', 'idempotent', 'read', ttl => '2 days');
SELECT name FROM agentretry.register_tool('cf_deadline', 'idempotent', 'write',
	base_delay => '1 hour', max_delay => '2 hours', jitter => 'none',
	deadline => '30 minutes');
SELECT name FROM agentretry.register_tool('cf_fast', 'idempotent', 'read',
	base_delay => '0', max_delay => '0');

--
-- complete
--
SELECT outcome, lease_token FROM agentretry.claim('cf-ok', '{"amount": 10}');
SELECT agentretry.complete('cf-ok', 1, '{"receipt": "r-1"}',
	compensate_tool => 'refund', compensate_args => '{"receipt": "r-1"}');
SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at, reason,
	result, compensate_tool, compensate_args,
	completed_at = updated_at AS completed_now,
	completed_at <= clock_timestamp() AS completed_past,
	expires_at - completed_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('cf-ok');

-- a second complete, even with the right token, is refused
SELECT expect_error($$SELECT agentretry.complete('cf-ok', 1, '{"receipt": "r-2"}')$$, true);
SELECT result FROM agentretry.lookup('cf-ok');

-- TTL: the tool's, else agentretry.default_ttl
SET agentretry.default_ttl = '1h';
SELECT outcome FROM agentretry.claim('cf-ttl-guc', '{}');
SELECT agentretry.complete('cf-ttl-guc', 1);
SELECT outcome FROM agentretry.claim('cf-ttl-tool', '{}', 'cf_ttl');
SELECT agentretry.complete('cf-ttl-tool', 1);
RESET agentretry.default_ttl;
SELECT key, expires_at - completed_at AS ttl
FROM agentretry.operations WHERE key LIKE 'cf-ttl-%' ORDER BY key;

-- no result: the receipt is NULL and replays as NULL
SELECT outcome FROM agentretry.claim('cf-null', '{}');
SELECT agentretry.complete(key => 'cf-null', lease_token => 1);
SELECT outcome, result FROM agentretry.claim('cf-null', '{}');

-- an expired lease that nobody took over still completes: the work was done
SELECT outcome FROM agentretry.claim('cf-late', '{}');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 hour'
WHERE key = 'cf-late';
SELECT agentretry.complete('cf-late', 1, '"late but done"');
SELECT state, result FROM agentretry.lookup('cf-late');

-- a success reported after fail() scheduled a retry, before anyone took
-- the retry, is still the newest lease's and is accepted
SELECT outcome FROM agentretry.claim('cf-after-fail', '{}', 'cf_idem');
SELECT action FROM agentretry.fail('cf-after-fail', 1, 'transient', 'post_execution');
SELECT agentretry.complete('cf-after-fail', 1, '{"ok": true}');
SELECT state, attempts, result, next_attempt_at FROM agentretry.lookup('cf-after-fail');

-- refused: unknown key, a token never issued, a dead or cancelled operation
SELECT expect_error($$SELECT agentretry.complete('cf-nope', 1)$$, true);
SELECT outcome FROM agentretry.claim('cf-future', '{}');
SELECT expect_error($$SELECT agentretry.complete('cf-future', 2)$$, true);
SELECT state FROM agentretry.lookup('cf-future');
SELECT outcome FROM agentretry.claim('cf-dead', '{}', 'cf_destr');
SELECT action, reason FROM agentretry.fail('cf-dead', 1, 'transient', 'pre_execution');
SELECT expect_error($$SELECT agentretry.complete('cf-dead', 1)$$, true);
SELECT outcome FROM agentretry.claim('cf-cancelled', '{}');
UPDATE agentretry.operations SET state = 'cancelled', lease_expires_at = NULL
WHERE key = 'cf-cancelled';
SELECT expect_error($$SELECT agentretry.complete('cf-cancelled', 1)$$, true);

--
-- fencing: every lease of a key gets a larger token; only the newest acts
--
SELECT outcome, lease_token FROM agentretry.claim('cf-fence', '{}', 'cf_fast');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'cf-fence';
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-fence', '{}', 'cf_fast');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'cf-fence';
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-fence', '{}', 'cf_fast');
SELECT action FROM agentretry.fail('cf-fence', 3, 'transient', 'pre_execution');
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-fence', '{}', 'cf_fast');
-- the superseded holders can record nothing
SELECT expect_error($$SELECT agentretry.complete('cf-fence', 1, '"stale"')$$, true);
SELECT expect_error($$SELECT agentretry.complete('cf-fence', 3, '"stale"')$$, true);
SELECT expect_error($$SELECT agentretry.fail('cf-fence', 2, 'permanent')$$, true);
SELECT expect_error($$SELECT agentretry.complete('cf-fence', 5, '"future"')$$, true);
SELECT state, attempts, lease_token, result FROM agentretry.lookup('cf-fence');
SELECT agentretry.complete('cf-fence', 4, '"fresh"');
SELECT state, attempts, lease_token, result FROM agentretry.lookup('cf-fence');

--
-- fail: the decision rules
--
-- rule 0: a destructive tool is never retried, whatever the failure
SELECT outcome FROM agentretry.claim('cf-r0', '{}', 'cf_destr');
SELECT * FROM agentretry.fail('cf-r0', 1, 'transient', 'pre_execution', 'http_503');
SELECT state, reason, lease_expires_at, next_attempt_at,
	completed_at = updated_at AS completed_now,
	expires_at - updated_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('cf-r0');

-- rule 1: permanent is dead; the tool's TTL applies to dead rows too
SELECT outcome FROM agentretry.claim('cf-r1', '{}', 'cf_ttl');
SELECT * FROM agentretry.fail('cf-r1', 1, 'permanent', 'pre_execution',
	code => 'http_400', message => 'amount must be positive');
SELECT state, reason, last_failure_class, last_failure_phase, last_failure_code,
	last_failure_message, expires_at - updated_at AS ttl
FROM agentretry.lookup('cf-r1');
SELECT outcome, result, reason FROM agentretry.claim('cf-r1', '{}', 'cf_ttl');

-- rule 2: transient before execution retries, even a non-idempotent tool
SELECT outcome FROM agentretry.claim('cf-r2', '{}', 'cf_idem');
SELECT action, attempt, reason FROM agentretry.fail('cf-r2', 1, 'transient', 'pre_execution');
SELECT state, lease_expires_at, reason, next_attempt_at - updated_at AS delay,
	last_delay FROM agentretry.lookup('cf-r2');
SELECT outcome FROM agentretry.claim('cf-r2-nonidem', '{}', 'cf_nonidem_w');
SELECT action, attempt, reason FROM agentretry.fail('cf-r2-nonidem', 1, 'transient', 'pre_execution');

-- rule 3: transient mid / post / unknown phase, or ambiguous: idempotent
-- tools retry with the same key, the others must be verified
SELECT outcome FROM agentretry.claim('cf-r3-mid', '{}', 'cf_idem');
SELECT action, reason FROM agentretry.fail('cf-r3-mid', 1, 'transient', 'mid_execution');
SELECT outcome FROM agentretry.claim('cf-r3-post', '{}', 'cf_idem');
SELECT action, reason FROM agentretry.fail('cf-r3-post', 1, 'transient', 'post_execution');
SELECT outcome FROM agentretry.claim('cf-r3-null', '{}', 'cf_idem');
SELECT action, reason FROM agentretry.fail('cf-r3-null', 1, 'transient');
SELECT outcome FROM agentretry.claim('cf-r3-amb', '{}', 'cf_idem');
SELECT action, reason FROM agentretry.fail('cf-r3-amb', 1, 'ambiguous', 'pre_execution');
SELECT outcome FROM agentretry.claim('cf-r3-v-mid', '{}', 'cf_nonidem');
SELECT * FROM agentretry.fail('cf-r3-v-mid', 1, 'transient', 'mid_execution');
SELECT outcome FROM agentretry.claim('cf-r3-v-null', '{}', 'cf_nonidem');
SELECT * FROM agentretry.fail('cf-r3-v-null', 1, 'transient');
SELECT outcome FROM agentretry.claim('cf-r3-v-amb', '{}', 'cf_nonidem');
SELECT * FROM agentretry.fail('cf-r3-v-amb', 1, 'ambiguous', 'pre_execution');
SELECT outcome FROM agentretry.claim('cf-r3-v-unknown', '{}', 'not_registered');
SELECT * FROM agentretry.fail('cf-r3-v-unknown', 1, 'transient', 'post_execution');
SELECT key, state, attempts, lease_token, lease_expires_at,
	next_attempt_at > clock_timestamp() AS later, reason
FROM agentretry.operations WHERE key LIKE 'cf-r3-%' ORDER BY key;
-- a verification is not an attempt: neither max_attempts (1 here) nor a
-- deadline already past turns it into dead
SELECT outcome FROM agentretry.claim('cf-r3-v-late', '{}', 'cf_nonidem');
UPDATE agentretry.operations SET deadline = clock_timestamp() - interval '1 second'
WHERE key = 'cf-r3-v-late';
SELECT * FROM agentretry.fail('cf-r3-v-late', 1, 'ambiguous', 'post_execution');
-- and a claim of an operation awaiting verification hands out a
-- verification lease, not an attempt
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('cf-r3-v-mid', '{}', 'cf_nonidem');

-- rule 4: attempts used up (max_attempts 3), with exponential backoff
SELECT outcome, attempt FROM agentretry.claim('cf-r4', '{}', 'cf_idem');
SELECT action, attempt, reason FROM agentretry.fail('cf-r4', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() WHERE key = 'cf-r4';
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-r4', '{}', 'cf_idem');
SELECT action, attempt, reason FROM agentretry.fail('cf-r4', 2, 'transient', 'mid_execution');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() WHERE key = 'cf-r4';
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-r4', '{}', 'cf_idem');
SELECT * FROM agentretry.fail('cf-r4', 3, 'transient', 'pre_execution', 'http_503');
SELECT state, attempts, lease_token, reason, next_attempt_at
FROM agentretry.lookup('cf-r4');
-- the unregistered tier (write) allows 2 attempts
SELECT outcome FROM agentretry.claim('cf-r4-tier', '{}');
SELECT action, reason FROM agentretry.fail('cf-r4-tier', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() WHERE key = 'cf-r4-tier';
SELECT outcome, attempt FROM agentretry.claim('cf-r4-tier', '{}');
SELECT action, attempt, reason FROM agentretry.fail('cf-r4-tier', 2, 'transient', 'pre_execution');

-- rule 4: the earliest next attempt (now + retry_after) after the deadline
SELECT outcome FROM agentretry.claim('cf-r4-deadline', '{}', 'cf_deadline');
SELECT * FROM agentretry.fail('cf-r4-deadline', 1, 'transient', 'pre_execution',
	retry_after => '31 minutes');
-- rule 5: a backoff (1 hour) that would end after the deadline is capped
SELECT outcome FROM agentretry.claim('cf-r5-cap', '{}', 'cf_deadline');
SELECT action, reason FROM agentretry.fail('cf-r5-cap', 1, 'transient', 'pre_execution');
SELECT next_attempt_at = deadline AS at_deadline,
	deadline - first_attempt_at = interval '30 minutes' AS deadline_ok
FROM agentretry.lookup('cf-r5-cap');

-- rule 5: retry_after longer than the backoff wins; a shorter one does not
SELECT outcome FROM agentretry.claim('cf-r5-long', '{}', 'cf_idem');
SELECT action FROM agentretry.fail(retry_after => '45 minutes', phase => 'pre_execution',
	failure => 'transient', lease_token => 1, key => 'cf-r5-long');
SELECT outcome FROM agentretry.claim('cf-r5-short', '{}', 'cf_idem');
SELECT action FROM agentretry.fail('cf-r5-short', 1, 'transient', 'pre_execution',
	retry_after => '1 minute');
SELECT key, next_attempt_at - updated_at AS delay
FROM agentretry.operations WHERE key LIKE 'cf-r5-%' AND key <> 'cf-r5-cap' ORDER BY key;
-- the returned retry_at is the stored next_attempt_at
SELECT outcome FROM agentretry.claim('cf-r5-ret', '{}', 'cf_idem');
SELECT retry_at FROM agentretry.fail('cf-r5-ret', 1, 'transient', 'pre_execution') \gset
SELECT next_attempt_at = :'retry_at' AS same FROM agentretry.lookup('cf-r5-ret');

-- fail() is refused while a verification is pending, for a stale token,
-- on a terminal operation and for an unknown key
SELECT expect_error($$SELECT agentretry.fail('cf-r3-v-null', 1, 'permanent')$$);
SELECT expect_error($$SELECT agentretry.fail('cf-r3-v-null', 2, 'permanent')$$);
SELECT expect_error($$SELECT agentretry.fail('cf-ok', 1, 'permanent')$$, true);
SELECT expect_error($$SELECT agentretry.fail('cf-nope', 1, 'permanent')$$, true);

-- every decision is traced, with the failure and the delay chosen
SELECT key, kind, attempt, failure_class, failure_phase, code, message, reason,
	delay, lease_token
FROM agentretry.events WHERE key IN ('cf-r0', 'cf-r1', 'cf-r4', 'cf-r4-deadline',
	'cf-r3-v-amb', 'cf-r5-long')
ORDER BY id;

--
-- pattern A: claim, the effect and complete commit or roll back together
--
CREATE TABLE cf_sent (key text PRIMARY KEY, body text NOT NULL);
BEGIN;
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-pa', '{"to": "ann"}', in_transaction => true);
INSERT INTO cf_sent VALUES ('cf-pa', 'hello ann');
SELECT agentretry.complete('cf-pa', 1, '{"sent": 1}');
COMMIT;
SELECT outcome, result FROM agentretry.claim('cf-pa', '{"to": "ann"}');
SELECT * FROM cf_sent;

-- a rolled-back transaction leaves no operation, no effect and no event
SET agentretry.trace_all = on;
SELECT count(*) AS events_before FROM agentretry.events \gset
BEGIN;
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-pa-rb', '{"to": "bob"}', in_transaction => true);
INSERT INTO cf_sent VALUES ('cf-pa-rb', 'hello bob');
SELECT agentretry.complete('cf-pa-rb', 1, '{"sent": 2}');
SELECT state FROM agentretry.lookup('cf-pa-rb');
ROLLBACK;
RESET agentretry.trace_all;
SELECT expect_error($$SELECT agentretry.lookup('cf-pa-rb')$$);
SELECT count(*) = :events_before AS no_new_events FROM agentretry.events;
SELECT count(*) AS effects FROM cf_sent WHERE key = 'cf-pa-rb';
-- so the next claim starts from scratch
SELECT outcome, attempt, lease_token FROM agentretry.claim('cf-pa-rb', '{"to": "bob"}');

-- a lost lease raises AR002 at complete(), which rolls the effect back
SELECT outcome FROM agentretry.claim('cf-pa-lost', '{}', 'cf_fast');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'cf-pa-lost';
SELECT outcome, lease_token FROM agentretry.claim('cf-pa-lost', '{}', 'cf_fast');
BEGIN;
INSERT INTO cf_sent VALUES ('cf-pa-lost', 'from the old holder');
SELECT agentretry.complete('cf-pa-lost', 1, '"old"');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) AS effects FROM cf_sent WHERE key = 'cf-pa-lost';
SELECT state, lease_token, result FROM agentretry.lookup('cf-pa-lost');

--
-- a tool's policy is merged when a decision is made: re-registering the
-- tool changes what happens to operations already in flight
--
SELECT name FROM agentretry.register_tool('cf_inflight', 'idempotent', 'read',
	max_attempts => 3, base_delay => '0', jitter => 'none');
SELECT outcome, attempt FROM agentretry.claim('cf-inflight', '{}', 'cf_inflight');
SELECT action, reason FROM agentretry.fail('cf-inflight', 1, 'transient', 'pre_execution');
SELECT outcome, attempt FROM agentretry.claim('cf-inflight', '{}', 'cf_inflight');
-- with max_attempts 3 the second failure would be retried; lowered to 2, it is the last
SELECT name, max_attempts FROM agentretry.register_tool('cf_inflight', 'idempotent', 'read',
	max_attempts => 2, base_delay => '0', jitter => 'none');
SELECT action, reason FROM agentretry.fail('cf-inflight', 2, 'transient', 'pre_execution');
SELECT state, attempts, reason FROM agentretry.lookup('cf-inflight');
DELETE FROM agentretry.events WHERE key = 'cf-inflight';
DELETE FROM agentretry.operations WHERE key = 'cf-inflight';
DELETE FROM agentretry.tools WHERE name = 'cf_inflight';
