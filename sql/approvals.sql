--
-- approval gates: a tool whose policy requires approval (by default every
-- destructive tool) waits in awaiting_approval until approve() or reject()
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_ap_agent, regress_ar_ap_oper;
RESET client_min_messages;
CREATE ROLE regress_ar_ap_agent IN ROLE agentretry_agent;
CREATE ROLE regress_ar_ap_oper IN ROLE agentretry_operator;

SELECT name, side_effect, requires_approval FROM agentretry.register_tool('ap_delete',
	'idempotent', 'destructive', deadline => '1 hour');
SELECT name, side_effect, requires_approval FROM agentretry.register_tool('ap_delete_free',
	'idempotent', 'destructive', requires_approval => false);
SELECT name, side_effect, requires_approval FROM agentretry.register_tool('ap_write_gated',
	'idempotent', 'write', requires_approval => true);
SELECT name, side_effect, requires_approval FROM agentretry.register_tool('ap_write',
	'idempotent', 'write');

GRANT EXECUTE ON FUNCTION ap_digest(), try_stmt(text) TO PUBLIC;

-- the policy field: true by default for destructive tools only, or as
-- the tool says
SELECT t AS tool, p.value, p.source
FROM unnest(ARRAY['ap_delete', 'ap_delete_free', 'ap_write_gated', 'ap_write', 'ap_unregistered']) t,
	agentretry.effective_policy('ap', t) p
WHERE p.field = 'requires_approval' ORDER BY t;
-- it is the last field effective_policy shows
SELECT * FROM agentretry.effective_policy('ap', 'ap_delete');

--
-- the first claim of a destructive tool asks for approval
--
SET ROLE regress_ar_ap_agent;
SELECT outcome, attempt, lease_token, lease_expires_at, result, retry_at, reason
FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap', run_id => 'ap-run',
	step => 'cleanup', owner => 'worker-1');
RESET ROLE;
-- recorded without a lease, an attempt or a deadline; the claimant is
-- kept as who asked
SELECT state, attempts, lease_token, lease_owner, lease_expires_at, next_attempt_at,
	first_attempt_at, last_attempt_at, deadline, reason, result, run_id, step,
	state_since = created_at AS since_created
