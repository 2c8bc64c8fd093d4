/*-------------------------------------------------------------------------
 *
 * types.c
 *	  Conversions between the SQL enums of agentretry and their C mirrors,
 *	  and between intervals and microseconds.
 *
 * Enums cross the SPI boundary as text (casts in the query strings), so no
 * enum OID is ever cached: a DROP/CREATE EXTENSION in the same session
 * cannot leave a stale OID behind.
 *
 * src/types.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "agentretry.h"

const char *const op_state_labels[] =
{"in_progress", "retry_wait", "verify", "succeeded", "dead", "cancelled",
"awaiting_approval", NULL};
const char *const outcome_labels[] =
{"execute", "replay", "busy", "wait", "verify", "dead", "cancelled", "denied",
"approval", NULL};
const char *const run_state_labels[] =
{"running", "succeeded", "failed", "compensating", "compensated",
"needs_review", NULL};
const char *const failure_class_labels[] =
{"transient", "permanent", "ambiguous", NULL};
const char *const failure_phase_labels[] =
{"pre_execution", "mid_execution", "post_execution", NULL};
const char *const idempotency_labels[] =
{"idempotent", "non_idempotent", "unknown", NULL};
const char *const side_effect_labels[] =
{"read", "write", "destructive", NULL};
const char *const jitter_labels[] =
{"none", "full", "equal", "decorrelated", NULL};
const char *const action_labels[] =
{"retry", "verify", "dead", "succeeded", NULL};

/*
 * Position of label in a NULL-terminated label table.  A miss means the SQL
 * enum and the C mirror disagree, which only a broken install can cause.
 */
int
label_index(const char *const *labels, const char *label)
{
	int			i;

	for (i = 0; labels[i] != NULL; i++)
	{
		if (strcmp(labels[i], label) == 0)
			return i;
	}
	elog(ERROR, "agentretry: unexpected enum label \"%s\"", label);
	return -1;					/* keep compiler quiet */
}

/* C index of an enum value received as a function argument */
int
enum_datum_index(const char *const *labels, Datum enumval)
{
	char	   *label = DatumGetCString(DirectFunctionCall1(enum_out, enumval));

	return label_index(labels, label);
}

/* SQL enum value of label, as the result of a function returning that enum */
Datum
result_label_datum(FunctionCallInfo fcinfo, const char *label)
{
	return label_enum_datum(get_fn_expr_rettype(fcinfo->flinfo), label);
}

/* SQL enum value of label, for a result column of type enumtypoid */
Datum
label_enum_datum(Oid enumtypoid, const char *label)
{
	return DirectFunctionCall2(enum_in, CStringGetDatum(label),
							   ObjectIdGetDatum(enumtypoid));
}

/*
 * Interval length in microseconds, counting a day as 24 hours and a month
 * as 30 days (as interval comparison does).  Saturates instead of
 * overflowing so that absurd inputs compare as "very long".
 */
int64
interval_usec(const Interval *iv)
{
	double		usec;

	usec = (double) iv->time
		+ (double) iv->day * USECS_PER_DAY
		+ (double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (usec >= (double) PG_INT64_MAX)
		return PG_INT64_MAX;
	if (usec <= (double) PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) usec;
}

Interval *
usec_interval(int64 usec)
{
	Interval   *iv = (Interval *) palloc0(sizeof(Interval));

	iv->time = usec;
	return iv;
}

/* ts + usec, clamped to the representable range */
TimestampTz
ts_add_usec(TimestampTz ts, int64 usec)
{
	TimestampTz result;

	if (pg_add_s64_overflow(ts, usec, &result) || result > END_TIMESTAMP)
		return END_TIMESTAMP - 1;
	return result;
}

/*
 * The blessed tuple descriptor of a function's composite result, built
 * once per call site (flinfo) rather than on every call.
 */
TupleDesc
result_tupdesc(FunctionCallInfo fcinfo)
{
	TupleDesc	desc = (TupleDesc) fcinfo->flinfo->fn_extra;

	if (desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "agentretry: function must return a composite type");
		desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = desc;
	}
	return desc;
}

bool
op_state_terminal(OpState s)
{
	return s == OP_SUCCEEDED || s == OP_DEAD || s == OP_CANCELLED;
}
