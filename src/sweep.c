/*-------------------------------------------------------------------------
 *
 * sweep.c
 *	  sweep(): the background housekeeping that pg_cron runs every minute.
 *
 * Six bounded steps, each reading only the rows it acts on through an
 * index (operations_lease_expiry, operations_retry_due,
 * operations_expiry, events_at, runs_updated_at), so its cost
 * follows the number of due rows, not the size of the tables:
 *
 *	1. expired execution leases are decided as ambiguous failures (as a
 *	   claim finding them would), at most max;
 *	2. retries waiting past their deadline (and its grace) are
 *	   dead-lettered, at most max;
 *	3. terminal operations past their TTL are deleted, at most max, and
 *	   their tenant's token floor raised to their highest fencing token;
 *	4. events past agentretry.event_retention are deleted, at most max,
 *	   and so are budget ledger rows;
 *	5. runs idle for agentretry.default_ttl whose operations are all gone
 *	   are deleted with their context versions, at most max;
 *	6. the sagas of runs being compensated or under review are advanced
 *	   (saga.c), at most max runs;
 *	7. reconcile() looks at operations and runs due for reconciliation,
 *	   at most max of each (reconcile.c).
 *
 * Step 4 also ages out, with the events' retention, acknowledged
 * anomalies and the counts behind stats().
 *
 * Every step locks its rows FOR UPDATE SKIP LOCKED and re-checks them
 * under the lock, so two overlapping sweeps (or a sweep and a worker) never
 * act on one row twice and never wait for each other's rows (reconcile.c
 * says how it avoids waiting for the other's anomalies).  Locks last until
 * the caller's transaction ends: one call is one batch.  Last, the number
 * of due retries is sent on channel agentretry (at commit), to wake
 * workers that LISTEN.
 *
 * src/sweep.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "reconcile.h"
#include "saga.h"
#include "stats.h"
#include "transition.h"

#define SWEEP_MAX 100000

/* $1 now (or a cut-off time), $2 max */
#define NOW_MAX_ARGTYPES {TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID}

/* Both locking queries re-check their condition under the lock. */
static ArPlan expired_leases_plan = {
	"SELECT " AR_OP_SELECT " FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.state = 'in_progress' AND o.lease_expires_at <= $1"
	" LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
	2, NOW_MAX_ARGTYPES
};

/*
 * $3: now - deadline_grace.  The rule of retry_too_late(): due beyond the
 * deadline, or the deadline's grace is over.
 */
static ArPlan past_deadline_plan = {
	"SELECT " AR_OP_SELECT " FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.state = 'retry_wait' AND o.next_attempt_at <= $1"
	" AND (o.deadline < $3 OR o.next_attempt_at > o.deadline)"
	" LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
	3, NOW_MAX_ARGTYPES
};

/*
 * The deleted rows' highest fencing token per tenant raises the tenant's
 * token floor, in the same statement: a key claimed again starts above it.
 * A floor row is appended only when it raises the floor, and never
 * updated, so overlapping sweeps do not wait for each other.
 */
static ArPlan purge_operations_plan = {
	"WITH gone AS ("
	" DELETE FROM agentretry.operations o USING ("
	"  SELECT x.tenant, x.key FROM agentretry.operations x"
	"  WHERE x.expires_at <= $1 ORDER BY x.expires_at LIMIT $2"
	"  FOR UPDATE SKIP LOCKED) d"
	" WHERE o.tenant = d.tenant AND o.key = d.key AND o.expires_at <= $1"
	" RETURNING o.tenant, o.lease_token),"
	" floors AS ("
	" INSERT INTO agentretry.token_floors (tenant, floor, raised_at)"
	"  SELECT g.tenant, max(g.lease_token), $1 FROM gone g GROUP BY g.tenant"
	"  HAVING max(g.lease_token) > coalesce((SELECT max(f.floor)"
	"   FROM agentretry.token_floors f WHERE f.tenant = g.tenant), 0))"
	" SELECT count(*) FROM gone",
	2, NOW_MAX_ARGTYPES
};

/*
 * Delete at most $2 rows of table (keyed by tenant and id) whose time
 * column is before $1 and that match cond, oldest first, skipping rows
 * others hold; returns the count.
 */
#define PURGE_BY_ID_SQL(table, time, cond) \
	"WITH gone AS (" \
	" DELETE FROM agentretry." table " e USING (" \
	"  SELECT x.tenant, x.id FROM agentretry." table " x" \
	"  WHERE x." time " < $1" cond " ORDER BY x." time " LIMIT $2" \
	"  FOR UPDATE SKIP LOCKED) d" \
	" WHERE e.tenant = d.tenant AND e.id = d.id RETURNING 1)" \
	" SELECT count(*) FROM gone"

