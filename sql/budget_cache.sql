--
-- A backend serving many tenants (behind a pooler) keeps a bounded cache
-- of their budgets: the 5000 tenants served here would take over 1 MB as
-- an unbounded list; the cache holds at most 1024 tenants.  In a database
-- of its own, so that nothing else runs in it.
--
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ar_budget_cache;
RESET client_min_messages;
CREATE DATABASE ar_budget_cache;
\c ar_budget_cache
SET client_min_messages = warning;
CREATE EXTENSION agentretry;
RESET client_min_messages;

-- one budget anywhere: every tenant's retries consult the cache
SELECT scope, subject FROM agentretry.set_budget('bc-0', 'tenant', 'bc-0', capacity => 10);
SELECT name FROM agentretry.register_tool('bc_tool', 'idempotent', 'read',
	base_delay => '0', max_delay => '0', max_attempts => 5);

-- a retry decided for each of 5000 tenants
SELECT count(*) FILTER (WHERE (d).action = 'retry') AS retries
FROM (SELECT agentretry.fail('bc-k', (agentretry.claim('bc-k', '{}', 'bc_tool', 'bc-' || i)).lease_token,
							 'transient', 'pre_execution', tenant => 'bc-' || i) AS d
	  FROM generate_series(1, 5000) i) s;

SELECT total_bytes < 400000 AS bounded
FROM pg_backend_memory_contexts WHERE name = 'agentretry budgets';

-- the budget still applies to its tenant after the cache was emptied
SELECT (agentretry.claim('bc-x', '{}', 'bc_tool', 'bc-0')).outcome;
SELECT (agentretry.fail('bc-x', 1, 'transient', 'pre_execution', tenant => 'bc-0')).action;
SELECT reason, amount FROM agentretry.budget_ledger WHERE tenant = 'bc-0';

\c contrib_regression
DROP DATABASE ar_budget_cache;
