/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's HTTP engine on libcurl's multi interface.
 *
 * curl tells us which sockets it wants watched (socket callback) and when
 * it wants to be called for timeouts (timer callback); we wait for those
 * and for the process latch in one PostgreSQL WaitEventSet, so a commit
 * that queues work, a SIGHUP or a SIGTERM wakes the worker even while
 * transfers are in flight.  The set is rebuilt only when curl's socket
 * list changes, which with kept-alive connections is rare.
 *
 * curl's callbacks run inside curl: they must not ereport, so they only
 * use malloc'd buffers; results are copied into palloc'd memory when a
 * transfer is finished.  curl's own allocations never go through palloc.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "http.h"

/* Connections kept alive at most (celloattr.max_in_flight's maximum). */
#define HTTP_MAX_CONNECTIONS 512

/* Easy handles kept between transfers: setting one up is not free. */
#define HTTP_IDLE_HANDLES 64

typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} WatchedSocket;

struct HttpEngine
{
	CURLM	   *multi;
	HttpDoneCallback done;
	int			in_flight;
	bool		added;			/* transfers added that curl has not started */
	WatchedSocket *sockets;		/* malloc'd: grown inside a curl callback */
	int			nsockets;
	int			maxsockets;
	bool		sockets_changed;
	bool		out_of_memory;	/* a callback could not grow its array */
	bool		timer_set;		/* curl wants to be called at timer_due */
	TimestampTz timer_due;
	WaitEventSet *set;
	MemoryContext cxt;
	CURL	   *idle[HTTP_IDLE_HANDLES];	/* easy handles kept for reuse */
	int			nidle;
	int			cached_fds;		/* descriptors reserved for kept-alive connections */
};

/* Per-transfer state curl's callbacks write into (malloc'd). */
typedef struct Transfer
{
	HttpExchange *exchange;
	struct curl_slist *headers;
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		too_large;
	bool		no_memory;
	char		retry_after[64];
	char		should_retry[16];
	bool		replayed;
	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

static bool curl_initialized = false;

static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Transfer   *t = (Transfer *) userdata;
	size_t		n = size * nmemb;

	if (t->len + n > HTTP_MAX_RESPONSE_BYTES)
	{
		t->too_large = true;
		return 0;				/* makes curl abort the transfer */
	}
	if (t->len + n + 1 > t->cap)
	{
		size_t		cap = Max(t->cap * 2, t->len + n + 1);
		char	   *data = realloc(t->data, Max(cap, 4096));

		if (data == NULL)
		{
			t->no_memory = true;
			return 0;
		}
		t->data = data;
		t->cap = Max(cap, 4096);
	}
	memcpy(t->data + t->len, ptr, n);
	t->len += n;
	t->data[t->len] = '\0';
	return n;
}

/* Copy a header's value if the line is "name: value". */
static void
header_value(const char *line, size_t len, const char *name, char *dst,
			 size_t dstlen)
{
	size_t		namelen = strlen(name);
	size_t		start,
				end;

	if (len <= namelen || line[namelen] != ':' ||
		pg_strncasecmp(line, name, namelen) != 0)
		return;
	start = namelen + 1;
	while (start < len && (line[start] == ' ' || line[start] == '\t'))
		start++;
	end = len;
	while (end > start && (line[end - 1] == '\r' || line[end - 1] == '\n' ||
						   line[end - 1] == ' '))
		end--;
	if (end - start >= dstlen)
		end = start + dstlen - 1;
	memcpy(dst, line + start, end - start);
	dst[end - start] = '\0';
}

static size_t
read_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
	Transfer   *t = (Transfer *) userdata;
	size_t		n = size * nitems;
	char		flag[16] = "";

	header_value(buffer, n, "retry-after", t->retry_after, sizeof(t->retry_after));
	header_value(buffer, n, "stripe-should-retry", t->should_retry, sizeof(t->should_retry));
	header_value(buffer, n, "idempotent-replayed", flag, sizeof(flag));
	header_value(buffer, n, "chargebee-idempotency-replayed", flag, sizeof(flag));
	if (pg_strcasecmp(flag, "true") == 0)
		t->replayed = true;
	return n;
}

