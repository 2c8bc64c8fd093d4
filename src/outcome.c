/*-------------------------------------------------------------------------
 *
 * outcome.c
 *	  complete(), fail() and resolve(): recording what an attempt or a
 *	  verification found out.
 *
 * complete() is one UPDATE whose WHERE clause is the fencing check, so
 * the success path costs one statement; only a refused call reads the row
 * again, to say why, or to complete under the row lock an operation of a
 * run that is no longer running (a late success in a saga must schedule
 * its compensation).  fail() and resolve() lock the row FOR UPDATE, decide
 * (decide.c) with the tool's policy and store the decision.
 *
 * src/outcome.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "anomaly.h"
#include "events.h"
#include "saga.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

/* evidence observed during the attempt names another receipt */
static bool
evidence_differs(const Operation *op, const char *receipt)
{
	return op->observed_receipt != NULL && receipt != NULL &&
		strcmp(op->observed_receipt, receipt) != 0;
}

/*
 * The holder completed with receipt, but evidence observed during its
 * attempt named another: the side effect happened twice.
 */
static void
record_duplicate(const Operation *op, const char *other, const char *found_by,
				 TimestampTz now)
{
	AnomalyData an;
	StringInfoData detail;

	anomaly_init(&an, "duplicate_side_effect", op, now);
	an.receipt = other;
	an.attempt = op->attempts;
	detail_begin(&detail);
	detail_text(&detail, "stored_receipt", op->receipt);
	detail_text(&detail, "observed_receipt", other);
	detail_text(&detail, "found_by", found_by);
	an.detail = detail_end(&detail);
	record_anomaly(&an);
}

/*
 * The operation awaited verification and observe() resolved it (reason
 * observed; a correction has reason corrected): the caller's token, still
 * the newest, is the verification's.
 */
static bool
resolved_by_evidence(const Operation *op)
{
	return op->state == OP_SUCCEEDED && op->reason != NULL &&
		strcmp(op->reason, "observed") == 0;
}

/*
 * The fast UPDATE of complete() changed nothing.  Either the fencing check
 * failed (say why), or the operation is a step of a run that is no longer
 * running, or evidence observed during the attempt names another receipt:
 * complete it under its row lock, and if the run is being compensated,
 * move the saga on (the late success is undone too); record a duplicate
 * side effect.
 */
static void
complete_refused(Operation *done, int64 lease_token, Jsonb *result,
				 const char *receipt, const char *compensate_tool,
				 Jsonb *compensate_args, TimestampTz now)
{
	Operation	op;
	const char *tenant = done->tenant;
	const char *key = done->key;
	char	   *observed;

	if (!operation_peek(tenant, key, &op))
		report_unknown_key(tenant, key);
	check_fencing(&op, lease_token);
	if (op.run_id != NULL || evidence_differs(&op, receipt))
	{
		if (!operation_load(tenant, key, &op))
			report_unknown_key(tenant, key);
		check_fencing(&op, lease_token);
		now = GetCurrentTimestamp();	/* after any wait for the row lock */
		learn_run_state(&op);
		observed = evidence_differs(&op, receipt) ? op.observed_receipt : NULL;
		if (!operation_complete(&op, lease_token, result, receipt, NULL,
								compensate_tool, compensate_args, true, true,
								now))
			elog(ERROR, "agentretry: operation \"%s\" changed while locked", key);
		if (observed != NULL)
			record_duplicate(&op, observed, "complete", now);
		if (ar_trace_all)
			record_simple_event("complete", &op, NULL, now);
		stats_count_success(&op, now);
		if (op.compensating)
			saga_advance(op.tenant, op.run_id, now);
		return;
	}
	/* the row changed between the UPDATE and this read */
	ereport(ERROR,
			(errcode(ERRCODE_AR_LEASE_LOST),
			 errmsg("lease on operation \"%s\" was lost", key),
			 errdetail("The operation changed concurrently.")));
}

PG_FUNCTION_INFO_V1(agentretry_complete);

/*
 * complete(key text, lease_token bigint, result jsonb DEFAULT NULL, tenant
 *			text DEFAULT NULL, compensate_tool text DEFAULT NULL,
 *			compensate_args jsonb DEFAULT NULL, receipt text DEFAULT NULL)
 *			returns void
 *
 * Records success, its result and its receipt (the provider's reference of
 * the side effect).  Accepted exactly when lease_token is the newest
 * issued for the key and the operation is not terminal (an expired lease
 * nobody took over still completes: the work was done); otherwise raises
 * AR002, which in pattern A rolls the side effect back.  Evidence that
 * observe() reported during the attempt is compared: another receipt is
 * recorded as a duplicate_side_effect anomaly; without a receipt here, the
 * observed one is stored.
 */
