/*-------------------------------------------------------------------------
 *
 * budget.c
 *	  Retry budgets: the per-run limit, token buckets and ratio budgets,
 *	  debited inside the retry decision and recorded in budget_ledger.
 *
 * A retry must be allowed by every budget that applies to its operation:
 * the run's limit (its max_retry_events, by default
 * agentretry.run_max_retries, retry events per run),
 * and the budgets defined for the operation's tenant, its owner (scope
 * user) and its tool.  Every budget is debited (several in one statement:
 * debit_batch()); when one denies the retry, the debits made are given
 * back (refund()) to the stripes, which this transaction still holds, so
 * a denial leaves no debit without needing a subtransaction.  Everything
 * happens in the caller's transaction: a retry rolled back takes its
 * debits and ledger rows with it.
 *
 * Hot budgets.  A budget's tokens and counters are split over `stripes`
 * rows.  A debit takes the first stripe, starting from one chosen by the
 * backend's PID, that can pay and that nobody holds (FOR UPDATE SKIP
 * LOCKED), and never waits: no stripe is ever overdrawn, concurrent
 * transactions of one tenant never queue on a budget, and none can
 * deadlock on stripes.  The price: when every stripe that could pay is
 * held by a running transaction, the retry is denied although a held
 * stripe may still have tokens; it is then scheduled a second later
 * (budget_wait), when the holder will most likely have ended, and checked
 * again.  This needs a nearly empty budget and as many concurrent payers
 * as stripes.  When no free stripe can pay alone, the cost is gathered
 * from the free stripes together (gather()): no token is stranded in a
 * stripe whose share is not a multiple of the cost, so a budget of N
 * admits exactly N worth of retries.
 *
 * Token buckets refill lazily: a stripe stores its tokens as of
 * refilled_at and gains refill_per_sec / stripes per second, up to
 * capacity / stripes.  Ratio budgets count first attempts (claims of new
 * keys) and retries in a sliding window made of the current fixed window
 * and the previous one, weighted by how much of it still overlaps: a retry
 * is allowed while retries + 1 <= max(ratio_floor, ratio x first
 * attempts).  The ratio check reads the other stripes without locking
 * them, so concurrent retries may exceed a ratio budget by at most their
 * number, and a first attempt finding every stripe held is not counted
 * (which errs on the strict side); token buckets never overdraw.
 *
 * Operations pay nothing for budgets while none exists: whether any budget
 * (any ratio budget) exists is cached per backend (cache.c), and so are the
 * budgets of the tenants a backend has served (in a hash table, at most
 * BUDGET_CACHE_TENANTS tenants), until budgets change.
 *
 * src/budget.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "budget.h"
#include "cache.h"

#define MAX_BUDGETS 4			/* run + tenant + user + tool */

/* a budget, as defined in agentretry.budgets (cached per backend) */
typedef struct Budget
{
	char	   *scope;
	char	   *subject;
	bool		has_bucket;
	double		capacity;
	double		refill;			/* tokens per second, whole budget */
	double		cost_transient;
	double		cost_ambiguous;
	bool		has_ratio;
	double		ratio;
	int64		window;			/* usec */
	int			floor;
	int			stripes;
} Budget;

#define MAX_STRIPES 64			/* budget_stripes.stripe: 0 .. stripes - 1 */

/*
 * Token amounts are floats: capacity / stripes and what is left of it are
 * not exact in binary, so the stripes of a budget of N may hold N minus a
 * few units in the last place.  An amount within this much of the cost
 * pays it (and no stripe is left below zero).
 */
#define TOKENS_SLACK "1e-9"
#define TOKENS_SLACK_VALUE 1e-9
#define ENOUGH(have, cost) ((have) >= (cost) - TOKENS_SLACK_VALUE * Max(1.0, (cost)))

/*
 * What debiting one budget did: the stripe it counted the retry on (and
 * paid from), the stripes it gathered tokens from when no single stripe
 * could pay (see gather()), and the totals.
 */
typedef struct Debit
{
	const Budget *b;
	double		cost;
	int			stripe;
	int			ngathered;		/* 0: cost paid from stripe alone */
	int			gathered_stripe[MAX_STRIPES];
	double		gathered[MAX_STRIPES];
	double		balance;		/* all stripes, refilled, after the debit */
	double		firsts;			/* sliding counts, all stripes, after it */
	double		retries;
} Debit;

/*
 * The budgets of one tenant, cached until agentretry.budgets changes, in a
 * hash table by tenant: a backend behind a pooler may serve many tenants,
 * so lookups are constant time and the cache is bounded (emptied when it
 * holds BUDGET_CACHE_TENANTS tenants and needs room for one more).
 */
#define BUDGET_CACHE_TENANTS 1024

typedef struct TenantBudgets
{
	char		tenant[AR_MAX_NAME_LEN + 1];	/* hash key */
	int			n;
	Budget	   *budgets;
} TenantBudgets;

static MemoryContext budget_cache_cxt = NULL;
static HTAB *budget_cache = NULL;
static uint64 budget_cache_generation = 0;

static void
budget_cache_reset(void)
{
	MemoryContextReset(budget_cache_cxt);
	budget_cache = NULL;
}

