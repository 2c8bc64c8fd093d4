/*-------------------------------------------------------------------------
 *
 * reconcile.h
 *	  One round of reconciliation, for the sweep.
 *
 * src/reconcile.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_RECONCILE_H
#define AGENTRETRY_RECONCILE_H

#include "operation.h"

extern int	reconcile_round(TimestampTz now, int max, bool *more);

#endif							/* AGENTRETRY_RECONCILE_H */
