/*-------------------------------------------------------------------------
 *
 * trigger_args.c
 *	  The 'key=value' arguments of celloattr's row triggers, parsed and
 *	  checked against the table when the trigger first fires in a statement.
 *
 * A C trigger function sees its arguments only when it fires, so they are
 * checked then; the parsed result is kept in fn_extra so that the other
 * rows of the statement are cheap.  A key names a column or, for a few
 * keys, holds a constant.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "trigger_args.h"

/* "a, b, c": the first n of list, or all of a NULL-terminated one (n < 0) */
static char *
join_list(const char *const *list, int n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; n < 0 ? list[i] != NULL : i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", list[i]);
	return buf.data;
}

static char *
key_list(const TriggerSpec *spec, bool required_only)
{
	const char *names[MAX_KEYS];
	int			n = 0;

	for (int i = 0; i < spec->nkeys; i++)
		if (!required_only || (spec->keys[i].flags & K_REQUIRED))
			names[n++] = spec->keys[i].key;
	return join_list(names, n);
}

/* digits with at most one point, and not zero */
static bool
positive_number(const char *v)
{
	const char *point = strchr(v, '.');

	return strspn(v, "0123456789.") == strlen(v) &&
		(point == NULL || strchr(point + 1, '.') == NULL) &&
		strpbrk(v, "123456789") != NULL;
}

/*
 * A value in single quotes is a constant, with '' standing for one quote as
 * in SQL.  Returns NULL for a value that is not quoted.
 */
static char *
unquote(const char *value, const char *arg, Trigger *trigger)
{
	StringInfoData buf;
	const char *p;
	bool		closed = false;

	if (value[0] != '\'')
		return NULL;
	initStringInfo(&buf);
	for (p = value + 1; *p; p++)
	{
		if (*p == '\'' && *++p != '\'')
		{
			closed = true;
			break;
		}
		appendStringInfoChar(&buf, *p);
	}
	if (!closed || *p != '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" of trigger \"%s\" has a badly quoted value",
						arg, trigger->tgname),
				 errhint("End a constant with a single quote and double the quotes inside it, as in 'product_key=''Pro Plan'''.")));
	return buf.data;
}

static void
parse_argument(const TriggerSpec *spec, TriggerConfig *cfg, const char *arg,
			   Trigger *trigger, Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	const char *eq = strchr(arg, '=');
	const KeySpec *ks = NULL;
	ValueSource *src;
	char	   *key;
	char	   *value;
	char	   *quoted;
	char	   *valid_keys = key_list(spec, false);
	bool		ok = true;

	key = eq ? pnstrdup(arg, eq - arg) : NULL;
	value = eq ? pstrdup(eq + 1) : NULL;
	for (int i = 0; key != NULL && value[0] != '\0' && i < spec->nkeys; i++)
		if (strcmp(spec->keys[i].key, key) == 0)
			ks = &spec->keys[i];
	if (ks == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 (key == NULL || value[0] == '\0') ?
				 errmsg("argument \"%s\" of trigger \"%s\" is not of the form key=value",
						arg, trigger->tgname) :
				 errmsg("unknown key \"%s\" in argument \"%s\" of trigger \"%s\"",
						key, arg, trigger->tgname),
				 errhint("Valid keys of %s are: %s.", spec->funcname, valid_keys)));
	src = &cfg->src[ks - spec->keys];
	if (src->given)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key \"%s\" is given more than once to trigger \"%s\"",
						key, trigger->tgname),
				 errhint("Give each key once.  Valid keys of %s are: %s.",
						 spec->funcname, valid_keys)));
	src->given = true;

	quoted = unquote(value, arg, trigger);

	/* a column of that name wins over a constant */
	if (!quoted && (ks->flags & K_COLUMN))
		src->attnum = get_attnum(RelationGetRelid(rel), value);
	if (src->attnum > 0)
	{
		Oid			typid = TupleDescAttr(tupdesc, src->attnum - 1)->atttypid;
		Oid			typoutput;
		bool		isvarlena;

		getTypeOutputInfo(typid, &typoutput, &isvarlena);
		fmgr_info_cxt(typoutput, &src->output, cfg->cxt);
		if ((ks->flags & K_BOOL) && getBaseType(typid) != BOOLOID)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" named by argument \"%s\" of trigger \"%s\" is not of type boolean",
							value, arg, trigger->tgname)));
		return;
	}
	src->attnum = InvalidAttrNumber;

	if (!(ks->flags & (quoted ? K_QUOTED : K_BARE)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" named by argument \"%s\" of trigger \"%s\" does not exist in table \"%s\"",
						value, arg, trigger->tgname,
						RelationGetRelationName(rel)),
				 (ks->flags & K_QUOTED) ?
				 errhint("Write a constant in single quotes, as in '%s=''%s'''.",
						 key, value) : 0));

	src->constval = quoted ? quoted : value;
	if (ks->choices)
	{
		ok = false;
		for (const char *const *c = ks->choices; *c; c++)
			ok |= (strcmp(*c, src->constval) == 0);
	}
	else if (ks->flags & K_BOOL)
	{
		bool		b = false;

		ok = parse_bool(src->constval, &b);
		src->constval = b ? "true" : "false";
	}
	else if (ks->flags & K_NUMBER)
		ok = positive_number(src->constval);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value in argument \"%s\" of trigger \"%s\"",
						arg, trigger->tgname),
				 errhint((ks->flags & K_COLUMN) ?
						 "Use %s, or the name of a column of table \"%s\"." : "Use %s.",
						 ks->choices ? psprintf("one of %s", join_list(ks->choices, -1)) :
						 (ks->flags & K_BOOL) ? "true or false" :
						 "a positive number, such as 100 for amounts stored in cents",
						 RelationGetRelationName(rel))));
}

