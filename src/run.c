/*-------------------------------------------------------------------------
 *
 * run.c
 *	  Runs: start_run(), finish_run(), checkpoint(), context() and
 *	  compensate().
 *
 * A run is one execution of an agent's multi-step workflow, named by
 * run_id within a tenant.  Claims that name it are its steps (a claim of
 * an unknown run starts it).  Its shared context is versioned:
 * checkpoint() appends version n + 1 in the caller's transaction, so a
 * checkpoint that rolls back is never seen, and with expected_version it
 * is an optimistic write (AR005 when another step wrote first).
 *
 * Locks: checkpoint() bumps the run's context_version with one UPDATE
 * (FOR NO KEY UPDATE on the run's row until commit), so concurrent
 * checkpoints of one run are serialised and a stale expected_version is
 * seen after the wait.  compensate() locks the run FOR UPDATE (runs.c)
 * and touches its steps only with SKIP LOCKED (saga.c).
 *
 * src/run.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "events.h"
#include "runs.h"
#include "saga.h"
#include "tenancy.h"
#include "transition.h"

static ArPlan start_run_plan = {
	"INSERT INTO agentretry.runs (tenant, run_id, state, workflow_version,"
	" correlation_id, max_retry_events, started_at, updated_at)"
	" VALUES ($1, $2, 'running', $3, $4, $5, $6, $6)"
	" ON CONFLICT (tenant, run_id) DO NOTHING RETURNING 1",
	6, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID}
};

/* what a repeated start_run() says and an earlier one left unsaid */
static ArPlan fill_run_plan = {
	"UPDATE agentretry.runs SET"
	" workflow_version = coalesce(workflow_version, $3),"
	" correlation_id = coalesce(correlation_id, $4),"
	" max_retry_events = coalesce(max_retry_events, $5), updated_at = $6"
	" WHERE tenant = $1 AND run_id = $2",
	6, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID}
};

static ArPlan bump_context_plan = {
	"UPDATE agentretry.runs SET context_version = context_version + 1, updated_at = $4"
	" WHERE tenant = $1 AND run_id = $2"
	" AND ($3::integer IS NULL OR context_version = $3)"
	" AND state IN ('running', 'compensating')"
	" RETURNING context_version",
	4, {TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID}
};

static ArPlan insert_context_plan = {
	"INSERT INTO agentretry.run_context (tenant, run_id, version, step, context, created_at)"
	" VALUES ($1, $2, $3, $4, $5, $6)",
	6, {TEXTOID, TEXTOID, INT4OID, TEXTOID, JSONBOID, TIMESTAMPTZOID}
};

static ArPlan context_plan = {
	"SELECT c.context FROM agentretry.run_context c"
	" WHERE c.tenant = $1 AND c.run_id = $2"
	" AND ($3::integer IS NULL OR c.version = $3)"
	" ORDER BY c.version DESC LIMIT 1",
	3, {TEXTOID, TEXTOID, INT4OID}
};

static ArPlan begin_compensation_plan = {
	"UPDATE agentretry.runs SET state = 'compensating', compensate_reason = $3,"
	" finished_at = NULL, updated_at = $4"
	" WHERE tenant = $1 AND run_id = $2",
	4, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

static char *
arg_run_id(FunctionCallInfo fcinfo, int argno)
{
	check_not_null(fcinfo, argno, "run_id");
	return arg_name(fcinfo, argno, "run_id", NULL, AR_MAX_KEY_LEN);
}

PG_FUNCTION_INFO_V1(agentretry_start_run);

/*
 * start_run(run_id text, tenant text DEFAULT NULL, workflow_version text
 *			 DEFAULT NULL, max_retry_events integer DEFAULT NULL,
 *			 correlation_id text DEFAULT NULL) returns run_state
 *
 * Starts a run, or returns the state of the run already started
 * (idempotent).  A repeated call fills in what earlier calls (or the
 * implicit start by a claim) left NULL; naming another workflow_version
 * than the run has raises AR001.  max_retry_events bounds the run's retry
 * events (default agentretry.run_max_retries).
 */
Datum
agentretry_start_run(PG_FUNCTION_ARGS)
{
	char	   *run_id = arg_run_id(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	char	   *version = arg_name(fcinfo, 2, "workflow_version", NULL, AR_MAX_NAME_LEN);
	char	   *correlation = arg_name(fcinfo, 4, "correlation_id", NULL, AR_MAX_KEY_LEN);
	Datum		values[6];
	char		nulls[6];
	TimestampTz now = GetCurrentTimestamp();
	RunState	state = RUN_RUNNING;
	ArSpi		spi;

	memset(nulls, ' ', sizeof(nulls));
	if (!PG_ARGISNULL(3) && PG_GETARG_INT32(3) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retry_events must not be negative"),
				 errdetail("max_retry_events is %d.", PG_GETARG_INT32(3))));
	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	param_text(values, nulls, 2, version);
	param_text(values, nulls, 3, correlation);
	values[4] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	values[5] = TimestampTzGetDatum(now);

	ar_spi_begin(&spi);
	if (ar_run(&start_run_plan, values, nulls, false) > 0)
	{
		if (ar_trace_all)
			record_run_event("start_run", tenant, run_id, version, false, now);
	}
	else
	{
		Run			run;

		/* read only: the UPDATE that fills fields in locks by itself */
		if (!run_read(tenant, run_id, RUN_LOCK_NONE, &run))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not start run \"%s\" while it was being purged", run_id),
					 errhint("Retry the call.")));
		if (version && run.workflow_version &&
			strcmp(version, run.workflow_version) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_AR_FINGERPRINT_CONFLICT),
					 errmsg("run \"%s\" was started with another workflow version", run_id),
					 errdetail("The run has workflow version \"%s\"; this call names \"%s\".",
							   run.workflow_version, version),
					 errhint("Use a new run_id for a run of another workflow version.")));
		if ((version && !run.workflow_version) ||
			(correlation && !run.correlation_id) ||
			(!PG_ARGISNULL(3) && run.max_retry_events < 0))
			ar_run(&fill_run_plan, values, nulls, false);
		state = run.state;
	}
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result_label_datum(fcinfo, run_state_labels[state]));
}