static ArPlan purge_events_plan = {
	PURGE_BY_ID_SQL("events", "at", ""), 2, NOW_MAX_ARGTYPES
};

/* retention of the budget ledger: as events */
static ArPlan purge_ledger_plan = {
	PURGE_BY_ID_SQL("budget_ledger", "at", ""), 2, NOW_MAX_ARGTYPES
};

/* acknowledged anomalies: as events */
static ArPlan purge_anomalies_plan = {
	PURGE_BY_ID_SQL("anomalies", "found_at", " AND x.acknowledged_at IS NOT NULL"),
	2, NOW_MAX_ARGTYPES
};

/* the counts behind stats(): as events */
static ArPlan purge_stats_plan = {
	"WITH gone AS ("
	" DELETE FROM agentretry.stats_counts e USING ("
	"  SELECT x.tenant, x.bucket, x.tool, x.backend FROM agentretry.stats_counts x"
	"  WHERE x.bucket < $1 ORDER BY x.bucket LIMIT $2"
	"  FOR UPDATE SKIP LOCKED) d"
	" WHERE e.tenant = d.tenant AND e.bucket = d.bucket AND e.tool = d.tool"
	" AND e.backend = d.backend RETURNING 1)"
	" SELECT count(*) FROM gone",
	2, NOW_MAX_ARGTYPES
};

/*
 * Runs idle for the default TTL ($1: now - agentretry.default_ttl) once
 * none of their operations is left, with their context versions.  A run
 * that a claim of a new key is joining (FOR KEY SHARE) is skipped.
 */
static ArPlan purge_runs_plan = {
	"WITH gone AS ("
	" DELETE FROM agentretry.runs r USING ("
	"  SELECT x.tenant, x.run_id FROM agentretry.runs x"
	"  WHERE x.updated_at < $1 AND NOT EXISTS (SELECT FROM agentretry.operations o"
	"   WHERE o.tenant = x.tenant AND o.run_id = x.run_id)"
	"  ORDER BY x.updated_at LIMIT $2"
	"  FOR UPDATE SKIP LOCKED) d"
	" WHERE r.tenant = d.tenant AND r.run_id = d.run_id"
	" RETURNING r.tenant, r.run_id),"
	" context AS ("
	" DELETE FROM agentretry.run_context c USING gone g"
	" WHERE c.tenant = g.tenant AND c.run_id = g.run_id)"
	" SELECT count(*) FROM gone",
	2, NOW_MAX_ARGTYPES
};

/*
 * Runs being compensated (or under review, where a requeued compensation
 * may wait for its turn), least recently visited first, that no other
 * transaction holds: their sagas are advanced (a step that completed while
 * the saga could not lock it is caught up here), and each is marked
 * visited, so that a backlog of runs waiting for their steps does not
 * starve the others.
 */
static ArPlan compensating_runs_plan = {
	"UPDATE agentretry.runs r SET updated_at = $1"
	" FROM (SELECT x.tenant, x.run_id FROM agentretry.runs x"
	"  WHERE x.state IN ('compensating', 'needs_review')"
	"  ORDER BY x.updated_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED) v"
	" WHERE r.tenant = v.tenant AND r.run_id = v.run_id"
	" RETURNING r.tenant, r.run_id",
	2, NOW_MAX_ARGTYPES
};

static ArPlan due_count_plan = {
	"SELECT count(*) FROM agentretry.operations o"
	" WHERE o.state = 'retry_wait' AND o.next_attempt_at <= $1",
	1, NOW_MAX_ARGTYPES
};

/* Step 1: leases that expired become ambiguous failures, decided. */
static int
expire_leases(TimestampTz now, int max)
{
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(max)};
	uint64		n = ar_run(&expired_leases_plan, values, NULL, false);
	SPITupleTable *rows = SPI_tuptable;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		Operation	op;
		Decision	d;

		memset(&op, 0, sizeof(op));
		operation_from_row(rows->vals[i], rows->tupdesc, &op);
		expire_lease(&op, now, &d);
		transition_store(&op, now);
	}
	return (int) n;
}

