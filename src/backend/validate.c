/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Strict checks of what callers pass, before anything is queued.
 *
 * A bad value must fail at the SQL call, in the caller's transaction, with
 * a message that names it: not hours later in the worker, and never as a
 * wrong code written into a payment gateway.  The limits are the providers'
 * own (their API references): Stripe metadata values hold 500 characters,
 * e-mails 512 and names 256; Chargebee customer ids 50 and single-line
 * custom fields 99; a Cello ucc is 11 letters and digits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "celloattr.h"

#define UCC_LENGTH				11
#define MAX_USER_ID				500
#define MAX_USER_ID_CUSTOM_FIELD 99
#define MAX_STRIPE_CUSTOMER_ID	255
#define MAX_CHARGEBEE_CUSTOMER_ID 50
#define MAX_EMAIL				512
#define MAX_NAME				256
#define MAX_REASON				1000
#define MAX_INVOICE_ID			255
#define MAX_PRODUCT_KEY			255
#define MAX_SUBSCRIPTION_ID		255
/* characters of a value quoted in a message */
#define SHOWN_CHARS				60
/* clocks differ; a timestamp this far ahead is a mistake, not skew */
#define FUTURE_TOLERANCE_USECS	(USECS_PER_HOUR)

static const char *const intervals[] = {
	"one-time", "weekly", "bi-weekly", "monthly", "quarterly", "semi-annual",
	"yearly", "biennial", "triennial", "lifetime", NULL
};

/*
 * The value as it may be shown in a message: short, control bytes escaped,
 * cut between characters (half a character would make the message itself
 * invalid text).
 */
/*
 * The encoding text of the database is read in.  An SQL_ASCII database
 * stores whatever bytes it is given, and what it is given for providers is
 * UTF-8 (their APIs speak nothing else): read as that, so that characters
 * are counted and cut as the provider will.
 */
static int
text_encoding(void)
{
	int			encoding = GetDatabaseEncoding();

	return encoding == PG_SQL_ASCII ? PG_UTF8 : encoding;
}

char *
celloattr_shown(const char *value)
{
	StringInfoData buf;
	int			encoding = text_encoding();
	int			remaining = strlen(value);
	int			n = 0;

	initStringInfo(&buf);
	for (const char *p = value; *p;)
	{
		unsigned char c = (unsigned char) *p;
		/* a malformed character (possible in SQL_ASCII) shows as its bytes */
		int			len = pg_encoding_verifymbchar(encoding, p, remaining);

		if (++n > SHOWN_CHARS)
		{
			appendStringInfoString(&buf, "...");
			break;
		}
		if (len < 1 || c < 0x20 || c == 0x7f)
		{
			appendStringInfo(&buf, "\\x%02X", c);
			len = 1;
		}
		else
			appendBinaryStringInfo(&buf, p, len);
		p += len;
		remaining -= len;
	}
	return buf.data;
}

static bool
in_list(const char *value, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(value, *list) == 0)
			return true;
	return false;
}

/*
 * A text argument: NULL and empty are errors when required; length and
 * control characters are checked always.  Newlines are allowed only where
 * prose is expected (allow_newlines).
 */
static void
check_text(const char *what, const char *value, bool required, int max_chars,
		   bool allow_newlines)
{
	int			encoding = text_encoding();
	int			chars = 0;

	if (value == NULL)
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", what),
					 errhint("Pass a value for %s; it is required.", what)));
		return;
	}
	if (value[0] == '\0')
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not be empty", what),
					 errhint("Pass a value for %s; it is required.", what)));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what),
				 errhint("Pass NULL to leave it out.")));
	}

	/* every byte: in an SQL_ASCII database a malformed character could
	 * otherwise hide a control byte from a scan that steps by characters */
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
		if ((*p < 0x20 || *p == 0x7f) &&
			!(allow_newlines && (*p == '\n' || *p == '\r' || *p == '\t')))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s \"%s\" contains a control character", what,
							celloattr_shown(value)),
					 errdetail("Byte 0x%02X at position %d.", *p,
							   (int) (p - (const unsigned char *) value) + 1),
					 errhint("Remove control characters; providers reject them or store them unreadably.")));
	/* characters, not bytes, count against the providers' limits */
	for (const char *p = value; *p; p += pg_encoding_mblen_bounded(encoding, p))
		chars++;
	if (chars > max_chars)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s \"%s\" is too long", what, celloattr_shown(value)),
				 errdetail("It has %d characters; at most %d fit.", chars, max_chars),
				 errhint("Check that the right column or value was passed.")));
}

static void
check_not_future(const char *what, TimestampTz ts)
{
	if (ts > GetCurrentTransactionStartTimestamp() + FUTURE_TOLERANCE_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is in the future", what),
				 errdetail("Times more than an hour ahead of the server's clock are refused."),
				 errhint("Pass the time at which it happened.")));
}

