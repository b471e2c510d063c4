/*-------------------------------------------------------------------------
 *
 * subxact.c
 *	  Rows of the batch written inside a subtransaction on behalf of an
 *	  enclosing level: kept, and given back if that subtransaction aborts.
 *
 * A batch holds the rows of every level that queued since it was last
 * written, and it is written at the level that happens to be running: a
 * plpgsql block that reads celloattr.attributions writes the rows its
 * enclosing function queued before the block.  If the block then fails,
 * its subtransaction takes that INSERT along, yet the rows belonged to a
 * level that goes on, and their ids are in the caller's hands.  So before
 * such a batch is written, each row of an enclosing level is copied here,
 * with the level whose INSERT holds it ("written at").  When that level
 * commits, its parent holds the INSERT, and a copy whose row belongs to
 * the parent is dropped: the row and its INSERT now live and die together.
 * When that level aborts, the rows that belong to a level still alive go
 * back into the batch at their own level, with their ids, and the next
 * flush writes them again.  Nothing here runs SQL: abort callbacks can't.
 *
 * The copies live in a context under TopTransactionContext, which takes
 * them along however the transaction ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "subxact.h"

typedef struct LentRow
{
	int			written_at;		/* the level whose INSERT holds the row */
	PendingRow	row;
} LentRow;

/* How to copy each column's values (looked up with the first copy). */
static bool types_known = false;
static int16 column_len[PENDING_NCOLUMNS];
static bool column_byval[PENDING_NCOLUMNS];
static int16 step_column_len[PENDING_NSTEPCOLUMNS];
static bool step_column_byval[PENDING_NSTEPCOLUMNS];

static MemoryContext lent_context = NULL;
static LentRow **lent = NULL;
static int	nlent = 0;
static int	maxlent = 0;

void
celloattr_row_copy(PendingRow *dst, const PendingRow *src)
{
	/* the first copy is a lend, in a transaction that can read catalogs */
	if (!types_known)
	{
		for (int c = 0; c < PENDING_NCOLUMNS; c++)
			get_typlenbyval(celloattr_column_types[c], &column_len[c],
							&column_byval[c]);
		for (int c = 0; c < PENDING_NSTEPCOLUMNS; c++)
			get_typlenbyval(celloattr_step_column_types[c], &step_column_len[c],
							&step_column_byval[c]);
		types_known = true;
	}
	*dst = *src;
	dst->key.gateway = pstrdup(src->key.gateway);
	dst->key.new_user_id = pstrdup(src->key.new_user_id);
	for (int c = 0; c < PENDING_NCOLUMNS; c++)
		if (!src->nulls[c])
			dst->values[c] = datumCopy(src->values[c], column_byval[c], column_len[c]);
	for (int s = 0; s < src->nsteps; s++)
		for (int c = 0; c < PENDING_NSTEPCOLUMNS; c++)
			if (!src->step_nulls[s][c])
				dst->steps[s][c] = datumCopy(src->steps[s][c], step_column_byval[c],
											 step_column_len[c]);
}

void
celloattr_row_free(PendingRow *row)
{
	pfree((char *) row->key.gateway);
	pfree((char *) row->key.new_user_id);
	for (int c = 0; c < PENDING_NCOLUMNS; c++)
		if (!row->nulls[c] && !column_byval[c])
			pfree(DatumGetPointer(row->values[c]));
	for (int s = 0; s < row->nsteps; s++)
		for (int c = 0; c < PENDING_NSTEPCOLUMNS; c++)
			if (!row->step_nulls[s][c] && !step_column_byval[c])
				pfree(DatumGetPointer(row->steps[s][c]));
}

static void
drop(LentRow *l)
{
	celloattr_row_free(&l->row);
	pfree(l);
}

void
celloattr_lend_rows(const PendingRow *rows, int nrows)
{
	int			level = GetCurrentTransactionNestLevel();
	int			n = nlent;
	MemoryContext old;

	if (level == 1)
		return;
	if (lent_context == NULL)
		lent_context = AllocSetContextCreate(TopTransactionContext,
											 "celloattr rows lent to a subtransaction",
											 ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(lent_context);
	if (nlent + nrows > maxlent)
	{
		maxlent = Max(64, Max(nlent + nrows, maxlent * 2));
		lent = lent == NULL ? palloc(maxlent * sizeof(LentRow *))
			: repalloc(lent, maxlent * sizeof(LentRow *));
	}
	for (int i = 0; i < nrows; i++)
	{
		LentRow    *l;

		if (rows[i].xact_level >= level)
			continue;
		l = palloc(sizeof(LentRow));
		l->written_at = level;
		celloattr_row_copy(&l->row, &rows[i]);
		lent[n++] = l;
	}
	/* all or none: the batch still holds the rows if a copy fails */
	nlent = n;
	MemoryContextSwitchTo(old);
}

void
celloattr_lent_abort(int level)
{
	int			keep = 0;

	/*
	 * The rows of levels still alive go back to the batch; those of this
	 * level (or of a child that committed into it) go with it.  Requeueing
	 * allocates, so it comes first: the copies are dropped only once it is
	 * done.
	 */
	for (int i = 0; i < nlent; i++)
		if (lent[i]->written_at >= level && lent[i]->row.xact_level < level)
			celloattr_pending_requeue(&lent[i]->row);
	for (int i = 0; i < nlent; i++)
	{
		if (lent[i]->written_at < level)
			lent[keep++] = lent[i];
		else
			drop(lent[i]);
	}
	nlent = keep;
}

void
celloattr_lent_commit(int level)
{
	int			keep = 0;

	for (int i = 0; i < nlent; i++)
	{
		LentRow    *l = lent[i];

		if (l->written_at >= level)
			l->written_at = level - 1;
		if (l->row.xact_level < l->written_at)
			lent[keep++] = l;
		else
			drop(l);
	}
	nlent = keep;
}

void
celloattr_lent_forget(void)
{
	lent_context = NULL;
	lent = NULL;
	nlent = 0;
	maxlent = 0;
}
