-- Retry budgets: token bucket arithmetic (lazy refill, stripes, no drift,
-- never above capacity, the refill time of a denial), costs by failure
-- class, ratio budgets with their floor and sliding window, the per-run
-- limit (the run's max_retry_events, else agentretry.run_max_retries), the
-- ledger (debits, denials, several budgets at once, rollback),
-- budget_status against the ledger, the sweep's purge of ledger rows and
-- idle runs, the outcomes of fail,
-- claim, claim_due and requeue for budget_wait and budget_exhausted
-- operations, and set_budget / drop_budget validation and privileges.
--
-- Budgets work on the clock (every decision takes its own now), so the
-- passage of time is simulated by moving budget_stripes.refilled_at,
-- budget_stripes.win_start, operations.next_attempt_at or
-- operations.lease_expires_at into the past, as superuser.  Expected token
-- counts are computed from the time the ledger row records for the
-- decision (the same now the debit used), so they are exact.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SET LOCAL timezone = 'UTC';
SELECT plan(271);

-- Retries are due at once (no backoff), so a retry can be claimed right
-- after the failure; max_attempts is high enough never to interfere.
SELECT register_tool('bg_read', 'idempotent', 'read', max_attempts => 100,
					 base_delay => '0', max_delay => '0', jitter => 'none');
SELECT register_tool('bg_read2', 'idempotent', 'read', max_attempts => 100,
					 base_delay => '0', max_delay => '0', jitter => 'none');
SELECT register_tool('bg_write', 'non_idempotent', 'write', max_attempts => 100,
					 base_delay => '0', max_delay => '0', jitter => 'none');
SELECT register_tool('bg_deadline', 'idempotent', 'read', max_attempts => 100,
					 base_delay => '0', max_delay => '0', jitter => 'none', deadline => '10 seconds');

-- Claim p_key (a new key, or a retry that is due) and fail the attempt.
-- When the claim does not execute, the decision is empty and its reason
-- says what the claim answered.
CREATE FUNCTION pg_temp.try_retry(p_tenant text, p_key text,
								  p_failure failure_class DEFAULT 'transient',
								  p_tool text DEFAULT 'bg_read', p_owner text DEFAULT 'w1',
								  p_run text DEFAULT NULL)
RETURNS decision
LANGUAGE plpgsql AS $$
DECLARE
	c claim_result;
	d decision;
BEGIN
	c := claim(p_key, '{}', p_tool, tenant => p_tenant, run_id => p_run, owner => p_owner);
	IF c.outcome <> 'execute' THEN
		d.reason := 'claim answered ' || c.outcome;
		RETURN d;
	END IF;
	RETURN fail(p_key, c.lease_token, p_failure, tenant => p_tenant);
END
$$;

-- The same, n times on one key: the decisions' action/reason, in order.
CREATE FUNCTION pg_temp.retries(p_tenant text, p_key text, n integer,
								p_failure failure_class DEFAULT 'transient',
								p_tool text DEFAULT 'bg_read', p_owner text DEFAULT 'w1',
								p_run text DEFAULT NULL)
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
	d decision;
	out text[] := '{}';
BEGIN
	FOR i IN 1..n LOOP
		d := pg_temp.try_retry(p_tenant, p_key, p_failure, p_tool, p_owner, p_run);
		out := out || (coalesce(d.action::text, '-') || '/' || d.reason);
	END LOOP;
	RETURN out;
END
$$;

-- n first attempts: claims of the new keys prefix-1 .. prefix-n.
CREATE FUNCTION pg_temp.first_attempts(p_tenant text, prefix text, n integer,
									   p_tool text DEFAULT 'bg_read')
RETURNS bigint
LANGUAGE sql AS $$
	SELECT count(*) FILTER (WHERE (claim(prefix || '-' || i, '{}', p_tool, tenant => p_tenant,
										 owner => 'w1')).outcome = 'execute')
	FROM generate_series(1, n) AS i
$$;

-- Fail the first attempts prefix-a .. prefix-b (each holds lease token 1):
-- every failure is a retry decision.  The decisions' action/reason.
CREATE FUNCTION pg_temp.fail_firsts(p_tenant text, prefix text, a integer, b integer)
RETURNS text[]
LANGUAGE sql AS $$
	SELECT array_agg(d.action || '/' || d.reason ORDER BY i)
	FROM generate_series(a, b) AS i,
		 LATERAL fail(prefix || '-' || i, 1, 'transient', tenant => p_tenant) d
$$;

-- The newest ledger row of a tenant.
CREATE FUNCTION pg_temp.last_ledger(p_tenant text)
RETURNS budget_ledger
LANGUAGE sql AS $$
	SELECT * FROM budget_ledger WHERE tenant = p_tenant ORDER BY id DESC LIMIT 1
$$;

-- budget_status.balance with the clock just before and just after it was
-- read: the balance is the refill as of some instant between the two.
CREATE FUNCTION pg_temp.balance_now(p_tenant text, p_scope budget_scope, p_subject text,
									OUT t0 timestamptz, OUT balance float8, OUT t1 timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
	t0 := clock_timestamp();
	SELECT s.balance INTO balance FROM budget_status s
	WHERE s.tenant = p_tenant AND s.scope = p_scope AND s.subject = p_subject;
	t1 := clock_timestamp();
END
$$;

-- fail() with the clock just before and just after the call.
CREATE FUNCTION pg_temp.timed_fail(p_tenant text, p_key text, p_token bigint,
								   OUT t0 timestamptz, OUT d decision, OUT t1 timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
	t0 := clock_timestamp();
	d := fail(p_key, p_token, 'transient', tenant => p_tenant);
	t1 := clock_timestamp();
END
$$;

-- ---------------------------------------------------------------------------
-- 1. token bucket arithmetic
-- ---------------------------------------------------------------------------

-- Whether any budget exists is cached per backend; a budget created later
-- in the same transaction applies at once.
SELECT is((pg_temp.try_retry('bg-cache', 'ca-1')).action::text, 'retry', 'a retry before any budget exists');
SELECT set_budget('bg-cache', 'tenant', 'bg-cache', capacity => 10, stripes => 1);
SELECT is((pg_temp.try_retry('bg-cache', 'ca-1')).action::text, 'retry', 'a retry after set_budget');
SELECT results_eq($$SELECT key, reason, balance_after FROM budget_ledger WHERE tenant = 'bg-cache'$$,
				  $$VALUES ('ca-1', 'debit', 9::float8)$$, 'only the second one paid');

-- One stripe, 10 tokens, 2 per second.  It holds 1 token as of 3 seconds ago.
SELECT set_budget('bg-refill', 'tenant', 'bg-refill', capacity => 10, refill_per_sec => 2, stripes => 1);
UPDATE budget_stripes SET tokens = 1, refilled_at = refilled_at - interval '3 seconds'
WHERE tenant = 'bg-refill';
CREATE TEMP TABLE refill_before AS SELECT tokens, refilled_at FROM budget_stripes WHERE tenant = 'bg-refill';

CREATE TEMP TABLE refill_balance AS SELECT * FROM pg_temp.balance_now('bg-refill', 'tenant', 'bg-refill');
SELECT ok(b.balance BETWEEN least(10, r.tokens + 2::float8 / 1 * extract(epoch FROM b.t0 - r.refilled_at)::float8)
					   AND least(10, r.tokens + 2::float8 / 1 * extract(epoch FROM b.t1 - r.refilled_at)::float8)
		  AND b.balance > 7,
		  'budget_status.balance is the stored tokens plus refill x elapsed (1 + 2 x 3 s and a little)')
FROM refill_balance b, refill_before r;

SELECT is((SELECT d.action::text || '/' || d.reason FROM pg_temp.try_retry('bg-refill', 'rf-1') d),
		  'retry/idempotent_retry', 'a retry the bucket can pay is scheduled as usual');
CREATE TEMP TABLE rf1 AS SELECT * FROM pg_temp.last_ledger('bg-refill');
SELECT is((SELECT tokens FROM budget_stripes WHERE tenant = 'bg-refill'),
		  (SELECT least(10::float8 / 1, r.tokens + 2::float8 / 1 * extract(epoch FROM l.at - r.refilled_at)::float8) - 1
		   FROM refill_before r, rf1 l),
		  'tokens after = min(capacity / stripes, tokens + refill / stripes x elapsed) - cost, elapsed up to the debit');
SELECT is((SELECT refilled_at FROM budget_stripes WHERE tenant = 'bg-refill'), (SELECT at FROM rf1),
		  'the stripe is refilled as of the debit');
SELECT results_eq(
	$$SELECT scope, subject, key, amount, balance_after, reason, failure_class::text, retry_at FROM rf1$$,
	$$SELECT 'tenant', 'bg-refill', 'rf-1', 1::float8, (SELECT tokens FROM budget_stripes WHERE tenant = 'bg-refill'),
			 'debit', 'transient', NULL::timestamptz$$,
	'the debit''s ledger row: amount = cost, balance_after = the tokens left');

-- a long wait fills the bucket to its capacity, not beyond
UPDATE budget_stripes SET refilled_at = refilled_at - interval '1 hour' WHERE tenant = 'bg-refill';
SELECT is((SELECT balance FROM budget_status WHERE tenant = 'bg-refill'), 10::float8,
		  'after an hour the balance is the capacity, not more');
SELECT is((SELECT d.action::text FROM pg_temp.try_retry('bg-refill', 'rf-1') d), 'retry', 'a retry from a full bucket');
SELECT results_eq(
	$$SELECT s.tokens, l.balance_after, l.amount FROM budget_stripes s, pg_temp.last_ledger('bg-refill') l
	  WHERE s.tenant = 'bg-refill'$$,
	$$VALUES (9::float8, 9::float8, 1::float8)$$,
	'a full bucket pays from its capacity: 10 - 1 = 9 exactly');

-- Two stripes: each holds capacity / 2 and refills at refill / 2.  Stripe
-- 0 holds 0.5 and stripe 1 holds 1 token, both as of 1 second ago; an
-- ambiguous failure costs 2, which either stripe can pay after the refill
-- (2.5 and 3 tokens).  Exactly one stripe pays.
SELECT set_budget('bg-stripes', 'tenant', 'bg-stripes', capacity => 8, refill_per_sec => 4, stripes => 2);
UPDATE budget_stripes SET tokens = CASE stripe WHEN 0 THEN 0.5 ELSE 1 END,
	refilled_at = refilled_at - interval '1 second'
WHERE tenant = 'bg-stripes';
CREATE TEMP TABLE stripes_before AS SELECT stripe, tokens, refilled_at FROM budget_stripes WHERE tenant = 'bg-stripes';
SELECT is((SELECT d.action::text FROM pg_temp.try_retry('bg-stripes', 'st-1', 'ambiguous') d), 'retry',
		  'an ambiguous failure retries when a stripe can pay 2');
CREATE TEMP TABLE st1 AS SELECT * FROM pg_temp.last_ledger('bg-stripes');
SELECT is((SELECT count(*) FROM budget_stripes s, st1 l WHERE s.tenant = 'bg-stripes' AND s.refilled_at = l.at),
		  1::bigint, 'exactly one stripe paid');
SELECT is((SELECT s.tokens FROM budget_stripes s, st1 l WHERE s.tenant = 'bg-stripes' AND s.refilled_at = l.at),
		  (SELECT least(8::float8 / 2, b.tokens + 4::float8 / 2 * extract(epoch FROM l.at - b.refilled_at)::float8) - 2
		   FROM budget_stripes s, st1 l, stripes_before b
		   WHERE s.tenant = 'bg-stripes' AND s.refilled_at = l.at AND b.stripe = s.stripe),
		  'the paying stripe: min(8 / 2, tokens + 4 / 2 x elapsed) - 2');
SELECT is((SELECT count(*) FROM budget_stripes s JOIN stripes_before b USING (stripe), st1 l
		   WHERE s.tenant = 'bg-stripes' AND s.refilled_at <> l.at
			 AND s.tokens = b.tokens AND s.refilled_at = b.refilled_at),
		  1::bigint, 'the other stripe is untouched');
SELECT is((SELECT balance_after FROM st1),
		  (SELECT sum(least(8::float8 / 2, s.tokens + 4::float8 / 2 * extract(epoch FROM l.at - s.refilled_at)::float8))
		   FROM budget_stripes s, st1 l WHERE s.tenant = 'bg-stripes'),
		  'balance_after is the whole budget: every stripe refilled to the debit''s time');

-- No drift: ten refills of 0.7 s add exactly what one refill of 7 s adds
-- (0.3 tokens a second; costs 0.2).  Both start empty; what the clock
-- added between the statements is measured from the ledger and taken out.
SELECT set_budget('bg-drift-a', 'tenant', 'bg-drift-a', capacity => 100, refill_per_sec => 0.3,
				  cost_transient => 0.2, cost_ambiguous => 0.2, stripes => 1);
SELECT set_budget('bg-drift-b', 'tenant', 'bg-drift-b', capacity => 100, refill_per_sec => 0.3,
				  cost_transient => 0.2, cost_ambiguous => 0.2, stripes => 1);
UPDATE budget_stripes SET tokens = 0 WHERE tenant IN ('bg-drift-a', 'bg-drift-b');
CREATE TEMP TABLE drift_start AS SELECT tenant, refilled_at FROM budget_stripes WHERE tenant IN ('bg-drift-a', 'bg-drift-b');
CREATE FUNCTION pg_temp.small_steps() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
	out text[] := '{}';
BEGIN
	FOR i IN 1..10 LOOP
		UPDATE budget_stripes SET refilled_at = refilled_at - interval '0.7 seconds' WHERE tenant = 'bg-drift-a';
		out := out || (pg_temp.try_retry('bg-drift-a', 'dr-a')).action::text;
	END LOOP;
	RETURN out;
END
$$;
SELECT is(pg_temp.small_steps(), array_fill('retry'::text, ARRAY[10]), 'ten retries, each after 0.7 s of refill');
UPDATE budget_stripes SET refilled_at = refilled_at - interval '7 seconds' WHERE tenant = 'bg-drift-b';
SELECT is((pg_temp.try_retry('bg-drift-b', 'dr-b')).action::text, 'retry', 'one retry after 7 s of refill');
-- refill added = tokens now + what was paid - 0 at the start, less the clock's share
CREATE TEMP TABLE drift AS
SELECT s.tenant,
	   s.tokens + 0.2 * (SELECT count(*) FROM budget_ledger g WHERE g.tenant = s.tenant AND g.reason = 'debit')
		 - 0.3 * extract(epoch FROM s.refilled_at - d.refilled_at)::float8 AS refill_by_moves,
	   (SELECT count(*) FROM budget_ledger g WHERE g.tenant = s.tenant AND g.reason = 'debit') AS debits
FROM budget_stripes s JOIN drift_start d USING (tenant);
SELECT results_eq($$SELECT tenant, debits FROM drift ORDER BY tenant$$,
				  $$VALUES ('bg-drift-a', 10::bigint), ('bg-drift-b', 1::bigint)$$, 'ten debits against one');
SELECT ok((SELECT bool_and(abs(refill_by_moves - 2.1) < 1e-9) FROM drift),
		  'both refilled 0.3 x 7 s = 2.1 tokens (to 1e-9): no drift from ten small refills');
SELECT ok((SELECT abs(max(refill_by_moves) - min(refill_by_moves)) < 1e-9 FROM drift),
		  'ten small refills add the same as one large one');

-- The refill time of a denial.  Two stripes of capacity 1 refilling 0.25 a
-- second each; stripe 0 holds 0.5 and stripe 1 holds 0.25 as of R.  No
-- stripe can pay 1, nor both together (0.75): denied until together they
-- hold 1 (a debit gathers from several stripes), R + 0.5 s.
SELECT set_budget('bg-deny', 'tenant', 'bg-deny', capacity => 2, refill_per_sec => 0.5,
				  cost_transient => 1, cost_ambiguous => 1, stripes => 2);
CREATE TEMP TABLE deny_r AS SELECT clock_timestamp() AS r;
UPDATE budget_stripes SET tokens = CASE stripe WHEN 0 THEN 0.5 ELSE 0.25 END, refilled_at = (SELECT r FROM deny_r)
WHERE tenant = 'bg-deny';
CREATE TEMP TABLE deny_stripes AS SELECT stripe, tokens, refilled_at FROM budget_stripes WHERE tenant = 'bg-deny';
CREATE TEMP TABLE dn1 AS SELECT * FROM pg_temp.try_retry('bg-deny', 'dn-1');
CREATE TEMP TABLE dn1_ledger AS SELECT * FROM pg_temp.last_ledger('bg-deny');
SELECT is((SELECT action::text || '/' || reason FROM dn1), 'retry/budget_wait',
		  'a denied retry that the refill allows later waits for it (no deadline)');
SELECT results_eq(
	$$SELECT scope, subject, key, amount, reason, failure_class::text FROM dn1_ledger$$,
	$$VALUES ('tenant', 'bg-deny', 'dn-1', 1::float8, 'denied_tokens', 'transient')$$,
	'the denial''s ledger row: amount = the cost asked for, reason denied_tokens');
SELECT is((SELECT round(balance_after::numeric, 6) FROM dn1_ledger),
		  (SELECT round(sum(least(2::float8 / 2, s.tokens + 0.5::float8 / 2
									* extract(epoch FROM l.at - s.refilled_at)::float8))::numeric, 6)
		   FROM deny_stripes s, dn1_ledger l),
		  'and the balance the budget had: every stripe refilled to the denial');
SELECT is((SELECT retry_at FROM dn1_ledger),
		  (SELECT l.at + ceil((1 - (least(2::float8 / 2, 0.5 + 0.5::float8 / 2
										 * extract(epoch FROM l.at - r.r)::float8)
								   + least(2::float8 / 2, 0.25 + 0.5::float8 / 2
										   * extract(epoch FROM l.at - r.r)::float8)))
							  / 0.5::float8 * 1000000) * interval '1 microsecond'
		   FROM dn1_ledger l, deny_r r),
		  'retry_at = when the stripes together will hold the cost, to the microsecond');
SELECT ok((SELECT retry_at - r BETWEEN interval '0.5 seconds' AND interval '0.500001 seconds' FROM dn1_ledger, deny_r),
		  'that is R + 0.5 s: (1 - 0.75) / 0.5 per second');
SELECT results_eq(
	$$SELECT d.retry_at, o.next_attempt_at, o.state::text, o.reason FROM dn1 d, lookup('dn-1', 'bg-deny') o$$,
	$$SELECT retry_at, retry_at, 'retry_wait', 'budget_wait' FROM dn1_ledger$$,
	'fail returns that time, and the operation waits for it in retry_wait with reason budget_wait');
SELECT set_eq($$SELECT stripe, tokens, refilled_at FROM budget_stripes WHERE tenant = 'bg-deny'$$,
			  $$SELECT * FROM deny_stripes$$, 'a denial debits nothing');

-- ---------------------------------------------------------------------------
-- 2. costs by failure class
-- ---------------------------------------------------------------------------
-- 100 tokens, no refill (balances are exact): transient 1, ambiguous 3.
SELECT set_budget('bg-cost', 'tenant', 'bg-cost', capacity => 100, cost_transient => 1, cost_ambiguous => 3,
				  stripes => 1);

-- an expired lease is an ambiguous failure, whoever decides it
SELECT claim('c-claim', '{}', 'bg_read', tenant => 'bg-cost', owner => 'w1');
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-cost' AND key = 'c-claim';
SELECT is((SELECT outcome::text || '/' || attempt FROM claim('c-claim', '{}', 'bg_read', tenant => 'bg-cost', owner => 'w2')),
		  'execute/2', 'a claim decides the expired lease and takes the retry');
SELECT claim('c-due', '{}', 'bg_read', tenant => 'bg-cost', owner => 'w1');
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-cost' AND key = 'c-due';
SELECT is((SELECT array_agg(key || '/' || attempt) FROM claim_due('w2', tenant => 'bg-cost')),
		  ARRAY['c-due/2'], 'claim_due decides the expired lease and takes the retry');
SELECT claim('c-sweep', '{}', 'bg_read', tenant => 'bg-cost', owner => 'w1');
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-cost' AND key = 'c-sweep';
SELECT is((SELECT leases_expired FROM sweep()), 1, 'the sweep decides the expired lease');
SELECT is((SELECT state::text || '/' || reason FROM lookup('c-sweep', 'bg-cost')), 'retry_wait/idempotent_retry',
		  'and schedules its retry');

-- failures reported by fail()
SELECT is((pg_temp.try_retry('bg-cost', 'c-t', 'transient')).action::text, 'retry', 'transient failure: retry');
SELECT is((pg_temp.try_retry('bg-cost', 'c-a', 'ambiguous')).action::text, 'retry', 'ambiguous failure: retry');
SELECT is((pg_temp.try_retry('bg-cost', 'c-p', 'permanent')).action::text, 'dead', 'permanent failure: dead');

-- resolve(executed => false): the attempt did not happen, a transient failure
SELECT is((pg_temp.try_retry('bg-cost', 'c-res', 'ambiguous', 'bg_write')).action::text, 'verify',
		  'an ambiguous failure of a non-idempotent tool is verified, not retried');
SELECT is((SELECT resolve('c-res', c.lease_token, false, tenant => 'bg-cost')::text
		   FROM claim('c-res', '{}', 'bg_write', tenant => 'bg-cost', owner => 'v1') c),
		  'retry_wait', 'resolve(executed => false) retries');

SELECT results_eq(
	$$SELECT key, amount, balance_after, failure_class::text FROM budget_ledger
	  WHERE tenant = 'bg-cost' ORDER BY id$$,
	$$VALUES ('c-claim', 3::float8, 97::float8, 'ambiguous'), ('c-due', 3, 94, 'ambiguous'),
			 ('c-sweep', 3, 91, 'ambiguous'), ('c-t', 1, 90, 'transient'), ('c-a', 3, 87, 'ambiguous'),
			 ('c-res', 1, 86, 'transient')$$,
	'transient and resolve(false) cost cost_transient; ambiguous and expired leases cost_ambiguous; no row for a permanent failure or a verification');
SELECT is((SELECT tokens FROM budget_stripes WHERE tenant = 'bg-cost'), 86::float8, 'the bucket holds 100 - 14');

-- ---------------------------------------------------------------------------
-- 3. ratio budgets
-- ---------------------------------------------------------------------------
-- ratio 0.5, floor 2, a tool budget: 10 first attempts allow max(2, 5) = 5 retries
SELECT set_budget('bg-ratio', 'tool', 'bg_read', ratio => 0.5, ratio_floor => 2);
SELECT is(pg_temp.first_attempts('bg-ratio', 'q', 10), 10::bigint, 'ten first attempts');
SELECT is(pg_temp.first_attempts('bg-ratio', 'qw', 3, 'bg_write'), 3::bigint, 'three of another tool');
SELECT results_eq(
	$$SELECT sum(cur_first)::int, sum(cur_retries)::int, count(*)::int FROM budget_stripes WHERE tenant = 'bg-ratio'$$,
	$$VALUES (10, 0, 4)$$, 'the tool''s budget counted its ten first attempts, not the other tool''s');
SELECT is(pg_temp.fail_firsts('bg-ratio', 'q', 1, 5), array_fill('retry/idempotent_retry'::text, ARRAY[5]),
		  'five retries are allowed');
SELECT results_eq(
	$$SELECT key, scope, subject, amount, balance_after, reason, retry_at FROM budget_ledger
	  WHERE tenant = 'bg-ratio' ORDER BY id$$,
	$$SELECT 'q-' || i, 'tool', 'bg_read', 0::float8, NULL::float8, 'debit', NULL::timestamptz
	  FROM generate_series(1, 5) i$$,
	'a ratio budget''s debits: amount 0, no balance');
CREATE TEMP TABLE q6 AS SELECT * FROM pg_temp.timed_fail('bg-ratio', 'q-6', 1);
CREATE TEMP TABLE q6_ledger AS SELECT * FROM pg_temp.last_ledger('bg-ratio');
SELECT is((SELECT (d).action::text || '/' || (d).reason FROM q6), 'retry/budget_wait',
		  'the sixth retry is denied and waits for the window');
SELECT results_eq(
	$$SELECT key, scope, subject, amount, balance_after, reason, failure_class::text FROM q6_ledger$$,
	$$VALUES ('q-6', 'tool', 'bg_read', 1::float8, NULL::float8, 'denied_ratio', 'transient')$$,
	'the denial''s ledger row: reason denied_ratio');
SELECT is((SELECT retry_at FROM q6_ledger), (SELECT at + interval '1 minute' FROM q6_ledger),
		  'denied_ratio: retry_at = now + ratio_window');
SELECT ok((SELECT (d).retry_at BETWEEN t0 + interval '1 minute' AND t1 + interval '1 minute'
				  AND (d).retry_at = (SELECT retry_at FROM q6_ledger) FROM q6),
		  'fail returns it, within the call''s time + ratio_window');
SELECT is((SELECT sum(cur_retries)::int FROM budget_stripes WHERE tenant = 'bg-ratio'), 5,
		  'the denial counted no retry');
-- a retry's claim is not a first attempt
SELECT is((SELECT outcome::text || '/' || attempt FROM claim('q-1', '{}', 'bg_read', tenant => 'bg-ratio', owner => 'w1')),
		  'execute/2', 'the first retry is claimed');
SELECT is((SELECT array_agg(key ORDER BY key) FROM claim_due('w1', tenant => 'bg-ratio')),
		  ARRAY['q-2', 'q-3', 'q-4', 'q-5'], 'claim_due takes the other four');
SELECT is((SELECT claim('q-7', '{}', 'bg_read', tenant => 'bg-ratio')).outcome::text, 'busy', 'a claim of a held key');
SELECT is((SELECT sum(cur_first)::int FROM budget_stripes WHERE tenant = 'bg-ratio'), 10,
		  'claims of retries and of existing keys count no first attempt');

-- the floor: ratio 0.1 x 10 = 1, but 3 retries are always allowed
SELECT set_budget('bg-floor', 'tenant', 'bg-floor', ratio => 0.1, ratio_floor => 3);
SELECT is(pg_temp.first_attempts('bg-floor', 'f', 10), 10::bigint, 'ten first attempts');
SELECT is(pg_temp.fail_firsts('bg-floor', 'f', 1, 4),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'retry/idempotent_retry', 'retry/budget_wait'],
		  'max(floor 3, 0.1 x 10) = 3 retries, the fourth is denied');
SELECT is((SELECT reason FROM pg_temp.last_ledger('bg-floor')), 'denied_ratio', 'by the ratio budget');

-- The sliding window.  One window later the current window becomes the
-- previous one, weighted by how much of it the sliding window still
-- covers: just under 1.  Ratio 0.45 x (10 first attempts x just under 1)
-- allows 4 retries.  (If the previous window were forgotten, floor 0 would
-- allow none.)
SELECT set_budget('bg-w1', 'tenant', 'bg-w1', ratio => 0.45, ratio_floor => 0);
SELECT is(pg_temp.first_attempts('bg-w1', 'w', 10), 10::bigint, 'ten first attempts');
CREATE TEMP TABLE w1_before AS SELECT stripe, win_start, cur_first FROM budget_stripes WHERE tenant = 'bg-w1';
UPDATE budget_stripes SET win_start = win_start - interval '1 minute' WHERE tenant = 'bg-w1';
SELECT is(pg_temp.fail_firsts('bg-w1', 'w', 1, 1), ARRAY['retry/idempotent_retry'], 'a retry one window later');
SELECT results_eq(
	$$SELECT s.prev_first, s.cur_first, s.prev_retries, s.cur_retries, s.win_start
	  FROM budget_stripes s WHERE s.tenant = 'bg-w1' AND s.cur_retries > 0$$,
	$$SELECT b.cur_first, 0::bigint, 0::bigint, 1::bigint, b.win_start
	  FROM w1_before b JOIN budget_stripes s USING (stripe) WHERE s.tenant = 'bg-w1' AND s.cur_retries > 0$$,
	'the paying stripe rolled: its current window became the previous one, the new one starts a window later');
SELECT is(pg_temp.fail_firsts('bg-w1', 'w', 2, 5),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'retry/idempotent_retry', 'retry/budget_wait'],
		  'the previous window''s first attempts still count: 4 retries, the fifth denied');

-- Half a window further (1.5 windows back) the previous window weighs
-- just under 0.5: 0.5 x 10 x 0.5 = 2.5 allows 2 retries (the whole
-- previous window would allow 4, none of it 0).
SELECT set_budget('bg-w15', 'tenant', 'bg-w15', ratio => 0.5, ratio_floor => 0);
SELECT is(pg_temp.first_attempts('bg-w15', 'h', 10), 10::bigint, 'ten first attempts');
UPDATE budget_stripes SET win_start = win_start - interval '90 seconds' WHERE tenant = 'bg-w15';
SELECT is(pg_temp.fail_firsts('bg-w15', 'h', 1, 3),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'retry/budget_wait'],
		  'half way through the next window the previous one counts half: 2 retries');

