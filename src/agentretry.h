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

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* SQLSTATEs of the documented error classes */
#define ERRCODE_AR_FINGERPRINT_CONFLICT	MAKE_SQLSTATE('A','R','0','0','1')
#define ERRCODE_AR_LEASE_LOST			MAKE_SQLSTATE('A','R','0','0','2')
#define ERRCODE_AR_UNKNOWN_KEY			MAKE_SQLSTATE('A','R','0','0','3')
#define ERRCODE_AR_INVALID_STATE		MAKE_SQLSTATE('A','R','0','0','4')

#define AR_SHA256_LEN		32
#define AR_MAX_KEY_LEN		512
#define AR_MAX_NAME_LEN		128
#define AR_DEFAULT_TENANT	"default"
#define AR_DEFAULT_TOOL		"default"

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
	OP_CANCELLED
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
	OUT_DENIED
} Outcome;

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
	ACT_DEAD
} DecisionAction;

/* types.c: label tables and conversions */
extern const char *const op_state_labels[];
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
extern int64 interval_usec(const Interval *iv);
extern Interval *usec_interval(int64 usec);
extern TimestampTz ts_add_usec(TimestampTz ts, int64 usec);
extern TupleDesc result_tupdesc(FunctionCallInfo fcinfo);

/* validate.c: argument checks shared by the SQL-callable functions */
extern char *arg_key(FunctionCallInfo fcinfo, int argno);
extern char *arg_tenant(FunctionCallInfo fcinfo, int argno);
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

/*
 * policy.c: tier defaults merged with a tool's registered fields and the
 * tenant's overrides.  Fields in effective_policy() order.
 */
typedef enum PolicyField
{
	PF_IDEMPOTENCY,
	PF_SIDE_EFFECT,
	PF_MAX_ATTEMPTS,
	PF_BASE_DELAY,
	PF_MAX_DELAY,
	PF_MULTIPLIER,
	PF_JITTER,
	PF_DEADLINE,
	PF_LEASE,
	PF_TTL,
	PF_COMPENSATE_TOOL,
	PF_COUNT
} PolicyField;

/* where a merged field came from, lowest precedence first */
typedef enum PolicySource
{
	SRC_DEFAULT,
	SRC_TOOL,
	SRC_TENANT,
	SRC_TENANT_TOOL
} PolicySource;

typedef struct Policy
{
	bool		registered;
	Idempotency idempotency;
	SideEffect	side_effect;
	int			max_attempts;
	int64		base_delay;
	int64		max_delay;
	double		multiplier;
	JitterMode	jitter;
	int64		deadline;		/* USEC_NONE: no deadline */
	int64		lease;
	int64		ttl;
	char	   *compensate_tool;	/* or NULL */
	PolicySource source[PF_COUNT];
} Policy;

/*
 * The policy columns of a query over operations o: the tool's row (t), the
 * tenant's row for every tool (pw, tool '*') and for this tool (pt), each
 * a level of AR_POLICY_LEVEL.  policy_from_columns() reads them.
 */
#define AR_POLICY_LEVEL(x) \
	x ".max_attempts, " x ".base_delay, " x ".max_delay, " x ".multiplier, " \
	x ".jitter::text, " x ".deadline, " x ".lease, " x ".ttl, " x ".compensate_tool"
#define AR_POLICY_LEVEL_NCOLUMNS 9
#define AR_POLICY_COLUMNS \
	"t.idempotency::text, t.side_effect::text, " AR_POLICY_LEVEL("t") ", " \
	AR_POLICY_LEVEL("pw") ", " AR_POLICY_LEVEL("pt")
#define AR_POLICY_NCOLUMNS (2 + 3 * AR_POLICY_LEVEL_NCOLUMNS)
#define AR_POLICY_JOINS \
	" LEFT JOIN agentretry.tools t ON t.name = o.tool" \
	" LEFT JOIN agentretry.tenant_policies pw" \
	"   ON pw.tenant = o.tenant AND pw.tool = '*'" \
	" LEFT JOIN agentretry.tenant_policies pt" \
	"   ON pt.tenant = o.tenant AND pt.tool = o.tool"

extern const char *const policy_source_labels[];
extern void policy_tier_defaults(Policy *p, SideEffect side_effect);
extern void policy_from_columns(Policy *p, HeapTuple tup, TupleDesc desc,
								int firstcol);

