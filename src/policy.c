/*-------------------------------------------------------------------------
 *
 * policy.c
 *	  Retry policies: the built-in tier defaults merged with a tool's
 *	  registered fields and the tenant's overrides.
 *
 * Policy fields are stored as given (NULL = not set) and merged at decision
 * time, field by field: tier default < tool < tenant (tool '*') < tenant
 * and tool.  So changing a tool or a tenant policy affects operations
 * already in flight, and "where did this value come from" stays answerable
 * (effective_policy).  An unregistered tool is unknown / write.
 *
 *	  tier  side effect   max_attempts  base / cap     jitter
 *	  1     read          6             200 ms / 30 s  full
 *	  2     write         2             1 s / 30 s     full
 *	  3     destructive   1             (never retried: failure is dead)
 *
 * src/policy.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "cache.h"
#include "policy.h"
#include "tenancy.h"

typedef struct TierDefault
{
	int			max_attempts;
	int64		base_delay;
	int64		max_delay;
	JitterMode	jitter;
	const char *auto_retry;
} TierDefault;

static const TierDefault tier_defaults[] = {
	[SE_READ] = {6, 200 * 1000, 30 * USECS_PER_SEC, JITTER_FULL, "yes"},
	[SE_WRITE] = {2, USECS_PER_SEC, 30 * USECS_PER_SEC, JITTER_FULL, "once, with the same key"},
	[SE_DESTRUCTIVE] = {1, USECS_PER_SEC, 30 * USECS_PER_SEC, JITTER_FULL, "never"},
};

#define DEFAULT_MULTIPLIER 2.0

const char *const policy_source_labels[] = {
	[SRC_DEFAULT] = "default",
	[SRC_TOOL] = "tool",
	[SRC_TENANT] = "tenant",
	[SRC_TENANT_TOOL] = "tenant_tool",
	NULL
};

void
policy_tier_defaults(Policy *p, SideEffect side_effect)
{
	const TierDefault *t = &tier_defaults[side_effect];
	int			i;

	p->registered = false;
	p->idempotency = IDEM_UNKNOWN;
	p->side_effect = side_effect;
	p->max_attempts = t->max_attempts;
	p->base_delay = t->base_delay;
	p->max_delay = t->max_delay;
	p->multiplier = DEFAULT_MULTIPLIER;
	p->jitter = t->jitter;
	p->deadline = USEC_NONE;
	p->lease = (int64) ar_default_lease_sec * USECS_PER_SEC;
	p->ttl = (int64) ar_default_ttl_sec * USECS_PER_SEC;
	p->compensate_tool = NULL;
	p->requires_approval = side_effect == SE_DESTRUCTIVE;
	for (i = 0; i < PF_COUNT; i++)
		p->source[i] = SRC_DEFAULT;
}

static void
take_interval(Policy *p, PolicyField f, int64 *field, HeapTuple tup,
			  TupleDesc desc, int col, PolicySource source)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return;
	*field = interval_usec(DatumGetIntervalP(d));
	p->source[f] = source;
}

/*
 * Overlay one level of AR_POLICY_LEVEL (10 columns from col) on p: every
 * field the level sets replaces what lower levels gave.
 */
static void
apply_level(Policy *p, HeapTuple tup, TupleDesc desc, int col,
			PolicySource source)
{
	bool		isnull;
	Datum		d;
	char	   *text;

	d = SPI_getbinval(tup, desc, col, &isnull);
	if (!isnull)
	{
		p->max_attempts = DatumGetInt32(d);
		p->source[PF_MAX_ATTEMPTS] = source;
	}
	take_interval(p, PF_BASE_DELAY, &p->base_delay, tup, desc, col + 1, source);
	take_interval(p, PF_MAX_DELAY, &p->max_delay, tup, desc, col + 2, source);
	d = SPI_getbinval(tup, desc, col + 3, &isnull);
	if (!isnull)
	{
		p->multiplier = DatumGetFloat8(d);
		p->source[PF_MULTIPLIER] = source;
	}
	if ((text = SPI_getvalue(tup, desc, col + 4)) != NULL)
	{
		p->jitter = (JitterMode) label_index(jitter_labels, text);
		p->source[PF_JITTER] = source;
	}
	take_interval(p, PF_DEADLINE, &p->deadline, tup, desc, col + 5, source);
	take_interval(p, PF_LEASE, &p->lease, tup, desc, col + 6, source);
	take_interval(p, PF_TTL, &p->ttl, tup, desc, col + 7, source);
	if ((text = SPI_getvalue(tup, desc, col + 8)) != NULL)
	{
		p->compensate_tool = text;
		p->source[PF_COMPENSATE_TOOL] = source;
	}
	d = SPI_getbinval(tup, desc, col + 9, &isnull);
	if (!isnull)
	{
		p->requires_approval = DatumGetBool(d);
		p->source[PF_REQUIRES_APPROVAL] = source;
	}
}

