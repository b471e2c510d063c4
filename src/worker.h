/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background processes: a launcher that waits for the database
 *	  named by celloattr.database, and the worker it starts there.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_WORKER_H
#define CELLOATTR_WORKER_H

#include "postgres.h"

#include "job.h"

/* launcher.c: called by _PG_init while preloading. */
extern void celloattr_register_launcher(void);

/* Around a utility command: DROP DATABASE of the worker's database, by a
 * role allowed to drop it, asks the worker to leave first; the end (which
 * must follow however the command ends) lets the launcher start one again. */
extern void celloattr_drop_database_begin(struct Node *stmt, bool is_top_level);
extern void celloattr_drop_database_end(void);

PGDLLEXPORT void celloattr_launcher_main(Datum main_arg) pg_attribute_noreturn();
PGDLLEXPORT void celloattr_worker_main(Datum main_arg) pg_attribute_noreturn();

/*
 * queue.c: the worker's short transactions on the queue tables.  A
 * transaction opened by queue_begin() (false: the tables could not be
 * locked at once, nothing is open) runs SPI statements and ends with
 * queue_commit().
 */
extern bool queue_begin(const char *activity);
extern void queue_commit(void);
extern bool queue_extension_ready(void);
extern bool queue_requeue_orphans(void);
extern List *queue_claim(int max_jobs, MemoryContext jobs_cxt, double *next_due);

/* For the rest of the transaction, plan index lookups only. */
extern void queue_plan_lookups_by_key(void);

/* worker.c: seconds a claimed step may stay running (celloattr.lease, at
 * least a request's timeout). */
extern int	worker_lease_seconds(void);

/* retention.c: deletes rows older than celloattr.retention, a batch at a
 * time; true if more may be left. */
extern bool retention_prune(void);

#endif							/* CELLOATTR_WORKER_H */