Datum
agentretry_complete(PG_FUNCTION_ARGS)
{
	Operation	op;
	int64		lease_token;
	Jsonb	   *result;
	char	   *compensate_tool;
	Jsonb	   *compensate_args;
	char	   *receipt;
	TimestampTz now = GetCurrentTimestamp();
	ArSpi		spi;

	memset(&op, 0, sizeof(op));
	op.key = arg_key(fcinfo, 0);
	lease_token = arg_lease_token(fcinfo, 1);
	result = arg_payload(fcinfo, 2, "result", false);
	op.tenant = arg_tenant(fcinfo, 3);
	compensate_tool = arg_name(fcinfo, 4, "compensate_tool", NULL, AR_MAX_NAME_LEN);
	if (compensate_tool != NULL && strcmp(compensate_tool, "*") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tool name \"*\" is reserved"),
				 errhint("In tenant policies \"*\" stands for every tool of the tenant.")));
	compensate_args = arg_payload(fcinfo, 5, "compensate_args", false);
	/*
	 * called through the definition of an older version (before ALTER
	 * EXTENSION UPDATE), which has no receipt: never read past the
	 * arguments given (the call then fails on the old schema, cleanly)
	 */
	receipt = PG_NARGS() > 6 ?
		arg_name(fcinfo, 6, "receipt", NULL, AR_MAX_KEY_LEN) : NULL;

	ar_spi_begin(&spi);
	if (!operation_complete(&op, lease_token, result, receipt, NULL,
							compensate_tool, compensate_args,
							ar_trace_all || ar_track_stats, false, now))
		complete_refused(&op, lease_token, result, receipt, compensate_tool,
						 compensate_args, now);
	else
	{
		if (ar_trace_all)
			record_simple_event("complete", &op, NULL, now);
		stats_count_success(&op, now);
	}
	stats_maybe_flush(now, false);
	ar_spi_end(&spi);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(agentretry_fail);

/*
 * fail(key text, lease_token bigint, failure failure_class, phase
 *		failure_phase DEFAULT NULL, code text DEFAULT NULL, message text
 *		DEFAULT NULL, retry_after interval DEFAULT NULL, tenant text DEFAULT
 *		NULL) returns decision
 *
 * Records a failed attempt and returns what happens next: retry at
 * retry_at, verify, or dead.  attempt in the result is the number of the
 * attempt that failed.  Raises AR002 like complete(), and AR004 while the
 * operation awaits verification (resolve() ends that).
 */
Datum
agentretry_fail(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	int64		lease_token = arg_lease_token(fcinfo, 1);
	FailureClass failure;
	FailurePhase phase;
	char	   *code;
	char	   *message;
	int64		retry_after = USEC_NONE;
	char	   *tenant;
	TimestampTz now;
	Operation	op;
	Decision	d;
	ArSpi		spi;
	Datum		result;

	check_not_null(fcinfo, 2, "failure");
	failure = (FailureClass) enum_datum_index(failure_class_labels, PG_GETARG_DATUM(2));
	phase = PG_ARGISNULL(3) ? PHASE_UNKNOWN :
		(FailurePhase) enum_datum_index(failure_phase_labels, PG_GETARG_DATUM(3));
	code = arg_name(fcinfo, 4, "code", NULL, AR_MAX_NAME_LEN);
	message = arg_optional_text(fcinfo, 5, "message");
	if (!PG_ARGISNULL(6))
	{
		retry_after = interval_usec(PG_GETARG_INTERVAL_P(6));
		if (retry_after < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("retry_after must not be negative")));
	}
	tenant = arg_tenant(fcinfo, 7);

	ar_spi_begin(&spi);
	if (!operation_load(tenant, key, &op))
		report_unknown_key(tenant, key);
	now = GetCurrentTimestamp();	/* after any wait for the row lock */
	check_fencing(&op, lease_token);
	if (op.state == OP_VERIFY)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot fail operation \"%s\" while it awaits verification", key),
				 errhint("Call resolve() with what the target system says, or release() to give the verification lease back.")));
	apply_failure(&op, failure, phase, code, message, retry_after, 0, now, &d);
	transition_store(&op, now);
	stats_maybe_flush(now, false);

	MemoryContextSwitchTo(spi.caller);
	result = decision_datum(fcinfo, &d);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result);
}

