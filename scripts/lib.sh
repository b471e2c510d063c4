# scripts/lib.sh: shared by scripts/test and scripts/demo.
# Installs what is missing, builds and installs the extension, starts the
# local API fakes, and writes the server settings that point at them.

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${CELLOATTR_SHARED:-$top/../shared}
PYTHON=${PYTHON:-/usr/bin/python3}
TEST_USER=${CELLOATTR_TEST_USER:-postgres}
# CELLOATTR_PG_PREFIX=/some/dir: build, install and test against a private
# copy of the PostgreSQL installation made there (scripts/private-pg), so
# several checkouts on one machine need not take turns.
if [ -n "${CELLOATTR_PG_PREFIX:-}" ]; then
	PG_CONFIG=$CELLOATTR_PG_PREFIX/usr/lib/postgresql/15/bin/pg_config
	[ -x "$PG_CONFIG" ] || { printf 'error: no PostgreSQL copy in %s (run scripts/private-pg %s)\n' \
		"$CELLOATTR_PG_PREFIX" "$CELLOATTR_PG_PREFIX" >&2; exit 1; }
	export PG_CONFIG
fi
PGBIN=$(${PG_CONFIG:-pg_config} --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The Debian packages the build and the tests need, installed when missing.
ensure_deps() {
	local missing=()
	[ -f "$(pg_config --pgxs 2>/dev/null)" ] || missing+=(postgresql-server-dev-15)
	pkg-config --exists libcurl 2>/dev/null || missing+=(libcurl4-openssl-dev)
	pkg-config --exists json-c 2>/dev/null || missing+=(libjson-c-dev)
	perl -MIPC::Run -e1 2>/dev/null || missing+=(libipc-run-perl)
	[ -x "$PYTHON" ] || missing+=(python3)
	command -v pkg-config >/dev/null || missing+=(pkg-config)
	command -v make >/dev/null || missing+=(make)
	command -v gcc >/dev/null || missing+=(gcc)
	command -v clang-14 >/dev/null || missing+=(clang-14 libclang-rt-14-dev)
	[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run this as root (or sudo) to install them"
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null \
		|| die "apt-get install ${missing[*]} failed"
}

# Build with warnings as errors and install into the server's directories.
# The installed library is shared by every cluster on the machine, and a
# backend that finds it replaced loads a second copy: so one run at a time
# holds the lock from install to its last test (several checkouts of the
# project on one machine then take turns instead of breaking each other).
build_install() {
	if [ -z "${CELLOATTR_PG_PREFIX:-}" ]; then
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
	mkdir -p "$dir/specs-shared"
	cp "$shared"/specs/stripe-spec3-2020-08-27.json "$shared"/specs/stripe-fixtures3.json "$dir/specs-shared/" \
		|| die "cannot read $shared/specs (the shared/ folder beside the repository)"
	chown -R "$TEST_USER" "$dir"
	chmod 755 "$dir"
	echo "$dir"
}

as_test_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u "$TEST_USER" -- "$@"
	else
		"$@"
	fi
}

# as_test_user for a background process: "as_test_user_exec CMD &" makes $!
# the command itself (runuser passes a kill on), where a backgrounded
# function is a subshell whose kill would leave the command running.
as_test_user_exec() {
	if [ "$(id -u)" = 0 ]; then
		exec runuser -u "$TEST_USER" -- "$@"
	else
		exec "$@"
	fi
}

# Start the local Stripe/Chargebee/Cello fake on a free port; sets FAKE_PID, FAKE_PORT.
start_fake() {
	local dir=$1
	rm -f "$dir/fake.port"
	as_test_user_exec "$PYTHON" "$dir/test/fake/fake_api.py" --port 0 --port-file "$dir/fake.port" \
		--stripe-spec "$dir/specs-shared/stripe-spec3-2020-08-27.json" \
		--stripe-fixtures "$dir/specs-shared/stripe-fixtures3.json" \
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

# Server settings for a cluster whose worker talks to the fake.
write_conf() {
	local file=$1 database=$2 paused=${3:-off}
	mkdir -p "$(dirname "$file")"
	cat >"$file" <<CONF
shared_preload_libraries = 'celloattr'
celloattr.database = '$database'
celloattr.allow_http = on
celloattr.stripe_api_url = 'http://127.0.0.1:$FAKE_PORT/stripe'
celloattr.stripe_secret_key = 'sk_test_celloattr_secret_0123456789'
celloattr.stripe_webhook_endpoint = 'we_cello_test'
celloattr.chargebee_api_url = 'http://127.0.0.1:$FAKE_PORT/chargebee/api/v2'
celloattr.chargebee_api_key = 'test_cbkey_celloattr_secret_9876'
celloattr.chargebee_webhook_url = 'http://127.0.0.1:$FAKE_PORT/cello-webhook/chargebee'
celloattr.chargebee_webhook_username = 'cello-product-id'
celloattr.chargebee_webhook_password = 'cello-webhook-secret-4242'
celloattr.cello_api_url = 'http://127.0.0.1:$FAKE_PORT/cello'
celloattr.cello_access_key_id = 'AKID-celloattr-test'
celloattr.cello_secret_access_key = 'cello-secret-access-key-1234'
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
	as_test_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast stop >/dev/null 2>&1
}
