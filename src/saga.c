/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Compensation (sagas): undoing a run's completed steps, newest first.
 *
 * compensate() (run.c) turns a run to compensating and schedules, for
 * every step that succeeded and has a compensate tool, a compensation: an
 * ordinary operation with key "<step key>:compensate", the compensate tool
 * and args, the same run, in state retry_wait.  Only one compensation of a
 * run is active (leased, being verified, or due) at a time; the others
 * wait with no due time (next_attempt_at NULL: claims answer wait).  When
 * none is active, saga_advance() makes the one whose step completed last
 * due, so compensations run strictly in reverse completion order, each
 * claimed, retried, budgeted and verified like any other operation.
 *
 * Steps still leased or being verified when compensation starts are marked
 * (operations.compensating) and waited for: a late success schedules its
 * compensation too (saga_succeeded), a failure is not retried.  When no
 * compensation is pending or active and no step is in flight, the run is
 * compensated; a compensation that ends dead (or cancelled) makes it
 * needs_review, and nothing further runs until an operator requeues it.
 *
 * Locks: every caller holds the row lock of the operation that changed,
 * then saga_advance() locks the run FOR NO KEY UPDATE, which serialises
 * the advances of one run, so two compensations never become due at once.
 *
 * src/saga.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "events.h"
#include "runs.h"
#include "saga.h"

/*
 * The compensation of one succeeded step: its recorded compensate tool and
 * args, or the policy's compensate tool with the step's key, args and
 * result.  Nothing when neither names a tool, or when the key exists.
 */
