/*-------------------------------------------------------------------------
 *
 * triggers.c
 *	  Row triggers that queue repairs from the product's own tables:
 *	  celloattr.attribute_trigger() for a users table and
 *	  celloattr.transaction_trigger() for an invoices or payments table.
 *
 * The product already stores the referral code and the payments in its own
 * tables, so reacting to those rows, in the transaction that writes them,
 * is the surest way never to miss a repair.  Every schema is different, so
 * both triggers are told by 'key=value' arguments which column holds what
 * (or, for a few keys, a constant).  A C trigger function sees its
 * arguments only when it fires, so they are checked then; the parsed result
 * is kept in fn_extra so that the other rows of the statement are cheap.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "celloattr.h"

PG_FUNCTION_INFO_V1(cello_attribute_trigger);
PG_FUNCTION_INFO_V1(cello_transaction_trigger);

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
} TriggerSpec;

#define CLOSED_SET	(K_COLUMN | K_QUOTED | K_BARE)
#define CONSTANT	(K_QUOTED | K_BARE)

static const char *const gateways[] = {"stripe", "chargebee", "cello_api", NULL};
static const char *const intervals[] = {
	"one-time", "weekly", "bi-weekly", "monthly", "quarterly", "semi-annual",
	"yearly", "biennial", "triennial", "lifetime", NULL
};
static const char *const triggers[] = {"invoice-paid", "charge-refunded", NULL};
static const char *const invalid_modes[] = {"error", "warn", NULL};

enum
{
	A_UCC, A_USER, A_GATEWAY, A_CUSTOMER, A_EMAIL, A_NAME, A_ORG,
	A_SIGNUP_API, A_INVALID, A_NKEYS
};

static const KeySpec attribute_keys[A_NKEYS] = {
	{"ucc", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"new_user_id", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"gateway", K_REQUIRED | CLOSED_SET, gateways, NULL},
	{"customer_id", K_COLUMN, NULL, NULL},
	{"email", K_COLUMN, NULL, NULL},
	{"name", K_COLUMN, NULL, NULL},
	{"organization_id", K_COLUMN, NULL, NULL},
	{"signup_via_api", K_COLUMN | CONSTANT | K_BOOL, NULL, NULL},
	{"invalid", CONSTANT, invalid_modes, "error"},
};

enum
{
	T_USER, T_INVOICE, T_AMOUNT, T_CURRENCY, T_PAID_AT, T_INTERVAL,
	T_PRODUCT, T_SUBSCRIPTION, T_SEATS, T_TRIGGER, T_DIVISOR, T_STATUS,
	T_PAID_STATUS, T_REFUNDED_STATUS, T_INVALID, T_NKEYS
};

static const KeySpec transaction_keys[T_NKEYS] = {
	{"new_user_id", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"invoice_id", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"amount", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"currency", K_REQUIRED | K_COLUMN | K_QUOTED, NULL, NULL},
	{"paid_at", K_REQUIRED | K_COLUMN, NULL, NULL},
	{"interval", CLOSED_SET, intervals, "one-time"},
	{"product_key", K_COLUMN | K_QUOTED, NULL, NULL},
	{"subscription_id", K_COLUMN, NULL, NULL},
	{"seats", K_COLUMN, NULL, NULL},
	{"trigger", CLOSED_SET, triggers, "invoice-paid"},
	{"amount_divisor", CONSTANT | K_NUMBER, NULL, NULL},
	{"status", K_COLUMN, NULL, NULL},
	{"paid_status", CONSTANT, NULL, "paid"},
	{"refunded_status", CONSTANT, NULL, "refunded"},
	{"invalid", CONSTANT, invalid_modes, "error"},
};

StaticAssertDecl(A_NKEYS <= MAX_KEYS && T_NKEYS <= MAX_KEYS, "MAX_KEYS too small");

static const TriggerSpec attribute_spec = {
	"celloattr.attribute_trigger()", attribute_keys, A_NKEYS
};
static const TriggerSpec transaction_spec = {
	"celloattr.transaction_trigger()", transaction_keys, T_NKEYS
};

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

/* A value of a type, from its text. */
static Datum
from_text(PGFunction input, const char *text)
{
	return DirectFunctionCall3(input, CStringGetDatum(text),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
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
static TriggerConfig *
get_config(FunctionCallInfo fcinfo, const TriggerSpec *spec)
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

	/* the status alone decides the event when it is given */
	if (spec == &transaction_spec &&
		(cfg->src[T_STATUS].given ? cfg->src[T_TRIGGER].given :
		 cfg->src[T_PAID_STATUS].given || cfg->src[T_REFUNDED_STATUS].given))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" takes either status=... (with paid_status and refunded_status) or trigger=...",
						trigger->tgname)));

	MemoryContextSwitchTo(oldcxt);
	fcinfo->flinfo->fn_extra = cfg;
	return cfg;
}

