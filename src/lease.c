/*-------------------------------------------------------------------------
 *
 * lease.c
 *	  heartbeat() and release(): what a lease holder does with its lease
 *	  other than recording an outcome.
 *
 * Both lock the operation row FOR UPDATE and apply the fencing check; an
 * execution lease that expired but was not yet taken over can still be
 * extended or released, as it can still complete.
 *
 * src/lease.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "events.h"
#include "saga.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

/*
 * Lock the operation and check that lease_token is a lease the caller still
 * holds: the newest token, not terminal, and a lease outstanding (a lease
 * decided as failed by a takeover leaves none).  Returns the time to judge
 * the call by.
 */
static TimestampTz
load_held_lease(const char *tenant, const char *key, int64 lease_token,
				Operation *op)
{
	if (!operation_load(tenant, key, op))
		report_unknown_key(tenant, key);
	check_fencing(op, lease_token);
	if (op->lease_expires_at == TS_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_AR_LEASE_LOST),
				 errmsg("lease on operation \"%s\" was lost", key),
				 errdetail("No lease is outstanding; the operation is %s.",
						   op_state_labels[op->state])));
	/* read the clock after any wait for the row lock */
	return GetCurrentTimestamp();
}

PG_FUNCTION_INFO_V1(agentretry_heartbeat);

/*
 * heartbeat(key text, lease_token bigint, extend interval DEFAULT NULL,
 *			 tenant text DEFAULT NULL) returns timestamptz
 *
 * Extends the caller's lease to now + extend (default: the tool's lease)
 * and returns the new expiry.  Raises AR002 when the lease was lost.
 */
Datum
agentretry_heartbeat(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	int64		lease_token = arg_lease_token(fcinfo, 1);
	int64		extend = arg_lease_usec(fcinfo, 2, "extend");
	char	   *tenant = arg_tenant(fcinfo, 3);
	TimestampTz now;
	Operation	op;
	ArSpi		spi;

	ar_spi_begin(&spi);
	now = load_held_lease(tenant, key, lease_token, &op);
	op.lease_expires_at = ts_add_usec(now, extend != USEC_NONE ? extend : op.policy.lease);
	transition_store(&op, now);
	ar_spi_end(&spi);
	PG_RETURN_TIMESTAMPTZ(op.lease_expires_at);
}

PG_FUNCTION_INFO_V1(agentretry_release);

/*
 * release(key text, lease_token bigint, tenant text DEFAULT NULL) returns void
 *
 * Gives the lease back before acting.  An execution lease's attempt does
 * not count and the operation is due again at once (a step of a run being
 * compensated is cancelled instead; an operation whose side effect was
 * observed meanwhile succeeds, see apply_evidence()); a verification lease
 * leaves the operation awaiting verification.
 */
Datum
agentretry_release(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	int64		lease_token = arg_lease_token(fcinfo, 1);
	char	   *tenant = arg_tenant(fcinfo, 2);
	TimestampTz now;
	Operation	op;
	ArSpi		spi;

	ar_spi_begin(&spi);
	now = load_held_lease(tenant, key, lease_token, &op);
	op.lease_expires_at = TS_NONE;
	learn_run_state(&op);
	if (op.state == OP_IN_PROGRESS && op.observed_receipt != NULL)
	{
		/*
		 * Evidence says it happened (an earlier attempt?): it is not due
		 * again; in a run being compensated it is undone like any late
		 * success.
		 */
		apply_evidence(&op, "released", now);
	}
	else if (op.state == OP_IN_PROGRESS && op.compensating && op.compensation_of == NULL)
	{
		saga_cancel_step(&op, now);
	}
	else if (op.state == OP_IN_PROGRESS)
	{
		op.state = OP_RETRY_WAIT;
		op.attempts--;
		op.next_attempt_at = now;
		op.reason = "released";
	}
	transition_store(&op, now);
	if (ar_trace_all)
		record_simple_event("release", &op, "released", now);
	stats_maybe_flush(now, false);
	ar_spi_end(&spi);
	PG_RETURN_VOID();
}