/*
 * Fill p from the AR_POLICY_COLUMNS starting at firstcol (1-based): the
 * tool's idempotency and side effect (NULL for an unregistered tool), then
 * the levels tool, tenant-wide and tenant+tool, merged in that order over
 * the tier default.
 */
void
policy_from_columns(Policy *p, HeapTuple tup, TupleDesc desc, int firstcol)
{
	char	   *idem = SPI_getvalue(tup, desc, firstcol);
	char	   *se = SPI_getvalue(tup, desc, firstcol + 1);
	int			level = firstcol + 2;

	policy_tier_defaults(p, se ? (SideEffect) label_index(side_effect_labels, se) : SE_WRITE);
	if (idem != NULL)
	{
		p->registered = true;
		p->idempotency = (Idempotency) label_index(idempotency_labels, idem);
		p->source[PF_IDEMPOTENCY] = SRC_TOOL;
		p->source[PF_SIDE_EFFECT] = SRC_TOOL;
	}
	apply_level(p, tup, desc, level, SRC_TOOL);
	apply_level(p, tup, desc, level + AR_POLICY_LEVEL_NCOLUMNS, SRC_TENANT);
	apply_level(p, tup, desc, level + 2 * AR_POLICY_LEVEL_NCOLUMNS, SRC_TENANT_TOOL);
}

PG_FUNCTION_INFO_V1(agentretry_tier_defaults);

/*
 * tier_defaults() returns table (side_effect, max_attempts, base_delay,
 *		  max_delay, multiplier, jitter, auto_retry)
 *
 * The built-in policy of each tier, so that DBAs can read what a NULL
 * policy field of a tool means.
 */
Datum
agentretry_tier_defaults(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	desc;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	desc = rsinfo->setDesc;
	for (i = SE_READ; i <= SE_DESTRUCTIVE; i++)
	{
		const TierDefault *t = &tier_defaults[i];
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		values[0] = label_enum_datum(TupleDescAttr(desc, 0)->atttypid, side_effect_labels[i]);
		values[1] = Int32GetDatum(t->max_attempts);
		values[2] = IntervalPGetDatum(usec_interval(t->base_delay));
		values[3] = IntervalPGetDatum(usec_interval(t->max_delay));
		values[4] = Float8GetDatum(DEFAULT_MULTIPLIER);
		values[5] = label_enum_datum(TupleDescAttr(desc, 5)->atttypid, jitter_labels[t->jitter]);
		values[6] = CStringGetTextDatum(t->auto_retry);
		/* a destructive tool is never retried: its backoff does not apply */
		if (i == SE_DESTRUCTIVE)
			nulls[2] = nulls[3] = nulls[4] = nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, desc, values, nulls);
	}
	return (Datum) 0;
}

static ArPlan effective_plan = {
	"SELECT " AR_POLICY_COLUMNS
	" FROM (SELECT $1::text AS tenant, $2::text AS tool) o" AR_POLICY_JOINS,
	2, {TEXTOID, TEXTOID}
};

static RowsFlag tenant_policies_flag =
ROWS_FLAG("tenant_policies", "SELECT EXISTS (SELECT FROM agentretry.tenant_policies)");

static RowsFlag gated_tools_flag =
ROWS_FLAG("tools", "SELECT EXISTS (SELECT FROM agentretry.tools t"
		  " WHERE coalesce(t.requires_approval, t.side_effect = 'destructive'))");

/*
 * Has any tenant a policy?  Without, the hot statements read the tool's
 * policy alone.
 */
bool
tenant_policies_exist(void)
{
	return cached_flag(&tenant_policies_flag);
}

/*
 * The tools that require approval (by their own field, or as destructive
 * tools by default), by name, cached per backend like the flags of
 * cache.c: rebuilt when the tools table changes.
 */
static MemoryContext gated_names_cxt = NULL;
static HTAB *gated_names = NULL;
static uint64 gated_names_generation = 0;

static ArPlan gated_names_plan = {
	"SELECT t.name FROM agentretry.tools t"
	" WHERE coalesce(t.requires_approval, t.side_effect = 'destructive')",
	0, {InvalidOid}
};

