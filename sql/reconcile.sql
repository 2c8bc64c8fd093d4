--
-- reconcile: receipts, late evidence (observe()), reconcile() and its
-- anomalies, acknowledge() and claim_verifications()
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_rc_agent, regress_ar_rc_oper;
RESET client_min_messages;
CREATE ROLE regress_ar_rc_agent IN ROLE agentretry_agent;
CREATE ROLE regress_ar_rc_oper IN ROLE agentretry_operator;

-- reconcile() looks at every tenant: first let it look at whatever earlier
-- files left due, so that the counts below are this file's alone
SELECT agentretry.reconcile(100000) >= 0 AS drained;

-- data_digest() and the anomalies: a call that fails changes neither
CREATE FUNCTION rc_digest() RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT md5(public.data_digest() || E'\f' ||
		coalesce((SELECT string_agg(a::text, E'\n' ORDER BY a.tenant, a.id)
				  FROM agentretry.anomalies a), ''))
$$;

-- try_stmt(), with the anomalies in the digest
CREATE FUNCTION rc_try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := rc_digest();
	res text;
	state text;
	msg text;
	det text;
BEGIN
	BEGIN
		EXECUTE stmt INTO res;
		res := 'ok: ' || coalesce(res, 'NULL');
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL;
		res := state || ': ' || msg || CASE WHEN det <> '' THEN ' / ' || det ELSE '' END;
	END;
	RETURN res || CASE WHEN rc_digest() = before THEN ' (unchanged)' ELSE ' (DATA CHANGED)' END;
END
$$;
GRANT EXECUTE ON FUNCTION rc_digest(), rc_try(text) TO PUBLIC;

-- the operations of this file, without their times
CREATE VIEW rc_ops AS
SELECT tenant, key, state, attempts, lease_token, reason, receipt, observed_receipt,
	reconcile_at IS NOT NULL AS to_reconcile
FROM agentretry.operations WHERE tenant LIKE 'rc%';

-- the anomalies of this file, without their times
CREATE VIEW rc_anomalies AS
SELECT id, kind, key, other_key, run_id, tool, receipt, attempt, detail
FROM agentretry.anomalies WHERE tenant = 'rc';

-- a payment (verified when its outcome is unknown; retried an hour later),
-- a shipment, a retry due at once, and a tool that needs approval
SELECT name FROM agentretry.register_tool('rc_pay', 'non_idempotent', 'write',
	max_attempts => 3, base_delay => '1 hour', max_delay => '1 hour', jitter => 'none');
SELECT name FROM agentretry.register_tool('rc_ship', 'non_idempotent', 'write');
SELECT name FROM agentretry.register_tool('rc_fast', 'idempotent', 'write',
	max_attempts => 3, base_delay => '0', max_delay => '0', jitter => 'none');
SELECT name FROM agentretry.register_tool('rc_gated', 'idempotent', 'write',
	requires_approval => true);

--
-- receipts: complete() and resolve() store them
--
SELECT outcome, attempt, lease_token FROM agentretry.claim('rc-c1', '{"amount": 1}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-c1', 1, '{"charge": "ch-1"}', 'rc', receipt => 'r-c1');
-- a success with a receipt is due for reconcile() at once
SELECT state, receipt, observed_receipt, result,
	reconcile_at = completed_at AS due_at_completion
