#!/usr/bin/env bash
# Run the crash and fault TAP tests (test/t/*.pl) with prove, outside a
# PostgreSQL source tree, against the installed extension.  Each test starts
# its own throwaway cluster with PostgreSQL::Test::Cluster.
#
#   test/run_tap.sh [test/t/NNN_name.pl ...]
#
# prints prove's output ("Files=N, Tests=M", "Result: PASS|FAIL") and exits
# with prove's status.  Logs of a run stay in $AR_TAP_DIR (default: a new
# temporary directory) under tmp_check/log.
#
# initdb refuses to run as root, so as root the tests run as "postgres" in
# a directory that user owns.
set -uo pipefail

TDIR=$(cd "$(dirname "$0")" && pwd)/t
PG_CONFIG=${PG_CONFIG:-pg_config}
BINDIR=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(cd "$(dirname "$("$PG_CONFIG" --pgxs)")/../.." && pwd)

if [ $# -gt 0 ]; then
	TESTS=()
	for t in "$@"; do
		TESTS+=("$(cd "$(dirname "$t")" && pwd)/$(basename "$t")")
	done
else
	TESTS=("$TDIR"/*.pl)
fi

WORK=${AR_TAP_DIR:-$(mktemp -d /tmp/agentretry-tap.XXXXXX)}
mkdir -p "$WORK"
rm -rf "$WORK/tmp_check"

# What PostgreSQL's "make check" (prove_check in Makefile.global) sets up:
# the server binaries first in PATH, pg_regress for Cluster::init's
# --config-auth step, and TESTDIR for tmp_check/ (data directories, logs).
ENVVARS=(
	"PATH=$BINDIR:$PATH"
	"PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress"
	"TESTDIR=$WORK"
	"PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}"
)
PROVE=(prove -I "$PGXS_DIR/src/test/perl" -I "$TDIR" ${PROVE_FLAGS:-} "${TESTS[@]}")

cd "$WORK" || exit 1
if [ "$(id -u)" = 0 ]; then
	chown -R postgres: "$WORK"
	runuser -u postgres -- env "${ENVVARS[@]}" "${PROVE[@]}"
else
	env "${ENVVARS[@]}" "${PROVE[@]}"
fi
rc=$?
if [ $rc -ne 0 ]; then
	echo "TAP logs: $WORK/tmp_check/log"
elif [ -z "${AR_TAP_DIR:-}" ]; then
	rm -rf "$WORK"
fi
exit $rc
