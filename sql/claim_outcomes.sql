--
-- claim(): every outcome, what it stores, and what it traces
--
-- Time passes by moving lease_expires_at / next_attempt_at into the past;
-- nothing here sleeps.  Timestamps are only ever compared, never printed.
--

SELECT name FROM agentretry.register_tool('co_idem', 'idempotent', 'write',
	max_attempts => 3, base_delay => '10 minutes', max_delay => '1 hour',
	jitter => 'none', lease => '17 seconds');
SELECT name FROM agentretry.register_tool('co_fast', 'idempotent', 'read',
	base_delay => '0', max_delay => '0');
SELECT name FROM agentretry.register_tool('co_nonidem', 'non_idempotent', 'write',
	lease => '45 seconds');
-- without an approval gate: the expired-lease rules of the tier are tested here
SELECT name FROM agentretry.register_tool('co_destr', 'idempotent', 'destructive',
	requires_approval => false);
SELECT name FROM agentretry.register_tool('co_once', 'idempotent', 'write',
	max_attempts => 1);
SELECT name FROM agentretry.register_tool('co_deadline', 'idempotent', 'write',
	jitter => 'none', base_delay => '0', max_delay => '0', deadline => '1 hour');

-- execute: a new key; attempt 1, token 1, nothing else
SELECT outcome, attempt, lease_token, result, retry_at, reason
FROM agentretry.claim('co-new', '{"to": "ann", "n": 1}');

-- the row: leased to the calling role, default tool and tenant, GUC lease
SELECT tenant, key, tool, state, attempts, lease_token,
	lease_owner = current_user AS owner_is_caller, args,
	op_hash = agentretry.op_hash('{"n": 1, "to": "ann"}') AS op_hash_ok,
	extract(epoch FROM lease_expires_at - last_attempt_at) AS lease_secs,
	first_attempt_at = last_attempt_at AS first_is_last,
	created_at = last_attempt_at AS created_now,
	lease_expires_at > clock_timestamp() AS live,
	next_attempt_at, deadline, reason, result, run_id, step,
	completed_at, expires_at
FROM agentretry.lookup('co-new');

-- busy: same key, same args in another key order; retry_at is the lease
-- expiry, no lease is handed out and nothing is written
SELECT data_digest() AS digest \gset
SELECT c.outcome, c.attempt, c.lease_token, c.lease_expires_at, c.result,
	c.retry_at = o.lease_expires_at AS retry_at_is_expiry, c.reason
FROM agentretry.claim('co-new', '{"n": 1.0, "to": "ann"}') c,
	agentretry.lookup('co-new') o;
SELECT data_digest() = :'digest' AS unchanged;

-- the same key with other args, or another tool, is refused
SELECT expect_error($$SELECT agentretry.claim('co-new', '{"to": "bob", "n": 1}')$$);
SELECT expect_error($$SELECT agentretry.claim('co-new', '{"to": "ann", "n": 1}', 'co_idem')$$, true);

-- replay: after complete the stored receipt comes back, nothing is written
SELECT agentretry.complete('co-new', 1, '{"id": 42}');
SELECT data_digest() AS digest \gset
SELECT outcome, attempt, lease_token, lease_expires_at, result, retry_at, reason
FROM agentretry.claim('co-new', '{"to": "ann", "n": 1}');
SELECT data_digest() = :'digest' AS unchanged;

-- a key is per tenant: the same key elsewhere is a different operation
SELECT outcome, attempt, lease_token
FROM agentretry.claim('co-new', '{"other": true}', tenant => 'acme');
SELECT tenant, state, args FROM agentretry.operations WHERE key = 'co-new' ORDER BY tenant;
-- an explicit 'default' tenant is the same as none
SELECT outcome, result FROM agentretry.claim('co-new', '{"to": "ann", "n": 1}', tenant => 'default');

-- named arguments in any order; run_id, step and owner are stored
SELECT outcome, attempt, lease_token
FROM agentretry.claim(owner => 'worker-7', step => 'send', run_id => 'run-1',
	args => '{"x": [1, 2]}', key => 'co-named', tool => 'co_idem');
SELECT tool, lease_owner, run_id, step,
	extract(epoch FROM lease_expires_at - last_attempt_at) AS lease_secs
FROM agentretry.lookup(key => 'co-named');

--
-- the lease: argument, else the tool's, else agentretry.default_lease
--
SELECT outcome FROM agentretry.claim('co-lease-arg', '{}', 'co_idem', lease => '42 seconds');
SELECT outcome FROM agentretry.claim('co-lease-tool', '{}', 'co_idem');
SET agentretry.default_lease = '123s';
SELECT outcome FROM agentretry.claim('co-lease-guc', '{}');
SELECT outcome FROM agentretry.claim('co-lease-guc-tool', '{}', 'co_idem');
RESET agentretry.default_lease;
SELECT key, extract(epoch FROM lease_expires_at - last_attempt_at) AS lease_secs
FROM agentretry.operations WHERE key LIKE 'co-lease-%' ORDER BY key;
-- the returned expiry is the stored one
SELECT lease_expires_at AS expiry FROM agentretry.claim('co-lease-ret', '{}', lease => '1 hour') \gset
SELECT lease_expires_at = :'expiry' AS same_expiry FROM agentretry.lookup('co-lease-ret');

