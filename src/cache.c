/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  Per-backend knowledge of whether optional tables hold any row.
 *
 * The hot statements (a new key, a completion) need not consult tables
 * that are usually empty, such as tenant_policies.  Whether such a table
 * has rows is cached per backend; a statement trigger on the table
 * (invalidate_cache) invalidates the table's relcache entry, which every
 * backend processes when its next transaction starts, and the relcache
 * callback here forgets the cached answer.
 *
 * src/cache.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "storage/proc.h"
#include "utils/rel.h"

#include "cache.h"

#define MAX_FLAGS 8

static RowsFlag *flags[MAX_FLAGS];
static int	nflags = 0;
static bool callback_registered = false;

static void
rows_relcache_callback(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < nflags; i++)
		if (relid == InvalidOid || relid == flags[i]->relid)
		{
			flags[i]->known = false;
			flags[i]->lxid = InvalidLocalTransactionId;
			flags[i]->generation++;
		}
}

/*
 * The answer of flag, when it is known without running its query: kept
 * across transactions when it was read with a fresh snapshot (READ
 * COMMITTED: taken after the invalidation was processed); under
 * REPEATABLE READ and SERIALIZABLE, kept for the transaction that read it,
 * whose snapshot does not change (its own changes of the table invalidate
 * it at their command's end, as anybody's do).
 */
bool
cached_flag_peek(const RowsFlag *flag, bool *value)
{
	if (IsolationUsesXactSnapshot() ?
		flag->lxid == MyProc->lxid && flag->lxid != InvalidLocalTransactionId :
		flag->known)
	{
		*value = flag->value;
		return true;
	}
	return false;
}

/*
 * Does the query of flag (SELECT EXISTS ...) answer true?  Asked once per
 * backend until the table changes (cached_flag_peek says how long an
 * answer is kept).  Must run under ar_spi_begin().
 */
bool
cached_flag(RowsFlag *flag)
{
	bool		isnull;
	bool		value;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(rows_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	if (!flag->registered)
	{
		if (nflags >= MAX_FLAGS)
			elog(ERROR, "agentretry: too many cached flags");
		flags[nflags++] = flag;
		flag->registered = true;
	}
	if (cached_flag_peek(flag, &value))
		return value;
	flag->relid = get_relname_relid(flag->relname,
									get_namespace_oid("agentretry", false));
	ar_run(&flag->query, NULL, NULL, false);
	flag->value = DatumGetBool(first_value(&isnull));
	flag->known = !IsolationUsesXactSnapshot();
	flag->lxid = IsolationUsesXactSnapshot() ? MyProc->lxid : InvalidLocalTransactionId;
	return flag->value;
}

PG_FUNCTION_INFO_V1(agentretry_invalidate_cache);

/*
 * invalidate_cache() returns trigger
 *
 * Statement trigger: every backend forgets what it cached about this
 * table, once this transaction commits.
 */
Datum
agentretry_invalidate_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("invalidate_cache() must be called as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
