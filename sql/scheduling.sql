--
-- claim_due(): retry workers lease the retries agentretry scheduled
--
-- Every scenario has a tenant of its own, so that rows left by earlier
-- files (all in tenant default) are never due here.  Due times are set
-- explicitly (UPDATE as superuser) instead of waiting for them.
--
SELECT name FROM agentretry.register_tool('sc_fast', 'idempotent', 'read',
	base_delay => '1 second', max_delay => '1 second', jitter => 'none',
	lease => '45 seconds');
SELECT name FROM agentretry.register_tool('sc_slow', 'idempotent', 'read',
	base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');
SELECT name FROM agentretry.register_tool('sc_nonidem', 'non_idempotent', 'write');
-- without an approval gate: an expired lease is tested on the first attempt
SELECT name FROM agentretry.register_tool('sc_destr', 'idempotent', 'destructive',
	requires_approval => false);
SELECT name FROM agentretry.register_tool('sc_loop', 'idempotent', 'read',
	max_attempts => 3, base_delay => '10 minutes', max_delay => '15 minutes',
	jitter => 'equal');

-- the rows of one tenant, to show what a call changed
CREATE FUNCTION sc_rows(t text)
RETURNS TABLE (key text, tool text, state agentretry.operation_state,
			   attempts integer, lease_token bigint, lease_owner text,
			   leased boolean, due boolean, reason text)
LANGUAGE sql AS $$
	SELECT o.key, o.tool, o.state, o.attempts, o.lease_token, o.lease_owner,
		o.lease_expires_at > clock_timestamp(), o.next_attempt_at <= clock_timestamp(),
		o.reason
	FROM agentretry.operations o WHERE o.tenant = t ORDER BY o.key
$$;

--
-- what is due, and in which order
--
-- Due: sc-a (a third attempt) and sc-c wait for a retry; sc-b and sc-d
-- hold expired leases of an idempotent tool.  sc-i holds an expired lease
-- of a tool whose backoff (1 hour) has not passed since the expiry.
-- Not due: sc-e waits for a retry an hour from now; sc-f holds a live
-- lease; sc-g and sc-h hold expired leases of a non-idempotent and of an
-- unregistered tool, which need a verification, not a retry.
SELECT k, (agentretry.claim(k, jsonb_build_object('k', k), tool, 'sc-order',
	run_id => 'run-' || k, step => 'step-' || k, owner => 'agent-1')).outcome
FROM (VALUES ('sc-a', 'sc_fast'), ('sc-b', 'sc_fast'), ('sc-c', 'sc_fast'),
	('sc-d', 'sc_fast'), ('sc-e', 'sc_fast'), ('sc-f', 'sc_fast'),
	('sc-g', 'sc_nonidem'), ('sc-h', 'sc_unregistered'), ('sc-i', 'sc_slow')) v(k, tool)
ORDER BY k;
SELECT action FROM agentretry.fail('sc-a', 1, 'transient', 'pre_execution', tenant => 'sc-order');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'sc-order' AND key = 'sc-a';
SELECT outcome, attempt, lease_token FROM agentretry.claim('sc-a', '{"k": "sc-a"}', 'sc_fast', 'sc-order',
	owner => 'agent-1');
SELECT action FROM agentretry.fail('sc-a', 2, 'transient', 'pre_execution', tenant => 'sc-order');
SELECT action FROM agentretry.fail('sc-c', 1, 'transient', 'pre_execution', tenant => 'sc-order');
SELECT action FROM agentretry.fail('sc-e', 1, 'transient', 'pre_execution', tenant => 'sc-order');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '5 minutes'
WHERE tenant = 'sc-order' AND key = 'sc-b';
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '4 minutes'
WHERE tenant = 'sc-order' AND key = 'sc-i';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '3 minutes'
WHERE tenant = 'sc-order' AND key = 'sc-a';
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '2 minutes'
WHERE tenant = 'sc-order' AND key = 'sc-d';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sc-order' AND key = 'sc-c';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() + interval '1 hour'
WHERE tenant = 'sc-order' AND key = 'sc-e';
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '10 minutes'
WHERE tenant = 'sc-order' AND key IN ('sc-g', 'sc-h');
SELECT * FROM sc_rows('sc-order');
SELECT lease_expires_at AS sc_i_expired FROM agentretry.lookup('sc-i', 'sc-order') \gset

-- another tenant has a due retry under one of the same keys
SELECT outcome FROM agentretry.claim('sc-a', '{"k": "sc-a"}', 'sc_fast', 'sc-other', owner => 'agent-9');
SELECT action FROM agentretry.fail('sc-a', 1, 'transient', 'pre_execution', tenant => 'sc-other');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 hour'
WHERE tenant = 'sc-other' AND key = 'sc-a';

--
-- bad input: refused before anything is read, while rows are due
--
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', max => 0, tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', max => 1001, tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', max => -1, tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', max => NULL, tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', tools => ARRAY['sc_fast', NULL], tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', tools => ARRAY[NULL::text], tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', lease => '999 milliseconds', tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', lease => '1 day 1 second', tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', lease => '-1 minute', tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', tenant => '')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('w', tenant => repeat('t', 129))$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due('', tenant => 'sc-order')$$, true);
SELECT expect_error($$SELECT * FROM agentretry.claim_due(repeat('o', 129), tenant => 'sc-order')$$, true);
-- the limits themselves are accepted (in a tenant with nothing due)
SELECT count(*) FROM agentretry.claim_due(repeat('o', 128), max => 1000,
	tenant => repeat('u', 128), lease => '1 second');
