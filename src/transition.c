/*-------------------------------------------------------------------------
 *
 * transition.c
 *	  The state machine of an operation: what a claim does to it, what a
 *	  failure decides, how an expired lease is judged, dead-letters, and
 *	  the fencing checks that guard every outcome.
 *
 * Every transition starts from a row locked FOR UPDATE (operation_load,
 * or a locking query of AR_OP_SELECT), so transitions of one key are
 * serialised by the row lock; the caller stores the result.  Decisions
 * come from decide.c (pure), delays from backoff.c, budgets from
 * budget.c; every decision is traced (events.c).
 *
 *	  in_progress --fail/expiry--> retry_wait | verify | dead
 *	  retry_wait  --claim/claim_due when due--> in_progress
 *	  verify      --claim--> verification lease --resolve--> succeeded | retry_wait
 *	  in_progress --complete--> succeeded
 *	  awaiting_approval --approve--> retry_wait (due) | --reject--> cancelled
 *
 * An operation of a run being compensated (operations.compensating) goes
 * through the same rules, and after each stored change the saga moves on
 * (transition_store, saga.c); a failed step of such a run is cancelled
 * rather than retried.
 *
 * src/transition.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "nodes/pg_list.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "anomaly.h"
#include "budget.h"
#include "events.h"
#include "runs.h"
#include "saga.h"
#include "stats.h"
#include "transition.h"

static void budget_deny(Decision *d, TimestampTz deadline, TimestampTz at,
						TimestampTz now);
static void apply_pending_evidence(Operation *op, FailureClass failure,
								   FailurePhase phase, const char *code,
								   const char *message, TimestampTz now,
								   Decision *d);

/*
 * Is the run of op (a step, locked by the caller) being compensated?  The
 * saga marks the steps it can lock (operations.compensating); one it could
 * not, because a transaction held it, is recognised here by reading the
 * run in a statement of its own, after the row lock was taken, so that it
 * sees a compensate() that committed while this transaction waited.  Once
 * per operation and call.
 */
void
learn_run_state(Operation *op)
{
	Run			run;

	if (op->run_checked || op->compensating || op->run_id == NULL ||
		op->compensation_of != NULL)
		return;
	op->run_checked = true;
	if (run_read(op->tenant, op->run_id, RUN_LOCK_NONE, &run) &&
		(run.state == RUN_COMPENSATING || run.state == RUN_NEEDS_REVIEW ||
		 run.state == RUN_COMPENSATED))
		op->compensating = true;
}

/*
 * Runs whose sagas a batch (claim_due, the sweep) defers to its end: an
 * advance in the middle of the batch could change rows the batch has
 * locked and read already, and the batch would then act on stale copies.
 */
typedef struct DeferredRun
{
	char	   *tenant;
	char	   *run_id;
} DeferredRun;

/*
 * The batch deferring sagas, by transaction and subtransaction: a batch
 * that an error ended leaves nothing deferred for later calls.
 */
static LocalTransactionId defer_lxid = InvalidLocalTransactionId;
static SubTransactionId defer_subxid = InvalidSubTransactionId;
static List *deferred_runs = NIL;

static bool
deferring(void)
{
	return defer_lxid == MyProc->lxid &&
		defer_subxid == GetCurrentSubTransactionId();
}

void
saga_defer_begin(void)
{
	defer_lxid = MyProc->lxid;
	defer_subxid = GetCurrentSubTransactionId();
	deferred_runs = NIL;
}

/* Advance the sagas deferred since saga_defer_begin(). */
void
saga_defer_end(TimestampTz now)
{
	ListCell   *lc;
	List	   *runs = deferred_runs;

	defer_lxid = InvalidLocalTransactionId;
	deferred_runs = NIL;
	foreach(lc, runs)
	{
		DeferredRun *r = lfirst(lc);

		saga_advance(r->tenant, r->run_id, now);
	}
}

static void
defer_saga(const Operation *op)
{
	ListCell   *lc;
	DeferredRun *r;

	foreach(lc, deferred_runs)
	{
		r = lfirst(lc);
		if (strcmp(r->tenant, op->tenant) == 0 && strcmp(r->run_id, op->run_id) == 0)
			return;
	}
	r = palloc(sizeof(DeferredRun));
	r->tenant = pstrdup(op->tenant);
	r->run_id = pstrdup(op->run_id);
	deferred_runs = lappend(deferred_runs, r);
}

/*
 * Store a transition of op (locked by the caller).  A change of an
 * operation of a run being compensated moves the saga on (at the end of a
 * batch that defers it).
 */
