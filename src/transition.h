/*-------------------------------------------------------------------------
 *
 * transition.h
 *	  The state transitions of an operation: claims, failures, expired
 *	  leases, dead-letters, and the fencing checks that guard them.
 *
 * src/transition.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_TRANSITION_H
#define AGENTRETRY_TRANSITION_H

#include "operation.h"

/* what a claim (or claim_due) asks for */
typedef struct ClaimRequest
{
	bytea	   *op_hash;
	const char *tool;
	const char *run_id;
	const char *step;
	const char *owner;
	int64		lease;			/* USEC_NONE: the policy's */
	TimestampTz now;
} ClaimRequest;

/* what a claim answers */
typedef struct ClaimAnswer
{
	Outcome		outcome;
	int			attempt;
	int64		lease_token;	/* -1: none */
	TimestampTz lease_expires_at;
	Datum		result;
	bool		has_result;
	TimestampTz retry_at;
	const char *reason;
} ClaimAnswer;

extern void answer_init(ClaimAnswer *a, Outcome outcome, const Operation *op);
extern bool answer_without_transition(const Operation *op, TimestampTz now,
									  ClaimAnswer *a);
extern void claim_transition(Operation *op, const ClaimRequest *req,
							 ClaimAnswer *a);
extern void transition_store(Operation *op, TimestampTz now);
extern void learn_run_state(Operation *op);
extern void saga_defer_begin(void);
extern void saga_defer_end(TimestampTz now);

extern void apply_failure(Operation *op, FailureClass failure,
						  FailurePhase phase, const char *code,
						  const char *message, int64 retry_after,
						  int64 elapsed, TimestampTz now, Decision *d);
extern void expire_lease(Operation *op, TimestampTz now, Decision *d);
extern void apply_evidence(Operation *op, const char *believed,
						   TimestampTz now);
extern void dead_letter(Operation *op, const char *reason, TimestampTz now);
extern bool retry_too_late(const Operation *op, TimestampTz now);

extern void check_fencing(const Operation *op, int64 lease_token);
extern void check_token(const Operation *op, int64 lease_token);
extern void report_unknown_key(const char *tenant, const char *key);

#endif							/* AGENTRETRY_TRANSITION_H */