--
-- wait, then execute: a retry scheduled by fail() is not due yet
--
SELECT outcome, lease_token FROM agentretry.claim('co-wait', '{}', 'co_idem');
SELECT action, attempt, reason, retry_at > clock_timestamp() AS later
FROM agentretry.fail('co-wait', 1, 'transient', 'pre_execution', code => 'http_503');
SELECT data_digest() AS digest \gset
SELECT c.outcome, c.attempt, c.lease_token, c.lease_expires_at, c.result,
	c.retry_at = o.next_attempt_at AS retry_at_is_next_attempt, c.reason
FROM agentretry.claim('co-wait', '{}', 'co_idem') c, agentretry.lookup('co-wait') o;
SELECT data_digest() = :'digest' AS unchanged;
-- once due: execute attempt 2 with the next token and the reason of the
-- decision that scheduled it
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-wait';
SELECT outcome, attempt, lease_token, reason,
	lease_expires_at > clock_timestamp() AS live
FROM agentretry.claim('co-wait', '{}', 'co_idem');
SELECT state, attempts, lease_token, next_attempt_at,
	extract(epoch FROM lease_expires_at - last_attempt_at) AS lease_secs,
	first_attempt_at < last_attempt_at AS first_kept
FROM agentretry.lookup('co-wait');

--
-- expired execution leases are ambiguous failures, decided as of the expiry
--
-- idempotent tool, backoff already over: the claimant executes at once
SELECT outcome FROM agentretry.claim('co-exp-fast', '{}', 'co_fast');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-fast';
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('co-exp-fast', '{}', 'co_fast');
SELECT state, attempts, lease_token, last_failure_class, last_failure_phase,
	last_failure_code, reason
FROM agentretry.lookup('co-exp-fast');

