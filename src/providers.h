/*-------------------------------------------------------------------------
 *
 * providers.h
 *	  The steps each provider module implements, and the encoders they
 *	  share (encode.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_PROVIDERS_H
#define CELLOATTR_PROVIDERS_H

#include "lib/stringinfo.h"

#include "job.h"

/* stripe.c */
extern const StepOps stripe_customer_step;
extern const StepOps stripe_payments_step;
extern const StepOps stripe_resend_step;

/* encode.c: application/x-www-form-urlencoded and URL path/query parts */
extern void form_append(StringInfo buf, const char *name, const char *value);
extern void url_append_escaped(StringInfo buf, const char *value);
extern char *url_escape(const char *value);

/* A base URL without its trailing slashes. */
extern char *base_url(const char *setting);

#endif							/* CELLOATTR_PROVIDERS_H */
