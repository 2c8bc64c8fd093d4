/*-------------------------------------------------------------------------
 *
 * runs.h
 *	  Rows of agentretry.runs and agentretry.run_context.
 *
 * src/runs.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_RUNS_H
#define AGENTRETRY_RUNS_H

#include "spi.h"

typedef struct Run
{
	char	   *tenant;
	char	   *run_id;
	RunState	state;
	char	   *workflow_version;
	char	   *correlation_id;
	int32		max_retry_events;	/* -1: the GUC's */
	int32		retry_events;
	int32		context_version;
} Run;

/* how run_lock() locks the row */
typedef enum RunLock
{
	RUN_LOCK_NONE,
	RUN_LOCK_NO_KEY_UPDATE,		/* changes of the run */
	RUN_LOCK_NO_KEY_UPDATE_SKIP,	/* the same, or nothing if another holds it */
	RUN_LOCK_UPDATE				/* a change that claims of new keys wait for */
} RunLock;

extern RunState run_join(const char *tenant, const char *run_id,
						 TimestampTz now);
extern bool run_read(const char *tenant, const char *run_id, RunLock lock,
					 Run *run);
extern void run_set_state(const char *tenant, const char *run_id,
						  RunState state, TimestampTz now);
extern void report_unknown_run(const char *tenant, const char *run_id);
extern void report_run_state(const char *action, const Run *run,
							 const char *hint);

#endif							/* AGENTRETRY_RUNS_H */
