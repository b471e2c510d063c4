# Makefile for celloattr (PGXS)

MODULE_big = celloattr
OBJS = \
	src/celloattr.o \
	src/guc.o \
	src/secrets.o \
	src/secrets_file.o \
	src/attribute.o \
	src/pending.o \
	src/subxact.o \
	src/statement.o \
	src/transaction.o \
	src/validate.o \
	src/operator.o \
	src/batch.o \
	src/stats.o \
	src/counts.o \
	src/plans.o \
	src/trigger_args.o \
	src/triggers.o \
	src/launcher.o \
	src/vacate.o \
	src/slots.o \
	src/dbsettings.o \
	src/worker.o \
	src/worker_life.o \
	src/pace.o \
	src/lease.o \
	src/queue.o \
	src/orphans.o \
	src/record.o \
	src/dbtext.o \
	src/outcomes.o \
	src/session.o \
	src/retention.o \
	src/http.o \
	src/job.o \
	src/eventindex.o \
	src/sweep.o \
	src/json.o \
	src/encode.o \
	src/stripe.o \
	src/stripe_payments.o \
	src/chargebee.o \
	src/chargebee_payments.o \
	src/cello.o \
	src/version.o

EXTENSION = celloattr
DATA = celloattr--1.0.sql celloattr--1.1.sql celloattr--1.0--1.1.sql
PGFILEDESC = "celloattr - repair Cello referral attribution"

# The regression, isolation and TAP suites need the library preloaded, the
# local API fakes running and the worker pointed at them: scripts/test sets
# all of that up (see README), so a plain "make installcheck" is not
# supported.  The TAP tests (t/*.pl) start their own nodes with the settings
# scripts/test writes to $CELLOATTR_TAP_CONF.
REGRESS = validation attribute batch transaction triggers support privileges stripe chargebee cello_api operations
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=./tmp_check_conf/celloattr.conf
ISOLATION = concurrent_attribute
ISOLATION_OPTS = --temp-instance=./tmp_check_iso --temp-config=./tmp_check_conf/celloattr_iso.conf
TAP_TESTS = 1

PG_CPPFLAGS = -Isrc $(shell pkg-config --cflags libcurl json-c)
SHLIB_LINK = $(shell pkg-config --libs libcurl json-c)
PG_CFLAGS = -Wextra -Wno-unused-parameter $(if $(WERROR),-Werror)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
