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
	tool => 'refund');
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

-- leave nothing behind for the files that follow
DROP TABLE refunds;
DELETE FROM agentretry.events WHERE key LIKE 'order-42:%' OR key LIKE 'welcome-mail:%';
DELETE FROM agentretry.operations WHERE key LIKE 'order-42:%' OR key LIKE 'welcome-mail:%';
DELETE FROM agentretry.tools WHERE name IN ('crm_lookup', 'charge_card', 'delete_account');
