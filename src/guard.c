/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The pattern-B trap: no lease that exists only in an open transaction
 *	  block, unless the caller says its side effect commits with it.
 *
 * A lease handed out inside a transaction block exists only once that
 * block commits.  A caller that acts before committing (a driver that opens
 * a transaction for it, as psycopg 3 does by default) and then dies loses
 * the lease with the transaction, and the next claim executes the side
 * effect again, silently.  So claim() and claim_due() refuse to lease
 * inside a block that a BEGIN opened before the running statement, unless
 * they are called with in_transaction => true: the side effect commits or
 * rolls back with the claim (pattern A).
 *
 * Which blocks are such blocks.  IsTransactionBlock() is also true for the
 * implicit block of a query string of several statements, and inside a
 * subtransaction (a PL/pgSQL block with an EXCEPTION clause), where the
 * client cannot act before the lease commits.  What tells a BEGIN:
 *
 *	- a BEGIN or START TRANSACTION of this transaction, or the COMMIT or
 *	  ROLLBACK AND CHAIN that began it, seen by the ProcessUtility hook.  The hook is there once the library is loaded:
 *	  preloaded, or by an earlier agentretry call of the session;
 *	- when the library was loaded inside this transaction's block (the
 *	  first agentretry call of a session came after the driver's BEGIN, the
 *	  trap's usual shape), a transaction that began before the running
 *	  statement: BEGIN sent on its own, as drivers send it.  One that began
 *	  with the statement is an implicit block; one that began after it, a
 *	  procedure's own.  Only then, because the extended protocol starts a
 *	  transaction at Parse and the statement's clock at Bind: the first
 *	  call of a session, made through it from a PL/pgSQL EXCEPTION block
 *	  in autocommit, is refused once.  (Preloading the library, with
 *	  session_preload_libraries, leaves the hook alone to judge.)
 *
 * src/guard.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

#include "agentretry.h"

static ProcessUtility_hook_type prev_process_utility = NULL;
static bool begun_explicitly = false;
static bool loaded_in_block = false;
static TimestampTz chained_at = 0;	/* a COMMIT or ROLLBACK AND CHAIN ran */

static void
guard_process_utility(PlannedStmt *pstmt, const char *queryString,
					  bool readOnlyTree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *queryEnv,
					  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
	if (IsA(parsetree, TransactionStmt))
	{
		TransactionStmtKind kind = ((TransactionStmt *) parsetree)->kind;

		if (kind == TRANS_STMT_BEGIN || kind == TRANS_STMT_START)
			begun_explicitly = IsTransactionBlock();
		/* its new block starts when this statement ends, without a BEGIN */
		else if ((kind == TRANS_STMT_COMMIT || kind == TRANS_STMT_ROLLBACK) &&
				 ((TransactionStmt *) parsetree)->chain)
			chained_at = GetCurrentStatementStartTimestamp();
	}
}

static void
guard_xact_callback(XactEvent event, void *arg)
{
	begun_explicitly = false;
	loaded_in_block = false;
}

void
guard_init(void)
{
	loaded_in_block = IsTransactionBlock();
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = guard_process_utility;
	RegisterXactCallback(guard_xact_callback, NULL);
}

/*
 * Would a lease handed out now be refused?  in_transaction is argument
 * argno; agentretry.allow_uncommitted_leases turns the refusal off.
 */
bool
lease_guarded(FunctionCallInfo fcinfo, int argno)
{
	if (ar_allow_uncommitted_leases || !IsTransactionBlock())
		return false;
	/* (a function of an older schema has fewer arguments) */
	if (PG_NARGS() > argno && !PG_ARGISNULL(argno) && PG_GETARG_BOOL(argno))
		return false;
	return begun_explicitly ||
		GetCurrentTransactionStartTimestamp() == chained_at ||
		(loaded_in_block &&
		 GetCurrentTransactionStartTimestamp() < GetCurrentStatementStartTimestamp());
}

/* the error of a refused lease; it rolls the call's work back */
void
refuse_uncommitted_lease(const char *fn)
{
	ereport(ERROR,
			(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
			 errmsg("%s cannot lease inside a transaction block without in_transaction => true", fn),
			 errdetail("The lease would exist only once this transaction commits; if the side effect happens first and the transaction does not commit, the next claim executes it again."),
			 errhint("Commit the claim before acting (autocommit), or pass in_transaction => true when the side effect commits in this same transaction.")));
	pg_unreachable();
}
