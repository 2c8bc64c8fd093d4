/*-------------------------------------------------------------------------
 *
 * claim.c
 *	  claim(): lease an operation by idempotency key, or say why not.
 *
 * The common answers take no row lock: a new key is one INSERT ... ON
 * CONFLICT DO NOTHING, and replay, busy, wait, dead and cancelled are read
 * straight from the primary key index (operation_peek), so a replay writes
 * nothing, needs no transaction id and runs no executor.  Only a transition (an expired lease, a due retry, a
 * verification to hand out) re-reads the row FOR UPDATE and decides again
 * under the lock, since another claimant may have acted in between.
 *
 * Pattern A (claim, effect and complete in one transaction): a concurrent
 * claimant of the same key blocks in the INSERT on the uncommitted row,
 * and after the commit reads it as succeeded: replay.  If the first
 * transaction rolls back, the INSERT proceeds and the second executes.
 *
 * src/claim.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "agentretry.h"

/* Retries of the read/insert loop when the row keeps vanishing. */
#define CLAIM_MAX_TRIES 5

static void
answer_init(ClaimAnswer *a, Outcome outcome, const Operation *op)
{
	a->outcome = outcome;
	a->attempt = op->attempts;
	a->lease_token = -1;
	a->lease_expires_at = TS_NONE;
	a->has_result = false;
	a->retry_at = TS_NONE;
	a->reason = op->reason;
}

static bool
reason_is(const Operation *op, const char *reason)
{
	return op->reason != NULL && strcmp(op->reason, reason) == 0;
}

/*
 * A terminal answer.  An operation dead-lettered because a budget denied
 * its retry answers denied with no retry_at: not before an operator acts.
 */
static void
answer_terminal(ClaimAnswer *a, const Operation *op)
{
	Outcome		outcome = op->state == OP_CANCELLED ? OUT_CANCELLED :
		reason_is(op, "budget_exhausted") ? OUT_DENIED : OUT_DEAD;

	answer_init(a, outcome, op);
	a->result = JsonbPGetDatum(operation_last_error(op));
	a->has_result = true;
}

/*
 * A key reused for a different call is a bug in the caller (or two agents
 * colliding on a key); executing either would be wrong, replaying would
 * return the receipt of another action.
 */
static void
check_fingerprint(const Operation *op, const ClaimRequest *req)
{
	if (VARSIZE_ANY_EXHDR(op->op_hash) != VARSIZE_ANY_EXHDR(req->op_hash) ||
		memcmp(VARDATA_ANY(op->op_hash), VARDATA_ANY(req->op_hash),
			   VARSIZE_ANY_EXHDR(req->op_hash)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_AR_FINGERPRINT_CONFLICT),
				 errmsg("idempotency key \"%s\" was already used with different arguments", op->key),
				 errdetail("Stored op_hash is %s; this call's op_hash is %s.",
						   DatumGetCString(DirectFunctionCall1(byteaout, PointerGetDatum(op->op_hash))),
						   DatumGetCString(DirectFunctionCall1(byteaout, PointerGetDatum(req->op_hash)))),
				 errhint("Use a new key for a different operation.")));
	if (strcmp(op->tool, req->tool) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_AR_FINGERPRINT_CONFLICT),
				 errmsg("idempotency key \"%s\" was already used with a different tool", op->key),
				 errdetail("The key belongs to tool \"%s\"; this call names tool \"%s\".",
						   op->tool, req->tool),
				 errhint("Use a new key for a different operation.")));
}

/*
 * Answers that need no transition: the terminal states, a live lease, a
 * retry not yet due.  Returns false when the caller must lock and act.
 */
static bool
answer_without_transition(const Operation *op, TimestampTz now, ClaimAnswer *a)
{
	switch (op->state)
	{
		case OP_SUCCEEDED:
			answer_init(a, OUT_REPLAY, op);
			a->result = op->result;
			a->has_result = op->has_result;
			return true;
		case OP_DEAD:
		case OP_CANCELLED:
			answer_terminal(a, op);
			return true;
		case OP_IN_PROGRESS:
		case OP_VERIFY:
			if (op->lease_expires_at != TS_NONE && op->lease_expires_at > now)
			{
				answer_init(a, OUT_BUSY, op);
				a->retry_at = op->lease_expires_at;
				return true;
			}
			return false;
		case OP_RETRY_WAIT:
			if (op->next_attempt_at != TS_NONE && op->next_attempt_at > now)
			{
				/* waiting for a budget to allow the retry: denied until then */
				answer_init(a, reason_is(op, "budget_wait") ? OUT_DENIED : OUT_WAIT, op);
				a->retry_at = op->next_attempt_at;
				return true;
			}
			return false;
	}
	return false;
}

