/*-------------------------------------------------------------------------
 *
 * attribute.c
 *	  cello_attribute(): validate and queue one repair (also called by the
 *	  attribute trigger).
 *
 * A repair is recorded as one attributions row plus the first steps (jobs)
 * of its path, in the caller's transaction: nothing leaves the database
 * before that transaction commits, and a rollback leaves nothing behind.
 * A user with no live attribution joins the statement's batch (pending.c);
 * the others take the careful path here, where the partial unique index
 * attributions_live_user and a row lock make a repeat return the same id,
 * a different ucc a dispute, and two sessions racing for one user end with
 * one row.
 *
 * Statements are prepared once per backend (plans.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "celloattr.h"

static SPIPlanPtr insert_attribution_plans[2];	/* [1]: with the batch */
static SPIPlanPtr find_live_plan = NULL;
static SPIPlanPtr next_id_plan = NULL;
static SPIPlanPtr supersede_plan = NULL;
static SPIPlanPtr cancel_jobs_plan = NULL;

/* The caller's role name: looked up once per role, not once per call. */
static const char *
requested_by(void)
{
	static Oid	cached_role = InvalidOid;
	static NameData cached_name;
	Oid			role = GetOuterUserId();

	if (role != cached_role)
	{
		namestrcpy(&cached_name, GetUserNameFromId(role, false));
		cached_role = role;
	}
	return NameStr(cached_name);
}

static void
add_step(QueuedAttribution *a, const char *kind, int16 stage, bool mutates)
{
	QueuedStep *step = &a->steps[a->nsteps++];

	step->kind = kind;
	step->stage = stage;
	if (a->req->dry_run && mutates)
		step->state = "planned";
	else
	{
		step->state = stage == 1 ? "queued" : "waiting";
		a->state = "queued";
		a->finished = false;
	}
}

/*
 * The first steps of a path.  Later steps (which events to resend) are
 * queued by the worker as it learns them.  In a dry run every reading step
 * runs and the mutating ones are only recorded as 'planned'; a dry run
 * with nothing to read is finished at once.
 */
static void
plan_attribution(const AttributionRequest *req, bool signup_via_api,
				 QueuedAttribution *a)
{
	int16		stage = 1;

	a->req = req;
	a->signup_via_api = signup_via_api;
	a->requested_by = requested_by();
	a->state = "planned";
	a->finished = true;
	a->nsteps = 0;
	if (signup_via_api)
	{
		add_step(a, "cello_signup", stage, true);
		if (!req->dry_run)
			stage++;
	}
	if (strcmp(req->gateway, "stripe") == 0)
		add_step(a, "stripe_customer", stage, false);
	else if (strcmp(req->gateway, "chargebee") == 0)
		add_step(a, "chargebee_customer", stage, false);
}

/*
 * The careful path's INSERT.  The first attribution of a statement names
 * its batch, as in pending.c; 1.0's attributions lack the batch ($21
 * unused).
 */
#define INSERT_SQL(batch_column, batch_value) \
	"WITH a AS (" \
	"  INSERT INTO celloattr.attributions" \
	"    (ucc, new_user_id, gateway, customer_id, email, name, organization_id," \
	"     signup_via_api, signed_up_at, reason, force, dry_run, requested_by," \
	"     id, supersedes, state, finished_at" batch_column ")" \
	"  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13," \
	"         n.id, $15, $19, CASE WHEN $20 THEN now() END" batch_value \
	"    FROM (SELECT coalesce($14, nextval('celloattr.attributions_id_seq'::regclass)) AS id) n" \
	"  ON CONFLICT (gateway, new_user_id, dry_run)" \
	"    WHERE superseded_by IS NULL AND state <> 'cancelled' DO NOTHING" \
	"  RETURNING id" \
	"), j AS (" \
	"  INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, idempotency_key)" \
	"  SELECT a.id, p.kind, p.stage, p.state," \
	"         'ca-' || i.install_id || '-' || a.id || '-' || p.kind" \
	"    FROM a CROSS JOIN celloattr.installation i" \
	"         CROSS JOIN unnest($16, $17, $18) AS p(kind, stage, state)" \
	"  RETURNING 1" \
	")" \
	"SELECT a.id, (SELECT count(*) FROM j) FROM a"

/*
 * Insert the attribution and its first steps in one statement; returns its
 * id, or 0 when a live one for the same user and gateway exists already
 * (then nothing is inserted).  forced_id/supersedes are 0 unless a forced
 * repair replaces another.
 */