SELECT count(*) FROM agentretry.claim_due('w', max => 1, tenant => 'sc-none', lease => '1 day');
SELECT * FROM sc_rows('sc-order');

--
-- the first worker takes three, oldest due first
--
SELECT md5(string_agg(o::text, '' ORDER BY o.key)) AS sc_untouched
FROM agentretry.operations o
WHERE o.tenant = 'sc-order' AND o.key IN ('sc-e', 'sc-f', 'sc-g', 'sc-h') \gset
CREATE TABLE sc_got AS
SELECT * FROM agentretry.claim_due('worker-1', max => 3, tenant => 'sc-order')
	WITH ORDINALITY AS d(tenant, key, tool, args, attempt, lease_token, lease_expires_at, run_id, step, n);
SELECT n, tenant, key, tool, args, attempt, lease_token, run_id, step FROM sc_got ORDER BY n;
-- each is leased to the worker under the tool's lease (45 seconds), and
-- the returned expiry is the stored one
SELECT g.key, o.state, o.lease_owner, o.attempts = g.attempt AS attempts_match,
	o.lease_token = g.lease_token AS token_match,
	o.lease_expires_at = g.lease_expires_at AS expiry_match,
	o.lease_expires_at - o.last_attempt_at AS lease, o.next_attempt_at
FROM sc_got g JOIN agentretry.operations o ON o.tenant = g.tenant AND o.key = g.key
ORDER BY g.n;
-- sc-i was decided (an ambiguous failure at its expiry) but is not due
-- yet: it waits until the expiry plus the backoff of 1 hour
SELECT state, attempts, lease_token, lease_expires_at, reason, last_failure_class,
	last_failure_code, next_attempt_at = :'sc_i_expired'::timestamptz + interval '1 hour' AS due_after_backoff
FROM agentretry.lookup('sc-i', 'sc-order');
-- the rows that were not due are exactly as they were
SELECT md5(string_agg(o::text, '' ORDER BY o.key)) = :'sc_untouched' AS untouched
FROM agentretry.operations o
WHERE o.tenant = 'sc-order' AND o.key IN ('sc-e', 'sc-f', 'sc-g', 'sc-h');
-- the expired leases were decided as ambiguous failures, traced with the
-- worker that lost them (the other events are the earlier fail() calls)
SELECT key, kind, attempt, failure_class, failure_phase, code, reason,
	CASE WHEN key <> 'sc-i' THEN delay END AS delay, lease_token, owner
