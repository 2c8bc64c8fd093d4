/*-------------------------------------------------------------------------
 *
 * events.c
 *	  The append-only trace in agentretry.events.
 *
 * Retries, failures, verifications, dead-letters and operator actions are
 * always traced; claims, replays and completions only with
 * agentretry.trace_all, because they are the hot path and the operations
 * row already records them.  Events are written in the caller's
 * transaction, so a rolled-back decision leaves no trace.
 *
 * src/events.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "events.h"

#define EVENT_NARGS 20

/* the run's workflow version and correlation id go on every event of it */
static ArPlan insert_event_plan = {
	"INSERT INTO agentretry.events"
	" (tenant, at, kind, key, tool, run_id, step, attempt,"
	"  failure_class, failure_phase, code, message, reason,"
	"  delay, lease_token, owner, actor, receipt, source, detail,"
	"  workflow_version, correlation_id)"
	" SELECT $1, $2, $3, $4, $5, $6, $7, $8,"
	"  $9::agentretry.failure_class, $10::agentretry.failure_phase,"
	"  $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,"
	"  r.workflow_version, r.correlation_id"
	" FROM (SELECT) one LEFT JOIN agentretry.runs r"
	"  ON r.tenant = $1 AND r.run_id = $6",
	EVENT_NARGS,
	{TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INTERVALOID,
	INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID}
};

/* Append one event; the caller must be SPI-connected. */
void
record_event(const EventData *ev)
{
	const Operation *op = ev->op;
	Datum		values[EVENT_NARGS];
	char		nulls[EVENT_NARGS];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = TimestampTzGetDatum(ev->at);
	values[2] = CStringGetTextDatum(ev->kind);
	param_text(values, nulls, 3, op->key);
	param_text(values, nulls, 4, op->tool);
	param_text(values, nulls, 5, op->run_id);
	param_text(values, nulls, 6, op->step);
	/*
	 * an event of a run itself (no key), or of no operation (evidence for
	 * an unknown key, an anomaly acknowledged), has no attempt and no token
	 */
	values[7] = Int32GetDatum(op->attempts);
	nulls[7] = op->key && (op->attempts > 0 || op->lease_token > 0) ? ' ' : 'n';
	param_label(values, nulls, 8, failure_class_labels, ev->failure_class);
	param_label(values, nulls, 9, failure_phase_labels, ev->failure_phase);
	param_text(values, nulls, 10, ev->code);
	param_text(values, nulls, 11, ev->message);
	param_text(values, nulls, 12, ev->reason);
	param_usec(values, nulls, 13, ev->delay);
	values[14] = Int64GetDatum(op->lease_token);
	nulls[14] = op->key && op->lease_token > 0 ? ' ' : 'n';
	param_text(values, nulls, 15, op->lease_owner);
	param_text(values, nulls, 16, ev->actor);
	param_text(values, nulls, 17, ev->receipt);
	param_text(values, nulls, 18, ev->source);
	param_jsonb(values, nulls, 19, ev->detail);

	ar_run(&insert_event_plan, values, nulls, false);
}

/* An event without failure details, by actor (NULL: no person acted). */
static void
record_plain_event(const char *kind, const Operation *op, const char *reason,
				   const char *message, const char *actor, TimestampTz at)
{
	EventData	ev;

	ev.kind = kind;
	ev.op = op;
	ev.failure_class = -1;
	ev.failure_phase = -1;
	ev.code = NULL;
	ev.message = message;
	ev.reason = reason;
	ev.delay = USEC_NONE;
	ev.actor = actor;
	ev.receipt = op->receipt;
	ev.source = NULL;
	ev.detail = NULL;
	ev.at = at;
	record_event(&ev);
}

/* An event without failure details (claim, replay, complete, release...). */
void
record_simple_event(const char *kind, const Operation *op,
					const char *reason, TimestampTz at)
{
	record_plain_event(kind, op, reason, NULL, NULL, at);
}

/* The role acting: the caller of the SECURITY DEFINER function. */
char *
current_actor(void)
{
	return GetUserNameFromId(ar_caller(), false);
}

/*
 * An event of a person's action (an operator, an approver): actor names
 * the role, message carries the note or reason given.
 */
void
record_actor_event(const char *kind, const Operation *op, const char *reason,
				   const char *message, TimestampTz at)
{
	record_plain_event(kind, op, reason, message, current_actor(), at);
}

/*
 * Evidence that op's side effect happened (observe()): answer is what it
 * did, receipt, source and detail are the evidence as reported.  op may be
 * a key that does not exist (an orphan), with only tenant and key set.
 */
void
record_observation(const Operation *op, const char *answer,
				   const char *receipt, const char *source, Jsonb *detail,
				   TimestampTz at)
{
	EventData	ev;

	memset(&ev, 0, sizeof(ev));
	ev.kind = "observe";
	ev.op = op;
	ev.failure_class = -1;
	ev.failure_phase = -1;
	ev.reason = answer;
	ev.delay = USEC_NONE;
	ev.receipt = receipt;
	ev.source = source;
	ev.detail = detail;
	ev.at = at;
	record_event(&ev);
}