FROM agentretry.lookup('rc-c1', 'rc');
-- by position, too
SELECT outcome FROM agentretry.claim('rc-c2', '{"amount": 2}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-c2', 1, NULL, 'rc', NULL, NULL, 'r-c2');
SELECT state, receipt FROM agentretry.lookup('rc-c2', 'rc');
-- resolve(): the verification found the payment, with its reference
SELECT outcome FROM agentretry.claim('rc-v1', '{"amount": 3}', 'rc_pay', 'rc');
SELECT action, reason FROM agentretry.fail('rc-v1', 1, 'transient', 'mid_execution', 'timeout', tenant => 'rc');
-- awaiting verification: due for reconcile() when it would go stale
SELECT state, reconcile_at - state_since AS stale_after
FROM agentretry.operations WHERE tenant = 'rc' AND key = 'rc-v1';
SELECT outcome, lease_token FROM agentretry.claim('rc-v1', '{"amount": 3}', 'rc_pay', 'rc');
SELECT agentretry.resolve('rc-v1', 2, true, '{"charge": "ch-3"}', 'rc', receipt => 'r-v1');
SELECT state, reason, receipt, result, reconcile_at = completed_at AS due_at_completion
FROM agentretry.lookup('rc-v1', 'rc');
SELECT kind, reason, receipt FROM agentretry.events
WHERE tenant = 'rc' AND key = 'rc-v1' AND kind = 'resolve';
-- a first attempt that succeeded without a receipt has nothing to check:
-- never due, whether completed or resolved
SELECT outcome FROM agentretry.claim('rc-plain', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-plain', 1, '{}', 'rc');
SELECT outcome FROM agentretry.claim('rc-plain-v', '{}', 'rc_pay', 'rc');
SELECT action FROM agentretry.fail('rc-plain-v', 1, 'ambiguous', tenant => 'rc');
SELECT outcome, lease_token FROM agentretry.claim('rc-plain-v', '{}', 'rc_pay', 'rc');
SELECT agentretry.resolve('rc-plain-v', 2, true, tenant => 'rc');
SELECT key, state, attempts, receipt, to_reconcile FROM rc_ops
WHERE key IN ('rc-plain', 'rc-plain-v') ORDER BY key;
-- with trace_all the complete event carries the receipt
SET agentretry.trace_all = on;
SELECT outcome FROM agentretry.claim('rc-c3', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-c3', 1, '{}', 'rc', receipt => 'r-c3');
RESET agentretry.trace_all;
SELECT kind, receipt FROM agentretry.events WHERE tenant = 'rc' AND key = 'rc-c3' ORDER BY id;

--
-- observe(): resolved
--
SELECT outcome FROM agentretry.claim('rc-ob-v', '{}', 'rc_pay', 'rc');
SELECT action, reason FROM agentretry.fail('rc-ob-v', 1, 'ambiguous', tenant => 'rc');
-- a verifier holds the verification lease when the webhook arrives
SELECT outcome, lease_token FROM agentretry.claim('rc-ob-v', '{}', 'rc_pay', 'rc', owner => 'verifier-1');
SELECT agentretry.observe('rc-ob-v', 'r-ob-v', 'rc', 'webhook', '{"event": "charge.succeeded"}');
SELECT state, attempts, lease_token, lease_expires_at, reason, receipt, observed_receipt,
	reconcile_at = completed_at AS due_at_completion
FROM agentretry.lookup('rc-ob-v', 'rc');
-- the verifier reports after it: finding it done agrees, adding only the
-- result it found (the operation had none; a second report changes
-- nothing); finding it not done is refused (AR004)
SELECT rc_try($$SELECT agentretry.resolve('rc-ob-v', 2, true, '{}', 'rc', 'r-ob-v')$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-ob-v', 2, true, tenant => 'rc')$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-ob-v', 2, false, tenant => 'rc')$$);
SELECT state, reason, receipt, result FROM agentretry.lookup('rc-ob-v', 'rc');
SELECT outcome, attempt, reason FROM agentretry.claim('rc-ob-v', '{}', 'rc_pay', 'rc');
SELECT count(*) AS anomalies FROM agentretry.anomalies WHERE tenant = 'rc' AND key = 'rc-ob-v';
-- the verifier finds it done with another receipt: a second side effect;
-- the observed receipt stays, the verifier's result is kept
SELECT outcome FROM agentretry.claim('rc-ob-v2', '{}', 'rc_pay', 'rc');
SELECT action FROM agentretry.fail('rc-ob-v2', 1, 'transient', 'post_execution', tenant => 'rc');
SELECT outcome, lease_token FROM agentretry.claim('rc-ob-v2', '{}', 'rc_pay', 'rc', owner => 'verifier-1');
SELECT agentretry.observe('rc-ob-v2', 'r-ob-v2', 'rc', 'webhook');
SELECT agentretry.resolve('rc-ob-v2', 2, true, '{"found": true}', 'rc', 'r-ob-v2-other');
SELECT state, reason, receipt, result FROM agentretry.lookup('rc-ob-v2', 'rc');
SELECT kind, key, tool, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-ob-v2';

--
-- observe(): confirmed
--
SELECT agentretry.observe('rc-c1', 'r-c1', 'rc', 'webhook');
SELECT state, receipt FROM agentretry.lookup('rc-c1', 'rc');
-- a success without a receipt takes the observed one, and is due for
-- reconcile() (its receipt may be another key's)
SELECT outcome FROM agentretry.claim('rc-plain2', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-plain2', 1, '{}', 'rc');
SELECT to_reconcile FROM rc_ops WHERE key = 'rc-plain2';
SELECT agentretry.observe('rc-plain2', 'r-plain2', 'rc', 'listing');
SELECT state, reason, receipt, to_reconcile FROM rc_ops WHERE key = 'rc-plain2';
-- the stored one is confirmed from now on
SELECT agentretry.observe('rc-plain2', 'r-plain2', 'rc', 'listing');
SELECT count(*) AS anomalies FROM agentretry.anomalies
WHERE tenant = 'rc' AND key IN ('rc-c1', 'rc-plain2');

--
-- observe(): corrected.  An operation believed not done (a retry waiting,
-- dead, cancelled, awaiting approval) did happen: it succeeds with the
-- receipt and is never retried
--
SELECT outcome FROM agentretry.claim('rc-cor-wait', '{}', 'rc_fast', 'rc');
SELECT action, reason FROM agentretry.fail('rc-cor-wait', 1, 'transient', 'pre_execution', tenant => 'rc');
SELECT outcome FROM agentretry.claim('rc-cor-dead', '{}', 'rc_pay', 'rc');
SELECT action, reason FROM agentretry.fail('rc-cor-dead', 1, 'permanent', tenant => 'rc');
SELECT outcome FROM agentretry.claim('rc-cor-cancel', '{}', 'rc_pay', 'rc');
SELECT agentretry.cancel('rc-cor-cancel', 'rc', 'not needed');
SELECT outcome, attempt, reason FROM agentretry.claim('rc-cor-appr', '{}', 'rc_gated', 'rc');
SELECT key, state, attempts, reason FROM rc_ops WHERE key LIKE 'rc-cor-%' ORDER BY key;
-- the retry is due now: claim_due would lease it
SELECT next_attempt_at <= clock_timestamp() AS due FROM agentretry.lookup('rc-cor-wait', 'rc');
SELECT agentretry.observe('rc-cor-wait', 'r-cor-wait', 'rc', 'webhook');
SELECT agentretry.observe('rc-cor-dead', 'r-cor-dead', 'rc', 'webhook');
SELECT agentretry.observe('rc-cor-cancel', 'r-cor-cancel', 'rc', 'webhook');
SELECT agentretry.observe('rc-cor-appr', 'r-cor-appr', 'rc', 'webhook');
SELECT key, state, attempts, lease_token, reason, receipt, observed_receipt, to_reconcile
FROM rc_ops WHERE key LIKE 'rc-cor-%' ORDER BY key;
SELECT key, next_attempt_at, lease_expires_at, completed_at IS NOT NULL AS completed
FROM agentretry.operations WHERE tenant = 'rc' AND key LIKE 'rc-cor-%' ORDER BY key;
-- never retried: claims replay, claim_due leases none of them, nothing waits
-- for approval
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rc-cor-wait', '{}', 'rc_fast', 'rc');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rc-cor-dead', '{}', 'rc_pay', 'rc');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rc-cor-cancel', '{}', 'rc_pay', 'rc');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rc-cor-appr', '{}', 'rc_gated', 'rc');
SELECT key FROM agentretry.claim_due('worker-1', max => 10, tenant => 'rc');
-- no verification was under way: resolve() with the newest token is refused
-- (AR004), as for any operation not awaiting verification (rc-cor-appr's
-- token was never even handed out)
SELECT rc_try($$SELECT agentretry.resolve('rc-cor-dead', 1, true, tenant => 'rc')$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-cor-appr', 1, true, tenant => 'rc')$$);
SELECT count(*) AS queued FROM agentretry.approval_queue WHERE tenant = 'rc';
SELECT count(*) AS dead_letters FROM agentretry.dead_letters WHERE tenant = 'rc';
-- what was believed is recorded, once each
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail
FROM rc_anomalies WHERE key LIKE 'rc-cor-%' ORDER BY id;
-- evidence repeated: confirmed, no second anomaly
SELECT agentretry.observe('rc-cor-dead', 'r-cor-dead', 'rc', 'webhook');
SELECT count(*) AS anomalies FROM agentretry.anomalies WHERE tenant = 'rc' AND key LIKE 'rc-cor-%';

--
-- observe(): anomaly.  A succeeded operation observed with another receipt:
-- the side effect happened twice
--
SELECT agentretry.observe('rc-c1', 'r-c1-again', 'rc', 'webhook', '{"event": "charge.succeeded"}');
SELECT state, receipt FROM agentretry.lookup('rc-c1', 'rc');
SELECT kind, key, tool, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-c1';
-- the same evidence again: the same answer, no second anomaly
SELECT agentretry.observe('rc-c1', 'r-c1-again', 'rc', 'webhook', '{"event": "charge.succeeded"}');
SELECT count(*) AS anomalies FROM agentretry.anomalies WHERE tenant = 'rc' AND key = 'rc-c1';

--
-- observe(): pending.  The operation is leased: the evidence is kept and
-- compared when the holder reports
--
-- the holder completes with another receipt: it succeeds with the
-- holder's receipt, and the side effect happened twice
SELECT outcome, lease_token FROM agentretry.claim('rc-p-diff', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-diff', 'r-p-obs', 'rc', 'webhook');
SELECT agentretry.observe('rc-p-diff', 'r-p-obs', 'rc', 'webhook');
SELECT state, attempts, lease_token, receipt, observed_receipt, to_reconcile
FROM rc_ops WHERE key = 'rc-p-diff';
SELECT lease_expires_at > clock_timestamp() AS still_leased FROM agentretry.lookup('rc-p-diff', 'rc');
SELECT count(*) AS anomalies FROM agentretry.anomalies WHERE tenant = 'rc' AND key = 'rc-p-diff';
SELECT agentretry.complete('rc-p-diff', 1, '{"charge": "mine"}', 'rc', receipt => 'r-p-mine');
SELECT state, reason, receipt, observed_receipt, to_reconcile FROM rc_ops WHERE key = 'rc-p-diff';
SELECT result FROM agentretry.lookup('rc-p-diff', 'rc');
SELECT kind, key, tool, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-diff';
-- two receipts observed for one attempt: an anomaly at once; the first
-- observed is kept, and a completion with it adds nothing
SELECT outcome FROM agentretry.claim('rc-p-two', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-two', 'r-two-a', 'rc', 'webhook');
SELECT agentretry.observe('rc-p-two', 'r-two-b', 'rc', 'listing');
SELECT state, receipt, observed_receipt FROM rc_ops WHERE key = 'rc-p-two';
SELECT agentretry.complete('rc-p-two', 1, '{}', 'rc', receipt => 'r-two-a');
SELECT state, receipt, observed_receipt FROM rc_ops WHERE key = 'rc-p-two';
SELECT kind, key, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-two';
-- the holder completes with the same receipt: no anomaly
SELECT outcome FROM agentretry.claim('rc-p-same', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-same', 'r-p-same', 'rc', 'webhook');
SELECT agentretry.complete('rc-p-same', 1, '{}', 'rc', receipt => 'r-p-same');
SELECT state, reason, receipt, observed_receipt, to_reconcile FROM rc_ops WHERE key = 'rc-p-same';
-- the holder completes without a receipt: the observed one is stored
SELECT outcome FROM agentretry.claim('rc-p-none', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-none', 'r-p-none', 'rc', 'webhook');
SELECT agentretry.complete('rc-p-none', 1, '{"done": true}', 'rc');
SELECT state, reason, receipt, observed_receipt, to_reconcile FROM rc_ops WHERE key = 'rc-p-none';
SELECT count(*) AS anomalies FROM agentretry.anomalies
WHERE tenant = 'rc' AND key IN ('rc-p-same', 'rc-p-none');
-- the holder reports a failure: the evidence says it happened, so it
-- succeeded with the observed receipt, and what the holder believed is
-- corrected
SELECT outcome FROM agentretry.claim('rc-p-fail', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-fail', 'r-p-fail', 'rc', 'webhook');
SELECT * FROM agentretry.fail('rc-p-fail', 1, 'transient', 'mid_execution', 'timeout', 'no answer',
	tenant => 'rc');
SELECT state, attempts, reason, receipt, observed_receipt, to_reconcile FROM rc_ops WHERE key = 'rc-p-fail';
SELECT last_failure_class, last_failure_phase, last_failure_code, last_failure_message,
	next_attempt_at, lease_expires_at
FROM agentretry.lookup('rc-p-fail', 'rc');
SELECT kind, key, tool, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-fail';
SELECT kind, attempt, failure_class, failure_phase, code, message, reason, delay, receipt
FROM agentretry.events WHERE tenant = 'rc' AND key = 'rc-p-fail' AND kind <> 'observe' ORDER BY id;
SELECT outcome, reason FROM agentretry.claim('rc-p-fail', '{}', 'rc_pay', 'rc');
-- a failure reported again: the lease is over; it was an execution lease,
-- not a verification: resolve() is refused
SELECT rc_try($$SELECT action FROM agentretry.fail('rc-p-fail', 1, 'transient', tenant => 'rc')$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-p-fail', 1, true, tenant => 'rc')$$);
-- a failure of any class
SELECT outcome FROM agentretry.claim('rc-p-perm', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-perm', 'r-p-perm', 'rc', 'webhook');
SELECT * FROM agentretry.fail('rc-p-perm', 1, 'permanent', tenant => 'rc');
SELECT state, reason, receipt FROM rc_ops WHERE key = 'rc-p-perm';
-- the holder's lease expired, and a claim takes it over: it succeeded
SELECT outcome FROM agentretry.claim('rc-p-exp', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-exp', 'r-p-exp', 'rc', 'webhook');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'rc' AND key = 'rc-p-exp';
-- expired, nobody took it over: still pending
SELECT agentretry.observe('rc-p-exp', 'r-p-exp', 'rc', 'webhook');
SELECT outcome, attempt, lease_token, reason FROM agentretry.claim('rc-p-exp', '{}', 'rc_pay', 'rc');
SELECT state, attempts, lease_token, reason, receipt, observed_receipt, to_reconcile
FROM rc_ops WHERE key = 'rc-p-exp';
SELECT kind, key, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-exp';
-- the late holder cannot record anything
SELECT rc_try($$SELECT agentretry.complete('rc-p-exp', 1, '{}', 'rc', receipt => 'r-p-exp')$$);
-- the holder gives the lease back: it happened all the same, so it is
-- not due again
SELECT outcome, lease_token FROM agentretry.claim('rc-p-rel', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-rel', 'r-p-rel', 'rc', 'webhook');
SELECT agentretry.release('rc-p-rel', 1, 'rc');
SELECT state, attempts, lease_token, reason, receipt, observed_receipt, to_reconcile
FROM rc_ops WHERE key = 'rc-p-rel';
SELECT next_attempt_at, lease_expires_at FROM agentretry.lookup('rc-p-rel', 'rc');
SELECT kind, key, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-rel';
SELECT outcome, reason FROM agentretry.claim('rc-p-rel', '{}', 'rc_pay', 'rc');
-- the same through claim_due (an idempotent tool): not leased, succeeded
SELECT outcome FROM agentretry.claim('rc-p-exp2', '{}', 'rc_fast', 'rc');
SELECT agentretry.observe('rc-p-exp2', 'r-p-exp2', 'rc', 'webhook');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'rc' AND key = 'rc-p-exp2';
SELECT key FROM agentretry.claim_due('worker-1', max => 10, tenant => 'rc');
SELECT state, attempts, lease_token, reason, receipt, to_reconcile FROM rc_ops WHERE key = 'rc-p-exp2';
SELECT outcome, reason FROM agentretry.claim('rc-p-exp2', '{}', 'rc_fast', 'rc');
SELECT kind, key, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-p-exp2';

--
-- observe(): orphan.  No such key: recorded, no error, no operation
--
SELECT agentretry.observe('rc-orphan', 'r-orphan', 'rc', 'webhook', '{"id": 7}');
SELECT rc_try($$SELECT state FROM agentretry.lookup('rc-orphan', 'rc')$$);
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail FROM rc_anomalies WHERE key = 'rc-orphan';
-- again: once; another receipt for it is another anomaly
SELECT agentretry.observe('rc-orphan', 'r-orphan', 'rc', 'webhook', '{"id": 7}');
SELECT agentretry.observe('rc-orphan', 'r-orphan-2', 'rc');
SELECT kind, key, tool, receipt, detail FROM rc_anomalies WHERE key = 'rc-orphan' ORDER BY id;
-- the key in another tenant is another key
SELECT agentretry.observe('rc-c1', 'r-c1', 'rc-elsewhere');
SELECT tenant, kind, key, receipt FROM agentretry.anomalies WHERE tenant = 'rc-elsewhere';
SELECT count(*) AS operations FROM agentretry.operations WHERE key = 'rc-orphan' OR tenant = 'rc-elsewhere';

--
-- every observation is an event: kind observe, the answer as reason, and
-- the evidence as reported
--
SELECT key, reason, receipt, source, detail FROM agentretry.events
WHERE tenant = 'rc' AND kind = 'observe' ORDER BY id;
SELECT e.key, e.attempt = o.attempts AS attempt, e.lease_token = o.lease_token AS token
FROM agentretry.events e JOIN agentretry.operations o USING (tenant, key)
WHERE e.tenant = 'rc' AND e.kind = 'observe' AND e.key = 'rc-ob-v';
SELECT kind, key, reason, receipt FROM agentretry.events
WHERE tenant = 'rc' AND kind = 'corrected' ORDER BY id;

--
-- reconcile(): everything above that succeeded with a receipt is due now;
-- all succeeded at their first attempt, each with its own receipt: nothing
-- to report, and nothing is due afterwards
--
SELECT key FROM agentretry.operations
WHERE tenant = 'rc' AND reconcile_at <= clock_timestamp() ORDER BY key;
SELECT count(*) AS anomalies_before FROM agentretry.anomalies WHERE tenant = 'rc' \gset
SELECT agentretry.reconcile();
SELECT count(*) - :anomalies_before AS new_anomalies FROM agentretry.anomalies WHERE tenant = 'rc';
SELECT key, state, reconcile_at > clock_timestamp() AS later FROM agentretry.operations
WHERE tenant = 'rc' AND reconcile_at IS NOT NULL ORDER BY key;

-- success_after_retry: an operation that succeeded at its second attempt
SELECT outcome, attempt FROM agentretry.claim('rc-retry', '{}', 'rc_fast', 'rc');
SELECT action, reason FROM agentretry.fail('rc-retry', 1, 'transient', 'pre_execution', tenant => 'rc');
SELECT key, attempt, lease_token FROM agentretry.claim_due('worker-1', max => 10, tenant => 'rc');
SELECT agentretry.complete('rc-retry', 2, '{}', 'rc');
SELECT state, attempts, receipt, to_reconcile FROM rc_ops WHERE key = 'rc-retry';
SELECT agentretry.reconcile();
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail
FROM rc_anomalies WHERE kind = 'success_after_retry';
SELECT to_reconcile FROM rc_ops WHERE key = 'rc-retry';

-- reconcile() reads only rows whose reconcile_at has come: an operation
-- that succeeded after retries but has none (as one completed before
-- 0.5.0) is never reported, nor one due later, before its time
SELECT outcome FROM agentretry.claim('rc-old', '{}', 'rc_fast', 'rc');
SELECT action FROM agentretry.fail('rc-old', 1, 'transient', 'pre_execution', tenant => 'rc');
SELECT outcome, attempt FROM agentretry.claim('rc-old', '{}', 'rc_fast', 'rc');
SELECT agentretry.complete('rc-old', 2, '{}', 'rc');
SELECT outcome FROM agentretry.claim('rc-later', '{}', 'rc_fast', 'rc');
SELECT action FROM agentretry.fail('rc-later', 1, 'transient', 'pre_execution', tenant => 'rc');
SELECT outcome, attempt FROM agentretry.claim('rc-later', '{}', 'rc_fast', 'rc');
SELECT agentretry.complete('rc-later', 2, '{}', 'rc');
UPDATE agentretry.operations SET reconcile_at = NULL WHERE tenant = 'rc' AND key = 'rc-old';
UPDATE agentretry.operations SET reconcile_at = clock_timestamp() + interval '1 hour'
WHERE tenant = 'rc' AND key = 'rc-later';
SELECT agentretry.reconcile();
SELECT key, state, attempts, to_reconcile FROM rc_ops WHERE key IN ('rc-old', 'rc-later') ORDER BY key;
UPDATE agentretry.operations SET reconcile_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'rc' AND key = 'rc-later';
SELECT agentretry.reconcile();
SELECT key, attempt FROM rc_anomalies WHERE kind = 'success_after_retry' ORDER BY id;

-- stale_verification: still awaiting verification after
-- agentretry.verify_stale_after (set short here)
SHOW agentretry.verify_stale_after;
SET agentretry.verify_stale_after = '2s';
SELECT outcome FROM agentretry.claim('rc-push', '{}', 'rc_pay', 'rc');
SELECT action FROM agentretry.fail('rc-push', 1, 'transient', 'mid_execution', tenant => 'rc');
SELECT outcome FROM agentretry.claim('rc-stale', '{}', 'rc_pay', 'rc');
SELECT action FROM agentretry.fail('rc-stale', 1, 'ambiguous', tenant => 'rc');
SELECT key, state, reconcile_at - state_since AS stale_after FROM agentretry.operations
WHERE tenant = 'rc' AND key IN ('rc-push', 'rc-stale') ORDER BY key;
-- not stale yet: not even read
SELECT agentretry.reconcile();
SELECT pg_sleep(2.1);
-- meanwhile the limit was raised: the first one due (rc-push) is not stale
-- under it, and is due again when it would be
SET agentretry.verify_stale_after = '1h';
SELECT agentretry.reconcile(max => 1);
SELECT key, state, reconcile_at - state_since AS stale_after FROM agentretry.operations
WHERE tenant = 'rc' AND key IN ('rc-push', 'rc-stale') ORDER BY key;
SET agentretry.verify_stale_after = '2s';
SELECT agentretry.reconcile();
SELECT a.kind, a.key, a.other_key, a.run_id, a.tool, a.receipt, a.attempt,
	(a.detail->>'since')::timestamptz = o.state_since AS since
FROM rc_anomalies a JOIN agentretry.operations o USING (key)
WHERE o.tenant = 'rc' AND a.kind = 'stale_verification';
SELECT key, state, to_reconcile FROM rc_ops WHERE key IN ('rc-push', 'rc-stale') ORDER BY key;
RESET agentretry.verify_stale_after;
SHOW agentretry.verify_stale_after;

-- duplicate_receipt: two keys of one tool with one receipt are one anomaly
-- for the pair (key < other_key); the same receipt from another tool is not
-- a duplicate.  reconcile(max => 1) looks at one operation per call,
-- oldest due first.
SELECT outcome FROM agentretry.claim('rc-dup-b', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-dup-b', 1, '{}', 'rc', receipt => 'r-dup');
SELECT outcome FROM agentretry.claim('rc-dup-a', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-dup-a', 1, '{}', 'rc', receipt => 'r-dup');
SELECT outcome FROM agentretry.claim('rc-dup-ship', '{}', 'rc_ship', 'rc');
SELECT agentretry.complete('rc-dup-ship', 1, '{}', 'rc', receipt => 'r-dup');
SELECT key FROM agentretry.operations WHERE tenant = 'rc' AND reconcile_at IS NOT NULL
	AND reconcile_at <= clock_timestamp() ORDER BY reconcile_at;
SELECT agentretry.reconcile(max => 1);
SELECT key FROM agentretry.operations WHERE tenant = 'rc' AND reconcile_at <= clock_timestamp()
ORDER BY reconcile_at;
SELECT agentretry.reconcile(max => 1);
SELECT key FROM agentretry.operations WHERE tenant = 'rc' AND reconcile_at <= clock_timestamp()
ORDER BY reconcile_at;
SELECT agentretry.reconcile(max => 1);
SELECT count(*) AS due FROM agentretry.operations WHERE tenant = 'rc' AND reconcile_at <= clock_timestamp();
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail
FROM rc_anomalies WHERE kind = 'duplicate_receipt';

-- both keys of a pair due in one call: still one anomaly; a receipt that
-- observe() stores on a success without one is checked the same way
SELECT outcome FROM agentretry.claim('rc-dup2-a', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-dup2-a', 1, '{}', 'rc', receipt => 'r-dup2');
SELECT outcome FROM agentretry.claim('rc-dup2-b', '{}', 'rc_pay', 'rc');
SELECT agentretry.complete('rc-dup2-b', 1, '{}', 'rc');
SELECT agentretry.observe('rc-dup2-b', 'r-dup2', 'rc', 'listing');
SELECT key FROM agentretry.operations WHERE tenant = 'rc' AND reconcile_at <= clock_timestamp()
ORDER BY key;
SELECT agentretry.reconcile();
SELECT kind, key, other_key, tool, receipt, detail
FROM rc_anomalies WHERE kind = 'duplicate_receipt' ORDER BY id;

-- run_finished_open: a run finished while a step of it is in progress
SELECT agentretry.start_run('rc-run', 'rc', 'wf-1');
SELECT outcome FROM agentretry.claim('rc-run-a', '{}', 'rc_pay', 'rc', run_id => 'rc-run', step => 'a');
SELECT outcome FROM agentretry.claim('rc-run-b', '{}', 'rc_pay', 'rc', run_id => 'rc-run', step => 'b');
SELECT agentretry.complete('rc-run-b', 1, '{}', 'rc');
SELECT agentretry.finish_run('rc-run', 'rc');
-- a run finished (failed) with all its steps ended: nothing to report
SELECT agentretry.start_run('rc-run-ok', 'rc');
SELECT outcome FROM agentretry.claim('rc-run-ok-a', '{}', 'rc_pay', 'rc', run_id => 'rc-run-ok');
SELECT agentretry.complete('rc-run-ok-a', 1, '{}', 'rc');
SELECT outcome FROM agentretry.claim('rc-run-ok-b', '{}', 'rc_pay', 'rc', run_id => 'rc-run-ok');
SELECT action FROM agentretry.fail('rc-run-ok-b', 1, 'permanent', tenant => 'rc');
SELECT agentretry.finish_run('rc-run-ok', 'rc', false);
-- a run still running is not due
SELECT agentretry.start_run('rc-run-open', 'rc');
SELECT outcome FROM agentretry.claim('rc-run-open-a', '{}', 'rc_pay', 'rc', run_id => 'rc-run-open');
SELECT run_id, state, reconcile_at IS NOT NULL AS to_reconcile FROM agentretry.runs
WHERE tenant = 'rc' ORDER BY run_id;
SELECT agentretry.reconcile();
SELECT kind, key, other_key, run_id, tool, receipt, attempt, detail
FROM rc_anomalies WHERE kind = 'run_finished_open';
SELECT run_id, state, reconcile_at IS NOT NULL AS to_reconcile FROM agentretry.runs
WHERE tenant = 'rc' ORDER BY run_id;

-- looking again finds nothing new
SELECT count(*) AS anomalies_before FROM agentretry.anomalies WHERE tenant = 'rc' \gset
SELECT agentretry.reconcile();
SELECT agentretry.reconcile(max => 1);
SELECT count(*) - :anomalies_before AS new_anomalies FROM agentretry.anomalies WHERE tenant = 'rc';
SELECT kind, count(*) FROM agentretry.anomalies WHERE tenant = 'rc' GROUP BY kind ORDER BY kind;

-- sweep() reconciles too, and reports what it found; a lease with evidence
-- that it decides succeeds like one a claim takes over
SELECT outcome FROM agentretry.claim('rc-sweep', '{}', 'rc_fast', 'rc');
SELECT action FROM agentretry.fail('rc-sweep', 1, 'transient', 'pre_execution', tenant => 'rc');
SELECT outcome, attempt FROM agentretry.claim('rc-sweep', '{}', 'rc_fast', 'rc');
SELECT agentretry.complete('rc-sweep', 2, '{}', 'rc');
SELECT outcome FROM agentretry.claim('rc-p-sweep', '{}', 'rc_pay', 'rc');
SELECT agentretry.observe('rc-p-sweep', 'r-p-sweep', 'rc', 'webhook');
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'rc' AND key = 'rc-p-sweep';
SELECT anomalies_found FROM agentretry.sweep();
SELECT key, state, attempts, reason, receipt, to_reconcile FROM rc_ops
WHERE key IN ('rc-sweep', 'rc-p-sweep') ORDER BY key;
SELECT kind, key, receipt, attempt FROM rc_anomalies WHERE key IN ('rc-sweep', 'rc-p-sweep') ORDER BY id;
SELECT anomalies_found FROM agentretry.sweep();

--
-- acknowledge(): an operator marks an anomaly seen, once
--
SELECT id AS ack_id FROM agentretry.anomalies
WHERE tenant = 'rc' AND kind = 'success_after_retry' AND key = 'rc-retry' \gset
SELECT acknowledged_at, acknowledged_by, note FROM agentretry.anomalies WHERE id = :ack_id;
SET ROLE regress_ar_rc_oper;
SELECT agentretry.acknowledge(:ack_id, 'the retry was expected') AS first_ack \gset
RESET ROLE;
SELECT acknowledged_at = :'first_ack' AS stored, acknowledged_at <= clock_timestamp() AS past,
	acknowledged_by, note
FROM agentretry.anomalies WHERE id = :ack_id;
CREATE TABLE rc_ack_before AS SELECT * FROM agentretry.anomalies WHERE tenant = 'rc';
-- again, with another note: the first time, and nothing changes
SET ROLE regress_ar_rc_oper;
SELECT agentretry.acknowledge(:ack_id, 'seen again') = :'first_ack' AS first_time;
SELECT agentretry.acknowledge(:ack_id) = :'first_ack' AS first_time;
RESET ROLE;
SELECT agentretry.acknowledge(:ack_id, 'by the owner') = :'first_ack' AS first_time;
SELECT (SELECT count(*) FROM agentretry.anomalies WHERE tenant = 'rc')
	= (SELECT count(*) FROM rc_ack_before) AS same_count,
	NOT EXISTS (SELECT * FROM agentretry.anomalies a WHERE a.tenant = 'rc'
		EXCEPT SELECT * FROM rc_ack_before) AS unchanged;
-- traced once, with who acknowledged it
SELECT kind, key, reason, message, actor, attempt FROM agentretry.events
WHERE tenant = 'rc' AND kind = 'acknowledge' ORDER BY id;
-- an anomaly without a key (a run's) and one without a tool (an orphan)
SELECT id AS run_ack_id FROM agentretry.anomalies
WHERE tenant = 'rc' AND kind = 'run_finished_open' \gset
SELECT id AS orphan_ack_id FROM agentretry.anomalies
WHERE tenant = 'rc' AND kind = 'orphan_side_effect' AND receipt = 'r-orphan' \gset
SET ROLE regress_ar_rc_oper;
SELECT agentretry.acknowledge(:run_ack_id, 'closed by hand') IS NOT NULL AS acknowledged;
SELECT agentretry.acknowledge(:orphan_ack_id) IS NOT NULL AS acknowledged;
RESET ROLE;
SELECT kind, key, run_id, tool, reason, message, actor FROM agentretry.events
WHERE tenant = 'rc' AND kind = 'acknowledge' ORDER BY id;
SELECT kind, key, acknowledged_by, note FROM agentretry.anomalies
WHERE tenant = 'rc' AND acknowledged_at IS NOT NULL ORDER BY id;
-- unknown and NULL ids, a note over agentretry.max_payload
SELECT rc_try($$SELECT agentretry.acknowledge(-1)$$);
SELECT rc_try($$SELECT agentretry.acknowledge(NULL)$$);
SELECT rc_try($$SELECT agentretry.acknowledge(NULL, 'note')$$);
SELECT id AS open_id FROM agentretry.anomalies
WHERE tenant = 'rc' AND kind = 'duplicate_receipt' AND key = 'rc-dup-a' \gset
SET agentretry.max_payload = 1024;
SELECT rc_try(format($$SELECT agentretry.acknowledge(%s, repeat('n', 1025))$$, :open_id));
RESET agentretry.max_payload;
SELECT acknowledged_at, acknowledged_by, note FROM agentretry.anomalies WHERE id = :open_id;

-- the sweep purges acknowledged anomalies older than
-- agentretry.event_retention (30 days), and the counts behind stats();
-- anomalies nobody acknowledged are kept however old
UPDATE agentretry.anomalies SET found_at = found_at - interval '31 days'
WHERE tenant = 'rc' AND kind IN ('success_after_retry', 'run_finished_open', 'duplicate_receipt');
INSERT INTO agentretry.stats_counts (tenant, bucket, tool, backend, completion_hist)
SELECT 'rc', date_bin('1 minute', clock_timestamp() - d, timestamptz '2000-01-01 00:00+00'),
	'rc_pay', 0, array_fill(0::bigint, ARRAY[cardinality(agentretry.stats_buckets())])
FROM unnest(ARRAY[interval '31 days', interval '29 days']) d;
SELECT anomalies_found FROM agentretry.sweep();
SELECT kind, key, run_id, acknowledged_at IS NOT NULL AS acknowledged FROM agentretry.anomalies
WHERE tenant = 'rc' AND kind IN ('success_after_retry', 'run_finished_open', 'duplicate_receipt')
ORDER BY id;
SELECT clock_timestamp() - bucket > interval '29 days' AS older_than_29_days
FROM agentretry.stats_counts WHERE tenant = 'rc' AND backend = 0;
-- anomalies_found is the last attribute of sweep_summary
SELECT attname FROM pg_attribute
WHERE attrelid = 'agentretry.sweep_summary'::regclass AND attnum > 0 AND NOT attisdropped
ORDER BY attnum DESC LIMIT 1;

--
-- claim_verifications(): verification workers lease operations awaiting
-- verification, oldest first (in a tenant of their own here)
--
SELECT name FROM agentretry.register_tool('rc_pay2', 'non_idempotent', 'write');
SELECT outcome FROM agentretry.claim('cv-1', '{"n": 1}', 'rc_pay', 'rc-v', run_id => 'cv-run', step => 'pay');
SELECT action FROM agentretry.fail('cv-1', 1, 'transient', 'mid_execution', 'timeout', 'gateway timeout',
	tenant => 'rc-v');
SELECT outcome FROM agentretry.claim('cv-2', '{"n": 2}', 'rc_pay2', 'rc-v');
SELECT action FROM agentretry.fail('cv-2', 1, 'ambiguous', tenant => 'rc-v');
SELECT outcome FROM agentretry.claim('cv-3', '{"n": 3}', 'rc_pay', 'rc-v');
SELECT action FROM agentretry.fail('cv-3', 1, 'transient', 'post_execution', 'reset', tenant => 'rc-v');
SELECT outcome FROM agentretry.claim('cv-4', '{"n": 4}', 'rc_pay', 'rc-v');
SELECT action FROM agentretry.fail('cv-4', 1, 'ambiguous', tenant => 'rc-v');
-- cv-4's verification is leased by a claim already
SELECT outcome, lease_token FROM agentretry.claim('cv-4', '{"n": 4}', 'rc_pay', 'rc-v');
-- not a verification: never handed out
SELECT outcome FROM agentretry.claim('cv-busy', '{}', 'rc_pay', 'rc-v');
SELECT outcome FROM agentretry.claim('cv-wait', '{}', 'rc_pay', 'rc-v');
SELECT action FROM agentretry.fail('cv-wait', 1, 'transient', 'pre_execution', tenant => 'rc-v');
SELECT outcome FROM agentretry.claim('cv-done', '{}', 'rc_pay', 'rc-v');
SELECT agentretry.complete('cv-done', 1, '{}', 'rc-v');
SELECT key, state, lease_token FROM rc_ops WHERE tenant = 'rc-v' ORDER BY key;

-- bad max and tools: nothing leased
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', max => 0, tenant => 'rc-v')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', max => 1001, tenant => 'rc-v')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', max => NULL, tenant => 'rc-v')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', tools => ARRAY['rc_pay', NULL], tenant => 'rc-v')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('', tenant => 'rc-v')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', tenant => 'rc-v', lease => '0.5 seconds')$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.claim_verifications('v', tenant => 'rc-v', lease => '2 days')$$);

-- max => 1: the oldest, with a new lease token and what the verifier needs
CREATE TEMP TABLE rc_leased AS
SELECT * FROM agentretry.claim_verifications('verifier-1', max => 1, tenant => 'rc-v', lease => '1 minute');
SELECT c.tenant, c.key, c.tool, c.args, c.attempt, c.lease_token,
	c.lease_expires_at = o.lease_expires_at AS lease_stored,
	c.lease_expires_at - o.updated_at AS lease,
	c.run_id, c.step, c.last_failure_class, c.last_failure_code, c.last_failure_message,
	c.since = o.state_since AS since
FROM rc_leased c JOIN agentretry.operations o USING (tenant, key);
DROP TABLE rc_leased;
SELECT key, state, attempts, lease_token, lease_owner, reason FROM agentretry.lookup('cv-1', 'rc-v');
-- only the tools asked for
SELECT key, tool, attempt, lease_token, last_failure_class, last_failure_code, last_failure_message, run_id
FROM agentretry.claim_verifications('verifier-1', max => 10, tools => ARRAY['rc_pay2'], tenant => 'rc-v');
-- skipping those whose verification lease is live (cv-1, cv-2, cv-4)
SELECT key, tool, lease_token, lease_expires_at - clock_timestamp() > interval '4 minutes' AS default_lease
FROM agentretry.claim_verifications('verifier-2', tenant => 'rc-v');
SELECT key FROM agentretry.claim_verifications('verifier-2', tenant => 'rc-v');
SELECT key, state, lease_token, lease_owner FROM agentretry.operations
WHERE tenant = 'rc-v' ORDER BY key;
-- traced as verifications
SELECT key, attempt, reason, lease_token, owner FROM agentretry.events
WHERE tenant = 'rc-v' AND kind = 'verifying' ORDER BY id;
-- an expired verification lease is free again, with a new token: the
-- verifier that let it expire is superseded
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'rc-v' AND key = 'cv-1';
SELECT key, lease_token FROM agentretry.claim_verifications('verifier-3', tenant => 'rc-v');
SELECT rc_try($$SELECT agentretry.resolve('cv-1', 2, true, tenant => 'rc-v')$$);
-- the verifiers resolve with the tokens they were given
SELECT agentretry.resolve('cv-1', 3, true, '{"charge": "found"}', 'rc-v', receipt => 'r-cv-1');
SELECT agentretry.resolve('cv-2', 2, true, tenant => 'rc-v');
SELECT agentretry.resolve('cv-3', 2, false, tenant => 'rc-v');
SELECT agentretry.resolve('cv-4', 2, true, tenant => 'rc-v', receipt => 'r-cv-4');
SELECT key, state, attempts, lease_token, reason, receipt FROM rc_ops WHERE tenant = 'rc-v' ORDER BY key;
SELECT key FROM agentretry.claim_verifications('verifier-2', tenant => 'rc-v');
-- only the caller's tenant (default: 'default')
SELECT outcome FROM agentretry.claim('cv-other', '{}', 'rc_pay', 'rc-v2');
SELECT action FROM agentretry.fail('cv-other', 1, 'ambiguous', tenant => 'rc-v2');
SELECT count(*) AS leased FROM agentretry.claim_verifications('verifier-2', tenant => 'rc-v');
SELECT tenant, key, lease_token FROM agentretry.claim_verifications('verifier-2', tenant => 'rc-v2');

--
-- bad input: every error changes nothing
--
SELECT outcome, lease_token FROM agentretry.claim('rc-bad', '{}', 'rc_pay', 'rc');
-- observe
SELECT rc_try($$SELECT agentretry.observe('rc-bad', NULL, 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', '', 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', repeat('r', 513), 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', 'r-bad', 'rc', '')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', 'r-bad', 'rc', repeat('s', 129))$$);
SELECT rc_try($$SELECT agentretry.observe(NULL, 'r-bad', 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe('', 'r-bad', 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe(repeat('k', 513), 'r-bad', 'rc')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', 'r-bad', '')$$);
SELECT rc_try($$SELECT agentretry.observe('rc-bad', 'r-bad', repeat('t', 129))$$);
SET agentretry.max_payload = 1024;
SELECT rc_try($$SELECT agentretry.observe('rc-bad', 'r-bad', 'rc', 'webhook', jsonb_build_object('big', repeat('x', 2000)))$$);
RESET agentretry.max_payload;
SELECT state, lease_token, receipt, observed_receipt FROM rc_ops WHERE key = 'rc-bad';
-- the limits themselves are accepted: a receipt of 512 bytes, a source of 128
SELECT agentretry.observe('rc-bad', repeat('r', 512), 'rc', repeat('s', 128));
SELECT state, octet_length(observed_receipt) AS observed_bytes FROM rc_ops WHERE key = 'rc-bad';
SELECT octet_length(receipt) AS receipt_bytes, octet_length(source) AS source_bytes
FROM agentretry.events WHERE tenant = 'rc' AND key = 'rc-bad' AND kind = 'observe';
-- complete and resolve: a receipt is NULL or 1 to 512 bytes
SELECT outcome, lease_token FROM agentretry.claim('rc-bad-c', '{}', 'rc_pay', 'rc');
SELECT rc_try($$SELECT agentretry.complete('rc-bad-c', 1, '{}', 'rc', receipt => '')$$);
SELECT rc_try($$SELECT agentretry.complete('rc-bad-c', 1, '{}', 'rc', receipt => repeat('r', 513))$$);
SELECT rc_try($$SELECT agentretry.complete('rc-bad-c', 1, NULL, 'rc', NULL, NULL, '')$$);
SELECT state, attempts, lease_token, receipt FROM rc_ops WHERE key = 'rc-bad-c';
SELECT agentretry.complete('rc-bad-c', 1, '{}', 'rc', receipt => repeat('r', 512));
SELECT state, octet_length(receipt) AS receipt_bytes FROM rc_ops WHERE key = 'rc-bad-c';
SELECT outcome FROM agentretry.claim('rc-bad-r', '{}', 'rc_pay', 'rc');
SELECT action FROM agentretry.fail('rc-bad-r', 1, 'ambiguous', tenant => 'rc');
SELECT outcome, lease_token FROM agentretry.claim('rc-bad-r', '{}', 'rc_pay', 'rc');
SELECT rc_try($$SELECT agentretry.resolve('rc-bad-r', 2, true, '{}', 'rc', '')$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-bad-r', 2, true, '{}', 'rc', repeat('r', 513))$$);
SELECT rc_try($$SELECT agentretry.resolve('rc-bad-r', 2, false, tenant => 'rc', receipt => '')$$);
SELECT state, attempts, lease_token, receipt FROM rc_ops WHERE key = 'rc-bad-r';
-- reconcile
SELECT rc_try($$SELECT agentretry.reconcile(0)$$);
SELECT rc_try($$SELECT agentretry.reconcile(100001)$$);
SELECT rc_try($$SELECT agentretry.reconcile(-1)$$);
SELECT rc_try($$SELECT agentretry.reconcile(NULL)$$);
-- the limit itself is accepted (rc-bad-c, completed with a receipt, is due)
SELECT rc_try($$SELECT agentretry.reconcile(100000)$$);

--
-- who may call what: agents report evidence and verify; operators also
-- reconcile, acknowledge and read anomalies and stats
--
SELECT outcome FROM agentretry.claim('rc-role-v', '{}', 'rc_pay', 'rc-role');
SELECT action FROM agentretry.fail('rc-role-v', 1, 'ambiguous', tenant => 'rc-role');
SELECT outcome FROM agentretry.claim('rc-role-ok', '{}', 'rc_pay', 'rc-role');
SELECT agentretry.complete('rc-role-ok', 1, '{}', 'rc-role', receipt => 'r-role');
SET ROLE regress_ar_rc_agent;
SELECT rc_try($$SELECT agentretry.observe('rc-role-ok', 'r-role', 'rc-role', 'agent')$$);
SELECT rc_try($$SELECT key FROM agentretry.claim_verifications(tenant => 'rc-role')$$);
-- the owner defaults to the calling role
SELECT state, lease_token, lease_owner FROM agentretry.lookup('rc-role-v', 'rc-role');
SELECT rc_try($$SELECT agentretry.resolve('rc-role-v', 2, true, tenant => 'rc-role', receipt => 'r-role-v')$$);
SELECT rc_try($$SELECT agentretry.reconcile()$$);
SELECT rc_try($$SELECT agentretry.acknowledge(1)$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.stats()$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.anomalies$$);
SELECT rc_try($$SELECT count(*) FROM agentretry.stats_counts$$);
RESET ROLE;
SET ROLE regress_ar_rc_oper;
SELECT rc_try($$SELECT agentretry.observe('rc-role-ok', 'r-role', 'rc-role', 'operator')$$);
SELECT rc_try($$SELECT agentretry.reconcile() >= 0$$);
SELECT rc_try($$SELECT count(*) > 0 FROM agentretry.anomalies WHERE tenant = 'rc'$$);
SELECT rc_try($$SELECT count(*) >= 0 FROM agentretry.stats()$$);
SELECT rc_try($$SELECT count(*) >= 0 FROM agentretry.stats_counts$$);
SELECT rc_try($$SELECT key FROM agentretry.claim_verifications('operator', tenant => 'rc-role')$$);
RESET ROLE;
SELECT key, reason, source FROM agentretry.events
WHERE tenant = 'rc-role' AND kind = 'observe' ORDER BY id;

-- leave nothing behind for the files that follow
DROP VIEW rc_ops, rc_anomalies;
DROP TABLE rc_ack_before;
DROP FUNCTION rc_try(text), rc_digest();
DROP ROLE regress_ar_rc_agent, regress_ar_rc_oper;
DELETE FROM agentretry.anomalies WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.events WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.budget_ledger WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.run_context WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.runs WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.token_floors WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.stats_counts WHERE tenant LIKE 'rc%';
DELETE FROM agentretry.tools WHERE name LIKE 'rc\_%';
