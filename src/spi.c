/*-------------------------------------------------------------------------
 *
 * spi.c
 *	  The SPI layer: connections with search_path pinned, named plans
 *	  prepared once per backend, parameter setters and column readers.
 *
 * Plans are prepared with CURSOR_OPT_GENERIC_PLAN (or, for a statement run
 * rarely whose best plan depends on its parameters, CURSOR_OPT_CUSTOM_PLAN)
 * and kept (SPI_keepplan); the plan cache revalidates them after DDL.  They are
 * made under the pinned search_path, so they are never re-planned for a
 * caller's search_path.
 *
 * src/spi.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "spi.h"

/*
 * Whose rights.  agentretry's functions are SECURITY INVOKER: the role
 * that calls one is its caller, as PostgreSQL sees it (current_user, so
 * that a SECURITY DEFINER function of someone else's, or an index
 * expression, acts with its owner's tenants, not with the session's), and
 * its queries run as the owner of the tables (the extension's owner): ar_spi_begin() switches to that role and
 * ar_spi_end() back, as a SECURITY DEFINER function would.  While switched,
 * ar_caller() still answers the caller; a (sub)transaction abort restores
 * the role, and the switches made in it are forgotten (switch_stack: each
 * entry is valid while the subtransaction it was made in is).
 */
typedef struct Switch
{
	LocalTransactionId lxid;
	SubTransactionId subid;
	Oid			caller;
} Switch;

#define MAX_SWITCHES 64

static Switch switch_stack[MAX_SWITCHES];
static int	nswitches = 0;
static Oid	tables_owner = InvalidOid;
static Oid	operations_relid = InvalidOid;
static bool owner_callback = false;

static void
operations_changed(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == operations_relid)
		tables_owner = InvalidOid;
}

/*
 * The owner of agentretry's tables (of agentretry.operations, which every
 * version has): the extension's owner, unless someone changed it.
 */
static Oid
agentretry_owner(void)
{
	if (!OidIsValid(tables_owner))
	{
		HeapTuple	tup;

		operations_relid = get_relname_relid("operations",
											 get_namespace_oid("agentretry", false));
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(operations_relid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "agentretry: table agentretry.operations is missing");
		tables_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
		if (!owner_callback)
		{
			CacheRegisterRelcacheCallback(operations_changed, (Datum) 0);
			owner_callback = true;
		}
	}
	return tables_owner;
}

static bool
switch_valid(const Switch *sw)
{
	return sw->lxid == MyProc->lxid && SubTransactionIsActive(sw->subid);
}

/* the role that called agentretry (see above) */
Oid
ar_caller(void)
{
	while (nswitches > 0 && !switch_valid(&switch_stack[nswitches - 1]))
		nswitches--;
	return nswitches > 0 ? switch_stack[nswitches - 1].caller : GetUserId();
}

/*
 * Connect to SPI with search_path pinned to pg_catalog alone (no temp
 * schema), so that nothing a caller puts on its search_path (a table, a
 * function, an operator) can be picked up by the queries run here.  This
 * is what "SET search_path" on a SECURITY DEFINER function achieves, at a
 * fraction of its cost: the override stack is a list push, where a SET
 * clause parses and assigns a GUC on every call (about a sixth of a
 * replay's time).  Transaction and subtransaction abort unwind the
 * override.  The GUC nest level (PostgreSQL 17 and later) is kept in the
 * caller's ArSpi, so nested connections each restore their own.
 */
