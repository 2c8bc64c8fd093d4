/*-------------------------------------------------------------------------
 *
 * operator.c
 *	  requeue() and cancel(): what an operator does with an operation that
 *	  is stuck (dead-lettered, awaiting verification, or unwanted).
 *
 * Both lock the row like every transition and are always traced, with the
 * operator's role as the event's owner.
 *
 * src/operator.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "events.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

/* Lock the operation for an operator action, or raise AR003. */
static TimestampTz
load_for_operator(const char *tenant, const char *key, Operation *op)
{
	if (!operation_load(tenant, key, op))
		report_unknown_key(tenant, key);
	return GetCurrentTimestamp();	/* after any wait for the row lock */
}

static void
report_operator_state(const char *action, const Operation *op,
					  const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_AR_INVALID_STATE),
			 errmsg("cannot %s operation \"%s\" because it is %s",
					action, op->key, op_state_labels[op->state]),
			 errhint("%s", hint)));
}

/* the event of an operator action names the operator, not a worker */
static void
trace_operator(const char *kind, const Operation *op, const char *reason,
			   TimestampTz now)
{
	Operation	traced = *op;

	traced.lease_owner = current_actor();
	record_actor_event(kind, &traced, reason, NULL, now);
}

PG_FUNCTION_INFO_V1(agentretry_requeue);

/*
 * requeue(key text, tenant text DEFAULT NULL, reset_attempts boolean
 *		   DEFAULT false) returns operation_state
 *
 * Makes a dead, cancelled, waiting or unverified operation due now
 * (retry_wait), for claim_due() or a claim to run again.  The lease token
 * moves on, fencing out any earlier holder (a verifier that has not
 * resolved, say); the deadline restarts from now; with reset_attempts the
 * attempt count and backoff start again too, else the next attempt is
 * counted after the earlier ones (so a requeue of an operation that used
 * up max_attempts gives it one more attempt).  A compensation goes back to
 * its saga's queue (pending, due in its turn); an operation of a gated
 * tool that was never attempted (rejected, say) waits for approval again.
 * Raises AR004 for a succeeded operation (its effect happened: claim a new
 * key to act again), one held under a live lease, one being verified, one
 * awaiting approval, and a step of a run being compensated.
 */
Datum
agentretry_requeue(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	bool		reset;
	Operation	op;
	TimestampTz now;
	Datum		result;
	ArSpi		spi;

	check_not_null(fcinfo, 2, "reset_attempts");
	reset = PG_GETARG_BOOL(2);

	ar_spi_begin(&spi);
	now = load_for_operator(tenant, key, &op);
	if (op.state == OP_SUCCEEDED)
		report_operator_state("requeue", &op,
							  "A succeeded operation is never repeated; claim a new key to act again.");
	if (op.state == OP_IN_PROGRESS)
		report_operator_state("requeue", &op,
							  "A worker holds its lease; cancel it, or let the lease end (the sweep decides expired leases).");
	if (op.state == OP_VERIFY && op.lease_expires_at != TS_NONE &&
		op.lease_expires_at > now)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot requeue operation \"%s\" while it is being verified", key),
				 errhint("Wait for the verifier to resolve it or for its lease to end.")));
	if (op.state == OP_AWAITING_APPROVAL)
		report_operator_state("requeue", &op,
							  "It waits for a person: approve() or reject() it.");
	learn_run_state(&op);
	if (op.compensating && op.compensation_of == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot requeue operation \"%s\" because its run is being compensated", key),
				 errdetail("Run \"%s\" is undoing its steps.", op.run_id),
				 errhint("Start a new run to do the step again.")));

	op.state = OP_RETRY_WAIT;
	op.next_attempt_at = now;
	op.lease_token++;
	op.lease_owner = NULL;
	op.lease_expires_at = TS_NONE;
	op.reason = "requeued";
	if (op.compensation_of != NULL)
	{
		/* back in the saga's queue: it falls due in its turn */
		op.next_attempt_at = TS_NONE;
		op.reason = "compensation_pending";
	}
	else if (op.policy.requires_approval && op.first_attempt_at == TS_NONE)
	{
		/* never attempted (rejected, say): a person must approve it again */
		op.state = OP_AWAITING_APPROVAL;
		op.next_attempt_at = TS_NONE;
		op.reason = "approval_required";
	}
	/* a deadline runs from the first attempt: none yet for one never tried */
	op.deadline = op.policy.deadline != USEC_NONE && op.first_attempt_at != TS_NONE ?
		ts_add_usec(now, op.policy.deadline) : TS_NONE;
	if (reset)
	{
		op.attempts = 0;
		op.last_delay = USEC_NONE;
	}
	/* traced before the saga (if any) moves on with the change */
	trace_operator("requeue", &op, reset ? "requeued_reset" : "requeued", now);
	transition_store(&op, now);
	result = result_label_datum(fcinfo, op_state_labels[op.state]);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result);
}

PG_FUNCTION_INFO_V1(agentretry_cancel);

/*
 * cancel(key text, tenant text DEFAULT NULL, reason text DEFAULT NULL)
 *		  returns operation_state
 *
 * Ends an operation that has not succeeded: it becomes cancelled with
 * reason (default 'cancelled'), claims of the key answer cancelled, and a
 * worker still holding a lease can no longer record anything (AR002).
 * Cancelling a dead operation acknowledges it.  Raises AR004 for a
 * succeeded or already cancelled operation.
 */
Datum
agentretry_cancel(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	char	   *reason = arg_name(fcinfo, 2, "reason", "cancelled", AR_MAX_KEY_LEN);
	Operation	op;
	TimestampTz now;
	Datum		result;
	ArSpi		spi;

	ar_spi_begin(&spi);
	now = load_for_operator(tenant, key, &op);
	if (op.state == OP_SUCCEEDED || op.state == OP_CANCELLED)
		report_operator_state("cancel", &op,
							  op.state == OP_SUCCEEDED ?
							  "Its effect happened; compensate it instead if it must be undone." :
							  "Nothing is left to cancel.");
	if (op.state == OP_IN_PROGRESS && op.observed_receipt != NULL)
	{
		/*
		 * Its side effect was observed during the lease: it happened, and
		 * cancelling now would only hide that (and let a requeue repeat
		 * it).  It succeeds; the cancel is traced.
		 */
		apply_evidence(&op, "cancelled", now);
		trace_operator("cancel", &op, "corrected", now);
	}
	else
	{
		operation_set_terminal(&op, OP_CANCELLED, reason);
		trace_operator("cancel", &op, reason, now);
	}
	transition_store(&op, now);
	result = result_label_datum(fcinfo, op_state_labels[op.state]);
	stats_maybe_flush(now, false);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result);
}
