# Makefile for celloattr (PGXS)

MODULE_big = celloattr
OBJS = \
	src/common/celloattr.o \
	src/common/guc.o \
	src/common/secrets.o \
	src/common/secrets_file.o \
	src/backend/attribute.o \
	src/backend/pending.o \
	src/backend/subxact.o \
	src/backend/statement.o \
	src/backend/transaction.o \
	src/backend/validate.o \
	src/backend/operator.o \
	src/backend/batch.o \
	src/worker/stats.o \
	src/backend/counts.o \
	src/common/plans.o \
	src/backend/trigger_args.o \
	src/backend/triggers.o \
	src/worker/launcher.o \
	src/backend/vacate.o \
	src/common/slots.o \
	src/worker/dbsettings.o \
	src/worker/worker.o \
	src/worker/worker_life.o \
	src/worker/pace.o \
	src/worker/lease.o \
	src/worker/queue.o \
	src/worker/orphans.o \
	src/worker/record.o \
	src/common/dbtext.o \
	src/worker/outcomes.o \
	src/worker/session.o \
	src/worker/retention.o \
	src/worker/http.o \
	src/worker/job.o \
	src/worker/eventindex.o \
	src/worker/sweep.o \
	src/common/json.o \
	src/common/encode.o \
	src/providers/stripe.o \
	src/providers/stripe_payments.o \
	src/providers/chargebee.o \
	src/providers/chargebee_payments.o \
	src/providers/cello.o \
	src/common/version.o

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

PG_CPPFLAGS = -Isrc/common -Isrc/backend -Isrc/worker -Isrc/providers $(shell pkg-config --cflags libcurl json-c)
SHLIB_LINK = $(shell pkg-config --libs libcurl json-c)
PG_CFLAGS = -Wextra -Wno-unused-parameter $(if $(WERROR),-Werror)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
