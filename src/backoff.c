/*-------------------------------------------------------------------------
 *
 * backoff.c
 *	  Exponential backoff with jitter.
 *
 * The four modes are those of "Exponential Backoff And Jitter" (AWS
 * Architecture Blog): with e = min(cap, base * multiplier^(attempt-1)),
 *	  none			e
 *	  full			uniform(0, e)
 *	  equal			e/2 + uniform(0, e/2)
 *	  decorrelated	min(cap, uniform(base, 3 * previous)), previous = base at first
 * Arithmetic is done in double so that large attempts saturate at the cap
 * instead of overflowing; the result is never negative and never above cap.
 *
 * src/backoff.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/timestamp.h"

#include "agentretry.h"

static double
uniform(double lo, double hi)
{
	return lo + (hi - lo) * pg_prng_double(&pg_global_prng_state);
}

static double
exponential_term(int attempt, double base, double cap, double multiplier)
{
	double		e;

	if (base <= 0)
		return 0;				/* 0 * inf would be NaN */
	e = base * pow(multiplier, (double) (attempt - 1));
	if (isnan(e) || e > cap)
		return cap;
	return e;
}

/*
 * Delay in microseconds before the retry that follows attempt number
 * attempt.  previous is the delay chosen last time, or USEC_NONE.
 */
int64
backoff_usec(int attempt, int64 base, int64 cap, double multiplier,
			 JitterMode jitter, int64 previous)
{
	double		b = (double) base;
	double		c = (double) cap;
	double		e = exponential_term(attempt, b, c, multiplier);
	double		d;

	switch (jitter)
	{
		case JITTER_NONE:
			d = e;
			break;
		case JITTER_FULL:
			d = uniform(0, e);
			break;
		case JITTER_EQUAL:
			d = e / 2 + uniform(0, e / 2);
			break;
		case JITTER_DECORRELATED:
			{
				double		prev = previous == USEC_NONE ? b : (double) previous;
				double		hi = Max(b, prev * 3);

				d = uniform(b, hi);
				break;
			}
		default:
			elog(ERROR, "agentretry: unexpected jitter mode %d", (int) jitter);
			d = 0;				/* keep compiler quiet */
	}
	if (d > c)
		d = c;
	if (d < 0)
		d = 0;
	/* (double) PG_INT64_MAX rounds up to 2^63, which int64 cannot hold */
	if (d >= (double) PG_INT64_MAX)
		return PG_INT64_MAX;
	return (int64) d;
}

PG_FUNCTION_INFO_V1(agentretry_backoff);

/*
 * backoff(attempt int, base interval, cap interval, multiplier float8
 *		   DEFAULT 2, jitter jitter_mode DEFAULT 'full', previous interval
 *		   DEFAULT NULL) returns interval
 *
 * Delay before the retry following attempt number attempt (1 = the first
 * attempt failed, so the delay starts near base).
 */
Datum
agentretry_backoff(PG_FUNCTION_ARGS)
{
	int32		attempt;
	int64		base,
				cap,
				previous = USEC_NONE;
	double		multiplier;
	JitterMode	jitter;

	check_not_null(fcinfo, 0, "attempt");
	check_not_null(fcinfo, 1, "base");
	check_not_null(fcinfo, 2, "cap");
	check_not_null(fcinfo, 3, "multiplier");
	check_not_null(fcinfo, 4, "jitter");
	attempt = PG_GETARG_INT32(0);
	base = interval_usec(PG_GETARG_INTERVAL_P(1));
	cap = interval_usec(PG_GETARG_INTERVAL_P(2));
	multiplier = PG_GETARG_FLOAT8(3);
	jitter = (JitterMode) enum_datum_index(jitter_labels, PG_GETARG_DATUM(4));
	if (!PG_ARGISNULL(5))
	{
		previous = interval_usec(PG_GETARG_INTERVAL_P(5));
		if (previous < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("previous must not be negative")));
	}

	if (attempt < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attempt must be at least 1"),
				 errdetail("attempt is %d.", attempt)));
	if (base < 0 || cap < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("base and cap must not be negative")));
	if (isnan(multiplier) || isinf(multiplier) || multiplier < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("multiplier must be a finite number of at least 1"),
				 errdetail("multiplier is %g.", multiplier)));

	PG_RETURN_INTERVAL_P(usec_interval(backoff_usec(attempt, base, cap,
													multiplier, jitter,
													previous)));
}
