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
