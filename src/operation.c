/*-------------------------------------------------------------------------
 *
 * operation.c
 *	  Reading and writing rows of agentretry.operations.
 *
 * This is the row layer: it knows the table's columns, not the rules of
 * the state machine (transition.c).  Writes and locking reads go through
 * the named plans of spi.c; query texts are fully schema-qualified and
 * pass enums as text, so they do not depend on search_path or on enum
 * OIDs.  Callers must be inside ar_spi_begin() / ar_spi_end().  The unlocked read, operation_peek(), is
 * an index scan of the primary key done directly, without the executor.
 *
 * Locks: operation_load() takes FOR UPDATE on the row and is the only way
 * a transition starts, so transitions of one key are serialised by the row
 * lock.  operation_peek() takes none.  operation_complete() is a single
 * UPDATE whose WHERE clause is the fencing check itself; under READ
 * COMMITTED a concurrent transition makes it re-check the newest row
 * version and miss.
 *
 * src/operation.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "operation.h"

/*
 * A policy field of the merged policy, in SQL: the tenant's row for the
 * tool, the tenant's row for every tool, the tool's row, in that order.
 * For complete(), which needs one field (the TTL) and not the whole
 * policy; while no tenant has a policy (the usual case, cached per
 * backend) it reads the tool's row alone (TOOL_FIELD).  A new key, which
 * needs three fields, joins the policy rows instead (INSERT_SQL).
 */
#define TENANT_FIELD(field, tenant, tool) \
	"(SELECT p." field " FROM agentretry.tenant_policies p" \
	" WHERE p.tenant = " tenant " AND p.tool = " tool "), " \
	"(SELECT p." field " FROM agentretry.tenant_policies p" \
	" WHERE p.tenant = " tenant " AND p.tool = '*'), " \
	"(SELECT t." field " FROM agentretry.tools t WHERE t.name = " tool ")"

/* the same, when no tenant has a policy (tenant_policies_exist) */
#define TOOL_FIELD(field, tool) \
	"(SELECT t." field " FROM agentretry.tools t WHERE t.name = " tool ")"

/*
 * The fencing check is the WHERE clause: the newest token, of an operation
 * that was attempted (a token stored for an operation awaiting approval or
 * a pending compensation was never handed out) and is not terminal.  An
 * operation the saga has marked (its run is being compensated) is refused
 * here unless $10 (late) says the caller holds its row lock and moves the
 * saga on (outcome.c), so the common case needs no RETURNING and no read
 * of a run.  A step the saga could not mark (another transaction held it)
 * completes here unseen; the saga counts it in flight until the next
 * change of the run, or the sweep, catches up with it (saga.c).  Likewise
 * evidence observed during the attempt with another receipt than the
 * caller's (a duplicate side effect) is left to a late caller, which
 * records the anomaly.  A success after retries or with a receipt is due
 * for reconcile().
 */
#define COMPLETE_SQL(ttl) \
	"UPDATE agentretry.operations o SET" \
	" state = 'succeeded', result = $4, compensate_tool = $5," \
	" compensate_args = $6, reason = $7, lease_expires_at = NULL," \
	" next_attempt_at = NULL, completed_at = $8, updated_at = $8," \
	" state_since = $8," \
	" expires_at = $8 + coalesce(" ttl ", $9)," \
	" receipt = coalesce($11, o.observed_receipt), observed_receipt = NULL," \
	" reconcile_at = CASE WHEN o.attempts > 1 OR $11 IS NOT NULL" \
	"  OR o.observed_receipt IS NOT NULL THEN $8 END" \
	" WHERE o.tenant = $1 AND o.key = $2 AND o.lease_token = $3" \
	" AND o.state IN ('in_progress', 'retry_wait', 'verify')" \
	" AND o.first_attempt_at IS NOT NULL" \
	" AND ($10 OR NOT o.compensating)" \
	" AND ($10 OR o.observed_receipt IS NULL OR $11 IS NULL" \
	"  OR o.observed_receipt = $11)"

/*
 * A new key: leased as attempt 1, or, when its policy requires approval
 * (gate), recorded as awaiting_approval with no lease, no attempt and no
 * deadline yet (those start with the first attempt).  The policy fields
 * come from one probe of each policy row (joins), not a subquery per
 * field.
 */
