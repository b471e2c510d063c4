/*-------------------------------------------------------------------------
 *
 * record.h
 *	  Recording the outcomes of the worker's finished steps.
 *
 * record_outcomes() writes, in one transaction, every request of the
 * steps for the log, each step's verdict (done, failed, to the support
 * report, or due again after backoff or a 429) with what it learned, and
 * moves each of their attributions on: its next stage becomes due, or its
 * final state is settled.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_RECORD_H
#define CELLOATTR_RECORD_H

#include "postgres.h"

#include "nodes/pg_list.h"

/*
 * Record the outcomes of the Jobs in the list.  False, with nothing
 * written, if the queue's tables could not be locked at once (try again
 * later).
 */
extern bool record_outcomes(List *jobs);

#endif							/* CELLOATTR_RECORD_H */
