/*-------------------------------------------------------------------------
 *
 * agentretry.h
 *	  Shared declarations of the agentretry extension.
 *
 * Vocabulary: an *operation* is one side-effecting tool call named by an
 * idempotency key; an *attempt* is one execution of it under a *lease*; the
 * lease's *fencing token* (lease_token) grows with every lease issued for
 * the key, so only the newest holder may record an outcome.  A *policy* is
 * the merged retry configuration of the operation's tool.
 *
 * src/agentretry.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_H
#define AGENTRETRY_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/jsonb.h"

/* SQLSTATEs of the documented error classes */
#define ERRCODE_AR_FINGERPRINT_CONFLICT	MAKE_SQLSTATE('A','R','0','0','1')
#define ERRCODE_AR_LEASE_LOST			MAKE_SQLSTATE('A','R','0','0','2')
#define ERRCODE_AR_UNKNOWN_KEY			MAKE_SQLSTATE('A','R','0','0','3')
#define ERRCODE_AR_INVALID_STATE		MAKE_SQLSTATE('A','R','0','0','4')
#define ERRCODE_AR_CONTEXT_CONFLICT		MAKE_SQLSTATE('A','R','0','0','5')

#define AR_SHA256_LEN		32
#define AR_MAX_KEY_LEN		512
#define AR_MAX_NAME_LEN		128
#define AR_DEFAULT_TENANT	"default"
#define AR_DEFAULT_TOOL		"default"
#define AR_COMPENSATE_SUFFIX ":compensate"	/* of a compensation's key */

/* "no value" markers for timestamps and delays kept in C structs */
#define TS_NONE				DT_NOBEGIN
#define USEC_NONE			((int64) -1)

/* GUCs (agentretry.c) */
extern int	ar_default_lease_sec;
extern int	ar_default_ttl_sec;
extern int	ar_max_payload;
extern int	ar_event_retention_sec;
extern bool ar_trace_all;
extern int	ar_deadline_grace_sec;
extern int	ar_run_max_retries;
extern int	ar_verify_stale_after_sec;
extern bool ar_track_stats;
extern bool ar_allow_uncommitted_leases;

/*
 * C mirrors of the SQL enums.  The order matches the SQL label order; the
 * label tables in types.c convert between the two.
 */
typedef enum OpState
{
	OP_IN_PROGRESS,
	OP_RETRY_WAIT,
	OP_VERIFY,
	OP_SUCCEEDED,
	OP_DEAD,
	OP_CANCELLED,
	OP_AWAITING_APPROVAL
} OpState;

typedef enum Outcome
{
	OUT_EXECUTE,
	OUT_REPLAY,
	OUT_BUSY,
	OUT_WAIT,
	OUT_VERIFY,
	OUT_DEAD,
	OUT_CANCELLED,
	OUT_DENIED,
	OUT_APPROVAL
} Outcome;

typedef enum RunState
{
	RUN_RUNNING,
	RUN_SUCCEEDED,
	RUN_FAILED,
	RUN_COMPENSATING,
	RUN_COMPENSATED,
	RUN_NEEDS_REVIEW
} RunState;

typedef enum FailureClass
{
	FC_TRANSIENT,
	FC_PERMANENT,
	FC_AMBIGUOUS
} FailureClass;

/* PHASE_UNKNOWN stands for SQL NULL and is decided like mid_execution */
typedef enum FailurePhase
{
	PHASE_PRE,
	PHASE_MID,
	PHASE_POST,
	PHASE_UNKNOWN
} FailurePhase;

typedef enum Idempotency
{
	IDEM_IDEMPOTENT,
	IDEM_NON_IDEMPOTENT,
	IDEM_UNKNOWN
} Idempotency;

typedef enum SideEffect
{
	SE_READ,
	SE_WRITE,
	SE_DESTRUCTIVE
} SideEffect;

typedef enum JitterMode
{
	JITTER_NONE,
	JITTER_FULL,
	JITTER_EQUAL,
	JITTER_DECORRELATED
} JitterMode;

typedef enum DecisionAction
{
	ACT_RETRY,
	ACT_VERIFY,
	ACT_DEAD,
	ACT_SUCCEEDED				/* late evidence: it happened (never decided) */
} DecisionAction;

/* types.c: label tables and conversions */
extern const char *const op_state_labels[];
extern const char *const run_state_labels[];
extern const char *const outcome_labels[];
extern const char *const failure_class_labels[];
extern const char *const failure_phase_labels[];
extern const char *const idempotency_labels[];
extern const char *const side_effect_labels[];
extern const char *const jitter_labels[];
extern const char *const action_labels[];

extern int	label_index(const char *const *labels, const char *label);
extern int	enum_datum_index(const char *const *labels, Datum enumval);
extern Datum label_enum_datum(Oid enumtypoid, const char *label);
extern Datum result_label_datum(FunctionCallInfo fcinfo, const char *label);
extern int64 interval_usec(const Interval *iv);
extern Interval *usec_interval(int64 usec);
extern TimestampTz ts_add_usec(TimestampTz ts, int64 usec);
extern TupleDesc result_tupdesc(FunctionCallInfo fcinfo);

/* guard.c: the pattern-B trap */
extern void guard_init(void);
extern bool lease_guarded(FunctionCallInfo fcinfo, int argno);
extern void refuse_uncommitted_lease(const char *fn) pg_attribute_noreturn();

/* validate.c: argument checks shared by the SQL-callable functions */
extern char *arg_key(FunctionCallInfo fcinfo, int argno);
extern int	arg_max(FunctionCallInfo fcinfo, int argno, int limit);
extern char *arg_tool(FunctionCallInfo fcinfo, int argno);
extern char *arg_name(FunctionCallInfo fcinfo, int argno, const char *what,
					  const char *dflt, int maxlen);
extern char *arg_optional_text(FunctionCallInfo fcinfo, int argno,
							   const char *what);
extern int64 arg_lease_token(FunctionCallInfo fcinfo, int argno);
extern int64 arg_lease_usec(FunctionCallInfo fcinfo, int argno,
							const char *what);
extern Jsonb *arg_payload(FunctionCallInfo fcinfo, int argno,
						  const char *what, bool required);
extern void check_not_null(FunctionCallInfo fcinfo, int argno,
						   const char *what);

/* op_hash.c */
extern bytea *compute_op_hash(Jsonb *args, ArrayType *ignore);

/* backoff.c */
extern int64 backoff_usec(int attempt, int64 base, int64 cap,
						  double multiplier, JitterMode jitter,
						  int64 previous);

/* decide.c: the decision matrix, free of I/O */
typedef struct DecisionInput
{
	FailureClass failure;
	FailurePhase phase;
	Idempotency idempotency;
	SideEffect	side_effect;
	int			attempt;		/* attempts made so far, >= 1 */
	int			max_attempts;
	int64		delay;			/* jittered backoff, usec */
	int64		retry_after;	/* server-directed minimum, usec or USEC_NONE */
	TimestampTz deadline;		/* or TS_NONE */
	TimestampTz now;
} DecisionInput;

typedef struct Decision
{
	DecisionAction action;
	TimestampTz retry_at;		/* TS_NONE unless action is retry */
	int64		delay;			/* retry_at - now, usec; USEC_NONE if none */
	int			attempt;
	const char *reason;
} Decision;

extern void decide_failure(const DecisionInput *in, Decision *out);
extern Datum decision_datum(FunctionCallInfo fcinfo, const Decision *d);

/* one of the terminal states: succeeded, dead, cancelled */
extern bool op_state_terminal(OpState s);

#endif							/* AGENTRETRY_H */
