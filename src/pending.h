/*-------------------------------------------------------------------------
 *
 * pending.h
 *	  Between the statement's batch of queued attributions (pending.c) and
 *	  the hooks that decide when it is written (statement.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_PENDING_H
#define CELLOATTR_PENDING_H

#include "nodes/plannodes.h"

/* Statements and utility commands running in this backend, nested
 * (statement.c keeps it). */
extern int	celloattr_executor_depth;

/* The deepest statement nesting at which a row of the batch was queued,
 * or -1 when the batch is empty. */
extern int	celloattr_pending_depth(void);

/* Must the batch be written before this statement starts?  (It reads or
 * writes a celloattr table.) */
extern bool celloattr_pending_precedes(PlannedStmt *stmt);

/* The transaction and subtransaction callbacks of the batch. */
extern void celloattr_pending_register_callbacks(void);

#endif							/* CELLOATTR_PENDING_H */
