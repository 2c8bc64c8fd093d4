/*-------------------------------------------------------------------------
 *
 * agentretry.c
 *	  Module entry point and configuration (GUCs) of agentretry.
 *
 * Layers, each depending only on those below it (src/README.md):
 *
 *	  SQL-callable   claim.c, outcome.c, lease.c, schedule.c (claim_due),
 *	                 sweep.c, operator.c, approval.c, run.c, observe.c,
 *	                 reconcile.c, and the pure functions of decide.c,
 *	                 backoff.c, op_hash.c
 *	  transitions    transition.c (the state machine, fencing)
 *	  rules          budget.c, events.c, saga.c, anomaly.c, stats.c
 *	  rows           operation.c, runs.c
 *	  configuration  policy.c, tenancy.c, cache.c
 *	  SPI            spi.c
 *	  pure           agentretry.h: types.c, validate.c, guard.c,
 *	                 decide.c, backoff.c, op_hash.c
 *
 * src/agentretry.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "agentretry.h"
#include "stats.h"

PG_MODULE_MAGIC;

int			ar_default_lease_sec = 300;
int			ar_default_ttl_sec = 7 * SECS_PER_DAY;
int			ar_max_payload = 1024 * 1024;
int			ar_event_retention_sec = 30 * SECS_PER_DAY;
bool		ar_trace_all = false;
int			ar_deadline_grace_sec = 60;
int			ar_run_max_retries = 5;
int			ar_verify_stale_after_sec = 15 * SECS_PER_MINUTE;
bool		ar_track_stats = true;
bool		ar_allow_uncommitted_leases = false;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("agentretry.default_lease",
							gettext_noop("Lease granted by claim() when neither the call nor the tool sets one."),
							NULL,
							&ar_default_lease_sec,
							300, 1, SECS_PER_DAY,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.default_ttl",
							gettext_noop("How long a terminal operation is kept before it may be purged, unless its tool sets a TTL."),
							NULL,
							&ar_default_ttl_sec,
							7 * SECS_PER_DAY, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.max_payload",
							gettext_noop("Largest args, result or message accepted, in bytes."),
							NULL,
							&ar_max_payload,
							1024 * 1024, 1024, MaxAllocSize / 2,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.event_retention",
							gettext_noop("How long rows of agentretry.events are kept."),
							NULL,
							&ar_event_retention_sec,
							30 * SECS_PER_DAY, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("agentretry.trace_all",
							 gettext_noop("Also trace claims, replays and completions in agentretry.events."),
							 NULL,
							 &ar_trace_all,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.deadline_grace",
							gettext_noop("How long after its deadline a retry scheduled within it may still start."),
							gettext_noop("After that, claims refuse it and the sweep dead-letters it (deadline_exceeded)."),
							&ar_deadline_grace_sec,
							60, 0, SECS_PER_DAY,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.run_max_retries",
							gettext_noop("Most retry events allowed per run, unless start_run() sets max_retry_events."),
							gettext_noop("A retry beyond it is denied and dead-lettered (budget_exhausted)."),
							&ar_run_max_retries,
							5, 0, INT_MAX,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("agentretry.verify_stale_after",
							gettext_noop("How long an operation may await verification before reconcile() reports it (stale_verification)."),
							NULL,
							&ar_verify_stale_after_sec,
							15 * SECS_PER_MINUTE, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("agentretry.track_stats",
							 gettext_noop("Count attempts, replays, successes and the rest for stats()."),
							 gettext_noop("Counts are kept in memory and written about once a second per session."),
							 &ar_track_stats,
							 true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("agentretry.allow_uncommitted_leases",
							 gettext_noop("Let claim() and claim_due() lease inside a transaction block without in_transaction => true."),
							 gettext_noop("A lease taken in a transaction block is lost if the block does not commit; if the side effect happened meanwhile, the next claim executes it again."),
							 &ar_allow_uncommitted_leases,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	stats_init();
	guard_init();

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("agentretry");
#else
	EmitWarningsOnPlaceholders("agentretry");
#endif
}
