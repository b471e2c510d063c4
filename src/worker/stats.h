/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  The worker's live statistics in shared memory, for the
 *	  celloattr.worker_status view: what it is doing, its transfers, and
 *	  per provider the requests sent and answered by class, its pacing and
 *	  its last error.
 *
 * Only the worker writes them, each update a few stores under the block's
 * spinlock; a reader copies the whole block under the same spinlock, so a
 * look at the view costs no lock anyone waits for and never sees a
 * half-written counter block.  Nothing secret goes in: providers by name,
 * never a URL, and error texts with the secrets removed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_STATS_H
#define CELLOATTR_STATS_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "http.h"

/* What the worker is doing, as the view shows it. */
typedef enum WorkerState
{
	WORKER_STARTING,			/* requeueing what a stopped worker left */
	WORKER_IDLE,				/* nothing due, nothing in flight */
	WORKER_WORKING,				/* steps running */
	WORKER_PAUSED,				/* celloattr.paused */
	WORKER_NO_SECRETS,			/* no secrets file read yet */
	WORKER_STOPPING,			/* SIGTERM: letting transfers finish */
	WORKER_STOPPED				/* no worker runs */
} WorkerState;

/* Shared memory to request, and its set-up (celloattr.c). */
extern Size stats_shmem_size(void);
extern void stats_shmem_init(void);

/* The worker starts (counters from zero) and leaves. */
extern void stats_worker_started(void);
extern void stats_worker_stopped(void);

/* Once per loop: its state and steps (running: claimed and not finished;
 * in_flight: transfers on the wire; the others wait for a pacing token or
 * a descriptor); each provider's pacing rate (its setting) and 429 hold
 * (pace.c) with them. */
extern void stats_loop(WorkerState state, int running, int in_flight);

/* Steps claimed, and outcomes recorded. */
extern void stats_claimed(int n);
extern void stats_recorded(int n);

/* A request went out to a provider. */
extern void stats_sent(const char *provider);

/* Its answer (or transport error) came back, for the step kind. */
extern void stats_answered(const HttpExchange *ex, const char *kind);


#endif							/* CELLOATTR_STATS_H */