FROM agentretry.events WHERE tenant = 'sc-order' ORDER BY key, id;
-- sc-i's delay is what was left of the backoff at the decision
SELECT key, kind, code, reason, delay = interval '1 hour' - (at - :'sc_i_expired'::timestamptz) AS delay_rest_of_backoff
FROM agentretry.events WHERE tenant = 'sc-order' AND key = 'sc-i';

-- the second worker gets what is left that is due, under the lease it
-- asks for (the results are kept in a table because a statement does not
-- see the changes of the functions it calls)
CREATE TABLE sc_got2 AS
SELECT * FROM agentretry.claim_due('worker-2', tenant => 'sc-order', lease => '90 seconds');
SELECT g.key, g.attempt, g.lease_token, g.run_id, g.step, o.lease_owner,
	o.lease_expires_at = g.lease_expires_at AS expiry_match,
	o.lease_expires_at - o.last_attempt_at AS lease
FROM sc_got2 g JOIN agentretry.operations o ON o.tenant = g.tenant AND o.key = g.key;
-- and a third call finds nothing
SELECT * FROM agentretry.claim_due('worker-3', tenant => 'sc-order');
SELECT * FROM sc_rows('sc-order');

-- the other tenant's due retry was never touched; its own tenant gets it
SELECT * FROM sc_rows('sc-other');
SELECT tenant, key, attempt, lease_token FROM agentretry.claim_due('worker-1', tenant => 'sc-other');

