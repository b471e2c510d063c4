/*-------------------------------------------------------------------------
 *
 * fuzz_codec.c
 *	  libFuzzer target for the form/URL encoder (src/common/encode.c) and the
 *	  JSON helpers that read provider answers (src/common/json.c).
 *
 * Besides crashes and sanitizer reports, it checks the properties the
 * worker relies on: an encoded value decodes to exactly itself and can add
 * no parameter, path segment or header line; a quoted JSON string parses
 * back to itself; no answer, however malformed, upsets the accessors; and
 * an answer's JSON as the worker stores it in jsonb holds no NUL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <string.h>

#include "json.h"
#include "providers.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decode what url_append_escaped wrote (every byte must be unreserved or
 * %XX) and compare it with the value it came from.
 */
static bool
decodes_to(const char *s, size_t len, const char *value)
{
	bool		same;
	char	   *out = palloc(len + 1);
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '%')
		{
			CHECK(i + 2 < len);
			CHECK(hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0);
			out[n++] = (char) (hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		}
		else
		{
			CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
				  (c >= '0' && c <= '9') || c == '-' || c == '.' ||
				  c == '_' || c == '~');
			out[n++] = (char) c;
		}
	}
	out[n] = '\0';
	same = strcmp(out, value) == 0;
	pfree(out);
	return same;
}

static void
check_encoding(const char *value)
{
	char	   *escaped = url_escape(value);
	StringInfoData form;
	char	   *eq;

	CHECK(decodes_to(escaped, strlen(escaped), value));
	pfree(escaped);

	/* a pair after another: exactly two pairs, each decoding to itself */
	initStringInfo(&form);
	form_append(&form, "metadata[cello_ucc]", "x");
	form_append(&form, "metadata[new_user_id]", value);
	CHECK(strchr(form.data, '&') == strrchr(form.data, '&'));
	eq = strrchr(form.data, '=');
	CHECK(eq != NULL && strchr(strchr(form.data, '&'), '=') == eq);
	CHECK(decodes_to(eq + 1, strlen(eq + 1), value));
	pfree(form.data);
}

/* True if a string anywhere in the value (keys too) holds a NUL. */
static bool
holds_nul(struct json_object *obj)
{
	if (json_object_is_type(obj, json_type_string))
		return strlen(json_object_get_string(obj)) != (size_t) json_object_get_string_len(obj);
	if (json_object_is_type(obj, json_type_array))
	{
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			if (holds_nul(json_object_array_get_idx(obj, i)))
				return true;
	}
	else if (json_object_is_type(obj, json_type_object))
	{
		json_object_object_foreach(obj, key, value)
		{
			if (holds_nul(value))
				return true;
			(void) key;
		}
	}
	return false;
}

/*
 * What the worker writes to jsonb from a value: JSON again, with no NUL
 * left in any string, and what it turns into is written the same way.
 */
static void
check_jsonb_text(struct json_object *obj)
{
	char	   *text = json_text(obj);
	char	   *stored = json_for_jsonb(text);
	struct json_object *back = json_parse(stored);
	char	   *text_again;
	char	   *again;

	CHECK(back != NULL);
	CHECK(!holds_nul(back));
	text_again = json_text(back);
	again = json_for_jsonb(text_again);
	CHECK(strcmp(again, stored) == 0);
	json_object_put(back);
	pfree(text_again);
	pfree(again);
	pfree(stored);
	pfree(text);
}

static void
check_json(const char *text)
{
	struct json_object *obj = json_parse(text);
	int64		i;
	bool		b;
	char	   *s;
	static const char *const paths[] = {
		"", "id", "error.message", "data", "data.object.customer",
		"metadata.cello_ucc", "status_transitions.paid_at", "has_more",
		"a.b.c.d.e.f.g.h", "..", ".x.", NULL
	};

	for (int p = 0; paths[p]; p++)
	{
		(void) json_at(obj, paths[p]);
		s = json_string_at(obj, paths[p]);
		if (s)
			pfree(s);
		(void) json_int_at(obj, paths[p], &i);
		(void) json_bool_at(obj, paths[p], &b);
	}
	s = json_first_string(obj, paths);
	if (s)
		pfree(s);
	(void) json_item_at(obj, "data", 0);
	(void) json_item_at(obj, "lines.data", 1);
	s = json_list_ids(json_at(obj, "data"), "id");
	if (s)
		pfree(s);
	/* what the worker stores are objects and arrays (json_parse takes no
	 * bare number: it cannot tell where one ends) */
	if (json_object_is_type(obj, json_type_object) ||
		json_object_is_type(obj, json_type_array))
		check_jsonb_text(obj);
	json_object_put(obj);
	s = json_message_at(text, "error.message");
	if (s)
		pfree(s);
}

/* A Basic-auth header value is one line, whatever the user and password. */
static void
check_basic_auth(const char *value)
{
	char	   *header = basic_auth(value, value);

	CHECK(strncmp(header, "Basic ", 6) == 0);
	CHECK(strpbrk(header, "\r\n") == NULL);
	pfree(header);
}

/* json_quote of a string parses back to the same string. */
static void
check_quote(const char *value)
{
	char	   *quoted = json_quote(value);
	struct json_object *obj = json_parse(quoted);

	CHECK(obj != NULL && json_object_is_type(obj, json_type_string));
	CHECK(strcmp(json_object_get_string(obj), value) == 0);
	json_object_put(obj);
	pfree(quoted);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *text = pnstrdup((const char *) data, size);

	/* the worker's values are C strings: up to the first NUL */
	check_encoding(text);
	check_json(text);
	check_quote(text);
	check_basic_auth(text);
	pfree(text);
	return 0;
}