static int
socket_callback(CURL *easy, curl_socket_t fd, int what, void *userp,
				void *socketp)
{
	HttpEngine *engine = (HttpEngine *) userp;
	int			i;

	for (i = 0; i < engine->nsockets; i++)
		if (engine->sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < engine->nsockets)
		{
			engine->sockets[i] = engine->sockets[--engine->nsockets];
			engine->sockets_changed = true;
		}
		return 0;
	}
	if (i == engine->nsockets)
	{
		if (engine->nsockets == engine->maxsockets)
		{
			int			max = Max(16, engine->maxsockets * 2);
			WatchedSocket *s = realloc(engine->sockets, max * sizeof(WatchedSocket));

			if (s == NULL)
			{
				engine->out_of_memory = true;
				return -1;
			}
			engine->sockets = s;
			engine->maxsockets = max;
		}
		engine->sockets[engine->nsockets++].fd = fd;
		engine->sockets[i].what = 0;
	}
	if (engine->sockets[i].what != what)
	{
		engine->sockets[i].what = what;
		engine->sockets_changed = true;
	}
	return 0;
}

/*
 * curl asks to be called timeout_ms from now (-1: never).  Kept as a point
 * in time: a wait cut short by the latch or another socket must not start
 * the timer over, or a stalled transfer outlives its timeouts for as long
 * as anything else keeps the worker busy.
 */
static int
timer_callback(CURLM *multi, long timeout_ms, void *userp)
{
	HttpEngine *engine = (HttpEngine *) userp;

	engine->timer_set = timeout_ms >= 0;
	if (engine->timer_set)
		engine->timer_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														timeout_ms);
	return 0;
}

/*
 * Let curl handle the timeouts that are due (connect and request timeouts
 * among them), whatever else woke us.  curl may at once ask to be called
 * again ("0 ms from now"): a few rounds, not a spin.
 */
