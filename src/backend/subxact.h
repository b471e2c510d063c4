/*-------------------------------------------------------------------------
 *
 * subxact.h
 *	  Rows of an enclosing (sub)transaction that a batch wrote inside a
 *	  subtransaction: copies kept until no abort can take them away, given
 *	  back to the batch when one does (subxact.c).
 *
 * pending.c calls these: lend before a batch is written, and the abort and
 * commit functions from its subtransaction callback, after it has dealt
 * with the rows still in the batch.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_SUBXACT_H
#define CELLOATTR_SUBXACT_H

#include "pending.h"

/* A deep copy of src in the current memory context, and its release. */
extern void celloattr_row_copy(PendingRow *dst, const PendingRow *src);
extern void celloattr_row_free(PendingRow *row);

/* The batch's rows are about to be written at the current nesting level:
 * keep a copy of those that belong to an enclosing level. */
extern void celloattr_lend_rows(const PendingRow *rows, int nrows);

/* The subtransaction at this nesting level aborts: requeue (into the
 * batch, celloattr_pending_requeue) the rows it or its committed children
 * wrote for a level still alive, and drop the other copies.  No SQL. */
extern void celloattr_lent_abort(int level);

/* The subtransaction at this nesting level commits: its copies now count
 * as written by its parent; those that belong to the parent are dropped. */
extern void celloattr_lent_commit(int level);

/* The transaction ends: forget every copy (their memory goes with the
 * transaction's). */
extern void celloattr_lent_forget(void);

#endif							/* CELLOATTR_SUBXACT_H */