-- tenant defaults to 'default' (narrowed to this file's tool); owner
-- defaults to the caller
SELECT outcome FROM agentretry.claim('sc-default', '{}', 'sc_fast');
SELECT action FROM agentretry.fail('sc-default', 1, 'transient', 'pre_execution');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'default' AND key = 'sc-default';
SELECT tenant, key, attempt, lease_token FROM agentretry.claim_due(NULL, tools => ARRAY['sc_fast']);
SELECT state, lease_owner = current_user AS owner_is_caller FROM agentretry.lookup('sc-default');
SELECT agentretry.complete('sc-default', 2);

--
-- tools: only operations of the listed tools (a retry of an unregistered
-- tool is leased like any other)
--
SELECT k, (agentretry.claim(k, '{}', tool, 'sc-tools')).outcome,
	(agentretry.fail(k, 1, 'transient', 'pre_execution', tenant => 'sc-tools')).action
FROM (VALUES ('sc-t-fast', 'sc_fast'), ('sc-t-slow', 'sc_slow'),
	('sc-t-unreg', 'sc_unregistered')) v(k, tool)
ORDER BY k;
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 minute'
WHERE tenant = 'sc-tools';
SELECT key, tool FROM agentretry.claim_due('w', tools => '{}', tenant => 'sc-tools');
SELECT key, tool FROM agentretry.claim_due('w', tools => ARRAY['sc_nope'], tenant => 'sc-tools');
SELECT key, tool FROM agentretry.claim_due('w', tools => ARRAY['sc_unregistered', 'sc_slow'], tenant => 'sc-tools')
ORDER BY key;
SELECT key, tool FROM agentretry.claim_due('w', tenant => 'sc-tools');
SELECT * FROM sc_rows('sc-tools');

--
-- rows that end without a lease: claim_due decides them as claim would
-- and does not return them
--
-- sc-destr: an expired lease of a destructive tool is dead, never retried
-- sc-late: a retry due before its deadline, but now past the deadline and
--   its grace (agentretry.deadline_grace, 60 s)
-- sc-after: a retry due after its deadline (still within the grace)
-- sc-grace: a retry due before its deadline, past the deadline but within
--   the grace: it may still start
SELECT k, (agentretry.claim(k, '{}', tool, 'sc-dead', owner => 'agent-1')).outcome
FROM (VALUES ('sc-destr', 'sc_destr'), ('sc-late', 'sc_fast'), ('sc-after', 'sc_fast'),
	('sc-grace', 'sc_fast')) v(k, tool)
ORDER BY k;
SELECT k, (agentretry.fail(k, 1, 'transient', 'pre_execution', tenant => 'sc-dead')).action
FROM unnest(ARRAY['sc-late', 'sc-after', 'sc-grace']) k ORDER BY k;
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '3 minutes'
WHERE tenant = 'sc-dead' AND key = 'sc-destr';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '10 minutes',
	deadline = clock_timestamp() - interval '5 minutes'
WHERE tenant = 'sc-dead' AND key = 'sc-late';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '10 seconds',
	deadline = clock_timestamp() - interval '20 seconds'
WHERE tenant = 'sc-dead' AND key = 'sc-after';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '40 seconds',
	deadline = clock_timestamp() - interval '30 seconds'
WHERE tenant = 'sc-dead' AND key = 'sc-grace';
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-1', tenant => 'sc-dead');
SELECT key, state, attempts, lease_token, lease_expires_at > clock_timestamp() AS leased,
	next_attempt_at, reason, last_failure_class, last_failure_code,
	completed_at = updated_at AS completed_now,
	expires_at - completed_at AS ttl
FROM agentretry.operations WHERE tenant = 'sc-dead' ORDER BY key;
SELECT key, kind, attempt, failure_class, code, reason, lease_token, owner
FROM agentretry.events WHERE tenant = 'sc-dead' ORDER BY key, id;
-- claims of them now answer dead, with the reason
SELECT k, (agentretry.claim(k, '{}', tool, 'sc-dead')).outcome,
	(agentretry.claim(k, '{}', tool, 'sc-dead')).reason
FROM (VALUES ('sc-destr', 'sc_destr'), ('sc-late', 'sc_fast'), ('sc-after', 'sc_fast')) v(k, tool)
ORDER BY k;

--
-- the lease: the call's, else the merged policy's (here a tenant override
-- for the tool)
--
SELECT tenant, tool, lease FROM agentretry.set_tenant_policy('sc-lease', 'sc_fast', lease => '2 minutes');
SELECT k, (agentretry.claim(k, '{}', 'sc_fast', 'sc-lease')).outcome
FROM unnest(ARRAY['sc-l-1', 'sc-l-2']) k ORDER BY k;
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 hour'
WHERE tenant = 'sc-lease' AND key = 'sc-l-1';
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '30 minutes'
WHERE tenant = 'sc-lease' AND key = 'sc-l-2';
SELECT key, attempt FROM agentretry.claim_due('w', max => 1, tenant => 'sc-lease');
SELECT key, attempt FROM agentretry.claim_due('w', max => 1, tenant => 'sc-lease', lease => '1 minute');
SELECT key, lease_expires_at - last_attempt_at AS lease
FROM agentretry.operations WHERE tenant = 'sc-lease' ORDER BY key;
SELECT agentretry.drop_tenant_policy('sc-lease', 'sc_fast');

--
-- a worker loop drains a tenant's retries: each operation fails before its
-- effect on attempts 1 and 2 and succeeds on attempt 3 (max_attempts 3)
--
CREATE TABLE sc_backoff (key text, attempt integer, delay interval,
	low interval, high interval, event_delay interval, last_delay interval);

-- Time passes: record the backoff each waiting retry got, then make the
-- retries due, in key order.  sc_loop has equal jitter, base 10 minutes,
-- cap 15 minutes, multiplier 2: after attempt n the delay is between
-- e/2 and e, e = least(15 minutes, 10 minutes * 2^(n-1)).
CREATE FUNCTION sc_time_passes(t text) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO sc_backoff
	SELECT o.key, o.attempts, o.next_attempt_at - o.updated_at,
		least(interval '15 minutes', interval '10 minutes' * 2 ^ (o.attempts - 1)) / 2,
		least(interval '15 minutes', interval '10 minutes' * 2 ^ (o.attempts - 1)),
		(SELECT e.delay FROM agentretry.events e
		 WHERE e.tenant = o.tenant AND e.key = o.key AND e.kind = 'retry'
			AND e.attempt = o.attempts),
		o.last_delay
	FROM agentretry.operations o WHERE o.tenant = t AND o.state = 'retry_wait';
	UPDATE agentretry.operations o SET next_attempt_at = clock_timestamp() - interval '1 minute' * r.n
	FROM (SELECT x.key, row_number() OVER (ORDER BY x.key DESC) AS n
		  FROM agentretry.operations x WHERE x.tenant = t AND x.state = 'retry_wait') r
	WHERE o.tenant = t AND o.key = r.key;
$$;

-- The worker: lease at most two at a time, act, report; when nothing is
-- due, stop if nothing waits, else let time pass.
CREATE FUNCTION sc_worker(me text, t text)
RETURNS TABLE (call integer, key text, attempt integer, lease_token bigint, reported text)
LANGUAGE plpgsql AS $$
DECLARE
	r record;
	got integer;
BEGIN
	call := 0;
	LOOP
		call := call + 1;
		got := 0;
		FOR r IN SELECT * FROM agentretry.claim_due(me, max => 2, tenant => t) LOOP
			got := got + 1;
			key := r.key;
			attempt := r.attempt;
			lease_token := r.lease_token;
			IF r.attempt < 3 THEN
				SELECT d.action || ' ' || d.reason INTO reported
				FROM agentretry.fail(r.key, r.lease_token, 'transient', 'pre_execution',
									 code => 'http_503', tenant => t) d;
			ELSE
				PERFORM agentretry.complete(r.key, r.lease_token,
											jsonb_build_object('attempt', r.attempt), tenant => t);
				reported := 'complete';
			END IF;
			RETURN NEXT;
		END LOOP;
		CONTINUE WHEN got > 0;
		EXIT WHEN NOT EXISTS (SELECT FROM agentretry.operations o
							  WHERE o.tenant = t AND o.state = 'retry_wait');
		PERFORM sc_time_passes(t);
	END LOOP;
END
$$;

-- attempt 1 of each, by the agents themselves
SELECT k, (agentretry.claim(k, jsonb_build_object('n', k), 'sc_loop', 'sc-drain')).outcome,
	(agentretry.fail(k, 1, 'transient', 'pre_execution', tenant => 'sc-drain')).action
FROM unnest(ARRAY['sc-d1', 'sc-d2', 'sc-d3']) k ORDER BY k;
SELECT sc_time_passes('sc-drain');
-- calls 3 and 6 found nothing due: time passed after 3, the loop ended at 6
SELECT * FROM sc_worker('worker-loop', 'sc-drain') ORDER BY call, key;
SELECT key, state, attempts, lease_token, lease_owner, lease_expires_at, next_attempt_at, result
FROM agentretry.operations WHERE tenant = 'sc-drain' ORDER BY key;
-- the backoff after each failed attempt, within the policy's bounds, as
-- stored (next_attempt_at - time of the failure), traced and remembered
SELECT key, attempt, low, high, delay BETWEEN low AND high AS within_bounds,
	event_delay = delay AS traced, last_delay = delay AS remembered
FROM sc_backoff ORDER BY key, attempt;
SELECT key, kind, attempt, reason, code, lease_token
FROM agentretry.events WHERE tenant = 'sc-drain' ORDER BY key, id;
SELECT * FROM agentretry.claim_due('worker-loop', tenant => 'sc-drain');

-- leave nothing behind for the files that follow
DROP FUNCTION sc_worker(text, text), sc_time_passes(text), sc_rows(text);
DROP TABLE sc_got, sc_got2, sc_backoff;
DELETE FROM agentretry.events WHERE tenant LIKE 'sc-%' OR key = 'sc-default';
DELETE FROM agentretry.operations WHERE tenant LIKE 'sc-%' OR key = 'sc-default';
DELETE FROM agentretry.tools WHERE name LIKE 'sc\_%';
