/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  The counts behind stats(): kept in memory per session, written to
 *	  agentretry.stats_counts about once a second.
 *
 * src/stats.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_STATS_H
#define AGENTRETRY_STATS_H

#include "operation.h"

/* the counters, in the column order of agentretry.stats_counts */
typedef enum StatCounter
{
	ST_FIRST_ATTEMPTS,
	ST_EXECUTIONS,
	ST_REPLAYS,
	ST_SUCCESSES,
	ST_SUCCESSES_AFTER_RETRY,
	ST_VERIFICATIONS,
	ST_DEAD_LETTERS,
	ST_BUDGET_DENIALS,
	ST_APPROVALS,
	ST_COMPENSATIONS_SUCCEEDED,
	ST_COMPENSATIONS_DEAD,
	ST_NCOUNTERS
} StatCounter;

/* buckets of completion_hist: agentretry.stats_buckets() */
#define ST_NBUCKETS 16

extern void stats_init(void);
extern void stats_stage_begin(void);
extern void stats_stage_end(bool keep);
extern void stats_count(const char *tenant, const char *tool, StatCounter c);
extern void stats_count_attempt(const Operation *op, bool first);
extern void stats_count_replay(const char *tenant, const char *tool);
extern void stats_count_success(const Operation *op, TimestampTz now);
extern void stats_count_dead(const Operation *op);
extern void stats_maybe_flush(TimestampTz now, bool force);

#endif							/* AGENTRETRY_STATS_H */