#define INSERT_SQL(joins, lease, deadline, gate) \
	"INSERT INTO agentretry.operations AS o" \
	" (tenant, key, op_hash, args, tool, state, attempts, lease_token," \
	"  lease_owner, lease_expires_at, first_attempt_at, last_attempt_at," \
	"  deadline, reason, run_id, step, created_at, updated_at, state_since)" \
	" SELECT $1, $2, $3, $4, $5," \
	"  CASE WHEN g.gate THEN 'awaiting_approval' ELSE 'in_progress' END" \
	"   ::agentretry.operation_state," \
	"  CASE WHEN g.gate THEN 0 ELSE 1 END," \
	"  coalesce((SELECT max(f.floor) FROM agentretry.token_floors f WHERE f.tenant = $1), 0) + 1, $6," \
	"  CASE WHEN NOT g.gate THEN $7 + coalesce($8, g.lease, $9) END," \
	"  CASE WHEN NOT g.gate THEN $7 END, CASE WHEN NOT g.gate THEN $7 END," \
	"  CASE WHEN NOT g.gate THEN $7 + g.deadline END," \
	"  CASE WHEN g.gate THEN 'approval_required' END," \
	"  $10, $11, $7, $7, $7" \
	" FROM (SELECT " gate " AS gate, " lease " AS lease, " deadline " AS deadline" \
	"  FROM (SELECT) one LEFT JOIN agentretry.tools t ON t.name = $5" joins ") g" \
	" ON CONFLICT (tenant, key) DO NOTHING" \
	" RETURNING o.lease_expires_at, o.deadline, o.lease_token, o.attempts"

/*
 * A new key of a tool that does not require approval while no tenant has
 * a policy (both cached per backend): no gate, and the tool's row read for
 * the two fields needed.
 */
#define INSERT_UNGATED_SQL \
	"INSERT INTO agentretry.operations AS o" \
	" (tenant, key, op_hash, args, tool, state, attempts, lease_token," \
	"  lease_owner, lease_expires_at, first_attempt_at, last_attempt_at," \
	"  deadline, run_id, step, created_at, updated_at, state_since)" \
	" VALUES ($1, $2, $3, $4, $5, 'in_progress', 1," \
	"  coalesce((SELECT max(f.floor) FROM agentretry.token_floors f WHERE f.tenant = $1), 0) + 1, $6," \
	"  $7 + coalesce($8, " TOOL_FIELD("lease", "$5") ", $9)," \
	"  $7, $7, $7 + " TOOL_FIELD("deadline", "$5") "," \
	"  $10, $11, $7, $7, $7)" \
	" ON CONFLICT (tenant, key) DO NOTHING" \
	" RETURNING o.lease_expires_at, o.deadline, o.lease_token, o.attempts"

/* the tenant's rows: for every tool (pw) and for this one (pt) */
#define INSERT_TENANT_JOINS \
	" LEFT JOIN agentretry.tenant_policies pw ON pw.tenant = $1 AND pw.tool = '*'" \
	" LEFT JOIN agentretry.tenant_policies pt ON pt.tenant = $1 AND pt.tool = $5"

#define INSERT_NARGS 11
#define INSERT_ARGTYPES \
	{TEXTOID, TEXTOID, BYTEAOID, JSONBOID, TEXTOID, TEXTOID, \
	TIMESTAMPTZOID, INTERVALOID, INTERVALOID, TEXTOID, TEXTOID}

#define COMPLETE_NARGS 11
#define COMPLETE_ARGTYPES \
	{TEXTOID, TEXTOID, INT8OID, JSONBOID, TEXTOID, JSONBOID, TEXTOID, \
	TIMESTAMPTZOID, INTERVALOID, BOOLOID, TEXTOID}
#define COMPLETE_RETURNING \
	" RETURNING o.tool, o.attempts, o.lease_owner, o.run_id, o.step," \
	" o.first_attempt_at, o.compensation_of, o.receipt"

static ArPlan load_lock_plan = {
	"SELECT " AR_OP_SELECT
	" FROM agentretry.operations o" AR_POLICY_JOINS
	" WHERE o.tenant = $1 AND o.key = $2 FOR UPDATE OF o",
	2, {TEXTOID, TEXTOID}
};