-- Two windows later everything is forgotten: only the floor (1) is left.
SELECT set_budget('bg-w2', 'tenant', 'bg-w2', ratio => 0.5, ratio_floor => 1);
SELECT is(pg_temp.first_attempts('bg-w2', 'v', 10), 10::bigint, 'ten first attempts');
UPDATE budget_stripes SET win_start = win_start - interval '2 minutes' WHERE tenant = 'bg-w2';
SELECT is(pg_temp.fail_firsts('bg-w2', 'v', 1, 2), ARRAY['retry/idempotent_retry', 'retry/budget_wait'],
		  'two windows later the first attempts are forgotten: only the floor');
SELECT results_eq(
	$$SELECT s.prev_first, s.cur_first, s.prev_retries, s.cur_retries, s.win_start = l.at
	  FROM budget_stripes s, budget_ledger l
	  WHERE s.tenant = 'bg-w2' AND s.cur_retries > 0 AND l.tenant = 'bg-w2' AND l.reason = 'debit'$$,
	$$VALUES (0::bigint, 0::bigint, 0::bigint, 1::bigint, true)$$,
	'the paying stripe starts a new window at the debit with fresh counters');

-- ---------------------------------------------------------------------------
-- 4. the per-run limit
-- ---------------------------------------------------------------------------
SELECT is(current_setting('agentretry.run_max_retries'), '5', 'agentretry.run_max_retries defaults to 5');
SET LOCAL agentretry.run_max_retries = 2;
SELECT is(pg_temp.retries('bg-run', 'run-a', 2, p_run => 'r-1'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry'], 'two retry events of run r-1');
CREATE TEMP TABLE run_b AS SELECT * FROM pg_temp.try_retry('bg-run', 'run-b', p_run => 'r-1');
SELECT results_eq($$SELECT action::text, reason, retry_at FROM run_b$$,
				  $$VALUES ('dead', 'budget_exhausted', NULL::timestamptz)$$,
				  'the third retry event of the run, on another operation, is denied: dead, budget_exhausted');
SELECT results_eq(
	$$SELECT state::text, reason, next_attempt_at, result FROM lookup('run-b', 'bg-run')$$,
	$$VALUES ('dead', 'budget_exhausted', NULL::timestamptz, NULL::jsonb)$$,
	'the operation is dead-lettered');
SELECT results_eq(
	$$SELECT key, scope, subject, amount, balance_after, reason, failure_class::text, retry_at
	  FROM budget_ledger WHERE tenant = 'bg-run' ORDER BY id$$,
	$$VALUES ('run-a', 'run', 'r-1', 1::float8, NULL::float8, 'debit', 'transient', NULL::timestamptz),
			 ('run-a', 'run', 'r-1', 1, NULL, 'debit', 'transient', NULL),
			 ('run-b', 'run', 'r-1', 1, NULL, 'denied_run', 'transient', NULL)$$,
	'ledger rows of scope run: two debits and the denial, never a retry_at');
SELECT results_eq($$SELECT run_id, state::text, max_retry_events, retry_events FROM runs WHERE tenant = 'bg-run'$$,
				  $$VALUES ('r-1', 'running', NULL::integer, 2)$$,
				  'the run''s counter: 2 (the denial did not count); the claim started the run without a limit of its own');
SELECT is(pg_temp.retries('bg-run', 'run-c', 3, p_run => 'r-2'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'another run has its own limit');
SELECT is(pg_temp.retries('bg-run2', 'run-d', 2, p_run => 'r-1'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry'],
		  'the same run_id in another tenant is another run');
SELECT is(pg_temp.retries('bg-run', 'run-none', 4),
		  array_fill('retry/idempotent_retry'::text, ARRAY[4]), 'operations without a run_id are not limited');
SELECT is((SELECT count(*) FROM budget_ledger WHERE key = 'run-none'), 0::bigint,
		  'and leave no ledger row');
-- an expired lease of the run is a retry event too
SELECT claim('run-e', '{}', 'bg_read', tenant => 'bg-run', run_id => 'r-1', owner => 'w1');
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-run' AND key = 'run-e';
SELECT is((SELECT outcome::text || '/' || reason FROM claim('run-e', '{}', 'bg_read', tenant => 'bg-run')),
		  'denied/budget_exhausted', 'an expired lease in a run over its limit: denied, dead-lettered');
SELECT results_eq(
	$$SELECT scope, subject, reason, failure_class::text FROM pg_temp.last_ledger('bg-run')$$,
	$$VALUES ('run', 'r-1', 'denied_run', 'ambiguous')$$, 'recorded as an ambiguous denial');

-- a run's own limit, start_run's max_retry_events, instead of the GUC (2 here)
SELECT is(start_run('r-max1', 'bg-run', max_retry_events => 1), 'running'::run_state,
		  'a run started with max_retry_events 1');
SELECT is(pg_temp.retries('bg-run', 'run-m1', 2, p_run => 'r-max1'),
		  ARRAY['retry/idempotent_retry', 'dead/budget_exhausted'],
		  'max_retry_events 1: the second retry event of the run is denied, dead-lettered');
SELECT results_eq(
	$$SELECT key, scope, subject, reason FROM pg_temp.last_ledger('bg-run')$$,
	$$VALUES ('run-m1', 'run', 'r-max1', 'denied_run')$$, 'recorded as a denial of the run');
SELECT results_eq(
	$$SELECT max_retry_events, retry_events FROM runs WHERE tenant = 'bg-run' AND run_id = 'r-max1'$$,
	$$VALUES (1, 1)$$, 'the run used its one retry event; the denial did not count');
SELECT results_eq(
	$$SELECT retry_events_used, retry_events_allowed FROM run_status
	  WHERE tenant = 'bg-run' AND run_id = 'r-max1'$$,
	$$VALUES (1, 1)$$, 'run_status: one of one retry events used');
SELECT is(start_run('r-max4', 'bg-run', max_retry_events => 4), 'running'::run_state,
		  'a run started with max_retry_events 4');
SELECT is(pg_temp.retries('bg-run', 'run-m4', 5, p_run => 'r-max4'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'retry/idempotent_retry',
				'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'max_retry_events 4: more than the GUC allows, then denied');
SELECT is(start_run('r-max0', 'bg-run', max_retry_events => 0), 'running'::run_state,
		  'a run started with max_retry_events 0');
SELECT is(pg_temp.retries('bg-run', 'run-m0', 1, p_run => 'r-max0'), ARRAY['dead/budget_exhausted'],
		  'max_retry_events 0: not even one retry event');
-- max_retry_events NULL follows the GUC, also when the GUC changes
SELECT is(start_run('r-null', 'bg-run', max_retry_events => NULL), 'running'::run_state,
		  'a run started with max_retry_events NULL');
SELECT is(pg_temp.retries('bg-run', 'run-n', 3, p_run => 'r-null'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'max_retry_events NULL: the GUC''s limit of 2');
SELECT results_eq(
	$$SELECT retry_events_used, retry_events_allowed FROM run_status
	  WHERE tenant = 'bg-run' AND run_id = 'r-null'$$,
	$$VALUES (2, 2)$$, 'run_status: two of the GUC''s two retry events used');
SET LOCAL agentretry.run_max_retries = 3;
SELECT is(pg_temp.retries('bg-run', 'run-n3', 2, p_run => 'r-null'),
		  ARRAY['retry/idempotent_retry', 'dead/budget_exhausted'],
		  'the GUC raised to 3: the run without a limit of its own gets a third retry event');
SELECT is(pg_temp.retries('bg-run', 'run-m1b', 1, p_run => 'r-max1'), ARRAY['dead/budget_exhausted'],
		  'the run with max_retry_events 1 does not follow the GUC');
-- a repeated start_run fills in a limit still NULL and never replaces one
SELECT is(start_run('r-max1', 'bg-run', max_retry_events => 5), 'running'::run_state,
		  'start_run of the run with max_retry_events 1 again, with 5');
SELECT is(start_run('r-null', 'bg-run', max_retry_events => 4), 'running'::run_state,
		  'start_run of the run without a limit again, with 4');
SELECT results_eq(
	$$SELECT run_id, max_retry_events, retry_events FROM runs
	  WHERE tenant = 'bg-run' AND run_id IN ('r-max1', 'r-null') ORDER BY run_id$$,
	$$VALUES ('r-max1', 1, 1), ('r-null', 4, 3)$$,
	'the limit 1 stays; the NULL one is now 4');
SELECT is(pg_temp.retries('bg-run', 'run-n4', 2, p_run => 'r-null'),
		  ARRAY['retry/idempotent_retry', 'dead/budget_exhausted'],
		  'the limit filled in applies: a fourth retry event, then denied');
-- a run's own limit holds when the GUC allows none
SET LOCAL agentretry.run_max_retries = 0;
SELECT is(start_run('r-guc0', 'bg-run', max_retry_events => 2), 'running'::run_state,
		  'a run started with max_retry_events 2 while the GUC is 0');
SELECT is(pg_temp.retries('bg-run', 'run-g0', 3, p_run => 'r-guc0'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'max_retry_events 2 applies although the GUC is 0');
SELECT is(pg_temp.retries('bg-run', 'run-g0n', 1, p_run => 'r-guc0-null'), ARRAY['dead/budget_exhausted'],
		  'a run started by its claim, without a limit, gets the GUC''s none');
-- a negative limit is refused and starts nothing
SELECT throws_ok($$SELECT start_run('r-neg', 'bg-run', max_retry_events => -1)$$, '22023', NULL,
				 'max_retry_events -1 is refused');
SELECT is((SELECT count(*) FROM runs WHERE tenant = 'bg-run' AND run_id = 'r-neg'), 0::bigint,
		  'and no run was started');
RESET agentretry.run_max_retries;

-- ---------------------------------------------------------------------------
-- 5. the ledger: tenant, user and tool budgets at once; rollback
-- ---------------------------------------------------------------------------
SELECT set_budget('bg-multi', 'tenant', 'bg-multi', capacity => 100, stripes => 1);
SELECT set_budget('bg-multi', 'user', 'w1', capacity => 10, cost_transient => 2, stripes => 1);
SELECT set_budget('bg-multi', 'tool', 'bg_read', capacity => 3, cost_ambiguous => 1, stripes => 1);
-- budgets that do not apply: another owner, another tool, another tenant
SELECT set_budget('bg-multi', 'user', 'w2', capacity => 10, stripes => 1);
SELECT set_budget('bg-multi', 'tool', 'bg_write', capacity => 10, stripes => 1);
SELECT set_budget('bg-other', 'tool', 'bg_read', capacity => 10, stripes => 1);
SELECT set_budget('bg-other', 'tenant', 'bg-other', capacity => 10, stripes => 1);

SELECT is((pg_temp.try_retry('bg-multi', 'm-1', p_owner => 'w1', p_run => 'mr')).action::text, 'retry',
		  'a retry under three budgets and a run');
SELECT results_eq(
	$$SELECT scope, subject, key, amount, balance_after, reason, failure_class::text, retry_at,
			 at = (SELECT max(at) FROM budget_ledger WHERE tenant = 'bg-multi')
	  FROM budget_ledger WHERE tenant = 'bg-multi' ORDER BY scope$$,
	$$VALUES ('run', 'mr', 'm-1', 1::float8, NULL::float8, 'debit', 'transient', NULL::timestamptz, true),
			 ('tenant', 'bg-multi', 'm-1', 1, 99, 'debit', 'transient', NULL, true),
			 ('tool', 'bg_read', 'm-1', 1, 2, 'debit', 'transient', NULL, true),
			 ('user', 'w1', 'm-1', 2, 8, 'debit', 'transient', NULL, true)$$,
	'one debit row per budget and for the run, all at the same time');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-other'), 0::bigint, 'another tenant''s budgets: no row');
SELECT is((SELECT array_agg(subject || '=' || tokens ORDER BY subject) FROM budget_stripes
		   WHERE tenant = 'bg-multi' AND subject IN ('w2', 'bg_write')),
		  ARRAY['bg_write=10', 'w2=10'], 'the other owner''s and the other tool''s budgets are untouched');
SELECT is(pg_temp.retries('bg-multi', 'm-1', 3, p_owner => 'w1', p_run => 'mr'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'the tool budget (3 tokens, no refill) allows two more, then dead-letters');
SELECT results_eq(
	$$SELECT scope, subject, key, amount, balance_after, reason, failure_class::text, retry_at
	  FROM pg_temp.last_ledger('bg-multi')$$,
	$$VALUES ('tool', 'bg_read', 'm-1', 1::float8, 0::float8, 'denied_tokens', 'transient', NULL::timestamptz)$$,
	'one denial row, from the budget that denied, empty; no retry_at without refill');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-multi'), 13::bigint,
		  '3 retries x 4 debit rows + 1 denial row');
SELECT is((SELECT array_agg(subject || '=' || tokens ORDER BY subject) FROM budget_stripes
		   WHERE tenant = 'bg-multi' AND subject IN ('bg-multi', 'w1', 'bg_read')),
		  ARRAY['bg-multi=97', 'bg_read=0', 'w1=4'], 'the denial debited none of the budgets that could pay');
SELECT is((SELECT retry_events FROM runs WHERE tenant = 'bg-multi' AND run_id = 'mr'), 3,
		  'nor the run');
-- the user budget denies when the tenant's could pay: only the user's row
SELECT is(pg_temp.retries('bg-multi', 'm-2', 3, p_tool => 'bg_read2', p_owner => 'w1'),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'the owner''s budget (4 left, 2 a retry) allows two retries of another tool');
SELECT results_eq(
	$$SELECT scope, subject, key, amount, reason FROM pg_temp.last_ledger('bg-multi')$$,
	$$VALUES ('user', 'w1', 'm-2', 2::float8, 'denied_tokens')$$, 'denied by the owner''s budget');
SELECT is((SELECT tokens FROM budget_stripes WHERE tenant = 'bg-multi' AND subject = 'bg-multi'), 95::float8,
		  'the tenant paid for the two retries only');
-- the user of a user budget is the owner of the failing attempt
SELECT is((pg_temp.try_retry('bg-multi', 'm-3', p_tool => 'bg_read2', p_owner => 'w2')).action::text, 'retry',
		  'an attempt leased by w2 fails');
SELECT results_eq($$SELECT scope, subject FROM budget_ledger WHERE key = 'm-3' ORDER BY scope$$,
				  $$VALUES ('tenant', 'bg-multi'), ('user', 'w2')$$, 'w2''s budget pays, not w1''s');

-- A retry rolled back leaves nothing: no debit, no ledger row, no counter.
SELECT set_budget('bg-rb', 'tenant', 'bg-rb', capacity => 10, ratio => 1, ratio_floor => 10, stripes => 1);
SELECT claim('rb-1', '{}', 'bg_read', tenant => 'bg-rb', run_id => 'rb-run', owner => 'w1');
CREATE TEMP TABLE rb_before AS SELECT * FROM budget_stripes WHERE tenant = 'bg-rb';
SAVEPOINT before_retry;
SELECT fail('rb-1', 1, 'transient', tenant => 'bg-rb');
ROLLBACK TO SAVEPOINT before_retry;
SELECT set_eq($$SELECT * FROM budget_stripes WHERE tenant = 'bg-rb'$$, $$SELECT * FROM rb_before$$,
			  'after ROLLBACK TO SAVEPOINT the stripe is as before: tokens and counters');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-rb'), 0::bigint, 'no ledger row');
SELECT results_eq($$SELECT run_id, retry_events FROM runs WHERE tenant = 'bg-rb'$$,
				  $$VALUES ('rb-run', 0)$$, 'the run (started by the claim) counts no retry event');
SELECT is((SELECT state::text || '/' || attempts FROM lookup('rb-1', 'bg-rb')), 'in_progress/1',
		  'the operation is as before the failure');
-- the same, checking inside the subtransaction that the debit had happened
CREATE FUNCTION pg_temp.rolled_back_retry() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	inside text;
BEGIN
	BEGIN
		PERFORM fail('rb-1', 1, 'transient', tenant => 'bg-rb');
		SELECT s.tokens || '/' || s.cur_retries || '/' ||
			   (SELECT count(*) FROM budget_ledger l WHERE l.tenant = 'bg-rb') || '/' ||
			   (SELECT r.retry_events FROM runs r WHERE r.tenant = 'bg-rb')
		INTO inside FROM budget_stripes s WHERE s.tenant = 'bg-rb';
		RAISE EXCEPTION 'roll back';
	EXCEPTION WHEN raise_exception THEN
		RETURN inside;
	END;
END
$$;
SELECT is(pg_temp.rolled_back_retry(), '9/1/2/1',
		  'inside the subtransaction: 9 tokens, 1 retry counted, 2 ledger rows, run counter 1');
SELECT set_eq($$SELECT * FROM budget_stripes WHERE tenant = 'bg-rb'$$, $$SELECT * FROM rb_before$$,
			  'rolled back: the stripe is as before');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-rb') + (SELECT sum(retry_events) FROM runs WHERE tenant = 'bg-rb'),
		  0::bigint, 'rolled back: no ledger row, the run counts no retry event');
SELECT is((fail('rb-1', 1, 'transient', tenant => 'bg-rb')).action::text, 'retry', 'the retry, made for good');
SELECT is((SELECT tokens || '/' || cur_retries FROM budget_stripes WHERE tenant = 'bg-rb'), '9/1',
		  'pays once');

-- ---------------------------------------------------------------------------
-- 6. budget_status against the ledger
-- ---------------------------------------------------------------------------
-- 5 tokens, no refill, costs 1 and 2; and a budget of the owner, whose
-- rows must not count for the tenant's budget.
SELECT set_budget('bg-status', 'tenant', 'bg-status', capacity => 5, stripes => 1);
SELECT set_budget('bg-status', 'user', 'w1', capacity => 100, stripes => 1);
SELECT is(pg_temp.retries('bg-status', 's-1', 2), array_fill('retry/idempotent_retry'::text, ARRAY[2]),
		  'two transient retries (1 + 1)');
SELECT is(pg_temp.retries('bg-status', 's-2', 2, 'ambiguous'),
		  ARRAY['retry/idempotent_retry', 'dead/budget_exhausted'], 'an ambiguous one (2), then one denied (2 > 1)');
SELECT is(pg_temp.retries('bg-status', 's-3', 2), ARRAY['retry/idempotent_retry', 'dead/budget_exhausted'],
		  'a transient one (1), then one denied (1 > 0)');
SELECT results_eq(
	$$SELECT key, reason, amount FROM budget_ledger WHERE tenant = 'bg-status' AND scope = 'tenant' ORDER BY id$$,
	$$VALUES ('s-1', 'debit', 1::float8), ('s-1', 'debit', 1), ('s-2', 'debit', 2), ('s-2', 'denied_tokens', 2),
			 ('s-3', 'debit', 1), ('s-3', 'denied_tokens', 1)$$,
	'the tenant budget''s ledger: four debits (5 tokens), two denials');
SELECT results_eq(
	$$SELECT capacity, balance, refill_per_sec, cost_transient, cost_ambiguous, ratio, ratio_window, ratio_floor,
			 debits_last_hour, tokens_last_hour, denials_last_hour,
			 last_denial = (SELECT at FROM budget_ledger WHERE tenant = 'bg-status' AND scope = 'tenant'
							AND key = 's-3' AND reason = 'denied_tokens'), stripes
	  FROM budget_status WHERE tenant = 'bg-status' AND scope = 'tenant'$$,
	$$VALUES (5::float8, 0::float8, 0::float8, 1::float8, 2::float8, NULL::float8, interval '1 minute', 10,
			  4::bigint, 5::float8, 2::bigint, true, 1)$$,
	'budget_status: balance 0, 4 debits, 5 tokens, 2 denials, the last one s-3''s');
SELECT results_eq(
	$$SELECT balance, debits_last_hour, tokens_last_hour, denials_last_hour, last_denial
	  FROM budget_status WHERE tenant = 'bg-status' AND scope = 'user'$$,
	$$VALUES (95::float8, 4::bigint, 5::float8, 0::bigint, NULL::timestamptz)$$,
	'the owner''s budget paid the same four retries and denied none');
-- rows older than an hour leave the hourly figures; the last denial stays
UPDATE budget_ledger SET at = at - interval '2 hours'
WHERE tenant = 'bg-status' AND scope = 'tenant' AND (key = 's-2' OR (key = 's-3' AND reason = 'denied_tokens'));
SELECT results_eq(
	$$SELECT debits_last_hour, tokens_last_hour, denials_last_hour,
			 last_denial = (SELECT at FROM budget_ledger WHERE tenant = 'bg-status' AND scope = 'tenant'
							AND key = 's-3' AND reason = 'denied_tokens')
	  FROM budget_status WHERE tenant = 'bg-status' AND scope = 'tenant'$$,
	$$VALUES (3::bigint, 3::float8, 0::bigint, true)$$,
	'two hours ago: 3 debits and 3 tokens in the last hour, no denial; last_denial is the newest of all');
-- the sweep purges ledger rows past agentretry.event_retention, and runs
-- idle (updated_at) longer than agentretry.default_ttl (7 days) once none
-- of their operations is left, with their context versions:
--   pr-idle     no operation, idle 8 days                 purged
--   pr-expired  its one operation purged by the same sweep  purged
--   pr-ops      a succeeded operation not yet expired      stays
--   pr-recent   no operation, idle 6 days                 stays (until the TTL is 1 day)
--   r-1         (section 4) operations left, idle 8 days   stays
SELECT lives_ok($$
	SELECT start_run(r, 'bg-purge') FROM unnest(ARRAY['pr-idle', 'pr-expired', 'pr-ops', 'pr-recent']) r;
	SELECT checkpoint(r, 'plan', jsonb_build_object('v', v), 'bg-purge')
	FROM unnest(ARRAY['pr-idle', 'pr-idle', 'pr-expired', 'pr-ops', 'pr-recent']) WITH ORDINALITY AS x(r, v);
	SELECT complete(k, (claim(k, '{}', 'bg_read', tenant => 'bg-purge', run_id => r)).lease_token,
					tenant => 'bg-purge')
	FROM (VALUES ('pr-op-expired', 'pr-expired'), ('pr-op-kept', 'pr-ops')) v(k, r);
	UPDATE operations SET expires_at = clock_timestamp() - interval '1 second'
	WHERE tenant = 'bg-purge' AND key = 'pr-op-expired';
	UPDATE runs SET updated_at = clock_timestamp() - interval '8 days'
	WHERE (tenant = 'bg-purge' AND run_id IN ('pr-idle', 'pr-expired', 'pr-ops'))
	   OR (tenant = 'bg-run' AND run_id = 'r-1');
	UPDATE runs SET updated_at = clock_timestamp() - interval '6 days'
	WHERE tenant = 'bg-purge' AND run_id = 'pr-recent';
$$, 'four runs with context, two with an operation, made idle');
SELECT is((SELECT count(*) FROM run_context WHERE tenant = 'bg-purge'), 5::bigint, 'five context versions');
SET LOCAL agentretry.event_retention = '1h';
CREATE TEMP TABLE swept AS SELECT * FROM sweep();
SELECT is((SELECT ledger_purged FROM swept), 3, 'the sweep purges the three ledger rows older than the retention');
SELECT results_eq(
	$$SELECT key, reason FROM budget_ledger WHERE tenant = 'bg-status' AND scope = 'tenant' ORDER BY id$$,
	$$VALUES ('s-1', 'debit'), ('s-1', 'debit'), ('s-3', 'debit')$$, 'the recent rows stay');
SELECT is((SELECT runs_purged FROM swept), 2, 'the sweep purges the two idle runs with no operation left');
SELECT is((SELECT array_agg(run_id ORDER BY run_id) FROM runs WHERE tenant = 'bg-purge'),
		  ARRAY['pr-ops', 'pr-recent'],
		  'gone: the idle run and the one whose operation the sweep purged; the others stay');
SELECT is((SELECT count(*) FROM operations WHERE tenant = 'bg-purge' AND key = 'pr-op-expired'), 0::bigint,
		  'the expired operation is purged');
SELECT results_eq(
	$$SELECT run_id, version FROM run_context WHERE tenant = 'bg-purge' ORDER BY run_id, version$$,
	$$VALUES ('pr-ops', 1), ('pr-recent', 1)$$, 'the purged runs'' context versions are gone with them');
SELECT is((SELECT count(*) FROM runs WHERE tenant = 'bg-run' AND run_id = 'r-1'), 1::bigint,
		  'an idle run whose operations are left stays');
RESET agentretry.event_retention;
SET LOCAL agentretry.default_ttl = '1d';
SELECT is((SELECT runs_purged FROM sweep()), 1, 'with a TTL of a day the run idle for 6 days is purged too');
SELECT is((SELECT array_agg(run_id ORDER BY run_id) FROM runs WHERE tenant = 'bg-purge'), ARRAY['pr-ops'],
		  'only the run with an operation left stays');
SELECT results_eq($$SELECT run_id, version FROM run_context WHERE tenant = 'bg-purge'$$,
				  $$VALUES ('pr-ops', 1)$$, 'and only its context');
RESET agentretry.default_ttl;

-- a ratio-only budget has no balance and spends no tokens
SELECT results_eq(
	$$SELECT balance, debits_last_hour, tokens_last_hour, denials_last_hour
	  FROM budget_status WHERE tenant = 'bg-ratio'$$,
	$$VALUES (NULL::float8, 5::bigint, 0::float8, 1::bigint)$$, 'a ratio budget: no balance, debits of 0 tokens');

-- ---------------------------------------------------------------------------
-- 7. outcomes of fail, claim, claim_due and requeue
-- ---------------------------------------------------------------------------
-- 2 stripes of 1 token refilling 0.01 a second each (a token in 100 s)
SELECT set_budget('bg-out', 'tenant', 'bg-out', capacity => 2, refill_per_sec => 0.02,
				  cost_transient => 1, cost_ambiguous => 1, stripes => 2);
CREATE FUNCTION pg_temp.empty(p_tenant text) RETURNS void
LANGUAGE sql AS $$
	UPDATE budget_stripes SET tokens = 0, refilled_at = clock_timestamp() WHERE tenant = p_tenant
$$;
CREATE FUNCTION pg_temp.make_due(p_tenant text, p_key text) RETURNS void
LANGUAGE sql AS $$
	UPDATE operations SET next_attempt_at = clock_timestamp() - interval '1 millisecond'
	WHERE tenant = p_tenant AND key = p_key
$$;
SELECT pg_temp.empty('bg-out');
CREATE TEMP TABLE o1 AS SELECT * FROM pg_temp.try_retry('bg-out', 'o-1');
SELECT results_eq($$SELECT d.action::text, d.reason, d.retry_at FROM o1 d$$,
				  $$SELECT 'retry', 'budget_wait', retry_at FROM pg_temp.last_ledger('bg-out')$$,
				  'fail: retry, budget_wait, at the refill time');

-- not yet due: denied until then; claim_due does not take it
SELECT results_eq(
	$$SELECT outcome::text, attempt, lease_token, retry_at, reason FROM claim('o-1', '{}', 'bg_read', tenant => 'bg-out')$$,
	$$SELECT 'denied', 1, NULL::bigint, retry_at, 'budget_wait' FROM o1$$,
	'a claim before the refill time: denied, retry_at = the refill time');
SELECT is_empty($$SELECT * FROM claim_due('w9', tenant => 'bg-out')$$, 'claim_due: nothing due');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-out'), 1::bigint, 'answering denied writes nothing');

-- due, but the budget is still empty: denied again, with a new time
SELECT pg_temp.make_due('bg-out', 'o-1');
SELECT pg_temp.empty('bg-out');
CREATE TEMP TABLE o1_again AS SELECT * FROM claim('o-1', '{}', 'bg_read', tenant => 'bg-out');
SELECT results_eq(
	$$SELECT c.outcome::text, c.attempt, c.lease_token, c.retry_at, c.reason FROM o1_again c$$,
	$$SELECT 'denied', 1, NULL::bigint, l.retry_at, 'budget_wait' FROM pg_temp.last_ledger('bg-out') l$$,
	'due but still empty: denied, retry_at = the new refill time');
SELECT results_eq(
	$$SELECT key, reason, amount, retry_at > (SELECT retry_at FROM o1) FROM pg_temp.last_ledger('bg-out')$$,
	$$VALUES ('o-1', 'denied_tokens', 1::float8, true)$$, 'a new denial in the ledger, later than the first');
SELECT results_eq(
	$$SELECT state::text, reason, attempts, next_attempt_at FROM lookup('o-1', 'bg-out')$$,
	$$SELECT 'retry_wait', 'budget_wait', 1, retry_at FROM o1_again$$, 'the operation waits for the new time');
SELECT results_eq(
	$$SELECT kind, reason, attempt FROM agentretry.events WHERE tenant = 'bg-out' AND key = 'o-1' ORDER BY id DESC LIMIT 1$$,
	$$VALUES ('denied', 'denied_tokens', 1)$$, 'and the denial is traced in events');

-- due and still empty: claim_due passes it over and reschedules it
SELECT pg_temp.make_due('bg-out', 'o-1');
SELECT pg_temp.empty('bg-out');
SELECT is_empty($$SELECT * FROM claim_due('w9', tenant => 'bg-out')$$,
				'claim_due does not return a due budget_wait operation whose budget is empty');
SELECT results_eq(
	$$SELECT o.state::text, o.reason, o.next_attempt_at, l.reason FROM lookup('o-1', 'bg-out') o, pg_temp.last_ledger('bg-out') l$$,
	$$SELECT 'retry_wait', 'budget_wait', retry_at, 'denied_tokens' FROM pg_temp.last_ledger('bg-out')$$,
	'it was denied again and waits for the new refill time');

-- due with the budget refilled: the retry executes and pays now
SELECT pg_temp.make_due('bg-out', 'o-1');
UPDATE budget_stripes SET refilled_at = refilled_at - interval '1 hour' WHERE tenant = 'bg-out';
SELECT is((SELECT outcome::text || '/' || attempt FROM claim('o-1', '{}', 'bg_read', tenant => 'bg-out', owner => 'w1')),
		  'execute/2', 'due and refilled: execute');
SELECT results_eq(
	$$SELECT l.key, l.reason, l.amount, l.balance_after, l.at = o.last_attempt_at
	  FROM pg_temp.last_ledger('bg-out') l, lookup('o-1', 'bg-out') o$$,
	$$VALUES ('o-1', 'debit', 1::float8, 1::float8, true)$$, 'the debit happens at the claim that starts the retry');
-- the same through claim_due
SELECT pg_temp.empty('bg-out');
SELECT is((pg_temp.try_retry('bg-out', 'o-2')).reason, 'budget_wait', 'another retry waits for the budget');
SELECT pg_temp.make_due('bg-out', 'o-2');
UPDATE budget_stripes SET refilled_at = refilled_at - interval '1 hour' WHERE tenant = 'bg-out';
SELECT is((SELECT array_agg(key || '/' || attempt) FROM claim_due('w9', tenant => 'bg-out')), ARRAY['o-2/2'],
		  'claim_due takes it once the budget has refilled');
SELECT results_eq(
	$$SELECT l.key, l.reason, l.at = o.last_attempt_at FROM pg_temp.last_ledger('bg-out') l, lookup('o-2', 'bg-out') o$$,
	$$VALUES ('o-2', 'debit', true)$$, 'and it pays then');

-- An expired lease the budget cannot pay for waits for the refill too,
-- whoever decides it.  A claim that decides it answers like any claim of
-- an operation waiting for the budget: denied, with the refill time.
SELECT pg_temp.empty('bg-out');
SELECT claim(k, '{}', 'bg_read', tenant => 'bg-out', owner => 'w1') FROM unnest(ARRAY['o-3', 'o-4', 'o-5']) k;
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-out' AND key IN ('o-3', 'o-4');
CREATE TEMP TABLE o3 AS SELECT * FROM claim('o-3', '{}', 'bg_read', tenant => 'bg-out');
SELECT results_eq(
	$$SELECT o.state::text, o.reason, o.next_attempt_at, l.reason, l.failure_class::text
	  FROM lookup('o-3', 'bg-out') o, pg_temp.last_ledger('bg-out') l$$,
	$$SELECT 'retry_wait', 'budget_wait', retry_at, 'denied_tokens', 'ambiguous' FROM pg_temp.last_ledger('bg-out')$$,
	'a claim finding an expired lease the budget denies: retry_wait until the refill');
SELECT results_eq(
	$$SELECT outcome::text, attempt, lease_token, retry_at, reason FROM o3$$,
	$$SELECT 'denied', 1, NULL::bigint, retry_at, 'budget_wait' FROM pg_temp.last_ledger('bg-out')$$,
	'and the claim answers denied with the refill time');
SELECT is_empty($$SELECT * FROM claim_due('w9', tenant => 'bg-out')$$,
				'claim_due does not return an expired lease the budget denies');
SELECT is((SELECT state::text || '/' || reason FROM lookup('o-4', 'bg-out')), 'retry_wait/budget_wait',
		  'it waits for the refill');
UPDATE operations SET lease_expires_at = clock_timestamp() - interval '1 second'
WHERE tenant = 'bg-out' AND key = 'o-5';
SELECT is((SELECT leases_expired FROM sweep()), 1, 'the sweep decides the last one');
SELECT results_eq(
	$$SELECT o.state::text, o.reason, o.next_attempt_at = l.retry_at, l.key
	  FROM lookup('o-5', 'bg-out') o, pg_temp.last_ledger('bg-out') l$$,
	$$VALUES ('retry_wait', 'budget_wait', true, 'o-5')$$, 'it waits for the refill as well');

-- a retry that waited after an ambiguous failure pays cost_ambiguous when it starts
SELECT set_budget('bg-amb', 'tenant', 'bg-amb', capacity => 8, refill_per_sec => 0.02, cost_ambiguous => 3,
				  stripes => 1);
SELECT pg_temp.empty('bg-amb');
SELECT is((pg_temp.try_retry('bg-amb', 'a-1', 'ambiguous')).reason, 'budget_wait', 'an ambiguous failure waits');
SELECT pg_temp.make_due('bg-amb', 'a-1');
UPDATE budget_stripes SET refilled_at = refilled_at - interval '1 hour' WHERE tenant = 'bg-amb';
SELECT is((SELECT outcome::text FROM claim('a-1', '{}', 'bg_read', tenant => 'bg-amb')), 'execute', 'it starts');
SELECT results_eq($$SELECT reason, amount, balance_after, failure_class::text FROM pg_temp.last_ledger('bg-amb')$$,
				  $$VALUES ('debit', 3::float8, 5::float8, 'ambiguous')$$, 'paying cost_ambiguous');

-- no refill: dead, budget_exhausted; a claim is denied with no retry_at
SELECT set_budget('bg-zero', 'tenant', 'bg-zero', capacity => 2, cost_transient => 1, cost_ambiguous => 1, stripes => 2);
SELECT is(pg_temp.retries('bg-zero', 'z-1', 3),
		  ARRAY['retry/idempotent_retry', 'retry/idempotent_retry', 'dead/budget_exhausted'],
		  'a bucket without refill: two retries, then dead, budget_exhausted');
SELECT results_eq(
	$$SELECT reason, retry_at FROM pg_temp.last_ledger('bg-zero')$$,
	$$VALUES ('denied_tokens', NULL::timestamptz)$$, 'the denial has no retry_at');
SELECT results_eq(
	$$SELECT outcome::text, attempt, lease_token, retry_at, reason, result
	  FROM claim('z-1', '{}', 'bg_read', tenant => 'bg-zero')$$,
	$$VALUES ('denied', 3, NULL::bigint, NULL::timestamptz, 'budget_exhausted',
			  '{"class": "transient", "phase": null, "code": null, "message": null, "reason": "budget_exhausted"}'::jsonb)$$,
	'a claim of a budget_exhausted operation: denied, retry_at NULL, result = the last error');
-- requeue: the operator decided, the budget is not asked
SELECT is(requeue('z-1', 'bg-zero')::text, 'retry_wait', 'requeue a budget_exhausted operation');
CREATE TEMP TABLE zero_before AS SELECT * FROM budget_stripes WHERE tenant = 'bg-zero';
CREATE TEMP TABLE z1 AS SELECT * FROM claim('z-1', '{}', 'bg_read', tenant => 'bg-zero');
SELECT is((SELECT outcome::text || '/' || attempt FROM z1), 'execute/4', 'the requeued operation executes');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-zero'), 3::bigint, 'without a ledger row');
SELECT set_eq($$SELECT * FROM budget_stripes WHERE tenant = 'bg-zero'$$, $$SELECT * FROM zero_before$$,
			  'and without a debit');
SELECT is((SELECT d.action::text || '/' || d.reason FROM z1, fail('z-1', z1.lease_token, 'transient', tenant => 'bg-zero') d),
		  'dead/budget_exhausted', 'its next failure is checked again');

-- with a deadline: a refill before it waits, a refill after it is dead
SELECT set_budget('bg-late', 'tenant', 'bg-late', capacity => 2, refill_per_sec => 1,
				  cost_transient => 1, cost_ambiguous => 1, stripes => 2);
SELECT pg_temp.empty('bg-late');
SELECT is((pg_temp.try_retry('bg-late', 'l-1', p_tool => 'bg_deadline')).reason, 'budget_wait',
		  'refill in 2 s, deadline in 10 s: budget_wait');
SELECT ok((SELECT next_attempt_at <= deadline FROM lookup('l-1', 'bg-late')), 'the wait ends before the deadline');
SELECT set_budget('bg-late', 'tenant', 'bg-late', capacity => 2, refill_per_sec => 0.01,
				  cost_transient => 1, cost_ambiguous => 1, stripes => 2);
SELECT pg_temp.empty('bg-late');
CREATE TEMP TABLE l2 AS SELECT * FROM pg_temp.try_retry('bg-late', 'l-2', p_tool => 'bg_deadline');
SELECT results_eq($$SELECT action::text, reason, retry_at FROM l2$$,
				  $$VALUES ('dead', 'budget_exhausted', NULL::timestamptz)$$,
				  'refill in 200 s, deadline in 10 s: dead, budget_exhausted');
SELECT ok((SELECT l.retry_at > o.deadline FROM pg_temp.last_ledger('bg-late') l, lookup('l-2', 'bg-late') o),
		  'the ledger still says when the budget would have allowed it: after the deadline');
-- the waiting l-1 falls due with the budget still empty and its deadline
-- (moved to 1 s from now) before the next refill: dead-lettered at the claim
SELECT pg_temp.empty('bg-late');
UPDATE operations SET deadline = clock_timestamp() + interval '1 second',
	next_attempt_at = clock_timestamp() - interval '1 millisecond'
WHERE tenant = 'bg-late' AND key = 'l-1';
SELECT results_eq(
	$$SELECT outcome::text, retry_at, reason FROM claim('l-1', '{}', 'bg_deadline', tenant => 'bg-late')$$,
	$$VALUES ('denied', NULL::timestamptz, 'budget_exhausted')$$,
	'due, still empty, next refill after the deadline: denied, dead-lettered');
SELECT is((SELECT state::text FROM lookup('l-1', 'bg-late')), 'dead', 'the operation is dead');

-- ---------------------------------------------------------------------------
-- 8. set_budget, drop_budget, privileges
-- ---------------------------------------------------------------------------
SELECT results_eq(
	$$SELECT tenant, scope::text, subject, capacity, refill_per_sec, cost_transient, cost_ambiguous, ratio,
			 ratio_window, ratio_floor, stripes
	  FROM set_budget(NULL, 'tool', 'bg_read', capacity => 40)$$,
	$$VALUES ('default', 'tool', 'bg_read', 40::float8, 0::float8, 1::float8, 2::float8, NULL::float8,
			  interval '1 minute', 10, 4)$$,
	'set_budget returns the budget with its defaults; tenant NULL is the default tenant');
SELECT results_eq(
	$$SELECT stripe, tokens, refilled_at = win_start, cur_first + cur_retries + prev_first + prev_retries
	  FROM budget_stripes WHERE tenant = 'default' ORDER BY stripe$$,
	$$VALUES (0, 10::float8, true, 0::bigint), (1, 10, true, 0), (2, 10, true, 0), (3, 10, true, 0)$$,
	'it starts full: 4 stripes of 40 / 4');

-- validation: every bad input is refused and changes nothing.  A budget
-- that is not full is in place, so a refused replacement would show.
SELECT set_budget('bg-val', 'tenant', 'bg-val', capacity => 10, stripes => 1);
SELECT pg_temp.try_retry('bg-val', 'val-1');
CREATE FUNCTION pg_temp.budget_digest() RETURNS text
LANGUAGE sql AS $$
	SELECT md5(coalesce((SELECT string_agg(b::text, E'\n' ORDER BY b.tenant, b.scope, b.subject) FROM budgets b), '')
			   || E'\f' ||
			   coalesce((SELECT string_agg(s::text, E'\n' ORDER BY s.tenant, s.scope, s.subject, s.stripe)
						 FROM budget_stripes s), '') || E'\f' ||
			   coalesce((SELECT string_agg(l::text, E'\n' ORDER BY l.tenant, l.id) FROM budget_ledger l), ''))
$$;
CREATE TEMP TABLE digest_before AS SELECT pg_temp.budget_digest() AS d;

-- SQLSTATE: message / detail / hint of a statement that fails
CREATE FUNCTION pg_temp.error_of(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	st text;
	msg text;
	det text;
	hint text;
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
		hint = PG_EXCEPTION_HINT;
	RETURN st || ': ' || msg || ' / ' || det || ' / ' || hint;
END
$$;
CREATE FUNCTION pg_temp.refused(call text, state text, msg text, description text) RETURNS text
LANGUAGE sql AS $$
	SELECT throws_ok(format('SELECT set_budget(%s)', call), state, msg, description)
$$;
SELECT pg_temp.refused($$'bg-val', NULL, 'x', 10$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'scope NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', NULL, 10$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'subject NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, refill_per_sec => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'refill_per_sec NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, cost_transient => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'cost_transient NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, cost_ambiguous => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'cost_ambiguous NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_window => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'ratio_window NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_floor => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'ratio_floor NULL');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, stripes => NULL$$, '22004',
	'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null', 'stripes NULL');
SELECT pg_temp.refused($$'', 'tenant', 'x', 10$$, '22023', 'tenant and subject must be 1 to 128 bytes long', 'tenant empty');
SELECT pg_temp.refused($$repeat('t', 129), 'tenant', 'x', 10$$, '22023', 'tenant and subject must be 1 to 128 bytes long',
	'tenant of 129 bytes');
SELECT pg_temp.refused($$'bg-val', 'tool', '', 10$$, '22023', 'tenant and subject must be 1 to 128 bytes long',
	'subject empty');
SELECT pg_temp.refused($$'bg-val', 'tool', repeat('é', 65), 10$$, '22023',
	'tenant and subject must be 1 to 128 bytes long', 'subject of 65 characters, 130 bytes');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val'$$, '22023', 'a budget needs a capacity, a ratio, or both',
	'neither capacity nor ratio');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 0$$, '22023', 'capacity must be positive and at most 1e9',
	'capacity 0');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', -8$$, '22023', 'capacity must be positive and at most 1e9',
	'capacity negative');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 1000000001$$, '22023', 'capacity must be positive and at most 1e9',
	'capacity above 1e9');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 'NaN'$$, '22023', 'capacity must be positive and at most 1e9',
	'capacity NaN');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 'Infinity'$$, '22023', 'capacity must be positive and at most 1e9',
	'capacity infinite');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, refill_per_sec => -0.1$$, '22023',
	'refill_per_sec must be between 0 and 1e9', 'refill negative');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, refill_per_sec => 1000000001$$, '22023',
	'refill_per_sec must be between 0 and 1e9', 'refill above 1e9');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, refill_per_sec => 'NaN'$$, '22023',
	'refill_per_sec must be between 0 and 1e9', 'refill NaN');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, cost_transient => 0$$, '22023',
	'costs must be positive and at most 1e6', 'cost_transient 0');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 1e9, cost_transient => 1000001$$, '22023',
	'costs must be positive and at most 1e6', 'cost_transient above 1e6');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, cost_ambiguous => -1$$, '22023',
	'costs must be positive and at most 1e6', 'cost_ambiguous negative');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 10, cost_ambiguous => 'NaN'$$, '22023',
	'costs must be positive and at most 1e6', 'cost_ambiguous NaN');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 0$$, '22023',
	'ratio must be positive and at most 100', 'ratio 0');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 100.5$$, '22023',
	'ratio must be positive and at most 100', 'ratio above 100');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 'NaN'$$, '22023',
	'ratio must be positive and at most 100', 'ratio NaN');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_window => '0.5 seconds'$$, '22023',
	'ratio_window must be between 1 second and 1 day', 'ratio_window under a second');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_window => '25 hours'$$, '22023',
	'ratio_window must be between 1 second and 1 day', 'ratio_window over a day');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_window => '-1 minute'$$, '22023',
	'ratio_window must be between 1 second and 1 day', 'ratio_window negative');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', ratio => 1, ratio_floor => -1$$, '22023',
	'ratio_floor must not be negative', 'ratio_floor negative');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 1000, stripes => 0$$, '22023',
	'stripes must be between 1 and 64', 'stripes 0');
