/*-------------------------------------------------------------------------
 *
 * record.h
 *	  Recording the outcomes of the worker's finished steps.
 *
 * record_outcomes() (outcomes.c) writes, in one transaction, every request
 * of the steps for the log, each step's verdict (done, failed, to the
 * support report, or due again after backoff or a 429) with what it
 * learned, and moves each of their attributions on: its next stage becomes
 * due, or its final state is settled (record.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_RECORD_H
#define CELLOATTR_RECORD_H

#include "postgres.h"

#include "nodes/pg_list.h"

#include "celloattr.h"

/*
 * Record the outcomes of the Jobs in the list.  Returns those it could not
 * record yet, to be tried again later and never dropped: all of them if the
 * queue's tables could not be locked at once (or an error stopped the
 * transaction), else those whose row or attribution an application holds.
 * A step whose outcome cannot be written (an error that is not a lock
 * conflict) is recorded failed, with that error, instead; one claimed from
 * an extension that was dropped since is left out (its ids may be other
 * steps' now).
 */
extern List *record_outcomes(List *jobs);

/* record.c: the writes themselves, in the caller's transaction. */
extern bool record_batch(List *jobs, bool with_log);
extern void record_settle(ArrayColumn *attribution_ids);

#endif							/* CELLOATTR_RECORD_H */