static void
run_due_timers(HttpEngine *engine)
{
	int			running;

	for (int round = 0; round < 8; round++)
	{
		if (!engine->timer_set || GetCurrentTimestamp() < engine->timer_due)
			break;
		engine->timer_set = false;
		curl_multi_socket_action(engine->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
}

/*
 * Keep connections alive across transfers, as many as there can be
 * transfers in flight (a smaller cache closes and reopens them all the
 * time), within the descriptors PostgreSQL can spare: each cached
 * connection holds one.  External descriptors are capped at a third of
 * max_safe_fds; the cache takes at most half of that, transfers the rest.
 * Called again as celloattr.max_in_flight grows on reload.
 */
static void
reserve_connection_cache(HttpEngine *engine)
{
	int			want = Min(Min(celloattr_max_in_flight, HTTP_MAX_CONNECTIONS),
						   Max(1, max_safe_fds / 6));

	if (engine->cached_fds >= want)
		return;
	while (engine->cached_fds < want && AcquireExternalFD())
		engine->cached_fds++;
	curl_multi_setopt(engine->multi, CURLMOPT_MAXCONNECTS, (long) Max(engine->cached_fds, 1));
}

HttpEngine *
http_engine_create(HttpDoneCallback done)
{
	HttpEngine *engine;

	if (!curl_initialized)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		curl_initialized = true;

		/*
		 * The engine never blocks on a transfer, but a libcurl built
		 * without an asynchronous resolver looks names up inside
		 * curl_multi_perform(), where a slow DNS server holds up every
		 * transfer, the latch and SIGTERM alike.
		 */
		if (!(curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_ASYNCHDNS))
			ereport(WARNING,
					(errmsg("libcurl %s resolves host names synchronously",
							curl_version_info(CURLVERSION_NOW)->version),
					 errdetail("A slow DNS server will hold up the celloattr worker while it waits."),
					 errhint("Install a libcurl built with the threaded resolver or c-ares, as Debian's libcurl4 is.")));
	}

	engine = MemoryContextAllocZero(TopMemoryContext, sizeof(HttpEngine));
	engine->cxt = AllocSetContextCreate(TopMemoryContext, "celloattr http",
										ALLOCSET_SMALL_SIZES);
	engine->done = done;
	engine->sockets_changed = true;
	engine->multi = curl_multi_init();
	if (engine->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(engine->multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
	curl_multi_setopt(engine->multi, CURLMOPT_SOCKETDATA, engine);
	curl_multi_setopt(engine->multi, CURLMOPT_TIMERFUNCTION, timer_callback);
	curl_multi_setopt(engine->multi, CURLMOPT_TIMERDATA, engine);
	reserve_connection_cache(engine);
	return engine;
}

void
http_engine_destroy(HttpEngine *engine)
{
	/* transfers still in flight are abandoned: their jobs are leased */
	curl_multi_cleanup(engine->multi);
	while (engine->nidle > 0)
		curl_easy_cleanup(engine->idle[--engine->nidle]);
	while (engine->cached_fds-- > 0)
		ReleaseExternalFD();
	free(engine->sockets);
	if (engine->set)
		FreeWaitEventSet(engine->set);
	MemoryContextDelete(engine->cxt);
	pfree(engine);
}

void
http_add_header(HttpExchange *exchange, const char *fmt,...)
{
	va_list		args;
	StringInfoData buf;

	if (exchange->nheaders >= HTTP_MAX_HEADERS)
		elog(ERROR, "celloattr: too many headers for one request");
	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	exchange->headers[exchange->nheaders++] = buf.data;
}

static void
free_transfer(Transfer *t)
{
	curl_slist_free_all(t->headers);
	free(t->data);
	free(t);
}

bool
http_engine_add(HttpEngine *engine, HttpExchange *exchange)
{
	CURL	   *h;
	Transfer   *t;

	exchange->started_at = GetCurrentTimestamp();
	reserve_connection_cache(engine);

	/*
	 * A transfer's socket is a descriptor PostgreSQL does not know about:
	 * reserve it from the process's budget, or wait (a local shortage, not
	 * the provider's failure).  Connections kept alive between transfers
	 * were reserved when the engine was created.
	 */
	if (!AcquireExternalFD())
	{
		exchange->error = pstrdup("no file descriptor free for another transfer (max_files_per_process)");
		exchange->resource_error = true;
		return false;
	}
	t = calloc(1, sizeof(Transfer));
	if (t && engine->nidle > 0)
	{
		h = engine->idle[--engine->nidle];
		curl_easy_reset(h);
	}
	else
		h = t ? curl_easy_init() : NULL;
	if (h == NULL)
	{
		free(t);
		ReleaseExternalFD();
		exchange->error = pstrdup("could not set up a transfer: out of memory");
		exchange->resource_error = true;
		return false;
	}
	t->exchange = exchange;
	for (int i = 0; i < exchange->nheaders; i++)
		t->headers = curl_slist_append(t->headers, exchange->headers[i]);
	/* no "Expect: 100-continue" round trip for small bodies */
	t->headers = curl_slist_append(t->headers, "Expect:");

	curl_easy_setopt(h, CURLOPT_URL, exchange->url);
	curl_easy_setopt(h, CURLOPT_PRIVATE, t);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, celloattr_allow_http ? "http,https" : "https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) celloattr_connect_timeout);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long) celloattr_request_timeout);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "celloattr/" CELLOATTR_VERSION);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	if (strcmp(exchange->method, "POST") == 0)
	{
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long) exchange->body_len);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, exchange->body ? exchange->body : "");
	}

	if (t->headers == NULL || curl_multi_add_handle(engine->multi, h) != CURLM_OK)
	{
		curl_easy_cleanup(h);
		free_transfer(t);
		ReleaseExternalFD();
		exchange->error = pstrdup("could not start a transfer: out of memory");
		exchange->resource_error = true;
		return false;
	}
	exchange->handle = h;
	engine->in_flight++;
	engine->added = true;
	return true;
}

int
http_engine_in_flight(HttpEngine *engine)
{
	return engine->in_flight;
}

/*
 * Move a finished transfer's results into the exchange and hand it back
 * through the callback; or, with cancelled (the reason), end it where it
 * stands and leave the exchange to the caller.
 */
