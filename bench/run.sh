#!/usr/bin/env bash
# Throughput of agentretry against the raw-SQL floor and a hand-written
# PL/pgSQL implementation, on one private server in one run (DESIGN.md,
# section 8).  Prints a markdown table of ratios and writes it, with the
# machine facts and per-run numbers, to bench/results/latest.md.
#
#   BENCH_SECONDS      duration of each pgbench run           (default 20)
#   BENCH_ROUNDS       runs per implementation and setting    (default 2)
#   BENCH_CLIENTS      pgbench clients                        (default 8)
#   BENCH_THREADS      pgbench threads                        (default 2)
#   BENCH_REPLAY_KEYS  succeeded keys pre-loaded for replay   (default 100000)
#   BENCH_WORKLOADS    subset of: pattern_b pattern_a replay  (default all)
#   BENCH_SYNC         subset of: on off                      (default both)
#   BENCH_BUILD        0 to skip building and installing      (default 1)
#   BENCH_KEEP         1 to leave the cluster running, set up (default 0)
#   AR_BASE, AR_PGPORT where the private cluster lives        (cluster.sh)
#
# Within a workload and setting the three implementations run in turn, in
# mirrored order from round to round (raw, agentretry, plpgsql, then
# plpgsql, agentretry, raw), so that drift (tables growing, autovacuum,
# the host) weighs on all three alike.  Each run starts after a CHECKPOINT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

BENCH_SECONDS=${BENCH_SECONDS:-20}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_CLIENTS=${BENCH_CLIENTS:-8}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_REPLAY_KEYS=${BENCH_REPLAY_KEYS:-100000}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-pattern_b pattern_a replay}
BENCH_SYNC=${BENCH_SYNC:-on off}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
export AR_BASE=${AR_BASE:-/tmp/agentretry-bench}
export AR_PGPORT=${AR_PGPORT:-54339}

impls=(raw agentretry plpgsql)
results=$here/results
mkdir -p "$results"
runs=$results/runs.tsv
logdir=$results/logs
rm -rf "$logdir"
mkdir -p "$logdir"

command_line="BENCH_SECONDS=$BENCH_SECONDS BENCH_ROUNDS=$BENCH_ROUNDS BENCH_CLIENTS=$BENCH_CLIENTS BENCH_THREADS=$BENCH_THREADS BENCH_REPLAY_KEYS=$BENCH_REPLAY_KEYS BENCH_WORKLOADS='$BENCH_WORKLOADS' BENCH_SYNC='$BENCH_SYNC' bench/run.sh"

if [ "$BENCH_BUILD" = 1 ]; then
	(cd "$root" && source test/setup.sh)
fi
export PATH="/usr/lib/postgresql/15/bin:$PATH"

# shellcheck source=../test/cluster.sh
source "$root/test/cluster.sh"
# A checkpoint in the middle of a run would land on one implementation
# only: make room for a whole run's WAL and checkpoint between runs.
cluster_start "max_wal_size = 16GB
checkpoint_timeout = 1h"
[ "$BENCH_KEEP" = 1 ] || trap cluster_stop EXIT

# every run must measure the same build: note it, and check it at the end
so=$(pg_config --pkglibdir)/agentretry.so
so_sum() {
	md5sum "$so" | cut -c1-12
}
so_before=$(so_sum)

db=postgres
psql_q() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"
}

echo "setting up (replay keys: $BENCH_REPLAY_KEYS per implementation)"
psql_q <<SQL
CREATE EXTENSION agentretry;
\i $here/raw_floor.sql
\i $here/plpgsql_reference.sql
-- the side effect of pattern A, shared by the three implementations
CREATE TABLE bench_effects (key text PRIMARY KEY, amount integer NOT NULL);

-- replay keys: through each implementation's own claim and complete
INSERT INTO raw_operations (key, state, result)
	SELECT 'r' || g, 'succeeded', '{"ok": true}' FROM generate_series(1, $BENCH_REPLAY_KEYS) g;
SELECT count(agentretry.complete(k, (agentretry.claim(k, a)).lease_token, '{"ok": true}'))
	FROM (SELECT 'r' || g AS k, '{"to": "ops@example.com", "amount": 42}'::jsonb AS a
		  FROM generate_series(1, $BENCH_REPLAY_KEYS) g) s;
SELECT count(plpgsql_ref.complete(k, (plpgsql_ref.claim(k, a)).lease_token, '{"ok": true}'))
	FROM (SELECT 'r' || g AS k, '{"to": "ops@example.com", "amount": 42}'::jsonb AS a
		  FROM generate_series(1, $BENCH_REPLAY_KEYS) g) s;
VACUUM ANALYZE;
SQL

# the replay keys must all replay, or the replay workload measures something else
for t in "agentretry.operations" "plpgsql_ref.operations" "raw_operations"; do
	n=$(psql_q -At -c "SELECT count(*) FROM $t WHERE state = 'succeeded' AND key LIKE 'r%'")
	if [ "$n" != "$BENCH_REPLAY_KEYS" ]; then
		echo "setup failed: $t has $n succeeded replay keys, expected $BENCH_REPLAY_KEYS" >&2
		exit 1
	fi
done

