/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The counts behind stats(): attempts, replays, successes, verifications,
 *	  dead-letters, denials, approvals, compensations and the time to
 *	  completion, per tenant and tool.
 *
 * A replay must stay a read (no row written for it), and the other counts
 * should not add a statement to the calls they count.  So each session
 * counts in memory what agentretry answered and did, and writes its counts,
 * at most about once a second, in one upsert per tenant and tool into its
 * own row of agentretry.stats_counts (keyed by its process id and the
 * minute), from within the agentretry call that counted last: the counts
 * of a call are written by that call when a second has passed since the
 * last write, else by a later one.  The sweep always writes its own.
 * Sessions never touch each other's rows, so they never wait for each
 * other's counts, even when a transaction holding one stays open.
 *
 * What is counted is what agentretry answered, as pg_stat_statements
 * counts calls: an attempt whose transaction rolled back still counts (a
 * caller of pattern B may have acted on it; the replay prevented a
 * duplicate either way).  The write itself is part of the caller's
 * transaction: if that transaction, or the subtransaction it was made in,
 * rolls back, the counts it wrote are kept to be written again.  A
 * prepared transaction's counts count as written; while it holds this
 * session's row of the minute, the session writes in the next minute.
 *
 * Precision: a session's counts of its last second are lost if it ends
 * before another agentretry call of it writes them (stats() writes the
 * caller's own first); counts are filed under the minute they were written
 * in.  Nothing is written in a read-only transaction or on a standby (the
 * counts wait for a call that may write).
 *
 * src/stats.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "stats.h"

#define ST_NSLOTS (ST_NCOUNTERS + ST_NBUCKETS)

/* counts are written at most this often per session */
#define ST_FLUSH_INTERVAL_USEC USECS_PER_SEC

/* beyond this many tenant/tool entries, idle ones are forgotten */
#define ST_MAX_ENTRIES 1024

typedef struct StatKey
{
	char		tenant[AR_MAX_NAME_LEN + 1];
	char		tool[AR_MAX_NAME_LEN + 1];
} StatKey;

typedef struct StatEntry
{
	StatKey		key;
	int64		pending[ST_NSLOTS]; /* to write */
	int64		inflight[ST_NSLOTS];	/* written by the current transaction */
	bool		has_pending;
	bool		has_inflight;
} StatEntry;

/* upper bounds of the completion buckets, as agentretry.stats_buckets() */
static const double bucket_bounds[ST_NBUCKETS - 1] =
{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 21600, 86400};

static HTAB *stat_entries = NULL;
static StatEntry *last_entry = NULL;	/* the one most recently counted */
static bool any_pending = false;
static bool any_inflight = false;
static SubTransactionId inflight_subid = InvalidSubTransactionId;
static TimestampTz last_flush = 0;
static TimestampTz prepared_bucket = 0; /* a prepared transaction holds it */

/*
 * Counts of a call that may yet be refused (claim() or claim_due() inside
 * a transaction block, src/guard.c) are staged and kept only if it is not:
 * a refused call answered nothing.  Entries are not forgotten during a
 * call, so the pointers stay valid.
 */
typedef struct StagedCount
{
	StatEntry  *e;
	int			slot;
} StagedCount;

static bool staging = false;
static SubTransactionId staging_subid = InvalidSubTransactionId;
static StagedCount *staged = NULL;
static int	nstaged = 0;
static int	maxstaged = 0;

static ArPlan upsert_plan = {
	"INSERT INTO agentretry.stats_counts AS s"
	" (tenant, bucket, tool, backend, first_attempts, executions, replays,"
	"  successes, successes_after_retry, verifications, dead_letters,"
	"  budget_denials, approvals, compensations_succeeded,"
	"  compensations_dead, completion_hist)"
	" VALUES ($1, $2, $3, $4, $5[1], $5[2], $5[3], $5[4], $5[5], $5[6],"
	"  $5[7], $5[8], $5[9], $5[10], $5[11], $6)"
	" ON CONFLICT (tenant, bucket, tool, backend) DO UPDATE SET"
	" first_attempts = s.first_attempts + excluded.first_attempts,"
	" executions = s.executions + excluded.executions,"
	" replays = s.replays + excluded.replays,"
	" successes = s.successes + excluded.successes,"
	" successes_after_retry = s.successes_after_retry + excluded.successes_after_retry,"
	" verifications = s.verifications + excluded.verifications,"
	" dead_letters = s.dead_letters + excluded.dead_letters,"
	" budget_denials = s.budget_denials + excluded.budget_denials,"
	" approvals = s.approvals + excluded.approvals,"
	" compensations_succeeded = s.compensations_succeeded + excluded.compensations_succeeded,"
	" compensations_dead = s.compensations_dead + excluded.compensations_dead,"
	" completion_hist = ARRAY(SELECT u.a + u.b"
	"  FROM unnest(s.completion_hist, excluded.completion_hist)"
	"   WITH ORDINALITY AS u(a, b, i) ORDER BY u.i)",
	6, {TEXTOID, TIMESTAMPTZOID, TEXTOID, INT4OID, INT8ARRAYOID, INT8ARRAYOID}
};

static void stats_xact_callback(XactEvent event, void *arg);
static void stats_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

void
stats_init(void)
{
	RegisterXactCallback(stats_xact_callback, NULL);
	RegisterSubXactCallback(stats_subxact_callback, NULL);
}

static void
add_slots(int64 *to, const int64 *from)
{
	int			i;

	for (i = 0; i < ST_NSLOTS; i++)
		to[i] += from[i];
}

static StatEntry *
stat_entry(const char *tenant, const char *tool)
{
	StatKey		key;
	bool		found;
	StatEntry  *e;

	if (last_entry != NULL && strcmp(last_entry->key.tenant, tenant) == 0 &&
		strcmp(last_entry->key.tool, tool) == 0)
		return last_entry;
	if (stat_entries == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(StatKey);
		ctl.entrysize = sizeof(StatEntry);
		ctl.hcxt = TopMemoryContext;
		stat_entries = hash_create("agentretry stats", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	strlcpy(key.tenant, tenant, sizeof(key.tenant));
	strlcpy(key.tool, tool, sizeof(key.tool));
	e = hash_search(stat_entries, &key, HASH_ENTER, &found);
	if (!found)
	{
		memset(e->pending, 0, sizeof(e->pending));
		memset(e->inflight, 0, sizeof(e->inflight));
		e->has_pending = e->has_inflight = false;
	}
	last_entry = e;
	return e;
}

static void
count_slot(const char *tenant, const char *tool, int slot)
{
	StatEntry  *e;

	if (!ar_track_stats)
		return;
	e = stat_entry(tenant, tool);
	if (staging)
	{
		if (nstaged == maxstaged)
		{
			maxstaged = Max(64, maxstaged * 2);
			staged = staged == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(StagedCount) * maxstaged) :
				repalloc(staged, sizeof(StagedCount) * maxstaged);
		}
		staged[nstaged].e = e;
		staged[nstaged++].slot = slot;
		return;
	}
	e->pending[slot]++;
	e->has_pending = true;
	any_pending = true;
}

/* from now on, counts wait for stats_stage_end() */
void
stats_stage_begin(void)
{
	staging = true;
	staging_subid = GetCurrentSubTransactionId();
	nstaged = 0;
}

/* keep the staged counts, or forget them */
void
stats_stage_end(bool keep)
{
	int			i;

	staging = false;
	for (i = 0; keep && i < nstaged; i++)
	{
		staged[i].e->pending[staged[i].slot]++;
		staged[i].e->has_pending = true;
		any_pending = true;
	}
	nstaged = 0;
}

void
stats_count(const char *tenant, const char *tool, StatCounter c)
{
	count_slot(tenant, tool, c);
}

/* an attempt starts: an execution, and the first one of its operation */
void
stats_count_attempt(const Operation *op, bool first)
{
	count_slot(op->tenant, op->tool, ST_EXECUTIONS);
	if (first)
		count_slot(op->tenant, op->tool, ST_FIRST_ATTEMPTS);
}

/* a replay: a duplicate prevented */
void
stats_count_replay(const char *tenant, const char *tool)
{
	count_slot(tenant, tool, ST_REPLAYS);
}

/*
 * op succeeded (its tool, attempts, first attempt and compensation_of
 * known): a success, after retries or not, of a compensation or not, and
 * its time from first attempt to success.
 */
void
stats_count_success(const Operation *op, TimestampTz now)
{
	int			b = ST_NBUCKETS - 1;

	if (!ar_track_stats)
		return;
	count_slot(op->tenant, op->tool, ST_SUCCESSES);
	if (op->attempts > 1)
		count_slot(op->tenant, op->tool, ST_SUCCESSES_AFTER_RETRY);
	if (op->compensation_of != NULL)
		count_slot(op->tenant, op->tool, ST_COMPENSATIONS_SUCCEEDED);
	if (op->first_attempt_at != TS_NONE)
	{
		double		secs = (double) (now - op->first_attempt_at) / USECS_PER_SEC;
		int			i;

		for (i = 0; i < ST_NBUCKETS - 1; i++)
		{
			if (secs <= bucket_bounds[i])
			{
				b = i;
				break;
			}
		}
		count_slot(op->tenant, op->tool, ST_NCOUNTERS + b);
	}
}

/* op was dead-lettered */
void
stats_count_dead(const Operation *op)
{
	count_slot(op->tenant, op->tool, ST_DEAD_LETTERS);
	if (op->compensation_of != NULL)
		count_slot(op->tenant, op->tool, ST_COMPENSATIONS_DEAD);
}

static Datum
int8_array(const int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);
	int			i;

	for (i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Write the counts to write into this session's rows of the current minute;
 * they stay in flight until the (sub)transaction that wrote them ends.
 * Writes in flight all belong to one (sub)transaction, so that its end
 * decides for all of them: in another one, later counts wait for a later
 * transaction.  The caller is SPI-connected.  Returns the number of rows
 * written.
 */
static int
stats_flush(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	StatEntry  *e;
	Datum		values[6];
	TimestampTz bucket = now - now % USECS_PER_MINUTE;
	int			written = 0;

	if (!any_pending || bucket <= prepared_bucket ||
		(any_inflight && inflight_subid != GetCurrentSubTransactionId()) ||
		XactReadOnly || RecoveryInProgress() || IsInParallelMode())
		return 0;
	last_flush = now;
	/* from the first write on, an error must give the counts back */
	any_inflight = true;
	inflight_subid = GetCurrentSubTransactionId();
	values[1] = TimestampTzGetDatum(bucket);
	values[3] = Int32GetDatum(MyProcPid);
	hash_seq_init(&seq, stat_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!e->has_pending)
			continue;
		values[0] = CStringGetTextDatum(e->key.tenant);
		values[2] = CStringGetTextDatum(e->key.tool);
		values[4] = int8_array(e->pending, ST_NCOUNTERS);
		values[5] = int8_array(e->pending + ST_NCOUNTERS, ST_NBUCKETS);
		add_slots(e->inflight, e->pending);
		memset(e->pending, 0, sizeof(e->pending));
		e->has_pending = false;
		e->has_inflight = true;
		ar_run(&upsert_plan, values, NULL, false);
		written++;
	}
	any_pending = false;
	return written;
}

/*
 * Write the counts if a second has passed since the last write (always,
 * with force) and this transaction may write.  The caller is
 * SPI-connected.
 */
void
stats_maybe_flush(TimestampTz now, bool force)
{
	if (!any_pending || (!force && now - last_flush < ST_FLUSH_INTERVAL_USEC))
		return;
	stats_flush(now);
}

/* forget entries with nothing left to count, when there are too many */
static void
forget_idle_entries(void)
{
	HASH_SEQ_STATUS seq;
	StatEntry  *e;

	last_entry = NULL;
	hash_seq_init(&seq, stat_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!e->has_pending && !e->has_inflight)
			hash_search(stat_entries, &e->key, HASH_REMOVE, NULL);
	}
}

/* the write in flight is done (kept), or undone (to be written again) */
static void
end_inflight(bool kept)
{
	HASH_SEQ_STATUS seq;
	StatEntry  *e;

	hash_seq_init(&seq, stat_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!e->has_inflight)
			continue;
		if (!kept)
		{
			add_slots(e->pending, e->inflight);
			e->has_pending = true;
			any_pending = true;
		}
		memset(e->inflight, 0, sizeof(e->inflight));
		e->has_inflight = false;
	}
	any_inflight = false;
	inflight_subid = InvalidSubTransactionId;
}

