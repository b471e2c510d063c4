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
 * (or, for a few keys, a constant): trigger_args.c parses them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "trigger_args.h"

PG_FUNCTION_INFO_V1(cello_attribute_trigger);
PG_FUNCTION_INFO_V1(cello_transaction_trigger);

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

/* The status alone decides the event when it is given. */
static void
check_transaction_config(const TriggerConfig *cfg, Trigger *trigger)
{
	if (cfg->src[T_STATUS].given ? cfg->src[T_TRIGGER].given :
		cfg->src[T_PAID_STATUS].given || cfg->src[T_REFUNDED_STATUS].given)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" takes either status=... (with paid_status and refunded_status) or trigger=...",
						trigger->tgname)));
}

static const TriggerSpec attribute_spec = {
	"celloattr.attribute_trigger()", attribute_keys, A_NKEYS, NULL
};
static const TriggerSpec transaction_spec = {
	"celloattr.transaction_trigger()", transaction_keys, T_NKEYS,
	check_transaction_config
};

/* A value of a type, from its text. */
static Datum
from_text(PGFunction input, const char *text)
{
	return DirectFunctionCall3(input, CStringGetDatum(text),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
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
	return strcmp(trigger_value_text(invalid, slot), "warn") == 0;
}

Datum
cello_attribute_trigger(PG_FUNCTION_ARGS)
{
	TriggerConfig *cfg = trigger_config(fcinfo, &attribute_spec);
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	bool		update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	TupleTableSlot *slot = update ? trigdata->tg_newslot : trigdata->tg_trigslot;
	ValueSource *src = cfg->src;
	AttributionRequest req;
	char	   *ucc = trigger_value_text(&src[A_UCC], slot);
	char	   *text;

	if (ucc == NULL || ucc[0] == '\0')
		return PointerGetDatum(NULL);

	memset(&req, 0, sizeof(req));
	if (update)
	{
		char	   *old_ucc = trigger_value_text(&src[A_UCC], trigdata->tg_trigslot);

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
	req.new_user_id = trigger_value_text(&src[A_USER], slot);
	req.gateway = trigger_value_text(&src[A_GATEWAY], slot);
	req.customer_id = trigger_value_text(&src[A_CUSTOMER], slot);
	req.email = trigger_value_text(&src[A_EMAIL], slot);
	req.name = trigger_value_text(&src[A_NAME], slot);
	req.organization_id = trigger_value_text(&src[A_ORG], slot);
	/* a boolean column reads as t or f, the constant as true or false */
	text = trigger_value_text(&src[A_SIGNUP_API], slot);
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
	req->currency = trigger_value_text(&src[T_CURRENCY], row->slot);
	req->interval = trigger_value_text(&src[T_INTERVAL], row->slot);
	req->product_key = trigger_value_text(&src[T_PRODUCT], row->slot);
	req->subscription_id = trigger_value_text(&src[T_SUBSCRIPTION], row->slot);

	text = trigger_value_text(&src[T_AMOUNT], row->slot);
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
	text = trigger_value_text(&src[T_PAID_AT], row->slot);
	if (text != NULL)
	{
		req->paid_at = DatumGetTimestampTz(from_text(timestamptz_in, text));
		req->paid_at_isnull = false;
	}
	text = trigger_value_text(&src[T_SEATS], row->slot);
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
	TriggerConfig *cfg = trigger_config(fcinfo, &transaction_spec);
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
		char	   *status = trigger_value_text(&src[T_STATUS], slot);

		if (update && same_text(status, trigger_value_text(&src[T_STATUS], oldslot)))
			return PointerGetDatum(NULL);
		if (same_text(status, trigger_value_text(&src[T_PAID_STATUS], slot)))
			req->trigger = "invoice-paid";
		else if (same_text(status, trigger_value_text(&src[T_REFUNDED_STATUS], slot)))
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
		req->trigger = trigger_value_text(&src[T_TRIGGER], slot);
		if (update && same_text(req->trigger, trigger_value_text(&src[T_TRIGGER], oldslot)))
			return PointerGetDatum(NULL);
	}

	/*
	 * Only the invoices of a user with a Cello API attribution are
	 * celloattr's business: nothing else of the row is read before that is
	 * known, so no value of anybody else's row can fail the write.
	 */
	req->new_user_id = trigger_value_text(&src[T_USER], slot);
	if (req->new_user_id == NULL || req->new_user_id[0] == '\0')
		return PointerGetDatum(NULL);	/* a guest checkout */
	/* only the lookup below needs the extension's objects */
	celloattr_check_sql_version();
	row.attribution_id = celloattr_cello_attribution_of(req->new_user_id);
	if (row.attribution_id == 0)
		return PointerGetDatum(NULL);
	req->invoice_id = trigger_value_text(&src[T_INVOICE], slot);

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
