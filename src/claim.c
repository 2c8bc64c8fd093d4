/*-------------------------------------------------------------------------
 *
 * claim.c
 *	  claim(): lease an operation by idempotency key, or say why not.
 *
 * The common answers take no row lock: a new key is one INSERT ... ON
 * CONFLICT DO NOTHING, and replay, busy, wait, dead and cancelled are read
 * straight from the primary key index (operation_peek), so a replay writes
 * nothing of its own, needs no transaction id and runs no executor.  Only
 * a transition (an expired lease, a due retry, a verification to hand out)
 * re-reads the row FOR UPDATE and decides again under the lock, since
 * another claimant may have acted in between.
 *
 * A new key that names a run joins it (starting it if unknown) and holds
 * the run FOR KEY SHARE until the claim commits (runs.c): a run that is no
 * longer running accepts no new step.  A new key whose policy
 * requires approval is recorded as awaiting_approval and answers
 * approval.
 *
 * Answers are counted for stats() in memory (stats.c); about once a
 * second a call of the session, a replay too, writes the session's counts
 * (one row per tenant and tool), which is then its only write.
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

#include "budget.h"
#include "events.h"
#include "runs.h"
#include "stats.h"
#include "tenancy.h"
#include "transition.h"

/* Retries of the read/insert loop when the row keeps vanishing. */
#define CLAIM_MAX_TRIES 5

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

/* A new step joins its run, which must be running (runs.c). */
static void
join_run(const char *tenant, const char *run_id, TimestampTz now)
{
	Run			run;

	run.state = run_join(tenant, run_id, now);
	if (run.state != RUN_RUNNING)
	{
		run.run_id = (char *) run_id;
		report_run_state("start a step in", &run,
						 "A run accepts new steps only while it is running; use a new run_id.");
	}
}

/*
 * Keys ending in ":compensate" name compensations (saga.c); a claim may
 * act on one, but not create one.
 */
static void
check_new_key(const char *key)
{
	size_t		len = strlen(key);
	size_t		suffix = strlen(AR_COMPENSATE_SUFFIX);

	if (len >= suffix && strcmp(key + len - suffix, AR_COMPENSATE_SUFFIX) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key \"%s\" is reserved for a compensation", key),
				 errdetail("Keys ending in \"%s\" name the compensations of a run's steps.",
						   AR_COMPENSATE_SUFFIX),
				 errhint("Use another key; compensate() creates these.")));
}

PG_FUNCTION_INFO_V1(agentretry_claim);

/*
 * claim(key text, args jsonb, tool text DEFAULT 'default', tenant text
 *		 DEFAULT NULL, run_id text DEFAULT NULL, step text DEFAULT NULL,
 *		 lease interval DEFAULT NULL, owner text DEFAULT NULL,
 *		 in_transaction boolean DEFAULT false)
 *		 returns claim_result
 *
 * Outcomes: execute (you hold the lease: act), replay (already succeeded:
 * result is the receipt), busy (someone else's live lease), wait (a retry
 * is scheduled at retry_at), verify (you hold a verification lease: check
 * the target system, then resolve), dead / cancelled (terminal), denied
 * (a retry budget forbids an attempt until retry_at), approval (a person
 * must approve() first).  Raises AR001 when the key was used with other
 * args or another tool, AR004 when a new key names a run that is not
 * running.
 *
 * Inside a transaction block, execute requires in_transaction => true
 * (the caller's side effect commits with the claim: pattern A); otherwise
 * the call fails with 25001 (guard.c).
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
	ArSpi		spi;
	Datum		result;
	int			tries;
	bool		guarded = lease_guarded(fcinfo, 8);

	memset(&op, 0, sizeof(op));
	req.tool = arg_tool(fcinfo, 2);
	tenant = arg_tenant(fcinfo, 3);
	req.run_id = arg_name(fcinfo, 4, "run_id", NULL, AR_MAX_KEY_LEN);
	req.step = arg_name(fcinfo, 5, "step", NULL, AR_MAX_KEY_LEN);
	req.lease = arg_lease_usec(fcinfo, 6, "lease");
	req.owner = arg_name(fcinfo, 7, "owner", NULL, AR_MAX_NAME_LEN);
	if (req.owner == NULL)		/* look the role up only when needed */
		req.owner = GetUserNameFromId(ar_caller(), false);
	req.op_hash = compute_op_hash(args, NULL);
	req.now = GetCurrentTimestamp();

	ar_spi_begin(&spi);
	if (guarded)
		stats_stage_begin();
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

		check_new_key(key);
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
			/*
			 * Join the run after the insert, which may have waited for
			 * another claim of the key: the operation's row before its
			 * run's, the lock order everywhere.  A refusal rolls the
			 * insert back.
			 */
			if (req.run_id != NULL)
				join_run(tenant, req.run_id, req.now);
			if (op.state == OP_AWAITING_APPROVAL)
			{
				record_simple_event("approval_requested", &op, op.reason, req.now);
				answer_init(&answer, OUT_APPROVAL, &op);
				break;
			}
			budget_count_first_attempt(&op, req.owner, req.now);
			stats_count_attempt(&op, true);
			if (ar_trace_all)
				record_simple_event("claim", &op, NULL, req.now);
			answer_init(&answer, OUT_EXECUTE, &op);
			answer.lease_token = op.lease_token;
			answer.lease_expires_at = op.lease_expires_at;
			break;
		}
		/* a concurrent claim inserted the key first: read what it did */
	}

	if (answer.outcome == OUT_REPLAY)
	{
		/* a duplicate prevented: counted without writing (stats.c) */
		stats_count_replay(tenant, op.tool);
		if (ar_trace_all)
		{
			/* the event names who was answered, not who completed the key */
			op.lease_owner = (char *) req.owner;
			record_simple_event("replay", &op, NULL, req.now);
		}
	}
	if (guarded)
	{
		stats_stage_end(answer.outcome != OUT_EXECUTE);
		if (answer.outcome == OUT_EXECUTE)
			refuse_uncommitted_lease("claim()");
	}
	stats_maybe_flush(req.now, false);

	/* form the row while SPI's memory (result, reason) is still alive */
	MemoryContextSwitchTo(spi.caller);
	result = answer_datum(fcinfo, &answer);
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result);
}
