/*-------------------------------------------------------------------------
 *
 * operation.h
 *	  Rows of agentretry.operations: reading, locking and writing them.
 *
 * src/operation.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_OPERATION_H
#define AGENTRETRY_OPERATION_H

#include "policy.h"

typedef struct Operation
{
	char	   *tenant;
	char	   *key;
	OpState		state;
	bytea	   *op_hash;
	char	   *tool;
	int32		attempts;
	int64		lease_token;
	char	   *lease_owner;
	TimestampTz lease_expires_at;
	TimestampTz next_attempt_at;
	TimestampTz first_attempt_at;
	TimestampTz last_attempt_at;
	TimestampTz deadline;
	int			failure_class;	/* FailureClass, or -1 */
	int			failure_phase;	/* FailurePhase, or -1 */
	char	   *failure_code;
	char	   *failure_message;
	int64		last_delay;
	char	   *reason;
	Datum		result;			/* jsonb, valid when has_result */
	bool		has_result;
	char	   *run_id;
	char	   *step;
	char	   *compensation_of;	/* the step a compensation undoes */
	bool		compensating;	/* its run is being compensated */
	char	   *receipt;		/* the side effect's external reference */
	char	   *observed_receipt;	/* evidence that came while leased */
	TimestampTz reconcile_at;	/* when reconcile() looks at it */
	bool		run_checked;	/* the run's state was looked at (transition.c) */
	Policy		policy;			/* filled by the locking reads */
} Operation;

/* the operation's own columns, in the order operation_from_row() reads */
#define AR_OP_COLUMNS \
	"o.state, o.op_hash, o.tool, o.attempts, o.lease_token, " \
	"o.lease_owner, o.lease_expires_at, o.next_attempt_at, " \
	"o.first_attempt_at, o.last_attempt_at, o.deadline, " \
	"o.last_failure_class, o.last_failure_phase, " \
	"o.last_failure_code, o.last_failure_message, o.last_delay, o.reason, " \
	"o.result, o.run_id, o.step, o.compensation_of, o.compensating, " \
	"o.receipt, o.observed_receipt, o.reconcile_at"
#define AR_OP_NCOLUMNS 25

/*
 * The select list that operation_from_row() reads: tenant, key, the
 * operation's columns, then AR_POLICY_COLUMNS (FROM operations o with
 * AR_POLICY_JOINS).  Queries may add columns after it.
 */
#define AR_OP_SELECT "o.tenant, o.key, " AR_OP_COLUMNS ", " AR_POLICY_COLUMNS
#define AR_OP_SELECT_NCOLUMNS (2 + AR_OP_NCOLUMNS + AR_POLICY_NCOLUMNS)

extern void operation_from_row(HeapTuple tup, TupleDesc desc, Operation *op);
extern bool operation_load(const char *tenant, const char *key, Operation *op);
extern bool operation_peek(const char *tenant, const char *key, Operation *op);
extern bool operation_insert(Operation *op, Jsonb *args, int64 lease_usec,
							 TimestampTz now);
extern void operation_store(const Operation *op, TimestampTz now);
extern bool operation_complete(Operation *op, int64 lease_token,
							   Jsonb *result, const char *receipt,
							   const char *reason,
							   const char *compensate_tool,
							   Jsonb *compensate_args, bool want_row,
							   bool late, TimestampTz now);
extern void operation_store_receipts(const Operation *op, TimestampTz now);
extern void operation_store_late_result(const Operation *op, Jsonb *result,
									   TimestampTz now);
extern Datum operation_row(const char *tenant, const char *key, bool *found);
extern Jsonb *operation_last_error(const Operation *op);
extern void operation_set_terminal(Operation *op, OpState state,
								   const char *reason);

#endif							/* AGENTRETRY_OPERATION_H */
