--
-- The examples of README.md, as written there, so that they cannot drift
-- from what the extension does.
--

-- "A. The side effect is in the same database: exactly once"
CREATE TABLE refunds (order_id int, amount_cents int);  -- the application's own table

BEGIN;
SELECT outcome, lease_token FROM agentretry.claim(
	key  => 'order-42:refund',
	args => '{"order": 42, "amount_cents": 1999}',
	tool => 'refund', in_transaction => true);
-- outcome = 'execute', lease_token = 1: do the work in this transaction
INSERT INTO refunds (order_id, amount_cents) VALUES (42, 1999);
SELECT agentretry.complete('order-42:refund', 1, result => '{"refund_id": 7}');
COMMIT;

-- the same call again (a retry, a duplicate webhook): nothing is done twice
SELECT outcome, result FROM agentretry.claim('order-42:refund',
	'{"amount_cents": 1999, "order": 42}', 'refund');
SELECT count(*) AS refunds FROM refunds;

-- "B. The side effect is external": step 1, then the failure path 2b and 3
SELECT outcome, attempt, lease_token, retry_at
FROM agentretry.claim('welcome-mail:user-9', '{"to": "ann@example.com"}',
                      tool => 'send_email', lease => '30 seconds', owner => 'worker-3');
SELECT * FROM agentretry.fail('welcome-mail:user-9', 1,
	failure => 'ambiguous', phase => 'post_execution', code => 'timeout');
SELECT outcome, lease_token FROM agentretry.claim('welcome-mail:user-9', '{"to": "ann@example.com"}', 'send_email');
SELECT agentretry.resolve('welcome-mail:user-9', 2, executed => true, result => '{"message_id": "m-123"}');

-- step 2a, the success path, on a key of its own
SELECT outcome, attempt, lease_token, retry_at
FROM agentretry.claim('welcome-mail:user-10', '{"to": "bob@example.com"}',
                      tool => 'send_email', lease => '30 seconds', owner => 'worker-3');
SELECT agentretry.complete('welcome-mail:user-10', 1, '{"message_id": "m-124"}');

-- "Tool registry and tiers"
SELECT (agentretry.register_tool('crm_lookup', 'idempotent', 'read')).name;
SELECT (agentretry.register_tool('charge_card', 'non_idempotent', 'write',
	max_attempts => 3, deadline => '15 minutes', lease => '1 minute')).name;
SELECT (agentretry.register_tool('delete_account', 'non_idempotent', 'destructive')).name;

-- "Retry workers and the sweep": a crm_lookup whose first attempt failed
SELECT outcome FROM agentretry.claim('lookup-7', '{"id": 7}', 'crm_lookup');
SELECT action, reason FROM agentretry.fail('lookup-7', 1, 'transient', 'pre_execution', code => 'http_503');
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 second'
WHERE key = 'lookup-7';
SELECT key, tool, args, attempt, lease_token
FROM agentretry.claim_due(owner => 'retry-worker-1', max => 10, tools => ARRAY['crm_lookup']);
SELECT more FROM agentretry.sweep();
SELECT try_sql('SELECT agentretry.schedule_sweep()');

-- "Operators": two dead-letters and a leased operation
SELECT action, reason FROM agentretry.fail('lookup-7', 2, 'permanent', code => 'http_404');
SELECT outcome FROM agentretry.claim('lookup-8', '{"id": 8}', 'crm_lookup');
SELECT action, reason FROM agentretry.fail('lookup-8', 1, 'permanent', code => 'http_404');
SELECT outcome FROM agentretry.claim('mail-9', '{"to": "cy@example.com"}', 'send_email');
SELECT key, tool, reason, last_failure_code FROM agentretry.dead_letters
WHERE key IN ('lookup-7', 'lookup-8') ORDER BY since;
SELECT agentretry.requeue('lookup-7');                          -- run it again, due now
SELECT agentretry.requeue('lookup-8', reset_attempts => true);  -- with a fresh attempt budget
SELECT agentretry.cancel('mail-9', reason => 'customer withdrew');
SELECT key, state, attempts, lease_token, reason FROM agentretry.lookup('lookup-7')
UNION ALL SELECT key, state, attempts, lease_token, reason FROM agentretry.lookup('lookup-8')
UNION ALL SELECT key, state, attempts, lease_token, reason FROM agentretry.lookup('mail-9');

-- tenant acme: every tool keeps terminal rows 30 days; crm_lookup tries 3 times
SELECT (agentretry.set_tenant_policy('acme', ttl => '30 days')).tool;
SELECT (agentretry.set_tenant_policy('acme', 'crm_lookup', max_attempts => 3)).tool;
SELECT * FROM agentretry.effective_policy('acme', 'crm_lookup');

-- "Retry budgets"
SELECT (agentretry.set_budget('acme', 'tenant', 'acme', capacity => 50, refill_per_sec => 5)).subject;
SELECT (agentretry.set_budget('acme', 'tool', 'charge_card', ratio => 0.1, ratio_floor => 3)).subject;
SELECT (agentretry.set_budget('acme', 'user', 'worker-7', capacity => 10, refill_per_sec => 0.5)).subject;
-- one retry in tenant acme pays 1 token (a transient failure) from its bucket
SELECT outcome FROM agentretry.claim('acme-lookup-1', '{"id": 1}', 'crm_lookup', tenant => 'acme');
SELECT action, reason FROM agentretry.fail('acme-lookup-1', 1, 'transient', 'pre_execution', tenant => 'acme');
-- (floor: the bucket refills 5 tokens a second while this runs)
SELECT tenant, scope, subject, capacity, floor(balance) AS balance,
       refill_per_sec, debits_last_hour, denials_last_hour, last_denial
FROM agentretry.budget_status ORDER BY scope, subject;

-- leave nothing behind for the files that follow
DROP TABLE refunds;
DELETE FROM agentretry.events WHERE key LIKE 'order-42:%' OR key LIKE 'welcome-mail:%'
	OR key IN ('lookup-7', 'lookup-8', 'mail-9');
DELETE FROM agentretry.operations WHERE key LIKE 'order-42:%' OR key LIKE 'welcome-mail:%'
	OR key IN ('lookup-7', 'lookup-8', 'mail-9');
DELETE FROM agentretry.tenant_policies WHERE tenant = 'acme';
DELETE FROM agentretry.budgets WHERE tenant = 'acme';
DELETE FROM agentretry.budget_ledger WHERE tenant = 'acme';
DELETE FROM agentretry.events WHERE tenant = 'acme';
DELETE FROM agentretry.operations WHERE tenant = 'acme';
DELETE FROM agentretry.tools WHERE name IN ('crm_lookup', 'charge_card', 'delete_account');