static void
load_gated_names(void)
{
	HASHCTL		ctl;
	uint64		n;
	uint64		i;

	if (gated_names_cxt == NULL)
		gated_names_cxt = AllocSetContextCreate(TopMemoryContext,
												"agentretry gated tools",
												ALLOCSET_SMALL_SIZES);
	MemoryContextReset(gated_names_cxt);
	gated_names = NULL;
	ctl.keysize = AR_MAX_NAME_LEN + 1;
	ctl.entrysize = AR_MAX_NAME_LEN + 1;
	ctl.hcxt = gated_names_cxt;
	n = ar_run(&gated_names_plan, NULL, NULL, false);
	gated_names = hash_create("agentretry gated tools", Max(n, 8), &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (i = 0; i < n; i++)
		(void) hash_search(gated_names,
						   SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
						   HASH_ENTER, NULL);
	gated_names_generation = gated_tools_flag.generation;
}

/*
 * Might a new key of this tool need approval, by the tool's policy?  No
 * when no tool requires approval, or (read with a fresh snapshot) this
 * one does not; a new key is then inserted without the gate.  Under
 * REPEATABLE READ and SERIALIZABLE nothing is cached: yes, and the
 * statement decides.  Tenant policies are not looked at (the caller
 * checks tenant_policies_exist() first).
 */
bool
tool_may_require_approval(const char *tool)
{
	if (!cached_flag(&gated_tools_flag))
		return false;
	if (IsolationUsesXactSnapshot())
		return true;
	if (gated_names == NULL || gated_names_generation != gated_tools_flag.generation)
		load_gated_names();
	return hash_search(gated_names, tool, HASH_FIND, NULL) != NULL;
}

static char *
usec_text(int64 usec)
{
	if (usec == USEC_NONE)
		return NULL;
	/* policies are kept in microseconds: show 48 h as "2 days" again */
	return DatumGetCString(DirectFunctionCall1(interval_out,
											   DirectFunctionCall1(interval_justify_hours,
																   IntervalPGetDatum(usec_interval(usec)))));
}

static void
put_field(ReturnSetInfo *rsinfo, const Policy *p, PolicyField f,
		  const char *name, const char *value)
{
	Datum		values[3];
	bool		nulls[3] = {false, value == NULL, false};

	values[0] = CStringGetTextDatum(name);
	values[1] = value ? CStringGetTextDatum(value) : (Datum) 0;
	values[2] = CStringGetTextDatum(policy_source_labels[p->source[f]]);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

PG_FUNCTION_INFO_V1(agentretry_effective_policy);

/*
 * effective_policy(tenant text DEFAULT NULL, tool text DEFAULT 'default')
 *		returns table (field text, value text, source text)
 *
 * The policy that decisions for this tenant's tool use, one row per field,
 * with where each value came from: default (tier default or GUC), tool,
 * tenant (the tenant's override for every tool) or tenant_tool.  Read
 * through the same merge as the decisions, so it cannot disagree with
 * them.
 */
Datum
agentretry_effective_policy(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *tenant = arg_tenant(fcinfo, 0);
	char	   *tool = arg_tool(fcinfo, 1);
	Datum		values[2];
	Policy		p;
	char		buf[32];
	ArSpi		spi;

	InitMaterializedSRF(fcinfo, 0);
	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(tool);
	ar_spi_begin(&spi);
	ar_run(&effective_plan, values, NULL, true);
	policy_from_columns(&p, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	put_field(rsinfo, &p, PF_IDEMPOTENCY, "idempotency", idempotency_labels[p.idempotency]);
	put_field(rsinfo, &p, PF_SIDE_EFFECT, "side_effect", side_effect_labels[p.side_effect]);
	snprintf(buf, sizeof(buf), "%d", p.max_attempts);
	put_field(rsinfo, &p, PF_MAX_ATTEMPTS, "max_attempts", buf);
	put_field(rsinfo, &p, PF_BASE_DELAY, "base_delay", usec_text(p.base_delay));
	put_field(rsinfo, &p, PF_MAX_DELAY, "max_delay", usec_text(p.max_delay));
	put_field(rsinfo, &p, PF_MULTIPLIER, "multiplier",
			  DatumGetCString(DirectFunctionCall1(float8out, Float8GetDatum(p.multiplier))));
	put_field(rsinfo, &p, PF_JITTER, "jitter", jitter_labels[p.jitter]);
	put_field(rsinfo, &p, PF_DEADLINE, "deadline", usec_text(p.deadline));
	put_field(rsinfo, &p, PF_LEASE, "lease", usec_text(p.lease));
	put_field(rsinfo, &p, PF_TTL, "ttl", usec_text(p.ttl));
	put_field(rsinfo, &p, PF_COMPENSATE_TOOL, "compensate_tool", p.compensate_tool);
	put_field(rsinfo, &p, PF_REQUIRES_APPROVAL, "requires_approval",
			  p.requires_approval ? "true" : "false");
	ar_spi_end(&spi);
	return (Datum) 0;
}
