/*-------------------------------------------------------------------------
 *
 * budget.c
 *	  Retry budgets: the per-run limit, token buckets and ratio budgets,
 *	  debited inside the retry decision and recorded in budget_ledger.
 *
 * A retry must be allowed by every budget that applies to its operation:
 * the run's limit (agentretry.run_max_retries retry events per run_id),
 * and the budgets defined for the operation's tenant, its owner (scope
 * user) and its tool.  Checking is done in two phases so that a denial
 * leaves no debit without needing a subtransaction: first every budget
 * locks a stripe that can pay (or says why not), then, only if all can,
 * every locked stripe is debited.  Everything happens in the caller's
 * transaction: a retry rolled back takes its debits and ledger rows with
 * it.
 *
 * Hot budgets.  A budget's tokens and counters are split over `stripes`
 * rows.  A debit takes the first stripe, starting from one chosen by the
 * backend's PID, that can pay and that nobody holds (FOR UPDATE SKIP
 * LOCKED); only when no free stripe can pay does it wait for the held ones
 * (FOR UPDATE, re-checked after the wait), so a denial is never caused by
 * a lock and no stripe is ever overdrawn.  Concurrent transactions of one
 * tenant therefore queue on one row only when more of them retry at once
 * than there are stripes.
 *
 * Token buckets refill lazily: a stripe stores its tokens as of
 * refilled_at and gains refill_per_sec / stripes per second, up to
 * capacity / stripes.  Ratio budgets count first attempts (claims of new
 * keys) and retries in a sliding window made of the current fixed window
 * and the previous one, weighted by how much of it still overlaps: a retry
 * is allowed while retries + 1 <= max(ratio_floor, ratio x first
 * attempts).  The ratio check reads the other stripes without locking
 * them, so concurrent retries may exceed a ratio budget by at most their
 * number; token buckets are exact.
 *
 * Operations pay nothing for budgets while none exists: whether any budget
 * (any ratio budget) exists is cached per backend (cache.c).
 *
 * src/budget.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "agentretry.h"

#define MAX_BUDGETS 4			/* run + tenant + user + tool */

/* a budget that applies to an operation, as read from agentretry.budgets */
typedef struct Budget
{
	const char *scope;
	const char *subject;
	bool		has_bucket;
	double		capacity;
	double		refill;			/* tokens per second, whole budget */
	double		cost;			/* of this retry */
	bool		has_ratio;
	double		ratio;
	int64		window;			/* usec */
	int			floor;
	int			stripes;
	/* phase 1: the stripe locked to pay, and what it holds */
	int			stripe;
	double		available;		/* its tokens refilled to now */
	TimestampTz win_start;
	int64		cur_first;
	int64		cur_retries;
	int64		prev_first;
	int64		prev_retries;
} Budget;

static SPIPlanPtr applicable_plan;
static SPIPlanPtr lock_free_plan;
static SPIPlanPtr lock_wait_plan;
static SPIPlanPtr counters_plan;
static SPIPlanPtr stripe_update_plan;
static SPIPlanPtr ledger_plan;
static SPIPlanPtr run_lock_plan;
static SPIPlanPtr run_update_plan;

/* per-backend caches (cache.c): does any budget exist, any ratio budget? */
static RowsFlag any_budget_flag = {
	"budgets", "SELECT EXISTS (SELECT FROM agentretry.budgets)"
};
static RowsFlag any_ratio_flag = {
	"budgets", "SELECT EXISTS (SELECT FROM agentretry.budgets WHERE ratio IS NOT NULL)"
};