static ArPlan schedule_plan = {
	"INSERT INTO agentretry.operations AS c"
	" (tenant, key, op_hash, args, tool, state, attempts, lease_token, reason,"
	"  run_id, step, compensation_of, compensating, created_at, updated_at, state_since)"
	" SELECT o.tenant, o.key || ':compensate', agentretry.op_hash(x.args), x.args, x.tool,"
	"  'retry_wait', 0,"
	"  coalesce((SELECT max(f.floor) FROM agentretry.token_floors f WHERE f.tenant = o.tenant), 0) + 1,"
	"  'compensation_pending', o.run_id, o.step, o.key, true, $3, $3, $3"
	" FROM agentretry.operations o" AR_POLICY_JOINS
	" CROSS JOIN LATERAL (SELECT"
	"  coalesce(o.compensate_tool, pt.compensate_tool, pw.compensate_tool, t.compensate_tool) AS tool,"
	"  coalesce(o.compensate_args, pg_catalog.jsonb_build_object("
	"   'key', o.key, 'args', o.args, 'result', o.result)) AS args) x"
	" WHERE o.tenant = $1 AND o.key = $2 AND o.state = 'succeeded'"
	" AND o.compensation_of IS NULL AND x.tool IS NOT NULL"
	" ON CONFLICT (tenant, key) DO NOTHING"
	" RETURNING c.key, c.tool, c.lease_token, c.run_id, c.step",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/* what the run's operations say about the saga */
static ArPlan progress_plan = {
	"SELECT"
	" count(*) FILTER (WHERE o.compensation_of IS NOT NULL"
	"  AND o.state IN ('dead', 'cancelled')),"
	" count(*) FILTER (WHERE o.compensation_of IS NOT NULL"
	"  AND (o.state IN ('in_progress', 'verify')"
	"   OR (o.state = 'retry_wait' AND o.next_attempt_at IS NOT NULL))),"
	" count(*) FILTER (WHERE o.compensation_of IS NOT NULL"
	"  AND o.state = 'retry_wait' AND o.next_attempt_at IS NULL),"
	" count(*) FILTER (WHERE o.compensation_of IS NULL"
	"  AND o.state IN ('in_progress', 'verify'))"
	" FROM agentretry.operations o WHERE o.tenant = $1 AND o.run_id = $2",
	2, {TEXTOID, TEXTOID}
};

/*
 * Make the pending compensation whose step completed last due now.  The
 * outer WHERE re-checks the row under its lock (an operator may have
 * acted on it meanwhile).
 */
static ArPlan next_due_plan = {
	"UPDATE agentretry.operations c SET next_attempt_at = $3,"
	" reason = 'compensation_due', updated_at = $3"
	" WHERE (c.tenant, c.key) = ("
	"  SELECT p.tenant, p.key FROM agentretry.operations p"
	"  LEFT JOIN agentretry.operations s"
	"   ON s.tenant = p.tenant AND s.key = p.compensation_of"
	"  WHERE p.tenant = $1 AND p.run_id = $2 AND p.compensation_of IS NOT NULL"
	"  AND p.state = 'retry_wait' AND p.next_attempt_at IS NULL"
	"  ORDER BY s.completed_at DESC NULLS LAST, p.key DESC LIMIT 1)"
	" AND c.state = 'retry_wait' AND c.next_attempt_at IS NULL"
	" RETURNING c.key, c.tool, c.lease_token, c.run_id, c.step",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/* trace an event of the operation a RETURNING row of the plans above names */
static void
trace_returned(const char *kind, const char *tenant, const char *reason,
			   TimestampTz now)
{
	HeapTuple	tup = SPI_tuptable->vals[0];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	Operation	op;

	memset(&op, 0, sizeof(op));
	op.tenant = (char *) tenant;
	op.key = col_text(tup, desc, 1);
	op.tool = col_text(tup, desc, 2);
	op.lease_token = col_int64(tup, desc, 3, 0);
	op.run_id = col_text(tup, desc, 4);
	op.step = col_text(tup, desc, 5);
	record_simple_event(kind, &op, reason, now);
}

/* An event of the run itself (no operation key), optionally by a person. */
void
record_run_event(const char *kind, const char *tenant, const char *run_id,
				 const char *reason, bool by_actor, TimestampTz now)
{
	Operation	op;

	memset(&op, 0, sizeof(op));
	op.tenant = (char *) tenant;
	op.run_id = (char *) run_id;
	if (by_actor)
		record_actor_event(kind, &op, reason, NULL, now);
	else
		record_simple_event(kind, &op, reason, now);
}

/*
 * Schedule the compensation of the succeeded step (tenant, key), pending
 * (not yet due).  Returns 1 when one was scheduled, 0 when the step has
 * nothing to compensate or its compensation exists already.
 */
int
saga_schedule(const char *tenant, const char *key, TimestampTz now)
{
	Datum		values[3];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(key);
	values[2] = TimestampTzGetDatum(now);
	if (ar_run(&schedule_plan, values, NULL, false) == 0)
		return 0;
	trace_returned("compensation_scheduled", tenant, "compensation_pending", now);
	return 1;
}

/*
 * Move the compensation of run_id on after one of its operations changed:
 * make the next compensation due, or end the run compensated or
 * needs_review.  Nothing for a run that is not being compensated.
 */
void
saga_advance(const char *tenant, const char *run_id, TimestampTz now)
{
	Datum		values[3];
	Run			run;
	RunState	next;
	int64		failed,
				active,
				pending,
				in_flight;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	if (run_id == NULL ||
		!run_read(tenant, run_id, RUN_LOCK_NO_KEY_UPDATE, &run) ||
		(run.state != RUN_COMPENSATING && run.state != RUN_NEEDS_REVIEW))
		return;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = TimestampTzGetDatum(now);
	ar_run(&progress_plan, values, NULL, false);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	failed = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	active = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	pending = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	in_flight = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));

	if (failed > 0)
		next = RUN_NEEDS_REVIEW;
	else if (active > 0 || in_flight > 0)
		next = RUN_COMPENSATING;
	else if (pending > 0)
	{
		next = RUN_COMPENSATING;
		if (ar_run(&next_due_plan, values, NULL, false) > 0)
			trace_returned("compensation_due", tenant, "compensation_due", now);
	}
	else
		next = RUN_COMPENSATED;

	if (next != run.state)
	{
		run_set_state(tenant, run_id, next, now);
		record_run_event(run_state_labels[next], tenant, run_id, NULL, false, now);
	}
}

/*
 * A step or a compensation of a run being compensated succeeded: a late
 * step gets its compensation, and the saga moves on.
 */
void
saga_succeeded(const Operation *op, TimestampTz now)
{
	if (op->compensation_of == NULL)
		saga_schedule(op->tenant, op->key, now);
	saga_advance(op->tenant, op->run_id, now);
}