SELECT pg_temp.refused($$'bg-val', 'tenant', 'bg-val', 1000, stripes => 65$$, '22023',
	'stripes must be between 1 and 64', 'stripes 65');
SELECT throws_ok($$SELECT set_budget('bg-val', 'global', 'x', 10)$$, '22P02',
	'invalid input value for enum budget_scope: "global"', 'an unknown scope');
SELECT is(pg_temp.budget_digest(), (SELECT d FROM digest_before),
		  'the refused calls changed no budget, stripe or ledger row');
SELECT is((SELECT d.action::text FROM pg_temp.try_retry('bg-val', 'val-1') d), 'retry',
		  'the budget still works');
SELECT is((SELECT tokens FROM budget_stripes WHERE tenant = 'bg-val'), 8::float8, 'with its own balance');

-- replacing a budget starts it full with fresh counters; its ledger stays
CREATE TEMP TABLE val_before AS SELECT * FROM budgets WHERE tenant = 'bg-val';
SELECT set_budget('bg-val', 'tenant', 'bg-val', capacity => 12, ratio => 1, stripes => 3);
SELECT results_eq(
	$$SELECT stripe, tokens, cur_first + cur_retries + prev_first + prev_retries
	  FROM budget_stripes WHERE tenant = 'bg-val' ORDER BY stripe$$,
	$$VALUES (0, 4::float8, 0::bigint), (1, 4, 0), (2, 4, 0)$$,
	'a replaced budget is full again: 3 stripes of 12 / 3');