/* the budgets of op's tenant that apply to its owner and tool */
static int
applicable_budgets(const Operation *op, const char *owner, FailureClass fc,
				   bool ratio_only, Budget *out)
{
	static const Oid types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	uint64		n;
	uint64		i;
	int			count = 0;

	values[0] = CStringGetTextDatum(op->tenant);
	if (owner)
		values[1] = CStringGetTextDatum(owner);
	else
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(op->tool);
	n = ar_execute(ar_prepare(&applicable_plan,
							  "SELECT b.scope::text, b.subject, b.capacity, b.refill_per_sec,"
							  " b.cost_transient, b.cost_ambiguous, b.ratio,"
							  " b.ratio_window, b.ratio_floor, b.stripes"
							  " FROM agentretry.budgets b WHERE b.tenant = $1"
							  " AND ((b.scope = 'tenant' AND b.subject = $1)"
							  "   OR (b.scope = 'user' AND b.subject = $2)"
							  "   OR (b.scope = 'tool' AND b.subject = $3))"
							  " ORDER BY b.scope, b.subject",
							  3, types),
				   values, nulls, true, 0);
	for (i = 0; i < n && count < MAX_BUDGETS - 1; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Budget	   *b = &out[count];
		bool		isnull;
		Datum		d;

		memset(b, 0, sizeof(*b));
		b->scope = SPI_getvalue(tup, desc, 1);
		b->subject = SPI_getvalue(tup, desc, 2);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		b->has_bucket = !isnull;
		b->capacity = isnull ? 0 : DatumGetFloat8(d);
		b->refill = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull));
		b->cost = DatumGetFloat8(SPI_getbinval(tup, desc, fc == FC_AMBIGUOUS ? 6 : 5, &isnull));
		d = SPI_getbinval(tup, desc, 7, &isnull);
		b->has_ratio = !isnull;
		b->ratio = isnull ? 0 : DatumGetFloat8(d);
		b->window = interval_usec(DatumGetIntervalP(SPI_getbinval(tup, desc, 8, &isnull)));
		b->floor = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		b->stripes = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		if (ratio_only && !b->has_ratio)
			continue;
		count++;
	}
	return count;
}

/* a stripe's tokens as of now: lazy refill, capped at its share */
#define STRIPE_AVAILABLE \
	"least($5 / $7, s.tokens + $6 / $7" \
	" * extract(epoch FROM $4 - s.refilled_at)::float8)"

/*
 * $1-$3 the budget, $4 now, $5 capacity (0 without a bucket), $6 refill,
 * $7 stripes, $8 cost (0: any stripe will do), $9 the first stripe to try
 */
#define LOCK_STRIPE_SQL \
	"SELECT s.stripe, " STRIPE_AVAILABLE ", s.win_start, s.cur_first," \
	" s.cur_retries, s.prev_first, s.prev_retries" \
	" FROM agentretry.budget_stripes s" \
	" WHERE s.tenant = $1 AND s.scope = $2::agentretry.budget_scope AND s.subject = $3" \
	" AND ($8 = 0 OR " STRIPE_AVAILABLE " >= $8)" \
	" ORDER BY (s.stripe + $9) %% $7 LIMIT 1 FOR UPDATE%s"

/*
 * Lock a stripe of b that can pay `need` tokens (any stripe when need is
 * 0 or b has no bucket): first one nobody holds, else wait for the held
 * ones.  Returns false when none can pay.
 */
static bool
lock_stripe(const Operation *op, Budget *b, double need, TimestampTz now)
{
	static const Oid types[9] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	FLOAT8OID, FLOAT8OID, INT4OID, FLOAT8OID, INT4OID};
	Datum		values[9];
	int			pass;

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(b->scope);
	values[2] = CStringGetTextDatum(b->subject);
	values[3] = TimestampTzGetDatum(now);
	values[4] = Float8GetDatum(b->has_bucket ? b->capacity : 0);
	values[5] = Float8GetDatum(b->refill);
	values[6] = Int32GetDatum(b->stripes);
	values[7] = Float8GetDatum(b->has_bucket ? need : 0);
	values[8] = Int32GetDatum(MyProcPid % b->stripes);

	for (pass = 0; pass < 2; pass++)
	{
		SPIPlanPtr *cache = pass == 0 ? &lock_free_plan : &lock_wait_plan;
		HeapTuple	tup;
		TupleDesc	desc;
		bool		isnull;

		if (*cache == NULL)
			ar_prepare(cache, psprintf(LOCK_STRIPE_SQL, pass == 0 ? " SKIP LOCKED" : ""),
					   9, types);
		if (ar_execute(*cache, values, NULL, false, 0) == 0)
			continue;
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		b->stripe = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		b->available = DatumGetFloat8(SPI_getbinval(tup, desc, 2, &isnull));
		b->win_start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		b->cur_first = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		b->cur_retries = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		b->prev_first = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		b->prev_retries = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
		return true;
	}
	return false;
}