/*
 * A verification found the action never happened: like a transient failure
 * before execution, but due at once (the verification took its time) and
 * still bounded by max_attempts, the deadline and the tier rules.
 */
static void
resolve_not_executed(Operation *op, TimestampTz now)
{
	Decision	d;

	apply_failure(op, FC_TRANSIENT, PHASE_PRE, "verified_not_executed", NULL,
				  USEC_NONE, PG_INT64_MAX, now, &d);
	transition_store(op, now);
}

PG_FUNCTION_INFO_V1(agentretry_resolve);

/*
 * resolve(key text, lease_token bigint, executed boolean, result jsonb
 *		   DEFAULT NULL, tenant text DEFAULT NULL, receipt text DEFAULT NULL)
 *		   returns operation_state
 *
 * Ends a verification.  executed = true stores the result and receipt and
 * the operation succeeds; false makes it due for retry (or dead when no retry
 * is allowed).  Returns the new state.  Raises AR002 unless lease_token is
 * the newest, then AR004 unless the operation awaits verification; except
 * that when observe() resolved it during this verification, executed =
 * true agrees and returns succeeded: the result is stored if the operation
 * has none, and another receipt than the observed one is recorded as a
 * duplicate_side_effect.
 */
Datum
agentretry_resolve(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	int64		lease_token = arg_lease_token(fcinfo, 1);
	bool		executed;
	Jsonb	   *result;
	char	   *tenant;
	char	   *receipt;
	TimestampTz now;
	Operation	op;
	OpState		state;
	ArSpi		spi;

	check_not_null(fcinfo, 2, "executed");
	executed = PG_GETARG_BOOL(2);
	result = arg_payload(fcinfo, 3, "result", false);
	tenant = arg_tenant(fcinfo, 4);
	/* as in complete(): an older definition passes no receipt */
	receipt = PG_NARGS() > 5 ?
		arg_name(fcinfo, 5, "receipt", NULL, AR_MAX_KEY_LEN) : NULL;

	ar_spi_begin(&spi);
	if (!operation_load(tenant, key, &op))
		report_unknown_key(tenant, key);
	now = GetCurrentTimestamp();	/* after any wait for the row lock */
	/* a superseded verifier is told so, whatever state the key went on to */
	check_token(&op, lease_token);
	if (executed && resolved_by_evidence(&op))
	{
		/*
		 * observe() resolved it during this verification: the verifier
		 * agrees that it happened; another receipt is a second side effect.
		 */
		if (receipt != NULL && op.receipt != NULL && strcmp(receipt, op.receipt) != 0)
			record_duplicate(&op, receipt, "resolve", now);
		if (result != NULL && !op.has_result)
			operation_store_late_result(&op, result, now);
		ar_spi_end(&spi);
		PG_RETURN_DATUM(result_label_datum(fcinfo, op_state_labels[OP_SUCCEEDED]));
	}
	if (op.state != OP_VERIFY)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot resolve operation \"%s\" because it is %s",
						key, op_state_labels[op.state]),
				 errhint("Only an operation awaiting verification can be resolved.")));

	learn_run_state(&op);
	if (executed)
	{
		if (!operation_complete(&op, lease_token, result, receipt,
								"verified_executed", NULL, NULL, true, true, now))
			elog(ERROR, "agentretry: operation \"%s\" changed while locked", key);
		record_simple_event("resolve", &op, "verified_executed", now);
		stats_count_success(&op, now);
		if (op.compensating)
			saga_advance(op.tenant, op.run_id, now);
	}
	else
		resolve_not_executed(&op, now);
	state = op.state;
	stats_maybe_flush(now, false);
	ar_spi_end(&spi);

	PG_RETURN_DATUM(result_label_datum(fcinfo, op_state_labels[state]));
}

PG_FUNCTION_INFO_V1(agentretry_lookup);

/*
 * lookup(key text, tenant text DEFAULT NULL) returns operations
 *
 * One operation row.  Raises AR003 when the key does not exist.
 */
Datum
agentretry_lookup(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	bool		found;
	Datum		row;
	ArSpi		spi;

	ar_spi_begin(&spi);
	row = operation_row(tenant, key, &found);
	if (!found)
		report_unknown_key(tenant, key);
	MemoryContextSwitchTo(spi.caller);
	row = PointerGetDatum(DatumGetHeapTupleHeaderCopy(row));
	ar_spi_end(&spi);
	PG_RETURN_DATUM(row);
}
