--
-- bad input: every error has its SQLSTATE and changes nothing
--
-- expect_error() reports "SQLSTATE: message" and whether all of
-- agentretry's tables are exactly as they were before the call.
--
SELECT name FROM agentretry.register_tool('er_nonidem', 'non_idempotent', 'write');

SELECT outcome, lease_token FROM agentretry.claim('er-live', '{"v": 1}');
SELECT outcome FROM agentretry.claim('er-verify', '{}', 'er_nonidem');
SELECT action FROM agentretry.fail('er-verify', 1, 'transient');
SELECT outcome FROM agentretry.claim('er-done', '{}');
SELECT agentretry.complete('er-done', 1, '"ok"');

--
-- keys: required, 1 to 512 bytes
--
SELECT expect_error($$SELECT agentretry.claim(NULL, '{}')$$);
SELECT expect_error($$SELECT agentretry.claim('', '{}')$$, true);
SELECT expect_error($$SELECT agentretry.claim(repeat('k', 513), '{}')$$, true);
-- bytes, not characters: 257 two-byte characters are too many
SELECT expect_error($$SELECT agentretry.claim(repeat('é', 257), '{}')$$, true);
SELECT outcome FROM agentretry.claim(repeat('k', 512), '{}');
SELECT outcome FROM agentretry.claim(repeat('é', 256), '{}');
SELECT expect_error($$SELECT agentretry.complete(NULL, 1)$$);
SELECT expect_error($$SELECT agentretry.complete('', 1)$$);
SELECT expect_error($$SELECT agentretry.fail(NULL, 1, 'transient')$$);
SELECT expect_error($$SELECT agentretry.fail(repeat('k', 513), 1, 'transient')$$);
SELECT expect_error($$SELECT agentretry.resolve(NULL, 1, true)$$);
SELECT expect_error($$SELECT agentretry.resolve('', 1, true)$$);
SELECT expect_error($$SELECT agentretry.heartbeat(NULL, 1)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('', 1)$$);
SELECT expect_error($$SELECT agentretry.release(NULL, 1)$$);
SELECT expect_error($$SELECT agentretry.release(repeat('k', 513), 1)$$);
SELECT expect_error($$SELECT agentretry.lookup(NULL)$$);
SELECT expect_error($$SELECT agentretry.lookup('')$$);

--
-- unknown keys: AR003, for every call that needs an existing operation
--
SELECT expect_error($$SELECT agentretry.complete('er-none', 1)$$, true);
SELECT expect_error($$SELECT agentretry.fail('er-none', 1, 'permanent')$$);
SELECT expect_error($$SELECT agentretry.resolve('er-none', 1, true)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('er-none', 1)$$);
SELECT expect_error($$SELECT agentretry.release('er-none', 1)$$);
SELECT expect_error($$SELECT agentretry.lookup('er-none')$$);
-- keys live in a tenant: another tenant does not see them
SELECT expect_error($$SELECT agentretry.complete('er-live', 1, tenant => 'other')$$, true);
SELECT expect_error($$SELECT agentretry.lookup('er-live', 'other')$$);

--
-- claim
--
SELECT expect_error($$SELECT agentretry.claim('er-new', NULL)$$);
SELECT expect_error($$SELECT agentretry.claim('er-live', '{"v": 2}')$$);
SELECT expect_error($$SELECT agentretry.claim('er-live', '{"v": 1}', 'er_nonidem')$$);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', tool => '')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', tool => repeat('t', 129))$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', tenant => '')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', tenant => repeat('t', 129))$$);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', owner => '')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', owner => repeat('o', 129))$$);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', run_id => '')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', run_id => repeat('r', 513))$$);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', step => '')$$);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', step => repeat('s', 513))$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', lease => '999 milliseconds')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', lease => '1 day 1 second')$$, true);
SELECT expect_error($$SELECT agentretry.claim('er-new', '{}', lease => '-5 minutes')$$, true);
-- the limits themselves are accepted
SELECT outcome FROM agentretry.claim('er-lim-1', '{}', tool => repeat('t', 128),
	tenant => repeat('t', 128), owner => repeat('o', 128), run_id => repeat('r', 512),
	step => repeat('s', 512), lease => '1 second');
