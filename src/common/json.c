/*-------------------------------------------------------------------------
 *
 * json.c
 *	  Small helpers over json-c for reading provider answers.
 *
 * Answers are untrusted: every accessor checks the type it expects and
 * returns "absent" for anything else, so an answer of an unexpected shape
 * fails a step with a message instead of crashing the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>

#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "json.h"

/* Deeper nesting than any provider answer needs is refused. */
#define JSON_MAX_DEPTH 64

/*
 * json-c's parser is lenient (01, 1e, 1., NaN, single quotes) and writes a
 * number back as it was spelt, and it turns an integer past 64 bits into
 * its largest value without a word.  What the worker parses it may write
 * to jsonb or send on to Cello, so an answer is taken only if PostgreSQL's
 * own JSON parser takes it too and json-c can hold each integer exactly.
 */
#if PG_VERSION_NUM >= 160000
typedef JsonParseErrorType scalar_result;
#define SCALAR_OK JSON_SUCCESS
#define SCALAR_REFUSED JSON_SEM_ACTION_FAILED
#else
typedef void scalar_result;
#define SCALAR_OK
#define SCALAR_REFUSED
#endif

static scalar_result
integer_fits(void *state, char *token, JsonTokenType type)
{
	bool	   *fits = (bool *) state;

	if (type == JSON_TOKEN_NUMBER && token != NULL && strpbrk(token, ".eE") == NULL)
	{
		errno = 0;
		(void) strtoll(token, NULL, 10);
		if (errno == ERANGE && token[0] != '-')
		{
			errno = 0;
			(void) strtoull(token, NULL, 10);
		}
		if (errno == ERANGE)
			*fits = false;
	}
	/* a string's token is NULL: the lexer keeps no de-escaped copy */
	if (token != NULL)
		pfree(token);
	if (!*fits)
		return SCALAR_REFUSED;
	return SCALAR_OK;
}

static JsonParseErrorType
parse_with(const char *text, const JsonSemAction *sem)
{
	JsonParseErrorType result;
#if PG_VERSION_NUM >= 170000
	JsonLexContext lex;

	makeJsonLexContextCstringLen(&lex, text, strlen(text), PG_UTF8, false);
	result = pg_parse_json(&lex, unconstify(JsonSemAction *, sem));
	freeJsonLexContext(&lex);
#else
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) text, strlen(text),
													   PG_UTF8, false);

	result = pg_parse_json(lex, unconstify(JsonSemAction *, sem));
	pfree(lex);
#endif
	return result;
}

/*
 * The grammar first, with no actions: a token the parser copied for an
 * action is lost when the next one is malformed (no leak in the worker,
 * whose contexts are reset, but one in the fuzz target, which has none).
 */
static bool
json_is_standard(const char *text)
{
	bool		fits = true;
	JsonSemAction check_integers = {0};

	if (parse_with(text, &nullSemAction) != JSON_SUCCESS)
		return false;
	check_integers.semstate = &fits;
	check_integers.scalar = integer_fits;
	return parse_with(text, &check_integers) == JSON_SUCCESS && fits;
}