static HTAB *
budget_cache_table(void)
{
	if (budget_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = AR_MAX_NAME_LEN + 1;
		ctl.entrysize = sizeof(TenantBudgets);
		ctl.hcxt = budget_cache_cxt;
		budget_cache = hash_create("agentretry budgets by tenant", 64, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	return budget_cache;
}

/* per-backend caches (cache.c): does any budget exist, any ratio budget? */
static RowsFlag any_budget_flag =
ROWS_FLAG("budgets", "SELECT EXISTS (SELECT FROM agentretry.budgets)");
static RowsFlag any_ratio_flag =
ROWS_FLAG("budgets", "SELECT EXISTS (SELECT FROM agentretry.budgets WHERE ratio IS NOT NULL)");

static ArPlan tenant_budgets_plan = {
	"SELECT b.scope::text, b.subject, b.capacity, b.refill_per_sec,"
	" b.cost_transient, b.cost_ambiguous, b.ratio,"
	" b.ratio_window, b.ratio_floor, b.stripes"
	" FROM agentretry.budgets b WHERE b.tenant = $1"
	" ORDER BY b.scope, b.subject",
	1, {TEXTOID}
};

/*
 * Read the tenant's budgets, into the cache when the snapshot is fresh
 * (READ COMMITTED), else into memory of this call only (see cached_flag).
 */
static TenantBudgets *
load_tenant_budgets(const char *tenant)
{
	bool		keep = !IsolationUsesXactSnapshot();
	Datum		values[1] = {CStringGetTextDatum(tenant)};
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext old;
	TenantBudgets *tb;
	uint64		n;
	uint64		i;
	Budget	   *budgets;

	n = ar_run(&tenant_budgets_plan, values, NULL, false);
	/* room first: emptying the cache frees what it holds */
	if (keep && hash_get_num_entries(budget_cache_table()) >= BUDGET_CACHE_TENANTS)
		budget_cache_reset();
	old = MemoryContextSwitchTo(keep ? budget_cache_cxt : caller);
	budgets = palloc0(sizeof(Budget) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Budget	   *b = &budgets[i];
		bool		isnull;
		Datum		d;

		b->scope = SPI_getvalue(tup, desc, 1);
		b->subject = SPI_getvalue(tup, desc, 2);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		b->has_bucket = !isnull;
		b->capacity = isnull ? 0 : DatumGetFloat8(d);
		b->refill = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull));
		b->cost_transient = DatumGetFloat8(SPI_getbinval(tup, desc, 5, &isnull));
		b->cost_ambiguous = DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull));
		d = SPI_getbinval(tup, desc, 7, &isnull);
		b->has_ratio = !isnull;
		b->ratio = isnull ? 0 : DatumGetFloat8(d);
		b->window = interval_usec(DatumGetIntervalP(SPI_getbinval(tup, desc, 8, &isnull)));
		b->floor = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		b->stripes = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
	}
	if (keep)
		tb = hash_search(budget_cache_table(), tenant, HASH_ENTER, NULL);
	else
		tb = palloc0(sizeof(TenantBudgets));
	tb->n = (int) n;
	tb->budgets = budgets;
	MemoryContextSwitchTo(old);
	return tb;
}

/*
 * The budgets that apply to op (tenant scope, user scope for owner, tool
 * scope for its tool), into out[]; only those with a ratio when
 * ratio_only.  Returns how many.
 */
static int
applicable_budgets(const Operation *op, const char *owner, bool ratio_only,
				   const Budget **out)
{
	TenantBudgets *tb;
	int			count = 0;
	int			i;

	if (!cached_flag(&any_budget_flag))
		return 0;
	if (ratio_only && !cached_flag(&any_ratio_flag))
		return 0;
	if (budget_cache_cxt == NULL)
		budget_cache_cxt = AllocSetContextCreate(TopMemoryContext,
												 "agentretry budgets",
												 ALLOCSET_SMALL_SIZES);
	if (budget_cache_generation != any_budget_flag.generation)
	{
		budget_cache_reset();
		budget_cache_generation = any_budget_flag.generation;
	}
	tb = IsolationUsesXactSnapshot() ? NULL :
		hash_search(budget_cache_table(), op->tenant, HASH_FIND, NULL);
	if (tb == NULL)
		tb = load_tenant_budgets(op->tenant);

	for (i = 0; i < tb->n && count < MAX_BUDGETS; i++)
	{
		const Budget *b = &tb->budgets[i];
		const char *want = strcmp(b->scope, "tenant") == 0 ? op->tenant :
			strcmp(b->scope, "user") == 0 ? owner : op->tool;

		if (want == NULL || strcmp(b->subject, want) != 0)
			continue;
		if (ratio_only && !b->has_ratio)
			continue;
		out[count++] = b;
	}
	return count;
}

/*
 * Seconds of an interval as float8.  date_part(), not extract(): extract
 * computes in numeric since PostgreSQL 14, several times slower, and these
 * expressions run for every stripe of every budget of every retry.
 */
#define SECONDS(iv) "date_part('epoch', " iv ")"

/*
 * The expressions on a stripe s, written once for the statements on one
 * budget (now $4, capacity $5, refill $6, stripes $7, window $10) and for
 * the one on several (debit_batch_plan: columns of p).
 */

/* a stripe's tokens as of now: lazy refill, capped at its share */
#define AVAILABLE_AT(s, now, cap, refill, stripes) \
	"least(" cap " / " stripes ", " s ".tokens + " refill " / " stripes \
	" * greatest(" SECONDS(now " - " s ".refilled_at") ", 0))"
#define STRIPE_AVAILABLE(s) AVAILABLE_AT(s, "$4", "$5", "$6", "$7")

/* how far into its ratio window a stripe is at now */
#define INTO_WINDOW_AT(s, now) "(" now " - " s ".win_start)"
#define INTO_WINDOW(s) INTO_WINDOW_AT(s, "$4")

