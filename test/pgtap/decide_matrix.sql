-- decide(): the whole decision matrix against an oracle written from the
-- rules of the design, exact spot rows, and the retry_at arithmetic.
--
-- Every call passes a fixed now, so expected timestamps are exact.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SET LOCAL timezone = 'UTC';
SELECT plan(43);

-- The matrix: failure class x phase (NULL = unknown) x idempotency x side
-- effect x attempts (below max, at max) x deadline (none, far, closer than
-- retry_after).  delay (10 s) is longer than retry_after (5 s), so a
-- scheduled retry waits for the delay; the close deadline (2 s) is before
-- the earliest moment retry_after allows.
CREATE TEMP TABLE matrix ON COMMIT DROP AS
SELECT
	row_number() OVER (ORDER BY f.v, p.v, i.v, s.v, a.v, d.v) AS n,
	f.v AS failure, p.v AS phase, i.v AS idempotency, s.v AS side_effect,
	a.v AS attempt, 3 AS max_attempts,
	interval '10 seconds' AS delay, interval '5 seconds' AS retry_after,
	d.v AS deadline,
	timestamptz '2030-01-01 00:00:00+00' AS now
FROM unnest(enum_range(NULL::failure_class)) AS f(v)
	CROSS JOIN (SELECT v FROM unnest(enum_range(NULL::failure_phase)) AS u(v)
				UNION ALL SELECT NULL) AS p(v)
	CROSS JOIN unnest(enum_range(NULL::idempotency_class)) AS i(v)
	CROSS JOIN unnest(enum_range(NULL::side_effect_class)) AS s(v)
	CROSS JOIN (VALUES (1), (3)) AS a(v)
	CROSS JOIN (VALUES (NULL::timestamptz),
					   (timestamptz '2030-01-02 00:00:00+00'),
					   (timestamptz '2030-01-01 00:00:02+00')) AS d(v);

-- The oracle, from DESIGN.md section 4 and nothing else:
--	0 destructive -> dead review_required
--	1 permanent -> dead permanent
--	2 transient pre_execution -> retry (not_executed)
--	3 transient mid/post/unknown or ambiguous: idempotent -> retry
--	  (idempotent_retry), otherwise verify (outcome_unknown)
--	4 a retry is refused: attempts reached max -> attempts_exhausted; the
--	  earliest next attempt (now + retry_after) after the deadline ->
--	  deadline_exceeded
--	5 retry_at = now + greatest(delay, retry_after), at most the deadline
CREATE TEMP TABLE oracle ON COMMIT DROP AS
WITH wish AS (
	SELECT m.*,
		CASE
			WHEN side_effect = 'destructive' THEN 'review_required'
			WHEN failure = 'permanent' THEN 'permanent'
			WHEN failure = 'transient' AND phase IS NOT DISTINCT FROM 'pre_execution'
				THEN 'not_executed'
			WHEN idempotency = 'idempotent' THEN 'idempotent_retry'
			ELSE 'outcome_unknown'
		END AS wish
	FROM matrix m
)
SELECT n,
	CASE
		WHEN wish IN ('review_required', 'permanent') THEN 'dead'
		WHEN wish = 'outcome_unknown' THEN 'verify'
		WHEN attempt >= max_attempts THEN 'dead'
		WHEN now + coalesce(retry_after, interval '0') > deadline THEN 'dead'
		ELSE 'retry'
	END::decision_action AS action,
	CASE
		WHEN wish IN ('review_required', 'permanent', 'outcome_unknown') THEN NULL
		WHEN attempt >= max_attempts THEN NULL
		WHEN now + coalesce(retry_after, interval '0') > deadline THEN NULL
		ELSE least(now + greatest(delay, coalesce(retry_after, interval '0')), deadline)
	END AS retry_at,
	attempt,
	CASE
		WHEN wish IN ('review_required', 'permanent', 'outcome_unknown') THEN wish
		WHEN attempt >= max_attempts THEN 'attempts_exhausted'
		WHEN now + coalesce(retry_after, interval '0') > deadline THEN 'deadline_exceeded'
		ELSE wish
	END AS reason
FROM wish;

SELECT is((SELECT count(*) FROM matrix), 648::bigint,
	'the matrix has 3 x 4 x 3 x 3 x 2 x 3 rows');

SELECT results_eq(
	$$SELECT n, (d).action, (d).retry_at, (d).attempt, (d).reason
	  FROM (SELECT n, decide(failure, phase, idempotency, side_effect, attempt,
							 max_attempts, delay, retry_after, deadline, now) AS d
			FROM matrix) x
	  ORDER BY n$$,
	$$SELECT n, action, retry_at, attempt, reason FROM oracle ORDER BY n$$,
	'decide() agrees with the oracle on every row of the matrix');