PG_FUNCTION_INFO_V1(agentretry_finish_run);

/*
 * finish_run(run_id text, tenant text DEFAULT NULL, succeeded boolean
 *			  DEFAULT true) returns run_state
 *
 * Ends a running run as succeeded or failed.  Finishing it again the same
 * way returns its state; anything else (finishing it the other way, or a
 * run being compensated) raises AR004.  Steps still open stay as they
 * are.
 */
Datum
agentretry_finish_run(PG_FUNCTION_ARGS)
{
	char	   *run_id = arg_run_id(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	RunState	target;
	Run			run;
	TimestampTz now;
	ArSpi		spi;

	check_not_null(fcinfo, 2, "succeeded");
	target = PG_GETARG_BOOL(2) ? RUN_SUCCEEDED : RUN_FAILED;

	ar_spi_begin(&spi);
	if (!run_read(tenant, run_id, RUN_LOCK_NO_KEY_UPDATE, &run))
		report_unknown_run(tenant, run_id);
	now = GetCurrentTimestamp();
	if (run.state == RUN_RUNNING)
	{
		run_set_state(tenant, run_id, target, now);
		record_run_event("finish_run", tenant, run_id, run_state_labels[target],
						 false, now);
	}
	else if (run.state != target)
		report_run_state("finish", &run,
						 run.state == RUN_COMPENSATING ?
						 "The run ends when its compensations end." :
						 "A run is finished once.");
	ar_spi_end(&spi);
	PG_RETURN_DATUM(result_label_datum(fcinfo, run_state_labels[target]));
}

PG_FUNCTION_INFO_V1(agentretry_checkpoint);

/*
 * checkpoint(run_id text, step text, context jsonb, tenant text DEFAULT
 *			  NULL, expected_version integer DEFAULT NULL) returns integer
 *
 * Stores the next version of the run's context (1, 2, ...) and returns its
 * number.  With expected_version (0: no checkpoint yet) it stores nothing
 * and raises AR005 unless that is the newest version.  Allowed while the
 * run is running or being compensated (AR004 otherwise); AR003 for an
 * unknown run.
 */
Datum
agentretry_checkpoint(PG_FUNCTION_ARGS)
{
	char	   *run_id = arg_run_id(fcinfo, 0);
	char	   *step;
	Jsonb	   *context = arg_payload(fcinfo, 2, "context", true);
	char	   *tenant = arg_tenant(fcinfo, 3);
	Datum		values[6];
	char		nulls[6];
	int32		version;
	bool		isnull;
	TimestampTz now = GetCurrentTimestamp();
	ArSpi		spi;

	check_not_null(fcinfo, 1, "step");
	step = arg_name(fcinfo, 1, "step", NULL, AR_MAX_KEY_LEN);
	if (!PG_ARGISNULL(4) && PG_GETARG_INT32(4) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expected_version must not be negative"),
				 errdetail("expected_version is %d.", PG_GETARG_INT32(4))));

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[2] = PG_ARGISNULL(4) ? 'n' : ' ';
	values[3] = TimestampTzGetDatum(now);

	ar_spi_begin(&spi);
	while (ar_run(&bump_context_plan, values, nulls, false) == 0)
	{
		Run			run;

		if (!run_read(tenant, run_id, RUN_LOCK_NONE, &run))
			report_unknown_run(tenant, run_id);
		if (run.state != RUN_RUNNING && run.state != RUN_COMPENSATING)
			report_run_state("checkpoint", &run,
							 "Context is written while a run is running or being compensated.");
		/* without expected_version, only the run's state refuses: it changed, try again */
		if (PG_ARGISNULL(4))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_AR_CONTEXT_CONFLICT),
				 errmsg("context of run \"%s\" changed since version %d",
						run_id, PG_GETARG_INT32(4)),
				 errdetail("The newest version is %d.", run.context_version),
				 errhint("Read the context again with context() and redo the step's decision.")));
	}
	version = DatumGetInt32(first_value(&isnull));

	values[2] = Int32GetDatum(version);
	nulls[2] = ' ';
	values[3] = CStringGetTextDatum(step);
	values[4] = JsonbPGetDatum(context);
	values[5] = TimestampTzGetDatum(now);
	ar_run(&insert_context_plan, values, nulls, false);
	ar_spi_end(&spi);
	PG_RETURN_INT32(version);
}

