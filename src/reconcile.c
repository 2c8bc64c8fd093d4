/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *	  reconcile() and acknowledge(): finding what went wrong after the
 *	  fact, and marking it seen.
 *
 * reconcile() reads only rows that may hold a new anomaly: operations and
 * runs whose reconcile_at has come (partial indexes operations_reconcile
 * and runs_reconcile), oldest first, at most max of each per call.  The
 * transitions set reconcile_at: a success after retries or with a receipt
 * (now), an operation entering verification (when it would go stale),
 * a run finished by its caller (now).  For each row it records:
 *
 *	success_after_retry		succeeded after more than one attempt (audit);
 *	stale_verification		awaiting verification for longer than
 *							agentretry.verify_stale_after (otherwise it is
 *							due again when it would be stale);
 *	duplicate_receipt		another key of the tenant and tool succeeded
 *							with the same receipt (one anomaly per pair);
 *	run_finished_open		the run was finished while steps of it were
 *							still open;
 *
 * and clears reconcile_at.  Rows are locked FOR UPDATE (runs FOR NO KEY
 * UPDATE) SKIP LOCKED, so overlapping reconciles and sweeps share the work
 * without waiting, and an anomaly found twice is recorded once
 * (anomaly.c).  Every anomaly reconcile records is about rows it holds,
 * except a duplicate_receipt pair, which two reconciles may find from its
 * two ends: waiting for each other's insert on the unique index, two
 * transactions that each called reconcile() more than once could
 * deadlock.  So a pair is recorded only by the transaction that holds the
 * receipt's advisory lock (pg_try_advisory_xact_lock, class
 * hashtext('agentretry.duplicate_receipt')); the other leaves its row due
 * a second later, and then finds the pair recorded (or records it, if the
 * first rolled back).  Verifications that began before 0.2.0 recorded
 * state_since are judged by updated_at.
 *
 * src/reconcile.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "events.h"
#include "reconcile.h"
#include "tenancy.h"

#define RECONCILE_MAX 100000

#define ANOMALY_COLUMNS \
	" INSERT INTO agentretry.anomalies" \
	" (tenant, kind, key, other_key, run_id, tool, receipt, attempt, detail, found_at)"

/*
 * $1 now, $2 max, $3 verify_stale_after.  Planned for each call (custom
 * plan; reconcile runs once per sweep): a generic plan cannot know that
 * few rows are due and LIMIT $2 is small, and joins the due rows back to
 * operations by reading the whole table instead of its primary key.
 */
