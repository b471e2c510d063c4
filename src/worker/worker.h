/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background processes: a launcher that finds the databases
 *	  celloattr.database names ('*': all), and the worker it starts in each
 *	  where the extension is created.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_WORKER_H
#define CELLOATTR_WORKER_H

#include "postgres.h"

#include "compat.h"
#include "job.h"

/* launcher.c: called by _PG_init while preloading. */
extern void celloattr_register_launcher(void);

/* Around a utility command: DROP DATABASE of a served database, by a role
 * allowed to drop it, asks its worker to leave first; the end (which must
 * follow however the command ends) lets the launcher start one again. */
extern void celloattr_vacate_database_begin(struct Node *stmt, bool is_top_level);
extern void celloattr_vacate_database_end(void);

pg_noreturn PGDLLEXPORT void celloattr_launcher_main(Datum main_arg);
pg_noreturn PGDLLEXPORT void celloattr_worker_main(Datum main_arg);

/* session.c: the worker's settings, pinned at connection and after each
 * reload.  WORKER_LOCK_TIMEOUT bounds any lock wait the worker's SKIP
 * LOCKED and conditional locks do not already avoid. */
#define WORKER_LOCK_TIMEOUT "1s"
extern void worker_pin_settings(void);
extern char *worker_database_name(void);

/* worker_life.c: the worker connects to its database and takes its slot
 * (the name of the database; leaves when it may not stay); a reload; and
 * whether it may stay (false: it leaves). */
extern char *worker_arrive(Oid database);
extern void worker_reload(void);
extern bool worker_may_stay(void);
/* The worker's and the launcher's main loops, after an ERROR reached them. */
extern void celloattr_recover_from_error(void);

/* dbsettings.c: the celloattr.* settings of the worker's database as it
 * connected, and whether a reload finds them changed. */
extern void worker_remember_database_settings(void);
extern bool worker_database_settings_changed(void);

/*
 * queue.c: the worker's short transactions on the queue tables.  A
 * transaction opened by queue_begin() (false: the tables could not be
 * locked at once, nothing is open) runs SPI statements and ends with
 * queue_commit().  Each caller catches an ERROR (PG_TRY) and hands it to
 * queue_recover(), which logs it, rolls the transaction back, cleans up
 * and returns to the caller's memory context with a copy of the error.
 */
extern bool queue_begin(const char *activity);
extern void queue_commit_synchronously(void);
extern void queue_commit(void);
extern ErrorData *queue_recover(MemoryContext cxt);
extern bool queue_is_lock_conflict(const ErrorData *error);
extern bool queue_extension_ready(bool any_version);
extern bool queue_extension_absent(void);

/*
 * A step left 'running' by a worker that stopped is claimed again, unless
 * workers stopped this many times in a row while it ran: then it is set
 * aside ('failed', with a last_error that says so) for an operator to
 * look at and retry().
 */
#define STOPS_BEFORE_SET_ASIDE 3
extern List *queue_claim(int max_jobs, MemoryContext jobs_cxt, double *next_due);

/* For the rest of the transaction, plan index lookups only. */
extern void queue_plan_lookups_by_key(void);

/*
 * orphans.c: steps shown 'running' that no worker holds, requeued under
 * their keys (or set aside).  queue_adopt_expired() makes orphans of those
 * past their lease that are not among held (the worker's own).
 */
extern bool queue_requeue_orphans(void);
extern int	queue_orphans_left(void);
extern void queue_forget_orphan(int64 id);
extern void queue_adopt_expired(const int64 *held, int nheld);

/*
 * lease.c: seconds a claimed step may stay running (celloattr.lease, at
 * least a request's timeout); lease_expire() settles the verdict of a step
 * still running when its lease ends (its request in flight cancelled, or
 * the one waiting for pace unsent), which the caller then finishes.
 */
extern int	worker_lease_seconds(void);
extern void lease_expire(Job *job, HttpEngine *engine, TimestampTz now);

/*
 * pace.c: a token bucket per provider account (at the rate setting) and
 * per endpoint limit of its own, in shared memory, shared by the workers
 * whose database uses the same account.  pace_accounts_changed() names
 * this worker's accounts after its settings and secrets were (re)read.
 * pace_take() takes a token of each bucket the request is paced by, or
 * says how many ms until it may; a 429 closes the provider's bucket until
 * a point in time (a later one, if it was closed already).
 */
extern Size pace_shmem_size(void);
extern void pace_shmem_init(void);
extern void pace_accounts_changed(void);
extern bool pace_take(const HttpExchange *exchange, TimestampTz now, long *wait_ms);
extern void pace_close(const char *provider, TimestampTz until);
extern TimestampTz pace_closed_until(const char *provider);

/* retention.c: deletes rows older than celloattr.retention, a batch at a
 * time; true if more may be left. */
extern bool retention_prune(void);

#endif							/* CELLOATTR_WORKER_H */
