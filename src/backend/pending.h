/*-------------------------------------------------------------------------
 *
 * pending.h
 *	  Between the statement's batch of queued attributions (pending.c), the
 *	  hooks that decide when it is written (statement.c), and the copies
 *	  kept of rows written inside a subtransaction for an enclosing level
 *	  (subxact.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_PENDING_H
#define CELLOATTR_PENDING_H

#include "fmgr.h"				/* celloattr.h names fmgr's types */
#include "nodes/plannodes.h"

#include "celloattr.h"

/* Statements and utility commands running in this backend, nested
 * (statement.c keeps it). */
extern int	celloattr_executor_depth;

/* The columns of an attribution and of a first step (pending.c names them). */
#define PENDING_NCOLUMNS 17
#define PENDING_NSTEPCOLUMNS 4
extern const Oid celloattr_column_types[PENDING_NCOLUMNS];
extern const Oid celloattr_step_column_types[PENDING_NSTEPCOLUMNS];

/* What makes an attribution live for a user: the unique index's key. */
typedef struct PendingUserKey
{
	const char *gateway;
	const char *new_user_id;
	bool		dry_run;
} PendingUserKey;

/* One queued attribution with its first steps, ready to be inserted. */
typedef struct PendingRow
{
	PendingUserKey key;
	int			xact_level;		/* the (sub)transaction it belongs to */
	int			depth;			/* statement nesting of the call that queued it */
	Oid			owner;			/* the role it is inserted as */
	int			nsteps;
	Datum		values[PENDING_NCOLUMNS];
	bool		nulls[PENDING_NCOLUMNS];
	Datum		steps[CELLOATTR_MAX_FIRST_STEPS][PENDING_NSTEPCOLUMNS];
	bool		step_nulls[CELLOATTR_MAX_FIRST_STEPS][PENDING_NSTEPCOLUMNS];
} PendingRow;

/* Put a row back into the batch (a copy of it), findable by its user;
 * runs no SQL, so an abort callback may call it. */
extern void celloattr_pending_requeue(const PendingRow *row);

/* The deepest statement nesting at which a row of the batch was queued,
 * or -1 when the batch is empty. */
extern int	celloattr_pending_depth(void);

/* Must the batch be written before this statement starts?  (It reads or
 * writes a celloattr table.) */
extern bool celloattr_pending_precedes(PlannedStmt *stmt);

/* The transaction and subtransaction callbacks of the batch. */
extern void celloattr_pending_register_callbacks(void);

#endif							/* CELLOATTR_PENDING_H */