-- Counted by hand from the rules (648 rows): destructive 216; permanent
-- 144 of the other 432; verify: transient mid/post/unknown 3x2x2x2x3 = 72
-- plus ambiguous 4x2x2x2x3 = 96; retry candidates: not_executed 36,
-- idempotent_retry 84, half of them at max attempts, a third of the rest
-- past the close deadline.  Pinning the tally checks the oracle too.
SELECT results_eq(
	$$SELECT (d).action::text, (d).reason, count(*)
	  FROM (SELECT decide(failure, phase, idempotency, side_effect, attempt,
						  max_attempts, delay, retry_after, deadline, now) AS d
			FROM matrix) x
	  GROUP BY 1, 2 ORDER BY 1, 2$$,
	$$VALUES ('dead', 'attempts_exhausted', 60::bigint),
			 ('dead', 'deadline_exceeded', 20),
			 ('dead', 'permanent', 144),
			 ('dead', 'review_required', 216),
			 ('retry', 'idempotent_retry', 28),
			 ('retry', 'not_executed', 12),
			 ('verify', 'outcome_unknown', 168)$$,
	'the matrix yields the hand-counted number of each decision');

SELECT is_empty(
	$$SELECT n FROM matrix
	  WHERE (decide(failure, phase, idempotency, side_effect, attempt, max_attempts,
					delay, retry_after, deadline, now)).action = 'retry'
		AND (decide(failure, phase, idempotency, side_effect, attempt, max_attempts,
					delay, retry_after, deadline, now)).retry_at
			IS DISTINCT FROM now + delay$$,
	'every scheduled retry in the matrix waits exactly the delay');

SELECT is_empty(
	$$SELECT n FROM matrix
	  WHERE phase IS NULL
		AND decide(failure, phase, idempotency, side_effect, attempt, max_attempts,
				   delay, retry_after, deadline, now)
			IS DISTINCT FROM
			decide(failure, 'mid_execution', idempotency, side_effect, attempt,
				   max_attempts, delay, retry_after, deadline, now)$$,
	'an unknown phase (NULL) is decided like mid_execution');

-- spot rows, each with its exact decision
SELECT is(
	decide('transient', 'pre_execution', 'non_idempotent', 'write', 1, 2,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:03+00', 1, 'not_executed')::decision,
	'transient before execution is retried even for a non-idempotent tool');
SELECT is(
	decide('transient', 'mid_execution', 'idempotent', 'read', 2, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:03+00', 2, 'idempotent_retry')::decision,
	'transient mid execution of an idempotent tool is retried with the key');
SELECT is(
	decide('transient', 'post_execution', 'non_idempotent', 'write', 1, 2,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('verify', NULL, 1, 'outcome_unknown')::decision,
	'transient after execution of a non-idempotent tool needs verification');
SELECT is(
	decide('transient', NULL, 'unknown', 'write', 1, 2,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('verify', NULL, 1, 'outcome_unknown')::decision,
	'transient in an unknown phase of an unknown tool needs verification');
SELECT is(
	decide('ambiguous', 'pre_execution', 'non_idempotent', 'write', 1, 2,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('verify', NULL, 1, 'outcome_unknown')::decision,
	'ambiguous is never taken as not executed, whatever the phase');
SELECT is(
	decide('ambiguous', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:03+00', 1, 'idempotent_retry')::decision,
	'ambiguous failure of an idempotent tool is retried with the key');
SELECT is(
	decide('permanent', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'permanent')::decision,
	'permanent is dead even before execution of an idempotent read');
SELECT is(
	decide('permanent', 'mid_execution', 'idempotent', 'destructive', 1, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'review_required')::decision,
	'the destructive rule comes before the permanent rule');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'destructive', 1, 6,
		   '0', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'review_required')::decision,
	'a destructive tool is never retried, not even before execution');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 6, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 6, 'attempts_exhausted')::decision,
	'no retry once attempt reached max_attempts');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 9, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 9, 'attempts_exhausted')::decision,
	'no retry when attempt is already beyond max_attempts');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 5, 6,
		   '3 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:03+00', 5, 'not_executed')::decision,
	'one attempt left is still retried');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 1,
		   '0', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'attempts_exhausted')::decision,
	'max_attempts 1 never retries');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 3, 3,
		   '3 seconds', '1 hour', '2030-01-01 00:00:01+00', '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 3, 'attempts_exhausted')::decision,
	'attempts are checked before the deadline');