SELECT results_eq(
	$$SELECT b.capacity, b.ratio, b.created_at = v.created_at, b.updated_at > v.updated_at
	  FROM budgets b, val_before v WHERE b.tenant = 'bg-val'$$,
	$$VALUES (12::float8, 1::float8, true, true)$$, 'the row is replaced: new settings, created_at kept');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-val'), 2::bigint, 'its ledger rows stay');

-- drop_budget removes the budget and its stripes, keeps the ledger
SELECT is(drop_budget('bg-val', 'tenant', 'bg-val'), true, 'drop an existing budget');
SELECT is((SELECT count(*) FROM budgets WHERE tenant = 'bg-val') + (SELECT count(*) FROM budget_stripes WHERE tenant = 'bg-val'),
		  0::bigint, 'the budget and its stripes are gone');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-val'), 2::bigint, 'the ledger rows stay');
SELECT is(drop_budget('bg-val', 'tenant', 'bg-val'), false, 'drop it again: false');
SELECT is(drop_budget('bg-val', 'user', 'bg-val'), false, 'drop a budget that never existed: false');
SELECT is(drop_budget(NULL, 'tool', 'bg_read'), true, 'tenant NULL is the default tenant');
SELECT is((SELECT count(*) FROM budget_stripes WHERE tenant = 'default'), 0::bigint, 'its stripes are gone too');
SELECT is((pg_temp.try_retry('bg-val', 'val-1')).action::text, 'retry', 'without the budget the retry is free');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-val'), 2::bigint, 'and writes no ledger row');

