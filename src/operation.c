/*-------------------------------------------------------------------------
 *
 * operation.c
 *	  Reading and writing rows of agentretry.operations, and the state
 *	  transitions shared by claim, fail and resolve.
 *
 * Writes and locking reads go through SPI plans prepared once per backend
 * and kept (SPI_keepplan); the plan cache revalidates them after DDL.  Query
 * texts are fully schema-qualified and pass enums as text, so they do not
 * depend on search_path or on enum OIDs.  Callers must be inside
 * ar_spi_begin() / ar_spi_end().  The unlocked read, operation_peek(), is
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
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "agentretry.h"

/* the columns of peek_columns, in the same order (see fill_operation) */
#define OP_COLUMNS \
	"o.state, o.op_hash, o.tool, o.attempts, o.lease_token, " \
	"o.lease_owner, o.lease_expires_at, o.next_attempt_at, " \
	"o.first_attempt_at, o.last_attempt_at, o.deadline, " \
	"o.last_failure_class, o.last_failure_phase, " \
	"o.last_failure_code, o.last_failure_message, o.last_delay, o.reason, " \
	"o.result, o.run_id, o.step"
#define OP_NCOLUMNS 20

/* what operation_from_row() reads */
#define OP_SELECT "o.tenant, o.key, " OP_COLUMNS ", " AR_POLICY_COLUMNS
StaticAssertDecl(AR_OP_SELECT_NCOLUMNS == 2 + OP_NCOLUMNS + AR_POLICY_NCOLUMNS,
				 "AR_OP_SELECT_NCOLUMNS must count the columns of OP_SELECT");

const char *const operation_select_list = OP_SELECT;

/*
 * A policy field of the merged policy, in SQL: the tenant's row for the
 * tool, the tenant's row for every tool, the tool's row, in that order.
 * For the hot statements (a new key, complete), which need one field and
 * not the whole policy; while no tenant has a policy (the usual case,
 * cached per backend) they read the tool's row alone (TOOL_FIELD).
 */
#define TENANT_FIELD(field, tenant, tool) \
	"(SELECT p." field " FROM agentretry.tenant_policies p" \
	" WHERE p.tenant = " tenant " AND p.tool = " tool "), " \
	"(SELECT p." field " FROM agentretry.tenant_policies p" \
	" WHERE p.tenant = " tenant " AND p.tool = '*'), " \
	"(SELECT t." field " FROM agentretry.tools t WHERE t.name = " tool ")"

/* the fencing check is the WHERE clause */
/* the same, when no tenant has a policy (tenant_policies_exist) */
#define TOOL_FIELD(field, tool) \
	"(SELECT t." field " FROM agentretry.tools t WHERE t.name = " tool ")"

#define COMPLETE_SQL(ttl) \
	"UPDATE agentretry.operations o SET" \
	" state = 'succeeded', result = $4, compensate_tool = $5," \
	" compensate_args = $6, reason = $7, lease_expires_at = NULL," \
	" next_attempt_at = NULL, completed_at = $8, updated_at = $8," \
	" state_since = $8," \
	" expires_at = $8 + coalesce(" ttl ", $9)" \
	" WHERE o.tenant = $1 AND o.key = $2 AND o.lease_token = $3" \
	" AND o.state IN ('in_progress', 'retry_wait', 'verify')"

enum
{
	PLAN_LOAD_LOCK,
	PLAN_INSERT,
	PLAN_INSERT_TOOL,
	PLAN_STORE,
	PLAN_COMPLETE,
	PLAN_COMPLETE_RETURNING,
	PLAN_COMPLETE_TOOL,
	PLAN_COMPLETE_RETURNING_TOOL,
	PLAN_ROW,
	NUM_PLANS
};

typedef struct PlanDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[20];
} PlanDef;