SELECT outcome FROM agentretry.claim('er-lim-2', '{}', lease => '1 day');
SELECT key, extract(epoch FROM lease_expires_at - last_attempt_at) AS lease_secs
FROM agentretry.operations WHERE key LIKE 'er-lim-%' ORDER BY key;
SELECT count(*) AS er_new_rows FROM agentretry.operations WHERE key = 'er-new';

--
-- payloads: at most agentretry.max_payload bytes (lowered here so the
-- test stays small); the size is that of the jsonb value
--
SET agentretry.max_payload = 1024;
SELECT pg_column_size(to_jsonb(repeat('x', 1012))) AS at_limit,
	pg_column_size(to_jsonb(repeat('x', 1013))) AS over_limit;
SELECT expect_error($$SELECT agentretry.claim('er-big', to_jsonb(repeat('x', 1013)))$$, true);
SELECT outcome FROM agentretry.claim('er-big', to_jsonb(repeat('x', 1012)));
SELECT expect_error($$SELECT agentretry.complete('er-big', 1, to_jsonb(repeat('x', 1013)))$$, true);
SELECT expect_error($$SELECT agentretry.complete('er-big', 1, compensate_args => to_jsonb(repeat('x', 1013)))$$, true);
SELECT expect_error($$SELECT agentretry.fail('er-big', 1, 'transient', message => repeat('m', 1025))$$, true);
SELECT expect_error($$SELECT agentretry.resolve('er-verify', 1, true, to_jsonb(repeat('x', 1013)))$$, true);
SELECT state FROM agentretry.lookup('er-big');
SELECT agentretry.complete('er-big', 1, to_jsonb(repeat('x', 1012)),
	compensate_args => to_jsonb(repeat('x', 1012)));
SELECT state, octet_length(result #>> '{}') AS result_chars FROM agentretry.lookup('er-big');
SELECT outcome FROM agentretry.claim('er-msg', '{}');
SELECT action FROM agentretry.fail('er-msg', 1, 'permanent', message => repeat('m', 1024));
SELECT octet_length(last_failure_message) AS message_bytes FROM agentretry.lookup('er-msg');
RESET agentretry.max_payload;
-- the limit has a floor, and only a superuser may change it (see security)
SELECT try_sql($$SET agentretry.max_payload = 1023$$);
SELECT try_sql($$SET agentretry.default_lease = 0$$);
SELECT try_sql($$SET agentretry.default_lease = '2 days'$$);
SELECT try_sql($$SET agentretry.no_such_setting = 1$$);

--
-- complete
--
SELECT expect_error($$SELECT agentretry.complete('er-live', NULL)$$);
SELECT expect_error($$SELECT agentretry.complete('er-live', 1, tenant => '')$$);
SELECT expect_error($$SELECT agentretry.complete('er-live', 1, compensate_tool => '')$$);
SELECT expect_error($$SELECT agentretry.complete('er-live', 1, compensate_tool => repeat('c', 129))$$, true);
SELECT expect_error($$SELECT agentretry.complete('er-live', 2)$$);
SELECT expect_error($$SELECT agentretry.complete('er-done', 1)$$);

--
-- fail
--
SELECT expect_error($$SELECT agentretry.fail('er-live', NULL, 'transient')$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, NULL)$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'flaky')$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'transient', 'during')$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'transient', code => '')$$, true);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'transient', code => repeat('c', 129))$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'transient', retry_after => '-1 second')$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 1, 'transient', tenant => '')$$);
SELECT expect_error($$SELECT agentretry.fail('er-live', 0, 'transient')$$);
SELECT expect_error($$SELECT agentretry.fail('er-done', 1, 'transient')$$);
SELECT expect_error($$SELECT agentretry.fail('er-verify', 1, 'transient')$$, true);
-- retry_after of zero is allowed
SELECT outcome FROM agentretry.claim('er-zero', '{}', 'er_nonidem');
SELECT action, reason FROM agentretry.fail('er-zero', 1, 'transient', 'pre_execution',
	retry_after => '0');