/*
 * a new key, with the tenant's policies, and while no tenant has any; the
 * tier default of requires_approval: only destructive tools
 */
static ArPlan insert_plan = {
	INSERT_SQL(INSERT_TENANT_JOINS,
			   "coalesce(pt.lease, pw.lease, t.lease)",
			   "coalesce(pt.deadline, pw.deadline, t.deadline)",
			   "coalesce(pt.requires_approval, pw.requires_approval,"
			   " t.requires_approval, t.side_effect = 'destructive', false)"),
	INSERT_NARGS, INSERT_ARGTYPES
};
static ArPlan insert_ungated_plan = {
	INSERT_UNGATED_SQL, INSERT_NARGS, INSERT_ARGTYPES
};
static ArPlan insert_tool_plan = {
	INSERT_SQL("", "t.lease", "t.deadline",
			   "coalesce(t.requires_approval, t.side_effect = 'destructive', false)"),
	INSERT_NARGS, INSERT_ARGTYPES
};

static ArPlan store_plan = {
	"UPDATE agentretry.operations SET"
	" state = $3::agentretry.operation_state, attempts = $4,"
	" lease_token = $5, lease_owner = $6, lease_expires_at = $7,"
	" next_attempt_at = $8, first_attempt_at = $9, last_attempt_at = $10,"
	" last_failure_class = $11::agentretry.failure_class,"
	" last_failure_phase = $12::agentretry.failure_phase,"
	" last_failure_code = $13, last_failure_message = $14,"
	" last_delay = $15, reason = $16, completed_at = $17,"
	" expires_at = $18, updated_at = $19, deadline = $20, compensating = $21,"
	" receipt = $22, observed_receipt = $23, reconcile_at = $24,"
	" state_since = CASE WHEN state = $3::agentretry.operation_state"
	"                    THEN state_since ELSE $19 END"
	" WHERE tenant = $1 AND key = $2",
	24, {TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INTERVALOID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID,
	TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * complete: with the tenant's policies or the tool's alone, and with or
 * without what an event needs
 */
static ArPlan complete_plan = {
	COMPLETE_SQL(TENANT_FIELD("ttl", "o.tenant", "o.tool")),
	COMPLETE_NARGS, COMPLETE_ARGTYPES
};
static ArPlan complete_returning_plan = {
	COMPLETE_SQL(TENANT_FIELD("ttl", "o.tenant", "o.tool")) COMPLETE_RETURNING,
	COMPLETE_NARGS, COMPLETE_ARGTYPES
};
static ArPlan complete_tool_plan = {
	COMPLETE_SQL(TOOL_FIELD("ttl", "o.tool")),
	COMPLETE_NARGS, COMPLETE_ARGTYPES
};
static ArPlan complete_returning_tool_plan = {
	COMPLETE_SQL(TOOL_FIELD("ttl", "o.tool")) COMPLETE_RETURNING,
	COMPLETE_NARGS, COMPLETE_ARGTYPES
};

static ArPlan store_receipts_plan = {
	"UPDATE agentretry.operations SET receipt = $3, observed_receipt = $4,"
	" reconcile_at = $5, updated_at = $6"
	" WHERE tenant = $1 AND key = $2",
	6, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};

static ArPlan store_late_result_plan = {
	"UPDATE agentretry.operations SET result = $3, updated_at = $4"
	" WHERE tenant = $1 AND key = $2 AND result IS NULL",
	4, {TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID}
};

static ArPlan row_plan = {
	"SELECT o FROM agentretry.operations o"
	" WHERE o.tenant = $1 AND o.key = $2",
	2, {TEXTOID, TEXTOID}
};

static void fill_operation(Operation *op, Datum *v, bool *n);

/*
 * Fill op and op->policy from a row of AR_OP_SELECT.
 */
void
operation_from_row(HeapTuple tup, TupleDesc desc, Operation *op)
{
	Datum		v[AR_OP_NCOLUMNS];
	bool		n[AR_OP_NCOLUMNS];
	int			i;

	op->tenant = col_text(tup, desc, 1);
	op->key = col_text(tup, desc, 2);
	for (i = 0; i < AR_OP_NCOLUMNS; i++)
		v[i] = SPI_getbinval(tup, desc, i + 3, &n[i]);
	fill_operation(op, v, n);
	policy_from_columns(&op->policy, tup, desc, AR_OP_NCOLUMNS + 3);
}

/*
 * Read the operation (tenant, key) into op with its row locked FOR UPDATE
 * (waiting for a concurrent holder), and its merged policy into
 * op->policy.  Returns false when the key does not exist.
 */
bool
operation_load(const char *tenant, const char *key, Operation *op)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(key);
	if (ar_run(&load_lock_plan, values, NULL, false) == 0)
		return false;
	operation_from_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, op);
	return true;
}

