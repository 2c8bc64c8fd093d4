/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Compensation (sagas): undoing a run's completed steps, newest first.
 *
 * compensate() (run.c) turns a run to compensating; from then on the
 * saga is driven by saga_advance(), which every change of one of the run's
 * operations calls (transition_store), and the sweep calls for runs being
 * compensated.  It is idempotent: each call first brings the run's steps
 * up to date (saga_sync), then makes the next compensation due or ends the
 * run.
 *
 *	- A step waiting for a retry or for approval is cancelled (reason
 *	  compensating).
 *	- A step in flight (leased, or being verified) is marked
 *	  (operations.compensating) and waited for: a failure of it is not
 *	  retried (transition.c), and its success is compensated too.
 *	- A step that succeeded and has a compensate tool gets its
 *	  compensation: an ordinary operation with key "<step key>:compensate",
 *	  the compensate tool and args, the same run, state retry_wait with no
 *	  due time (pending).
 *
 * Only one compensation of a run is active (leased, being verified, or
 * due) at a time, and none while a step is in flight or being started (a
 * claim of a new key that has not committed yet); when none is, the
 * pending one whose step completed last falls due, so compensations run
 * strictly in reverse completion order, each claimed, retried, budgeted and
 * verified like any other operation.  When nothing is pending, active or
 * in flight, the run is compensated; a compensation that ends dead (or
 * cancelled) makes it needs_review, and nothing new falls due until an
 * operator requeues it.
 *
 * Locks: saga_advance() locks the run FOR NO KEY UPDATE, or leaves the
 * advance to a later one when another transaction holds it (so advances of
 * one run are serialised and two compensations never fall due at once),
 * and touches the run's operations only with SKIP LOCKED: it never waits
 * for a lock, so it cannot take part in a deadlock.  An operation skipped because
 * another transaction holds it is brought up to date by the next advance:
 * that transaction's own change (its transition looks at the run's state,
 * transition.c; a completion of a step of a run that is not running is
 * refused by the fast path of complete() and redone under the row lock,
 * outcome.c), or the sweep's.
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
 * The compensations of the run's succeeded steps that have none yet: the
 * step's recorded compensate tool and args, or the policy's compensate
 * tool with the step's key, args and result.  A step with neither has
 * nothing to undo.  Run under the run's lock, and claims cannot create
 * keys with this suffix (claim.c), so no other transaction inserts these
 * keys meanwhile.
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
	" WHERE o.tenant = $1 AND o.run_id = $2 AND o.state = 'succeeded'"
	" AND o.compensation_of IS NULL AND x.tool IS NOT NULL"
	" AND NOT EXISTS (SELECT FROM agentretry.operations e"
	"  WHERE e.tenant = o.tenant AND e.key = o.key || ':compensate')"
	" ORDER BY o.completed_at, o.key"
	" ON CONFLICT (tenant, key) DO NOTHING"
	" RETURNING c.key, c.tool, c.lease_token, c.run_id, c.step",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/* the run's steps waiting for a retry or an approval: to be cancelled */
static ArPlan waiting_steps_plan = {
	"SELECT " AR_OP_SELECT " FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.tenant = $1 AND o.run_id = $2 AND o.compensation_of IS NULL"
	" AND o.state IN ('retry_wait', 'awaiting_approval')"
	" FOR UPDATE OF o SKIP LOCKED",
	2, {TEXTOID, TEXTOID}
};

/* the run's steps in flight, marked: their outcome moves the saga on */
static ArPlan mark_in_flight_plan = {
	"UPDATE agentretry.operations o SET compensating = true"
	" FROM (SELECT x.tenant, x.key FROM agentretry.operations x"
	"  WHERE x.tenant = $1 AND x.run_id = $2 AND x.compensation_of IS NULL"
	"  AND x.state IN ('in_progress', 'verify') AND NOT x.compensating"
	"  FOR UPDATE SKIP LOCKED) m"
	" WHERE o.tenant = m.tenant AND o.key = m.key",
	2, {TEXTOID, TEXTOID}
};

/*
 * Is no claim starting a step in the run?  Claims of new keys hold it FOR
 * KEY SHARE: taking FOR UPDATE with SKIP LOCKED answers without waiting,
 * and once taken makes later claims wait (and then refuse the step: the
 * run is no longer running).
 */
static ArPlan no_claim_open_plan = {
	"SELECT FROM agentretry.runs r WHERE r.tenant = $1 AND r.run_id = $2"
	" FOR UPDATE SKIP LOCKED",
	2, {TEXTOID, TEXTOID}
};

/*
 * What the run's operations say about the saga.  Steps in flight include
 * those still waiting for a retry or approval: the sync cancelled every one
 * it could lock, so one left is held by a transaction that may be starting
 * it (a claim of its retry in pattern A).
 */
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
	"  AND o.state IN ('in_progress', 'verify', 'retry_wait', 'awaiting_approval'))"
	" FROM agentretry.operations o WHERE o.tenant = $1 AND o.run_id = $2",
	2, {TEXTOID, TEXTOID}
};