struct json_object *
json_parse(const char *text)
{
	struct json_tokener *tok;
	struct json_object *obj;

	if (text == NULL)
		return NULL;
	tok = json_tokener_new_ex(JSON_MAX_DEPTH);
	if (tok == NULL)
		return NULL;
	obj = json_tokener_parse_ex(tok, text, (int) strlen(text));
	/* json-c first: its depth limit keeps PostgreSQL's recursive parser
	 * from ever nearing the stack limit */
	if (json_tokener_get_error(tok) != json_tokener_success ||
		!json_is_standard(text))
	{
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	return obj;
}

struct json_object *
json_at(struct json_object *obj, const char *path)
{
	const char *p = path;

	while (obj != NULL && *p)
	{
		char		key[128];
		size_t		n = strcspn(p, ".");

		if (n >= sizeof(key) || n == 0)
			return NULL;
		memcpy(key, p, n);
		key[n] = '\0';
		if (json_object_is_type(obj, json_type_array) && strspn(key, "0123456789") == n)
		{
			size_t		i = (size_t) strtoul(key, NULL, 10);

			if (n > 9 || i >= json_object_array_length(obj))
				return NULL;
			obj = json_object_array_get_idx(obj, i);
		}
		else if (!json_object_is_type(obj, json_type_object) ||
				 !json_object_object_get_ex(obj, key, &obj))
			return NULL;
		p += n;
		if (*p == '.')
			p++;
	}
	return obj;
}

char *
json_string_at(struct json_object *obj, const char *path)
{
	struct json_object *v = json_at(obj, path);

	if (v == NULL || !json_object_is_type(v, json_type_string))
		return NULL;
	return pnstrdup(json_object_get_string(v), json_object_get_string_len(v));
}

char *
json_first_string(struct json_object *obj, const char *const *paths)
{
	for (int i = 0; paths[i]; i++)
	{
		char	   *v = json_string_at(obj, paths[i]);

		if (v)
			return v;
	}
	return NULL;
}

struct json_object *
json_item_at(struct json_object *obj, const char *path, size_t idx)
{
	struct json_object *array = json_at(obj, path);

	if (array == NULL || !json_object_is_type(array, json_type_array) ||
		idx >= json_object_array_length(array))
		return NULL;
	return json_object_array_get_idx(array, idx);
}

char *
json_list_ids(struct json_object *array, const char *path)
{
	StringInfoData buf;
	/* json-c asserts (aborting the server) on a length of a non-array */
	size_t		n = json_object_is_type(array, json_type_array)
		? json_object_array_length(array) : 0;

	initStringInfo(&buf);
	for (size_t i = 0; i < n && i < 10; i++)
	{
		char	   *id = json_string_at(json_object_array_get_idx(array, i), path);

		appendStringInfo(&buf, "%s%s", i ? ", " : "", id ? id : "?");
		if (id)
			pfree(id);
	}
	if (n > 10)
		appendStringInfoString(&buf, ", ...");
	return buf.data;
}

bool
json_int_at(struct json_object *obj, const char *path, int64 *value)
{
	struct json_object *v = json_at(obj, path);

	if (v == NULL || !json_object_is_type(v, json_type_int))
		return false;
	*value = json_object_get_int64(v);
	return true;
}

bool
json_bool_at(struct json_object *obj, const char *path, bool *value)
{
	struct json_object *v = json_at(obj, path);

	if (v == NULL || !json_object_is_type(v, json_type_boolean))
		return false;
	*value = json_object_get_boolean(v);
	return true;
}

char *
json_text(struct json_object *obj)
{
	return pstrdup(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
												  JSON_C_TO_STRING_NOSLASHESCAPE));
}

char *
json_quote(const char *text)
{
	struct json_object *s = json_object_new_string(text);
	char	   *out;

	if (s == NULL)
		elog(ERROR, "celloattr: out of memory quoting JSON");
	out = pstrdup(json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN |
												 JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(s);
	return out;
}

char *
json_message_at(const char *body, const char *path)
{
	struct json_object *obj = json_parse(body);
	char	   *message = json_string_at(obj, path);

	json_object_put(obj);
	return message;
}

char *
json_for_jsonb(const char *json)
{
	StringInfoData buf;
	bool		in_string = false;

	initStringInfo(&buf);
	for (const char *p = json; *p; p++)
	{
		if (in_string && p[0] == '\\' && p[1] != '\0')
		{
			/* jsonb cannot hold U+0000: the escape becomes the text \x00 */
			if (strncmp(p + 1, "u0000", 5) == 0)
			{
				appendStringInfoString(&buf, "\\\\x00");
				p += 5;
			}
			else
			{
				appendStringInfoChar(&buf, p[0]);
				appendStringInfoChar(&buf, *++p);
			}
			continue;
		}
		if (*p == '"')
			in_string = !in_string;
		appendStringInfoChar(&buf, *p);
	}
	return buf.data;
}