-- retry_at arithmetic
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', '20 seconds', NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:20+00', 1, 'not_executed')::decision,
	'retry_after longer than the delay wins');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '30 seconds', '20 seconds', NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:30+00', 1, 'not_executed')::decision,
	'a delay longer than retry_after wins');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '0', '0', NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:00+00', 1, 'not_executed')::decision,
	'zero delay and zero retry_after retry at now');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '1.000001 seconds', NULL, NULL, '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:01.000001+00', 1, 'not_executed')::decision,
	'retry_at keeps microseconds of the delay');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '10 minutes', NULL, '2030-01-01 00:01:00+00', '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:01:00+00', 1, 'not_executed')::decision,
	'a delay past the deadline is capped at the deadline');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '10 minutes', '30 seconds', '2030-01-01 00:01:00+00', '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:01:00+00', 1, 'not_executed')::decision,
	'capped at the deadline when retry_after fits before it');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', '1 minute', '2030-01-01 00:01:00+00', '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:01:00+00', 1, 'not_executed')::decision,
	'retry_after ending exactly at the deadline is still allowed');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', '1 minute 0.000001 seconds', '2030-01-01 00:01:00+00',
		   '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'deadline_exceeded')::decision,
	'retry_after one microsecond past the deadline is refused');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', NULL, '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00'),
	ROW('retry', '2030-01-01 00:00:00+00', 1, 'not_executed')::decision,
	'deadline equal to now: retry at once');
SELECT is(
	decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6,
		   '3 seconds', NULL, '2029-12-31 23:59:59+00', '2030-01-01 00:00:00+00'),
	ROW('dead', NULL, 1, 'deadline_exceeded')::decision,
	'a deadline already passed refuses the retry');
SELECT is(
	decide('ambiguous', 'post_execution', 'non_idempotent', 'write', 9, 2,
		   '3 seconds', '1 day', '2029-12-31 00:00:00+00', '2030-01-01 00:00:00+00'),
	ROW('verify', NULL, 9, 'outcome_unknown')::decision,
	'verify ignores attempts, retry_after and the deadline');
SELECT is(
	decide('transient', NULL, 'unknown', 'read', 1, 1,
		   '3 seconds', NULL, '2029-12-31 00:00:00+00', '2030-01-01 00:00:00+00'),
	ROW('verify', NULL, 1, 'outcome_unknown')::decision,
	'verify of an unknown tool ignores exhausted attempts and a passed deadline');

-- defaults: delay 0, no retry_after, no deadline, now = clock_timestamp()
CREATE TEMP TABLE around ON COMMIT DROP AS
SELECT clock_timestamp() AS before,
	   decide('transient', 'pre_execution', 'idempotent', 'read', 1, 6) AS d,
	   NULL::timestamptz AS after;
UPDATE around SET after = clock_timestamp();
SELECT ok((SELECT (d).action = 'retry' AND (d).reason = 'not_executed'
				  AND (d).retry_at BETWEEN before AND after FROM around),
	'with defaults a retry is due at the wall-clock now');

-- bad input: the error, and the function is pure so nothing can change
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', 0, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22023', NULL, 'attempt 0 is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', -1, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22023', NULL, 'negative attempt is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', 1, 0, '0', NULL, NULL, '2030-01-01')$$,
	'22023', NULL, 'max_attempts 0 is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', 1, 6, '-1 second', NULL, NULL, '2030-01-01')$$,
	'22023', NULL, 'negative delay is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', 1, 6, '0', '-0.000001 s', NULL, '2030-01-01')$$,
	'22023', NULL, 'negative retry_after is rejected');
SELECT throws_ok(
	$$SELECT decide('permanent', NULL, 'idempotent', 'destructive', 0, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22023', NULL, 'attempt 0 is rejected even when the decision would not use it');
SELECT throws_ok(
	$$SELECT decide(NULL, NULL, 'idempotent', 'read', 1, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22004', NULL, 'NULL failure is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, NULL, 'read', 1, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22004', NULL, 'NULL idempotency is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', NULL, 1, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22004', NULL, 'NULL side_effect is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', NULL, 6, '0', NULL, NULL, '2030-01-01')$$,
	'22004', NULL, 'NULL attempt is rejected');
SELECT throws_ok(
	$$SELECT decide('transient', NULL, 'idempotent', 'read', 1, 6, '0', NULL, NULL, NULL)$$,
	'22004', NULL, 'NULL now is rejected');

SELECT * FROM finish();
ROLLBACK;