/* the sliding counts of a stripe as of now: the previous window weighted */
#define SLIDING_AT(s, cur, prev, now, win) \
	"(CASE WHEN " INTO_WINDOW_AT(s, now) " >= 2 * " win " THEN 0" \
	" WHEN " INTO_WINDOW_AT(s, now) " >= " win " THEN " s "." cur \
	"  * (1 - " SECONDS(INTO_WINDOW_AT(s, now) " - " win) " / " SECONDS(win) ")" \
	" ELSE " s "." cur " + " s "." prev \
	"  * (1 - " SECONDS(INTO_WINDOW_AT(s, now)) " / " SECONDS(win) ") END)"
#define SLIDING(s, cur, prev) SLIDING_AT(s, cur, prev, "$4", "$10")

/*
 * Pay $8 tokens (0: none) from the first stripe of the budget ($1-$3) that
 * can, counting $11 first attempts and $12 retries in its window (moved
 * forward to now first); return the stripe, its tokens and its sliding
 * counts after it.  $5 capacity (0 without a bucket), $6 refill, $7
 * stripes, $9 the stripe to start from, $10 the ratio window.  (A clock
 * read before this call may be older than a stripe's refilled_at: time
 * never runs backwards for a stripe.)  The other stripes' figures come from the same
 * statement's snapshot (read, not locked), so the totals are the whole
 * budget's.
 */
/* the stripe to debit: the first that can pay $8 and that nobody holds */
#define DEBIT_WHERE \
	" WHERE (s.tenant, s.scope, s.subject, s.stripe) = (" \
	"  SELECT x.tenant, x.scope, x.subject, x.stripe FROM agentretry.budget_stripes x" \
	"  WHERE x.tenant = $1 AND x.scope = $2::agentretry.budget_scope AND x.subject = $3" \
	"  AND ($8 = 0 OR " STRIPE_AVAILABLE("x") " >= $8 - " TOKENS_SLACK " * greatest(1, $8))" \
	"  ORDER BY (x.stripe + $9) % $7 LIMIT 1 FOR UPDATE SKIP LOCKED)"

/* the stripe's tokens paid, refilled to now */
#define DEBIT_TOKENS \
	" tokens = greatest(" STRIPE_AVAILABLE("s") " - $8, 0)," \
	" refilled_at = greatest(s.refilled_at, $4)"

/*
 * Its window moved forward to now, and the counts added to it; a column
 * is left as it is when keep is true (a budget without a ratio, in the
 * statement on several).
 */
#define WINDOW_CASE(keep, col) "CASE WHEN " keep " THEN s." col
#define DEBIT_COUNTS_AT(now, win, firsts, retries, keep) \
	" win_start = " WINDOW_CASE(keep, "win_start") \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= 2 * " win " THEN " now \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= " win " THEN s.win_start + " win \
	"  ELSE s.win_start END," \
	" prev_first = " WINDOW_CASE(keep, "prev_first") \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= 2 * " win " THEN 0" \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= " win " THEN s.cur_first ELSE s.prev_first END," \
	" prev_retries = " WINDOW_CASE(keep, "prev_retries") \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= 2 * " win " THEN 0" \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= " win " THEN s.cur_retries ELSE s.prev_retries END," \
	" cur_first = " WINDOW_CASE(keep, "cur_first") \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= " win " THEN " firsts \
	"  ELSE s.cur_first + " firsts " END," \
	" cur_retries = " WINDOW_CASE(keep, "cur_retries") \
	"  WHEN " INTO_WINDOW_AT("s", now) " >= " win " THEN " retries \
	"  ELSE s.cur_retries + " retries " END"
#define DEBIT_COUNTS DEBIT_COUNTS_AT("$4", "$10", "$11", "$12", "false")

/* the stripe's sliding counts after the debit */
#define DEBIT_SLIDING_AT(now, win) \
	"  (s.cur_first + s.prev_first" \
	"   * (1 - " SECONDS(INTO_WINDOW_AT("s", now)) " / " SECONDS(win) "))::float8," \
	"  (s.cur_retries + s.prev_retries" \
	"   * (1 - " SECONDS(INTO_WINDOW_AT("s", now)) " / " SECONDS(win) "))::float8,"
#define DEBIT_SLIDING DEBIT_SLIDING_AT("$4", "$10")

#define OTHER_STRIPES \
	"   FROM agentretry.budget_stripes y" \
	"   WHERE y.tenant = $1 AND y.scope = $2::agentretry.budget_scope" \
	"   AND y.subject = $3 AND y.stripe <> s.stripe)"

/*
 * Pay $8 tokens (0: none) from the first stripe of the budget ($1-$3) that
 * can, counting $11 first attempts and $12 retries in its window (moved
 * forward to now first); return the stripe, its tokens and its sliding
 * counts after it.  $5 capacity (0 without a bucket), $6 refill, $7
 * stripes, $9 the stripe to start from, $10 the ratio window.  (A clock
 * read before this call may be older than a stripe's refilled_at: time
 * never runs backwards for a stripe.)  The other stripes' figures come from the same
 * statement's snapshot (read, not locked), so the totals are the whole
 * budget's.
 *
 * Three texts: a budget with a bucket and a ratio, one with a bucket only
 * (no window is kept: its counts are never read), one with a ratio only
 * (no tokens).  All take the same twelve parameters.
 */
#define DEBIT_SQL \
	"UPDATE agentretry.budget_stripes s SET" DEBIT_TOKENS "," DEBIT_COUNTS \
	DEBIT_WHERE \
	" RETURNING s.stripe, s.tokens," DEBIT_SLIDING \
	"  (SELECT ARRAY[coalesce(sum(" STRIPE_AVAILABLE("y") "), 0)," \
	"    coalesce(sum(" SLIDING("y", "cur_first", "prev_first") "), 0)::float8," \
	"    coalesce(sum(" SLIDING("y", "cur_retries", "prev_retries") "), 0)::float8]" \
	OTHER_STRIPES

