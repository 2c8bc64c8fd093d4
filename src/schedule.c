/*-------------------------------------------------------------------------
 *
 * schedule.c
 *	  claim_due(): lease the retries that agentretry scheduled.
 *
 * Retry workers poll claim_due() (or LISTEN on channel agentretry, which
 * the sweep notifies).  One query finds due retries through the partial
 * index operations_retry_due, another expired leases through
 * operations_lease_expiry, each oldest due first, and both lock FOR UPDATE
 * SKIP LOCKED:
 * a row another worker (or a claim, a sweep, an operator) holds is passed
 * over, never waited for, so concurrent workers never block each other and
 * never lease one row twice.  Each locked row then goes through the same
 * transition as claim() (claim_transition), so a due retry past its
 * deadline is dead-lettered and an expired lease is decided as an
 * ambiguous failure exactly as a claim would.
 *
 * src/schedule.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "stats.h"
#include "tenancy.h"
#include "transition.h"

#define CLAIM_DUE_MAX 1000

/* $1 tenant, $2 now, $3 how many, $4 tools or NULL */
#define DUE_ARGTYPES {TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTARRAYOID}

/* due retries, oldest first */
static ArPlan due_retries_plan = {
	"SELECT " AR_OP_SELECT ", o.args FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.tenant = $1 AND o.state = 'retry_wait' AND o.next_attempt_at <= $2"
	" AND ($4::text[] IS NULL OR o.tool = ANY ($4))"
	" ORDER BY o.next_attempt_at"
	" LIMIT $3 FOR UPDATE OF o SKIP LOCKED",
	4, DUE_ARGTYPES
};

/*
 * Expired leases, oldest first, only of idempotent tools: for the others
 * the decision is a verification, which a retry worker cannot do (the
 * sweep makes it; a claim of the key hands it out).
 */
static ArPlan due_leases_plan = {
	"SELECT " AR_OP_SELECT ", o.args FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.tenant = $1 AND o.state = 'in_progress' AND o.lease_expires_at <= $2"
	" AND ($4::text[] IS NULL OR o.tool = ANY ($4))"
	" AND t.idempotency = 'idempotent'"
	" ORDER BY o.lease_expires_at"
	" LIMIT $3 FOR UPDATE OF o SKIP LOCKED",
	4, DUE_ARGTYPES
};

/* tools: NULL for every tool, else an array of tool names, without NULLs */
static Datum
arg_tools(FunctionCallInfo fcinfo, int argno, bool *isnull)
{
	ArrayType  *arr;
	Datum	   *names;
	int			n;
	int			i;

	*isnull = PG_ARGISNULL(argno);
	if (*isnull)
		return (Datum) 0;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tools must not contain NULL")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &names, NULL, &n);
	for (i = 0; i < n; i++)
	{
		int			len = VARSIZE_ANY_EXHDR(DatumGetPointer(names[i]));

		if (len < 1 || len > AR_MAX_NAME_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tool must be 1 to %d bytes long", AR_MAX_NAME_LEN),
					 errdetail("An element of tools is %d bytes long.", len)));
	}
	return PointerGetDatum(arr);
}

/* the columns claim_due() and claim_verifications() share: the first 9 */
#define LEASED_NCOLUMNS 9

static void
fill_leased(Datum *values, bool *nulls, const Operation *op, Datum args,
			const ClaimAnswer *a)
{
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = CStringGetTextDatum(op->tool);
	values[3] = args;
	values[4] = Int32GetDatum(a->attempt);
	values[5] = Int64GetDatum(a->lease_token);
	values[6] = TimestampTzGetDatum(a->lease_expires_at);
	values[7] = op->run_id ? CStringGetTextDatum(op->run_id) : (Datum) 0;
	nulls[7] = op->run_id == NULL;
	values[8] = op->step ? CStringGetTextDatum(op->step) : (Datum) 0;
	nulls[8] = op->step == NULL;
}