void
transition_store(Operation *op, TimestampTz now)
{
	learn_run_state(op);
	operation_store(op, now);
	if (!op->compensating || op->run_id == NULL)
		return;
	if (deferring())
		defer_saga(op);
	else
		saga_advance(op->tenant, op->run_id, now);
}

void
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
 * Answers that need no transition: the terminal states, a live lease, a
 * retry not yet due.  Returns false when the caller must lock and act.
 */
bool
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
		case OP_AWAITING_APPROVAL:
			answer_init(a, OUT_APPROVAL, op);
			return true;
		case OP_RETRY_WAIT:
			/* a compensation waiting for the ones before it: not scheduled */
			if (op->next_attempt_at == TS_NONE)
			{
				answer_init(a, OUT_WAIT, op);
				return true;
			}
			if (op->next_attempt_at > now)
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
		stats_count_attempt(op, op->first_attempt_at == TS_NONE);
		if (op->first_attempt_at == TS_NONE)
		{
			/*
			 * The first attempt of an operation that waited for approval
			 * or is a compensation: its deadline starts now, and it counts
			 * as a first attempt for ratio budgets.
			 */
			op->first_attempt_at = req->now;
			if (op->deadline == TS_NONE && op->policy.deadline != USEC_NONE)
				op->deadline = ts_add_usec(req->now, op->policy.deadline);
			budget_count_first_attempt(op, req->owner, req->now);
		}
	}
	transition_store(op, req->now);

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
				transition_store(op, req->now);
				answer_init(a, reason_is(op, "budget_wait") ? OUT_DENIED : OUT_WAIT, op);
				a->retry_at = op->next_attempt_at;
			}
			break;
		case ACT_VERIFY:
			issue_lease(op, req, true, a);
			break;
		case ACT_DEAD:
			transition_store(op, req->now);
			answer_terminal(a, op);
			break;
		case ACT_SUCCEEDED:
			/* evidence observed during the lease: it happened */
			transition_store(op, req->now);
			answer_without_transition(op, req->now, a);
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
	stats_count(op->tenant, op->tool, ST_BUDGET_DENIALS);
	if (d.action == ACT_DEAD)
	{
		dead_letter(op, d.reason, req->now);
		answer_terminal(a, op);
		return false;
	}
	op->next_attempt_at = d.retry_at;
	transition_store(op, req->now);
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
	if (op->observed_receipt != NULL && op->state != OP_IN_PROGRESS)
	{
		/*
		 * Evidence of an attempt that ended without its holder reporting
		 * (every such path applies it; this is a safety net): no new
		 * attempt.
		 */
		apply_evidence(op, "retry_wait", req->now);
		transition_store(op, req->now);
		answer_without_transition(op, req->now, a);
		return;
	}
	learn_run_state(op);
	if (op->compensating && op->compensation_of == NULL &&
		op->state == OP_RETRY_WAIT)
	{
		/* traced before the saga moves on with the change */
		saga_cancel_step(op, req->now);
		transition_store(op, req->now);
		answer_terminal(a, op);
		return;
	}
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


/*
 * An execution lease that expired: the worker may have died after acting,
 * so it is an ambiguous failure, decided as of the expiry (the backoff runs
 * from then).  The caller stores op.
 */
void
expire_lease(Operation *op, TimestampTz now, Decision *d)
{
	apply_failure(op, FC_AMBIGUOUS, PHASE_UNKNOWN, "lease_expired", NULL,
				  USEC_NONE, now - op->lease_expires_at, now, d);
}

/*
 * May a waiting retry of op still start at now?  The deadline is judged
 * when a retry is scheduled (the decision caps retry_at at it), so a retry
 * due within the deadline may start a little after it, for
 * agentretry.deadline_grace; one due beyond the deadline (a release after
 * it) may not.  The sweep dead-letters by the same rule.
 */
bool
retry_too_late(const Operation *op, TimestampTz now)
{
	TimestampTz due = op->next_attempt_at != TS_NONE ? op->next_attempt_at : now;

	if (op->deadline == TS_NONE)
		return false;
	return due > op->deadline ||
		now > ts_add_usec(op->deadline, (int64) ar_deadline_grace_sec * USECS_PER_SEC);
}

/* End op as dead for reason, store it and trace it. */
void
dead_letter(Operation *op, const char *reason, TimestampTz now)
{
	operation_set_terminal(op, OP_DEAD, reason);
	record_simple_event("dead", op, reason, now);
	stats_count_dead(op);
	transition_store(op, now);
}

