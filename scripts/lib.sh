# scripts/lib.sh: shared by scripts/test and scripts/demo.
# Installs what is missing, builds and installs the extension, starts the
# local API fakes, and writes the server settings that point at them.

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
TEST_USER=${CELLOATTR_TEST_USER:-postgres}
# The PostgreSQL major versions celloattr supports and tests (scripts/test
# --all-versions): 15 is Debian's package on this machine, the others are
# built from Debian's source by scripts/pg-build.
PG_VERSIONS="15 17 18"
# CELLOATTR_PG_VERSION=NN: build, install and test against that version
# (other than 15: the server scripts/pg-build made, built on first use).
PG_MAJOR=${CELLOATTR_PG_VERSION:-15}
# CELLOATTR_PG_PREFIX=/some/dir: build, install and test against a private
# copy of the PostgreSQL 15 installation made there (scripts/private-pg), so
# several checkouts on one machine need not take turns.
if [ "$PG_MAJOR" != 15 ]; then
	PG_BUILT_PREFIX=$(CELLOATTR_PG_VERSION= "$top/scripts/pg-build" "$PG_MAJOR") ||
		{ printf 'error: no PostgreSQL %s to test against (scripts/pg-build %s)\n' "$PG_MAJOR" "$PG_MAJOR" >&2; exit 1; }
	PG_CONFIG=$PG_BUILT_PREFIX/bin/pg_config
	export PG_CONFIG
elif [ -n "${CELLOATTR_PG_PREFIX:-}" ]; then
	PG_CONFIG=$CELLOATTR_PG_PREFIX/usr/lib/postgresql/15/bin/pg_config
	[ -x "$PG_CONFIG" ] || { printf 'error: no PostgreSQL copy in %s (run scripts/private-pg %s)\n' \
		"$CELLOATTR_PG_PREFIX" "$CELLOATTR_PG_PREFIX" >&2; exit 1; }
	export PG_CONFIG