/*
 * Make the pending compensation whose step completed last due now.  If
 * another transaction holds it (an operator acting on it), nothing: that
 * transaction's change advances the saga again.
 */
static ArPlan next_due_plan = {
	"UPDATE agentretry.operations c SET next_attempt_at = $3,"
	" reason = 'compensation_due', updated_at = $3"
	" WHERE (c.tenant, c.key) = ("
	"  SELECT l.tenant, l.key FROM agentretry.operations l"
	"  WHERE (l.tenant, l.key) = ("
	"   SELECT p.tenant, p.key FROM agentretry.operations p"
	"   LEFT JOIN agentretry.operations s"
	"    ON s.tenant = p.tenant AND s.key = p.compensation_of"
	"   WHERE p.tenant = $1 AND p.run_id = $2 AND p.compensation_of IS NOT NULL"
	"   AND p.state = 'retry_wait' AND p.next_attempt_at IS NULL"
	"   ORDER BY s.completed_at DESC NULLS LAST, p.key DESC LIMIT 1)"
	"  AND l.state = 'retry_wait' AND l.next_attempt_at IS NULL"
	"  FOR UPDATE SKIP LOCKED)"
	" RETURNING c.key, c.tool, c.lease_token, c.run_id, c.step",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/* trace an event of the operation row i of a RETURNING of the plans above names */
static void
trace_returned(const char *kind, SPITupleTable *tt, uint64 i,
			   const char *tenant, const char *reason, TimestampTz now)
{
	HeapTuple	tup = tt->vals[i];
	TupleDesc	desc = tt->tupdesc;
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
 * A step of a run being undone is not started again: it is cancelled
 * (reason compensating) and traced; the caller stores it.
 */
void
saga_cancel_step(Operation *op, TimestampTz now)
{
	operation_set_terminal(op, OP_CANCELLED, "compensating");
	record_simple_event("cancel", op, "compensating", now);
}

/*
 * Bring the run's steps up to date with its compensation (see the file
 * header); returns how many compensations were scheduled.  The caller
 * holds the run's lock.
 */
static int
saga_sync(Datum *values, TimestampTz now)
{
	const char *tenant = TextDatumGetCString(values[0]);
	uint64		n;
	uint64		i;
	SPITupleTable *waiting;
	SPITupleTable *scheduled;

	n = ar_run(&waiting_steps_plan, values, NULL, false);
	waiting = SPI_tuptable;
	for (i = 0; i < n; i++)
	{
		Operation	op;

		memset(&op, 0, sizeof(op));
		operation_from_row(waiting->vals[i], waiting->tupdesc, &op);
		saga_cancel_step(&op, now);
		operation_store(&op, now);
	}
	ar_run(&mark_in_flight_plan, values, NULL, false);

	n = ar_run(&schedule_plan, values, NULL, false);
	scheduled = SPI_tuptable;	/* tracing runs statements of its own */
	for (i = 0; i < n; i++)
		trace_returned("compensation_scheduled", scheduled, i, tenant,
					   "compensation_pending", now);
	return (int) n;
}

/*
 * Move the compensation of run_id on: bring its steps up to date, then
 * make the next compensation due, or end the run compensated or
 * needs_review.  Nothing for a run that is not being (or was not)
 * compensated, nor for one that another transaction holds: its holder
 * may be waiting for the operation our caller holds (a checkpoint() and
 * then a complete() in one transaction), so we do not wait; a later
 * change, or the sweep, moves the saga on.  Returns how many compensations
 * were scheduled.
 */
int
saga_advance(const char *tenant, const char *run_id, TimestampTz now)
{
	Datum		values[3];
	Run			run;
	RunState	next;
	int			scheduled;
	int64		failed,
				active,
				pending,
				in_flight;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	if (run_id == NULL ||
		!run_read(tenant, run_id, RUN_LOCK_NO_KEY_UPDATE_SKIP, &run) ||
		(run.state != RUN_COMPENSATING && run.state != RUN_NEEDS_REVIEW &&
		 run.state != RUN_COMPENSATED))
		return 0;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = TimestampTzGetDatum(now);
	scheduled = saga_sync(values, now);

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
	else if (ar_run(&no_claim_open_plan, values, NULL, false) == 0)
		next = RUN_COMPENSATING;	/* a step being started counts as in flight */
	else if (pending > 0)
	{
		next = RUN_COMPENSATING;
		if (ar_run(&next_due_plan, values, NULL, false) > 0)
			trace_returned("compensation_due", SPI_tuptable, 0, tenant,
						   "compensation_due", now);
	}
	else
		next = RUN_COMPENSATED;

	if (next != run.state)
	{
		run_set_state(tenant, run_id, next, now);
		record_run_event(run_state_labels[next], tenant, run_id, NULL, false, now);
	}
	return scheduled;
}
