/*-------------------------------------------------------------------------
 *
 * dbtext.c
 *	  Text crossing between the providers and the database: what the
 *	  worker writes is valid text of the database, and what it sends is
 *	  UTF-8.
 *
 * Providers speak UTF-8, but their bytes are not to be trusted: a body
 * clipped for the log, a broken answer or a JSON "\u0000" can hold bytes
 * that are not text at all.  A column holding such bytes reads back fine
 * and then breaks the customer's pg_dump and restore (the whole table's
 * COPY fails), so every text column the worker fills from a provider's
 * bytes goes through here: invalid bytes and NUL become "\xNN", characters
 * the database encoding cannot hold (an emoji in a LATIN1 database) become
 * "\u{1F600}", and text is clipped at a character boundary.  Inside the
 * worker, text is UTF-8: values read from a database of another encoding
 * are converted when a step is claimed.
 *
 * The HTTP log's text is built here too: secrets are scrubbed from the
 * whole text before it is clipped, so that a secret straddling
 * celloattr.log_body_limit is never half kept.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "celloattr.h"
#include "dbtext.h"
#include "json.h"
#include "providers.h"

/* Longest secret considered when bounding the text scrubbed for the log. */
#define MAX_SECRET_BYTES 1024

static void
append_escape(StringInfo buf, const char *fmt, unsigned int value, bool json)
{
	/* in a JSON string a backslash is itself escaped */
	appendStringInfoString(buf, json ? "\\\\" : "\\");
	appendStringInfo(buf, fmt, value);
}

/*
 * src's valid characters converted from one encoding to another, appended
 * to buf; those the target encoding lacks as \u{XXXX} (their code point)
 * or, from an encoding other than UTF-8, as \xNN per byte.
 */
static void
append_converted(StringInfo buf, const unsigned char *src, int len,
				 int from, int to, bool json)
{
	Oid			proc;

	if (from == to || to == PG_SQL_ASCII || from == PG_SQL_ASCII)
	{
		appendBinaryStringInfo(buf, (const char *) src, len);
		return;
	}
	proc = FindDefaultConversionProc(from, to);
	if (!OidIsValid(proc))
		elog(ERROR, "celloattr: no conversion from %s to %s",
			 pg_encoding_to_char(from), pg_encoding_to_char(to));
	while (len > 0)
	{
		int			done;
		int			charlen;

		enlargeStringInfo(buf, len * MAX_CONVERSION_GROWTH + 1);
		done = pg_do_encoding_conversion_buf(proc, from, to,
											 (unsigned char *) src, len,
											 (unsigned char *) buf->data + buf->len,
											 buf->maxlen - buf->len, true);
		buf->len += strlen(buf->data + buf->len);
		src += done;
		len -= done;
		if (len == 0)
			break;
		/* a character the target cannot hold */
		charlen = Min(pg_encoding_mblen(from, (const char *) src), len);
		if (from == PG_UTF8)
			append_escape(buf, "u{%04X}", utf8_to_unicode(src), json);
		else
			for (int i = 0; i < charlen; i++)
				append_escape(buf, "x%02X", src[i], json);
		src += charlen;
		len -= charlen;
	}
}

/*
 * Bytes that should be text of encoding from as valid, NUL-free text of
 * encoding to (palloc'd).
 */
static char *
convert_text(const char *text, size_t len, int from, int to, bool json)
{
	StringInfoData buf;
	const unsigned char *p = (const unsigned char *) text;
	const unsigned char *end = p + len;

	initStringInfo(&buf);
	while (p < end)
	{
		/* pg_encoding_verifymbstr stops at NUL and at the first bad byte */
		int			valid = pg_encoding_verifymbstr(from, (const char *) p,
													(int) Min(end - p, INT_MAX / MAX_CONVERSION_GROWTH));

		append_converted(&buf, p, valid, from, to, json);
		p += valid;
		if (p < end)
			append_escape(&buf, "x%02X", *p++, json);
	}
	return buf.data;
}

char *
db_text(const char *text)
{
	if (text == NULL)
		return NULL;
	return convert_text(text, strlen(text), PG_UTF8, GetDatabaseEncoding(), false);
}

char *
db_json(const char *json)
{
	if (json == NULL)
		return NULL;
	/* jsonb refuses \u0000; and the JSON's own bytes may be anything */
	json = json_for_jsonb(json);
	return convert_text(json, strlen(json), PG_UTF8, GetDatabaseEncoding(), true);
}

char *
worker_text(const char *text)
{
	if (text == NULL)
		return NULL;
	return convert_text(text, strlen(text), GetDatabaseEncoding(), PG_UTF8, false);
}

/* ------------------------------------------------------------- the log */

static char *
redact(char *out, const char *secret)
{
	size_t		len = strlen(secret);
	char	   *hit;

	/* short values would match by accident, and are not keys anyway */
	if (len < 8)
		return out;
	while ((hit = strstr(out, secret)) != NULL)
		out = psprintf("%.*s[redacted]%s", (int) (hit - out), out, hit + len);
	return out;
}

/* The secrets the worker holds right now (NULL-terminated). */
static void
secrets(const char **list, int max)
{
	const char *const settings[] = {
		celloattr_stripe_secret_key, celloattr_chargebee_api_key,
		celloattr_chargebee_webhook_password, celloattr_cello_secret_access_key,
		NULL
	};
	const char *const *tokens = celloattr_log_secrets();
	int			n = 0;

	for (int i = 0; settings[i] && n < max - 1; i++)
		list[n++] = settings[i];
	/* and the Cello tokens the worker holds right now */
	for (int i = 0; tokens[i] && n < max - 1; i++)
		list[n++] = tokens[i];
	list[n] = NULL;
}

char *
log_text(const char *text, size_t len, int limit)
{
	const char *list[16];
	size_t		window = len;
	char	   *out;
	int			outlen;

	if (text == NULL)
		return NULL;
	secrets(list, lengthof(list));

	/*
	 * Only the start of a long text can be kept.  Converted, a byte takes at
	 * least half a byte (UTF-8's two-byte characters in LATIN1), so twice the
	 * limit and the longest secret covers whatever the clip keeps and every
	 * secret starting inside it.
	 */
	if (limit >= 0)
		window = Min(len, 2 * ((size_t) limit + MAX_SECRET_BYTES) + 8);
	out = convert_text(text, window, PG_UTF8, GetDatabaseEncoding(), false);

	/* redact() copies the text only where it finds a secret */
	for (int i = 0; list[i]; i++)
		out = redact(out, list[i]);

	outlen = strlen(out);
	if (limit < 0 || (window == len && outlen <= limit))
		return out;
	/* a character boundary (in SQL_ASCII the text is kept as UTF-8) */
	outlen = GetDatabaseEncoding() == PG_SQL_ASCII
		? pg_encoding_mbcliplen(PG_UTF8, out, outlen, limit)
		: pg_mbcliplen(out, outlen, limit);
	return psprintf("%.*s... [%zu bytes]", outlen, out, len);
}

char *
scrubbed_text(const char *text)
{
	return text ? log_text(text, strlen(text), -1) : NULL;
}

char *
http_logged_headers(const HttpExchange *exchange)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < exchange->nheaders; i++)
	{
		const char *h = exchange->headers[i];

		if (pg_strncasecmp(h, "authorization:", 14) == 0)
			appendStringInfoString(&buf, "Authorization: [redacted]");
		else
			appendStringInfoString(&buf, h);
		appendStringInfoChar(&buf, '\n');
	}
	return log_text(buf.data, buf.len, -1);
}