--
-- resolve
--
SELECT expect_error($$SELECT agentretry.resolve('er-verify', NULL, true)$$);
SELECT expect_error($$SELECT agentretry.resolve('er-verify', 1, NULL)$$);
SELECT expect_error($$SELECT agentretry.resolve('er-verify', 1, true, tenant => '')$$);
SELECT expect_error($$SELECT agentretry.resolve('er-verify', 2, true)$$);
SELECT expect_error($$SELECT agentretry.resolve('er-live', 1, true)$$, true);
SELECT expect_error($$SELECT agentretry.resolve('er-done', 1, true)$$);

--
-- heartbeat and release
--
SELECT expect_error($$SELECT agentretry.heartbeat('er-live', NULL)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('er-live', 1, '0.5 seconds')$$, true);
SELECT expect_error($$SELECT agentretry.heartbeat('er-live', 1, '25 hours')$$, true);
SELECT expect_error($$SELECT agentretry.heartbeat('er-live', 1, tenant => '')$$);
SELECT expect_error($$SELECT agentretry.heartbeat('er-live', 2)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('er-done', 1)$$);
SELECT expect_error($$SELECT agentretry.heartbeat('er-verify', 1)$$, true);
SELECT expect_error($$SELECT agentretry.release('er-live', NULL)$$);
SELECT expect_error($$SELECT agentretry.release('er-live', 1, tenant => '')$$);
SELECT expect_error($$SELECT agentretry.release('er-live', 2)$$);
SELECT expect_error($$SELECT agentretry.release('er-done', 1)$$);
SELECT expect_error($$SELECT agentretry.release('er-verify', 1)$$);

-- after all of the above the live operation is exactly as it was claimed
SELECT state, attempts, lease_token, result, last_failure_class, reason,
	lease_expires_at > clock_timestamp() AS live, updated_at = created_at AS untouched
FROM agentretry.lookup('er-live');

--
-- op_hash
--
SELECT expect_error($$SELECT agentretry.op_hash('{}', '{{a}, {b}}')$$);
SELECT agentretry.op_hash(NULL) IS NULL AS null_args;

--
-- backoff
--
SELECT expect_error($$SELECT agentretry.backoff(0, '1s', '10s')$$, true);
SELECT expect_error($$SELECT agentretry.backoff(1, '-1s', '10s')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '-10s')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', previous => '-1s')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', 0.5)$$, true);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', 'NaN')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', 'Infinity')$$);
SELECT expect_error($$SELECT agentretry.backoff(NULL, '1s', '10s')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, NULL, '10s')$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', NULL)$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', NULL)$$);
SELECT expect_error($$SELECT agentretry.backoff(1, '1s', '10s', jitter => NULL)$$);

--
-- decide
--
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 0, 3)$$, true);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, 0)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, 3, '-1s')$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, 3, retry_after => '-1s')$$);
SELECT expect_error($$SELECT agentretry.decide(NULL, NULL, 'idempotent', 'write', 1, 3)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, NULL, 'write', 1, 3)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', NULL, 1, 3)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', NULL, 3)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, NULL)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, 3, NULL)$$);
SELECT expect_error($$SELECT agentretry.decide('transient', NULL, 'idempotent', 'write', 1, 3, now => NULL)$$);

