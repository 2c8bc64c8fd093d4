/*-------------------------------------------------------------------------
 *
 * observe.c
 *	  observe(): late evidence that a side effect happened.
 *
 * A provider's webhook, or a listing of the target system, reports that
 * the side effect of a key happened, with its receipt.  What agentretry
 * believed is compared with it under the operation's row lock, so
 * evidence and the lease holder's report are ordered whichever comes
 * first:
 *
 *	resolved	the operation awaited verification: it succeeds (reason
 *				observed);
 *	confirmed	it had succeeded with this receipt, or with none (stored);
 *	corrected	it was believed not done (waiting for a retry, dead,
 *				cancelled, awaiting approval): it succeeds (reason
 *				corrected) and is never retried; an outcome_corrected
 *				anomaly is recorded;
 *	anomaly		it had succeeded with another receipt, or another receipt
 *				was already observed for its attempt: a duplicate side
 *				effect, recorded as duplicate_side_effect;
 *	pending		it is leased: the evidence is kept (observed_receipt) and
 *				compared when the holder reports (outcome.c, transition.c);
 *	orphan		no such key (purged, created elsewhere, or claimed in a
 *				transaction not yet committed): an orphan_side_effect
 *				anomaly, no error.
 *
 * Evidence never starts work: every answer leaves the operation succeeded
 * or as it was.  Every observation is traced (event kind observe).
 *
 * src/observe.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "anomaly.h"
#include "events.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

typedef struct Evidence
{
	const char *receipt;
	const char *source;
	Jsonb	   *detail;
	TimestampTz now;
} Evidence;

static void
evidence_anomaly(const char *kind, const Operation *op, const Evidence *ev,
				 const char *believed, const char *other_receipt,
				 const char *other_name)
{
	AnomalyData an;
	StringInfoData detail;

	anomaly_init(&an, kind, op, ev->now);
	an.receipt = ev->receipt;
	if (op->tool != NULL)
		an.attempt = op->attempts;
	detail_begin(&detail);
	detail_text(&detail, "believed", believed);
	detail_text(&detail, other_name, other_receipt);
	detail_text(&detail, "observed_receipt", ev->receipt);
	detail_text(&detail, "source", ev->source);
	detail_jsonb(&detail, "evidence", ev->detail);
	an.detail = detail_end(&detail);
	record_anomaly(&an);
}

/*
 * The side effect happened: op succeeds with the evidence's receipt, with
 * reason observed (a verification the evidence resolved: the verifier's
 * resolve() may still agree) or corrected (believed not done).
 */
static void
succeed_by_evidence(Operation *op, const Evidence *ev, const char *reason)
{
	op->receipt = (char *) ev->receipt;
	op->observed_receipt = NULL;
	operation_set_terminal(op, OP_SUCCEEDED, reason);
	op->reconcile_at = ev->now;	/* a receipt: check for duplicates */
	transition_store(op, ev->now);
	stats_count_success(op, ev->now);
}

static const char *
observe_operation(Operation *op, const Evidence *ev)
{
	switch (op->state)
	{
		case OP_VERIFY:
			succeed_by_evidence(op, ev, "observed");
			return "resolved";
		case OP_RETRY_WAIT:
		case OP_DEAD:
		case OP_CANCELLED:
		case OP_AWAITING_APPROVAL:
			evidence_anomaly("outcome_corrected", op, ev,
							 op_state_labels[op->state], op->reason, "reason");
			succeed_by_evidence(op, ev, "corrected");
			return "corrected";
		case OP_SUCCEEDED:
			if (op->receipt == NULL)
			{
				op->receipt = (char *) ev->receipt;
				op->reconcile_at = ev->now;
				operation_store_receipts(op, ev->now);
				return "confirmed";
			}
			if (strcmp(op->receipt, ev->receipt) == 0)
				return "confirmed";
			evidence_anomaly("duplicate_side_effect", op, ev, "succeeded",
							 op->receipt, "stored_receipt");
			return "anomaly";
		case OP_IN_PROGRESS:
			if (op->observed_receipt == NULL)
			{
				op->observed_receipt = (char *) ev->receipt;
				operation_store_receipts(op, ev->now);
				return "pending";
			}
			if (strcmp(op->observed_receipt, ev->receipt) == 0)
				return "pending";
			/* two receipts for one attempt: it happened twice */
			evidence_anomaly("duplicate_side_effect", op, ev, "in_progress",
							 op->observed_receipt, "first_observed_receipt");
			return "anomaly";
	}
	elog(ERROR, "agentretry: unexpected operation state %d", (int) op->state);
	return NULL;				/* keep compiler quiet */
}

PG_FUNCTION_INFO_V1(agentretry_observe);

/*
 * observe(key text, receipt text, tenant text DEFAULT NULL, source text
 *		   DEFAULT NULL, detail jsonb DEFAULT NULL) returns text
 *
 * Records evidence that the side effect of key happened and returns what
 * it did: resolved, confirmed, corrected, anomaly, pending or orphan (see
 * the file header).  receipt is required; source says where the evidence
 * came from (a webhook's name), detail is kept with it.
 */
Datum
agentretry_observe(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	char	   *tenant;
	Evidence	ev;
	Operation	op;
	const char *answer;
	ArSpi		spi;

	check_not_null(fcinfo, 1, "receipt");
	ev.receipt = arg_name(fcinfo, 1, "receipt", NULL, AR_MAX_KEY_LEN);
	tenant = arg_tenant(fcinfo, 2);
	ev.source = arg_name(fcinfo, 3, "source", NULL, AR_MAX_NAME_LEN);
	ev.detail = arg_payload(fcinfo, 4, "detail", false);

	ar_spi_begin(&spi);
	if (operation_load(tenant, key, &op))
	{
		ev.now = GetCurrentTimestamp(); /* after any wait for the row lock */
		answer = observe_operation(&op, &ev);
	}
	else
	{
		ev.now = GetCurrentTimestamp();
		memset(&op, 0, sizeof(op));
		op.tenant = tenant;
		op.key = key;
		evidence_anomaly("orphan_side_effect", &op, &ev, NULL, NULL, NULL);
		answer = "orphan";
	}
	record_observation(&op, answer, ev.receipt, ev.source, ev.detail, ev.now);
	stats_maybe_flush(ev.now, false);
	ar_spi_end(&spi);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}