void
celloattr_validate_attribution(const AttributionRequest *req)
{
	bool		chargebee;
	int			user_id_max;

	check_text("ucc", req->ucc, true, UCC_LENGTH, false);
	if (strlen(req->ucc) != UCC_LENGTH ||
		strspn(req->ucc, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") != UCC_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid ucc \"%s\"", celloattr_shown(req->ucc)),
				 errdetail("A Cello ucc is exactly 11 letters and digits."),
				 errhint("Copy the referrer's code from the Cello portal, e.g. the end of the referral link.")));

	check_text("gateway", req->gateway, true, 32, false);
	if (strcmp(req->gateway, "stripe") != 0 &&
		strcmp(req->gateway, "chargebee") != 0 &&
		strcmp(req->gateway, "cello_api") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown gateway \"%s\"", celloattr_shown(req->gateway)),
				 errhint("Use 'stripe', 'chargebee' or 'cello_api'.")));
	chargebee = strcmp(req->gateway, "chargebee") == 0;

	user_id_max = (chargebee && celloattr_chargebee_custom_fields)
		? MAX_USER_ID_CUSTOM_FIELD : MAX_USER_ID;
	check_text("new_user_id", req->new_user_id, true, user_id_max, false);
	check_text("customer_id", req->customer_id, false,
			   chargebee ? MAX_CHARGEBEE_CUSTOMER_ID : MAX_STRIPE_CUSTOMER_ID,
			   false);
	check_text("email", req->email, false, MAX_EMAIL, false);
	if (req->email != NULL)
	{
		const char *at = strchr(req->email, '@');

		if (at == NULL || at == req->email || at[1] == '\0' ||
			strchr(at + 1, '@') != NULL || strpbrk(req->email, " ,;<>") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid email \"%s\"", celloattr_shown(req->email)),
					 errhint("Pass one plain address such as jane@example.com.")));
	}
	check_text("name", req->name, false, MAX_NAME, false);
	check_text("organization_id", req->organization_id, false, user_id_max, false);
	check_text("reason", req->reason, false, MAX_REASON, true);
	if (!req->signed_up_at_isnull)
		check_not_future("signed_up_at", req->signed_up_at);
}

/*
 * Cello takes the amount as a JSON number: NaN and infinity have no JSON
 * spelling, and past 10^15 of a major unit no invoice is real and a
 * double (as Cello's side may read it) no longer keeps the cents.
 */
static void
check_amount(Numeric amount)
{
	Numeric		limit = int64_to_numeric(INT64CONST(1000000000000000));

	if (numeric_is_nan(amount) || numeric_is_inf(amount))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be a finite number"),
				 errhint("Pass the amount of the invoice or refund in the currency's major unit.")));
	if (DatumGetBool(DirectFunctionCall2(numeric_ge,
										 DirectFunctionCall1(numeric_abs, NumericGetDatum(amount)),
										 NumericGetDatum(limit))))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("amount is out of range"),
				 errdetail("An amount must be less than 10^15 in the currency's major unit."),
				 errhint("Pass the amount in the currency's major unit, such as 49.00 for 49 euros.")));
}

void
celloattr_validate_transaction(const TransactionRequest *req)
{
	check_text("new_user_id", req->new_user_id, true, MAX_USER_ID, false);
	check_text("invoice_id", req->invoice_id, true, MAX_INVOICE_ID, false);

	if (req->amount_isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("amount must not be NULL"),
				 errhint("Pass the amount of the invoice or refund in the currency's major unit.")));
	check_amount(DatumGetNumeric(req->amount));

	check_text("currency", req->currency, true, 3, false);
	if (strlen(req->currency) != 3 ||
		strspn(req->currency, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") != 3)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid currency \"%s\"", celloattr_shown(req->currency)),
				 errhint("Pass a three-letter ISO 4217 code such as 'EUR'.")));

	if (req->paid_at_isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("paid_at must not be NULL"),
				 errhint("Pass the time the invoice was paid or the charge refunded.")));
	check_not_future("paid_at", req->paid_at);

	check_text("interval", req->interval, true, 32, false);
	if (!in_list(req->interval, intervals))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid interval \"%s\"", celloattr_shown(req->interval)),
				 errhint("Use one of Cello's intervals: one-time, weekly, bi-weekly, monthly, quarterly, semi-annual, yearly, biennial, triennial, lifetime.")));

	check_text("trigger", req->trigger, true, 32, false);
	if (strcmp(req->trigger, "invoice-paid") != 0 &&
		strcmp(req->trigger, "charge-refunded") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid trigger \"%s\"", celloattr_shown(req->trigger)),
				 errhint("Use 'invoice-paid' or 'charge-refunded'.")));

	if (req->product_key == NULL && strcmp(req->trigger, "invoice-paid") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("product_key must not be NULL for an invoice-paid transaction"),
				 errhint("Cello requires the name of the product or plan bought.")));
	check_text("product_key", req->product_key, false, MAX_PRODUCT_KEY, false);
	check_text("subscription_id", req->subscription_id, false,
			   MAX_SUBSCRIPTION_ID, false);

	if (!req->seats_isnull && req->seats < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seats must not be negative"),
				 errhint("Pass the number of seats used, or NULL.")));
}
