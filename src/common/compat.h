/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every difference between the PostgreSQL major versions celloattr
 *	  builds against (15, 17 and 18), in one place: the modules use the
 *	  names defined here and hold no version test of their own.
 *
 * Where a newer version renamed something, the older versions get the new
 * spelling; where a signature changed, a celloattr_ name hides which one
 * the server has.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_COMPAT_H
#define CELLOATTR_COMPAT_H

#include "postgres.h"

#include "storage/latch.h"
#if PG_VERSION_NUM >= 180000
#include "storage/waiteventset.h"
#endif

#if PG_VERSION_NUM < 150000
#error "celloattr needs PostgreSQL 15 or later"
#endif

/* 18: pg_noreturn before a declaration replaced pg_attribute_noreturn() after it */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * 16: the ownership checks of each catalog became object_ownercheck().
 * (The caller includes catalog/pg_database.h and utils/acl.h.)
 */
#if PG_VERSION_NUM >= 160000
#define celloattr_database_ownercheck(db, role) \
	object_ownercheck(DatabaseRelationId, (db), (role))
#else
#define celloattr_database_ownercheck(db, role) pg_database_ownercheck((db), (role))
#endif

/*
 * 17: a WaitEventSet belongs to a resource owner (none here: it lives in
 * TopMemoryContext until FreeWaitEventSet) instead of a memory context.
 */
#if PG_VERSION_NUM >= 170000
#define celloattr_create_wait_event_set(cxt, nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define celloattr_create_wait_event_set(cxt, nevents) CreateWaitEventSet((cxt), (nevents))
#endif

/*
 * 18: ExecutorRun lost its execute_once argument.  A hook is declared with
 * CELLOATTR_EXECUTOR_RUN_PARAMS and passes CELLOATTR_EXECUTOR_RUN_ARGS on.
 */
#if PG_VERSION_NUM >= 180000
#define CELLOATTR_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count
#define CELLOATTR_EXECUTOR_RUN_ARGS queryDesc, direction, count
#else
#define CELLOATTR_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once
#define CELLOATTR_EXECUTOR_RUN_ARGS queryDesc, direction, count, execute_once
#endif

/* 18: index scans take an instrumentation argument (none here) */
#if PG_VERSION_NUM >= 180000
#define celloattr_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), (norderbys))
#else
#define celloattr_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), (norderbys))
#endif

/* 18: base64 encodes bytes (uint8) rather than chars */
#if PG_VERSION_NUM >= 180000
#define celloattr_b64_encode(src, len, dst, dstlen) \
	pg_b64_encode((const uint8 *) (src), (len), (dst), (dstlen))
#else
#define celloattr_b64_encode(src, len, dst, dstlen) \
	pg_b64_encode((src), (len), (dst), (dstlen))
#endif

/* 17: a backend's local transaction id moved into MyProc->vxid */
#if PG_VERSION_NUM >= 170000
#define celloattr_my_lxid() (MyProc->vxid.lxid)
#else
#define celloattr_my_lxid() (MyProc->lxid)
#endif

#endif							/* CELLOATTR_COMPAT_H */
