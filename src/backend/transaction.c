/*-------------------------------------------------------------------------
 *
 * transaction.c
 *	  cello_transaction(): register a transaction of a user attributed on
 *	  the Cello API path, to be sent as a Cello event (also called by the
 *	  invoices trigger).
 *
 * The transaction becomes a cello_transaction step after the signup step;
 * one already older than celloattr.transaction_window goes straight to the
 * support report.  The attribution's row lock, taken first, orders this
 * against the worker promoting or settling the same attribution.  Nothing
 * is validated before the user is known to have such an attribution: the
 * invoices of everyone else are none of celloattr's business, and must
 * never fail because of it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "celloattr.h"

static SPIPlanPtr insert_job_plan = NULL;
static SPIPlanPtr find_cello_attribution_plan = NULL;
static SPIPlanPtr insert_transaction_plan = NULL;
static SPIPlanPtr find_transaction_plan = NULL;
static SPIPlanPtr transaction_support_plan = NULL;
static SPIPlanPtr signup_done_plan = NULL;
static SPIPlanPtr transaction_payload_plan = NULL;
static SPIPlanPtr link_transaction_plan = NULL;
static SPIPlanPtr reopen_attribution_plan = NULL;
static SPIPlanPtr invalid_support_plan = NULL;

/* Insert one job row; its idempotency key is fixed here, once. */
static int64
insert_job(int64 attribution_id, const char *kind, int16 stage,
		   const char *state, const char *payload, const char *key_suffix)
{
	Oid			types[6] = {INT8OID, TEXTOID, INT2OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[6];
	char		nulls[6] = "      ";

	celloattr_prepare(&insert_job_plan,
			"INSERT INTO celloattr.jobs "
			"  (attribution_id, kind, stage, state, payload, idempotency_key) "
			"SELECT $1, $2, $3, $4, $5::jsonb, "
			"       'ca-' || i.install_id || '-' || $1 || '-' || $2 || coalesce('-' || $6, '') "
			"  FROM celloattr.installation i "
			"RETURNING id",
			6, types);
	values[0] = Int64GetDatum(attribution_id);
	values[1] = CStringGetTextDatum(kind);
	values[2] = Int16GetDatum(stage);
	values[3] = CStringGetTextDatum(state);
	values[4] = CStringGetTextDatum(payload);
	values[5] = celloattr_text_datum(key_suffix, &nulls[5]);
	if (celloattr_execute(insert_job_plan, values, nulls, SPI_OK_INSERT_RETURNING) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("celloattr.installation has no row"),
				 errhint("Re-create the extension: DROP EXTENSION celloattr; CREATE EXTENSION celloattr.")));
	return celloattr_first_int8();
}

/* A finished repair that gets a new transaction is not finished any more. */
static void
reopen_attribution(int64 attribution_id, const char *state)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];

	celloattr_prepare(&reopen_attribution_plan,
			"UPDATE celloattr.attributions "
			"   SET state = $2, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE finished_at END "
			" WHERE id = $1 AND state IN ('done', 'needs_support')",
			2, types);
	values[0] = Int64GetDatum(attribution_id);
	values[1] = CStringGetTextDatum(state);
	celloattr_execute(reopen_attribution_plan, values, NULL, SPI_OK_UPDATE);
}

/*
 * The transaction goes to the support report instead of the API: it is
 * older than the window Cello imports for manual attributions.
 */
static void
report_old_transaction(int64 transaction_id, int64 attribution_id)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];

	celloattr_prepare(&transaction_support_plan,
			"INSERT INTO celloattr.support_items "
			"  (attribution_id, transaction_id, trigger, event_timestamp, price, currency, "
			"   subscription_id, invoice_id, interval, seats, product_key, reason) "
			"SELECT attribution_id, id, trigger, paid_at, amount, currency, "
			"       subscription_id, invoice_id, interval, seats, product_key, $2 "
			"  FROM celloattr.transactions WHERE id = $1 "
			"ON CONFLICT DO NOTHING",
			2, types);
	values[0] = Int64GetDatum(transaction_id);
	values[1] = CStringGetTextDatum(psprintf("older than celloattr.transaction_window (%d days): Cello imports only recent transactions of a manual attribution",
											 celloattr_transaction_window / SECS_PER_DAY));
	celloattr_execute(transaction_support_plan, values, NULL, SPI_OK_INSERT);

	/* a finished repair now has something for support */
	reopen_attribution(attribution_id, "needs_support");
}

