/*-------------------------------------------------------------------------
 *
 * budget.h
 *	  Retry budgets and the per-run limit.
 *
 * src/budget.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_BUDGET_H
#define AGENTRETRY_BUDGET_H

#include "operation.h"

extern bool budget_allow_retry(const Operation *op, FailureClass fc,
							   TimestampTz now, TimestampTz *retry_at,
							   const char **reason);
extern void budget_count_first_attempt(const Operation *op, const char *owner,
									   TimestampTz now);

#endif							/* AGENTRETRY_BUDGET_H */