static ArPlan reconcile_operations_plan = {
	"WITH due AS ("
	" SELECT o.tenant, o.key, o.tool, o.state, o.attempts, o.receipt, o.run_id,"
	"  coalesce(o.state_since, o.updated_at) AS since"
	" FROM agentretry.operations o"
	" WHERE o.reconcile_at <= $1"
	" ORDER BY o.reconcile_at LIMIT $2"
	" FOR UPDATE SKIP LOCKED),"
	" retried AS (" ANOMALY_COLUMNS
	" SELECT d.tenant, 'success_after_retry', d.key, NULL, d.run_id, d.tool,"
	"  NULL, d.attempts,"
	"  jsonb_build_object('attempts', d.attempts, 'receipt', d.receipt), $1"
	" FROM due d WHERE d.state = 'succeeded' AND d.attempts > 1"
	" ON CONFLICT DO NOTHING RETURNING 1),"
	" stale AS (" ANOMALY_COLUMNS
	" SELECT d.tenant, 'stale_verification', d.key, NULL, d.run_id, d.tool,"
	"  NULL, d.attempts, jsonb_build_object('since', d.since), $1"
	" FROM due d WHERE d.state = 'verify' AND d.since <= $1 - $3"
	" ON CONFLICT DO NOTHING RETURNING 1),"
	/* got: this transaction may record pairs of this receipt (see above) */
	" pairs AS ("
	" SELECT d.tenant, d.key, d.tool, d.receipt, x.key AS other,"
	"  pg_catalog.pg_try_advisory_xact_lock("
	"   pg_catalog.hashtext('agentretry.duplicate_receipt'),"
	"   pg_catalog.hashtext(d.tenant || '/' || d.tool || '/' || d.receipt)) AS got"
	" FROM due d CROSS JOIN LATERAL ("
	"  SELECT o2.key FROM agentretry.operations o2"
	"  WHERE o2.tenant = d.tenant AND o2.tool = d.tool AND o2.receipt = d.receipt"
	"  AND o2.key <> d.key AND o2.state = 'succeeded' LIMIT 10) x"
	" WHERE d.state = 'succeeded' AND d.receipt IS NOT NULL),"
	" dup AS (" ANOMALY_COLUMNS
	" SELECT p.tenant, 'duplicate_receipt', least(p.key, p.other),"
	"  greatest(p.key, p.other), NULL, p.tool, p.receipt, NULL,"
	"  jsonb_build_object('keys', jsonb_build_array(least(p.key, p.other),"
	"   greatest(p.key, p.other))), $1"
	" FROM pairs p WHERE p.got"
	" ON CONFLICT DO NOTHING RETURNING 1),"
	" done AS ("
	" UPDATE agentretry.operations o SET reconcile_at ="
	"  CASE WHEN EXISTS (SELECT FROM pairs p"
	"    WHERE p.tenant = d.tenant AND p.key = d.key AND NOT p.got)"
	"  THEN $1 + interval '1 second'"
	"  WHEN d.state = 'verify' AND d.since > $1 - $3 THEN d.since + $3 END"
	" FROM due d WHERE o.tenant = d.tenant AND o.key = d.key RETURNING 1)"
	" SELECT (SELECT count(*) FROM retried) + (SELECT count(*) FROM stale)"
	"  + (SELECT count(*) FROM dup), (SELECT count(*) FROM done)",
	3, {TIMESTAMPTZOID, INT4OID, INTERVALOID}, .custom = true
};

/* $1 now, $2 max */
static ArPlan reconcile_runs_plan = {
	"WITH due AS ("
	" SELECT r.tenant, r.run_id, r.state FROM agentretry.runs r"
	" WHERE r.reconcile_at <= $1"
	" ORDER BY r.reconcile_at LIMIT $2"
	" FOR NO KEY UPDATE SKIP LOCKED),"
	" still_open AS ("
	" SELECT d.tenant, d.run_id, d.state, count(*) AS steps"
	" FROM due d JOIN agentretry.operations o"
	"  ON o.tenant = d.tenant AND o.run_id = d.run_id"
	" WHERE d.state IN ('succeeded', 'failed') AND o.compensation_of IS NULL"
	"  AND o.state NOT IN ('succeeded', 'dead', 'cancelled')"
	" GROUP BY d.tenant, d.run_id, d.state),"
	" found AS (" ANOMALY_COLUMNS
	" SELECT p.tenant, 'run_finished_open', NULL, NULL, p.run_id, NULL, NULL,"
	"  NULL, jsonb_build_object('run_state', p.state, 'open_steps', p.steps), $1"
	" FROM still_open p ON CONFLICT DO NOTHING RETURNING 1),"
	" done AS ("
	" UPDATE agentretry.runs r SET reconcile_at = NULL"
	" FROM due d WHERE r.tenant = d.tenant AND r.run_id = d.run_id RETURNING 1)"
	" SELECT (SELECT count(*) FROM found), (SELECT count(*) FROM done)",
	2, {TIMESTAMPTZOID, INT4OID}, .custom = true
};

static int
run_reconcile(ArPlan *plan, TimestampTz now, int max, int *examined)
{
	Datum		values[3];
	bool		isnull;
	int			found;

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int32GetDatum(max);
	values[2] = IntervalPGetDatum(usec_interval((int64) ar_verify_stale_after_sec * USECS_PER_SEC));
	ar_run(plan, values, NULL, false);
	found = (int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	*examined = Max(*examined,
					(int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 2, &isnull)));
	return found;
}

/*
 * One round of reconciliation: at most max operations and max runs.
 * Returns the anomalies recorded; *more says a step stopped at max.  The
 * caller is SPI-connected.
 */