static void
finish_transfer(HttpEngine *engine, CURL *h, CURLcode result,
				const char *cancelled)
{
	Transfer   *t;
	HttpExchange *ex;
	MemoryContext old;
	curl_off_t	total_us = 0;

	curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **) &t);
	ex = t->exchange;
	old = MemoryContextSwitchTo(GetMemoryChunkContext(ex));

	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &ex->status);
	curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &total_us);
	ex->duration_ms = total_us / 1000.0;
	/* every byte, NULs too: the log shows them (dbtext.c) */
	ex->response = palloc(t->len + 1);
	if (t->len > 0)
		memcpy(ex->response, t->data, t->len);
	ex->response[t->len] = '\0';
	ex->response_len = t->len;
	ex->retry_after = t->retry_after[0] ? pstrdup(t->retry_after) : NULL;
	ex->should_retry = t->should_retry[0] ? pstrdup(t->should_retry) : NULL;
	ex->replayed = t->replayed;

	if (cancelled)
	{
		ex->error = pstrdup(cancelled);
		ex->duration_ms = (GetCurrentTimestamp() - ex->started_at) / 1000.0;
	}
	else if (t->too_large)
		ex->error = psprintf("response larger than %d bytes", HTTP_MAX_RESPONSE_BYTES);
	else if (t->no_memory || result == CURLE_OUT_OF_MEMORY)
	{
		ex->error = pstrdup("out of memory while receiving the response");
		ex->resource_error = true;
	}
	else if (result != CURLE_OK)
	{
		ex->error = psprintf("%s%s%s", curl_easy_strerror(result),
							 t->errbuf[0] ? ": " : "", t->errbuf);
		/* no descriptor for a socket is our shortage, not the provider's */
		if (strstr(t->errbuf, "Too many open files") != NULL ||
			strstr(t->errbuf, "Cannot allocate memory") != NULL)
			ex->resource_error = true;
	}
	if (ex->error)
	{
		long		request_bytes = 0;

		/* bytes of the request written to the connection: none, and the
		 * provider cannot have seen it (no connection, refused, no name) */
		curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &request_bytes);
		ex->may_have_arrived = request_bytes > 0;
		ex->status = 0;
	}
	MemoryContextSwitchTo(old);

	curl_multi_remove_handle(engine->multi, h);
	if (engine->nidle < HTTP_IDLE_HANDLES)
		engine->idle[engine->nidle++] = h;
	else
		curl_easy_cleanup(h);
	free_transfer(t);
	ReleaseExternalFD();
	ex->handle = NULL;
	engine->in_flight--;
	if (!cancelled)
		engine->done(ex);
}

void
http_engine_cancel(HttpEngine *engine, HttpExchange *exchange,
				   const char *reason)
{
	if (exchange->handle != NULL)
		finish_transfer(engine, exchange->handle, CURLE_OK, reason);
}

static void
deliver_finished(HttpEngine *engine)
{
	CURLMsg    *msg;
	int			pending;

	while ((msg = curl_multi_info_read(engine->multi, &pending)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			finish_transfer(engine, msg->easy_handle, msg->data.result, NULL);
}

void
http_engine_send_added(HttpEngine *engine)
{
	int			running;

	/* a transfer finished at once may issue another: loop until none did */
	while (engine->added)
	{
		engine->added = false;
		curl_multi_socket_action(engine->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		deliver_finished(engine);
	}
}

static void
rebuild_wait_set(HttpEngine *engine)
{
	if (engine->set)
		FreeWaitEventSet(engine->set);
	engine->set = celloattr_create_wait_event_set(engine->cxt, engine->nsockets + 2);
	AddWaitEventToSet(engine->set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(engine->set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < engine->nsockets; i++)
	{
		uint32		events = 0;

		if (engine->sockets[i].what & CURL_POLL_IN)
			events |= WL_SOCKET_READABLE;
		if (engine->sockets[i].what & CURL_POLL_OUT)
			events |= WL_SOCKET_WRITEABLE;
		if (events)
			AddWaitEventToSet(engine->set, events, engine->sockets[i].fd, NULL, NULL);
	}
	engine->sockets_changed = false;
}

bool
http_engine_wait(HttpEngine *engine, long timeout_ms)
{
	WaitEvent	events[64];
	int			n;
	int			running;
	bool		latch_set = false;

	/* a timer already due makes this a look at the sockets, no sleep */
	if (engine->timer_set)
	{
		long		until_timer = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																  engine->timer_due);

		if (timeout_ms < 0 || until_timer < timeout_ms)
			timeout_ms = until_timer;
	}
	if (engine->sockets_changed || engine->set == NULL)
		rebuild_wait_set(engine);

	n = WaitEventSetWait(engine->set, timeout_ms, events, lengthof(events),
						 PG_WAIT_EXTENSION);
	for (int i = 0; i < n; i++)
	{
		int			flags = 0;

		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
			continue;
		}
		if (events[i].events & WL_SOCKET_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			flags |= CURL_CSELECT_OUT;
		if (flags)
			curl_multi_socket_action(engine->multi, events[i].fd, flags, &running);
	}
	/* due timers run even when sockets or the latch woke us */
	run_due_timers(engine);

	deliver_finished(engine);
	/* the next requests of the steps just answered go out before we return */
	http_engine_send_added(engine);
	if (engine->out_of_memory)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while tracking HTTP sockets")));
	return latch_set;
}