/* Hand the caller a new lease: an attempt, or a verification. */
static void
issue_lease(Operation *op, const ClaimRequest *req, bool verification,
			ClaimAnswer *a)
{
	int64		lease = req->lease != USEC_NONE ? req->lease : op->policy.lease;

	op->lease_token++;
	op->lease_owner = (char *) req->owner;
	op->lease_expires_at = ts_add_usec(req->now, lease);
	op->next_attempt_at = TS_NONE;
	if (!verification)
	{
		op->state = OP_IN_PROGRESS;
		op->attempts++;
		op->last_attempt_at = req->now;
		if (op->first_attempt_at == TS_NONE)
			op->first_attempt_at = req->now;
	}
	operation_store(op, req->now);

	if (verification)
		record_simple_event("verifying", op, op->reason, req->now);
	else if (ar_trace_all)
		record_simple_event("claim", op, NULL, req->now);

	answer_init(a, verification ? OUT_VERIFY : OUT_EXECUTE, op);
	a->lease_token = op->lease_token;
	a->lease_expires_at = op->lease_expires_at;
}

/*
 * An expired execution lease is an ambiguous failure decided as of its
 * expiry (expire_lease); a retry already due is executed by this claimant
 * at once.
 */
static void
take_over_expired(Operation *op, const ClaimRequest *req, ClaimAnswer *a)
{
	Decision	d;

	expire_lease(op, req->now, &d);
	switch (d.action)
	{
		case ACT_RETRY:
			if (op->next_attempt_at <= req->now)
				issue_lease(op, req, false, a);
			else
			{
				operation_store(op, req->now);
				answer_init(a, reason_is(op, "budget_wait") ? OUT_DENIED : OUT_WAIT, op);
				a->retry_at = op->next_attempt_at;
			}
			break;
		case ACT_VERIFY:
			issue_lease(op, req, true, a);
			break;
		case ACT_DEAD:
			operation_store(op, req->now);
			answer_terminal(a, op);
			break;
	}
}

/*
 * A retry that waited for a budget has not paid yet: it pays now, or waits
 * again (denied until the budget allows it), or, when that would be after
 * the deadline, is dead-lettered.  Returns whether it may start.
 */
static bool
pay_budget_wait(Operation *op, const ClaimRequest *req, ClaimAnswer *a)
{
	Decision	d;
	TimestampTz allowed_at;
	const char *why;
	FailureClass fc = op->failure_class >= 0 ? (FailureClass) op->failure_class : FC_TRANSIENT;

	if (budget_allow_retry(op, fc, req->now, &allowed_at, &why))
		return true;
	d.action = ACT_RETRY;
	d.retry_at = req->now;
	d.delay = 0;
	budget_deny(&d, op->deadline, allowed_at, req->now);
	if (d.action == ACT_DEAD)
	{
		dead_letter(op, d.reason, req->now);
		answer_terminal(a, op);
		return false;
	}
	op->next_attempt_at = d.retry_at;
	operation_store(op, req->now);
	record_simple_event("denied", op, why, req->now);
	answer_init(a, OUT_DENIED, op);
	a->retry_at = d.retry_at;
	return false;
}

/*
 * A due retry starts, unless it is too late for the deadline or a budget
 * it waited for still denies it.  (An operator's requeue is not checked
 * against budgets: its reason is requeued.)
 */
static void
start_due_retry(Operation *op, const ClaimRequest *req, ClaimAnswer *a)
{
	if (retry_too_late(op, req->now))
	{
		dead_letter(op, "deadline_exceeded", req->now);
		answer_terminal(a, op);
		return;
	}
	if (reason_is(op, "budget_wait") && !pay_budget_wait(op, req, a))
		return;
	issue_lease(op, req, false, a);
}

/*
 * Under the row lock: answer again, or make the transition.  Also the
 * transition of claim_due(), for the rows it locked.
 */
void
claim_transition(Operation *op, const ClaimRequest *req, ClaimAnswer *a)
{
	if (answer_without_transition(op, req->now, a))
		return;
	switch (op->state)
	{
		case OP_IN_PROGRESS:
			take_over_expired(op, req, a);
			break;
		case OP_RETRY_WAIT:
			start_due_retry(op, req, a);
			break;
		case OP_VERIFY:
			issue_lease(op, req, true, a);
			break;
		default:
			elog(ERROR, "agentretry: no transition from state %s",
				 op_state_labels[op->state]);
	}
}

