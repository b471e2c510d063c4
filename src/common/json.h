/*-------------------------------------------------------------------------
 *
 * json.h
 *	  Small helpers over json-c for reading provider answers.
 *
 * json-c's json_object clashes with PostgreSQL's json_object() declared in
 * utils/builtins.h: a file that includes this header must not include
 * that one.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_JSON_H
#define CELLOATTR_JSON_H

#include <json-c/json.h>

/*
 * Parse text; NULL if it is not JSON as PostgreSQL reads it (json-c alone
 * takes more, and would write it back unchanged), or if it holds an integer
 * json-c cannot keep exactly.  Free with json_object_put().
 */
extern struct json_object *json_parse(const char *text);

/* The member at a dotted path ("data.object.customer"; a number picks an
 * array element: "lines.data.0.price"), or NULL. */
extern struct json_object *json_at(struct json_object *obj, const char *path);

/* The string at a path as a palloc'd copy, or NULL if absent or not a string. */
extern char *json_string_at(struct json_object *obj, const char *path);

/* The integer at a path; false if absent or not a number. */
extern bool json_int_at(struct json_object *obj, const char *path, int64 *value);

/* The boolean at a path; false if absent or not a boolean. */
extern bool json_bool_at(struct json_object *obj, const char *path, bool *value);

/* The first string found at one of the paths (NULL-terminated), or NULL. */
extern char *json_first_string(struct json_object *obj, const char *const *paths);

/*
 * The idx-th item of the array at a path, or NULL if absent, not an array
 * or too short.  json-c's own array accessors assert on anything but an
 * array, and an assertion failure would abort the worker and restart the
 * whole server: answers are read through this instead.
 */
extern struct json_object *json_item_at(struct json_object *obj, const char *path, size_t idx);

/* The strings at path in the first elements of an array, comma separated
 * (for messages: "cus_1, cus_2"). */
extern char *json_list_ids(struct json_object *array, const char *path);

/* A value as compact JSON text (palloc'd; '/' not escaped). */
extern char *json_text(struct json_object *obj);

/* A JSON text as one string literal, quotes included (palloc'd). */
extern char *json_quote(const char *text);

/*
 * JSON text as a jsonb column takes it (palloc'd): jsonb has no U+0000, so
 * each \u0000 escape (json-c writes one for a NUL in a string) becomes the
 * text \x00 (a backslash, x, 0, 0) in that string.
 */
extern char *json_for_jsonb(const char *json);

/* The error message of a provider's error body: the string at the path. */
extern char *json_message_at(const char *body, const char *path);

#endif							/* CELLOATTR_JSON_H */