/*
 * Turn a retry that the budgets denied into a wait for the budget, if it
 * allows the retry (at `at`) before the deadline (budget_wait), else into
 * a dead-letter (budget_exhausted).  Shared with claims that start a
 * retry which waited for a budget.
 */
static void
budget_deny(Decision *d, TimestampTz deadline, TimestampTz at, TimestampTz now)
{
	if (at != TS_NONE && (deadline == TS_NONE || at <= deadline))
	{
		d->reason = "budget_wait";
		if (at > d->retry_at)
		{
			d->retry_at = at;
			d->delay = at - now;
		}
		return;
	}
	d->action = ACT_DEAD;
	d->reason = "budget_exhausted";
	d->retry_at = TS_NONE;
	d->delay = USEC_NONE;
}

/*
 * Record a failed attempt of op and apply the decision to op (the caller
 * stores it).  elapsed is how long ago the failure really happened (an
 * expired lease failed at its expiry); that much of the backoff has already
 * been waited.  Every failure is traced.
 */
void
apply_failure(Operation *op, FailureClass failure, FailurePhase phase,
			  const char *code, const char *message, int64 retry_after,
			  int64 elapsed, TimestampTz now, Decision *d)
{
	DecisionInput in;
	EventData	ev;
	int			attempt = Max(op->attempts, 1);
	int64		backoff;
	bool		cancelled = false;

	if (op->observed_receipt != NULL)
	{
		apply_pending_evidence(op, failure, phase, code, message, now, d);
		return;
	}
	learn_run_state(op);

	backoff = backoff_usec(attempt, op->policy.base_delay,
						   op->policy.max_delay, op->policy.multiplier,
						   op->policy.jitter, op->last_delay);
	in.failure = failure;
	in.phase = phase;
	in.idempotency = op->policy.idempotency;
	in.side_effect = op->policy.side_effect;
	in.attempt = attempt;
	in.max_attempts = op->policy.max_attempts;
	in.delay = elapsed >= backoff ? 0 : backoff - elapsed;
	in.retry_after = retry_after;
	in.deadline = op->deadline;
	in.now = now;
	decide_failure(&in, d);
	if (d->action == ACT_RETRY && op->compensating && op->compensation_of == NULL)
	{
		/* the run is being undone: a failed step is not tried again */
		cancelled = true;
		d->action = ACT_DEAD;
		d->reason = "compensating";
		d->retry_at = TS_NONE;
		d->delay = USEC_NONE;
	}
	if (d->action == ACT_RETRY)
	{
		TimestampTz allowed_at;
		const char *why;

		if (!budget_allow_retry(op, failure, now, &allowed_at, &why))
		{
			budget_deny(d, op->deadline, allowed_at, now);
			stats_count(op->tenant, op->tool, ST_BUDGET_DENIALS);
		}
	}

	op->failure_class = failure;
	op->failure_phase = phase == PHASE_UNKNOWN ? -1 : (int) phase;
	op->failure_code = (char *) code;
	op->failure_message = (char *) message;
	op->reason = (char *) d->reason;
	op->lease_expires_at = TS_NONE;
	switch (d->action)
	{
		case ACT_RETRY:
			op->state = OP_RETRY_WAIT;
			op->next_attempt_at = d->retry_at;
			op->last_delay = backoff;
			break;
		case ACT_VERIFY:
			op->state = OP_VERIFY;
			op->next_attempt_at = TS_NONE;
			/* reconcile() reports it if nobody resolves it in time */
			op->reconcile_at = ts_add_usec(now, (int64) ar_verify_stale_after_sec * USECS_PER_SEC);
			stats_count(op->tenant, op->tool, ST_VERIFICATIONS);
			break;
		case ACT_DEAD:
			operation_set_terminal(op, cancelled ? OP_CANCELLED : OP_DEAD, d->reason);
			if (!cancelled)
				stats_count_dead(op);
			break;
		case ACT_SUCCEEDED:
			elog(ERROR, "agentretry: a failure was decided as a success");
	}

	ev.kind = cancelled ? "cancel" : action_labels[d->action];
	ev.op = op;
	ev.failure_class = failure;
	ev.failure_phase = op->failure_phase;
	ev.code = code;
	ev.message = message;
	ev.reason = d->reason;
	ev.delay = d->delay;
	ev.actor = NULL;
	ev.receipt = NULL;
	ev.source = NULL;
	ev.detail = NULL;
	ev.at = now;
	record_event(&ev);
}