static void
put_leased(ReturnSetInfo *rsinfo, const Operation *op, Datum args,
		   const ClaimAnswer *a)
{
	Datum		values[LEASED_NCOLUMNS];
	bool		nulls[LEASED_NCOLUMNS];

	memset(nulls, false, sizeof(nulls));
	fill_leased(values, nulls, op, args, a);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* a locked candidate row: the operation, its args and when it fell due */
typedef struct DueRow
{
	Operation	op;
	Datum		args;
	TimestampTz due;
} DueRow;

static int
due_row_cmp(const void *a, const void *b)
{
	TimestampTz x = ((const DueRow *) a)->due;
	TimestampTz y = ((const DueRow *) b)->due;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* run one candidate query and append its locked rows to rows[*n] */
static void
fetch_due(bool leases, const char *tenant, Datum tools, bool tools_null,
		  int want, TimestampTz now, DueRow *rows, int *n)
{
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', tools_null ? 'n' : ' '};
	SPITupleTable *tt;
	uint64		got;
	uint64		i;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = TimestampTzGetDatum(now);
	values[2] = Int32GetDatum(want);
	values[3] = tools;
	got = ar_run(leases ? &due_leases_plan : &due_retries_plan, values, nulls,
				 false);
	tt = SPI_tuptable;			/* kept until SPI_finish */
	for (i = 0; i < got; i++)
	{
		DueRow	   *r = &rows[(*n)++];
		bool		isnull;

		memset(&r->op, 0, sizeof(r->op));
		operation_from_row(tt->vals[i], tt->tupdesc, &r->op);
		r->args = SPI_getbinval(tt->vals[i], tt->tupdesc,
								AR_OP_SELECT_NCOLUMNS + 1, &isnull);
		r->due = leases ? r->op.lease_expires_at : r->op.next_attempt_at;
	}
}

/*
 * Lock up to want due retries and up to want expired leases, and make the
 * transitions of the want that fell due first (oldest due first across
 * both kinds).  The others stay as they are; their row locks end with the
 * caller's statement or transaction, and meanwhile other workers skip
 * them.  Returns how many rows were handled (0: nothing due is left that
 * nobody holds) and adds the leases to the result.
 */
static int
lease_due_batch(ReturnSetInfo *rsinfo, const char *tenant, Datum tools,
				bool tools_null, int want, const ClaimRequest *req,
				int *leased)
{
	DueRow	   *rows = palloc(sizeof(DueRow) * want * 2);
	int			n = 0;
	int			i;

	fetch_due(false, tenant, tools, tools_null, want, req->now, rows, &n);
	fetch_due(true, tenant, tools, tools_null, want, req->now, rows, &n);
	qsort(rows, n, sizeof(DueRow), due_row_cmp);
	n = Min(n, want);
	for (i = 0; i < n; i++)
	{
		ClaimAnswer a;

		claim_transition(&rows[i].op, req, &a);
		if (a.outcome == OUT_EXECUTE)
		{
			put_leased(rsinfo, &rows[i].op, rows[i].args, &a);
			(*leased)++;
		}
	}
	return n;
}

/*
 * Workers serving several tenants.
 *
 * claim_due() and claim_verifications() without a tenant, for a role that
 * acts for several tenants, lease round-robin across them: each call
 * visits the tenants in turn, starting after the last one this backend
 * visited, and gives each an equal share of what is left of max (the
 * share of a tenant with less work goes to the others), so one tenant's
 * backlog cannot starve another's.  A call visits at most WALK_MAX(max)
 * tenants; the next call goes on from where it stopped, so every tenant is
 * visited however many there are.
 *
 * An admin (who acts for every tenant) finds the tenants with work by
 * walking the partial index of that work one distinct tenant at a time,
 * a bounded number of index probes.
 */
#define WALK_MAX(max) Max((max) * 2, 16)

/*
 * one step of a walk: the next tenant after t of the partial index of
 * states, up to $4 when not NULL
 */
#define NEXT_TENANT(states, t) \
	"(SELECT o.tenant FROM agentretry.operations o" \
	" WHERE " states " AND o.tenant > " t \
	" AND ($4::text IS NULL OR o.tenant <= $4) ORDER BY o.tenant LIMIT 1)"

/* a walk of at most $2 distinct tenants after $1 */
#define WALK(name, states) \
	name "(tenant, n) AS (SELECT " NEXT_TENANT(states, "$1") ", 1" \
	" UNION ALL SELECT " NEXT_TENANT(states, name ".tenant") ", " name ".n + 1" \
	" FROM " name " WHERE " name ".tenant IS NOT NULL AND " name ".n < $2)"

/*
 * $1 after this tenant, $2 at most this many, $3 now, $4 up to this
 * tenant or NULL, $5 tools or NULL: the next tenants with waiting retries
 * or leases (operations_retry_due, operations_lease_expiry), each with
 * whether it has any that claim_due() would lease now
 */
static ArPlan due_tenants_plan = {
	"WITH RECURSIVE " WALK("r", "o.state = 'retry_wait'") ","
	" " WALK("l", "o.state = 'in_progress'")
	" SELECT x.tenant,"
	"  EXISTS (SELECT FROM agentretry.operations o WHERE o.tenant = x.tenant"
	"   AND o.state = 'retry_wait' AND o.next_attempt_at <= $3"
	"   AND ($5::text[] IS NULL OR o.tool = ANY ($5)))"
	"  OR EXISTS (SELECT FROM agentretry.operations o"
	"   JOIN agentretry.tools t ON t.name = o.tool AND t.idempotency = 'idempotent'"
	"   WHERE o.tenant = x.tenant"
	"   AND o.state = 'in_progress' AND o.lease_expires_at <= $3"
	"   AND ($5::text[] IS NULL OR o.tool = ANY ($5)))"
	" FROM (SELECT DISTINCT w.tenant FROM (SELECT tenant FROM r UNION ALL SELECT tenant FROM l) w"
	"  WHERE w.tenant IS NOT NULL ORDER BY 1 LIMIT $2) x ORDER BY 1",
	5, {TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID, TEXTARRAYOID}
};

/*
 * The same for operations to verify: the tenants of operations_attention
 * (which also holds dead letters and approvals), each with whether it has
 * an operation to verify that no live lease holds
 */
#define ATTENTION "o.state NOT IN ('in_progress', 'retry_wait', 'succeeded', 'cancelled')"

static ArPlan verify_tenants_plan = {
	"WITH RECURSIVE " WALK("a", ATTENTION)
	" SELECT a.tenant,"
	"  EXISTS (SELECT FROM agentretry.operations o WHERE o.tenant = a.tenant"
	"   AND " ATTENTION " AND o.state = 'verify'"
	"   AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $3)"
	"   AND ($5::text[] IS NULL OR o.tool = ANY ($5)))"
	" FROM a WHERE a.tenant IS NOT NULL ORDER BY 1",
	5, {TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID, TEXTARRAYOID}
};

/* the last tenant a multi-tenant call of this backend went past, per kind */
static char last_due_tenant[AR_MAX_NAME_LEN + 1];
static char last_verify_tenant[AR_MAX_NAME_LEN + 1];

/*
 * Walk from after (up to upto, when not NULL) and append the tenants with
 * work to names[*n], at most limit.  Sets *end to the tenant the next call
 * goes on after: the last one appended when names is full, else the last
 * one walked, or "" when the walk reached the last tenant there is.
 */
static void
walk_tenants(ArPlan *plan, const char *after, const char *upto, int limit,
			 TimestampTz now, Datum tools, bool tools_null, char **names,
			 int *n, char *end)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', upto ? ' ' : 'n', tools_null ? 'n' : ' '};
	uint64		got;
	uint64		i;

	values[0] = CStringGetTextDatum(after);
	values[1] = Int32GetDatum(limit);
	values[2] = TimestampTzGetDatum(now);
	values[3] = upto ? CStringGetTextDatum(upto) : (Datum) 0;
	values[4] = tools;
	got = ar_run(plan, values, nulls, true);
	end[0] = '\0';
	for (i = 0; i < got; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		char	   *t = col_text(tup, SPI_tuptable->tupdesc, 1);
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
		{
			names[(*n)++] = t;
			if (*n == limit)
			{
				strlcpy(end, t, AR_MAX_NAME_LEN + 1);
				return;
			}
		}
		if (got == (uint64) limit)
			strlcpy(end, t, AR_MAX_NAME_LEN + 1);
	}
}

/*
 * The tenants to visit, in turn, after the one last gone past: the
 * caller's own, or for an admin those with work.  Returns how many (at
 * most limit) and sets *end to where the next call starts once all of
 * them are visited.
 */
static int
tenants_in_turn(bool verify, int limit, TimestampTz now, Datum tools,
				bool tools_null, char **names, char *end)
{
	const CallerTenants *t = caller_tenants();
	const char *last = verify ? last_verify_tenant : last_due_tenant;
	ArPlan	   *plan = verify ? &verify_tenants_plan : &due_tenants_plan;
	int			n = 0;

	if (!t->all)
	{
		int			start = 0;
		int			i;

		while (start < t->n && strcmp(t->tenants[start], last) <= 0)
			start++;
		for (i = 0; i < t->n && n < limit; i++)
			names[n++] = pstrdup(t->tenants[(start + i) % t->n]);
		strlcpy(end, n > 0 ? names[n - 1] : "", AR_MAX_NAME_LEN + 1);
		return n;
	}
	walk_tenants(plan, last, NULL, limit, now, tools, tools_null, names, &n, end);
	/* the walk reached the last tenant: go on from the first, up to last */
	if (end[0] == '\0' && last[0] != '\0' && n < limit)
		walk_tenants(plan, "", last, limit, now, tools, tools_null, names, &n, end);
	return n;
}

/* leases up to want rows of one tenant; returns the rows handled */
typedef int (*TenantBatch) (ReturnSetInfo *rsinfo, const char *tenant,
							Datum tools, bool tools_null, int want,
							const ClaimRequest *req, int *leased);

/*
 * Round-robin over the caller's tenants: a first turn gives each tenant in
 * turn an equal share of what is left; later turns share what is still
 * left among the tenants that used their whole share.  Bounded like a
 * single tenant's call: at most max * 4 rows handled.
 */
static int
lease_round_robin(ReturnSetInfo *rsinfo, bool verify, TenantBatch batch,
				  Datum tools, bool tools_null, int max,
				  const ClaimRequest *req)
{
	int			limit = WALK_MAX(max);
	char	  **names = palloc(sizeof(char *) * limit);
	bool	   *more = palloc(sizeof(bool) * limit);
	char	   *last = verify ? last_verify_tenant : last_due_tenant;
	char		end[AR_MAX_NAME_LEN + 1];
	int			n = tenants_in_turn(verify, limit, req->now, tools, tools_null,
									names, end);
	int			leased = 0;
	int			examined = 0;
	int			active = 0;
	int			i;

	for (i = 0; i < n && leased < max && examined < max * 4; i++)
	{
		int			share = (max - leased + (n - i) - 1) / (n - i);
		int			got = batch(rsinfo, names[i], tools, tools_null, share,
								req, &leased);

		examined += got;
		more[i] = got == share;
		active += more[i];
		strlcpy(last, names[i], AR_MAX_NAME_LEN + 1);
	}
	/* every tenant found was visited: the next call goes on after them */
	if (i == n)
		strlcpy(last, end, AR_MAX_NAME_LEN + 1);
	while (active > 0 && leased < max && examined < max * 4)
	{
		int			left = active;

		active = 0;
		for (i = 0; i < n && leased < max && examined < max * 4; i++)
		{
			int			share;
			int			got;

			if (!more[i])
				continue;
			share = (max - leased + left - 1) / left;
			left--;
			got = batch(rsinfo, names[i], tools, tools_null, share, req,
						&leased);
			examined += got;
			more[i] = got == share;
			active += more[i];
		}
	}
	return leased;
}

/*
 * What claim_due() and claim_verifications() lease for: owner (argument 0,
 * default the caller's role) and lease (argument 4, default the tool's).
 */
static void
lease_request(FunctionCallInfo fcinfo, ClaimRequest *req)
{
	memset(req, 0, sizeof(*req));
	req->owner = arg_name(fcinfo, 0, "owner", NULL, AR_MAX_NAME_LEN);
	if (req->owner == NULL)
		req->owner = GetUserNameFromId(ar_caller(), false);
	req->lease = arg_lease_usec(fcinfo, 4, "lease");
	req->now = GetCurrentTimestamp();
}

PG_FUNCTION_INFO_V1(agentretry_claim_due);

/*
 * claim_due(owner text, max integer DEFAULT 10, tools text[] DEFAULT NULL,
 *			 tenant text DEFAULT NULL, lease interval DEFAULT NULL,
 *			 in_transaction boolean DEFAULT false)
 *		returns table (tenant, key, tool, args, attempt, lease_token,
 *					   lease_expires_at, run_id, step)
 *
 * Without a tenant, for a role acting for several tenants, it leases
 * round-robin across them (lease_round_robin).  Inside a transaction block
 * a lease requires in_transaction => true, as for claim().
 *
 * Leases up to max due operations of the tenant for owner: retries whose
 * next_attempt_at has passed and expired leases of idempotent tools,
 * oldest due first, optionally only of the given tools.  The caller runs
 * each as claim()'s execute outcome: act, then complete() or fail() with
 * the lease_token.  Rows that other transactions hold are skipped, not
 * waited for.  A row whose transition does not end in a lease (a retry
 * past its deadline is dead-lettered, an expired lease may be rescheduled)
 * is not returned; the function then looks further, up to a bounded amount
 * of work per call, so it may return fewer than max rows while some are
 * due.
 */
Datum
agentretry_claim_due(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			max = arg_max(fcinfo, 1, CLAIM_DUE_MAX);
	bool		tools_null;
	Datum		tools = arg_tools(fcinfo, 2, &tools_null);
	char	   *tenant = arg_tenant_or_all(fcinfo, 3);
	ClaimRequest req;
	int			leased = 0;
	int			examined = 0;
	bool		guarded = lease_guarded(fcinfo, 5);
	ArSpi		spi;

	lease_request(fcinfo, &req);

	InitMaterializedSRF(fcinfo, 0);
	ar_spi_begin(&spi);
	if (guarded)
		stats_stage_begin();
	saga_defer_begin();
	if (tenant == NULL)
		leased = lease_round_robin(rsinfo, false, lease_due_batch, tools,
								   tools_null, max, &req);
	/* rows that end without a lease do not count; bound the extra work */
	while (tenant != NULL && leased < max && examined < max * 4)
	{
		int			n = lease_due_batch(rsinfo, tenant, tools, tools_null,
										max - leased, &req, &leased);

		if (n == 0)
			break;
		examined += n;
	}
	if (guarded)
	{
		stats_stage_end(leased == 0);
		if (leased > 0)
			refuse_uncommitted_lease("claim_due()");
	}
	saga_defer_end(req.now);
	stats_maybe_flush(req.now, false);
	ar_spi_end(&spi);
	return (Datum) 0;
}

/* $1 tenant, $2 now, $3 how many, $4 tools or NULL */
static ArPlan due_verifications_plan = {
	"SELECT " AR_OP_SELECT ", o.args, coalesce(o.state_since, o.updated_at)"
	" FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.tenant = $1 AND o.state = 'verify'"
	" AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $2)"
	" AND ($4::text[] IS NULL OR o.tool = ANY ($4))"
	" ORDER BY o.state_since NULLS FIRST"
	" LIMIT $3 FOR UPDATE OF o SKIP LOCKED",
	4, DUE_ARGTYPES
};

static void
put_verification(ReturnSetInfo *rsinfo, const Operation *op, Datum args,
				 TimestampTz since, const ClaimAnswer *a)
{
	Datum		values[LEASED_NCOLUMNS + 4];
	bool		nulls[LEASED_NCOLUMNS + 4];

	memset(nulls, false, sizeof(nulls));
	fill_leased(values, nulls, op, args, a);
	nulls[9] = op->failure_class < 0;
	if (!nulls[9])
		values[9] = label_enum_datum(TupleDescAttr(rsinfo->setDesc, 9)->atttypid,
									 failure_class_labels[op->failure_class]);
	values[10] = op->failure_code ? CStringGetTextDatum(op->failure_code) : (Datum) 0;
	nulls[10] = op->failure_code == NULL;
	values[11] = op->failure_message ? CStringGetTextDatum(op->failure_message) : (Datum) 0;
	nulls[11] = op->failure_message == NULL;
	values[12] = TimestampTzGetDatum(since);
	nulls[12] = since == TS_NONE;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* leases up to want operations of tenant to verify; returns the rows handled */
static int
lease_verifications_batch(ReturnSetInfo *rsinfo, const char *tenant,
						  Datum tools, bool tools_null, int want,
						  const ClaimRequest *req, int *leased)
{
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', tools_null ? 'n' : ' '};
	SPITupleTable *tt;
	uint64		got;
	uint64		i;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = TimestampTzGetDatum(req->now);
	values[2] = Int32GetDatum(want);
	values[3] = tools;
	got = ar_run(&due_verifications_plan, values, nulls, false);
	tt = SPI_tuptable;			/* kept until SPI_finish */
	for (i = 0; i < got; i++)
	{
		Operation	op;
		ClaimAnswer a;
		Datum		args;
		TimestampTz since;
		bool		isnull;

		memset(&op, 0, sizeof(op));
		operation_from_row(tt->vals[i], tt->tupdesc, &op);
		args = SPI_getbinval(tt->vals[i], tt->tupdesc, AR_OP_SELECT_NCOLUMNS + 1, &isnull);
		since = col_ts(tt->vals[i], tt->tupdesc, AR_OP_SELECT_NCOLUMNS + 2);
		claim_transition(&op, req, &a);
		if (a.outcome == OUT_VERIFY)
		{
			put_verification(rsinfo, &op, args, since, &a);
			(*leased)++;
		}
	}
	return (int) got;
}

PG_FUNCTION_INFO_V1(agentretry_claim_verifications);

/*
 * claim_verifications(owner text DEFAULT NULL, max integer DEFAULT 10,
 *					   tools text[] DEFAULT NULL, tenant text DEFAULT NULL,
 *					   lease interval DEFAULT NULL)
 *		returns table (tenant, key, tool, args, attempt, lease_token,
 *					   lease_expires_at, run_id, step, last_failure_class,
 *					   last_failure_code, last_failure_message, since)
 *
 * Without a tenant, for a role acting for several tenants, it leases
 * round-robin across them, as claim_due() does.
 *
 * Leases up to max operations of the tenant that await verification and
 * that no verifier holds, oldest first, optionally only of the given
 * tools: each is claim()'s verify outcome.  The verifier checks the target
 * system and calls resolve() with the lease_token (executed or not).  Rows
 * that other transactions hold are skipped, not waited for.  since is when
 * the operation began to await verification.
 */
Datum
agentretry_claim_verifications(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			max = arg_max(fcinfo, 1, CLAIM_DUE_MAX);
	bool		tools_null;
	Datum		tools = arg_tools(fcinfo, 2, &tools_null);
	char	   *tenant = arg_tenant_or_all(fcinfo, 3);
	ClaimRequest req;
	int			leased = 0;
	ArSpi		spi;

	lease_request(fcinfo, &req);

	InitMaterializedSRF(fcinfo, 0);
	ar_spi_begin(&spi);
	if (tenant == NULL)
		lease_round_robin(rsinfo, true, lease_verifications_batch, tools,
						  tools_null, max, &req);
	else
		lease_verifications_batch(rsinfo, tenant, tools, tools_null, max,
								  &req, &leased);
	stats_maybe_flush(req.now, false);
	ar_spi_end(&spi);
	return (Datum) 0;
}
