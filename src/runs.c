/*-------------------------------------------------------------------------
 *
 * runs.c
 *	  Rows of agentretry.runs: the run a claim joins, reading and locking
 *	  a run, and its state changes.
 *
 * Locks: changes of a run (its state, the retry counter, the context
 * version, start_run filling in a workflow version) lock its row FOR NO
 * KEY UPDATE, held to the end of the transaction.  A caller may hold an
 * operation's row lock and then lock its run (a failure debiting the
 * run's retry counter, a step moving a saga on), never the other way
 * round: whoever holds a run's lock only locks operations with SKIP LOCKED
 * (saga.c), so no two transactions can wait for each other.
 *
 * A claim of a new key holds its run FOR KEY SHARE until it commits; that
 * conflicts only with FOR UPDATE.  compensate() takes the run FOR UPDATE
 * before it changes the run's state, so it waits for claims that are
 * starting steps (holding no operation's lock meanwhile), and a claim
 * arriving later waits for it and then reads the changed row (a lock that
 * conflicts with the updater's makes the read follow the update), and is
 * refused.  A saga's later advances take FOR UPDATE with SKIP LOCKED
 * before making a compensation due, to see without waiting whether a
 * claim is still starting a step.  The sweep's purge skips runs claims
 * hold the same way.
 *
 * src/runs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "runs.h"

static ArPlan join_plan = {
	"SELECT r.state::text FROM agentretry.runs r"
	" WHERE r.tenant = $1 AND r.run_id = $2 FOR KEY SHARE",
	2, {TEXTOID, TEXTOID}
};

static ArPlan start_plan = {
	"INSERT INTO agentretry.runs (tenant, run_id, state, started_at, updated_at)"
	" VALUES ($1, $2, 'running', $3, $3)"
	" ON CONFLICT (tenant, run_id) DO NOTHING RETURNING state::text",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

#define RUN_COLUMNS \
	"SELECT r.state::text, r.workflow_version, r.correlation_id," \
	" r.max_retry_events, r.retry_events, r.context_version" \
	" FROM agentretry.runs r WHERE r.tenant = $1 AND r.run_id = $2"

static ArPlan read_plans[] = {
	[RUN_LOCK_NONE] = {RUN_COLUMNS, 2, {TEXTOID, TEXTOID}},
	[RUN_LOCK_NO_KEY_UPDATE] = {RUN_COLUMNS " FOR NO KEY UPDATE", 2, {TEXTOID, TEXTOID}},
	[RUN_LOCK_NO_KEY_UPDATE_SKIP] = {RUN_COLUMNS " FOR NO KEY UPDATE SKIP LOCKED", 2, {TEXTOID, TEXTOID}},
	[RUN_LOCK_UPDATE] = {RUN_COLUMNS " FOR UPDATE", 2, {TEXTOID, TEXTOID}},
};

static ArPlan set_state_plan = {
	"UPDATE agentretry.runs SET state = $3::agentretry.run_state, updated_at = $4,"
	" finished_at = CASE WHEN $5 THEN $4 END,"
	" reconcile_at = CASE WHEN $3 IN ('succeeded', 'failed') THEN $4"
	"  ELSE reconcile_at END"
	" WHERE tenant = $1 AND run_id = $2",
	5, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, BOOLOID}
};

static RunState
state_of(const char *label)
{
	return (RunState) label_index(run_state_labels, label);
}

/*
 * The state of the run that a claim of a new key names, starting the run
 * when it does not exist (implicit start), held FOR KEY SHARE until the
 * caller's transaction ends.
 */
RunState
run_join(const char *tenant, const char *run_id, TimestampTz now)
{
	Datum		values[3];
	int			tries;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = TimestampTzGetDatum(now);
	for (tries = 0; tries < 3; tries++)
	{
		if (ar_run(&join_plan, values, NULL, false) > 0)
			return state_of(SPI_getvalue(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1));
		if (ar_run(&start_plan, values, NULL, false) > 0)
			return RUN_RUNNING;
		/* started concurrently: read it (and lock it) again */
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not join run \"%s\" while it was being purged", run_id),
			 errhint("Retry the claim.")));
	return RUN_RUNNING;			/* keep compiler quiet */
}

/*
 * Read (and lock, as asked) a run; false when it does not exist (or, with
 * SKIP, another transaction holds it).  Even unlocked, the read takes a
 * fresh snapshot: a caller that waited for a lock sees what committed
 * meanwhile.
 */
bool
run_read(const char *tenant, const char *run_id, RunLock lock, Run *run)
{
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	if (ar_run(&read_plans[lock], values, NULL, false) == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	run->tenant = pstrdup(tenant);
	run->run_id = pstrdup(run_id);
	run->state = state_of(SPI_getvalue(tup, desc, 1));
	run->workflow_version = col_text(tup, desc, 2);
	run->correlation_id = col_text(tup, desc, 3);
	run->max_retry_events = col_int32(tup, desc, 4, -1);
	run->retry_events = col_int32(tup, desc, 5, 0);
	run->context_version = col_int32(tup, desc, 6, 0);
	return true;
}

static bool
run_state_final(RunState s)
{
	return s == RUN_SUCCEEDED || s == RUN_FAILED || s == RUN_COMPENSATED ||
		s == RUN_NEEDS_REVIEW;
}

/*
 * Move a locked run to state; a final state records when it finished, any
 * other (a compensation reopened by a late success) clears it.  A run
 * finished by its caller (succeeded, failed) is due for reconcile(), which
 * reports it if steps of it are still open.
 */
void
run_set_state(const char *tenant, const char *run_id, RunState state,
			  TimestampTz now)
{
	Datum		values[5];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = CStringGetTextDatum(run_state_labels[state]);
	values[3] = TimestampTzGetDatum(now);
	values[4] = BoolGetDatum(run_state_final(state));
	ar_run(&set_state_plan, values, NULL, false);
}

void
report_unknown_run(const char *tenant, const char *run_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_AR_UNKNOWN_KEY),
			 errmsg("run \"%s\" does not exist", run_id),
			 errdetail("No run has this id in tenant \"%s\".", tenant)));
}

void
report_run_state(const char *action, const Run *run, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_AR_INVALID_STATE),
			 errmsg("cannot %s run \"%s\" because it is %s",
					action, run->run_id, run_state_labels[run->state]),
			 hint ? errhint("%s", hint) : 0));
}