#define DEBIT_BUCKET_SQL \
	"UPDATE agentretry.budget_stripes s SET" DEBIT_TOKENS \
	DEBIT_WHERE \
	" RETURNING s.stripe, s.tokens, 0::float8, 0::float8," \
	"  (SELECT ARRAY[coalesce(sum(" STRIPE_AVAILABLE("y") "), 0), 0, 0]" \
	OTHER_STRIPES

#define DEBIT_RATIO_SQL \
	"UPDATE agentretry.budget_stripes s SET" DEBIT_COUNTS \
	DEBIT_WHERE \
	" RETURNING s.stripe, s.tokens," DEBIT_SLIDING \
	"  (SELECT ARRAY[0," \
	"    coalesce(sum(" SLIDING("y", "cur_first", "prev_first") "), 0)::float8," \
	"    coalesce(sum(" SLIDING("y", "cur_retries", "prev_retries") "), 0)::float8]" \
	OTHER_STRIPES

#define DEBIT_ARGTYPES \
	{TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, INT4OID, \
	FLOAT8OID, INT4OID, INTERVALOID, INT4OID, INT4OID}

static ArPlan debit_bucket_plan = {DEBIT_BUCKET_SQL, 12, DEBIT_ARGTYPES};

/* a first attempt counted: nothing paid, nothing read back */
static ArPlan count_first_plan = {
	"UPDATE agentretry.budget_stripes s SET" DEBIT_COUNTS DEBIT_WHERE,
	12, DEBIT_ARGTYPES
};
static ArPlan debit_ratio_plan = {DEBIT_RATIO_SQL, 12, DEBIT_ARGTYPES};

/*
 * The retry's debit of several budgets in one statement (the common case
 * of a retry that several budgets apply to): for each budget i of the
 * arrays, the first stripe that can pay, locked as debit_plan locks it,
 * paid and counted.  Returns a row per budget paid, numbered i; a budget
 * for which no stripe could pay alone has no row (debit() then gathers, or
 * denies).  $1 tenant, $2 now; arrays: $3 scope, $4 subject, $5 capacity
 * (0 without a bucket), $6 refill, $7 stripes, $8 cost, $9 the stripe to
 * start from, $10 window, $11 has a ratio.
 */
#define P_AVAILABLE(s) AVAILABLE_AT(s, "$2", "p.cap", "p.refill", "p.stripes")
#define P_SLIDING(s, cur, prev) SLIDING_AT(s, cur, prev, "$2", "p.win")

static ArPlan debit_batch_plan = {
	"WITH p AS MATERIALIZED ("
	" SELECT b.*, x.stripe FROM unnest($3::text[], $4::text[], $5::float8[], $6::float8[],"
	"   $7::int4[], $8::float8[], $9::int4[], $10::interval[], $11::bool[])"
	"   WITH ORDINALITY AS b(scope, subject, cap, refill, stripes, cost, start, win, ratio, i)"
	" CROSS JOIN LATERAL ("
	"  SELECT x.stripe FROM agentretry.budget_stripes x"
	"  WHERE x.tenant = $1 AND x.scope = b.scope::agentretry.budget_scope AND x.subject = b.subject"
	"  AND (b.cost = 0 OR " AVAILABLE_AT("x", "$2", "b.cap", "b.refill", "b.stripes")
	"   >= b.cost - " TOKENS_SLACK " * greatest(1, b.cost))"
	"  ORDER BY (x.stripe + b.start) % b.stripes LIMIT 1 FOR UPDATE SKIP LOCKED) x)"
	" UPDATE agentretry.budget_stripes s SET"
	" tokens = CASE WHEN p.cap > 0 THEN greatest(" P_AVAILABLE("s") " - p.cost, 0) ELSE s.tokens END,"
	" refilled_at = CASE WHEN p.cap > 0 THEN greatest(s.refilled_at, $2) ELSE s.refilled_at END,"
	DEBIT_COUNTS_AT("$2", "p.win", "0", "1", "NOT p.ratio")
	" FROM p"
	" WHERE s.tenant = $1 AND s.scope = p.scope::agentretry.budget_scope"
	" AND s.subject = p.subject AND s.stripe = p.stripe"
	" RETURNING p.i::int4, s.stripe, s.tokens,"
	DEBIT_SLIDING_AT("$2", "p.win")
	"  (SELECT ARRAY[coalesce(sum(CASE WHEN p.cap > 0 THEN " P_AVAILABLE("y") " END), 0),"
	"    coalesce(sum(CASE WHEN p.ratio THEN " P_SLIDING("y", "cur_first", "prev_first") " END), 0)::float8,"
	"    coalesce(sum(CASE WHEN p.ratio THEN " P_SLIDING("y", "cur_retries", "prev_retries") " END), 0)::float8]"
	"   FROM agentretry.budget_stripes y"
	"   WHERE y.tenant = $1 AND y.scope = p.scope::agentretry.budget_scope"
	"   AND y.subject = p.subject AND y.stripe <> s.stripe)",
	11, {TEXTOID, TIMESTAMPTZOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID,
	FLOAT8ARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID, INT4ARRAYOID, INTERVALARRAYOID,
	BOOLARRAYOID}
};

static ArPlan debit_plan = {DEBIT_SQL, 12, DEBIT_ARGTYPES};

/* the statement that debits b */
static ArPlan *
debit_plan_of(const Budget *b)
{
	if (!b->has_ratio)
		return &debit_bucket_plan;
	if (!b->has_bucket)
		return &debit_ratio_plan;
	return &debit_plan;
}