-- a tenant budget belongs to its tenant; drop_budget checks its arguments
SELECT throws_ok($$SELECT set_budget('bg-val', 'tenant', 'someone-else', capacity => 5)$$,
				 '22023', 'the subject of a tenant budget is its tenant', 'tenant budget of another subject');
SELECT throws_ok($$SELECT drop_budget('bg-val', NULL, 'x')$$, '22004',
				 'scope and subject must not be null', 'drop_budget: scope NULL');
SELECT throws_ok($$SELECT drop_budget('bg-val', 'tool', NULL)$$, '22004',
				 'scope and subject must not be null', 'drop_budget: subject NULL');
SELECT throws_ok($$SELECT drop_budget('', 'tool', 'x')$$, '22023',
				 'tenant and subject must be 1 to 128 bytes long', 'drop_budget: tenant empty');
SELECT throws_ok($$SELECT drop_budget('bg-val', 'tool', repeat('s', 129))$$, '22023',
				 'tenant and subject must be 1 to 128 bytes long', 'drop_budget: subject too long');

-- privileges
SELECT results_eq(
	$$SELECT f, has_function_privilege('agentretry_agent', f, 'EXECUTE'),
			 has_function_privilege('agentretry_operator', f, 'EXECUTE'),
			 has_function_privilege('agentretry_admin', f, 'EXECUTE'),
			 has_function_privilege('public', f, 'EXECUTE')
	  FROM unnest(ARRAY[
		'agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer)',
		'agentretry.drop_budget(text, agentretry.budget_scope, text)',
		'agentretry.invalidate_cache()']) f$$,
	$$VALUES
		('agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer)', false, false, true, false),
		('agentretry.drop_budget(text, agentretry.budget_scope, text)', false, false, true, false),
		('agentretry.invalidate_cache()', false, false, false, false)$$,
	'set_budget and drop_budget are for admins only; the trigger function for nobody');