/*
 * Check how the trigger is fired, and return its configuration: parsed on
 * the first row of a statement (or when the trigger, table or columns are
 * not the ones it was parsed for) and kept in fn_extra, which lives as long
 * as the statement, for the other rows.
 */
TriggerConfig *
trigger_config(FunctionCallInfo fcinfo, const TriggerSpec *spec)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TriggerConfig *cfg = (TriggerConfig *) fcinfo->flinfo->fn_extra;
	MemoryContext cxt;
	MemoryContext oldcxt;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		  TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function %s must be fired AFTER INSERT OR UPDATE FOR EACH ROW",
						spec->funcname),
				 errhint("Create the trigger with CREATE TRIGGER ... AFTER INSERT OR UPDATE ON ... FOR EACH ROW EXECUTE FUNCTION %s.",
						 spec->funcname)));

	trigger = trigdata->tg_trigger;
	rel = trigdata->tg_relation;
	if (cfg != NULL && cfg->tgoid == trigger->tgoid &&
		cfg->relid == RelationGetRelid(rel) &&
		cfg->natts == RelationGetDescr(rel)->natts)
		return cfg;
	if (cfg != NULL)
	{
		fcinfo->flinfo->fn_extra = NULL;
		MemoryContextDelete(cfg->cxt);
	}

	cxt = AllocSetContextCreate(fcinfo->flinfo->fn_mcxt,
								"celloattr trigger configuration",
								ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);
	cfg = palloc0(sizeof(TriggerConfig));
	cfg->cxt = cxt;
	cfg->tgoid = trigger->tgoid;
	cfg->relid = RelationGetRelid(rel);
	cfg->natts = RelationGetDescr(rel)->natts;

	for (int i = 0; i < spec->nkeys; i++)
		cfg->src[i].spec = &spec->keys[i];
	for (int i = 0; i < trigger->tgnargs; i++)
		parse_argument(spec, cfg, trigger->tgargs[i], trigger, rel);
	for (int i = 0; i < spec->nkeys; i++)
		if ((spec->keys[i].flags & K_REQUIRED) && !cfg->src[i].given)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("trigger \"%s\" lacks the required argument \"%s=...\"",
							trigger->tgname, spec->keys[i].key),
					 errhint("%s needs the keys %s, and takes %s.", spec->funcname,
							 key_list(spec, true), key_list(spec, false))));

	if (spec->check_config)
		spec->check_config(cfg, trigger);

	MemoryContextSwitchTo(oldcxt);
	fcinfo->flinfo->fn_extra = cfg;
	return cfg;
}

/*
 * The value of a key in a row as text, or its default (NULL when it has
 * none) when not given or NULL.  For optional keys '' counts as NULL too:
 * product tables often store it for "none".
 */
char *
trigger_value_text(ValueSource *src, TupleTableSlot *slot)
{
	char	   *text = src->constval;

	if (src->attnum != InvalidAttrNumber)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, src->attnum, &isnull);

		text = isnull ? NULL : OutputFunctionCall(&src->output, value);
	}
	if (text == NULL || (text[0] == '\0' && !(src->spec->flags & K_REQUIRED)))
		return unconstify(char *, src->spec->dflt);
	return text;
}