FROM agentretry.lookup('ap-del-1', 'ap');
CREATE TABLE ap_before AS SELECT * FROM agentretry.operations WHERE tenant = 'ap';
-- every later claim answers the same, whoever asks, and changes nothing
SELECT try_stmt($$SELECT row(outcome, attempt, lease_token, reason)::text FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap', owner => 'worker-1')$$);
SELECT try_stmt($$SELECT row(outcome, attempt, lease_token, reason)::text FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap', owner => 'worker-2')$$);
-- other args: a fingerprint conflict
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('ap-del-1', '{"path": "/"}', 'ap_delete', 'ap')$$);
SELECT o = b AS unchanged FROM agentretry.operations o JOIN ap_before b USING (tenant, key)
WHERE o.tenant = 'ap' AND o.key = 'ap-del-1';
-- claim_due never hands it out
SELECT key FROM agentretry.claim_due('worker-3', max => 10, tenant => 'ap');
-- the approval queue
SELECT v.tenant, v.key, v.tool, v.args, v.requested_by, v.since = o.created_at AS since,
	v.waiting >= interval '0' AS waiting, v.run_id, v.step
FROM agentretry.approval_queue v JOIN agentretry.operations o USING (tenant, key)
WHERE v.tenant = 'ap';
SET ROLE regress_ar_ap_oper;
SELECT key, requested_by FROM agentretry.approval_queue WHERE tenant = 'ap';
RESET ROLE;
-- the run counts it
SELECT run_id, state, steps, awaiting_approval, in_progress FROM agentretry.run_status
WHERE tenant = 'ap';
-- traced once
SELECT kind, key, attempt, reason, owner FROM agentretry.events WHERE tenant = 'ap' ORDER BY id;

--
-- who decides: an agent may not, an operator may
--
SET ROLE regress_ar_ap_agent;
SELECT try_stmt($$SELECT agentretry.approve('ap-del-1', 'ap', 'fine by me')$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-del-1', 'ap', 'no')$$);
SELECT try_stmt($$SELECT count(*) FROM agentretry.approval_queue$$);
RESET ROLE;
SET ROLE regress_ar_ap_oper;
SELECT agentretry.approve('ap-del-1', 'ap', 'checked: only temp files');
-- approving or rejecting it again: AR004
SELECT try_stmt($$SELECT agentretry.approve('ap-del-1', 'ap')$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-del-1', 'ap', 'changed my mind')$$);
-- an operator does not execute it
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap')$$);
RESET ROLE;
-- approved: due now, still no attempt and no deadline
SELECT state, attempts, lease_token, lease_expires_at, next_attempt_at <= clock_timestamp() AS due,
	first_attempt_at, deadline, reason
FROM agentretry.lookup('ap-del-1', 'ap');
SELECT count(*) AS queued FROM agentretry.approval_queue WHERE tenant = 'ap';
SELECT kind, key, reason, message, actor FROM agentretry.events
WHERE tenant = 'ap' AND kind = 'approved' ORDER BY id;
-- approval binds to the stored args
SELECT try_stmt($$SELECT outcome FROM agentretry.claim('ap-del-1', '{"path": "/"}', 'ap_delete', 'ap')$$);
-- the next claim executes it: attempt 1, and the deadline starts now
SET ROLE regress_ar_ap_agent;
SELECT outcome, attempt, lease_token, lease_expires_at > clock_timestamp() AS leased, reason
FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap', owner => 'worker-1');
RESET ROLE;
SELECT o.state, o.attempts, o.lease_owner, o.first_attempt_at = o.last_attempt_at AS first_attempt,
	o.first_attempt_at >= e.at AS after_approval, o.deadline - o.first_attempt_at AS deadline
FROM agentretry.operations o
JOIN agentretry.events e ON e.tenant = o.tenant AND e.key = o.key AND e.kind = 'approved'
WHERE o.tenant = 'ap' AND o.key = 'ap-del-1';
SELECT agentretry.complete('ap-del-1', 2, '{"deleted": 3}', 'ap');
SELECT outcome, result FROM agentretry.claim('ap-del-1', '{"path": "/tmp/a"}', 'ap_delete', 'ap');
-- approve of an operation that is not awaiting approval: AR004
SELECT try_stmt($$SELECT agentretry.approve('ap-del-1', 'ap')$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-del-1', 'ap', 'too late')$$);
SELECT outcome FROM agentretry.claim('ap-write-1', '{}', 'ap_write', 'ap');
SELECT try_stmt($$SELECT agentretry.approve('ap-write-1', 'ap')$$);

--
-- claim_due executes an approved operation; a failed attempt of an
-- approved destructive operation is never retried (review_required)
--
SELECT outcome, attempt FROM agentretry.claim('ap-del-2', '{"path": "/tmp/b"}', 'ap_delete', 'ap',
	owner => 'worker-1');
SELECT key FROM agentretry.claim_due('worker-3', max => 10, tenant => 'ap');
SELECT agentretry.approve('ap-del-2', 'ap');
SELECT key, tool, args, attempt, lease_token FROM agentretry.claim_due('worker-3', max => 10, tenant => 'ap');
SELECT state, attempts, lease_owner, deadline - first_attempt_at AS deadline
FROM agentretry.lookup('ap-del-2', 'ap');
SELECT action, retry_at, attempt, reason
FROM agentretry.fail('ap-del-2', 2, 'transient', 'pre_execution', 'http_503', tenant => 'ap');
SELECT state, reason FROM agentretry.lookup('ap-del-2', 'ap');
SELECT outcome, reason FROM agentretry.claim('ap-del-2', '{"path": "/tmp/b"}', 'ap_delete', 'ap');
-- an approval with no note: the event has none
SELECT key, message, CASE WHEN actor = current_user THEN '(caller)' ELSE actor END AS actor
FROM agentretry.events
WHERE tenant = 'ap' AND kind = 'approved' AND key = 'ap-del-2';

--
-- reject: cancelled, with the reason as its last message
--
SELECT outcome FROM agentretry.claim('ap-del-3', '{"path": "/home"}', 'ap_delete', 'ap');
SET ROLE regress_ar_ap_oper;
SELECT agentretry.reject('ap-del-3', 'ap', 'deletes home directories');
SELECT try_stmt($$SELECT agentretry.reject('ap-del-3', 'ap', 'again')$$);
SELECT try_stmt($$SELECT agentretry.approve('ap-del-3', 'ap')$$);
RESET ROLE;
SELECT state, attempts, reason, last_failure_message, lease_expires_at, next_attempt_at,
	completed_at = updated_at AS completed_now, expires_at > completed_at AS expires
FROM agentretry.lookup('ap-del-3', 'ap');
SELECT outcome, attempt, lease_token, result, retry_at, reason
FROM agentretry.claim('ap-del-3', '{"path": "/home"}', 'ap_delete', 'ap');
SELECT result->>'reason' AS reason, result->>'message' AS message
FROM agentretry.claim('ap-del-3', '{"path": "/home"}', 'ap_delete', 'ap');
SELECT key FROM agentretry.claim_due('worker-3', max => 10, tenant => 'ap');
SELECT kind, key, reason, message, actor FROM agentretry.events
WHERE tenant = 'ap' AND kind = 'rejected' ORDER BY id;

--
-- the policy field at every level
--
-- a destructive tool registered with requires_approval => false executes
-- at once, as in 0.3.0, and a failure is still never retried
SELECT outcome, attempt, lease_token FROM agentretry.claim('ap-free-1', '{}', 'ap_delete_free', 'ap');
SELECT action, reason FROM agentretry.fail('ap-free-1', 1, 'transient', 'pre_execution', tenant => 'ap');
-- a write tool registered with requires_approval => true waits
SELECT outcome, attempt, reason FROM agentretry.claim('ap-gated-1', '{}', 'ap_write_gated', 'ap');
-- a tenant's policy for every tool, and for one tool, over the tool's
SELECT tenant, tool, requires_approval FROM agentretry.set_tenant_policy('ap-strict', NULL,
	requires_approval => true);
SELECT tenant, tool, requires_approval FROM agentretry.set_tenant_policy('ap-lax', NULL,
	requires_approval => false);
SELECT tenant, tool, requires_approval FROM agentretry.set_tenant_policy('ap-lax', 'ap_write',
	requires_approval => true);
SELECT tn AS tenant, t AS tool, p.value, p.source
FROM unnest(ARRAY['ap-strict', 'ap-lax']) tn,
	unnest(ARRAY['ap_delete', 'ap_delete_free', 'ap_write_gated', 'ap_write']) t,
	agentretry.effective_policy(tn, t) p
WHERE p.field = 'requires_approval' ORDER BY tn, t;
SELECT tn AS tenant, t AS tool,
	(agentretry.claim('ap-lvl-' || t, '{}', t, tn)).outcome
FROM unnest(ARRAY['ap-strict', 'ap-lax']) tn,
	unnest(ARRAY['ap_delete', 'ap_delete_free', 'ap_write_gated', 'ap_write']) t
ORDER BY tn, t;
SELECT tenant, key, state, attempts, reason FROM agentretry.operations
WHERE tenant IN ('ap-strict', 'ap-lax') ORDER BY tenant, key;
-- the policy is read when an operation is first claimed: a later change
-- does not gate an operation already running, nor release a waiting one
SELECT agentretry.drop_tenant_policy('ap-strict', NULL);
SELECT outcome FROM agentretry.claim('ap-lvl-ap_write', '{}', 'ap_write', 'ap-strict');
SELECT tenant, tool, requires_approval FROM agentretry.set_tenant_policy('ap-strict', 'ap_write',
	requires_approval => true);
SELECT outcome FROM agentretry.claim('ap-lvl-ap_write', '{}', 'ap_write', 'ap-lax');
SELECT outcome FROM agentretry.claim('ap-lvl-ap_write_gated', '{}', 'ap_write_gated', 'ap-lax');

--
-- bad input
--
SELECT try_stmt($$SELECT agentretry.approve(NULL, 'ap')$$);
SELECT try_stmt($$SELECT agentretry.approve('', 'ap')$$);
SELECT try_stmt($$SELECT agentretry.approve(repeat('k', 513), 'ap')$$);
SELECT try_stmt($$SELECT agentretry.approve('ap-nope', 'ap')$$);
SELECT try_stmt($$SELECT agentretry.approve('ap-gated-1', 'ap-elsewhere')$$);
SELECT try_stmt($$SELECT agentretry.reject(NULL, 'ap', 'no')$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-gated-1', 'ap', NULL)$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-nope', 'ap', 'no')$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-gated-1', 'ap-elsewhere', 'no')$$);
SELECT try_stmt($$SELECT agentretry.reject('', 'ap', 'no')$$);
SET agentretry.max_payload = 1024;
SELECT try_stmt($$SELECT agentretry.approve('ap-gated-1', 'ap', repeat('n', 1025))$$);
SELECT try_stmt($$SELECT agentretry.reject('ap-gated-1', 'ap', repeat('n', 1025))$$);
RESET agentretry.max_payload;
SELECT state, reason FROM agentretry.lookup('ap-gated-1', 'ap');
-- requires_approval NULL is the default of the tier
SELECT name, requires_approval FROM agentretry.register_tool('ap_x', 'idempotent', 'destructive',
	requires_approval => NULL);
SELECT field, value, source FROM agentretry.effective_policy('ap', 'ap_x') WHERE field = 'requires_approval';

-- leave nothing behind for the files that follow
DROP TABLE ap_before;
DROP FUNCTION try_stmt(text), ap_digest();
DROP ROLE regress_ar_ap_agent, regress_ar_ap_oper;
SELECT agentretry.drop_tenant_policy('ap-strict', 'ap_write');
SELECT agentretry.drop_tenant_policy('ap-lax', NULL);
SELECT agentretry.drop_tenant_policy('ap-lax', 'ap_write');
DELETE FROM agentretry.events WHERE tenant LIKE 'ap%';
DELETE FROM agentretry.budget_ledger WHERE tenant LIKE 'ap%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'ap%';
DELETE FROM agentretry.runs WHERE tenant LIKE 'ap%';
DELETE FROM agentretry.tools WHERE name LIKE 'ap\_%';