/*
 * Evidence that op's side effect happened arrived (observe()) while op was
 * leased, and now its holder reports a failure, gives the lease back, an
 * operator cancels it, or the lease expired: the side effect did happen.
 * So op succeeds with the observed receipt (reason corrected) and is never
 * retried, and what was believed ("failed", "released", "cancelled") is
 * recorded as an outcome_corrected anomaly.  The caller stores op.
 */
void
apply_evidence(Operation *op, const char *believed, TimestampTz now)
{
	EventData	ev;
	AnomalyData an;
	StringInfoData detail;
	/* the failure fields are this attempt's only when it failed */
	bool		failed = strcmp(believed, "failed") == 0;

	op->receipt = op->observed_receipt;
	op->observed_receipt = NULL;
	operation_set_terminal(op, OP_SUCCEEDED, "corrected");
	op->reconcile_at = now;		/* its receipt: check for duplicates */

	anomaly_init(&an, "outcome_corrected", op, now);
	an.receipt = op->receipt;
	an.attempt = op->attempts;
	detail_begin(&detail);
	detail_text(&detail, "believed", believed);
	if (failed && op->failure_class >= 0)
		detail_text(&detail, "failure_class", failure_class_labels[op->failure_class]);
	if (failed)
		detail_text(&detail, "code", op->failure_code);
	an.detail = detail_end(&detail);
	record_anomaly(&an);

	memset(&ev, 0, sizeof(ev));
	ev.kind = "corrected";
	ev.op = op;
	ev.failure_class = failed ? op->failure_class : -1;
	ev.failure_phase = failed ? op->failure_phase : -1;
	ev.code = failed ? op->failure_code : NULL;
	ev.message = failed ? op->failure_message : NULL;
	ev.reason = "corrected";
	ev.delay = USEC_NONE;
	ev.receipt = op->receipt;
	ev.at = now;
	record_event(&ev);
	stats_count_success(op, now);
}

/* a failure reported after evidence (see apply_evidence): d says succeeded */
static void
apply_pending_evidence(Operation *op, FailureClass failure,
					   FailurePhase phase, const char *code,
					   const char *message, TimestampTz now, Decision *d)
{
	op->failure_class = failure;
	op->failure_phase = phase == PHASE_UNKNOWN ? -1 : (int) phase;
	op->failure_code = (char *) code;
	op->failure_message = (char *) message;
	apply_evidence(op, "failed", now);

	d->action = ACT_SUCCEEDED;
	d->retry_at = TS_NONE;
	d->delay = USEC_NONE;
	d->attempt = op->attempts;
	d->reason = "observed";
}

void
report_unknown_key(const char *tenant, const char *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_AR_UNKNOWN_KEY),
			 errmsg("operation \"%s\" does not exist", key),
			 errdetail("No operation has this key in tenant \"%s\".", tenant)));
}

/*
 * The fencing check of complete, fail, heartbeat and release: only the
 * newest lease of an operation that is not terminal may act.
 */
void
check_fencing(const Operation *op, int64 lease_token)
{
	check_token(op, lease_token);
	if (op_state_terminal(op->state))
		ereport(ERROR,
				(errcode(ERRCODE_AR_LEASE_LOST),
				 errmsg("lease on operation \"%s\" was lost", op->key),
				 errdetail("The operation is already %s.", op_state_labels[op->state])));
	/* awaiting approval, or a compensation not yet started: its token was never handed out */
	if (op->state == OP_AWAITING_APPROVAL || op->first_attempt_at == TS_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_AR_LEASE_LOST),
				 errmsg("lease on operation \"%s\" was lost", op->key),
				 errdetail("No lease of the operation was ever issued; it is %s.",
						   op_state_labels[op->state]),
				 errhint("Claim the operation first.")));
}

/* Only the newest fencing token of an operation may act on it. */
void
check_token(const Operation *op, int64 lease_token)
{
	if (lease_token > op->lease_token)
		ereport(ERROR,
				(errcode(ERRCODE_AR_LEASE_LOST),
				 errmsg("lease on operation \"%s\" was lost", op->key),
				 errdetail("Lease token " INT64_FORMAT " was never issued; the newest is " INT64_FORMAT ".",
						   lease_token, op->lease_token)));
	if (lease_token < op->lease_token)
		ereport(ERROR,
				(errcode(ERRCODE_AR_LEASE_LOST),
				 errmsg("lease on operation \"%s\" was lost", op->key),
				 errdetail("Lease token " INT64_FORMAT " was superseded by " INT64_FORMAT ".",
						   lease_token, op->lease_token),
				 errhint("Another worker took the operation over; record nothing for this attempt.")));
}