/* operation.c: the operations table, through cached SPI plans */
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
	Policy		policy;			/* filled by operation_load() */
} Operation;

extern void param_text(Datum *values, char *nulls, int i, const char *s);
extern void param_ts(Datum *values, char *nulls, int i, TimestampTz ts);
extern void param_usec(Datum *values, char *nulls, int i, int64 usec);
extern void param_label(Datum *values, char *nulls, int i,
						const char *const *labels, int index);
extern void ar_spi_begin(void);
extern void ar_spi_end(void);
extern SPIPlanPtr ar_prepare(SPIPlanPtr *cache, const char *sql, int nargs,
							 const Oid *argtypes);
extern uint64 ar_execute(SPIPlanPtr plan, Datum *values, const char *nulls,
						 bool read_only, long count);

/*
 * The select list that operation_from_row() reads: tenant, key, the
 * operation's columns, then AR_POLICY_COLUMNS (FROM operations o with
 * AR_POLICY_JOINS).  Queries may add columns after it.
 */
extern const char *const operation_select_list;
#define AR_OP_SELECT_NCOLUMNS (2 + 20 + AR_POLICY_NCOLUMNS)
extern void operation_from_row(HeapTuple tup, TupleDesc desc, Operation *op);
extern bool operation_load(const char *tenant, const char *key, Operation *op);
extern bool operation_peek(const char *tenant, const char *key, Operation *op);
extern bool operation_insert(Operation *op, Jsonb *args, int64 lease_usec,
							 TimestampTz now);
extern void operation_store(const Operation *op, TimestampTz now);
extern bool operation_complete(Operation *op, int64 lease_token,
							   Jsonb *result, const char *reason,
							   const char *compensate_tool,
							   Jsonb *compensate_args, bool for_event,
							   TimestampTz now);
extern Datum operation_row(const char *tenant, const char *key, bool *found);
extern Jsonb *operation_last_error(const Operation *op);
extern void operation_set_terminal(Operation *op, OpState state,
								   const char *reason);
extern void expire_lease(Operation *op, TimestampTz now, Decision *d);
extern void budget_deny(Decision *d, TimestampTz deadline, TimestampTz at,
						TimestampTz now);
extern bool retry_too_late(const Operation *op, TimestampTz now);
extern void dead_letter(Operation *op, const char *reason, TimestampTz now);
extern void apply_failure(Operation *op, FailureClass failure,
						  FailurePhase phase, const char *code,
						  const char *message, int64 retry_after,
						  int64 elapsed, TimestampTz now, Decision *d);
extern void check_fencing(const Operation *op, int64 lease_token);
extern void check_token(const Operation *op, int64 lease_token);
extern void report_unknown_key(const char *tenant, const char *key);
extern bool op_state_terminal(OpState s);

/* claim.c: the transitions of claim(), shared with claim_due() */
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

extern void claim_transition(Operation *op, const ClaimRequest *req,
							 ClaimAnswer *a);

/* cache.c: does an optional table hold rows?  (cached per backend) */
typedef struct RowsFlag
{
	const char *relname;		/* table in schema agentretry */
	const char *sql;			/* SELECT EXISTS (...) */
	Oid			relid;
	bool		registered;
	bool		known;
	bool		value;
	uint64		generation;		/* counts invalidations, for dependent caches */
	SPIPlanPtr	plan;
} RowsFlag;

extern bool cached_flag(RowsFlag *flag);
extern bool tenant_policies_exist(void);

/* budget.c: retry budgets and the per-run limit */
extern bool budget_allow_retry(const Operation *op, FailureClass fc,
							   TimestampTz now, TimestampTz *retry_at,
							   const char **reason);
extern void budget_count_first_attempt(const Operation *op, const char *owner,
									   TimestampTz now);

/* events.c */
typedef struct EventData
{
	const char *kind;
	const Operation *op;
	int			failure_class;	/* -1: none */
	int			failure_phase;	/* -1: none */
	const char *code;
	const char *message;
	const char *reason;
	int64		delay;			/* USEC_NONE: none */
	TimestampTz at;
} EventData;

extern void record_event(const EventData *ev);
extern void record_simple_event(const char *kind, const Operation *op,
								const char *reason, TimestampTz at);

#endif							/* AGENTRETRY_H */