/*
 * Columns operation_peek() reads, by name; their attribute numbers are
 * looked up once per relation OID (columns are only ever appended by
 * upgrades, so a number never changes meaning).
 */
static const char *const peek_columns[] = {
	"state", "op_hash", "tool", "attempts", "lease_token", "lease_owner",
	"lease_expires_at", "next_attempt_at", "first_attempt_at",
	"last_attempt_at", "deadline", "last_failure_class",
	"last_failure_phase", "last_failure_code", "last_failure_message",
	"last_delay", "reason", "result", "run_id", "step", "compensation_of",
	"compensating", "receipt", "observed_receipt", "reconcile_at"
};
#define PEEK_NCOLUMNS lengthof(peek_columns)
StaticAssertDecl(PEEK_NCOLUMNS == AR_OP_NCOLUMNS,
				 "AR_OP_COLUMNS and peek_columns must list the same columns");

static Oid	peek_relid = InvalidOid;
static AttrNumber peek_attnums[PEEK_NCOLUMNS];
static bool peek_callback_registered = false;

/* any change to the table (an upgrade's ALTER) forgets the column map */
static void
peek_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == peek_relid)
		peek_relid = InvalidOid;
}

static void
resolve_peek_attnums(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i,
				j;

	if (!peek_callback_registered)
	{
		CacheRegisterRelcacheCallback(peek_relcache_callback, (Datum) 0);
		peek_callback_registered = true;
	}
	for (i = 0; i < (int) PEEK_NCOLUMNS; i++)
	{
		peek_attnums[i] = InvalidAttrNumber;
		for (j = 0; j < desc->natts; j++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, j);

			if (!att->attisdropped &&
				strcmp(NameStr(att->attname), peek_columns[i]) == 0)
				peek_attnums[i] = att->attnum;
		}
		if (peek_attnums[i] == InvalidAttrNumber)
			elog(ERROR, "agentretry: column \"%s\" of agentretry.operations is missing",
				 peek_columns[i]);
	}
	peek_relid = RelationGetRelid(rel);
}

static int
enum_oid_index(const char *const *labels, Oid enumoid)
{
	HeapTuple	tup = SearchSysCache1(ENUMOID, ObjectIdGetDatum(enumoid));
	int			result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "agentretry: cache lookup failed for enum value %u", enumoid);
	result = label_index(labels, NameStr(((Form_pg_enum) GETSTRUCT(tup))->enumlabel));
	ReleaseSysCache(tup);
	return result;
}

/*
 * Fill op from the values of peek_columns (enums as stored, i.e. OIDs), as
 * read by operation_load (SPI) or operation_peek (index scan).
 */