SELECT results_eq(
	$$SELECT t, has_table_privilege('agentretry_agent', t, 'SELECT'),
			 has_table_privilege('agentretry_operator', t, 'SELECT'),
			 has_table_privilege('agentretry_admin', t, 'SELECT'),
			 has_table_privilege('public', t, 'SELECT')
	  FROM unnest(ARRAY['agentretry.budgets', 'agentretry.budget_stripes', 'agentretry.budget_ledger',
						'agentretry.runs', 'agentretry.budget_status']) t$$,
	$$VALUES ('agentretry.budgets', true, true, true, false),
			 ('agentretry.budget_stripes', false, true, true, false),
			 ('agentretry.budget_ledger', false, true, true, false),
			 ('agentretry.runs', false, true, true, false),
			 ('agentretry.budget_status', false, true, true, false)$$,
	'everyone reads budgets; operators (and admins) the stripes, the ledger, run counters and budget_status');
SELECT is_empty(
	$$SELECT r, t FROM unnest(ARRAY['agentretry_agent', 'agentretry_operator', 'agentretry_admin']) r,
		unnest(ARRAY['agentretry.budgets', 'agentretry.budget_stripes', 'agentretry.budget_ledger',
					 'agentretry.runs', 'agentretry.budget_status']) t
	  WHERE has_table_privilege(r, t, 'INSERT, UPDATE, DELETE, TRUNCATE')$$,
	'no role writes a budget table directly');