static void
stats_xact_callback(XactEvent event, void *arg)
{
	/* a call that failed left its staged counts: they answered nothing */
	staging = false;
	nstaged = 0;
	if (!any_inflight)
		return;
	switch (event)
	{
		case XACT_EVENT_PREPARE:
			/* the prepared transaction holds this minute's rows */
			prepared_bucket = last_flush - last_flush % USECS_PER_MINUTE;
			end_inflight(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			end_inflight(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			end_inflight(false);
			break;
		default:
			return;
	}
	if (hash_get_num_entries(stat_entries) > ST_MAX_ENTRIES)
		forget_idle_entries();
}

/*
 * A write made in a subtransaction belongs to its parent when it commits,
 * and is undone when it rolls back.
 */
static void
stats_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	/*
	 * A call that failed in a subtransaction (a PL/pgSQL exception block)
	 * left its staged counts; the call's own subtransactions (a budget's
	 * gather) do not end its staging.
	 */
	if (staging && staging_subid == mySubid)
	{
		if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			staging = false;
			nstaged = 0;
		}
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			staging_subid = parentSubid;
	}
	if (!any_inflight || inflight_subid != mySubid)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		inflight_subid = parentSubid;
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		end_inflight(false);
}

PG_FUNCTION_INFO_V1(agentretry_flush_stats);

/*
 * flush_stats() returns integer
 *
 * Writes the counts this session holds now, whatever the time since the
 * last write; returns the number of rows written (one per tenant and tool
 * counted), 0 when the transaction may not write, or wrote counts in
 * another subtransaction.  stats() calls it first.
 */
Datum
agentretry_flush_stats(PG_FUNCTION_ARGS)
{
	ArSpi		spi;
	int			n;

	ar_spi_begin(&spi);
	n = stats_flush(GetCurrentTimestamp());
	ar_spi_end(&spi);
	PG_RETURN_INT32(n);
}
