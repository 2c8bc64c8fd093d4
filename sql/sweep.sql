--
-- sweep(): expired leases decided, retries past their deadline
-- dead-lettered, terminal rows purged by TTL and events by retention, each
-- step bounded by max
--
-- The sweep acts on the whole database, so its counts are exact only when
-- it sees nothing but this file's rows.  The file runs in one transaction
-- that first removes what earlier files left and is rolled back at the
-- end, which also means that the sweep's NOTIFY (sent at commit) is never
-- sent here: test/isolation/specs/sweep_notify.spec covers it.
--
BEGIN;
DO $$
BEGIN
	DELETE FROM agentretry.events;
	DELETE FROM agentretry.operations;
	DELETE FROM agentretry.tenant_policies;
	DELETE FROM agentretry.token_floors;
	DELETE FROM agentretry.run_context;
	DELETE FROM agentretry.runs;
END
$$;

SELECT name FROM agentretry.register_tool('sw_idem', 'idempotent', 'read',
	base_delay => '1 second', max_delay => '1 second', jitter => 'none');
SELECT name FROM agentretry.register_tool('sw_slow', 'idempotent', 'read',
	base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');
SELECT name FROM agentretry.register_tool('sw_once', 'idempotent', 'read', max_attempts => 1);
SELECT name FROM agentretry.register_tool('sw_nonidem', 'non_idempotent', 'write');
-- without an approval gate: the sweep's rule 0 is tested on the first attempt
SELECT name FROM agentretry.register_tool('sw_destr', 'idempotent', 'destructive',
	requires_approval => false);

-- the rows of one tenant, to show what a sweep changed
CREATE FUNCTION sw_rows(t text)
RETURNS TABLE (key text, tool text, state agentretry.operation_state,
			   attempts integer, lease_token bigint, leased boolean, due boolean,
			   reason text, failure agentretry.failure_class, code text,
			   ttl interval)
LANGUAGE sql AS $$
	SELECT o.key, o.tool, o.state, o.attempts, o.lease_token,
		o.lease_expires_at > clock_timestamp(), o.next_attempt_at <= clock_timestamp(),
		o.reason, o.last_failure_class, o.last_failure_code, o.expires_at - o.completed_at
	FROM agentretry.operations o WHERE o.tenant = t ORDER BY o.key
$$;

--
-- nothing to do
--
SELECT * FROM agentretry.sweep();

--
-- expired leases, of every kind of tool, decided as ambiguous failures
--
-- sw-idem: idempotent, backoff (1 s) over since the expiry -> due retry
-- sw-slow: idempotent, backoff (1 h) not over -> retry later
-- sw-once: idempotent, max_attempts 1 -> dead, attempts exhausted
-- sw-nonidem, sw-unknown: non-idempotent, unregistered -> verify
-- sw-destr: destructive -> dead, review required
-- sw-live: a live lease -> untouched
-- and in another tenant, sw-idem again: the sweep covers every tenant
SELECT k, (agentretry.claim(k, '{}', tool, 'sw', owner => 'agent-1', in_transaction => true)).outcome
FROM (VALUES ('sw-idem', 'sw_idem'), ('sw-slow', 'sw_slow'), ('sw-once', 'sw_once'),
	('sw-nonidem', 'sw_nonidem'), ('sw-unknown', 'sw_unregistered'),
	('sw-destr', 'sw_destr'), ('sw-live', 'sw_idem')) v(k, tool)
ORDER BY k;
SELECT outcome FROM agentretry.claim('sw-idem', '{}', 'sw_idem', 'sw-b', owner => 'agent-2', in_transaction => true);
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '10 minutes'
WHERE key <> 'sw-live' AND key <> 'sw-slow';
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 minute'
WHERE key = 'sw-slow';
SELECT lease_expires_at AS sw_slow_expired FROM agentretry.lookup('sw-slow', 'sw') \gset

-- bad input first, while there is work to do: nothing changes
SELECT expect_error($$SELECT agentretry.sweep(0)$$, true);
SELECT expect_error($$SELECT agentretry.sweep(100001)$$, true);
SELECT expect_error($$SELECT agentretry.sweep(-1)$$, true);
SELECT expect_error($$SELECT agentretry.sweep(NULL)$$, true);
SELECT expect_error($$SELECT agentretry.sweep(max => NULL)$$, true);
SELECT * FROM sw_rows('sw');

SELECT * FROM agentretry.sweep(max => 100000);
SELECT * FROM sw_rows('sw');
SELECT * FROM sw_rows('sw-b');
SELECT next_attempt_at = :'sw_slow_expired'::timestamptz + interval '1 hour' AS due_after_backoff
FROM agentretry.lookup('sw-slow', 'sw');
-- the decisions are traced as failures of the worker that held the lease
SELECT tenant, key, kind, attempt, failure_class, failure_phase, code, reason,
	lease_token, owner
FROM agentretry.events ORDER BY tenant, key, id;
-- the verifications are for a claim of the key to hand out: claim_due
-- takes the due retry and none of them
SELECT key, tool, reason, verifier FROM agentretry.verify_queue ORDER BY key;
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker', tenant => 'sw', in_transaction => true);
-- a second sweep finds nothing new; the other tenant's retry is still due
SELECT * FROM agentretry.sweep();

--
-- retries waiting past their deadline, with agentretry.deadline_grace
--
-- sw-dl-old: due 3 minutes ago, deadline 2 minutes ago
-- sw-dl-recent: due 40 seconds ago, deadline 30 seconds ago
-- sw-dl-none: due an hour ago, no deadline: never dead-lettered for it
-- sw-dl-beyond: due 5 seconds ago, after its deadline 10 seconds ago (a
--   release after the deadline): late whatever the grace, as for a claim
SELECT k, (agentretry.claim(k, '{}', 'sw_idem', 'sw', in_transaction => true)).outcome,
	(agentretry.fail(k, 1, 'transient', 'pre_execution', tenant => 'sw')).action
FROM unnest(ARRAY['sw-dl-old', 'sw-dl-recent', 'sw-dl-none', 'sw-dl-beyond']) k ORDER BY k;
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '5 seconds',
	deadline = clock_timestamp() - interval '10 seconds'
WHERE tenant = 'sw' AND key = 'sw-dl-beyond';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '3 minutes',
	deadline = clock_timestamp() - interval '2 minutes'
WHERE tenant = 'sw' AND key = 'sw-dl-old';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '40 seconds',
	deadline = clock_timestamp() - interval '30 seconds'
WHERE tenant = 'sw' AND key = 'sw-dl-recent';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 hour'
WHERE tenant = 'sw' AND key = 'sw-dl-none';

-- with a grace of an hour, only sw-dl-beyond (due after its deadline) is late
SET agentretry.deadline_grace = '1h';
SELECT * FROM agentretry.sweep();
-- with the default of a minute, sw-dl-old is
RESET agentretry.deadline_grace;
SHOW agentretry.deadline_grace;
SELECT * FROM agentretry.sweep();
-- with 10 seconds, sw-dl-recent too
SET agentretry.deadline_grace = '10s';
SELECT * FROM agentretry.sweep();
-- with none, nothing more: sw-dl-none has no deadline
SET agentretry.deadline_grace = 0;
SELECT * FROM agentretry.sweep();
RESET agentretry.deadline_grace;
SELECT try_sql($$SET agentretry.deadline_grace = '86401s'$$);
SELECT try_sql($$SET agentretry.deadline_grace = '-1s'$$);
SELECT key, state, reason, lease_expires_at, next_attempt_at <= clock_timestamp() AS due,
	completed_at = updated_at AS completed_now, expires_at - completed_at AS ttl
FROM agentretry.operations WHERE tenant = 'sw' AND key LIKE 'sw-dl-%' ORDER BY key;
SELECT key, kind, attempt, failure_class, reason
FROM agentretry.events WHERE tenant = 'sw' AND key LIKE 'sw-dl-%' AND kind = 'dead'
ORDER BY key, id;

--
-- terminal rows past their TTL are purged, and only those
--
-- sw-p-succeeded, sw-p-dead, sw-p-cancelled expired; sw-p-later expires in a
-- minute; sw-p-fresh has the default TTL of 7 days; sw-p-waiting is not
-- terminal and has no expiry
SELECT outcome, lease_token FROM agentretry.claim('sw-p-succeeded', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT agentretry.complete('sw-p-succeeded', 1, tenant => 'sw-ttl');
SELECT outcome FROM agentretry.claim('sw-p-dead', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT action FROM agentretry.fail('sw-p-dead', 1, 'transient', 'pre_execution', tenant => 'sw-ttl');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'sw-ttl' AND key = 'sw-p-dead';
SELECT outcome, lease_token FROM agentretry.claim('sw-p-dead', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT action, reason FROM agentretry.fail('sw-p-dead', 2, 'permanent', tenant => 'sw-ttl');
SELECT outcome FROM agentretry.claim('sw-p-cancelled', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT agentretry.cancel('sw-p-cancelled', 'sw-ttl');
SELECT outcome FROM agentretry.claim('sw-p-later', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT agentretry.complete('sw-p-later', 1, tenant => 'sw-ttl');
SELECT outcome FROM agentretry.claim('sw-p-fresh', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT agentretry.complete('sw-p-fresh', 1, tenant => 'sw-ttl');
SELECT outcome FROM agentretry.claim('sw-p-waiting', '{}', 'sw_slow', 'sw-ttl', in_transaction => true);
SELECT action FROM agentretry.fail('sw-p-waiting', 1, 'transient', 'pre_execution', tenant => 'sw-ttl');
UPDATE agentretry.operations SET expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'sw-ttl' AND key = 'sw-p-succeeded';
UPDATE agentretry.operations SET expires_at = clock_timestamp() - interval '1 day'
WHERE tenant = 'sw-ttl' AND key = 'sw-p-dead';
UPDATE agentretry.operations SET expires_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sw-ttl' AND key = 'sw-p-cancelled';
UPDATE agentretry.operations SET expires_at = clock_timestamp() + interval '1 minute'
WHERE tenant = 'sw-ttl' AND key = 'sw-p-later';
SELECT key, state, expires_at <= clock_timestamp() AS expired FROM agentretry.operations
WHERE tenant = 'sw-ttl' ORDER BY key;

SELECT * FROM agentretry.sweep();
SELECT key, state FROM agentretry.operations WHERE tenant = 'sw-ttl' ORDER BY key;
-- the other tenants' terminal rows (all within their TTL) are all kept
SELECT tenant, state, count(*) FROM agentretry.operations
WHERE tenant <> 'sw-ttl' AND expires_at IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2;
-- the purged rows' highest fencing token is the tenant's floor: a key used
-- again starts above it, so a worker of the purged operation holding token
-- 2 cannot act on the new one
SELECT tenant, max(floor) AS floor FROM agentretry.token_floors GROUP BY tenant ORDER BY tenant;
SELECT outcome, attempt, lease_token FROM agentretry.claim('sw-p-succeeded', '{}', 'sw_idem', 'sw-ttl', in_transaction => true);
SELECT expect_error($$SELECT agentretry.complete('sw-p-succeeded', 2, tenant => 'sw-ttl')$$, true);
SELECT agentretry.complete('sw-p-succeeded', 3, tenant => 'sw-ttl');
SELECT * FROM agentretry.sweep();

--
-- events older than agentretry.event_retention are purged
--
SELECT count(*) AS events FROM agentretry.events;
UPDATE agentretry.events SET at = clock_timestamp() - interval '2 hours'
WHERE tenant = 'sw' AND kind = 'verify';
UPDATE agentretry.events SET at = clock_timestamp() - interval '59 minutes'
WHERE tenant = 'sw' AND kind = 'dead' AND key = 'sw-dl-old';
-- with the default retention (30 days) nothing is old enough
SELECT * FROM agentretry.sweep();
SET agentretry.event_retention = '1h';
SELECT * FROM agentretry.sweep();
RESET agentretry.event_retention;
SELECT count(*) AS events FROM agentretry.events;
SELECT key, kind FROM agentretry.events
WHERE tenant = 'sw' AND (kind = 'verify' OR key = 'sw-dl-old') ORDER BY key, id;

--
-- max bounds every step; more says a step stopped at max
--
SELECT k, (agentretry.claim(k, '{}', 'sw_nonidem', 'sw-max', in_transaction => true)).outcome
FROM unnest(ARRAY['sw-m-1', 'sw-m-2', 'sw-m-3']) k ORDER BY k;
SELECT k, (agentretry.claim(k, '{}', 'sw_idem', 'sw-max', in_transaction => true)).outcome
FROM unnest(ARRAY['sw-m-4', 'sw-m-5', 'sw-m-6']) k ORDER BY k;
SELECT k, (agentretry.cancel(k, 'sw-max'))
FROM unnest(ARRAY['sw-m-4', 'sw-m-5', 'sw-m-6']) k ORDER BY k;
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sw-max' AND state = 'in_progress';
UPDATE agentretry.operations SET expires_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sw-max' AND state = 'cancelled';
SELECT * FROM agentretry.sweep(2);
SELECT * FROM agentretry.sweep(2);
SELECT state, count(*) FROM agentretry.operations WHERE tenant = 'sw-max' GROUP BY 1 ORDER BY 1;
-- a step that stops exactly at max says more; the next call finds nothing
SELECT k, (agentretry.claim(k, '{}', 'sw_nonidem', 'sw-max', in_transaction => true)).outcome
FROM unnest(ARRAY['sw-m-7', 'sw-m-8']) k ORDER BY k;
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sw-max' AND state = 'in_progress';
SELECT * FROM agentretry.sweep(2);
SELECT * FROM agentretry.sweep(2);
-- due_retries counts every tenant's due retries, not only max of them
SELECT count(*) AS due FROM agentretry.operations
WHERE state = 'retry_wait' AND next_attempt_at <= clock_timestamp();
SELECT due_retries FROM agentretry.sweep(1);

--
-- tenant policies reach the TTL of terminal rows, the lease of a claim and
-- the decisions the sweep makes
--
SELECT tenant, tool, lease, ttl FROM agentretry.set_tenant_policy('sw-pol', NULL,
	lease => '40 seconds', ttl => '2 days');
SELECT tenant, tool, max_attempts, ttl FROM agentretry.set_tenant_policy('sw-pol', 'sw_idem',
	max_attempts => 1, ttl => '3 days');
SELECT t, k, (agentretry.claim(k, '{}', tool, t, in_transaction => true)).outcome
FROM (VALUES ('sw-pol', 'sw-pol-nonidem', 'sw_nonidem'), ('sw-pol', 'sw-pol-idem', 'sw_idem'),
	('sw-pol', 'sw-pol-destr', 'sw_destr'), ('sw-pol', 'sw-pol-expired', 'sw_idem'),
	('sw-nopol', 'sw-pol-nonidem', 'sw_nonidem'), ('sw-nopol', 'sw-pol-idem', 'sw_idem'),
	('sw-nopol', 'sw-pol-expired', 'sw_idem')) v(t, k, tool)
ORDER BY t, k;
-- the lease: the tenant's 40 seconds (no tenant_tool lease), else the default
SELECT tenant, key, lease_expires_at - last_attempt_at AS lease
FROM agentretry.operations WHERE tenant IN ('sw-pol', 'sw-nopol') ORDER BY tenant, key;
-- completions: the tenant_tool TTL (3 days) over the tenant's (2 days)
SELECT agentretry.complete('sw-pol-nonidem', 1, tenant => 'sw-pol');
SELECT agentretry.complete('sw-pol-idem', 1, tenant => 'sw-pol');
SELECT agentretry.complete('sw-pol-nonidem', 1, tenant => 'sw-nopol');
SELECT agentretry.complete('sw-pol-idem', 1, tenant => 'sw-nopol');
-- a dead-letter by fail()
SELECT action, reason FROM agentretry.fail('sw-pol-destr', 1, 'transient', 'pre_execution', tenant => 'sw-pol');
-- and an expired lease decided by the sweep: max_attempts 1 for the tenant
-- makes it dead where the other tenant retries
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 minute'
WHERE key = 'sw-pol-expired';
SELECT * FROM agentretry.sweep();
SELECT tenant, key, state, reason, completed_at = updated_at AS completed_now,
	expires_at - completed_at AS ttl
FROM agentretry.operations WHERE tenant IN ('sw-pol', 'sw-nopol') ORDER BY tenant, key;

ROLLBACK;
