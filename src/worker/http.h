/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The worker's HTTP engine: many transfers in flight on one libcurl
 *	  multi handle, waited for together with the process latch.
 *
 * A caller fills an HttpExchange (method, URL, headers, body), hands it to
 * http_engine_add(), and calls http_engine_wait() in its loop; finished
 * exchanges come back through the callback given at creation, with the
 * status, the body, the headers that steer retries, or the transport error.
 * Connections are kept alive per host across transfers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_HTTP_H
#define CELLOATTR_HTTP_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

/* Longest response body kept; a longer one is a transport error. */
#define HTTP_MAX_RESPONSE_BYTES (16 * 1024 * 1024)
#define HTTP_MAX_HEADERS 8

typedef struct HttpExchange
{
	/* request, filled by the caller (palloc'd in the caller's context) */
	const char *provider;		/* for the log and pacing: stripe, chargebee, cello */
	const char *pace_also;		/* NULL, or an endpoint's limit it is paced
								 * by as well (worker.c) */
	const char *method;			/* GET or POST */
	char	   *url;
	char	   *headers[HTTP_MAX_HEADERS];	/* "Name: value" lines */
	int			nheaders;
	char	   *body;			/* NULL for none */
	size_t		body_len;
	bool		unrepeatable;	/* a POST no key makes safe to send twice */

	/* response, filled by the engine */
	TimestampTz started_at;
	double		duration_ms;
	long		status;			/* 0 when the transfer failed */
	char	   *response;		/* NUL-terminated, palloc'd */
	size_t		response_len;
	char	   *error;			/* transport error, or NULL */
	bool		may_have_arrived;	/* the error came after the request went
									 * out: the provider may have acted on it */
	bool		resource_error; /* failed for lack of local resources */
	char	   *retry_after;	/* Retry-After header, or NULL */
	char	   *should_retry;	/* Stripe-Should-Retry header, or NULL */
	bool		replayed;		/* an idempotent replay of a stored result */

	/* engine private */
	void	   *owner;
	void	   *handle;
	StringInfoData buffer;
	bool		buffer_failed;
} HttpExchange;

typedef void (*HttpDoneCallback) (HttpExchange *exchange);

typedef struct HttpEngine HttpEngine;

/* One engine per process; exchanges and their data live in the callers'
 * memory contexts, the engine's own state in TopMemoryContext. */
extern HttpEngine *http_engine_create(HttpDoneCallback done);
extern void http_engine_destroy(HttpEngine *engine);

/* Start a transfer; false (with exchange->error set) if it cannot start. */
extern bool http_engine_add(HttpEngine *engine, HttpExchange *exchange);

/*
 * Send the requests of the transfers added since the last wait now rather
 * than at the next wait: for a caller about to be busy for a while.
 */
extern void http_engine_send_added(HttpEngine *engine);

/*
 * End a transfer in flight now (nothing if it is not): the exchange gets
 * reason as its error and is not handed to the callback.
 */
extern void http_engine_cancel(HttpEngine *engine, HttpExchange *exchange,
							   const char *reason);

/* Transfers in flight. */
extern int	http_engine_in_flight(HttpEngine *engine);

/*
 * Wait up to timeout_ms for socket activity, curl's timers or the latch,
 * then advance transfers and deliver finished ones to the callback.
 * Returns true if the latch was set.
 */
extern bool http_engine_wait(HttpEngine *engine, long timeout_ms);

/* Add a header line to a request. */
extern void http_add_header(HttpExchange *exchange, const char *fmt,...) pg_attribute_printf(2, 3);

/* dbtext.c: the exchange's request headers as the log may show them. */
extern char *http_logged_headers(const HttpExchange *exchange);

#endif							/* CELLOATTR_HTTP_H */