PG_FUNCTION_INFO_V1(agentretry_context);

/*
 * context(run_id text, tenant text DEFAULT NULL, version integer DEFAULT
 *		   NULL) returns jsonb
 *
 * The newest committed version of the run's context (or the caller's own
 * uncommitted one), or the version asked for; NULL when there is none.
 * AR003 for an unknown run.
 */
Datum
agentretry_context(PG_FUNCTION_ARGS)
{
	char	   *run_id = arg_run_id(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	Datum		result = (Datum) 0;
	bool		found;
	bool		isnull;
	ArSpi		spi;

	if (!PG_ARGISNULL(2) && PG_GETARG_INT32(2) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("version must be at least 1"),
				 errdetail("version is %d.", PG_GETARG_INT32(2))));
	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(run_id);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';

	ar_spi_begin(&spi);
	found = ar_run(&context_plan, values, nulls, true) > 0;
	if (found)
	{
		Datum		d = first_value(&isnull);

		MemoryContextSwitchTo(spi.caller);
		result = PointerGetDatum(DatumGetJsonbPCopy(d));
	}
	else
	{
		Run			run;

		if (!run_read(tenant, run_id, RUN_LOCK_NONE, &run))
			report_unknown_run(tenant, run_id);
	}
	ar_spi_end(&spi);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

PG_FUNCTION_INFO_V1(agentretry_compensate);

/*
 * compensate(run_id text, tenant text DEFAULT NULL, reason text DEFAULT
 *			  NULL) returns integer
 *
 * Puts the run in compensating and returns how many compensations it
 * scheduled (see saga.c): its waiting retries and approvals are cancelled
 * (reason compensating), its steps in flight are waited for, and its
 * succeeded steps are undone newest first.  A running, succeeded or failed
 * run may be compensated (giving up is how an agent compensates a running
 * one); calling it again, or for a run already compensated, schedules
 * nothing and returns 0.  AR003 for an unknown run.
 */
Datum
agentretry_compensate(PG_FUNCTION_ARGS)
{
	char	   *run_id = arg_run_id(fcinfo, 0);
	char	   *tenant = arg_tenant(fcinfo, 1);
	char	   *reason = arg_optional_text(fcinfo, 2, "reason");
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Run			run;
	TimestampTz now;
	int			scheduled = 0;
	ArSpi		spi;

	ar_spi_begin(&spi);
	/* FOR UPDATE: waits for claims starting steps, and they for us */
	if (!run_read(tenant, run_id, RUN_LOCK_UPDATE, &run))
		report_unknown_run(tenant, run_id);
	if (run.state == RUN_RUNNING || run.state == RUN_SUCCEEDED ||
		run.state == RUN_FAILED)
	{
		now = GetCurrentTimestamp();	/* after any wait for the run's lock */
		values[0] = CStringGetTextDatum(tenant);
		values[1] = CStringGetTextDatum(run_id);
		param_text(values, nulls, 2, reason);
		values[3] = TimestampTzGetDatum(now);
		ar_run(&begin_compensation_plan, values, nulls, false);
		record_run_event("compensate", tenant, run_id, reason, true, now);
		scheduled = saga_advance(tenant, run_id, now);
	}
	ar_spi_end(&spi);
	PG_RETURN_INT32(scheduled);
}

PG_FUNCTION_INFO_V1(agentretry_run_max_retries);

/*
 * run_max_retries() returns integer
 *
 * The value of agentretry.run_max_retries, the retry events allowed to a
 * run that does not set max_retry_events.  A function rather than
 * current_setting() in run_status, because calling it loads the library
 * that defines the setting.
 */
Datum
agentretry_run_max_retries(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(ar_run_max_retries);
}
