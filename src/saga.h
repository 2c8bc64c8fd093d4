/*-------------------------------------------------------------------------
 *
 * saga.h
 *	  Compensation of a run's steps, in reverse completion order.
 *
 * src/saga.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_SAGA_H
#define AGENTRETRY_SAGA_H

#include "operation.h"

extern void saga_cancel_step(Operation *op, TimestampTz now);
extern int	saga_advance(const char *tenant, const char *run_id,
						 TimestampTz now);
extern void record_run_event(const char *kind, const char *tenant,
							 const char *run_id, const char *reason,
							 bool by_actor, TimestampTz now);

#endif							/* AGENTRETRY_SAGA_H */
