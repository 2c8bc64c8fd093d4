/*-------------------------------------------------------------------------
 *
 * approval.c
 *	  Approval gates: approve() and reject().
 *
 * A tool whose policy has requires_approval (by default every destructive
 * tool) does not run on its first claim: the operation is recorded as
 * awaiting_approval (claim.c) and every claim answers approval until a
 * person decides.  Approval binds to the stored arguments: the claim that
 * then executes must present the same op_hash, as every claim of a key
 * must.  Who decided, when and with what note is traced in events
 * (actor, message).
 *
 * Both lock the operation row FOR UPDATE, so of an approve() and a
 * reject() racing, the second finds the operation no longer awaiting
 * approval (AR004).
 *
 * src/approval.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "events.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

/* Lock the operation and check that it awaits approval. */
static TimestampTz
load_awaiting(const char *action, const char *tenant, const char *key,
			  Operation *op)
{
	if (!operation_load(tenant, key, op))
		report_unknown_key(tenant, key);
	if (op->state != OP_AWAITING_APPROVAL)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot %s operation \"%s\" because it is %s",
						action, key, op_state_labels[op->state]),
				 errhint("Only an operation awaiting approval can be approved or rejected.")));
	learn_run_state(op);
	if (op->compensating)
		ereport(ERROR,
				(errcode(ERRCODE_AR_INVALID_STATE),
				 errmsg("cannot %s operation \"%s\" because its run is being compensated", action, key),
				 errdetail("Run \"%s\" is undoing its steps; the operation is cancelled with them.",
						   op->run_id)));
	return GetCurrentTimestamp();	/* after any wait for the row lock */
}

PG_FUNCTION_INFO_V1(agentretry_approve);

/*
 * approve(key text, tenant text DEFAULT NULL, note text DEFAULT NULL)
 *		   returns operation_state
 *
 * Approves the operation, for exactly its stored arguments, and makes it
 * due at once (retry_wait): the next claim of the key, or claim_due,
 * executes it.  Its deadline starts with that first attempt.  AR004 unless
 * it awaits approval.  A failure of the approved attempt is decided as
 * always: a destructive tool is still never retried automatically.
 */
Datum
agentretry_approve(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	char	   *note = arg_optional_text(fcinfo, 2, "note");
	Operation	op;
	TimestampTz now;
	ArSpi		spi;

	ar_spi_begin(&spi);
	now = load_awaiting("approve", tenant, key, &op);
	op.state = OP_RETRY_WAIT;
	op.next_attempt_at = now;
	op.reason = "approved";
	transition_store(&op, now);
	record_actor_event("approved", &op, "approved", note, now);
	stats_count(op.tenant, op.tool, ST_APPROVALS);
	stats_maybe_flush(now, false);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result_label_datum(fcinfo, op_state_labels[OP_RETRY_WAIT]));
}

PG_FUNCTION_INFO_V1(agentretry_reject);

/*
 * reject(key text, tenant text, reason text) returns operation_state
 *
 * Refuses the operation: it is cancelled with reason rejected, and the
 * reason given is its last message, so claims of the key answer cancelled
 * with it.  AR004 unless it awaits approval.
 */
Datum
agentretry_reject(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	char	   *why;
	Operation	op;
	TimestampTz now;
	ArSpi		spi;

	check_not_null(fcinfo, 2, "reason");
	why = arg_optional_text(fcinfo, 2, "reason");

	ar_spi_begin(&spi);
	now = load_awaiting("reject", tenant, key, &op);
	operation_set_terminal(&op, OP_CANCELLED, "rejected");
	op.failure_message = why;
	transition_store(&op, now);
	record_actor_event("rejected", &op, "rejected", why, now);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result_label_datum(fcinfo, op_state_labels[OP_CANCELLED]));
}