/*
 * Move a stripe's ratio window forward to now: the current window becomes
 * the previous one once it is over, both are forgotten after two.
 * Returns the weight of the previous window in the sliding estimate.
 */
static double
roll_window(TimestampTz *win_start, int64 *cur_first, int64 *cur_retries,
			int64 *prev_first, int64 *prev_retries, int64 window,
			TimestampTz now)
{
	int64		elapsed = now - *win_start;

	if (elapsed >= 2 * window || elapsed < 0)
	{
		*prev_first = *prev_retries = 0;
		*cur_first = *cur_retries = 0;
		*win_start = now;
		elapsed = 0;
	}
	else if (elapsed >= window)
	{
		*prev_first = *cur_first;
		*prev_retries = *cur_retries;
		*cur_first = *cur_retries = 0;
		*win_start += window;
		elapsed -= window;
	}
	return 1.0 - (double) elapsed / (double) window;
}

/*
 * The budget's tokens (all stripes, refilled to now) and its sliding
 * counts of first attempts and retries, read without locks.
 */
static void
budget_totals(const Operation *op, const Budget *b, TimestampTz now,
			  double *tokens, double *firsts, double *retries)
{
	static const Oid types[7] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	FLOAT8OID, FLOAT8OID, INT4OID};
	Datum		values[7];
	uint64		n;
	uint64		i;

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(b->scope);
	values[2] = CStringGetTextDatum(b->subject);
	values[3] = TimestampTzGetDatum(now);
	values[4] = Float8GetDatum(b->has_bucket ? b->capacity : 0);
	values[5] = Float8GetDatum(b->refill);
	values[6] = Int32GetDatum(b->stripes);
	n = ar_execute(ar_prepare(&counters_plan,
							  "SELECT s.stripe, " STRIPE_AVAILABLE ", s.win_start,"
							  " s.cur_first, s.cur_retries, s.prev_first, s.prev_retries"
							  " FROM agentretry.budget_stripes s"
							  " WHERE s.tenant = $1 AND s.scope = $2::agentretry.budget_scope"
							  " AND s.subject = $3",
							  7, types),
				   values, NULL, false, 0);
	*tokens = *firsts = *retries = 0;
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		TimestampTz ws;
		int64		cf,
					cr,
					pf,
					pr;
		double		w;

		ws = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		cf = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		cr = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		pf = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		pr = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
		w = roll_window(&ws, &cf, &cr, &pf, &pr, b->window, now);
		*tokens += DatumGetFloat8(SPI_getbinval(tup, desc, 2, &isnull));
		*firsts += pf * w + cf;
		*retries += pr * w + cr;
	}
}

