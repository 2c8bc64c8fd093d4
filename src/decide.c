/*-------------------------------------------------------------------------
 *
 * decide.c
 *	  The decision matrix: what happens after a failed attempt.
 *
 * Pure: no I/O, no clock, no randomness (the jittered delay is an input).
 * fail(), claim() on an expired lease and resolve() all decide through
 * decide_failure(); decide() exposes it to SQL so the matrix can be tested
 * and explained row by row.  The rules, in order:
 *
 *	0. destructive tool: never retried automatically -> dead, review_required
 *	1. permanent -> dead, permanent
 *	2. transient before execution -> retry (not_executed)
 *	3. transient mid/post/unknown phase, or ambiguous: idempotent tool ->
 *	   retry with the same key (idempotent_retry); otherwise -> verify
 *	   (outcome_unknown)
 *	4. a retry is refused when attempts reached max_attempts
 *	   (attempts_exhausted) or when the earliest possible next attempt falls
 *	   after the deadline (deadline_exceeded)
 *	5. retry_at = now + max(delay, retry_after), capped by the deadline
 *
 * Verification is not an attempt, so rule 4 does not apply to it: whether
 * the action happened must be known however late it is.
 *
 * src/decide.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "agentretry.h"

static void
set_dead(Decision *out, const char *reason)
{
	out->action = ACT_DEAD;
	out->reason = reason;
}

/* rules 4 and 5: turn a wish to retry into a scheduled retry or a refusal */
static void
schedule_retry(const DecisionInput *in, Decision *out, const char *reason)
{
	int64		wait = in->delay;
	TimestampTz earliest = in->now;

	if (in->attempt >= in->max_attempts)
	{
		set_dead(out, "attempts_exhausted");
		return;
	}
	if (in->retry_after != USEC_NONE)
	{
		earliest = ts_add_usec(in->now, in->retry_after);
		wait = Max(wait, in->retry_after);
	}
	if (in->deadline != TS_NONE && earliest > in->deadline)
	{
		set_dead(out, "deadline_exceeded");
		return;
	}
	out->action = ACT_RETRY;
	out->reason = reason;
	out->retry_at = ts_add_usec(in->now, wait);
	if (in->deadline != TS_NONE && out->retry_at > in->deadline)
		out->retry_at = in->deadline;
	out->delay = out->retry_at - in->now;
}

void
decide_failure(const DecisionInput *in, Decision *out)
{
	out->retry_at = TS_NONE;
	out->delay = USEC_NONE;
	out->attempt = in->attempt;

	if (in->side_effect == SE_DESTRUCTIVE)
		set_dead(out, "review_required");
	else if (in->failure == FC_PERMANENT)
		set_dead(out, "permanent");
	else if (in->failure == FC_TRANSIENT && in->phase == PHASE_PRE)
		schedule_retry(in, out, "not_executed");
	else if (in->idempotency == IDEM_IDEMPOTENT)
		schedule_retry(in, out, "idempotent_retry");
	else
	{
		out->action = ACT_VERIFY;
		out->reason = "outcome_unknown";
	}
}

PG_FUNCTION_INFO_V1(agentretry_decide);

/*
 * decide(failure failure_class, phase failure_phase, idempotency
 *		  idempotency_class, side_effect side_effect_class, attempt int,
 *		  max_attempts int, delay interval DEFAULT '0', retry_after interval
 *		  DEFAULT NULL, deadline timestamptz DEFAULT NULL, now timestamptz
 *		  DEFAULT clock_timestamp()) returns decision
 *
 * What fail() would decide for these inputs; delay stands for the jittered
 * backoff.  phase NULL means unknown.
 */
Datum
agentretry_decide(PG_FUNCTION_ARGS)
{
	DecisionInput in;
	Decision	out;

	check_not_null(fcinfo, 0, "failure");
	check_not_null(fcinfo, 2, "idempotency");
	check_not_null(fcinfo, 3, "side_effect");
	check_not_null(fcinfo, 4, "attempt");
	check_not_null(fcinfo, 5, "max_attempts");
	check_not_null(fcinfo, 6, "delay");
	check_not_null(fcinfo, 9, "now");

	in.failure = (FailureClass) enum_datum_index(failure_class_labels, PG_GETARG_DATUM(0));
	in.phase = PG_ARGISNULL(1) ? PHASE_UNKNOWN :
		(FailurePhase) enum_datum_index(failure_phase_labels, PG_GETARG_DATUM(1));
	in.idempotency = (Idempotency) enum_datum_index(idempotency_labels, PG_GETARG_DATUM(2));
	in.side_effect = (SideEffect) enum_datum_index(side_effect_labels, PG_GETARG_DATUM(3));
	in.attempt = PG_GETARG_INT32(4);
	in.max_attempts = PG_GETARG_INT32(5);
	in.delay = interval_usec(PG_GETARG_INTERVAL_P(6));
	in.retry_after = PG_ARGISNULL(7) ? USEC_NONE : interval_usec(PG_GETARG_INTERVAL_P(7));
	in.now = PG_GETARG_TIMESTAMPTZ(9);
	if (TIMESTAMP_NOT_FINITE(in.now))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("now must be a finite timestamp")));
	/* -infinity has passed already; infinity never comes */
	in.deadline = TS_NONE;
	if (!PG_ARGISNULL(8))
	{
		TimestampTz deadline = PG_GETARG_TIMESTAMPTZ(8);

		if (TIMESTAMP_IS_NOBEGIN(deadline))
			in.deadline = MIN_TIMESTAMP;
		else if (!TIMESTAMP_IS_NOEND(deadline))
			in.deadline = deadline;
	}

	if (in.attempt < 1 || in.max_attempts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attempt and max_attempts must be at least 1"),
				 errdetail("attempt is %d, max_attempts is %d.",
						   in.attempt, in.max_attempts)));
	if (in.delay < 0 || (!PG_ARGISNULL(7) && in.retry_after < 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delay and retry_after must not be negative")));

	decide_failure(&in, &out);
	PG_RETURN_DATUM(decision_datum(fcinfo, &out));
}

/* A decision as a row of the function's result type (decide, fail). */
Datum
decision_datum(FunctionCallInfo fcinfo, const Decision *d)
{
	TupleDesc	desc = result_tupdesc(fcinfo);
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	values[0] = label_enum_datum(TupleDescAttr(desc, 0)->atttypid,
								 action_labels[d->action]);
	values[1] = TimestampTzGetDatum(d->retry_at);
	nulls[1] = d->retry_at == TS_NONE;
	values[2] = Int32GetDatum(d->attempt);
	values[3] = CStringGetTextDatum(d->reason);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}