static Datum
answer_datum(FunctionCallInfo fcinfo, const ClaimAnswer *a)
{
	TupleDesc	desc;
	Datum		values[7];
	bool		nulls[7];

	desc = result_tupdesc(fcinfo);
	memset(nulls, false, sizeof(nulls));
	values[0] = label_enum_datum(TupleDescAttr(desc, 0)->atttypid,
								 outcome_labels[a->outcome]);
	values[1] = Int32GetDatum(a->attempt);
	values[2] = Int64GetDatum(a->lease_token);
	nulls[2] = a->lease_token < 0;
	values[3] = TimestampTzGetDatum(a->lease_expires_at);
	nulls[3] = a->lease_expires_at == TS_NONE;
	values[4] = a->result;
	nulls[4] = !a->has_result;
	values[5] = TimestampTzGetDatum(a->retry_at);
	nulls[5] = a->retry_at == TS_NONE;
	values[6] = a->reason ? CStringGetTextDatum(a->reason) : (Datum) 0;
	nulls[6] = a->reason == NULL;
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

PG_FUNCTION_INFO_V1(agentretry_claim);

/*
 * claim(key text, args jsonb, tool text DEFAULT 'default', tenant text
 *		 DEFAULT NULL, run_id text DEFAULT NULL, step text DEFAULT NULL,
 *		 lease interval DEFAULT NULL, owner text DEFAULT NULL)
 *		 returns claim_result
 *
 * Outcomes: execute (you hold the lease: act), replay (already succeeded:
 * result is the receipt), busy (someone else's live lease), wait (a retry
 * is scheduled at retry_at), verify (you hold a verification lease: check
 * the target system, then resolve), dead / cancelled (terminal).  Raises
 * AR001 when the key was used with other args or another tool.
 *
 * Waits only on a row lock of the same key (an uncommitted claim of it, or
 * a concurrent transition).
 */
Datum
agentretry_claim(PG_FUNCTION_ARGS)
{
	char	   *key = arg_key(fcinfo, 0);
	Jsonb	   *args = arg_payload(fcinfo, 1, "args", true);
	char	   *tenant;
	ClaimRequest req;
	Operation	op;
	ClaimAnswer answer;
	MemoryContext caller = CurrentMemoryContext;
	Datum		result;
	int			tries;

	memset(&op, 0, sizeof(op));
	req.tool = arg_tool(fcinfo, 2);
	tenant = arg_tenant(fcinfo, 3);
	req.run_id = arg_name(fcinfo, 4, "run_id", NULL, AR_MAX_KEY_LEN);
	req.step = arg_name(fcinfo, 5, "step", NULL, AR_MAX_KEY_LEN);
	req.lease = arg_lease_usec(fcinfo, 6, "lease");
	req.owner = arg_name(fcinfo, 7, "owner", NULL, AR_MAX_NAME_LEN);
	if (req.owner == NULL)		/* look the role up only when needed */
		req.owner = GetUserNameFromId(GetOuterUserId(), false);
	req.op_hash = compute_op_hash(args, NULL);
	req.now = GetCurrentTimestamp();

	ar_spi_begin();
	for (tries = 0;; tries++)
	{
		if (tries >= CLAIM_MAX_TRIES)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not claim operation \"%s\" while it was being purged", key),
					 errhint("Retry the claim.")));

		if (operation_peek(tenant, key, &op))
		{
			check_fingerprint(&op, &req);
			if (answer_without_transition(&op, req.now, &answer))
				break;
			if (!operation_load(tenant, key, &op))
				continue;		/* purged meanwhile: insert anew */
			/* the lock may have been waited for: judge due times from now */
			req.now = GetCurrentTimestamp();
			claim_transition(&op, &req, &answer);
			break;
		}

		/* a row read in an earlier round may have filled op: reset it */
		op.tenant = tenant;
		op.key = key;
		op.op_hash = req.op_hash;
		op.tool = (char *) req.tool;
		op.run_id = (char *) req.run_id;
		op.step = (char *) req.step;
		op.lease_owner = (char *) req.owner;
		if (operation_insert(&op, args, req.lease, req.now))
		{
			budget_count_first_attempt(&op, req.owner, req.now);
			if (ar_trace_all)
				record_simple_event("claim", &op, NULL, req.now);
			answer_init(&answer, OUT_EXECUTE, &op);
			answer.lease_token = op.lease_token;
			answer.lease_expires_at = op.lease_expires_at;
			break;
		}
		/* a concurrent claim inserted the key first: read what it did */
	}

	if (answer.outcome == OUT_REPLAY && ar_trace_all)
	{
		/* the event names who was answered, not who completed the key */
		op.lease_owner = (char *) req.owner;
		record_simple_event("replay", &op, NULL, req.now);
	}

	/* form the row while SPI's memory (result, reason) is still alive */
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		result = answer_datum(fcinfo, &answer);
		MemoryContextSwitchTo(spi);
	}
	ar_spi_end();
	PG_RETURN_DATUM(result);
}