--
-- register_tool
--
SELECT expect_error($$SELECT agentretry.register_tool(NULL, 'idempotent', 'write')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', NULL, 'write')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', NULL)$$);
SELECT expect_error($$SELECT agentretry.register_tool('', 'idempotent', 'write')$$);
SELECT expect_error($$SELECT agentretry.register_tool(repeat('t', 129), 'idempotent', 'write')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', max_attempts => 0)$$, true);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', base_delay => '-1s')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', max_delay => '-1s')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', base_delay => '10s', max_delay => '1s')$$, true);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', multiplier => 0.9)$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', multiplier => 'NaN')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', multiplier => 'Infinity')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', deadline => '0')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', lease => '0.5s')$$, true);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', lease => '2 days')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'idempotent', 'write', ttl => '0')$$);
SELECT expect_error($$SELECT agentretry.register_tool('er_t', 'never', 'write')$$);
SELECT count(*) AS er_t_rows FROM agentretry.tools WHERE name = 'er_t';
-- a bad re-registration leaves the registered tool as it was
SELECT expect_error($$SELECT agentretry.register_tool('er_nonidem', 'idempotent', 'read', max_attempts => -1)$$);
SELECT idempotency, side_effect, max_attempts FROM agentretry.tools WHERE name = 'er_nonidem';

--
-- edge cases of the pure functions and bounds (found in review)
--
-- interval lengths that saturate int64 still give a delay within [0, cap]
SELECT agentretry.backoff(1, '2000000000 days', '2000000000 days', 1, 'none') >= interval '0'
	AS huge_delay_not_negative;
SELECT agentretry.backoff(1, '1 second', '30 seconds', 2, 'decorrelated', '2000000000 days')
	BETWEEN interval '1 second' AND interval '30 seconds' AS huge_previous_within_bounds;
-- base 0: zero whatever the attempt (no NaN turned into the cap)
SELECT agentretry.backoff(2000, '0', '1 hour', 2, 'none') AS zero_base_large_attempt;
-- a deadline of -infinity has passed; infinity never comes
SELECT action, reason FROM agentretry.decide('transient', 'pre_execution', 'idempotent', 'read',
	1, 6, deadline => '-infinity', now => '2026-01-01 00:00:00+00');
SELECT action, reason FROM agentretry.decide('transient', 'pre_execution', 'idempotent', 'read',
	1, 6, deadline => 'infinity', now => '2026-01-01 00:00:00+00');
SELECT expect_error($$SELECT agentretry.decide('transient', 'pre_execution', 'idempotent', 'read',
	1, 6, now => 'infinity')$$);
-- tool intervals are bounded so now + interval cannot overflow
SELECT expect_error($$SELECT agentretry.register_tool('err_ttl', 'idempotent', 'read', ttl => '101 years')$$);
SELECT expect_error($$SELECT agentretry.register_tool('err_deadline', 'idempotent', 'read', deadline => '101 years')$$);
SELECT expect_error($$SELECT agentretry.register_tool('err_base', 'idempotent', 'read', base_delay => '101 years')$$);
SELECT (agentretry.register_tool('err_ttl_ok', 'idempotent', 'read', ttl => '100 years')).ttl;
SELECT outcome FROM agentretry.claim('err-ttl-ok', '{}', 'err_ttl_ok');
SELECT agentretry.complete('err-ttl-ok', 1);
SELECT state, expires_at > clock_timestamp() + interval '99 years' AS far_expiry
FROM agentretry.lookup('err-ttl-ok');
-- a superseded verifier is told its lease was lost, whatever state followed
SELECT outcome, lease_token FROM agentretry.claim('err-verifier', '{}', 'err_unknown_tool');
SELECT action FROM agentretry.fail('err-verifier', 1, 'ambiguous');
SELECT outcome, lease_token FROM agentretry.claim('err-verifier', '{}', 'err_unknown_tool');
SELECT agentretry.resolve('err-verifier', 2, false);
SELECT expect_error($$SELECT agentretry.resolve('err-verifier', 1, true)$$);
SELECT expect_error($$SELECT agentretry.resolve('err-verifier', 2, true)$$);
DELETE FROM agentretry.events WHERE key IN ('err-ttl-ok', 'err-verifier');
DELETE FROM agentretry.operations WHERE key IN ('err-ttl-ok', 'err-verifier');
DELETE FROM agentretry.tools WHERE name = 'err_ttl_ok';