-- the privileges hold when the roles act (pgTAP's state lives in the
-- session user's temp tables: the statement runs as the role inside a
-- function and only its result or SQLSTATE comes back)
CREATE FUNCTION pg_temp.run_as(r text, q text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	res text;
BEGIN
	EXECUTE format('SET LOCAL ROLE %I', r);
	BEGIN
		EXECUTE q INTO res;
	EXCEPTION WHEN OTHERS THEN
		res := 'ERROR ' || SQLSTATE || ': ' || SQLERRM;
	END;
	RESET ROLE;
	RETURN res;
END
$$;
SELECT is(pg_temp.run_as('agentretry_agent', $q$SELECT (agentretry.set_budget('bg-priv', 'tenant', 'bg-priv', 10)).tenant$q$),
		  'ERROR 42501: permission denied for function set_budget', 'an agent cannot set a budget');
SELECT is(pg_temp.run_as('agentretry_operator', $q$SELECT agentretry.drop_budget('bg-multi', 'tenant', 'bg-multi')::text$q$),
		  'ERROR 42501: permission denied for function drop_budget', 'an operator cannot drop one');
SELECT is(pg_temp.run_as('agentretry_agent', $q$SELECT count(*)::text FROM agentretry.budget_ledger$q$),
		  'ERROR 42501: permission denied for table budget_ledger', 'an agent cannot read the ledger');
SELECT is(pg_temp.run_as('agentretry_agent', $q$SELECT count(*)::text FROM agentretry.budgets WHERE tenant = 'bg-multi'$q$),
		  '5', 'an agent reads the budgets');
SELECT is(pg_temp.run_as('agentretry_operator', $q$SELECT count(*)::text FROM agentretry.budget_status WHERE tenant = 'bg-multi'$q$),
		  '5', 'an operator reads budget_status');
SELECT is(pg_temp.run_as('agentretry_admin', $q$SELECT (agentretry.set_budget('bg-priv', 'tenant', 'bg-priv', 10)).tenant$q$),
		  'bg-priv', 'an admin sets a budget');
SELECT is(pg_temp.run_as('agentretry_admin', $q$SELECT agentretry.drop_budget('bg-priv', 'tenant', 'bg-priv')::text$q$),
		  'true', 'and drops it');

--
-- Exact budgets: a budget of N admits exactly N worth of retries, for any
-- positive N and any number of stripes.  A stripe's share need not be a
-- multiple of the cost (50 over 4 stripes is 12.5): what no stripe can pay
-- alone is gathered from several, so no token is stranded.
--
SELECT lives_ok($$SELECT set_budget('bg-exact', 'tenant', 'bg-exact', 50)$$,
				'capacity 50 over the default 4 stripes');
SELECT is((SELECT count(*) FROM unnest(pg_temp.retries('bg-exact', 'ex-1', 60)) r WHERE r LIKE 'retry/%'),
		  50::bigint, 'it admits exactly 50 retries costing 1 (not 48)');
SELECT is((SELECT round(sum(tokens)::numeric, 9) FROM budget_stripes WHERE tenant = 'bg-exact'),
		  0::numeric, 'and nothing is left in its stripes');
SELECT is((SELECT count(*) FROM budget_ledger WHERE tenant = 'bg-exact' AND reason = 'debit'),
		  50::bigint, 'the ledger has the 50 debits');
SELECT is((SELECT state::text || ' ' || reason FROM operations WHERE tenant = 'bg-exact' AND key = 'ex-1'),
		  'dead budget_exhausted', 'the 51st retry is dead-lettered: the budget is spent and does not refill');

SELECT lives_ok($$SELECT set_budget('bg-exact2', 'tenant', 'bg-exact2', 10)$$, 'capacity 10 over 4 stripes');
SELECT is((SELECT count(*) FROM unnest(pg_temp.retries('bg-exact2', 'ex-2', 8, 'ambiguous')) r WHERE r LIKE 'retry/%'),
		  5::bigint, 'it admits exactly 5 ambiguous retries costing 2 (not 4)');

SELECT lives_ok($$SELECT set_budget('bg-one', 'tenant', 'bg-one', 1)$$,
				'capacity 1 is accepted: "one retry per tenant"');
SELECT is(pg_temp.retries('bg-one', 'one-1', 3), ARRAY['retry/idempotent_retry', 'dead/budget_exhausted', '-/claim answered denied'],
		  'it admits exactly one retry costing 1');
SELECT is((SELECT d.action::text || '/' || d.reason FROM pg_temp.try_retry('bg-one', 'one-2', 'ambiguous') d),
		  'dead/budget_exhausted', 'a retry costing more than the whole capacity is never admitted');
SELECT lives_ok($$SELECT set_budget('bg-one', 'tenant', 'bg-one', 1, cost_ambiguous => 1)$$,
				'replaced with ambiguous failures costing 1 (it starts full)');
SELECT is((SELECT d.action::text FROM pg_temp.try_retry('bg-one', 'one-3', 'ambiguous') d),
		  'retry', 'an ambiguous retry is admitted');

-- Shares that are not exact in binary (7 over 5 stripes, 11 over 3, 1 over
-- 10): the stripes may hold N minus a few units in the last place, which
-- still pays the last retry; no stripe is left below zero.
SELECT set_budget('bg-ulp7', 'tenant', 'bg-ulp7', 7, stripes => 5);
SELECT set_budget('bg-ulp11', 'tenant', 'bg-ulp11', 11, stripes => 3);
SELECT set_budget('bg-ulp1', 'tenant', 'bg-ulp1', 1, stripes => 10);
SELECT is((SELECT count(*) FROM unnest(pg_temp.retries('bg-ulp7', 'ulp-7', 10)) r WHERE r LIKE 'retry/%'),
		  7::bigint, 'capacity 7 over 5 stripes admits exactly 7');
SELECT is((SELECT count(*) FROM unnest(pg_temp.retries('bg-ulp11', 'ulp-11', 15)) r WHERE r LIKE 'retry/%'),
		  11::bigint, 'capacity 11 over 3 stripes admits exactly 11');
SELECT is((SELECT count(*) FROM unnest(pg_temp.retries('bg-ulp1', 'ulp-1', 3)) r WHERE r LIKE 'retry/%'),
		  1::bigint, 'capacity 1 over 10 stripes admits exactly 1');
SELECT is((SELECT bool_and(tokens >= 0) AND round(sum(tokens)::numeric, 6) = 0
		   FROM budget_stripes WHERE tenant LIKE 'bg-ulp%'), true, 'and leaves every stripe at zero, none below');

-- A debit gathered from several stripes is given back whole when a later
-- budget denies the retry: tenant capacity 3 over 4 stripes (0.75 each:
-- every retry is gathered), tool capacity 1 on one stripe.
SELECT lives_ok($$SELECT set_budget('bg-gather', 'tenant', 'bg-gather', 3)$$, 'tenant budget 3 over 4 stripes');
SELECT lives_ok($$SELECT set_budget('bg-gather', 'tool', 'bg_read2', 1, stripes => 1)$$, 'tool budget 1');
SELECT is(pg_temp.retries('bg-gather', 'ga-1', 1, 'transient', 'bg_read2'), ARRAY['retry/idempotent_retry'],
		  'the first retry pays both');
SELECT is((SELECT round(sum(tokens)::numeric, 9) FROM budget_stripes WHERE tenant = 'bg-gather' AND scope = 'tenant'),
		  2::numeric, 'the tenant budget has 2 left, gathered from two stripes');
SELECT is((SELECT d.reason FROM pg_temp.try_retry('bg-gather', 'ga-2', 'transient', 'bg_read2') d),
		  'budget_exhausted', 'the second is denied by the tool budget');
SELECT is((SELECT round(sum(tokens)::numeric, 9) FROM budget_stripes WHERE tenant = 'bg-gather' AND scope = 'tenant'),
		  2::numeric, 'and what the tenant budget gathered for it is back, whole');
SELECT is((SELECT sum(cur_retries)::bigint FROM budget_stripes WHERE tenant = 'bg-gather' AND scope = 'tenant'),
		  0::bigint, 'and it counts no retries: a budget without a ratio keeps no window counts');

SELECT * FROM finish();
ROLLBACK;
