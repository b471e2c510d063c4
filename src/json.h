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

/* Parse text; NULL if it is not JSON.  Free with json_object_put(). */
extern struct json_object *json_parse(const char *text);

/* The member at a dotted path ("data.object.customer"), or NULL. */
extern struct json_object *json_at(struct json_object *obj, const char *path);

/* The string at a path as a palloc'd copy, or NULL if absent or not a string. */
extern char *json_string_at(struct json_object *obj, const char *path);

/* The integer at a path; false if absent or not a number. */
extern bool json_int_at(struct json_object *obj, const char *path, int64 *value);

/* The boolean at a path; false if absent or not a boolean. */
extern bool json_bool_at(struct json_object *obj, const char *path, bool *value);

/* A JSON text as one string literal, quotes included (palloc'd). */
extern char *json_quote(const char *text);

/* The error message of a provider's error body: the string at the path. */
extern char *json_message_at(const char *body, const char *path);

#endif							/* CELLOATTR_JSON_H */