int
reconcile_round(TimestampTz now, int max, bool *more)
{
	int			examined = 0;
	int			found;

	found = run_reconcile(&reconcile_operations_plan, now, max, &examined);
	found += run_reconcile(&reconcile_runs_plan, now, max, &examined);
	*more = examined >= max;
	return found;
}

PG_FUNCTION_INFO_V1(agentretry_reconcile);

/*
 * reconcile(max integer DEFAULT 1000) returns integer
 *
 * Looks at up to max operations and max runs due for reconciliation (see
 * the file header) and returns the number of anomalies it recorded.  The
 * sweep runs it; call it again while it finds work.
 */
Datum
agentretry_reconcile(PG_FUNCTION_ARGS)
{
	int			max;
	bool		more;
	int			found;
	ArSpi		spi;

	max = arg_max(fcinfo, 0, RECONCILE_MAX);
	ar_spi_begin(&spi);
	found = reconcile_round(GetCurrentTimestamp(), max, &more);
	ar_spi_end(&spi);
	PG_RETURN_INT32(found);
}

/* $1 id: the anomaly's tenant, read without a lock */
static ArPlan anomaly_tenant_plan = {
	"SELECT a.tenant FROM agentretry.anomalies a WHERE a.id = $1",
	1, {INT8OID}
};

static ArPlan anomaly_lock_plan = {
	"SELECT a.tenant, a.kind::text, a.key, a.run_id, a.tool,"
	" a.acknowledged_at, a.attempt"
	" FROM agentretry.anomalies a WHERE a.id = $1 FOR UPDATE",
	1, {INT8OID}
};

static ArPlan acknowledge_plan = {
	"UPDATE agentretry.anomalies SET acknowledged_at = $2,"
	" acknowledged_by = $3, note = $4 WHERE id = $1",
	4, {INT8OID, TIMESTAMPTZOID, TEXTOID, TEXTOID}
};

PG_FUNCTION_INFO_V1(agentretry_acknowledge);

/*
 * acknowledge(id bigint, note text DEFAULT NULL) returns timestamptz
 *
 * Marks the anomaly seen by the calling role, with a note, and returns
 * when it was acknowledged.  Acknowledging it again changes nothing and
 * returns the first time.  AR003 when no anomaly has this id.
 */
Datum
agentretry_acknowledge(PG_FUNCTION_ARGS)
{
	int64		id;
	char	   *note;
	HeapTuple	tup;
	TupleDesc	desc;
	TimestampTz at;
	Operation	op;
	char	   *kind;
	bool		isnull;
	ArSpi		spi;
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	check_not_null(fcinfo, 0, "id");
	id = PG_GETARG_INT64(0);
	note = arg_optional_text(fcinfo, 1, "note");

	ar_spi_begin(&spi);
	values[0] = Int64GetDatum(id);

	/*
	 * Another tenant's anomaly is not there for the caller, and is not
	 * locked by it either (a wait would tell it exists).
	 */
	if (ar_run(&anomaly_tenant_plan, values, NULL, false) == 0 ||
		!caller_may_act_for(col_text(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)) ||
		ar_run(&anomaly_lock_plan, values, NULL, false) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_AR_UNKNOWN_KEY),
				 errmsg("anomaly " INT64_FORMAT " does not exist", id)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	at = col_ts(tup, desc, 6);
	if (at == TS_NONE)
	{
		at = GetCurrentTimestamp();
		memset(&op, 0, sizeof(op));
		op.tenant = col_text(tup, desc, 1);
		kind = col_text(tup, desc, 2);
		op.key = col_text(tup, desc, 3);
		op.run_id = col_text(tup, desc, 4);
		op.tool = col_text(tup, desc, 5);
		op.attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		values[1] = TimestampTzGetDatum(at);
		values[2] = CStringGetTextDatum(current_actor());
		param_text(values, nulls, 3, note);
		ar_run(&acknowledge_plan, values, nulls, false);
		record_actor_event("acknowledge", &op, kind, note, at);
	}
	ar_spi_end(&spi);
	PG_RETURN_TIMESTAMPTZ(at);
}