/*
 * The next stripe of the budget ($1-$3) that has tokens, that nobody else
 * holds and that is not among $8 (those taken already), in the order
 * debit() tries them ($9 the stripe to start from), locked, with its
 * tokens as of now ($4 now, $5 capacity, $6 refill, $7 stripes).
 */
static ArPlan gather_next_plan = {
	"SELECT x.stripe, " STRIPE_AVAILABLE("x") "::float8"
	" FROM agentretry.budget_stripes x"
	" WHERE x.tenant = $1 AND x.scope = $2::agentretry.budget_scope AND x.subject = $3"
	" AND " STRIPE_AVAILABLE("x") " > 0 AND x.stripe <> ALL ($8)"
	" ORDER BY (x.stripe + $9) % $7 LIMIT 1 FOR UPDATE SKIP LOCKED",
	9, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, INT4OID,
	INT4ARRAYOID, INT4OID}
};

/* take $8 tokens from stripe $9 (locked by this transaction), refilled to now */
static ArPlan gather_take_plan = {
	"UPDATE agentretry.budget_stripes s SET"
	" tokens = greatest(" STRIPE_AVAILABLE("s") " - $8, 0),"
	" refilled_at = greatest(s.refilled_at, $4)"
	" WHERE s.tenant = $1 AND s.scope = $2::agentretry.budget_scope"
	" AND s.subject = $3 AND s.stripe = $9",
	9, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, INT4OID,
	FLOAT8OID, INT4OID}
};

/*
 * What a debit statement returned for d's budget, from column col on: the
 * stripe, its tokens and sliding counts, and the other stripes' (added).
 */
static void
debit_from_row(Debit *d, HeapTuple tup, TupleDesc desc, int col)
{
	Datum	   *elems;
	bool	   *nulls;
	bool		isnull;
	int			n;

	d->stripe = DatumGetInt32(SPI_getbinval(tup, desc, col, &isnull));
	d->balance = DatumGetFloat8(SPI_getbinval(tup, desc, col + 1, &isnull));
	d->firsts = DatumGetFloat8(SPI_getbinval(tup, desc, col + 2, &isnull));
	d->retries = DatumGetFloat8(SPI_getbinval(tup, desc, col + 3, &isnull));
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, col + 4, &isnull)),
					  FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &n);
	if (n != 3)
		elog(ERROR, "agentretry: unexpected budget totals");
	d->balance += DatumGetFloat8(elems[0]);
	d->firsts += DatumGetFloat8(elems[1]);
	d->retries += DatumGetFloat8(elems[2]);
}

/*
 * Pay cost from several stripes nobody else holds (gather_next_plan), when no
 * single one can: a stripe's share of the capacity need not be a multiple
 * of the cost (capacity 50 over 4 stripes is 12.5 each), and what is left
 * in each must still be spent, so that a budget of N admits exactly N
 * worth of retries.  Stripes are locked one at a time, in the order
 * debit() tries them, only until they hold the cost, so that concurrent
 * payers keep the others.  They stay locked by this transaction, and what
 * each gave is kept in d, to be given back by refund().  Returns false,
 * changing and holding nothing, when the free stripes have less than cost
 * together.
 */
/*
 * The parameters $1-$7 that every statement on a budget's stripes takes
 * (STRIPE_AVAILABLE): the budget, now, capacity (0 without a bucket),
 * refill and stripes.
 */
static void
stripe_params(Datum *values, const Operation *op, const Budget *b,
			  TimestampTz now)
{
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(b->scope);
	values[2] = CStringGetTextDatum(b->subject);
	values[3] = TimestampTzGetDatum(now);
	values[4] = Float8GetDatum(b->has_bucket ? b->capacity : 0);
	values[5] = Float8GetDatum(b->refill);
	values[6] = Int32GetDatum(b->stripes);
}

