-- backoff(): bounds of every jitter mode over many samples, exact values
-- without jitter, the shape of the jittered distributions, saturation,
-- and the errors for bad input.
--
-- Tolerances of the statistical checks are set at six standard deviations
-- or more of the sampled statistic (or, for extremes, at a probability
-- below 1e-8 per run), so a correct implementation fails them with
-- negligible probability while a wrong formula (mean e instead of e/2,
-- range [0, e/2], no randomness at all) fails them certainly.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SELECT plan(45);

-- 2000 samples per mode over attempts 1..15, base 50 ms, cap 2 s (the cap
-- binds from attempt 7), previous cycling over 0..1.8 s.  e is the
-- exponential term; every term is a whole number of even microseconds.
CREATE TEMP TABLE samples ON COMMIT DROP AS
SELECT m AS mode, g % 15 + 1 AS attempt,
	   least(interval '2 seconds', interval '50 milliseconds' * 2 ^ (g % 15)) AS e,
	   interval '300 milliseconds' * (g % 7) AS previous,
	   backoff(g % 15 + 1, '50 milliseconds', '2 seconds', 2, m,
			   interval '300 milliseconds' * (g % 7)) AS d
FROM unnest(enum_range(NULL::jitter_mode)) AS m, generate_series(1, 2000) AS g;

SELECT results_eq(
	$$SELECT mode, count(*) FROM samples GROUP BY mode ORDER BY mode$$,
	$$VALUES ('none'::jitter_mode, 2000::bigint), ('full', 2000), ('equal', 2000), ('decorrelated', 2000)$$,
	'2000 samples of each mode');
SELECT is_empty($$SELECT mode, attempt, d FROM samples WHERE d < interval '0'$$,
	'no mode ever gives a negative delay');
SELECT is_empty($$SELECT mode, attempt, d FROM samples WHERE d > interval '2 seconds'$$,
	'no mode ever exceeds the cap');
SELECT is_empty($$SELECT attempt, d, e FROM samples WHERE mode = 'none' AND d <> e$$,
	'none is exactly min(cap, base * 2^(attempt-1))');
SELECT is_empty($$SELECT attempt, d, e FROM samples WHERE mode = 'full' AND d NOT BETWEEN interval '0' AND e$$,
	'full stays within [0, e]');
SELECT is_empty($$SELECT attempt, d, e FROM samples WHERE mode = 'equal' AND d NOT BETWEEN e / 2 AND e$$,
	'equal stays within [e/2, e]');
SELECT is_empty(
	$$SELECT attempt, d, previous FROM samples
	  WHERE mode = 'decorrelated'
		AND d NOT BETWEEN interval '50 milliseconds'
					  AND least(interval '2 seconds', greatest(interval '50 milliseconds', previous * 3))$$,
	'decorrelated stays within [base, min(cap, 3 * previous)]');
SELECT is(
	(SELECT count(DISTINCT d) > 1000 FROM samples WHERE mode = 'full'), true,
	'full jitter is random, not a function of the attempt');

-- none: exact over attempts 1..40, with multipliers 2, 3 and 1
SELECT results_eq(
	$$SELECT n, backoff(n, '100 milliseconds', '1 hour', 3, 'none') FROM generate_series(1, 40) n$$,
	$$SELECT n, CASE WHEN 0.1 * 3::numeric ^ (n - 1) >= 3600 THEN interval '1 hour'
					 ELSE interval '100 milliseconds' * 3 ^ (n - 1) END
	  FROM generate_series(1, 40) n$$,
	'none with multiplier 3: base * 3^(attempt-1), capped');
SELECT results_eq(
	$$SELECT backoff(n, '0.25 seconds', '1 minute', 1, 'none') FROM generate_series(1, 5) n$$,
	$$VALUES (interval '0.25 seconds'), ('0.25 seconds'), ('0.25 seconds'), ('0.25 seconds'), ('0.25 seconds')$$,
	'multiplier 1 keeps the base');
SELECT is(backoff(1, '1 second', '30 seconds', 2, 'none'), interval '1 second',
	'attempt 1 starts at base');
SELECT is(backoff(6, '1 second', '30 seconds', 2, 'none'), interval '30 seconds',
	'attempt 6 of 1 s doubling hits the 30 s cap');