static const PlanDef plan_defs[NUM_PLANS] = {
	[PLAN_LOAD_LOCK] = {
		"SELECT " OP_SELECT
		" FROM agentretry.operations o" AR_POLICY_JOINS
		" WHERE o.tenant = $1 AND o.key = $2 FOR UPDATE OF o",
		2, {TEXTOID, TEXTOID}
	},
#define INSERT_SQL(lease, deadline) \
		"INSERT INTO agentretry.operations AS o" \
		" (tenant, key, op_hash, args, tool, state, attempts, lease_token," \
		"  lease_owner, lease_expires_at, first_attempt_at, last_attempt_at," \
		"  deadline, run_id, step, created_at, updated_at, state_since)" \
		" VALUES ($1, $2, $3, $4, $5, 'in_progress', 1," \
		"  coalesce((SELECT max(f.floor) FROM agentretry.token_floors f WHERE f.tenant = $1), 0) + 1, $6," \
		"  $7 + coalesce($8, " lease ", $9)," \
		"  $7, $7, $7 + " deadline "," \
		"  $10, $11, $7, $7, $7)" \
		" ON CONFLICT (tenant, key) DO NOTHING" \
		" RETURNING o.lease_expires_at, o.deadline, o.lease_token"
#define INSERT_ARGTYPES \
		11, {TEXTOID, TEXTOID, BYTEAOID, JSONBOID, TEXTOID, TEXTOID, \
		TIMESTAMPTZOID, INTERVALOID, INTERVALOID, TEXTOID, TEXTOID}
	[PLAN_INSERT] = {
		INSERT_SQL(TENANT_FIELD("lease", "$1", "$5"),
				   "coalesce(" TENANT_FIELD("deadline", "$1", "$5") ")"),
		INSERT_ARGTYPES
	},
	[PLAN_INSERT_TOOL] = {
		INSERT_SQL(TOOL_FIELD("lease", "$5"), TOOL_FIELD("deadline", "$5")),
		INSERT_ARGTYPES
	},
	[PLAN_STORE] = {
		"UPDATE agentretry.operations SET"
		" state = $3::agentretry.operation_state, attempts = $4,"
		" lease_token = $5, lease_owner = $6, lease_expires_at = $7,"
		" next_attempt_at = $8, first_attempt_at = $9, last_attempt_at = $10,"
		" last_failure_class = $11::agentretry.failure_class,"
		" last_failure_phase = $12::agentretry.failure_phase,"
		" last_failure_code = $13, last_failure_message = $14,"
		" last_delay = $15, reason = $16, completed_at = $17,"
		" expires_at = $18, updated_at = $19, deadline = $20,"
		" state_since = CASE WHEN state = $3::agentretry.operation_state"
		"                    THEN state_since ELSE $19 END"
		" WHERE tenant = $1 AND key = $2",
		20, {TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID,
			TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
			TEXTOID, TEXTOID, TEXTOID, TEXTOID, INTERVALOID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
#define COMPLETE_ARGTYPES \
		9, {TEXTOID, TEXTOID, INT8OID, JSONBOID, TEXTOID, JSONBOID, TEXTOID, \
		TIMESTAMPTZOID, INTERVALOID}
#define COMPLETE_RETURNING " RETURNING o.tool, o.attempts, o.lease_owner, o.run_id, o.step"
	[PLAN_COMPLETE] = {
		COMPLETE_SQL(TENANT_FIELD("ttl", "o.tenant", "o.tool")), COMPLETE_ARGTYPES
	},
	[PLAN_COMPLETE_RETURNING] = {
		COMPLETE_SQL(TENANT_FIELD("ttl", "o.tenant", "o.tool")) COMPLETE_RETURNING,
		COMPLETE_ARGTYPES
	},
	[PLAN_COMPLETE_TOOL] = {
		COMPLETE_SQL(TOOL_FIELD("ttl", "o.tool")), COMPLETE_ARGTYPES
	},
	[PLAN_COMPLETE_RETURNING_TOOL] = {
		COMPLETE_SQL(TOOL_FIELD("ttl", "o.tool")) COMPLETE_RETURNING,
		COMPLETE_ARGTYPES
	},
	[PLAN_ROW] = {
		"SELECT o FROM agentretry.operations o"
		" WHERE o.tenant = $1 AND o.key = $2",
		2, {TEXTOID, TEXTOID}
	},
};

static SPIPlanPtr plans[NUM_PLANS];

static void fill_operation(Operation *op, Datum *v, bool *n);

#if PG_VERSION_NUM >= 170000
static int	guc_nest_level;
#endif

/*
 * Connect to SPI with search_path pinned to pg_catalog alone (no temp
 * schema), so that nothing a caller puts on its search_path (a table, a
 * function, an operator) can be picked up by the queries run here.  This
 * is what "SET search_path" on a SECURITY DEFINER function achieves, at a
 * fraction of its cost: the override stack is a list push, where a SET
 * clause parses and assigns a GUC on every call (about a sixth of a
 * replay's time).  The cached plans are made under the same path, so they
 * are never re-planned for a caller's search_path.  Transaction and
 * subtransaction abort unwind the override.
 */
void
ar_spi_begin(void)
{
#if PG_VERSION_NUM < 170000
	OverrideSearchPath path = {NIL, true, false, 0};
#endif

	SPI_connect();
#if PG_VERSION_NUM < 170000
	PushOverrideSearchPath(&path);
#else
	guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
#endif
}

void
ar_spi_end(void)
{
#if PG_VERSION_NUM < 170000
	PopOverrideSearchPath();
#else
	AtEOXact_GUC(true, guc_nest_level);
#endif
	SPI_finish();
}

/*
 * Prepare sql once per backend into *cache and keep it: the plan cache
 * revalidates it after DDL.  Must run under ar_spi_begin(), so that the
 * plan is made with search_path pinned.
 *
 * Always a generic plan: every statement here is written for one plan
 * (primary-key probes, or an ordered scan of a partial index with a
 * LIMIT), and letting the plan cache weigh custom plans would re-plan
 * claim_due's query on every call (its LIMIT and time parameters make a
 * custom plan look cheaper), a third of its cost.
 */
SPIPlanPtr
ar_prepare(SPIPlanPtr *cache, const char *sql, int nargs, const Oid *argtypes)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, (Oid *) argtypes,
											  CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "agentretry: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

/* Run a prepared plan; returns SPI_processed. */
uint64
ar_execute(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
		   long count)
{
	int			rc = SPI_execute_plan(plan, values, nulls, read_only, count);

	if (rc < 0)
		elog(ERROR, "agentretry: SPI_execute_plan failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

static uint64
run_plan(int which, Datum *values, const char *nulls, bool read_only)
{
	const PlanDef *def = &plan_defs[which];

	return ar_execute(ar_prepare(&plans[which], def->sql, def->nargs,
								 def->argtypes),
					  values, nulls, read_only, 0);
}

/* column readers: NULL maps to the "none" marker of each C type */
static char *
col_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static TimestampTz
col_ts(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? TS_NONE : DatumGetTimestampTz(d);
}

/*
 * Fill op and op->policy from a row of operation_select_list.
 */
void
operation_from_row(HeapTuple tup, TupleDesc desc, Operation *op)
{
	Datum		v[OP_NCOLUMNS];
	bool		n[OP_NCOLUMNS];
	int			i;

	op->tenant = col_text(tup, desc, 1);
	op->key = col_text(tup, desc, 2);
	for (i = 0; i < OP_NCOLUMNS; i++)
		v[i] = SPI_getbinval(tup, desc, i + 3, &n[i]);
	fill_operation(op, v, n);
	policy_from_columns(&op->policy, tup, desc, OP_NCOLUMNS + 3);
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
	if (run_plan(PLAN_LOAD_LOCK, values, NULL, false) == 0)
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
	"last_delay", "reason", "result", "run_id", "step"
};
#define PEEK_NCOLUMNS lengthof(peek_columns)
StaticAssertDecl(PEEK_NCOLUMNS == OP_NCOLUMNS,
				 "OP_COLUMNS and peek_columns must list the same columns");

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
 * Insert a new operation leased to op->lease_owner as attempt 1.  Its
 * fencing token is 1, or one more than the tenant's token floor once the
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

	if (run_plan(tenant_policies_exist() ? PLAN_INSERT : PLAN_INSERT_TOOL,
				 values, nulls, false) == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	op->state = OP_IN_PROGRESS;
	op->attempts = 1;
	op->lease_token = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	op->lease_expires_at = col_ts(tup, desc, 1);
	op->deadline = col_ts(tup, desc, 2);
	op->next_attempt_at = TS_NONE;
	op->first_attempt_at = now;
	op->last_attempt_at = now;
	op->failure_class = -1;
	op->failure_phase = -1;
	op->failure_code = NULL;
	op->failure_message = NULL;
	op->last_delay = USEC_NONE;
	op->reason = NULL;
	op->has_result = false;
	return true;
}

/* SPI parameter setters: a "none" value becomes SQL NULL */
void
param_text(Datum *values, char *nulls, int i, const char *s)
{
	if (s)
		values[i] = CStringGetTextDatum(s);
	else
		nulls[i] = 'n';
}

void
param_ts(Datum *values, char *nulls, int i, TimestampTz ts)
{
	if (ts != TS_NONE)
		values[i] = TimestampTzGetDatum(ts);
	else
		nulls[i] = 'n';
}

void
param_usec(Datum *values, char *nulls, int i, int64 usec)
{
	if (usec != USEC_NONE)
		values[i] = IntervalPGetDatum(usec_interval(usec));
	else
		nulls[i] = 'n';
}

/* an enum passed as text: index into labels, or -1 for NULL */
void
param_label(Datum *values, char *nulls, int i, const char *const *labels,
			int index)
{
	param_text(values, nulls, i, index >= 0 ? labels[index] : NULL);
}

/*
 * Write back every mutable column of op (all but result and compensation,
 * which only operation_complete sets).  The row must be locked by
 * operation_load() or a locking query of operation_select_list, whose
 * policy supplies the TTL of a terminal row.  state_since moves only when
 * the state does.
 */
void
operation_store(const Operation *op, TimestampTz now)
{
	Datum		values[20];
	char		nulls[20];
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

	if (run_plan(PLAN_STORE, values, nulls, false) != 1)
		elog(ERROR, "agentretry: operation \"%s\" vanished while locked", op->key);
}

/*
 * Mark the operation succeeded with its receipt, if lease_token is still
 * the newest and the operation not terminal.  One statement: the WHERE
 * clause is the fencing check.  With for_event, op's tool, attempts,
 * owner, run_id and step are filled for tracing (a RETURNING the common
 * case does without).  Returns false when the check failed or the key does
 * not exist.
 */
bool
operation_complete(Operation *op, int64 lease_token, Jsonb *result,
				   const char *reason, const char *compensate_tool,
				   Jsonb *compensate_args, bool for_event, TimestampTz now)
{
	Datum		values[9];
	char		nulls[9];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			which;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(op->tenant);
	values[1] = CStringGetTextDatum(op->key);
	values[2] = Int64GetDatum(lease_token);
	if (result)
		values[3] = JsonbPGetDatum(result);
	else
		nulls[3] = 'n';
	param_text(values, nulls, 4, compensate_tool);
	if (compensate_args)
		values[5] = JsonbPGetDatum(compensate_args);
	else
		nulls[5] = 'n';
	param_text(values, nulls, 6, reason);
	values[7] = TimestampTzGetDatum(now);
	values[8] = IntervalPGetDatum(usec_interval((int64) ar_default_ttl_sec * USECS_PER_SEC));

	if (tenant_policies_exist())
		which = for_event ? PLAN_COMPLETE_RETURNING : PLAN_COMPLETE;
	else
		which = for_event ? PLAN_COMPLETE_RETURNING_TOOL : PLAN_COMPLETE_TOOL;
	if (run_plan(which, values, nulls, false) == 0)
		return false;
	op->state = OP_SUCCEEDED;
	op->lease_token = lease_token;
	op->reason = (char *) reason;
	if (!for_event)
		return true;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	op->tool = col_text(tup, desc, 1);
	op->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	op->lease_owner = col_text(tup, desc, 3);
	op->run_id = col_text(tup, desc, 4);
	op->step = col_text(tup, desc, 5);
	return true;
}

/* the whole row as a composite datum in the upper executor context */
Datum
operation_row(const char *tenant, const char *key, bool *found)
{
	Datum		values[2];
	bool		isnull;

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(key);
	*found = run_plan(PLAN_ROW, values, NULL, true) > 0;
	if (!*found)
		return (Datum) 0;
	return SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull),
							 false, -1);
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

bool
op_state_terminal(OpState s)
{
	return s == OP_SUCCEEDED || s == OP_DEAD || s == OP_CANCELLED;
}

void
operation_set_terminal(Operation *op, OpState state, const char *reason)
{
	op->state = state;
	op->reason = (char *) reason;
	op->lease_expires_at = TS_NONE;
	op->next_attempt_at = TS_NONE;
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
	operation_store(op, now);
	record_simple_event("dead", op, reason, now);
}

/*
 * Turn a retry that the budgets denied into a wait for the budget, if it
 * allows the retry (at `at`) before the deadline (budget_wait), else into
 * a dead-letter (budget_exhausted).  Shared with claims that start a
 * retry which waited for a budget.
 */
void
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
	if (d->action == ACT_RETRY)
	{
		TimestampTz allowed_at;
		const char *why;

		if (!budget_allow_retry(op, failure, now, &allowed_at, &why))
			budget_deny(d, op->deadline, allowed_at, now);
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
			break;
		case ACT_DEAD:
			operation_set_terminal(op, OP_DEAD, d->reason);
			break;
	}

	ev.kind = action_labels[d->action];
	ev.op = op;
	ev.failure_class = failure;
	ev.failure_phase = op->failure_phase;
	ev.code = code;
	ev.message = message;
	ev.reason = d->reason;
	ev.delay = d->delay;
	ev.at = now;
	record_event(&ev);
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