static bool
gather(const Operation *op, const Budget *b, double cost, TimestampTz now,
	   Debit *d)
{
	Datum		values[9];
	Datum		taken[MAX_STRIPES];
	volatile double have = 0;
	volatile int n = 0;
	int			i;
	bool		isnull;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	stripe_params(values, op, b, now);
	values[8] = Int32GetDatum(MyProcPid % b->stripes);

	/*
	 * Lock stripes one at a time, only as many as the cost needs, in a
	 * subtransaction: if together they cannot pay, rolling it back lets go
	 * of them at once, so that a denied retry does not keep stripes from
	 * others (first attempts counting on them, payers) until it commits.
	 * An error inside is thrown after the subtransaction is rolled back, as
	 * PL/pgSQL does, so that a caller's exception block finds the state it
	 * expects.
	 */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		while (!ENOUGH(have, cost) && n < MAX_STRIPES)
		{
			HeapTuple	tup;

			values[7] = PointerGetDatum(construct_array(taken, n, INT4OID, sizeof(int32),
														true, TYPALIGN_INT));
			if (ar_run(&gather_next_plan, values, NULL, false) == 0)
				break;
			tup = SPI_tuptable->vals[0];
			d->gathered_stripe[n] = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			d->gathered[n] = DatumGetFloat8(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
			taken[n] = Int32GetDatum(d->gathered_stripe[n]);
			have += d->gathered[n];
			n++;
		}
		if (ENOUGH(have, cost))
		{
			/* the last stripe gives only what is still owed */
			if (have > cost)
				d->gathered[n - 1] -= have - cost;
			for (i = 0; i < n; i++)
			{
				values[7] = Float8GetDatum(d->gathered[i]);
				values[8] = Int32GetDatum(d->gathered_stripe[i]);
				ar_run(&gather_take_plan, values, NULL, false);
			}
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ReThrowError(edata);
	}
	PG_END_TRY();

	if (!ENOUGH(have, cost))
	{
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		return false;
	}
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	d->ngathered = n;
	return true;
}

static double budget_tokens(const Operation *op, const Budget *b,
							TimestampTz now);

/*
 * Debit one budget: pay cost (0 for a budget without bucket, or to only
 * count) and count first attempts and retries, in one statement, from a
 * stripe nobody else holds; or, when no single stripe can pay, gather the
 * cost from several and count on one.  Returns false, changing nothing,
 * when none can.
 *
 * It never waits for a stripe: a transaction that already holds one
 * stripe (an earlier retry it paid) and waited for another could deadlock
 * with one doing the opposite.  So when every stripe that could pay is
 * held by a transaction still running, the retry is denied, and
 * budget_allow_retry schedules it a second later; that happens only when
 * the budget is nearly empty and as many transactions as it has stripes
 * are paying at once.
 */
static bool
debit(const Operation *op, const Budget *b, double cost, int firsts,
	  int retries, TimestampTz now, Debit *d)
{
	Datum		values[12];

	stripe_params(values, op, b, now);
	values[7] = Float8GetDatum(b->has_bucket ? cost : 0);
	values[8] = Int32GetDatum(MyProcPid % b->stripes);
	values[9] = IntervalPGetDatum(usec_interval(b->window));
	values[10] = Int32GetDatum(firsts);
	values[11] = Int32GetDatum(retries);

	d->ngathered = 0;
	if (ar_run(debit_plan_of(b), values, NULL, false) == 0)
	{
		/*
		 * No stripe alone could pay: the free ones together may, if all of
		 * them together hold the cost (read without locks first, so that
		 * an empty budget denies at the price of one read, not of a
		 * subtransaction locking every stripe).  A denial leaves that
		 * total in d->balance, for the ledger and the time to wait.
		 */
		if (!b->has_bucket || cost <= 0)
			return false;
		d->balance = budget_tokens(op, b, now);
		if (cost > b->capacity || !ENOUGH(d->balance, cost) ||
			!gather(op, b, cost, now, d))
			return false;
		/* count the retry on a stripe, paying nothing more */
		values[7] = Float8GetDatum(0);
		if (ar_run(debit_plan_of(b), values, NULL, false) == 0)
			elog(ERROR, "agentretry: a budget stripe vanished while locked");
	}
	d->b = b;
	d->cost = b->has_bucket ? cost : 0;
	debit_from_row(d, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return true;
}

/*
 * Debit budgets[0..n-1] for a retry (costs cost[i]) in one statement
 * (debit_batch_plan); paid[i] says which were, their Debit filled in as
 * debit() fills it.  Those not paid are left to debit().
 */
static void
debit_batch(const Operation *op, const Budget **budgets, const double *cost,
			int n, TimestampTz now, Debit *debits, bool *paid)
{
	Datum		scope[MAX_BUDGETS],
				subject[MAX_BUDGETS],
				cap[MAX_BUDGETS],
				refill[MAX_BUDGETS],
				stripes[MAX_BUDGETS],
				costs[MAX_BUDGETS],
				start[MAX_BUDGETS],
				win[MAX_BUDGETS],
				ratio[MAX_BUDGETS];
	Datum		values[11];
	uint64		got;
	uint64		r;
	int			i;

	for (i = 0; i < n; i++)
	{
		const Budget *b = budgets[i];

		scope[i] = CStringGetTextDatum(b->scope);
		subject[i] = CStringGetTextDatum(b->subject);
		cap[i] = Float8GetDatum(b->has_bucket ? b->capacity : 0);
		refill[i] = Float8GetDatum(b->refill);
		stripes[i] = Int32GetDatum(b->stripes);
		costs[i] = Float8GetDatum(b->has_bucket ? cost[i] : 0);
		start[i] = Int32GetDatum(MyProcPid % b->stripes);
		win[i] = IntervalPGetDatum(usec_interval(b->window));
		ratio[i] = BoolGetDatum(b->has_ratio);
		paid[i] = false;
	}
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = TimestampTzGetDatum(now);
	values[2] = PointerGetDatum(construct_array(scope, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(subject, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(cap, n, FLOAT8OID, sizeof(float8),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[5] = PointerGetDatum(construct_array(refill, n, FLOAT8OID, sizeof(float8),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[6] = PointerGetDatum(construct_array(stripes, n, INT4OID, sizeof(int32),
												true, TYPALIGN_INT));
	values[7] = PointerGetDatum(construct_array(costs, n, FLOAT8OID, sizeof(float8),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[8] = PointerGetDatum(construct_array(start, n, INT4OID, sizeof(int32),
												true, TYPALIGN_INT));
	values[9] = PointerGetDatum(construct_array(win, n, INTERVALOID, sizeof(Interval),
												false, TYPALIGN_DOUBLE));
	values[10] = PointerGetDatum(construct_array(ratio, n, BOOLOID, sizeof(bool),
												 true, TYPALIGN_CHAR));
	got = ar_run(&debit_batch_plan, values, NULL, false);
	for (r = 0; r < got; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Debit	   *d;

		i = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)) - 1;
		if (i < 0 || i >= n || paid[i])
			elog(ERROR, "agentretry: unexpected budget in a debit");
		d = &debits[i];
		d->b = budgets[i];
		d->cost = budgets[i]->has_bucket ? cost[i] : 0;
		d->ngathered = 0;
		debit_from_row(d, tup, desc, 2);
		paid[i] = true;
	}
}

static ArPlan refund_plan = {
	"UPDATE agentretry.budget_stripes SET tokens = tokens + $5,"
	" cur_retries = cur_retries - $6"
	" WHERE tenant = $1 AND scope = $2::agentretry.budget_scope"
	" AND subject = $3 AND stripe = $4",
	6, {TEXTOID, TEXTOID, TEXTOID, INT4OID, FLOAT8OID, INT4OID}
};

/*
 * Give a debit back (its stripes are still locked by this transaction):
 * the tokens to the stripes that gave them, the retry's count to the
 * stripe that counted it.
 */
static void
refund(const Operation *op, const Debit *d)
{
	Datum		values[6];
	int			i;

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(d->b->scope);
	values[2] = CStringGetTextDatum(d->b->subject);
	values[3] = Int32GetDatum(d->stripe);
	values[4] = Float8GetDatum(d->ngathered > 0 ? 0 : d->cost);
	values[5] = Int32GetDatum(d->b->has_ratio ? 1 : 0);	/* counted only for a ratio */
	ar_run(&refund_plan, values, NULL, false);
	for (i = 0; i < d->ngathered; i++)
	{
		values[3] = Int32GetDatum(d->gathered_stripe[i]);
		values[4] = Float8GetDatum(d->gathered[i]);
		values[5] = Int32GetDatum(0);
		ar_run(&refund_plan, values, NULL, false);
	}
}

/*
 * All the stripes' tokens of b, refilled to now, read without locks:
 * whether a gather can pay, when a denied retry may be paid, and what is
 * left.
 */
static ArPlan tokens_plan = {
	"SELECT coalesce(sum(" STRIPE_AVAILABLE("s") "), 0)"
	" FROM agentretry.budget_stripes s"
	" WHERE s.tenant = $1 AND s.scope = $2::agentretry.budget_scope"
	" AND s.subject = $3",
	7, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, INT4OID}
};

static double
budget_tokens(const Operation *op, const Budget *b, TimestampTz now)
{
	Datum		values[7];
	bool		isnull;

	stripe_params(values, op, b, now);
	ar_run(&tokens_plan, values, NULL, false);
	return DatumGetFloat8(first_value(&isnull));
}

/* ledger rows of one decision, written by one INSERT (ledger_flush) */
#define LEDGER_COLS 10
#define MAX_LEDGER_ROWS (MAX_BUDGETS + 1)

typedef struct LedgerRows
{
	int			n;
	Datum		values[MAX_LEDGER_ROWS * LEDGER_COLS];
	char		nulls[MAX_LEDGER_ROWS * LEDGER_COLS];
} LedgerRows;

/* one INSERT per row count, its text built on first use (ledger_flush) */
static ArPlan ledger_plans[MAX_LEDGER_ROWS + 1];

static void
ledger(LedgerRows *rows, const Operation *op, const char *scope,
	   const char *subject, double amount, double balance, bool has_balance,
	   const char *reason, FailureClass fc, TimestampTz retry_at,
	   TimestampTz now)
{
	Datum	   *values = &rows->values[rows->n * LEDGER_COLS];
	char	   *nulls = &rows->nulls[rows->n * LEDGER_COLS];

	Assert(rows->n < MAX_LEDGER_ROWS);
	rows->n++;
	memset(nulls, ' ', LEDGER_COLS);
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
}

/* one INSERT of rows->n rows (a plan per row count, made once) */
static void
ledger_flush(LedgerRows *rows)
{
	static const Oid coltypes[LEDGER_COLS] = {TEXTOID, TIMESTAMPTZOID, TEXTOID,
	TEXTOID, TEXTOID, FLOAT8OID, FLOAT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	int			n = rows->n;

	if (n == 0)
		return;
	StaticAssertStmt(MAX_LEDGER_ROWS * LEDGER_COLS <= AR_PLAN_MAX_ARGS,
					 "ledger rows need more plan arguments");
	if (ledger_plans[n].sql == NULL)
	{
		ArPlan	   *p = &ledger_plans[n];
		StringInfoData sql;
		int			r;

		initStringInfo(&sql);
		appendStringInfoString(&sql,
							   "INSERT INTO agentretry.budget_ledger"
							   " (tenant, at, scope, subject, key, amount, balance_after,"
							   "  reason, failure_class, retry_at) VALUES ");
		for (r = 0; r < n; r++)
		{
			int			col = r * LEDGER_COLS;

			appendStringInfo(&sql, "%s($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d,"
							 " $%d::agentretry.failure_class, $%d)",
							 r ? ", " : "", col + 1, col + 2, col + 3, col + 4,
							 col + 5, col + 6, col + 7, col + 8, col + 9, col + 10);
			memcpy(&p->argtypes[col], coltypes, sizeof(coltypes));
		}
		p->nargs = n * LEDGER_COLS;
		p->sql = MemoryContextStrdup(TopMemoryContext, sql.data);
	}
	ar_run(&ledger_plans[n], rows->values, rows->nulls, false);
	rows->n = 0;
}

/*
 * A run's limit is its max_retry_events, else the GUC ($4).  Should the
 * run not exist (claims start it, and it is purged only with its last
 * operation), the retry starts it, counted against the GUC.
 */
static ArPlan run_debit_plan = {
	"INSERT INTO agentretry.runs AS r"
	" (tenant, run_id, state, retry_events, started_at, updated_at)"
	" VALUES ($1, $2, 'running', CASE WHEN $4 > 0 THEN 1 ELSE 0 END, $3, $3)"
	" ON CONFLICT (tenant, run_id) DO UPDATE"
	" SET retry_events = r.retry_events + 1, updated_at = $3"
	" WHERE r.retry_events < coalesce(r.max_retry_events, $4)"
	" RETURNING r.retry_events",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, INT4OID}
};

/*
 * The run's limit: count one more retry event of the run if it fits, in
 * one statement (the run's row stays locked FOR NO KEY UPDATE).  Returns
 * false when the run has used them all.
 */
static bool
run_debit(const Operation *op, TimestampTz now)
{
	Datum		values[4];
	bool		isnull;

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->run_id);
	values[2] = TimestampTzGetDatum(now);
	values[3] = Int32GetDatum(ar_run_max_retries);
	if (ar_run(&run_debit_plan, values, NULL, false) == 0)
		return false;
	/* a run started here with a limit of 0 counted nothing: denied */
	return DatumGetInt32(first_value(&isnull)) > 0;
}

static ArPlan run_refund_plan = {
	"UPDATE agentretry.runs SET retry_events = retry_events - 1"
	" WHERE tenant = $1 AND run_id = $2",
	2, {TEXTOID, TEXTOID}
};

static void
run_refund(const Operation *op)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->run_id);
	ar_run(&run_refund_plan, values, NULL, false);
}

/*
 * When a bucket that could not pay `cost` will be able to: its stripes
 * refill together (each its share of the rate), and a debit may gather
 * from all of them.
 */
static TimestampTz
refill_time(const Budget *b, double cost, double tokens, TimestampTz now)
{
	double		seconds;

	if (b->refill <= 0)
		return TS_NONE;
	seconds = (cost - tokens) / b->refill;
	if (seconds < 0)
		seconds = 0;
	return ts_add_usec(now, (int64) ceil(seconds * USECS_PER_SEC));
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
	const Budget *budgets[MAX_BUDGETS];
	Debit		debits[MAX_BUDGETS];
	double		costs[MAX_BUDGETS];
	bool		paid[MAX_BUDGETS];
	LedgerRows	rows;
	int			n;
	int			i;
	int			j;
	bool		run_counted = false;

	rows.n = 0;
	*retry_at = TS_NONE;
	*reason = NULL;
	if (op->run_id != NULL)
	{
		if (!run_debit(op, now))
		{
			*reason = "denied_run";
			ledger(&rows, op, "run", op->run_id, 1, 0, false, *reason, fc, TS_NONE, now);
			ledger_flush(&rows);
			return false;
		}
		run_counted = true;
	}
	n = applicable_budgets(op, op->lease_owner, false, budgets);
	for (i = 0; i < n; i++)
	{
		costs[i] = fc == FC_AMBIGUOUS ? budgets[i]->cost_ambiguous :
			budgets[i]->cost_transient;
		paid[i] = false;
	}
	/* several budgets: one statement pays all those a stripe can pay alone */
	if (n > 1)
		debit_batch(op, budgets, costs, n, now, debits, paid);

	for (i = 0; i < n; i++)
	{
		const Budget *b = budgets[i];
		double		cost = costs[i];
		double		tokens = 0;

		if (paid[i] || debit(op, b, cost, 0, 1, now, &debits[i]))
		{
			paid[i] = true;
			/* counted with this retry: over the ratio is a denial */
			if (!b->has_ratio ||
				debits[i].retries <= Max((double) b->floor, b->ratio * debits[i].firsts))
				continue;
			*reason = "denied_ratio";
			*retry_at = ts_add_usec(now, b->window);
		}
		else if (!b->has_bucket)
		{
			/* no tokens to lack: every stripe is held; look again in a second */
			*reason = "denied_held";
			*retry_at = ts_add_usec(now, USECS_PER_SEC);
		}
		else
		{
			tokens = debits[i].balance;

			/*
			 * Tokens that could pay but are held by running transactions
			 * are known after they end: look again in a second, rather
			 * than wait for a lock or give up for good.  A cost over the
			 * capacity is never paid.
			 */
			*reason = "denied_tokens";
			if (cost > b->capacity)
				*retry_at = TS_NONE;
			else
				*retry_at = ENOUGH(tokens, cost) ? ts_add_usec(now, USECS_PER_SEC) :
					refill_time(b, cost, tokens, now);
		}
		/* denied: give back every debit made, this budget's included */
		for (j = 0; j < n; j++)
			if (paid[j])
				refund(op, &debits[j]);
		if (run_counted)
			run_refund(op);
		if (strcmp(*reason, "denied_tokens") == 0)
			ledger(&rows, op, b->scope, b->subject, cost, tokens, true, *reason, fc, *retry_at, now);
		else
			ledger(&rows, op, b->scope, b->subject, 1, 0, false, *reason, fc, *retry_at, now);
		ledger_flush(&rows);
		return false;
	}

	if (run_counted)
		ledger(&rows, op, "run", op->run_id, 1, 0, false, "debit", fc, TS_NONE, now);
	for (i = 0; i < n; i++)
		ledger(&rows, op, debits[i].b->scope, debits[i].b->subject, debits[i].cost,
			   debits[i].balance, debits[i].b->has_bucket, "debit", fc, TS_NONE, now);
	ledger_flush(&rows);
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
	const Budget *budgets[MAX_BUDGETS];
	Datum		values[12];
	int			n = applicable_budgets(op, owner, true, budgets);
	int			i;

	for (i = 0; i < n; i++)
	{
		const Budget *b = budgets[i];

		stripe_params(values, op, b, now);
		values[7] = Float8GetDatum(0);
		values[8] = Int32GetDatum(MyProcPid % b->stripes);
		values[9] = IntervalPGetDatum(usec_interval(b->window));
		values[10] = Int32GetDatum(1);
		values[11] = Int32GetDatum(0);
		ar_run(&count_first_plan, values, NULL, false);
	}
}