# one pgbench run; appends "workload sync impl round tps build" to $runs
run_one() {
	local workload=$1 sync=$2 impl=$3 round=$4
	local log=$logdir/${workload}_${sync}_${impl}_${round}.log
	local tps build

	psql_q -c CHECKPOINT
	build=$(so_sum)
	if ! PGOPTIONS="-c synchronous_commit=$sync" pgbench -n -M prepared \
		-c "$BENCH_CLIENTS" -j "$BENCH_THREADS" -T "$BENCH_SECONDS" \
		-D replay_keys="$BENCH_REPLAY_KEYS" \
		-f "$here/${workload}_${impl}.pgbench" "$db" >"$log" 2>&1; then
		echo "pgbench failed for $workload/$impl (synchronous_commit=$sync):" >&2
		cat "$log" >&2
		exit 1
	fi
	if ! grep -q '^number of failed transactions: 0 ' "$log"; then
		echo "transactions failed in $workload/$impl (synchronous_commit=$sync):" >&2
		cat "$log" >&2
		exit 1
	fi
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$log")
	[ -n "$tps" ] || { echo "no tps in $log" >&2; exit 1; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$sync" "$impl" "$round" "$tps" "$build" >>"$runs"
	printf '  %-9s sync=%-3s %-10s round %s: %10.1f tps\n' "$workload" "$sync" "$impl" "$round" "$tps"
}

total=0
for _ in $BENCH_SYNC; do for _ in $BENCH_WORKLOADS; do total=$((total + 1)); done; done
echo "running $((total * BENCH_ROUNDS * ${#impls[@]})) pgbench runs of ${BENCH_SECONDS} s each"

: >"$runs"
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for sync in $BENCH_SYNC; do
	for workload in $BENCH_WORKLOADS; do
		for ((round = 1; round <= BENCH_ROUNDS; round++)); do
			if ((round % 2)); then
				order=("${impls[@]}")
			else
				order=("${impls[2]}" "${impls[1]}" "${impls[0]}")
			fi
			for impl in "${order[@]}"; do
				run_one "$workload" "$sync" "$impl" "$round"
			done
		done
	done
done

# Mean tps per cell, ratios and targets.  Targets (DESIGN.md section 8):
# claim -> complete and pattern A at least 0.85x the floor and 1.5x
# PL/pgSQL; replay at least 0.8x the floor.
table=$(awk -F'\t' -v workloads="$BENCH_WORKLOADS" -v syncs="$BENCH_SYNC" '
	{
		sum[$1, $2, $3] += $5; n[$1, $2, $3]++
		if (!(($1, $2, $3) in lo) || $5 < lo[$1, $2, $3]) lo[$1, $2, $3] = $5
		if ($5 > hi[$1, $2, $3]) hi[$1, $2, $3] = $5
	}
	function mean(w, s, i) { return sum[w, s, i] / n[w, s, i] }
	function spread(w, s, i) { return mean(w, s, i) > 0 ? 100 * (hi[w, s, i] - lo[w, s, i]) / mean(w, s, i) : 0 }
	END {
		label["pattern_b"] = "claim -> complete, new keys, two commits (B)"
		label["pattern_a"] = "claim + effect + complete, one transaction (A)"
		label["replay"] = "replay (claim of a succeeded key)"
		print "| workload | sync commit | tps raw | tps agentretry | tps plpgsql | x raw | x plpgsql | target | met? |"
		print "|---|---|---:|---:|---:|---:|---:|---|---|"
		nw = split(workloads, ws, " "); ns = split(syncs, ss, " ")
		for (a = 1; a <= nw; a++) for (b = 1; b <= ns; b++) {
			w = ws[a]; s = ss[b]
			r = mean(w, s, "raw"); e = mean(w, s, "agentretry"); p = mean(w, s, "plpgsql")
			vr = e / r; vp = e / p
			if (w == "replay") {
				target = ">= 0.80x raw"; met = (vr >= 0.80)
			} else {
				target = ">= 0.85x raw, >= 1.5x plpgsql"; met = (vr >= 0.85 && vp >= 1.5)
			}
			printf "| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2f | %s | %s |\n",
				label[w], s, r, e, p, vr, vp, target, met ? "yes" : "NO"
			spreads = spreads sprintf("%s/%s: raw %.1f%%, agentretry %.1f%%, plpgsql %.1f%%; ",
				w, s, spread(w, s, "raw"), spread(w, s, "agentretry"), spread(w, s, "plpgsql"))
		}
		print ""
		print "Spread between rounds ((max - min) / mean): " spreads
	}' "$runs")

# the build a run measured is the one installed when its connections opened
builds=$(cut -f6 "$runs" | sort -u | tr '\n' ' ')
so_note="agentretry.so md5 $so_before"
if [ "$builds" != "$so_before " ] || [ "$(so_sum)" != "$so_before" ]; then
	so_note="$so_note, REPLACED during the run (runs measured: ${builds% }; see the last column below)"
	echo "warning: $so was replaced during the run" >&2
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
facts=$(cat <<FACTS
- command: \`$command_line\`
- started: $started; finished: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(uname -srm), $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM
- server: $(psql_q -At -c "SELECT version()" | cut -d, -f1); shared_buffers $(psql_q -At -c "SHOW shared_buffers"), fsync on, server and pgbench on the same host
- agentretry: commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD -- src sql 2>/dev/null || echo " with uncommitted changes in src/ or sql/"), extension $(psql_q -At -c "SELECT extversion FROM pg_extension WHERE extname = 'agentretry'"), $so_note
- pgbench: -M prepared -c $BENCH_CLIENTS -j $BENCH_THREADS -T $BENCH_SECONDS, $BENCH_ROUNDS round(s) per cell in mirrored order, mean tps; synchronous_commit set per connection (PGOPTIONS)
- replay: $BENCH_REPLAY_KEYS succeeded keys per implementation, uniformly random key per claim
FACTS
)

{
	echo "# agentretry benchmark"
	echo
	echo "$table"
	echo
	echo "$facts"
	echo
	echo "Per run (workload, synchronous_commit, implementation, round, tps, agentretry.so md5):"
	echo
	echo '```'
	cat "$runs"
	echo '```'
} >"$results/latest.md"

echo
echo "$table"
echo
echo "$facts"
echo
echo "written to bench/results/latest.md"
