/*-------------------------------------------------------------------------
 *
 * trigger_args.h
 *	  The 'key=value' arguments of celloattr's row triggers: what a key may
 *	  hold, parsing and checking them against the table, and reading a
 *	  key's value from a row.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_TRIGGER_ARGS_H
#define CELLOATTR_TRIGGER_ARGS_H

#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "fmgr.h"

/* What the value of a key may be */
#define K_REQUIRED	0x01
#define K_COLUMN	0x02		/* the name of a column */
#define K_QUOTED	0x04		/* a constant in single quotes */
#define K_BARE		0x08		/* a constant without quotes */
#define K_BOOL		0x10		/* boolean: column of type boolean, true/false */
#define K_NUMBER	0x20		/* constant is a positive number */

typedef struct KeySpec
{
	const char *key;
	int			flags;
	const char *const *choices; /* when set, the constants allowed */
	const char *dflt;			/* the value when not given or NULL */
} KeySpec;

/* Where one key's value comes from, once resolved against the table. */
typedef struct ValueSource
{
	const KeySpec *spec;
	bool		given;
	AttrNumber	attnum;			/* the column, or InvalidAttrNumber */
	FmgrInfo	output;			/* its output function */
	char	   *constval;		/* the constant, when not a column */
} ValueSource;

#define MAX_KEYS 16

typedef struct TriggerConfig
{
	Oid			tgoid;			/* what the configuration was parsed for */
	Oid			relid;
	int			natts;
	MemoryContext cxt;
	ValueSource src[MAX_KEYS];	/* in the order of the key list */
} TriggerConfig;

typedef struct TriggerSpec
{
	const char *funcname;
	const KeySpec *keys;
	int			nkeys;
	/* checks across keys, once the arguments are parsed (ERROR if bad) */
	void		(*check_config) (const TriggerConfig *cfg, Trigger *trigger);
} TriggerSpec;

#define CLOSED_SET	(K_COLUMN | K_QUOTED | K_BARE)
#define CONSTANT	(K_QUOTED | K_BARE)

/*
 * Check how the trigger is fired, and return its configuration: parsed on
 * the first row of a statement (or when the trigger, table or columns are
 * not the ones it was parsed for) and kept in fn_extra, which lives as long
 * as the statement, for the other rows.
 */
extern TriggerConfig *trigger_config(FunctionCallInfo fcinfo, const TriggerSpec *spec);

/*
 * The value of a key in a row as text, or its default (NULL when it has
 * none) when not given or NULL.  For optional keys '' counts as NULL too.
 */
extern char *trigger_value_text(ValueSource *src, TupleTableSlot *slot);

#endif							/* CELLOATTR_TRIGGER_ARGS_H */