/* Step 2: retries that can no longer start within the deadline. */
static int
dead_letter_past_deadline(TimestampTz now, int max)
{
	Datum		values[3];
	uint64		n;
	uint64		i;
	SPITupleTable *rows;

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int32GetDatum(max);
	values[2] = TimestampTzGetDatum(ts_add_usec(now, -(int64) ar_deadline_grace_sec * USECS_PER_SEC));
	n = ar_run(&past_deadline_plan, values, NULL, false);
	rows = SPI_tuptable;
	for (i = 0; i < n; i++)
	{
		Operation	op;

		memset(&op, 0, sizeof(op));
		operation_from_row(rows->vals[i], rows->tupdesc, &op);
		dead_letter(&op, "deadline_exceeded", now);
	}
	return (int) n;
}

/* Step 6: advance the sagas of runs being compensated. */
static void
advance_sagas(TimestampTz now, int max)
{
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(max)};
	uint64		n = ar_run(&compensating_runs_plan, values, NULL, false);
	SPITupleTable *runs = SPI_tuptable;
	uint64		i;

	for (i = 0; i < n; i++)
		saga_advance(col_text(runs->vals[i], runs->tupdesc, 1),
					 col_text(runs->vals[i], runs->tupdesc, 2), now);
}

/* Steps 3 and 4: one bounded DELETE; sql returns the count */
static int
purge(ArPlan *plan, TimestampTz before, int max)
{
	Datum		values[2] = {TimestampTzGetDatum(before), Int32GetDatum(max)};
	bool		isnull;

	ar_run(plan, values, NULL, false);
	return (int) DatumGetInt64(first_value(&isnull));
}

static int64
count_due(TimestampTz now)
{
	Datum		values[1] = {TimestampTzGetDatum(now)};
	bool		isnull;

	/* not read-only: the count must see what the steps above changed */
	ar_run(&due_count_plan, values, NULL, false);
	return DatumGetInt64(first_value(&isnull));
}

PG_FUNCTION_INFO_V1(agentretry_sweep);

/*
 * sweep(max integer DEFAULT 1000) returns sweep_summary
 *
 * One bounded round of housekeeping (see the file header); returns
 * (leases_expired, deadlines_exceeded, operations_purged, events_purged,
 * due_retries, more, ledger_purged, runs_purged, anomalies_found).  more is true when a
 * step stopped at max: call again.  NOTIFY agentretry carries due_retries when it is not zero.
 */
Datum
agentretry_sweep(PG_FUNCTION_ARGS)
{
	int			max;
	TimestampTz now = GetCurrentTimestamp();
	int			counts[6];
	int			anomalies;
	bool		more_reconcile;
	bool		more_purged;
	int64		due;
	TupleDesc	desc;
	Datum		values[9];
	bool		nulls[9] = {false, false, false, false, false, false, false, false, false};
	TimestampTz retention_start = ts_add_usec(now, -(int64) ar_event_retention_sec * USECS_PER_SEC);
	int			i;
	ArSpi		spi;

	max = arg_max(fcinfo, 0, SWEEP_MAX);

	ar_spi_begin(&spi);
	saga_defer_begin();
	counts[0] = expire_leases(now, max);
	counts[1] = dead_letter_past_deadline(now, max);
	saga_defer_end(now);
	counts[2] = purge(&purge_operations_plan, now, max);
	counts[3] = purge(&purge_events_plan, retention_start, max);
	counts[4] = purge(&purge_ledger_plan, retention_start, max);
	more_purged = purge(&purge_anomalies_plan, retention_start, max) >= max;
	more_purged |= purge(&purge_stats_plan, retention_start, max) >= max;
	counts[5] = purge(&purge_runs_plan,
					  ts_add_usec(now, -(int64) ar_default_ttl_sec * USECS_PER_SEC), max);
	advance_sagas(now, max);
	anomalies = reconcile_round(now, max, &more_reconcile);
	stats_maybe_flush(now, true);
	due = count_due(now);
	ar_spi_end(&spi);

	if (due > 0)
		Async_Notify("agentretry", psprintf(INT64_FORMAT, due));

	desc = result_tupdesc(fcinfo);
	values[5] = BoolGetDatum(false);
	for (i = 0; i < 4; i++)
	{
		values[i] = Int32GetDatum(counts[i]);
		if (counts[i] >= max)
			values[5] = BoolGetDatum(true);
	}
	values[4] = Int64GetDatum(due);
	values[6] = Int32GetDatum(counts[4]);
	values[7] = Int32GetDatum(counts[5]);
	values[8] = Int32GetDatum(anomalies);
	if (counts[4] >= max || counts[5] >= max || more_reconcile || more_purged)
		values[5] = BoolGetDatum(true);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
