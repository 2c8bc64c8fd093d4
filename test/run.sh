#!/usr/bin/env bash
# The whole agentretry test suite on a private cluster:
#   pg_regress (sql/, expected/), isolation (test/isolation/),
#   pgTAP (test/pgtap/, run with pg_prove), and the crash/fault workload
#   (test/t/, Perl TAP with its own clusters), and the demo's faulty agent
#   workload as an end-to-end check.
# Installs what it needs on a fresh Debian 12 machine.  The last line is
# "N passed, N failed"; the exit status is non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

source test/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
set +e
source test/cluster.sh
cluster_start || { echo "could not start the test cluster"; echo "0 passed, 1 failed"; exit 1; }
trap cluster_stop EXIT

LOG=$ROOT/build/test-logs
rm -rf "$LOG" && mkdir -p "$LOG"
passed=0
failed=0

# pg_regress prints "All N tests passed." or "M of N tests failed."
count_regress() {
	local out=$1 line n m
	line=$(grep -E "tests? (passed|failed)" "$out" | tail -1)
	if [[ $line =~ All\ ([0-9]+)\ tests?\ passed ]]; then
		n=${BASH_REMATCH[1]}; passed=$((passed + n))
	elif [[ $line =~ ([0-9]+)\ of\ ([0-9]+)\ tests?\ failed ]]; then
		m=${BASH_REMATCH[1]}; n=${BASH_REMATCH[2]}
		failed=$((failed + m)); passed=$((passed + n - m))
	else
		failed=$((failed + 1))
	fi
}

echo "== pg_regress"
make -s installcheck-regress >"$LOG/regress.out" 2>&1
cat "$LOG/regress.out"
count_regress "$LOG/regress.out"
[ -f build/regress/regression.diffs ] && cat build/regress/regression.diffs

echo "== isolation"
make -s installcheck-isolation >"$LOG/isolation.out" 2>&1
cat "$LOG/isolation.out"
count_regress "$LOG/isolation.out"
[ -f build/isolation/regression.diffs ] && cat build/isolation/regression.diffs

# prove-style output: "Files=N, Tests=M" and "Failed X/Y subtests"
count_prove() {
	local out=$1 rc=$2 total nfailed
	total=$(sed -n 's/.*Tests=\([0-9]*\).*/\1/p' "$out" | tail -1)
	nfailed=$(grep -oE "Failed [0-9]+/[0-9]+ subtests" "$out" | awk '{split($2, a, "/"); s += a[1]} END {print s + 0}')
	total=${total:-0}
	if [ "$rc" -ne 0 ] && [ "$nfailed" -eq 0 ]; then
		nfailed=1	# a file died or planned wrong without a failing subtest
	fi
	passed=$((passed + total - nfailed))
	failed=$((failed + nfailed))
}

echo "== pgTAP"
psql -X -q -c "DROP DATABASE IF EXISTS agentretry_tap" -c "CREATE DATABASE agentretry_tap" postgres
psql -X -q -d agentretry_tap -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION agentretry"
pg_prove -d agentretry_tap test/pgtap/*.sql >"$LOG/pgtap.out" 2>&1
tap_rc=$?
cat "$LOG/pgtap.out"
count_prove "$LOG/pgtap.out" "$tap_rc"

echo "== crash/fault (TAP)"
test/run_tap.sh >"$LOG/tap.out" 2>&1
crash_rc=$?
cat "$LOG/tap.out"
count_prove "$LOG/tap.out" "$crash_rc"

# The demo's agent workload doubles as an end-to-end check: it exits
# non-zero if agentretry let a duplicate side effect through or lost a task.
echo "== demo workload (end to end)"
if (unset PGHOST PGPORT PGUSER AR_BASE AR_PGDATA AR_PGPORT; bash examples/demo.sh) >"$LOG/demo.out" 2>&1; then
	passed=$((passed + 1))
else
	failed=$((failed + 1))
fi
tail -40 "$LOG/demo.out"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