void
ar_spi_begin(ArSpi *spi)
{
#if PG_VERSION_NUM < 170000
	OverrideSearchPath path = {NIL, true, false, 0};
#endif

	Oid			owner = agentretry_owner();

	spi->caller = CurrentMemoryContext;
	spi->guc_nest_level = 0;
	GetUserIdAndSecContext(&spi->save_user, &spi->save_sec);
	spi->switched = spi->save_user != owner;
	if (spi->switched)
	{
		(void) ar_caller();		/* drop what aborts left */
		if (nswitches >= MAX_SWITCHES)
			elog(ERROR, "agentretry: calls nested too deeply");
		switch_stack[nswitches].lxid = MyProc->lxid;
		switch_stack[nswitches].subid = GetCurrentSubTransactionId();
		switch_stack[nswitches].caller = spi->save_user;
		nswitches++;
		SetUserIdAndSecContext(owner, spi->save_sec | SECURITY_LOCAL_USERID_CHANGE);
	}
	SPI_connect();
#if PG_VERSION_NUM < 170000
	PushOverrideSearchPath(&path);
#else
	spi->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
#endif
}

void
ar_spi_end(ArSpi *spi)
{
#if PG_VERSION_NUM < 170000
	PopOverrideSearchPath();
#else
	AtEOXact_GUC(true, spi->guc_nest_level);
#endif
	SPI_finish();
	if (spi->switched)
	{
		SetUserIdAndSecContext(spi->save_user, spi->save_sec);
		(void) ar_caller();		/* above ours: only switches an abort undid */
		if (nswitches > 0)
			nswitches--;
	}
	MemoryContextSwitchTo(spi->caller);
}

/*
 * Always a generic plan: every statement here is written for one plan
 * (primary-key probes, or an ordered scan of a partial index with a
 * LIMIT), and letting the plan cache weigh custom plans would re-plan
 * claim_due's query on every call (its LIMIT and time parameters make a
 * custom plan look cheaper), a third of its cost.
 */
static SPIPlanPtr
prepare(ArPlan *p)
{
	if (p->plan == NULL)
	{
		SPIPlanPtr	plan;

		Assert(p->sql != NULL);
		plan = SPI_prepare_cursor(p->sql, p->nargs, p->argtypes,
								  p->custom ? CURSOR_OPT_CUSTOM_PLAN :
								  CURSOR_OPT_GENERIC_PLAN);
		if (plan == NULL)
			elog(ERROR, "agentretry: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		p->plan = plan;
	}
	return p->plan;
}

/* Run p (preparing it on first use); returns SPI_processed. */
uint64
ar_run(ArPlan *p, Datum *values, const char *nulls, bool read_only)
{
	int			rc = SPI_execute_plan(prepare(p), values, nulls, read_only, 0);

	if (rc < 0)
		elog(ERROR, "agentretry: SPI_execute_plan failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

void
param_text(Datum *values, char *nulls, int i, const char *s)
{
	if (s)
		values[i] = CStringGetTextDatum(s);
	else
		nulls[i] = 'n';
}

void
param_ts(Datum *values, char *nulls, int i, TimestampTz ts)
{
	if (ts != TS_NONE)
		values[i] = TimestampTzGetDatum(ts);
	else
		nulls[i] = 'n';
}

void
param_usec(Datum *values, char *nulls, int i, int64 usec)
{
	if (usec != USEC_NONE)
		values[i] = IntervalPGetDatum(usec_interval(usec));
	else
		nulls[i] = 'n';
}

/* an enum passed as text: index into labels, or -1 for NULL */
void
param_label(Datum *values, char *nulls, int i, const char *const *labels,
			int index)
{
	param_text(values, nulls, i, index >= 0 ? labels[index] : NULL);
}

void
param_jsonb(Datum *values, char *nulls, int i, Jsonb *j)
{
	if (j)
		values[i] = JsonbPGetDatum(j);
	else
		nulls[i] = 'n';
}

char *
col_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

TimestampTz
col_ts(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? TS_NONE : DatumGetTimestampTz(d);
}

int64
col_int64(HeapTuple tup, TupleDesc desc, int col, int64 none)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? none : DatumGetInt64(d);
}

int32
col_int32(HeapTuple tup, TupleDesc desc, int col, int32 none)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? none : DatumGetInt32(d);
}

Datum
first_value(bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
						 isnull);
}