/* Queue the step that sends the transaction, after the signup step. */
static void
queue_transaction(int64 transaction_id, int64 attribution_id)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	bool		signup_done;
	int64		job_id;

	celloattr_prepare(&signup_done_plan,
			"SELECT coalesce(bool_and(state IN ('done', 'support')), true) FROM celloattr.jobs "
			" WHERE attribution_id = $1 AND stage < 2",
			1, types);
	values[0] = Int64GetDatum(attribution_id);
	celloattr_execute(signup_done_plan, values, NULL, SPI_OK_SELECT);
	signup_done = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));

	/*
	 * The step gets the event's fields in its payload (the worker's steps
	 * read no tables).  A refund registered without a product key takes
	 * that of the same invoice's payment: Cello requires one.
	 */
	celloattr_prepare(&transaction_payload_plan,
			"SELECT jsonb_build_object('transaction_id', t.id, 'invoice_id', t.invoice_id, "
			"         'trigger', t.trigger, 'amount', t.amount, 'currency', t.currency, "
			"         'paid_at', to_char(t.paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
			"         'paid_at_epoch', floor(extract(epoch FROM t.paid_at))::bigint, "
			"         'interval', t.interval, "
			"         'product_key', coalesce(t.product_key, "
			"             (SELECT p.product_key FROM celloattr.transactions p "
			"               WHERE p.attribution_id = t.attribution_id AND p.invoice_id = t.invoice_id "
			"                 AND p.product_key IS NOT NULL ORDER BY p.id LIMIT 1)), "
			"         'subscription_id', t.subscription_id, 'seats', t.seats)::text "
			"  FROM celloattr.transactions t WHERE t.id = $1",
			1, types);
	values[0] = Int64GetDatum(transaction_id);
	celloattr_execute(transaction_payload_plan, values, NULL, SPI_OK_SELECT);
	job_id = insert_job(attribution_id, "cello_transaction", 2,
						signup_done ? "queued" : "waiting",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
						psprintf("%lld", (long long) transaction_id));

	celloattr_prepare(&link_transaction_plan,
			"UPDATE celloattr.transactions SET job_id = $2 WHERE id = $1",
			2, (Oid[]) {INT8OID, INT8OID});
	values[0] = Int64GetDatum(transaction_id);
	values[1] = Int64GetDatum(job_id);
	celloattr_execute(link_transaction_plan, values, NULL, SPI_OK_UPDATE);

	/* a finished repair has work again */
	reopen_attribution(attribution_id, "queued");
}

int64
celloattr_cello_attribution_of(const char *new_user_id)
{
	Oid			type = TEXTOID;
	Datum		value;
	int64		attribution_id = 0;

	/* a payment of nobody (a guest checkout) has nothing to attribute */
	if (new_user_id == NULL || new_user_id[0] == '\0')
		return 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	celloattr_prepare(&find_cello_attribution_plan,
			"SELECT id FROM celloattr.attributions "
			" WHERE gateway = 'cello_api' AND new_user_id = $1 AND NOT dry_run "
			"   AND superseded_by IS NULL AND state <> 'cancelled' "
			"   FOR UPDATE",
			1, &type);
	value = CStringGetTextDatum(new_user_id);
	if (celloattr_execute(find_cello_attribution_plan, &value, NULL, SPI_OK_SELECT) > 0)
		attribution_id = celloattr_first_int8();
	SPI_finish();
	return attribution_id;
}

int64
celloattr_register_transaction(int64 attribution_id, const TransactionRequest *req)
{
	Oid			types[12] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, NUMERICOID,
		TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID};
	Datum		values[12];
	char		nulls[12];
	int64		id;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");

	memset(nulls, ' ', sizeof(nulls));
	celloattr_prepare(&insert_transaction_plan,
			"INSERT INTO celloattr.transactions "
			"  (attribution_id, new_user_id, invoice_id, trigger, amount, currency, "
			"   paid_at, interval, product_key, subscription_id, seats) "
			"VALUES ($1, $2, $3, $4, $5, upper($6), $7, $8, $9, $10, $11) "
			"ON CONFLICT (attribution_id, invoice_id, trigger) DO NOTHING "
			"RETURNING id, paid_at < now() - make_interval(secs => $12)",
			12, types);
	values[0] = Int64GetDatum(attribution_id);
	values[1] = CStringGetTextDatum(req->new_user_id);
	values[2] = CStringGetTextDatum(req->invoice_id);
	values[3] = CStringGetTextDatum(req->trigger);
	values[4] = req->amount;
	values[5] = CStringGetTextDatum(req->currency);
	values[6] = TimestampTzGetDatum(req->paid_at);
	values[7] = CStringGetTextDatum(req->interval);
	values[8] = celloattr_text_datum(req->product_key, &nulls[8]);
	values[9] = celloattr_text_datum(req->subscription_id, &nulls[9]);
	values[10] = Int32GetDatum(req->seats);
	nulls[10] = req->seats_isnull ? 'n' : ' ';
	values[11] = Int32GetDatum(celloattr_transaction_window);

	if (celloattr_execute(insert_transaction_plan, values, nulls, SPI_OK_INSERT_RETURNING) == 1)
	{
		bool		too_old;

		id = celloattr_first_int8();
		too_old = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull));
		if (too_old)
			report_old_transaction(id, attribution_id);
		else
			queue_transaction(id, attribution_id);
	}
	else
	{
		/* the same invoice again: its id, nothing new queued */
		celloattr_prepare(&find_transaction_plan,
				"SELECT id FROM celloattr.transactions "
				" WHERE attribution_id = $1 AND invoice_id = $2 AND trigger = $3",
				3, (Oid[]) {INT8OID, TEXTOID, TEXTOID});
		values[1] = values[2];
		values[2] = values[3];
		if (celloattr_execute(find_transaction_plan, values, NULL, SPI_OK_SELECT) != 1)
			elog(ERROR, "celloattr: registered transaction vanished");
		id = celloattr_first_int8();
	}

	SPI_finish();
	return id;
}