SELECT is(backoff(5, '1 second', '30 seconds', 1.5, 'none'), interval '5.0625 seconds',
	'a fractional multiplier: 1 s * 1.5^4');
SELECT ok((SELECT min(d) >= interval '0' AND max(d) <= interval '4 seconds' AND count(DISTINCT d) > 100
		   FROM (SELECT backoff(3, '1 second', '30 seconds') AS d FROM generate_series(1, 200)) x),
	'the defaults are multiplier 2 and full jitter');

-- full jitter, e = 4 s (attempt 3 of 1 s doubling), 2000 samples:
-- uniform[0, 4 s] has mean 2 s and standard deviation 4/sqrt(12) =
-- 1.1547 s; the mean of 2000 samples has standard deviation 0.0258 s, and
-- 0.16 s is 6.2 of them (two-sided tail about 6e-10).  The fraction below
-- e/2 has standard deviation sqrt(0.25/2000) = 0.0112, 0.07 is 6.3 of them.
-- The chance that no sample of 2000 falls in the lowest (or highest) 1 %
-- is 0.99^2000 = 1.9e-9.
CREATE TEMP TABLE full_samples ON COMMIT DROP AS
SELECT extract(epoch FROM backoff(3, '1 second', '30 seconds', 2, 'full')) AS s
FROM generate_series(1, 2000);
SELECT ok((SELECT abs(avg(s) - 2) < 0.16 FROM full_samples),
	'full jitter: the mean is half the exponential term');
SELECT ok((SELECT abs(avg((s < 2)::int) - 0.5) < 0.07 FROM full_samples),
	'full jitter: half the samples fall below e/2');
SELECT ok((SELECT min(s) < 0.04 AND max(s) > 3.96 FROM full_samples),
	'full jitter: samples reach both ends of [0, e]');

-- equal jitter, e = 4 s: uniform[2 s, 4 s], mean 3 s, standard deviation
-- 2/sqrt(12) = 0.577 s, of the mean 0.0129 s; 0.08 s is 6.2 of them.
CREATE TEMP TABLE equal_samples ON COMMIT DROP AS
SELECT extract(epoch FROM backoff(3, '1 second', '30 seconds', 2, 'equal')) AS s
FROM generate_series(1, 2000);
SELECT ok((SELECT abs(avg(s) - 3) < 0.08 FROM equal_samples),
	'equal jitter: the mean is three quarters of the exponential term');
SELECT ok((SELECT min(s) >= 2 AND min(s) < 2.02 AND max(s) <= 4 AND max(s) > 3.98 FROM equal_samples),
	'equal jitter: samples fill [e/2, e]');

-- decorrelated, base 1 s, previous 4 s: uniform[1 s, 12 s], mean 6.5 s,
-- standard deviation 11/sqrt(12) = 3.175 s, of the mean 0.071 s; 0.45 s
-- is 6.3 of them.
CREATE TEMP TABLE decor_samples ON COMMIT DROP AS
SELECT extract(epoch FROM backoff(1, '1 second', '30 seconds', 2, 'decorrelated', '4 seconds')) AS s
FROM generate_series(1, 2000);
SELECT ok((SELECT min(s) >= 1 AND max(s) <= 12 FROM decor_samples),
	'decorrelated: within [base, 3 * previous]');
SELECT ok((SELECT abs(avg(s) - 6.5) < 0.45 AND min(s) < 1.11 AND max(s) > 11.89 FROM decor_samples),
	'decorrelated: uniform over [base, 3 * previous]');
SELECT ok((SELECT bool_and(backoff(g, '1 second', '30 seconds', 2, 'decorrelated', '4 seconds')
						   <= interval '12 seconds')
		   FROM generate_series(1, 200) g),
	'decorrelated: the attempt number does not raise the bound');
-- without previous the first delay is in [base, 3 * base]
SELECT ok((SELECT min(d) >= interval '1 second' AND max(d) <= interval '3 seconds'
				  AND count(DISTINCT d) > 100
		   FROM (SELECT backoff(1, '1 second', '30 seconds', 2, 'decorrelated') AS d
				 FROM generate_series(1, 2000)) x),
	'decorrelated without previous: within [base, 3 * base]');
