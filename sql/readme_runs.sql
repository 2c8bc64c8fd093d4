--
-- The examples of README.md's "Runs, context and compensation" and
-- "Approval gates", as written there, in a database of their own so that
-- rows of other suites (due retries) cannot show in claim_due.
--
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ar_readme_runs;
RESET client_min_messages;
CREATE DATABASE ar_readme_runs;
\c ar_readme_runs
SET client_min_messages = warning;
CREATE EXTENSION agentretry;
RESET client_min_messages;

-- "Runs, context and compensation"
SELECT agentretry.start_run('trip-77', workflow_version => 'book-trip@3',
                            max_retry_events => 4, correlation_id => 'req-5f2c');

SELECT outcome, lease_token FROM agentretry.claim('trip-77:flight', '{"flight": "LH400"}',
	'book_flight', run_id => 'trip-77', step => 'flight');
SELECT agentretry.complete('trip-77:flight', 1, '{"booking": "F-1"}',
	compensate_tool => 'cancel_flight', compensate_args => '{"booking": "F-1"}');

SELECT agentretry.checkpoint('trip-77', 'flight', '{"flight": "F-1"}');
SELECT agentretry.checkpoint('trip-77', 'hotel', '{"flight": "F-1", "hotel": null}',
                             expected_version => 1);
SELECT agentretry.context('trip-77');

SELECT agentretry.compensate('trip-77', reason => 'no hotel available');

SELECT key, tool, args, lease_token FROM agentretry.claim_due('worker-1');
SELECT agentretry.complete('trip-77:flight:compensate', 2, '{"cancelled": "F-1"}');

SELECT state, compensations_done FROM agentretry.run_status WHERE run_id = 'trip-77';

-- the events of the run carry its workflow version and correlation id
SELECT kind, key, workflow_version, correlation_id
FROM agentretry.events WHERE run_id = 'trip-77' ORDER BY id;

-- "Approval gates"
SELECT (agentretry.register_tool('delete_account', 'non_idempotent', 'destructive')).name;

SELECT outcome, attempt, reason FROM agentretry.claim('gdpr-erase:user-9', '{"user": 9}',
	'delete_account', owner => 'worker-3');

SELECT key, tool, args, requested_by FROM agentretry.approval_queue;

SELECT agentretry.approve('gdpr-erase:user-9', note => 'ticket 4411');
SELECT outcome, attempt FROM agentretry.claim('gdpr-erase:user-9', '{"user": 9}', 'delete_account');

SELECT kind, key, message, actor IS NOT NULL AS has_actor
FROM agentretry.events WHERE kind = 'approved';

-- "Upgrading": keep the 0.3.0 behaviour for a destructive tool
SELECT (agentretry.register_tool('purge_cache', 'idempotent', 'destructive', requires_approval => false)).name;
SELECT outcome FROM agentretry.claim('purge-1', '{}', 'purge_cache');

\c contrib_regression
DROP DATABASE ar_readme_runs;