void
celloattr_report_invalid_transaction(int64 attribution_id,
									 const TransactionRequest *req,
									 const char *why)
{
	Oid			types[11] = {INT8OID, TEXTOID, TIMESTAMPTZOID, NUMERICOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[11];
	char		nulls[11];

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	memset(nulls, ' ', sizeof(nulls));
	celloattr_prepare(&invalid_support_plan,
			"INSERT INTO celloattr.support_items "
			"  (attribution_id, trigger, event_timestamp, price, currency, "
			"   subscription_id, invoice_id, interval, seats, product_key, reason) "
			"VALUES ($1, $2, $3, $4, upper($5), $6, $7, $8, $9, $10, $11) "
			"ON CONFLICT DO NOTHING",
			11, types);
	values[0] = Int64GetDatum(attribution_id);
	values[1] = CStringGetTextDatum(req->trigger);
	values[2] = TimestampTzGetDatum(req->paid_at);
	nulls[2] = req->paid_at_isnull ? 'n' : ' ';
	values[3] = req->amount;
	nulls[3] = req->amount_isnull ? 'n' : ' ';
	values[4] = celloattr_text_datum(req->currency, &nulls[4]);
	values[5] = celloattr_text_datum(req->subscription_id, &nulls[5]);
	values[6] = celloattr_text_datum(req->invoice_id, &nulls[6]);
	values[7] = celloattr_text_datum(req->interval, &nulls[7]);
	values[8] = Int32GetDatum(req->seats);
	nulls[8] = req->seats_isnull ? 'n' : ' ';
	values[9] = celloattr_text_datum(req->product_key, &nulls[9]);
	values[10] = CStringGetTextDatum(psprintf("not sent to Cello, the row was invalid: %s", why));
	celloattr_execute(invalid_support_plan, values, nulls, SPI_OK_INSERT);

	/* the repair now has something for support */
	reopen_attribution(attribution_id, "needs_support");
	SPI_finish();
}

/* -------------------------------------------------------- SQL function */

PG_FUNCTION_INFO_V1(cello_transaction);
Datum
cello_transaction(PG_FUNCTION_ARGS)
{
	TransactionRequest req;
	int64		attribution_id;

	celloattr_check_sql_version();
	req.new_user_id = celloattr_text_arg(fcinfo, 0);
	req.invoice_id = celloattr_text_arg(fcinfo, 1);
	req.amount_isnull = PG_ARGISNULL(2);
	req.amount = req.amount_isnull ? (Datum) 0 : PG_GETARG_DATUM(2);
	req.currency = celloattr_text_arg(fcinfo, 3);
	req.paid_at_isnull = PG_ARGISNULL(4);
	req.paid_at = req.paid_at_isnull ? 0 : PG_GETARG_TIMESTAMPTZ(4);
	req.interval = celloattr_text_arg(fcinfo, 5);
	req.product_key = celloattr_text_arg(fcinfo, 6);
	req.subscription_id = celloattr_text_arg(fcinfo, 7);
	req.seats_isnull = PG_ARGISNULL(8);
	req.seats = req.seats_isnull ? 0 : PG_GETARG_INT32(8);
	req.trigger = celloattr_text_arg(fcinfo, 9);

	/*
	 * Only a user with a Cello API attribution has transactions to send:
	 * for anyone else the call is a no-op, whatever the other arguments
	 * hold, so that an invoices trigger may call it for every row.
	 */
	attribution_id = celloattr_cello_attribution_of(req.new_user_id);
	if (attribution_id == 0)
		PG_RETURN_NULL();
	celloattr_validate_transaction(&req);
	PG_RETURN_INT64(celloattr_register_transaction(attribution_id, &req));
}
