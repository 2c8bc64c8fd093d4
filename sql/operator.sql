--
-- operators: requeue() and cancel() in every state, the views, tenant
-- policies, and scheduling the sweep with pg_cron
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_oper;
RESET client_min_messages;
CREATE ROLE regress_ar_oper IN ROLE agentretry_operator;

SELECT name FROM agentretry.register_tool('op_idem', 'idempotent', 'read',
	max_attempts => 2, base_delay => '1 minute', max_delay => '1 minute',
	jitter => 'none', deadline => '1 hour');
SELECT name FROM agentretry.register_tool('op_nonidem', 'non_idempotent', 'write',
	deadline => '2 hours');
SELECT name FROM agentretry.register_tool('op_plain', 'idempotent', 'read');

-- Everything agentretry stores, tenant policies included
CREATE FUNCTION op_digest() RETURNS text
LANGUAGE sql AS $$
	SELECT data_digest() || coalesce((SELECT md5(string_agg(p::text, E'\n' ORDER BY p.tenant, p.tool))
									  FROM agentretry.tenant_policies p), '')
$$;

-- Runs a statement and says how it ended: 'ok: ' and its single value, or
-- SQLSTATE, message, detail and hint, and whether anything stored changed.
CREATE FUNCTION op_try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := op_digest();
	res text;
	state text;
	msg text;
	det text;
	hnt text;
BEGIN
	BEGIN
		EXECUTE stmt INTO res;
		RETURN 'ok: ' || coalesce(res, 'NULL');
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
	END;
	RETURN state || ': ' || msg
		|| CASE WHEN det <> '' THEN ' / ' || det ELSE '' END
		|| CASE WHEN hnt <> '' THEN ' / hint: ' || hnt ELSE '' END
		|| CASE WHEN op_digest() = before THEN ' (unchanged)' ELSE ' (DATA CHANGED)' END;
END
$$;

-- Brings key k of tenant t into a state through the API, as agents would.
-- Operations that must be verified use op_nonidem, the others op_idem.
CREATE FUNCTION op_make(t text, k text, target text) RETURNS agentretry.operation_state
LANGUAGE plpgsql AS $$
DECLARE
	tool text := CASE WHEN target LIKE 'verify%' THEN 'op_nonidem' ELSE 'op_idem' END;
BEGIN
	PERFORM agentretry.claim(k, '{"to": "ann"}', tool, t, run_id => 'run-1', step => k,
							 owner => 'worker-1');
	CASE target
	WHEN 'in_progress' THEN
		NULL;
	WHEN 'in_progress_expired' THEN
		UPDATE agentretry.operations o SET lease_expires_at = clock_timestamp() - interval '1 minute'
		WHERE o.tenant = t AND o.key = k;
	WHEN 'retry_wait' THEN
		PERFORM agentretry.fail(k, 1, 'transient', 'pre_execution', 'http_503',
								'service unavailable', tenant => t);
	WHEN 'verify', 'verify_leased', 'verify_lease_expired' THEN
		PERFORM agentretry.fail(k, 1, 'ambiguous', 'post_execution', 'timeout', tenant => t);
		IF target <> 'verify' THEN
			PERFORM agentretry.claim(k, '{"to": "ann"}', tool, t, owner => 'verifier-1');
		END IF;
		IF target = 'verify_lease_expired' THEN
			UPDATE agentretry.operations o SET lease_expires_at = clock_timestamp() - interval '1 minute'
			WHERE o.tenant = t AND o.key = k;
		END IF;
	WHEN 'succeeded' THEN
		PERFORM agentretry.complete(k, 1, '{"sent": true}', tenant => t);
	WHEN 'dead' THEN
		PERFORM agentretry.fail(k, 1, 'permanent', 'pre_execution', 'http_400', 'bad address',
								tenant => t);
	WHEN 'cancelled' THEN
		PERFORM agentretry.cancel(k, t, 'no longer needed');
	END CASE;
	RETURN (SELECT o.state FROM agentretry.operations o WHERE o.tenant = t AND o.key = k);
END
$$;