/*
 * The value of a key in a row as text, or its default (NULL when it has
 * none) when not given or NULL.  For optional keys '' counts as NULL too:
 * product tables often store it for "none".
 */
static char *
source_text(ValueSource *src, TupleTableSlot *slot)
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

static bool
same_text(const char *a, const char *b)
{
	return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

typedef void (*RowCheck) (void *arg);

/*
 * Check a row's values; with invalid=warn a failed check becomes a WARNING
 * and false (its message in *why), and the application's row is written
 * all the same.  Catching an error without a subtransaction is safe only
 * because a RowCheck looks at its argument and nothing else (no locks,
 * buffers, SPI or writes), and only data errors (class 22) are caught: a
 * cancel or anything unexpected is re-thrown.  A dispute (the user is
 * attributed to another code) is no bad value and stays an error.
 */
static bool
check_row(RowCheck check, void *arg, bool warn, TriggerData *trigdata, char **why)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	if (!warn)
	{
		check(arg);
		return true;
	}
	PG_TRY();
	{
		check(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("%s", edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0,
				 edata->hint ? errhint("%s", edata->hint) : 0,
				 errcontext("trigger \"%s\" on table \"%s\" (invalid=warn): the row was written without it",
							trigdata->tg_trigger->tgname,
							RelationGetRelationName(trigdata->tg_relation))));
		if (why)
			*why = pstrdup(edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

static void
check_attribution(void *arg)
{
	celloattr_validate_attribution((const AttributionRequest *) arg);
}

static bool
warns(ValueSource *invalid, TupleTableSlot *slot)
{
	return strcmp(source_text(invalid, slot), "warn") == 0;
}

Datum
cello_attribute_trigger(PG_FUNCTION_ARGS)
{
	TriggerConfig *cfg = get_config(fcinfo, &attribute_spec);
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	bool		update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	TupleTableSlot *slot = update ? trigdata->tg_newslot : trigdata->tg_trigslot;
	ValueSource *src = cfg->src;
	AttributionRequest req;
	char	   *ucc = source_text(&src[A_UCC], slot);
	char	   *text;

	if (ucc == NULL || ucc[0] == '\0')
		return PointerGetDatum(NULL);

	memset(&req, 0, sizeof(req));
	if (update)
	{
		char	   *old_ucc = source_text(&src[A_UCC], trigdata->tg_trigslot);

		if (same_text(old_ucc, ucc))
			return PointerGetDatum(NULL);

		/*
		 * A code replaced by another is a correction: the attribution the
		 * old code made must give way, and the record says why.  An empty
		 * old code never attributed anything.
		 */
		if (old_ucc != NULL && old_ucc[0] != '\0')
		{
			req.force = true;
			req.reason = psprintf("ucc changed from %s to %s by trigger %s on %s",
								  old_ucc, ucc, trigdata->tg_trigger->tgname,
								  RelationGetRelationName(trigdata->tg_relation));
		}
	}

	req.ucc = ucc;
	req.new_user_id = source_text(&src[A_USER], slot);
	req.gateway = source_text(&src[A_GATEWAY], slot);
	req.customer_id = source_text(&src[A_CUSTOMER], slot);
	req.email = source_text(&src[A_EMAIL], slot);
	req.name = source_text(&src[A_NAME], slot);
	req.organization_id = source_text(&src[A_ORG], slot);
	/* a boolean column reads as t or f, the constant as true or false */
	text = source_text(&src[A_SIGNUP_API], slot);
	req.signup_via_api_isnull = (text == NULL);
	req.signup_via_api = (text != NULL && text[0] == 't');
	req.signed_up_at_isnull = true;

	/* only now does the row need the extension's objects */
	celloattr_check_sql_version();
	if (check_row(check_attribution, &req, warns(&src[A_INVALID], slot), trigdata, NULL))
		(void) celloattr_attribute(&req);
	return PointerGetDatum(NULL);
}

/* What registering one row of an invoices table needs. */
typedef struct TransactionRow
{
	TransactionRequest req;
	ValueSource *src;
	TupleTableSlot *slot;
	int64		attribution_id;
} TransactionRow;

/*
 * The row's values as the request: converted from their text here, where
 * a bad value (a text column that holds no amount) is an error of the row.
 * A value counts as present only once converted, so that what reaches the
 * support report after a failed conversion is never a half-made value.
 */
static void
convert_transaction_row(TransactionRow *row)
{
	TransactionRequest *req = &row->req;
	ValueSource *src = row->src;
	char	   *text;

	req->amount_isnull = req->paid_at_isnull = req->seats_isnull = true;
	req->currency = source_text(&src[T_CURRENCY], row->slot);
	req->interval = source_text(&src[T_INTERVAL], row->slot);
	req->product_key = source_text(&src[T_PRODUCT], row->slot);
	req->subscription_id = source_text(&src[T_SUBSCRIPTION], row->slot);

	text = source_text(&src[T_AMOUNT], row->slot);
	if (text != NULL)
	{
		Datum		amount = from_text(numeric_in, text);

		if (src[T_DIVISOR].given)
		{
			/* 1999 cents / 100 is 19.99, not 19.9900000000000000 */
			amount = DirectFunctionCall2(numeric_div, amount,
										 from_text(numeric_in, src[T_DIVISOR].constval));
			amount = DirectFunctionCall1(numeric_trim_scale, amount);
		}
		req->amount = amount;
		req->amount_isnull = false;
	}
	text = source_text(&src[T_PAID_AT], row->slot);
	if (text != NULL)
	{
		req->paid_at = DatumGetTimestampTz(from_text(timestamptz_in, text));
		req->paid_at_isnull = false;
	}
	text = source_text(&src[T_SEATS], row->slot);
	if (text != NULL)
	{
		req->seats = DatumGetInt32(from_text(int4in, text));
		req->seats_isnull = false;
	}
}

static void
check_transaction_row(void *arg)
{
	TransactionRow *row = arg;

	convert_transaction_row(row);
	celloattr_validate_transaction(&row->req);
}

Datum
cello_transaction_trigger(PG_FUNCTION_ARGS)
{
	TriggerConfig *cfg = get_config(fcinfo, &transaction_spec);
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	bool		update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	TupleTableSlot *slot = update ? trigdata->tg_newslot : trigdata->tg_trigslot;
	TupleTableSlot *oldslot = trigdata->tg_trigslot;
	ValueSource *src = cfg->src;
	TransactionRow row;
	TransactionRequest *req = &row.req;
	char	   *why = NULL;

	memset(&row, 0, sizeof(row));
	row.src = src;
	row.slot = slot;
	req->amount_isnull = req->paid_at_isnull = req->seats_isnull = true;

	if (src[T_STATUS].given)
	{
		/* an event is a status that becomes paid or refunded */
		char	   *status = source_text(&src[T_STATUS], slot);

		if (update && same_text(status, source_text(&src[T_STATUS], oldslot)))
			return PointerGetDatum(NULL);
		if (same_text(status, source_text(&src[T_PAID_STATUS], slot)))
			req->trigger = "invoice-paid";
		else if (same_text(status, source_text(&src[T_REFUNDED_STATUS], slot)))
			req->trigger = "charge-refunded";
		else
			return PointerGetDatum(NULL);
	}
	else
	{
		/*
		 * Without a status every row is an event when inserted; an update is
		 * one only when it changes the kind of event (a refund flag, say).
		 */
		req->trigger = source_text(&src[T_TRIGGER], slot);
		if (update && same_text(req->trigger, source_text(&src[T_TRIGGER], oldslot)))
			return PointerGetDatum(NULL);
	}

	/*
	 * Only the invoices of a user with a Cello API attribution are
	 * celloattr's business: nothing else of the row is read before that is
	 * known, so no value of anybody else's row can fail the write.
	 */
	req->new_user_id = source_text(&src[T_USER], slot);
	if (req->new_user_id == NULL || req->new_user_id[0] == '\0')
		return PointerGetDatum(NULL);	/* a guest checkout */
	/* only the lookup below needs the extension's objects */
	celloattr_check_sql_version();
	row.attribution_id = celloattr_cello_attribution_of(req->new_user_id);
	if (row.attribution_id == 0)
		return PointerGetDatum(NULL);
	req->invoice_id = source_text(&src[T_INVOICE], slot);

	/*
	 * An attributed user's row that cannot be sent (invalid=warn) is not
	 * lost: it goes to the support report with what it has, and why.
	 */
	if (check_row(check_transaction_row, &row, warns(&src[T_INVALID], slot), trigdata, &why))
		(void) celloattr_register_transaction(row.attribution_id, req);
	else
		celloattr_report_invalid_transaction(row.attribution_id, req, why);
	return PointerGetDatum(NULL);
}