static void
fill_operation(Operation *op, Datum *v, bool *n)
{
	op->state = (OpState) enum_oid_index(op_state_labels, DatumGetObjectId(v[0]));
	op->op_hash = DatumGetByteaPP(v[1]);
	op->tool = TextDatumGetCString(v[2]);
	op->attempts = DatumGetInt32(v[3]);
	op->lease_token = DatumGetInt64(v[4]);
	op->lease_owner = n[5] ? NULL : TextDatumGetCString(v[5]);
	op->lease_expires_at = n[6] ? TS_NONE : DatumGetTimestampTz(v[6]);
	op->next_attempt_at = n[7] ? TS_NONE : DatumGetTimestampTz(v[7]);
	op->first_attempt_at = n[8] ? TS_NONE : DatumGetTimestampTz(v[8]);
	op->last_attempt_at = n[9] ? TS_NONE : DatumGetTimestampTz(v[9]);
	op->deadline = n[10] ? TS_NONE : DatumGetTimestampTz(v[10]);
	op->failure_class = n[11] ? -1 :
		enum_oid_index(failure_class_labels, DatumGetObjectId(v[11]));
	op->failure_phase = n[12] ? -1 :
		enum_oid_index(failure_phase_labels, DatumGetObjectId(v[12]));
	op->failure_code = n[13] ? NULL : TextDatumGetCString(v[13]);
	op->failure_message = n[14] ? NULL : TextDatumGetCString(v[14]);
	op->last_delay = n[15] ? USEC_NONE : interval_usec(DatumGetIntervalP(v[15]));
	op->reason = n[16] ? NULL : TextDatumGetCString(v[16]);
	op->result = v[17];
	op->has_result = !n[17];
	op->run_id = n[18] ? NULL : TextDatumGetCString(v[18]);
	op->step = n[19] ? NULL : TextDatumGetCString(v[19]);
	op->compensation_of = n[20] ? NULL : TextDatumGetCString(v[20]);
	op->compensating = !n[21] && DatumGetBool(v[21]);
	op->receipt = n[22] ? NULL : TextDatumGetCString(v[22]);
	op->observed_receipt = n[23] ? NULL : TextDatumGetCString(v[23]);
	op->reconcile_at = n[24] ? TS_NONE : DatumGetTimestampTz(v[24]);
	op->run_checked = false;
}

/*
 * Read the operation (tenant, key) into op without locking it, straight
 * from the primary key index: no executor, no plan, which is most of the
 * cost of a replay.  The snapshot is taken as a statement of the caller's
 * transaction would take it (a fresh one under READ COMMITTED, after the
 * caller's own earlier writes), so it sees what an SPI SELECT would.
 * op->policy is not filled.  Returns false when the key does not exist.
 */
bool
operation_peek(const char *tenant, const char *key, Operation *op)
{
	Oid			nsp = get_namespace_oid("agentretry", false);
	Oid			relid = get_relname_relid("operations", nsp);
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData skey[2];
	bool		found = false;

	if (!OidIsValid(relid))
		elog(ERROR, "agentretry: table agentretry.operations is missing");
	rel = table_open(relid, AccessShareLock);
	if (RelationGetRelid(rel) != peek_relid)
		resolve_peek_attnums(rel);
	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);

	/* scan key attribute numbers are index columns: (tenant, key) */
	ScanKeyEntryInitialize(&skey[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ,
						   CStringGetTextDatum(tenant));
	ScanKeyEntryInitialize(&skey[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ,
						   CStringGetTextDatum(key));

	CommandCounterIncrement();
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, GetTransactionSnapshot(), 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		int			natts = RelationGetDescr(rel)->natts;
		Datum	   *values = palloc(sizeof(Datum) * natts);
		bool	   *nulls = palloc(sizeof(bool) * natts);
		Datum		v[PEEK_NCOLUMNS];
		bool		n[PEEK_NCOLUMNS];
		int			i;

		/* a copy: the values must outlive the scan's buffer pin */
		heap_deform_tuple(ExecCopySlotHeapTuple(slot), RelationGetDescr(rel),
						  values, nulls);
		for (i = 0; i < (int) PEEK_NCOLUMNS; i++)
		{
			v[i] = values[peek_attnums[i] - 1];
			n[i] = nulls[peek_attnums[i] - 1];
		}
		op->tenant = pstrdup(tenant);
		op->key = pstrdup(key);
		fill_operation(op, v, n);
		found = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, NoLock);
	return found;
}

/*
 * Insert a new operation leased to op->lease_owner as attempt 1, or, when
 * its policy requires approval, awaiting approval with no lease and no
 * attempt (op->state says which).  Its fencing token is 1, or one more than the tenant's token floor once the
 * sweep has purged operations: a key used again after its old row was
 * purged must not hand out a token that a worker of the old operation may
 * still hold.  op carries tenant, key, op_hash, tool, run_id, step and
 * lease_owner.  Returns false when the key already exists (after waiting
 * for an uncommitted insert of the same key to commit or roll back).
 */