/* write a locked stripe back: tokens paid, counters moved */
static void
update_stripe(const Operation *op, Budget *b, double paid, int first,
			  int retry, TimestampTz now)
{
	static const Oid types[11] = {TEXTOID, TEXTOID, TEXTOID, INT4OID,
		FLOAT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID,
	INT8OID};
	Datum		values[11];

	roll_window(&b->win_start, &b->cur_first, &b->cur_retries,
				&b->prev_first, &b->prev_retries, b->window, now);
	b->cur_first += first;
	b->cur_retries += retry;
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(b->scope);
	values[2] = CStringGetTextDatum(b->subject);
	values[3] = Int32GetDatum(b->stripe);
	values[4] = Float8GetDatum(b->has_bucket ? b->available - paid : 0);
	values[5] = TimestampTzGetDatum(now);
	values[6] = TimestampTzGetDatum(b->win_start);
	values[7] = Int64GetDatum(b->cur_first);
	values[8] = Int64GetDatum(b->cur_retries);
	values[9] = Int64GetDatum(b->prev_first);
	values[10] = Int64GetDatum(b->prev_retries);
	ar_execute(ar_prepare(&stripe_update_plan,
						  "UPDATE agentretry.budget_stripes SET tokens = $5, refilled_at = $6,"
						  " win_start = $7, cur_first = $8, cur_retries = $9,"
						  " prev_first = $10, prev_retries = $11"
						  " WHERE tenant = $1 AND scope = $2::agentretry.budget_scope"
						  " AND subject = $3 AND stripe = $4",
						  11, types),
			   values, NULL, false, 0);
}

static void
ledger(const Operation *op, const char *scope, const char *subject,
	   double amount, double balance, bool has_balance, const char *reason,
	   FailureClass fc, TimestampTz retry_at, TimestampTz now)
{
	static const Oid types[10] = {TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
	TEXTOID, FLOAT8OID, FLOAT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[10];
	char		nulls[10];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = TimestampTzGetDatum(now);
	values[2] = CStringGetTextDatum(scope);
	values[3] = CStringGetTextDatum(subject);
	values[4] = CStringGetTextDatum(op->key);
	values[5] = Float8GetDatum(amount);
	values[6] = Float8GetDatum(balance);
	nulls[6] = has_balance ? ' ' : 'n';
	values[7] = CStringGetTextDatum(reason);
	values[8] = CStringGetTextDatum(failure_class_labels[fc]);
	param_ts(values, nulls, 9, retry_at);
	ar_execute(ar_prepare(&ledger_plan,
						  "INSERT INTO agentretry.budget_ledger"
						  " (tenant, at, scope, subject, key, amount, balance_after,"
						  "  reason, failure_class, retry_at)"
						  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
						  "  $9::agentretry.failure_class, $10)",
						  10, types),
			   values, nulls, false, 0);
}

/*
 * The run's limit: lock its counter (creating it at 0) and say whether one
 * more retry event fits.  *retries is the count so far.
 */
static bool
run_allows(const Operation *op, TimestampTz now, int *retries)
{
	static const Oid types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3];
	bool		isnull;

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->run_id);
	values[2] = TimestampTzGetDatum(now);
	ar_execute(ar_prepare(&run_lock_plan,
						  "INSERT INTO agentretry.run_retries AS r (tenant, run_id, retries, updated_at)"
						  " VALUES ($1, $2, 0, $3)"
						  " ON CONFLICT (tenant, run_id) DO UPDATE SET updated_at = r.updated_at"
						  " RETURNING r.retries",
						  3, types),
			   values, NULL, false, 0);
	*retries = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	return *retries < ar_run_max_retries;
}

static void
run_count_retry(const Operation *op, TimestampTz now)
{
	static const Oid types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->run_id);
	values[2] = TimestampTzGetDatum(now);
	ar_execute(ar_prepare(&run_update_plan,
						  "UPDATE agentretry.run_retries SET retries = retries + 1, updated_at = $3"
						  " WHERE tenant = $1 AND run_id = $2",
						  3, types),
			   values, NULL, false, 0);
}

/* when a bucket that could not pay `cost` will be able to: its fullest stripe's refill */
static TimestampTz
refill_time(const Budget *b, double cost, double best_stripe, TimestampTz now)
{
	double		per_stripe = b->refill / b->stripes;
	double		seconds;

	if (per_stripe <= 0)
		return TS_NONE;
	seconds = (cost - best_stripe) / per_stripe;
	if (seconds < 0)
		seconds = 0;
	return ts_add_usec(now, (int64) ceil(seconds * USECS_PER_SEC));
}