CREATE TABLE op_states (n integer, s text);
INSERT INTO op_states VALUES (1, 'in_progress'), (2, 'in_progress_expired'),
	(3, 'retry_wait'), (4, 'verify'), (5, 'verify_leased'), (6, 'verify_lease_expired'),
	(7, 'succeeded'), (8, 'dead'), (9, 'cancelled');

--
-- requeue, in every state
--
SELECT s, op_make('op', 'rq-' || s, s) FROM op_states ORDER BY n;
CREATE TABLE op_before AS SELECT * FROM agentretry.operations WHERE tenant = 'op';
SELECT s, op_try(format('SELECT agentretry.requeue(%L, %L)', 'rq-' || s, 'op')) AS requeue
FROM op_states ORDER BY n;
-- the requeued operations are due now under a new fencing token, without
-- a lease, with a deadline restarted from now (the tool's: 1 or 2 hours);
-- the attempts and the last failure are kept
SELECT o.key, b.state AS was, o.state, o.attempts, b.lease_token AS old_token,
	o.lease_token, o.lease_owner, o.lease_expires_at, o.next_attempt_at = o.updated_at AS due_now,
	o.deadline - o.updated_at AS deadline_in, o.reason, o.last_failure_class, o.last_failure_code,
	o.completed_at, o.expires_at, o.state_since = o.updated_at AS state_since_now
FROM agentretry.operations o JOIN op_before b USING (tenant, key)
WHERE o.tenant = 'op' AND o.lease_token <> b.lease_token
ORDER BY o.key;
-- the refused ones are as they were
SELECT o.key, o.state, o = b AS unchanged
FROM agentretry.operations o JOIN op_before b USING (tenant, key)
WHERE o.tenant = 'op' AND o.lease_token = b.lease_token
ORDER BY o.key;
-- traced, with the operator as owner
SELECT key, kind, attempt, reason, lease_token,
	CASE WHEN owner = current_user THEN '(caller)' ELSE owner END AS owner
FROM agentretry.events WHERE tenant = 'op' AND kind = 'requeue' ORDER BY key;

-- the verifier of rq-verify_lease_expired held token 2: fenced out
SELECT op_try($$SELECT agentretry.complete('rq-verify_lease_expired', 2, '{"sent": true}', 'op')$$);
SELECT op_try($$SELECT agentretry.resolve('rq-verify_lease_expired', 2, true, tenant => 'op')$$);
SELECT op_try($$SELECT agentretry.heartbeat('rq-verify_lease_expired', 2, tenant => 'op')$$);
-- claim_due leases the requeued operations (and the expired lease of
-- rq-in_progress_expired, an idempotent tool's)
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-2', tenant => 'op') ORDER BY key;
SELECT agentretry.complete('rq-verify_lease_expired', 4, '{"sent": true}', 'op');

-- attempts: kept by default, so an operation that used up max_attempts (2)
-- gets exactly one more; reset_attempts starts the count and the backoff
-- again
SELECT outcome FROM agentretry.claim('rq-exhausted', '{}', 'op_idem', 'op');
SELECT action FROM agentretry.fail('rq-exhausted', 1, 'transient', 'pre_execution', tenant => 'op');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp()
WHERE tenant = 'op' AND key = 'rq-exhausted';
SELECT outcome, attempt FROM agentretry.claim('rq-exhausted', '{}', 'op_idem', 'op');
SELECT action, reason FROM agentretry.fail('rq-exhausted', 2, 'transient', 'pre_execution', tenant => 'op');
SELECT agentretry.requeue('rq-exhausted', 'op');
SELECT state, attempts, lease_token, last_delay FROM agentretry.lookup('rq-exhausted', 'op');
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-2', tenant => 'op');
SELECT action, attempt, reason FROM agentretry.fail('rq-exhausted', 4, 'transient', 'pre_execution', tenant => 'op');
SELECT agentretry.requeue('rq-exhausted', 'op', reset_attempts => true);
SELECT state, attempts, lease_token, last_delay, reason FROM agentretry.lookup('rq-exhausted', 'op');
SELECT outcome, attempt, lease_token FROM agentretry.claim('rq-exhausted', '{}', 'op_idem', 'op');
SELECT action, attempt, reason FROM agentretry.fail('rq-exhausted', 6, 'transient', 'pre_execution', tenant => 'op');
SELECT kind, attempt, reason, lease_token FROM agentretry.events
WHERE tenant = 'op' AND key = 'rq-exhausted' ORDER BY id;

-- the deadline restarts from the merged policy: none for a tool without
-- one (the old deadline goes), the tenant's override where there is one
SELECT outcome FROM agentretry.claim('rq-deadline', '{}', 'op_plain', 'op');
SELECT action FROM agentretry.fail('rq-deadline', 1, 'permanent', tenant => 'op');
UPDATE agentretry.operations SET deadline = clock_timestamp() - interval '1 day'
WHERE tenant = 'op' AND key = 'rq-deadline';
SELECT agentretry.requeue('rq-deadline', 'op');
SELECT state, deadline FROM agentretry.lookup('rq-deadline', 'op');
SELECT tenant, tool, deadline FROM agentretry.set_tenant_policy('op', 'op_plain', deadline => '10 minutes');
SELECT agentretry.cancel('rq-deadline', 'op');
SELECT agentretry.requeue('rq-deadline', 'op');
SELECT state, deadline - updated_at AS deadline_in FROM agentretry.lookup('rq-deadline', 'op');
SELECT agentretry.drop_tenant_policy('op', 'op_plain');

-- as another role: the event names it
SET ROLE regress_ar_oper;
SELECT agentretry.requeue('rq-deadline', 'op', true);
RESET ROLE;
SELECT kind, reason, CASE WHEN owner = current_user THEN '(caller)' ELSE owner END AS owner
FROM agentretry.events WHERE tenant = 'op' AND key = 'rq-deadline' AND kind = 'requeue' ORDER BY id;

-- bad input
SELECT op_try($$SELECT agentretry.requeue('rq-nope', 'op')$$);
SELECT op_try($$SELECT agentretry.requeue('rq-retry_wait', 'op-elsewhere')$$);
SELECT op_try($$SELECT agentretry.requeue('rq-retry_wait')$$);
SELECT op_try($$SELECT agentretry.requeue(NULL, 'op')$$);
SELECT op_try($$SELECT agentretry.requeue('', 'op')$$);
SELECT op_try($$SELECT agentretry.requeue(repeat('k', 513), 'op')$$);
SELECT op_try($$SELECT agentretry.requeue('rq-retry_wait', '')$$);
SELECT op_try($$SELECT agentretry.requeue('rq-retry_wait', repeat('t', 129))$$);
SELECT op_try($$SELECT agentretry.requeue('rq-retry_wait', 'op', NULL)$$);

--
-- cancel, in every state
--
SELECT s, op_make('op', 'cx-' || s, s) FROM op_states ORDER BY n;
DELETE FROM op_before;
INSERT INTO op_before SELECT * FROM agentretry.operations WHERE tenant = 'op' AND key LIKE 'cx-%';
SELECT s, op_try(format('SELECT agentretry.cancel(%L, %L, %L)', 'cx-' || s, 'op',
	CASE WHEN s LIKE 'verify%' THEN 'customer withdrew' END)) AS cancel
FROM op_states ORDER BY n;
-- cancelled: no lease, nothing scheduled, terminal with the default TTL;
-- the token and the attempts are kept
SELECT o.key, b.state AS was, o.state, o.reason, o.attempts = b.attempts AS same_attempts,
	o.lease_token = b.lease_token AS same_token, o.lease_expires_at, o.next_attempt_at,
	o.completed_at = o.updated_at AS completed_now, o.expires_at - o.completed_at AS ttl,
	o.deadline = b.deadline AS same_deadline
FROM agentretry.operations o JOIN op_before b USING (tenant, key)
WHERE o.tenant = 'op' AND o.key LIKE 'cx-%' AND o IS DISTINCT FROM b
ORDER BY o.key;
SELECT o.key, o.state, o = b AS unchanged
FROM agentretry.operations o JOIN op_before b USING (tenant, key)
WHERE o.tenant = 'op' AND o.key IN ('cx-succeeded', 'cx-cancelled')
ORDER BY o.key;
SELECT key, kind, attempt, reason, lease_token,
	CASE WHEN owner = current_user THEN '(caller)' ELSE owner END AS owner
FROM agentretry.events WHERE tenant = 'op' AND key LIKE 'cx-%' AND kind = 'cancel' ORDER BY key, id;

-- claims now answer cancelled, with the reason and the last error
SELECT outcome, attempt, lease_token, result, retry_at, reason
FROM agentretry.claim('cx-retry_wait', '{"to": "ann"}', 'op_idem', 'op');
SELECT outcome, result, reason
FROM agentretry.claim('cx-verify', '{"to": "ann"}', 'op_nonidem', 'op');
-- and claim_due does not take them (cx-in_progress_expired's lease expired)
SELECT key FROM agentretry.claim_due('worker-2', tools => ARRAY['op_idem', 'op_nonidem'], tenant => 'op');
-- the workers that held leases can record nothing
SELECT op_try($$SELECT agentretry.complete('cx-in_progress', 1, '{"sent": true}', 'op')$$);
SELECT op_try($$SELECT agentretry.fail('cx-in_progress', 1, 'transient', tenant => 'op')$$);
SELECT op_try($$SELECT agentretry.complete('cx-verify_leased', 2, '{"sent": true}', 'op')$$);
SELECT op_try($$SELECT agentretry.resolve('cx-verify_leased', 2, true, tenant => 'op')$$);
-- a cancelled operation may be requeued
SELECT agentretry.requeue('cx-in_progress', 'op');
SELECT outcome, attempt, lease_token FROM agentretry.claim('cx-in_progress', '{"to": "ann"}', 'op_idem', 'op');

-- as another role: the event names it
SET ROLE regress_ar_oper;
SELECT agentretry.cancel('cx-in_progress', 'op', 'operator stop');
RESET ROLE;
SELECT kind, reason, CASE WHEN owner = current_user THEN '(caller)' ELSE owner END AS owner
FROM agentretry.events WHERE tenant = 'op' AND key = 'cx-in_progress' AND kind = 'cancel' ORDER BY id;

-- bad input
SELECT op_try($$SELECT agentretry.cancel('cx-nope', 'op')$$);
SELECT op_try($$SELECT agentretry.cancel('cx-dead', 'op-elsewhere')$$);
SELECT op_try($$SELECT agentretry.cancel(NULL, 'op')$$);
SELECT op_try($$SELECT agentretry.cancel('', 'op')$$);
SELECT op_try($$SELECT agentretry.cancel('cx-in_progress', '')$$);
SELECT op_try($$SELECT agentretry.cancel('cx-in_progress', 'op', '')$$);
SELECT op_try($$SELECT agentretry.cancel('cx-in_progress', 'op', repeat('r', 513))$$);
SELECT op_make('op', 'cx-limit', 'in_progress');
SELECT op_try($$SELECT agentretry.cancel('cx-limit', 'op', repeat('r', 512))$$);
SELECT state, octet_length(reason) AS reason_bytes FROM agentretry.lookup('cx-limit', 'op');

--
-- the views
--
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'agentretry'::regnamespace
	AND c.relname IN ('in_flight', 'dead_letters', 'verify_queue') AND a.attnum > 0
ORDER BY c.relname, a.attnum;

SELECT s, op_make('op-view', 'v-' || s, s) FROM op_states ORDER BY n;

-- in_flight: leased and waiting operations
SELECT v.key, v.tool, v.state, v.attempts, v.lease_owner, v.lease_token,
	v.lease_expires_at = o.lease_expires_at AS lease_expires_at, v.lease_expired,
	v.next_attempt_at > clock_timestamp() AS waits, v.deadline = o.deadline AS deadline,
	v.last_failure_class, v.last_failure_phase, v.last_failure_code, v.last_failure_message,
	v.reason, v.first_attempt_at = o.first_attempt_at AS first_attempt_at,
	v.last_attempt_at = o.last_attempt_at AS last_attempt_at, v.since = o.state_since AS since,
	v.run_id, v.step
FROM agentretry.in_flight v JOIN agentretry.operations o USING (tenant, key)
WHERE v.tenant = 'op-view' ORDER BY v.key;
-- dead_letters: what an operator must act on
SELECT v.key, v.tool, v.attempts, v.reason, v.last_failure_class, v.last_failure_phase,
	v.last_failure_code, v.last_failure_message, v.first_attempt_at = o.first_attempt_at AS first_attempt_at,
	v.last_attempt_at = o.last_attempt_at AS last_attempt_at, v.since = o.state_since AS since,
	v.deadline - v.first_attempt_at AS deadline, v.expires_at - v.since AS ttl,
	v.run_id, v.step, v.args
FROM agentretry.dead_letters v JOIN agentretry.operations o USING (tenant, key)
WHERE v.tenant = 'op-view' ORDER BY v.key;
-- verify_queue: the verifier shows only while its lease is live
SELECT v.key, v.tool, v.attempts, v.reason, v.last_failure_class, v.last_failure_phase,
	v.last_failure_code, v.last_failure_message, v.since = o.state_since AS since, v.verifier,
	v.verifier_lease_expires_at = o.lease_expires_at AS verifier_lease_expires_at,
	v.last_attempt_at = o.last_attempt_at AS last_attempt_at, v.run_id, v.step, v.args
FROM agentretry.verify_queue v JOIN agentretry.operations o USING (tenant, key)
WHERE v.tenant = 'op-view' ORDER BY v.key;
-- the operator's actions move rows between the views: a cancelled dead
-- letter is acknowledged, a requeued verification waits for its retry
SELECT agentretry.cancel('v-dead', 'op-view', 'acknowledged');
SELECT agentretry.requeue('v-verify', 'op-view');
SELECT 'in_flight' AS view, key, state::text AS state, reason FROM agentretry.in_flight WHERE tenant = 'op-view'
UNION ALL
SELECT 'dead_letters', key, NULL, reason FROM agentretry.dead_letters WHERE tenant = 'op-view'
UNION ALL
SELECT 'verify_queue', key, NULL, reason FROM agentretry.verify_queue WHERE tenant = 'op-view'
ORDER BY 1, 2;

-- the views are the operator's, not the agent's
SET ROLE regress_ar_oper;
SELECT count(*) > 0 AS readable FROM agentretry.in_flight WHERE tenant = 'op-view';
RESET ROLE;
SELECT v AS view, has_table_privilege('agentretry_operator', v, 'SELECT') AS operator,
	has_table_privilege('agentretry_admin', v, 'SELECT') AS admin,
	has_table_privilege('agentretry_agent', v, 'SELECT') AS agent,
	has_table_privilege('public', v, 'SELECT') AS public
FROM unnest(ARRAY['agentretry.in_flight', 'agentretry.dead_letters', 'agentretry.verify_queue']) v;

--
-- tenant policies: the merge, field by field, and where each value came from
--
SELECT name FROM agentretry.register_tool('op_pol', 'idempotent', 'read',
	max_attempts => 4, lease => '10 seconds');
-- the tool over the tier default (read)
SELECT * FROM agentretry.effective_policy('op-pol', 'op_pol');
-- the tenant's policy for every tool over the tool
SELECT tenant, tool, max_attempts, base_delay, max_delay, multiplier, jitter, deadline,
	lease, ttl, compensate_tool
FROM agentretry.set_tenant_policy('op-pol', NULL, max_attempts => 5, jitter => 'equal',
	deadline => '1 hour', ttl => '2 days');
SELECT * FROM agentretry.effective_policy('op-pol', 'op_pol');
-- the tenant's policy for the tool over that
SELECT tenant, tool, max_attempts, base_delay, max_delay, multiplier, jitter, deadline,
	lease, ttl, compensate_tool
FROM agentretry.set_tenant_policy('op-pol', 'op_pol', max_attempts => 7, max_delay => '1 minute',
	multiplier => 3, lease => '20 seconds', compensate_tool => 'op_undo');
SELECT * FROM agentretry.effective_policy('op-pol', 'op_pol');
-- another tool of the tenant (unregistered: unknown / write) gets only the
-- tenant-wide fields; another tenant gets none
SELECT * FROM agentretry.effective_policy('op-pol', 'op_unregistered');
SELECT * FROM agentretry.effective_policy('op-nopol', 'op_pol');
SELECT tenant, tool, max_attempts, jitter, deadline, lease, ttl, compensate_tool
FROM agentretry.tenant_policies WHERE tenant LIKE 'op%' ORDER BY tenant, tool;

-- a second call replaces the whole row: fields it leaves NULL are no
-- longer overridden
SELECT tenant, tool, max_attempts, base_delay, max_delay, multiplier, jitter, deadline,
	lease, ttl, compensate_tool, updated_at > created_at AS updated
FROM agentretry.set_tenant_policy('op-pol', 'op_pol', base_delay => '3 seconds');
SELECT * FROM agentretry.effective_policy('op-pol', 'op_pol');
-- tool '*' is the same row as NULL
SELECT tenant, tool, max_attempts, jitter, ttl
FROM agentretry.set_tenant_policy('op-pol', '*', max_attempts => 6);
SELECT tenant, tool, max_attempts, base_delay, jitter, deadline, ttl
FROM agentretry.tenant_policies WHERE tenant = 'op-pol' ORDER BY tool;

-- drop: true when there was a row
SELECT agentretry.drop_tenant_policy('op-pol', 'op_pol');
SELECT agentretry.drop_tenant_policy('op-pol', 'op_pol');
SELECT field, value, source FROM agentretry.effective_policy('op-pol', 'op_pol')
WHERE source <> 'default';
SELECT agentretry.drop_tenant_policy('op-pol');
SELECT agentretry.drop_tenant_policy('op-pol', NULL);
SELECT agentretry.drop_tenant_policy('op-nopol', 'op_pol');
SELECT * FROM agentretry.effective_policy('op-pol', 'op_pol');

-- tenant NULL is the default tenant; tool NULL of effective_policy is the
-- tool named 'default'
SELECT tenant, tool, max_attempts FROM agentretry.set_tenant_policy(NULL, 'op_pol', max_attempts => 9);
SELECT field, value, source FROM agentretry.effective_policy(NULL, 'op_pol') WHERE field = 'max_attempts';
SELECT field, value, source FROM agentretry.effective_policy('default', 'op_pol') WHERE field = 'max_attempts';
SELECT agentretry.drop_tenant_policy(NULL, 'op_pol');
SELECT * FROM agentretry.effective_policy();
SELECT (SELECT array_agg(value ORDER BY field) FROM agentretry.effective_policy(tool => NULL))
	= (SELECT array_agg(value ORDER BY field) FROM agentretry.effective_policy('default', 'default')) AS same;

-- every field is validated as register_tool validates it, with the same
-- SQLSTATE, message and detail, and nothing is stored
SELECT f AS field_value,
	try_sql(format('SELECT agentretry.set_tenant_policy(%L, %L, %s)', 'op-v', 'op_pol', f), true)
		AS set_tenant_policy,
	try_sql(format('SELECT agentretry.set_tenant_policy(%L, %L, %s)', 'op-v', 'op_pol', f), true)
		= try_sql(format('SELECT agentretry.register_tool(%L, %L, %L, %s)', 'op_v', 'idempotent', 'read', f), true)
		AS same_as_register_tool
FROM (VALUES (1, $$max_attempts => 0$$), (2, $$base_delay => '-1 second'$$),
	(3, $$base_delay => '101 years'$$), (4, $$max_delay => '-1 second'$$),
	(5, $$max_delay => '101 years'$$), (6, $$base_delay => '2 minutes', max_delay => '1 minute'$$),
	(7, $$multiplier => 0.5$$), (8, $$multiplier => 'NaN'$$), (9, $$multiplier => 'Infinity'$$),
	(10, $$deadline => '0'$$), (11, $$deadline => '-1 minute'$$), (12, $$deadline => '101 years'$$),
	(13, $$lease => '999 milliseconds'$$), (14, $$lease => '1 day 1 second'$$),
	(15, $$ttl => '0'$$), (16, $$ttl => '101 years'$$),
	(17, $$compensate_tool => ''$$), (18, $$compensate_tool => repeat('c', 129)$$)) v(n, f)
ORDER BY n;
SELECT count(*) AS stored FROM agentretry.tenant_policies WHERE tenant = 'op-v';
SELECT count(*) AS stored FROM agentretry.tools WHERE name = 'op_v';
-- the limits themselves are accepted
SELECT tenant, tool, max_attempts, base_delay, max_delay, multiplier, deadline, lease, ttl,
	octet_length(compensate_tool) AS compensate_tool_bytes
FROM agentretry.set_tenant_policy('op-v', 'op_pol', max_attempts => 1, base_delay => '0',
	max_delay => '100 years', multiplier => 1, deadline => '100 years', lease => '1 day',
	ttl => '100 years', compensate_tool => repeat('c', 128));
SELECT tenant, tool, base_delay, max_delay, lease
FROM agentretry.set_tenant_policy('op-v', 'op_pol', base_delay => '100 years', lease => '1 second');
SELECT agentretry.drop_tenant_policy('op-v', 'op_pol');
-- names
SELECT op_try($$SELECT agentretry.set_tenant_policy('', 'op_pol')$$);
SELECT op_try($$SELECT agentretry.set_tenant_policy(repeat('t', 129), 'op_pol')$$);
SELECT op_try($$SELECT agentretry.set_tenant_policy('op-v', '')$$);
SELECT op_try($$SELECT agentretry.set_tenant_policy('op-v', repeat('t', 129))$$);
SELECT op_try($$SELECT agentretry.register_tool('', 'idempotent', 'read')$$);
SELECT op_try($$SELECT agentretry.effective_policy('', 'op_pol')$$);
SELECT op_try($$SELECT agentretry.effective_policy('op-v', '')$$);
SELECT op_try($$SELECT agentretry.effective_policy('op-v', repeat('t', 129))$$);
-- '*' is reserved for "every tool" and cannot be registered
SELECT op_try($$SELECT agentretry.register_tool('*', 'idempotent', 'read')$$);
SELECT count(*) AS stored FROM agentretry.tools WHERE name = '*';
-- ... nor claimed, nor asked about
SELECT op_try($$SELECT agentretry.claim('op-star', '{}', '*', 'op-v')$$);
SELECT count(*) AS stored FROM agentretry.operations WHERE key = 'op-star';
SELECT op_try($$SELECT agentretry.effective_policy('op-v', '*')$$);
-- drop_tenant_policy checks its arguments like set_tenant_policy
SELECT op_try($$SELECT agentretry.drop_tenant_policy('', 'op_pol')$$);
SELECT op_try($$SELECT agentretry.drop_tenant_policy(repeat('t', 129))$$);
SELECT op_try($$SELECT agentretry.drop_tenant_policy('op-v', '')$$);

--
-- the sweep's pg_cron job: pg_cron runs in database postgres
-- (cron.database_name), not in this one, so the hint is the statement to
-- run there
--
SELECT current_setting('cron.database_name') AS cron_database,
	to_regnamespace('cron') IS NULL AS no_cron_here;
SELECT op_try($$SELECT agentretry.schedule_sweep()$$);
SELECT op_try($$SELECT agentretry.schedule_sweep('*/5 * * * *')$$);
SELECT op_try($$SELECT agentretry.schedule_sweep(NULL)$$);
SELECT op_try($$SELECT agentretry.unschedule_sweep()$$);
-- the same answers for an admin that is not a superuser, who may not read
-- cron.database_name itself (pg_read_all_settings): not 42501
CREATE ROLE regress_ar_adm NOSUPERUSER;
GRANT agentretry_admin TO regress_ar_adm;
SET ROLE regress_ar_adm;
SELECT agentretry.schedule_sweep();
SELECT agentretry.unschedule_sweep();
RESET ROLE;
DROP ROLE regress_ar_adm;

-- leave nothing behind for the files that follow
DROP FUNCTION op_make(text, text, text), op_try(text), op_digest();
DROP TABLE op_states, op_before;
DROP ROLE regress_ar_oper;
DELETE FROM agentretry.events WHERE tenant LIKE 'op%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'op%';
DELETE FROM agentretry.tools WHERE name LIKE 'op\_%';