static int64
try_insert_attribution(const QueuedAttribution *a, int64 forced_id,
					   int64 supersedes)
{
	const AttributionRequest *req = a->req;
	Oid			types[21] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, BOOLOID, TIMESTAMPTZOID, TEXTOID, BOOLOID, BOOLOID,
		TEXTOID, INT8OID, INT8OID, TEXTARRAYOID, INT2ARRAYOID, TEXTARRAYOID,
	TEXTOID, BOOLOID, INT8OID};
	static const Oid step_types[3] = {TEXTOID, INT2OID, TEXTOID};
	Datum		values[21];
	char		nulls[21];
	int64		batch = celloattr_statement_batch();
	int64		id;
	bool		with_batch;
	ArrayColumn steps[3];
	Oid			step_array_types[3];
	bool		isnull;

	celloattr_columns_init(steps, step_types, 3, a->nsteps);
	for (int i = 0; i < a->nsteps; i++)
	{
		celloattr_column_text(&steps[0], a->steps[i].kind);
		celloattr_column_add(&steps[1], Int16GetDatum(a->steps[i].stage), false);
		celloattr_column_text(&steps[2], a->steps[i].state);
	}

	memset(nulls, ' ', sizeof(nulls));
	with_batch = celloattr_attributions_have_batch();
	celloattr_prepare(&insert_attribution_plans[with_batch],
					  with_batch ? INSERT_SQL(", batch", ", coalesce($21, n.id)") :
					  INSERT_SQL("", ""),
					  21, types);

	values[0] = CStringGetTextDatum(req->ucc);
	values[1] = CStringGetTextDatum(req->new_user_id);
	values[2] = CStringGetTextDatum(req->gateway);
	values[3] = celloattr_text_datum(req->customer_id, &nulls[3]);
	values[4] = celloattr_text_datum(req->email, &nulls[4]);
	values[5] = celloattr_text_datum(req->name, &nulls[5]);
	values[6] = celloattr_text_datum(req->organization_id, &nulls[6]);
	values[7] = BoolGetDatum(a->signup_via_api);
	values[8] = TimestampTzGetDatum(req->signed_up_at);
	nulls[8] = req->signed_up_at_isnull ? 'n' : ' ';
	values[9] = celloattr_text_datum(req->reason, &nulls[9]);
	values[10] = BoolGetDatum(req->force);
	values[11] = BoolGetDatum(req->dry_run);
	values[12] = CStringGetTextDatum(a->requested_by);
	values[13] = Int64GetDatum(forced_id);
	nulls[13] = forced_id ? ' ' : 'n';
	values[14] = Int64GetDatum(supersedes);
	nulls[14] = supersedes ? ' ' : 'n';
	celloattr_column_params(steps, 3, step_array_types, &values[15]);
	values[18] = CStringGetTextDatum(a->state);
	values[19] = BoolGetDatum(a->finished);
	values[20] = Int64GetDatum(batch);
	nulls[20] = batch ? ' ' : 'n';

	if (celloattr_execute(insert_attribution_plans[with_batch], values, nulls, SPI_OK_SELECT) == 0)
		return 0;
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									2, &isnull)) != a->nsteps)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("celloattr.installation has no row"),
				 errhint("Re-create the extension: DROP EXTENSION celloattr; CREATE EXTENSION celloattr.")));
	id = celloattr_first_int8();
	(void) celloattr_join_batch(id);
	return id;
}

/*
 * Replace a live attribution of the same user with this forced one: the old
 * one is marked superseded and its unfinished steps cancelled, in this
 * transaction, under the row lock taken by the caller.
 */
static int64
supersede(int64 old_id, const QueuedAttribution *a)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2];
	int64		new_id;

	celloattr_prepare(&next_id_plan,
			"SELECT nextval('celloattr.attributions_id_seq'::regclass)", 0, NULL);
	celloattr_execute(next_id_plan, NULL, NULL, SPI_OK_SELECT);
	new_id = celloattr_first_int8();

	celloattr_prepare(&supersede_plan,
			"UPDATE celloattr.attributions "
			"   SET superseded_by = $2, "
			"       state = CASE WHEN state IN ('queued', 'running') THEN 'cancelled' ELSE state END, "
			"       finished_at = coalesce(finished_at, now()) "
			" WHERE id = $1",
			2, types);
	values[0] = Int64GetDatum(old_id);
	values[1] = Int64GetDatum(new_id);
	celloattr_execute(supersede_plan, values, NULL, SPI_OK_UPDATE);

	celloattr_prepare(&cancel_jobs_plan,
			"UPDATE celloattr.jobs SET state = 'cancelled', finished_at = now(), lease_until = NULL "
			" WHERE attribution_id = $1 AND state IN ('waiting', 'queued', 'running')",
			1, types);
	celloattr_execute(cancel_jobs_plan, values, NULL, SPI_OK_UPDATE);

	if (try_insert_attribution(a, new_id, old_id) != new_id)
		elog(ERROR, "celloattr: could not insert attribution %lld superseding %lld",
			 (long long) new_id, (long long) old_id);
	return new_id;
}