/*
 * The fullest stripe of b, refilled to now (read without locks); *tokens
 * is what all stripes hold.
 */
static double
fullest_stripe(const Operation *op, const Budget *b, TimestampTz now,
			   double *tokens)
{
	double		firsts,
				retries;
	uint64		i;
	double		best = 0;

	budget_totals(op, b, now, tokens, &firsts, &retries);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		double		t = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 2, &isnull));

		best = Max(best, t);
	}
	return best;
}

/*
 * May op retry after a failure of class fc?  Debits every budget that
 * applies and returns true; or debits nothing, records the denial in the
 * ledger, sets *retry_at to when the denying budget may allow it (TS_NONE:
 * not before an operator acts) and *reason, and returns false.
 */
bool
budget_allow_retry(const Operation *op, FailureClass fc, TimestampTz now,
				   TimestampTz *retry_at, const char **reason)
{
	Budget		budgets[MAX_BUDGETS];
	int			n = 0;
	int			i;
	int			run_retries = 0;
	bool		check_run = op->run_id != NULL;

	*retry_at = TS_NONE;
	*reason = NULL;
	if (check_run && !run_allows(op, now, &run_retries))
	{
		*reason = "denied_run";
		ledger(op, "run", op->run_id, 1, 0, false, *reason, fc, TS_NONE, now);
		return false;
	}
	if (cached_flag(&any_budget_flag))
		n = applicable_budgets(op, op->lease_owner, fc, false, budgets);

	/* phase 1: every budget locks a stripe that can pay, or denies */
	for (i = 0; i < n; i++)
	{
		Budget	   *b = &budgets[i];

		if (b->has_ratio)
		{
			double		tokens,
						firsts,
						retries;

			budget_totals(op, b, now, &tokens, &firsts, &retries);
			if (retries + 1 > Max((double) b->floor, b->ratio * firsts))
			{
				*reason = "denied_ratio";
				*retry_at = ts_add_usec(now, b->window);
				ledger(op, b->scope, b->subject, 1, 0, false, *reason, fc, *retry_at, now);
				return false;
			}
		}
		if (!lock_stripe(op, b, b->cost, now))
		{
			double		tokens;

			*reason = "denied_tokens";
			*retry_at = refill_time(b, b->cost, fullest_stripe(op, b, now, &tokens), now);
			ledger(op, b->scope, b->subject, b->cost, tokens, true, *reason, fc, *retry_at, now);
			return false;
		}
	}

	/* phase 2: all can pay: debit, count, record */
	if (check_run)
	{
		run_count_retry(op, now);
		ledger(op, "run", op->run_id, 1, 0, false, "debit", fc, TS_NONE, now);
	}
	for (i = 0; i < n; i++)
	{
		Budget	   *b = &budgets[i];
		double		paid = b->has_bucket ? b->cost : 0;
		double		tokens,
					firsts,
					retries;

		update_stripe(op, b, paid, 0, 1, now);
		budget_totals(op, b, now, &tokens, &firsts, &retries);
		ledger(op, b->scope, b->subject, paid, tokens, b->has_bucket, "debit", fc,
			   TS_NONE, now);
	}
	return true;
}

/*
 * A first attempt (a claim of a new key) counts towards the ratio budgets
 * that apply to it.  Not recorded in the ledger: first attempts are not
 * debits.
 */
void
budget_count_first_attempt(const Operation *op, const char *owner,
						   TimestampTz now)
{
	Budget		budgets[MAX_BUDGETS];
	int			n;
	int			i;

	if (!cached_flag(&any_ratio_flag))
		return;
	n = applicable_budgets(op, owner, FC_TRANSIENT, true, budgets);
	for (i = 0; i < n; i++)
	{
		/* any stripe will do; none only if the budget was just replaced */
		if (lock_stripe(op, &budgets[i], 0, now))
			update_stripe(op, &budgets[i], 0, 1, 0, now);
	}
}