bool
operation_insert(Operation *op, Jsonb *args, int64 lease_usec,
				 TimestampTz now)
{
	Datum		values[11];
	char		nulls[11];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = PointerGetDatum(op->op_hash);
	values[3] = JsonbPGetDatum(args);
	values[4] = CStringGetTextDatum(op->tool);
	values[5] = CStringGetTextDatum(op->lease_owner);
	values[6] = TimestampTzGetDatum(now);
	param_usec(values, nulls, 7, lease_usec);
	values[8] = IntervalPGetDatum(usec_interval((int64) ar_default_lease_sec * USECS_PER_SEC));
	param_text(values, nulls, 9, op->run_id);
	param_text(values, nulls, 10, op->step);

	if (ar_run(tenant_policies_exist() ? &insert_plan :
			   tool_may_require_approval(op->tool) ? &insert_tool_plan :
			   &insert_ungated_plan,
			   values, nulls, false) == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	op->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	op->state = op->attempts > 0 ? OP_IN_PROGRESS : OP_AWAITING_APPROVAL;
	op->lease_token = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	op->lease_expires_at = col_ts(tup, desc, 1);
	op->deadline = col_ts(tup, desc, 2);
	op->next_attempt_at = TS_NONE;
	op->first_attempt_at = op->attempts > 0 ? now : TS_NONE;
	op->last_attempt_at = op->first_attempt_at;
	op->failure_class = -1;
	op->failure_phase = -1;
	op->failure_code = NULL;
	op->failure_message = NULL;
	op->last_delay = USEC_NONE;
	op->reason = op->attempts > 0 ? NULL : "approval_required";
	op->has_result = false;
	op->compensation_of = NULL;
	op->compensating = false;
	op->receipt = NULL;
	op->observed_receipt = NULL;
	op->reconcile_at = TS_NONE;
	op->run_checked = true;		/* its claim joined the running run */
	return true;
}

/*
 * Write back every mutable column of op (all but result and compensation,
 * which only operation_complete sets).  The row must be locked by
 * operation_load() or a locking query of AR_OP_SELECT, whose
 * policy supplies the TTL of a terminal row.  state_since moves only when
 * the state does.
 */
void
operation_store(const Operation *op, TimestampTz now)
{
	Datum		values[24];
	char		nulls[24];
	bool		terminal = op_state_terminal(op->state);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = CStringGetTextDatum(op_state_labels[op->state]);
	values[3] = Int32GetDatum(op->attempts);
	values[4] = Int64GetDatum(op->lease_token);
	param_text(values, nulls, 5, op->lease_owner);
	param_ts(values, nulls, 6, op->lease_expires_at);
	param_ts(values, nulls, 7, op->next_attempt_at);
	param_ts(values, nulls, 8, op->first_attempt_at);
	param_ts(values, nulls, 9, op->last_attempt_at);
	param_label(values, nulls, 10, failure_class_labels, op->failure_class);
	param_label(values, nulls, 11, failure_phase_labels, op->failure_phase);
	param_text(values, nulls, 12, op->failure_code);
	param_text(values, nulls, 13, op->failure_message);
	param_usec(values, nulls, 14, op->last_delay);
	param_text(values, nulls, 15, op->reason);
	param_ts(values, nulls, 16, terminal ? now : TS_NONE);
	param_ts(values, nulls, 17, terminal ? ts_add_usec(now, op->policy.ttl) : TS_NONE);
	values[18] = TimestampTzGetDatum(now);
	param_ts(values, nulls, 19, op->deadline);
	values[20] = BoolGetDatum(op->compensating);
	param_text(values, nulls, 21, op->receipt);
	param_text(values, nulls, 22, op->observed_receipt);
	param_ts(values, nulls, 23, op->reconcile_at);

	if (ar_run(&store_plan, values, nulls, false) != 1)
		elog(ERROR, "agentretry: operation \"%s\" vanished while locked", op->key);
}

/*
 * Mark the operation succeeded with its result and receipt, if lease_token
 * is still the newest and the operation not terminal.  One statement: the
 * WHERE clause is the fencing check.  With want_row, op's tool, attempts,
 * owner, run_id, step, first attempt, compensation_of and receipt are
 * filled for tracing and stats (a RETURNING a call with both off does
 * without).  An operation of a run being compensated, or with evidence of
 * another receipt, is only completed late, by a caller holding its row
 * lock.  Returns false when the check failed or the key does not exist.
 */
bool
operation_complete(Operation *op, int64 lease_token, Jsonb *result,
				   const char *receipt, const char *reason,
				   const char *compensate_tool, Jsonb *compensate_args,
				   bool want_row, bool late, TimestampTz now)
{
	Datum		values[COMPLETE_NARGS];
	char		nulls[COMPLETE_NARGS];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	ArPlan	   *plan;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = Int64GetDatum(lease_token);
	param_jsonb(values, nulls, 3, result);
	param_text(values, nulls, 4, compensate_tool);
	param_jsonb(values, nulls, 5, compensate_args);
	param_text(values, nulls, 6, reason);
	values[7] = TimestampTzGetDatum(now);
	values[8] = IntervalPGetDatum(usec_interval((int64) ar_default_ttl_sec * USECS_PER_SEC));
	values[9] = BoolGetDatum(late);
	param_text(values, nulls, 10, receipt);

	if (tenant_policies_exist())
		plan = want_row ? &complete_returning_plan : &complete_plan;
	else
		plan = want_row ? &complete_returning_tool_plan : &complete_tool_plan;
	if (ar_run(plan, values, nulls, false) == 0)
		return false;
	op->state = OP_SUCCEEDED;
	op->lease_token = lease_token;
	op->reason = (char *) reason;
	op->observed_receipt = NULL;
	if (!want_row)
		return true;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	op->tool = col_text(tup, desc, 1);
	op->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	op->lease_owner = col_text(tup, desc, 3);
	op->run_id = col_text(tup, desc, 4);
	op->step = col_text(tup, desc, 5);
	op->first_attempt_at = col_ts(tup, desc, 6);
	op->compensation_of = col_text(tup, desc, 7);
	op->receipt = col_text(tup, desc, 8);
	return true;
}

/*
 * Write back op's receipt, observed receipt and reconcile_at alone (the
 * row locked): evidence that changes nothing else, such as the completion
 * time.
 */
void
operation_store_receipts(const Operation *op, TimestampTz now)
{
	Datum		values[6];
	char		nulls[6];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	param_text(values, nulls, 2, op->receipt);
	param_text(values, nulls, 3, op->observed_receipt);
	param_ts(values, nulls, 4, op->reconcile_at);
	values[5] = TimestampTzGetDatum(now);
	if (ar_run(&store_receipts_plan, values, nulls, false) != 1)
		elog(ERROR, "agentretry: operation \"%s\" vanished while locked", op->key);
}

/*
 * Store result for a succeeded operation that has none (evidence made it
 * succeed before its verifier reported what it found).  The row is locked.
 */
void
operation_store_late_result(const Operation *op, Jsonb *result, TimestampTz now)
{
	Datum		values[4];

	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = JsonbPGetDatum(result);
	values[3] = TimestampTzGetDatum(now);
	ar_run(&store_late_result_plan, values, NULL, false);
}

/*
 * The whole row as a composite datum, in SPI memory: a caller returning it
 * copies it into spi.caller.
 */
Datum
operation_row(const char *tenant, const char *key, bool *found)
{
	Datum		values[2];
	bool		isnull;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(key);
	*found = ar_run(&row_plan, values, NULL, true) > 0;
	if (!*found)
		return (Datum) 0;
	return first_value(&isnull);
}

static void
json_field(StringInfo buf, const char *name, const char *value, bool first)
{
	if (!first)
		appendStringInfoString(buf, ", ");
	escape_json(buf, name);
	appendStringInfoString(buf, ": ");
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/* the last failure of op as {"class", "phase", "code", "message", "reason"} */
Jsonb *
operation_last_error(const Operation *op)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	json_field(&buf, "class",
			   op->failure_class >= 0 ? failure_class_labels[op->failure_class] : NULL, true);
	json_field(&buf, "phase",
			   op->failure_phase >= 0 ? failure_phase_labels[op->failure_phase] : NULL, false);
	json_field(&buf, "code", op->failure_code, false);
	json_field(&buf, "message", op->failure_message, false);
	json_field(&buf, "reason", op->reason, false);
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* Make op terminal (the caller stores it): no lease, no due time. */
void
operation_set_terminal(Operation *op, OpState state, const char *reason)
{
	op->state = state;
	op->reason = (char *) reason;
	op->lease_expires_at = TS_NONE;
	op->next_attempt_at = TS_NONE;
}
