/*-------------------------------------------------------------------------
 *
 * encode.c
 *	  Percent-encoding for form bodies, query strings and path segments.
 *
 * Every byte outside RFC 3986's unreserved set is escaped, so a value can
 * never add a parameter ('&', '='), a nested key ('[', ']'), a path segment
 * ('/', '?', '#') or a header line (CR, LF) to what the provider receives.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "pgtime.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "providers.h"

static inline bool
unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

void
url_append_escaped(StringInfo buf, const char *value)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
	{
		if (unreserved(*p))
			appendStringInfoChar(buf, (char) *p);
		else
		{
			appendStringInfoChar(buf, '%');
			appendStringInfoChar(buf, hex[*p >> 4]);
			appendStringInfoChar(buf, hex[*p & 0xF]);
		}
	}
}

char *
url_escape(const char *value)
{
	StringInfoData buf;

	initStringInfo(&buf);
	url_append_escaped(&buf, value);
	return buf.data;
}

void
form_append(StringInfo buf, const char *name, const char *value)
{
	if (buf->len > 0)
		appendStringInfoChar(buf, '&');
	url_append_escaped(buf, name);
	appendStringInfoChar(buf, '=');
	url_append_escaped(buf, value);
}

char *
base_url(const char *setting)
{
	char	   *url = pstrdup(setting ? setting : "");
	size_t		len = strlen(url);

	while (len > 0 && url[len - 1] == '/')
		url[--len] = '\0';
	return url;
}

char *
base64_encode(const char *data, size_t len)
{
	int			cap = pg_b64_enc_len((int) len) + 1;
	char	   *out = palloc(cap);
	int			n = celloattr_b64_encode(data, (int) len, out, cap);

	if (n < 0)
		elog(ERROR, "celloattr: base64 encoding failed");
	out[n] = '\0';
	return out;
}

char *
basic_auth(const char *user, const char *password)
{
	char	   *pair = psprintf("%s:%s", user ? user : "", password ? password : "");
	char	   *encoded = base64_encode(pair, strlen(pair));
	char	   *header = psprintf("Basic %s", encoded);

	/* both hold the secret: do not leave them lying in memory */
	explicit_bzero(pair, strlen(pair));
	pfree(pair);
	explicit_bzero(encoded, strlen(encoded));
	pfree(encoded);
	return header;
}

char *
currency_code(const char *currency)
{
	char	   *code = pstrdup(currency);

	for (char *c = code; *c; c++)
		*c = pg_toupper((unsigned char) *c);
	return code;
}

/* Currencies counted in whole units (no minor unit), as Stripe and
 * Chargebee list them. */
static bool
zero_decimal(const char *currency)
{
	static const char *const list[] = {"bif", "clp", "djf", "gnf", "jpy", "kmf",
		"krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf", NULL};

	for (int i = 0; list[i]; i++)
		if (pg_strcasecmp(currency, list[i]) == 0)
			return true;
	return false;
}

char *
major_units(int64 amount, const char *currency)
{
	uint64		units = amount < 0 ? -(uint64) amount : (uint64) amount;

	if (currency && zero_decimal(currency))
		return psprintf("%lld", (long long) amount);
	return psprintf("%s%llu.%02llu", amount < 0 ? "-" : "",
					(unsigned long long) (units / 100), (unsigned long long) (units % 100));
}

const char *
cello_interval(const char *unit, int64 count)
{
	if (unit == NULL)
		return "one-time";
	if (strcmp(unit, "day") == 0)
		return count == 7 ? "weekly" : count == 14 ? "bi-weekly" : "one-time";
	if (strcmp(unit, "week") == 0)
		return count == 2 ? "bi-weekly" : "weekly";
	if (strcmp(unit, "month") == 0)
		return count == 3 ? "quarterly" : count == 6 ? "semi-annual" :
			count == 12 ? "yearly" : count == 24 ? "biennial" :
			count == 36 ? "triennial" : "monthly";
	if (strcmp(unit, "year") == 0)
		return count == 2 ? "biennial" : count == 3 ? "triennial" : "yearly";
	return "one-time";
}

char *
rfc3339_utc(TimestampTz t)
{
	pg_time_t	secs = timestamptz_to_time_t(t);
	struct pg_tm *tm = pg_gmtime(&secs);
	char		buf[32];

	if (tm == NULL)
		elog(ERROR, "celloattr: timestamp out of range");
	pg_strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", tm);
	return pstrdup(buf);
}