-- previous 20 s: uniform[1 s, 60 s] capped at 30 s; P(capped) = 30/59 =
-- 0.508, standard deviation 0.0112; 0.07 is 6.3 of them
SELECT ok((SELECT max(d) = interval '30 seconds'
				  AND abs(avg((d = interval '30 seconds')::int) - 30.0 / 59) < 0.07
		   FROM (SELECT backoff(1, '1 second', '30 seconds', 2, 'decorrelated', '20 seconds') AS d
				 FROM generate_series(1, 2000)) x),
	'decorrelated: draws above the cap are cut to the cap');
SELECT is(backoff(1, '1 second', '30 seconds', 2, 'decorrelated', '0'), interval '1 second',
	'decorrelated never goes below base, even after a zero delay');

-- a chain of 2000 decorrelated delays, each fed the previous one
SELECT is_empty(
	$$WITH RECURSIVE chain(n, prev, d) AS (
		SELECT 1, NULL::interval, backoff(1, '100 milliseconds', '5 seconds', 2, 'decorrelated')
		UNION ALL
		SELECT n + 1, d, backoff(n + 1, '100 milliseconds', '5 seconds', 2, 'decorrelated', d)
		FROM chain WHERE n < 2000)
	  SELECT n, prev, d FROM chain
	  WHERE d NOT BETWEEN interval '100 milliseconds'
				  AND least(interval '5 seconds', coalesce(prev, interval '100 milliseconds') * 3)$$,
	'a decorrelated chain stays within [base, min(cap, 3 * previous)] at every step');

-- saturation
SELECT is(backoff(2147483647, '1 second', '30 seconds', 2, 'none'), interval '30 seconds',
	'the largest attempt saturates at the cap');
SELECT ok((SELECT bool_and(d BETWEEN interval '0' AND interval '30 seconds')
		   FROM (SELECT backoff(2147483647, '1 second', '30 seconds', 1e300, m) AS d
				 FROM unnest(enum_range(NULL::jitter_mode)) m, generate_series(1, 50)) x),
	'a huge attempt with a huge multiplier stays within [0, cap] in every mode');
SELECT is(backoff(3, '100 years', '1 hour', 2, 'none'), interval '1 hour',
	'a base above the cap gives the cap');
SELECT is(backoff(2, '1 second', '1 second', 1e308, 'none'), interval '1 second',
	'a multiplier near the double limit saturates');
SELECT is(backoff(5, '0', '30 seconds', 2, 'none'), interval '0', 'zero base gives zero');
SELECT ok((SELECT bool_and(backoff(5, '1 second', '0', 2, m) = interval '0')
		   FROM unnest(enum_range(NULL::jitter_mode)) m),
	'zero cap gives zero in every mode');

-- bad input
SELECT throws_ok($$SELECT backoff(0, '1 second', '30 seconds')$$, '22023', NULL, 'attempt 0');
SELECT throws_ok($$SELECT backoff(-2147483648, '1 second', '30 seconds')$$, '22023', NULL, 'negative attempt');
SELECT throws_ok($$SELECT backoff(1, '-1 microsecond', '30 seconds')$$, '22023', NULL, 'negative base');
SELECT throws_ok($$SELECT backoff(1, '1 second', '-1 second')$$, '22023', NULL, 'negative cap');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', 0.999)$$, '22023', NULL, 'multiplier below 1');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', 'NaN')$$, '22023', NULL, 'NaN multiplier');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', 'Infinity')$$, '22023', NULL, 'infinite multiplier');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', 2, 'decorrelated', '-1 second')$$,
	'22023', NULL, 'negative previous');
SELECT throws_ok($$SELECT backoff(NULL, '1 second', '30 seconds')$$, '22004', NULL, 'NULL attempt');
SELECT throws_ok($$SELECT backoff(1, NULL, '30 seconds')$$, '22004', NULL, 'NULL base');
SELECT throws_ok($$SELECT backoff(1, '1 second', NULL)$$, '22004', NULL, 'NULL cap');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', NULL)$$, '22004', NULL, 'NULL multiplier');
SELECT throws_ok($$SELECT backoff(1, '1 second', '30 seconds', 2, NULL)$$, '22004', NULL, 'NULL jitter');

SELECT * FROM finish();
ROLLBACK;