-- idempotent tool, backoff not over: wait until expiry + backoff exactly
SELECT outcome FROM agentretry.claim('co-exp-wait', '{}', 'co_idem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '2 minutes'
WHERE key = 'co-exp-wait'
RETURNING lease_expires_at AS expired_at \gset
SELECT outcome, attempt, lease_token, lease_expires_at, reason,
	retry_at = :'expired_at'::timestamptz + interval '10 minutes' AS backoff_from_expiry
FROM agentretry.claim('co-exp-wait', '{}', 'co_idem');
SELECT state, attempts, lease_token, lease_expires_at, last_failure_class,
	last_failure_code, reason,
	next_attempt_at = :'expired_at'::timestamptz + interval '10 minutes' AS next_ok
FROM agentretry.lookup('co-exp-wait');

-- non-idempotent tool: verify, with a verification lease (token + 1,
-- attempts unchanged)
SELECT outcome FROM agentretry.claim('co-exp-verify', '{}', 'co_nonidem');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-verify';
SELECT outcome, attempt, lease_token, result, retry_at, reason,
	lease_expires_at > clock_timestamp() AS leased
FROM agentretry.claim('co-exp-verify', '{}', 'co_nonidem', owner => 'checker');
SELECT state, attempts, lease_token, lease_owner, reason,
	extract(epoch FROM lease_expires_at - updated_at) AS lease_secs
FROM agentretry.lookup('co-exp-verify');

-- busy while the verification lease lives; nothing written
SELECT data_digest() AS digest \gset
SELECT c.outcome, c.lease_token, c.retry_at = o.lease_expires_at AS retry_at_is_expiry
FROM agentretry.claim('co-exp-verify', '{}', 'co_nonidem') c,
	agentretry.lookup('co-exp-verify') o;
SELECT data_digest() = :'digest' AS unchanged;

-- verify state with an expired verification lease: a new one, token + 1
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-verify';
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('co-exp-verify', '{}', 'co_nonidem', lease => '5 seconds');
SELECT state, attempts, lease_token,
	extract(epoch FROM lease_expires_at - updated_at) AS lease_secs
FROM agentretry.lookup('co-exp-verify');

-- an unregistered tool is unknown / write: verify as well
SELECT outcome FROM agentretry.claim('co-exp-unknown', '{}', 'never_registered');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-unknown';
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('co-exp-unknown', '{}', 'never_registered');

-- destructive tool: dead, review_required; result holds the last error
SELECT outcome FROM agentretry.claim('co-exp-destr', '{}', 'co_destr');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-destr';
SELECT outcome, attempt, lease_token, lease_expires_at, result, retry_at, reason
FROM agentretry.claim('co-exp-destr', '{}', 'co_destr');
SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at, reason,
	expires_at - updated_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('co-exp-destr');

-- the deadline passed while the lease was out: dead, deadline_exceeded
SELECT outcome FROM agentretry.claim('co-exp-deadline', '{}', 'co_deadline');
UPDATE agentretry.operations
SET lease_expires_at = clock_timestamp() - interval '1 second',
	deadline = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-deadline';
SELECT outcome, attempt, lease_token, result, reason
FROM agentretry.claim('co-exp-deadline', '{}', 'co_deadline');

-- attempts used up: dead, attempts_exhausted
SELECT outcome FROM agentretry.claim('co-exp-once', '{}', 'co_once');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-exp-once';
SELECT outcome, attempt, lease_token, result, reason
FROM agentretry.claim('co-exp-once', '{}', 'co_once');

-- dead is terminal: later claims read it and write nothing
SELECT data_digest() AS digest \gset
SELECT outcome, attempt, lease_token, lease_expires_at, result, retry_at, reason
FROM agentretry.claim('co-exp-once', '{}', 'co_once');
SELECT data_digest() = :'digest' AS unchanged;

--
-- deadline: fixed at the first claim; a retry scheduled after it is dead
--
SELECT outcome FROM agentretry.claim('co-deadline', '{}', 'co_deadline');
SELECT deadline - first_attempt_at = interval '1 hour' AS deadline_from_first_claim
FROM agentretry.lookup('co-deadline');
SELECT action, reason FROM agentretry.fail('co-deadline', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations
SET deadline = clock_timestamp() - interval '2 seconds',
	next_attempt_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-deadline';
SELECT outcome, attempt, lease_token, result, reason
FROM agentretry.claim('co-deadline', '{}', 'co_deadline');
SELECT state, attempts, reason, next_attempt_at, lease_expires_at,
	expires_at - updated_at = interval '7 days' AS ttl_default
FROM agentretry.lookup('co-deadline');

--
-- a retry that fail() capped at the deadline may still start when its
-- claimant arrives after it: the deadline was judged when it was scheduled
--
SELECT name FROM agentretry.register_tool('co_capped', 'idempotent', 'read',
	base_delay => '10 seconds', max_delay => '10 seconds', jitter => 'none',
	deadline => '1 hour');
SELECT outcome FROM agentretry.claim('co-capped', '{}', 'co_capped');
UPDATE agentretry.operations SET deadline = clock_timestamp() + interval '5 seconds'
WHERE key = 'co-capped';
SELECT action, reason, retry_at = (SELECT deadline FROM agentretry.operations WHERE key = 'co-capped')
	AS capped_at_deadline
FROM agentretry.fail('co-capped', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations
SET deadline = clock_timestamp() - interval '1 second', next_attempt_at = clock_timestamp() - interval '1 second'
WHERE key = 'co-capped';
SELECT outcome, attempt, lease_token, reason
FROM agentretry.claim('co-capped', '{}', 'co_capped');
DELETE FROM agentretry.events WHERE key = 'co-capped';
DELETE FROM agentretry.operations WHERE key = 'co-capped';
DELETE FROM agentretry.tools WHERE name = 'co_capped';

--
-- cancelled (set directly: there is no operator call for it yet)
--
SELECT outcome FROM agentretry.claim('co-cancel', '{}', 'co_idem');
SELECT action FROM agentretry.fail('co-cancel', 1, 'transient', 'mid_execution',
	code => 'timeout', message => 'no answer in 30 s');
UPDATE agentretry.operations
SET state = 'cancelled', reason = 'operator_cancelled', next_attempt_at = NULL
WHERE key = 'co-cancel';
SELECT data_digest() AS digest \gset
SELECT outcome, attempt, lease_token, lease_expires_at, result, retry_at, reason
FROM agentretry.claim('co-cancel', '{}', 'co_idem');
SELECT data_digest() = :'digest' AS unchanged;

--
-- the trace: decisions are always recorded, claims only with trace_all
--
SELECT key, kind, attempt, failure_class, failure_phase, code, reason,
	lease_token,
	CASE WHEN owner = current_user THEN '(caller)' ELSE owner END AS owner, delay
FROM agentretry.events
WHERE key IN ('co-exp-fast', 'co-exp-verify', 'co-exp-unknown', 'co-exp-destr',
	'co-exp-once', 'co-exp-deadline', 'co-deadline', 'co-wait')
ORDER BY id;
SELECT count(*) AS claim_events FROM agentretry.events WHERE kind IN ('claim', 'replay');

SET agentretry.trace_all = on;
SELECT outcome FROM agentretry.claim('co-trace', '{}', run_id => 'run-t', step => 's1');
SELECT outcome FROM agentretry.claim('co-trace', '{}');
SELECT agentretry.complete('co-trace', 1);
SELECT outcome, result FROM agentretry.claim('co-trace', '{}');
RESET agentretry.trace_all;
SELECT outcome FROM agentretry.claim('co-trace', '{}');
SELECT kind, attempt, reason, lease_token, owner = current_user AS by_caller,
	run_id, step, tool,
	at <= clock_timestamp() AS at_past
FROM agentretry.events WHERE key = 'co-trace' ORDER BY id;
