--
-- guard: no lease that exists only in an open transaction block unless the
-- call says in_transaction => true (the pattern-B trap; src/guard.c)
--
-- autocommit: executes, and loads the library before the blocks below
SELECT outcome FROM agentretry.claim('g-auto', '{}');

-- a block opened by BEGIN: refused, with its hint; pattern A says so
BEGIN;
SELECT try_sql($$SELECT outcome FROM agentretry.claim('g-1', '{}')$$, true);
SELECT try_sql($$SELECT outcome FROM agentretry.claim('g-1', '{}', in_transaction => true)$$);
ROLLBACK;

-- a block begun by COMMIT AND CHAIN or ROLLBACK AND CHAIN, without a BEGIN
BEGIN;
COMMIT AND CHAIN;
SELECT try_sql($$SELECT outcome FROM agentretry.claim('g-2', '{}')$$);
ROLLBACK;
BEGIN;
SELECT 1 AS one;
ROLLBACK AND CHAIN;
SELECT try_sql($$SELECT outcome FROM agentretry.claim('g-3', '{}')$$);
ROLLBACK;

-- START TRANSACTION too; claim_due with a due retry, and with nothing due
SELECT agentretry.fail('g-auto', 1, 'transient', 'pre_execution') IS NOT NULL AS failed;
UPDATE agentretry.operations SET next_attempt_at = now() - interval '1 second'
WHERE tenant = 'default' AND key = 'g-auto';
START TRANSACTION;
SELECT try_sql($$SELECT count(*) FROM agentretry.claim_due('g-worker', 10)$$);
SELECT try_sql($$SELECT count(*) FROM agentretry.claim_due('g-worker', 10, in_transaction => true)$$);
-- (nothing is due any more: nothing to refuse)
SELECT try_sql($$SELECT count(*) FROM agentretry.claim_due('g-worker', 10)$$);
ROLLBACK;

-- answers that lease nothing are not refused: busy, and a replay
SELECT outcome FROM agentretry.claim('g-live', '{}');
SELECT outcome FROM agentretry.claim('g-done', '{}');
SELECT agentretry.complete('g-done', 1, '{"ok": true}');
BEGIN;
SELECT outcome FROM agentretry.claim('g-live', '{}');
SELECT outcome, result FROM agentretry.claim('g-done', '{}');
COMMIT;

-- the setting turns the refusal off
SET agentretry.allow_uncommitted_leases = on;
BEGIN;
SELECT outcome FROM agentretry.claim('g-4', '{}');
ROLLBACK;
RESET agentretry.allow_uncommitted_leases;

-- a refused call stored nothing
SELECT count(*) AS stored FROM agentretry.operations
WHERE tenant = 'default' AND key IN ('g-1', 'g-2', 'g-3', 'g-4');
SELECT key, state, attempts FROM agentretry.operations
WHERE tenant = 'default' AND key LIKE 'g-%' ORDER BY key;

-- leave nothing behind
DELETE FROM agentretry.events WHERE tenant = 'default' AND key LIKE 'g-%';
DELETE FROM agentretry.operations WHERE tenant = 'default' AND key LIKE 'g-%';