fi
PGBIN=$(${PG_CONFIG:-pg_config} --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The Debian packages a step needs, installed when missing.  Each is found
# by what the build or the run really uses: the server's headers under
# pg_config --includedir-server (Debian ships pg_config and PGXS's makefiles
# without them, in postgresql-client-15), the curl and json-c headers, the
# Perl modules of the TAP tests.  "ensure_deps test" adds what only the test
# suite needs.
ensure_deps() {
	local missing=() incdir
	command -v make >/dev/null || missing+=(make)
	command -v gcc >/dev/null || missing+=(gcc)
	command -v pkg-config >/dev/null || missing+=(pkg-config)
	[ -x "$PYTHON" ] || missing+=(python3)
	# (a server scripts/pg-build made has all of it)
	if [ "$PG_MAJOR" = 15 ]; then
		[ -x "$PGBIN/postgres" ] || missing+=(postgresql-15)
		incdir=$(${PG_CONFIG:-pg_config} --includedir-server 2>/dev/null)
		[ -n "$incdir" ] && [ -f "$incdir/postgres.h" ] || missing+=(postgresql-server-dev-15)
	fi
	has_header curl/curl.h libcurl || missing+=(libcurl4-openssl-dev)
	has_header json-c/json.h json-c || missing+=(libjson-c-dev)
	if [ "${1:-}" = test ]; then
		perl -MIPC::Run -e1 2>/dev/null || missing+=(libipc-run-perl)
		command -v clang-14 >/dev/null || missing+=(clang-14)
		[ -n "$(find /usr/lib/llvm-14 -name 'libclang_rt.fuzzer-*.a' -print -quit 2>/dev/null)" ] ||
			missing+=(libclang-rt-14-dev)
	fi
	[ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"
	id -u "$TEST_USER" >/dev/null 2>&1 ||
		die "no user $TEST_USER to run the clusters as (initdb refuses root); set CELLOATTR_TEST_USER"
}

install_packages() {
	local missing=("$@") incdir
	[ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run this as root (or with sudo) to install them"
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (no access to Debian's archive?)"
	apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 </dev/null ||
		die "apt-get install ${missing[*]} failed"
	# pg_config may have come with the packages just installed
	PGBIN=$(${PG_CONFIG:-pg_config} --bindir 2>/dev/null || echo "$PGBIN")
	incdir=$(${PG_CONFIG:-pg_config} --includedir-server 2>/dev/null)
	[ -f "$incdir/postgres.h" ] || die "postgres.h is still not under pg_config --includedir-server ($incdir)"
}

# has_header FILE PKG: the header is where pkg-config (or the compiler's
# default include path) says it is.
has_header() {
	local dir
	command -v pkg-config >/dev/null || return 1
	pkg-config --exists "$2" 2>/dev/null || return 1
	for dir in $(pkg-config --cflags-only-I "$2" 2>/dev/null | sed 's/-I//g') /usr/include \
		/usr/include/"$(gcc -dumpmachine 2>/dev/null)"; do
		[ -f "$dir/$1" ] && return 0
	done
	return 1
}

# Build with warnings as errors and install into the server's directories.
# The installed library is shared by every cluster of that server on the
# machine, and a backend that finds it replaced loads a second copy: so one
# run at a time holds the server's lock from install to its last test
# (several checkouts of the project on one machine then take turns instead
# of breaking each other).
#
# CELLOATTR_INSTALLED=1 builds and installs nothing: the tests run against
# the extension already installed (scripts/test-package: the package's).
build_install() {
	if [ -n "${CELLOATTR_INSTALLED:-}" ]; then
		[ -f "$(${PG_CONFIG:-pg_config} --pkglibdir)/celloattr.so" ] ||
			die "CELLOATTR_INSTALLED: no celloattr.so in $(${PG_CONFIG:-pg_config} --pkglibdir)"
		say "testing the installed extension in $(${PG_CONFIG:-pg_config} --pkglibdir)"
		return
	fi
	if [ "$PG_MAJOR" != 15 ]; then
		exec 9>"${TMPDIR:-/tmp}/celloattr-install-$PG_MAJOR.lock"
		flock 9
	elif [ -z "${CELLOATTR_PG_PREFIX:-}" ]; then
		exec 9>"${TMPDIR:-/tmp}/celloattr-install.lock"
		flock 9
	fi
	say "building (warnings are errors)"
	make -C "$top" -s clean >/dev/null
	make -C "$top" -s WERROR=1 >/dev/null || die "build failed"
	make -C "$top" -s install >/dev/null || die "make install failed"
}

# A copy of the tree the test user owns: pg_regress, the clusters and the
# fakes write there, whoever owns the clone.
make_workdir() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/celloattr-$1.XXXXXX")
	tar -C "$top" --exclude=.git --exclude='./tmp_check*' --exclude=./results -cf - . | tar -C "$dir" -xf -
	chown -R "$TEST_USER" "$dir"
	chmod 755 "$dir"
	echo "$dir"
}

# (from a directory the test user may enter: the clone may be under /root)
as_test_user() {
	if [ "$(id -u)" = 0 ]; then
		(cd / && runuser -u "$TEST_USER" -- "$@")
	else
		"$@"
	fi
}

# as_test_user for a background process: "as_test_user_exec CMD &" makes $!
# the command itself (runuser passes a kill on), where a backgrounded
# function is a subshell whose kill would leave the command running.
as_test_user_exec() {
	if [ "$(id -u)" = 0 ]; then
		cd / && exec runuser -u "$TEST_USER" -- "$@"
	else
		exec "$@"
	fi
}

# Start the local Stripe/Chargebee/Cello fake on a free port; sets FAKE_PID, FAKE_PORT.
start_fake() {
	local dir=$1
	rm -f "$dir/fake.port"
	as_test_user_exec "$PYTHON" "$dir/test/fake/fake_api.py" --port 0 --port-file "$dir/fake.port" \
		--stripe-spec "$dir/test/specs/stripe-spec3-extract.json" \
		--stripe-fixtures "$dir/test/specs/stripe-fixtures3-extract.json" \
		--log "$dir/fake.log" >"$dir/fake.out" 2>&1 9>&- &
	FAKE_PID=$!
	for _ in $(seq 1 100); do
		[ -s "$dir/fake.port" ] && break
		kill -0 "$FAKE_PID" 2>/dev/null || { cat "$dir/fake.out" >&2; die "the API fake did not start"; }
		sleep 0.1
	done
	[ -s "$dir/fake.port" ] || die "the API fake did not report its port"
	FAKE_PORT=$(cat "$dir/fake.port")
	export FAKE_API_PORT_FILE="$dir/fake.port"
}

stop_fake() {
	[ -n "${FAKE_PID:-}" ] && kill "$FAKE_PID" 2>/dev/null
	wait "${FAKE_PID:-}" 2>/dev/null
	FAKE_PID=
}

# The provider secrets the fake accepts, as a secrets file: mode 0600 and
# owned by the user the servers run as, or the worker refuses it.
write_secrets() {
	local file=$1
	mkdir -p "$(dirname "$file")"
	(umask 077 && cat >"$file" <<SECRETS
# celloattr secrets of the test clusters (the local fake accepts them)
stripe_secret_key = 'sk_test_celloattr_secret_0123456789'
chargebee_api_key = 'test_cbkey_celloattr_secret_9876'
chargebee_webhook_username = 'cello-product-id'
chargebee_webhook_password = 'cello-webhook-secret-4242'
cello_access_key_id = 'AKID-celloattr-test'
cello_secret_access_key = 'cello-secret-access-key-1234'
SECRETS
	)
	chmod 600 "$file"
	[ "$(id -u)" = 0 ] && chown "$TEST_USER" "$file"
	return 0
}

# Server settings for a cluster whose worker talks to the fake; its secrets
# go to the secrets file beside it (FILE with .secrets for .conf).
write_conf() {
	local file=$1 database=$2 paused=${3:-off}
	local secrets=${file%.conf}.secrets
	mkdir -p "$(dirname "$file")"
	write_secrets "$secrets"
	cat >"$file" <<CONF
shared_preload_libraries = 'celloattr'
celloattr.database = '$database'
celloattr.secrets_file = '$secrets'
celloattr.allow_http = on
celloattr.stripe_api_url = 'http://127.0.0.1:$FAKE_PORT/stripe'
celloattr.stripe_webhook_endpoint = 'we_cello_test'
celloattr.chargebee_api_url = 'http://127.0.0.1:$FAKE_PORT/chargebee/api/v2'
celloattr.chargebee_webhook_url = 'http://127.0.0.1:$FAKE_PORT/cello-webhook/chargebee'
celloattr.cello_api_url = 'http://127.0.0.1:$FAKE_PORT/cello'
celloattr.poll_interval = 200ms
celloattr.backoff_base = 50ms
celloattr.backoff_max = 2s
celloattr.request_timeout = 3s
celloattr.connect_timeout = 1s
celloattr.stripe_rate_limit = 0
celloattr.chargebee_rate_limit = 0
celloattr.cello_rate_limit = 0
# the queueing tests run first, with the worker paused; the end-to-end ones unpause it
celloattr.paused = $paused
CONF
}

# A throwaway cluster with the library preloaded, its worker serving
# "postgres" and talking to the fake; sets PGDATA_DIR, PGPORT_USED.
start_cluster() {
	local work=$1
	PGDATA_DIR=$work/pgdata
	PGPORT_USED=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	as_test_user "$PGBIN/initdb" -D "$PGDATA_DIR" -A trust >/dev/null || die "initdb failed"
	write_conf "$work/celloattr.conf" postgres off
	cat "$work/celloattr.conf" >>"$PGDATA_DIR/postgresql.conf"
	as_test_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$work/server.log" \
		-o "-p $PGPORT_USED -k $work -c listen_addresses=''" -w start >/dev/null 9>&- \
		|| { cat "$work/server.log"; die "the cluster did not start"; }
}

stop_cluster() {
	[ -n "${PGDATA_DIR:-}" ] && [ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
	as_test_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast stop >/dev/null 2>&1
}