int64
celloattr_attribute(const AttributionRequest *req)
{
	bool		signup_via_api;
	QueuedAttribution planned;
	bool		was_holding;
	int64		id = 0;

	celloattr_validate_attribution(req);

	signup_via_api = req->signup_via_api_isnull
		? strcmp(req->gateway, "cello_api") == 0
		: req->signup_via_api;
	if (strcmp(req->gateway, "cello_api") == 0 && !signup_via_api)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the cello_api gateway needs signup_via_api"),
				 errdetail("On the Cello API path the signup itself is sent through Cello's API."),
				 errhint("Leave signup_via_api NULL or pass true.")));

	plan_attribution(req, signup_via_api, &planned);
	if (celloattr_pending_usable())
	{
		id = celloattr_pending_queue(&planned);
		if (id != 0)
			return id;
	}

	was_holding = celloattr_pending_hold(true);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");

	/*
	 * Insert, or meet the live row of the same user.  The row we meet may
	 * be cancelled or superseded between our two statements; then try
	 * again, a few times.
	 */
	for (int tries = 0; tries < 3 && id == 0; tries++)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, BOOLOID};
		Datum		values[3];
		int64		existing_id;
		char	   *existing_ucc;

		id = try_insert_attribution(&planned, 0, 0);
		if (id != 0)
			break;

		celloattr_prepare(&find_live_plan,
				"SELECT id, ucc FROM celloattr.attributions "
				" WHERE gateway = $1 AND new_user_id = $2 AND dry_run = $3 "
				"   AND superseded_by IS NULL AND state <> 'cancelled' "
				"   FOR UPDATE",
				3, types);
		values[0] = CStringGetTextDatum(req->gateway);
		values[1] = CStringGetTextDatum(req->new_user_id);
		values[2] = BoolGetDatum(req->dry_run);
		if (celloattr_execute(find_live_plan, values, NULL, SPI_OK_SELECT) == 0)
			continue;
		existing_id = celloattr_first_int8();
		existing_ucc = SPI_getvalue(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 2);

		if (strcmp(existing_ucc, req->ucc) == 0)
			id = existing_id;	/* a repeat: same id, nothing new queued */
		else if (!req->force)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("user \"%s\" is already attributed to ucc \"%s\" on %s by attribution %lld",
							celloattr_shown(req->new_user_id), existing_ucc,
							req->gateway, (long long) existing_id),
					 errdetail("This call asked for ucc \"%s\": a disputed referral.",
							   req->ucc),
					 errhint("To replace attribution %lld, call again with force => true and a reason.",
							 (long long) existing_id)));
		else if (req->reason == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a forced attribution that replaces attribution %lld needs a reason",
							(long long) existing_id),
					 errhint("Pass reason => '...' so the audit trail says why the referral changed.")));
		else
			id = supersede(existing_id, &planned);
	}
	if (id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not queue the attribution of user \"%s\": it kept changing concurrently",
						celloattr_shown(req->new_user_id)),
				 errhint("Run the call again.")));

	SPI_finish();
	celloattr_pending_hold(was_holding);
	return id;
}

/* ------------------------------------------------------- SQL functions */

PG_FUNCTION_INFO_V1(cello_attribute);
Datum
cello_attribute(PG_FUNCTION_ARGS)
{
	AttributionRequest req;

	celloattr_check_sql_version();
	req.ucc = celloattr_text_arg(fcinfo, 0);
	req.new_user_id = celloattr_text_arg(fcinfo, 1);
	req.gateway = celloattr_text_arg(fcinfo, 2);
	req.customer_id = celloattr_text_arg(fcinfo, 3);
	req.email = celloattr_text_arg(fcinfo, 4);
	req.name = celloattr_text_arg(fcinfo, 5);
	req.organization_id = celloattr_text_arg(fcinfo, 6);
	req.signup_via_api_isnull = PG_ARGISNULL(7);
	req.signup_via_api = req.signup_via_api_isnull ? false : PG_GETARG_BOOL(7);
	req.signed_up_at_isnull = PG_ARGISNULL(8);
	req.signed_up_at = req.signed_up_at_isnull ? 0 : PG_GETARG_TIMESTAMPTZ(8);
	req.reason = celloattr_text_arg(fcinfo, 9);
	req.force = PG_ARGISNULL(10) ? false : PG_GETARG_BOOL(10);
	req.dry_run = PG_ARGISNULL(11) ? false : PG_GETARG_BOOL(11);

	PG_RETURN_INT64(celloattr_attribute(&req));
}
