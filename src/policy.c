/*-------------------------------------------------------------------------
 *
 * policy.c
 *	  Retry policies: the built-in tier defaults and their merge with a
 *	  tool's registered fields.
 *
 * A tool's policy fields are stored as given (NULL = not set) and merged at
 * decision time, so changing a tier default or a tool affects operations
 * already in flight, and "where did this value come from" stays answerable.
 * An unregistered tool is unknown / write.
 *
 *	  tier  side effect   max_attempts  base / cap     jitter
 *	  1     read          6             200 ms / 30 s  full
 *	  2     write         2             1 s / 30 s     full
 *	  3     destructive   1             (never retried: failure is dead)
 *
 * src/policy.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "agentretry.h"

typedef struct TierDefault
{
	int			max_attempts;
	int64		base_delay;
	int64		max_delay;
	JitterMode	jitter;
	const char *auto_retry;
} TierDefault;

static const TierDefault tier_defaults[] = {
	[SE_READ] = {6, 200 * 1000, 30 * USECS_PER_SEC, JITTER_FULL, "yes"},
	[SE_WRITE] = {2, USECS_PER_SEC, 30 * USECS_PER_SEC, JITTER_FULL, "once, with the same key"},
	[SE_DESTRUCTIVE] = {1, USECS_PER_SEC, 30 * USECS_PER_SEC, JITTER_FULL, "never"},
};

#define DEFAULT_MULTIPLIER 2.0

void
policy_tier_defaults(Policy *p, SideEffect side_effect)
{
	const TierDefault *t = &tier_defaults[side_effect];

	p->registered = false;
	p->idempotency = IDEM_UNKNOWN;
	p->side_effect = side_effect;
	p->max_attempts = t->max_attempts;
	p->base_delay = t->base_delay;
	p->max_delay = t->max_delay;
	p->multiplier = DEFAULT_MULTIPLIER;
	p->jitter = t->jitter;
	p->deadline = USEC_NONE;
	p->lease = (int64) ar_default_lease_sec * USECS_PER_SEC;
	p->ttl = (int64) ar_default_ttl_sec * USECS_PER_SEC;
}

static bool
column_interval(HeapTuple tup, TupleDesc desc, int col, int64 *usec)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (!isnull)
		*usec = interval_usec(DatumGetIntervalP(d));
	return !isnull;
}

/*
 * Fill p from ten columns starting at firstcol (1-based): idempotency,
 * side_effect, max_attempts, base_delay, max_delay, multiplier, jitter,
 * deadline, lease, ttl, enums as text; all NULL for an unregistered tool.
 */
void
policy_from_columns(Policy *p, HeapTuple tup, TupleDesc desc, int firstcol)
{
	char	   *idem = SPI_getvalue(tup, desc, firstcol);
	char	   *se = SPI_getvalue(tup, desc, firstcol + 1);
	char	   *jitter;
	bool		isnull;
	Datum		d;

	policy_tier_defaults(p, se ? (SideEffect) label_index(side_effect_labels, se) : SE_WRITE);
	if (idem == NULL)
		return;
	p->registered = true;
	p->idempotency = (Idempotency) label_index(idempotency_labels, idem);

	d = SPI_getbinval(tup, desc, firstcol + 2, &isnull);
	if (!isnull)
		p->max_attempts = DatumGetInt32(d);
	column_interval(tup, desc, firstcol + 3, &p->base_delay);
	column_interval(tup, desc, firstcol + 4, &p->max_delay);
	d = SPI_getbinval(tup, desc, firstcol + 5, &isnull);
	if (!isnull)
		p->multiplier = DatumGetFloat8(d);
	jitter = SPI_getvalue(tup, desc, firstcol + 6);
	if (jitter)
		p->jitter = (JitterMode) label_index(jitter_labels, jitter);
	column_interval(tup, desc, firstcol + 7, &p->deadline);
	column_interval(tup, desc, firstcol + 8, &p->lease);
	column_interval(tup, desc, firstcol + 9, &p->ttl);
}

PG_FUNCTION_INFO_V1(agentretry_tier_defaults);

/*
 * tier_defaults() returns table (side_effect, max_attempts, base_delay,
 *		  max_delay, multiplier, jitter, auto_retry)
 *
 * The built-in policy of each tier, so that DBAs can read what a NULL
 * policy field of a tool means.
 */
Datum
agentretry_tier_defaults(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	desc;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	desc = rsinfo->setDesc;
	for (i = SE_READ; i <= SE_DESTRUCTIVE; i++)
	{
		const TierDefault *t = &tier_defaults[i];
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		values[0] = label_enum_datum(TupleDescAttr(desc, 0)->atttypid, side_effect_labels[i]);
		values[1] = Int32GetDatum(t->max_attempts);
		values[2] = IntervalPGetDatum(usec_interval(t->base_delay));
		values[3] = IntervalPGetDatum(usec_interval(t->max_delay));
		values[4] = Float8GetDatum(DEFAULT_MULTIPLIER);
		values[5] = label_enum_datum(TupleDescAttr(desc, 5)->atttypid, jitter_labels[t->jitter]);
		values[6] = CStringGetTextDatum(t->auto_retry);
		/* a destructive tool is never retried: its backoff does not apply */
		if (i == SE_DESTRUCTIVE)
			nulls[2] = nulls[3] = nulls[4] = nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, desc, values, nulls);
	}
	return (Datum) 0;
}
