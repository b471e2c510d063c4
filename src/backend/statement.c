/*-------------------------------------------------------------------------
 *
 * statement.c
 *	  When the statement's batch of queued attributions is written: hooks
 *	  that follow statements (and utility commands) as they nest and end.
 *
 * A row of the batch belongs to the statement that was running when it was
 * queued: it is written when that statement ends, not when a statement it
 * runs inside (a foreign key check, a function's query) ends.  A statement
 * that reads or writes a celloattr table, whoever runs it, first has the
 * batch written and sees it.  COPY FROM fires row triggers outside any
 * executor of its own, hence the utility hook (which also lets commands
 * that need a served database to themselves ask its worker to leave,
 * vacate.c, and tells the launcher of new extensions and databases).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "nodes/value.h"
#include "tcop/utility.h"
#include "utils/snapmgr.h"

#include "celloattr.h"
#include "pending.h"
#include "worker.h"

int			celloattr_executor_depth = 0;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

/* The statement that queued rows is over: write them. */
static void
flush_if_finished(void)
{
	if (celloattr_pending_depth() > celloattr_executor_depth)
		celloattr_pending_flush();
}

static void
statement_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (celloattr_pending_precedes(queryDesc->plannedstmt))
	{
		celloattr_pending_flush();

		/*
		 * The statement's snapshot was taken before the batch was written:
		 * let it see the batch, as if it had started a moment later.
		 */
		CommandCounterIncrement();
		if (queryDesc->snapshot != NULL && IsMVCCSnapshot(queryDesc->snapshot))
			queryDesc->snapshot->curcid = GetCurrentCommandId(false);
	}
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
statement_executor_run(CELLOATTR_EXECUTOR_RUN_PARAMS)
{
	celloattr_executor_depth++;
	PG_TRY();
	{
		if (prev_executor_run)
			prev_executor_run(CELLOATTR_EXECUTOR_RUN_ARGS);
		else
			standard_ExecutorRun(CELLOATTR_EXECUTOR_RUN_ARGS);
	}
	PG_FINALLY();
	{
		celloattr_executor_depth--;
	}
	PG_END_TRY();
}

/* AFTER row triggers (an attribute trigger among them) fire in here. */
static void
statement_executor_finish(QueryDesc *queryDesc)
{
	celloattr_executor_depth++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		celloattr_executor_depth--;
	}
	PG_END_TRY();
	flush_if_finished();
}

/*
 * What a utility command that ran means to the launcher or the worker: the
 * extension created (a worker can start here, once this commits), dropped
 * (the worker leaves: woken at commit so it looks now), or a database
 * created, renamed, or made (un)connectable or a template (the launcher
 * looks at pg_database again now, not at its next round).
 */
static void
tell_launcher_about(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_CreateExtensionStmt:
			/* any: CASCADE may have created celloattr with another */
			celloattr_poke_launcher_at_commit(true);
			break;
		case T_DropStmt:
			if (((DropStmt *) stmt)->removeType == OBJECT_EXTENSION)
			{
				ListCell   *lc;

				foreach(lc, ((DropStmt *) stmt)->objects)
					if (strcmp(strVal(lfirst(lc)), "celloattr") == 0)
						celloattr_wake_own_worker_at_commit();
			}
			break;
		case T_CreatedbStmt:
		case T_AlterDatabaseStmt:
			celloattr_poke_launcher_at_commit(false);
			break;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				celloattr_poke_launcher_at_commit(false);
			break;
		default:
			break;
	}
}

static void
statement_process_utility(PlannedStmt *pstmt, const char *queryString,
						  bool readOnlyTree, ProcessUtilityContext context,
						  ParamListInfo params, QueryEnvironment *queryEnv,
						  DestReceiver *dest, QueryCompletion *qc)
{
	celloattr_vacate_database_begin(pstmt->utilityStmt,
								  context == PROCESS_UTILITY_TOPLEVEL);
	celloattr_executor_depth++;
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
		tell_launcher_about(pstmt->utilityStmt);
	}
	PG_FINALLY();
	{
		celloattr_executor_depth--;
		celloattr_vacate_database_end();
	}
	PG_END_TRY();
	flush_if_finished();
}

void
celloattr_pending_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = statement_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = statement_executor_run;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = statement_executor_finish;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = statement_process_utility;
	celloattr_pending_register_callbacks();
}
