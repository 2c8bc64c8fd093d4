#!/usr/bin/env bash
# Throughput of agentretry against the raw-SQL floor and a hand-written
# PL/pgSQL implementation, and the cost of the sweep and of reconcile()
# against the size of the table, on one private server in one run
# (DESIGN.md, section 8).  Prints markdown tables of ratios and writes them,
# with the machine facts and per-run numbers, to $BENCH_RESULTS/latest.md.
# Parts:
#
#   core   pattern B, pattern A and replay: raw, agentretry and PL/pgSQL
#   cycle  the retry cycle fail -> claim_due -> complete: raw and agentretry
#   sweep  one sweep of the same due rows in tables of different sizes
#   budget the retry cycle with and without the tenant's retry budgets
#   runs   claim -> complete of keys that are steps of a run, and of keys
#          that are not
#   tenancy  claim -> complete of new keys by an agent role: with no tenant
#          membership (single-tenant) and as the member of one tenant
#          among a thousand memberships (the membership check)
#   stats  what recording costs: claim -> complete with stats at their
#          defaults and with agentretry.track_stats off; replay with
#          replays counted (and not) against the raw primary-key read;
#          complete with a receipt against without
#   reconcile  draining the same operations due for reconcile(), with
#          reconcile(BENCH_RECONCILE_BATCH) calls, in the sweep's tables
#          (built once for both parts)
#
#   BENCH_PARTS          subset of: core cycle budget runs tenancy stats sweep reconcile (default all)
#   BENCH_SECONDS        duration of each pgbench run             (default 20)
#   BENCH_ROUNDS         runs per implementation and setting      (default 2)
#   BENCH_CLIENTS        pgbench clients                          (default 8)
#   BENCH_THREADS        pgbench threads                          (default 2)
#   BENCH_REPLAY_KEYS    succeeded keys pre-loaded for replay     (default 100000)
#   BENCH_WORKLOADS      core subset of: pattern_b pattern_a replay (default all)
#   BENCH_SYNC           subset of: on off                        (default both)
#   BENCH_CYCLE_POOL     due retries seeded for the cycle         (default 1000)
#   BENCH_SWEEP_SIZES    operations per table, one table each, for the
#                        sweep and reconcile parts alike           (default 1000000 10000000)
#   BENCH_SWEEP_DUE      due operations in every table            (default 10000)
#   BENCH_SWEEP_WAITING  in-flight operations not due, every table (default 10000)
#   BENCH_SWEEP_ROUNDS   timed sweeps per size, median reported   (default 5)
#   BENCH_RECONCILE_DUE  operations made due for reconcile, every table (default 10000)
#   BENCH_RECONCILE_BATCH max of each reconcile() call            (default 1000)
#   BENCH_RECONCILE_ROUNDS timed drains per size, median reported (default 5)
#   BENCH_RESULTS        directory for latest.md, runs and logs   (default bench/results)
#   BENCH_BUILD          0 to skip building and installing        (default 1)
#   BENCH_KEEP           1 to leave the cluster running, set up   (default 0)
#   AR_BASE, AR_PGPORT   where the private cluster lives          (cluster.sh)
#
# Within a workload and setting the implementations run in turn, in
# mirrored order from round to round (raw, agentretry, plpgsql, then
# plpgsql, agentretry, raw), so that drift (tables growing, autovacuum,
# the host) weighs on all alike.  Each run starts after a CHECKPOINT.
# The sweep's tables live in one database each, so its rounds alternate
# between the sizes in the same mirrored way; so do reconcile's, which
# uses the same databases after the sweep is done with them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

BENCH_PARTS=${BENCH_PARTS:-core cycle budget runs tenancy stats sweep reconcile}
BENCH_SECONDS=${BENCH_SECONDS:-20}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_CLIENTS=${BENCH_CLIENTS:-8}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_REPLAY_KEYS=${BENCH_REPLAY_KEYS:-100000}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-pattern_b pattern_a replay}
BENCH_SYNC=${BENCH_SYNC:-on off}
BENCH_CYCLE_POOL=${BENCH_CYCLE_POOL:-1000}
BENCH_SWEEP_SIZES=${BENCH_SWEEP_SIZES:-1000000 10000000}
BENCH_SWEEP_DUE=${BENCH_SWEEP_DUE:-10000}
BENCH_SWEEP_WAITING=${BENCH_SWEEP_WAITING:-10000}
BENCH_SWEEP_ROUNDS=${BENCH_SWEEP_ROUNDS:-5}
BENCH_RECONCILE_DUE=${BENCH_RECONCILE_DUE:-10000}
BENCH_RECONCILE_BATCH=${BENCH_RECONCILE_BATCH:-1000}
BENCH_RECONCILE_ROUNDS=${BENCH_RECONCILE_ROUNDS:-5}
BENCH_RESULTS=${BENCH_RESULTS:-$here/results}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
export AR_BASE=${AR_BASE:-/tmp/agentretry-bench}
export AR_PGPORT=${AR_PGPORT:-54339}

has_part() {
	case " $BENCH_PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}
for part in $BENCH_PARTS; do
	case $part in core | cycle | budget | runs | tenancy | stats | sweep | reconcile) ;; *) echo "unknown part: $part (BENCH_PARTS: core cycle budget runs tenancy stats sweep reconcile)" >&2; exit 1 ;; esac
done
# the pgbench parts, and the parts that build the large tables
pgbench_parts() {
	has_part core || has_part cycle || has_part budget || has_part runs || has_part tenancy || has_part stats
}
table_parts() {
	has_part sweep || has_part reconcile
}

# the pgbench workloads of the parts asked for, and who runs each
workloads=""
has_part core && workloads="$BENCH_WORKLOADS"
has_part cycle && workloads="$workloads cycle"
has_part budget && workloads="$workloads budget"
has_part runs && workloads="$workloads runs"
has_part tenancy && workloads="$workloads tenancy"
has_part stats && workloads="$workloads stats stats_replay receipt"
impls_of() {
	case $1 in
		cycle) echo "raw agentretry" ;;
		budget) echo "none tenant budgets" ;;
		runs) echo "plain run" ;;
		tenancy) echo "single members" ;;
		stats) echo "off defaults" ;;
		stats_replay) echo "raw defaults off" ;;
		receipt) echo "without with" ;;
		*) echo "raw agentretry plpgsql" ;;
	esac
}

results=$BENCH_RESULTS
mkdir -p "$results"
runs=$results/runs.tsv
sweeps=$results/sweeps.tsv
reconciles=$results/reconciles.tsv
counted=$results/stats_counted.tsv
logdir=$results/logs
rm -rf "$logdir"
mkdir -p "$logdir"

command_line="BENCH_PARTS='$BENCH_PARTS'"
pgbench_parts &&
	command_line="$command_line BENCH_SECONDS=$BENCH_SECONDS BENCH_ROUNDS=$BENCH_ROUNDS BENCH_CLIENTS=$BENCH_CLIENTS BENCH_THREADS=$BENCH_THREADS BENCH_SYNC='$BENCH_SYNC'"
has_part core || has_part stats &&
	command_line="$command_line BENCH_REPLAY_KEYS=$BENCH_REPLAY_KEYS"
has_part core &&
	command_line="$command_line BENCH_WORKLOADS='$BENCH_WORKLOADS'"
has_part cycle || has_part budget &&
	command_line="$command_line BENCH_CYCLE_POOL=$BENCH_CYCLE_POOL"
table_parts &&
	command_line="$command_line BENCH_SWEEP_SIZES='$BENCH_SWEEP_SIZES' BENCH_SWEEP_DUE=$BENCH_SWEEP_DUE BENCH_SWEEP_WAITING=$BENCH_SWEEP_WAITING BENCH_RECONCILE_DUE=$BENCH_RECONCILE_DUE"
has_part sweep &&
	command_line="$command_line BENCH_SWEEP_ROUNDS=$BENCH_SWEEP_ROUNDS"
has_part reconcile &&
	command_line="$command_line BENCH_RECONCILE_BATCH=$BENCH_RECONCILE_BATCH BENCH_RECONCILE_ROUNDS=$BENCH_RECONCILE_ROUNDS"
command_line="$command_line bench/run.sh"

if table_parts; then
	# Room for the largest table: about 400 bytes a row with its indexes
	# (settled operations carry a receipt), as much again in WAL before the
	# checkpoint after loading it, and the smaller tables beside it.
	need_mb=0
	for size in $BENCH_SWEEP_SIZES; do need_mb=$((need_mb + size * 850 / 1048576)); done
	free_mb=$(df -Pm "$(dirname "$AR_BASE")" | awk 'NR == 2 {print $4}')
	if [ "$need_mb" -gt "$free_mb" ]; then
		echo "the sweep and reconcile parts need about $need_mb MB in $(dirname "$AR_BASE"), $free_mb MB are free: lower BENCH_SWEEP_SIZES" >&2
		exit 1
	fi
	if [ "$BENCH_SWEEP_DUE" -lt 3 ] || [ "$BENCH_SWEEP_DUE" -gt 100000 ]; then
		echo "BENCH_SWEEP_DUE must be between 3 and 100000 (sweep's max)" >&2
		exit 1
	fi
	if [ "$BENCH_RECONCILE_DUE" -lt 10 ]; then
		echo "BENCH_RECONCILE_DUE must be at least 10 (one of each kind of operation)" >&2
		exit 1
	fi
	for size in $BENCH_SWEEP_SIZES; do
		if [ "$size" -le $((BENCH_SWEEP_DUE + BENCH_SWEEP_WAITING + BENCH_RECONCILE_DUE + BENCH_RECONCILE_DUE / 10)) ]; then
			echo "BENCH_SWEEP_SIZES: $size operations leave too few settled ones beside $BENCH_SWEEP_DUE + $BENCH_SWEEP_WAITING + $BENCH_RECONCILE_DUE" >&2
			exit 1
		fi
	done
fi
if has_part reconcile; then
	if [ "$BENCH_RECONCILE_BATCH" -lt 1 ] || [ "$BENCH_RECONCILE_BATCH" -gt 100000 ]; then
		echo "BENCH_RECONCILE_BATCH must be between 1 and 100000 (reconcile's max)" >&2
		exit 1
	fi
fi

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

psql_q <<SQL
CREATE EXTENSION agentretry;
\i $here/raw_floor.sql
SQL

# replay keys, shared by the core and stats parts: through each
# implementation's own claim and complete
replay_tables=""
if has_part core || has_part stats; then
	echo "setting up replay keys: $BENCH_REPLAY_KEYS per implementation"
	psql_q <<SQL
INSERT INTO raw_operations (key, state, result)
	SELECT 'r' || g, 'succeeded', '{"ok": true}' FROM generate_series(1, $BENCH_REPLAY_KEYS) g;
SELECT count(agentretry.complete(k, (agentretry.claim(k, a)).lease_token, '{"ok": true}'))
	FROM (SELECT 'r' || g AS k, '{"to": "ops@example.com", "amount": 42}'::jsonb AS a
		  FROM generate_series(1, $BENCH_REPLAY_KEYS) g) s;
SQL
	replay_tables="agentretry.operations raw_operations"
fi

if has_part core; then
	echo "setting up core"
	psql_q <<SQL
\i $here/plpgsql_reference.sql
-- the side effect of pattern A, shared by the three implementations
CREATE TABLE bench_effects (key text PRIMARY KEY, amount integer NOT NULL);

SELECT count(plpgsql_ref.complete(k, (plpgsql_ref.claim(k, a)).lease_token, '{"ok": true}'))
	FROM (SELECT 'r' || g AS k, '{"to": "ops@example.com", "amount": 42}'::jsonb AS a
		  FROM generate_series(1, $BENCH_REPLAY_KEYS) g) s;
SQL
	replay_tables="$replay_tables plpgsql_ref.operations"
fi

if [ -n "$replay_tables" ]; then
	# the replay keys must all replay, or the replay workload measures something else
	for t in $replay_tables; do
		n=$(psql_q -At -c "SELECT count(*) FROM $t WHERE state = 'succeeded' AND key LIKE 'r%'")
		if [ "$n" != "$BENCH_REPLAY_KEYS" ]; then
			echo "setup failed: $t has $n succeeded replay keys, expected $BENCH_REPLAY_KEYS" >&2
			exit 1
		fi
	done
fi

if has_part cycle || has_part budget; then
	echo "setting up cycle (pool: $BENCH_CYCLE_POOL due retries per implementation)"
	# bench_retry: every failure before execution is retried at once, and
	# a key never runs out of attempts (each fails once in the cycle).
	# The pool: a pick-up sees the due rows committed when its statement
	# began, and while one client waits for a CPU the others may lease all
	# of them (at 15000 cycles/s, a hundred take 7 ms); a thousand keep
	# the pick-up from coming back empty, which aborts the pgbench client.
	psql_q <<SQL
SELECT name AS registered FROM agentretry.register_tool('bench_retry', 'idempotent', 'write',
	max_attempts => 1000, base_delay => '0', max_delay => '0');
INSERT INTO raw_retries (key, state, next_at)
	SELECT 'p' || g, 'retry_wait', now() FROM generate_series(1, $BENCH_CYCLE_POOL) g;
SELECT count(agentretry.fail(k, (agentretry.claim(k, a, 'bench_retry')).lease_token,
							 'transient', 'pre_execution'))
	FROM (SELECT 'p' || g AS k, '{"to": "ops@example.com", "amount": 42}'::jsonb AS a
		  FROM generate_series(1, $BENCH_CYCLE_POOL) g) s;
SQL
	# the pool must be due, or claim_due finds nothing and pgbench aborts
	for q in "agentretry.operations WHERE state = 'retry_wait' AND next_attempt_at <= now()" \
		"raw_retries WHERE state = 'retry_wait' AND next_at <= now()"; do
		n=$(psql_q -At -c "SELECT count(*) FROM $q")
		if [ "$n" != "$BENCH_CYCLE_POOL" ]; then
			echo "setup failed: $n due retries in $q, expected $BENCH_CYCLE_POOL" >&2
			exit 1
		fi
	done
fi

if has_part runs; then
	echo "setting up runs: one run per client"
	psql_q -c "SELECT count(agentretry.start_run('bench-run-' || c, workflow_version => 'bench'))
		FROM generate_series(0, $BENCH_CLIENTS - 1) c" >/dev/null
fi

if has_part tenancy; then
	echo "setting up tenancy: role bench_agent"
	psql_q -c "DO \$\$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_agent') THEN
			CREATE ROLE bench_agent LOGIN IN ROLE agentretry_agent;
		END IF; END \$\$" >/dev/null
fi

if pgbench_parts; then
	psql_q -c "VACUUM ANALYZE"
fi

# The tenancy part: the agent role bench_agent runs claim -> complete
# without naming a tenant, with no membership at all (single-tenant, the
# check skipped) and as the member of tenant "default" while other roles
# hold 999 memberships of other tenants (the check made, from the
# backend's cache).  The memberships are added before the run and
# removed after it.
tenancy_set() {
	psql_q -c "DO \$\$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_other') THEN
			CREATE ROLE bench_other;
		END IF; END \$\$" >/dev/null
	psql_q -c "SELECT count(agentretry.add_tenant_member('bench_agent', 'default'))" >/dev/null
	psql_q -c "SELECT count(agentretry.add_tenant_member('bench_other', 'tenant-' || g))
		FROM generate_series(1, 999) g" >/dev/null
}
tenancy_drop() {
	psql_q -c "DELETE FROM agentretry.tenant_members" >/dev/null
}

# The budget part runs the retry cycle of the agentretry side three times:
# with no budget ("none"); with every retry debiting the tenant's bucket
# ("tenant"); and with every retry debiting three budgets of the tenant
# ("budgets": the tenant bucket, a bucket for the owner of the failing
# attempt, and a ratio budget on the tool, which also counts every first
# attempt).  All are sized never to deny, so that the cost measured is that
# of the ledger.  Set before each run (full), dropped after it.
budgets_set() {
	psql_q -c "SELECT agentretry.set_budget('default', 'tenant', 'default', capacity => 1e9, refill_per_sec => 1e6, stripes => 8)" >/dev/null
	[ "$1" = tenant ] && return
	psql_q -c "SELECT count(*) FROM (VALUES
		(agentretry.set_budget('default', 'user', current_user, capacity => 1e9, refill_per_sec => 1e6, stripes => 8)),
		(agentretry.set_budget('default', 'tool', 'bench_retry', ratio => 10, ratio_floor => 1000000, stripes => 8))) b" >/dev/null
}
budgets_drop() {
	psql_q -c "DELETE FROM agentretry.budgets" >/dev/null
}

# The stats part: what agentretry recorded of a run, from stats_counts
# (executions for claim -> complete, replays for replay).  Each session
# writes its counts about once a second, from within its next call, so a
# run's last second or so of counts is not written: the defaults count
# most of a run's calls, never all; track_stats off counts none.
stats_counter_of() {
	case $1 in
		stats) echo executions ;;
		stats_replay) echo replays ;;
	esac
}
stats_counted() {
	psql_q -At -c "SELECT coalesce(sum($1), 0) FROM agentretry.stats_counts"
}

# one pgbench run; appends "workload sync impl round tps build" to $runs
run_one() {
	local workload=$1 sync=$2 impl=$3 round=$4
	local log=$logdir/${workload}_${sync}_${impl}_${round}.log
	local tps build counter="" before=0 done_n got

	local script=$here/${workload}_${impl}.pgbench
	local options="-c synchronous_commit=$sync"
	local user=postgres

	case $workload/$impl in
		budget/*)
			script=$here/cycle_agentretry.pgbench
			[ "$impl" != none ] && budgets_set "$impl"
			;;
		stats/*) script=$here/stats_claim_complete.pgbench ;;
		stats_replay/raw) script=$here/replay_raw.pgbench ;;
		stats_replay/*) script=$here/replay_agentretry.pgbench ;;
		receipt/without) script=$here/stats_claim_complete.pgbench ;;
		receipt/with) script=$here/receipt_claim_complete.pgbench ;;
		tenancy/*)
			script=$here/runs_plain.pgbench
			user=bench_agent
			[ "$impl" = members ] && tenancy_set
			;;
	esac
	# the stats part's "off": nothing recorded (trace_all is off at the
	# defaults too); track_stats is superuser-settable (PGC_SUSET), and
	# the bench connects as a superuser
	case $workload/$impl in
		stats/off | stats_replay/off) options="$options -c agentretry.track_stats=off" ;;
	esac
	case $workload/$impl in
		stats/* | stats_replay/defaults | stats_replay/off)
			counter=$(stats_counter_of "$workload")
			before=$(stats_counted "$counter")
			;;
	esac
	psql_q -c CHECKPOINT
	build=$(so_sum)
	if ! PGOPTIONS="$options" pgbench -n -M prepared -U "$user" \
		-c "$BENCH_CLIENTS" -j "$BENCH_THREADS" -T "$BENCH_SECONDS" \
		-D replay_keys="$BENCH_REPLAY_KEYS" \
		-f "$script" "$db" >"$log" 2>&1; then
		echo "pgbench failed for $workload/$impl (synchronous_commit=$sync):" >&2
		cat "$log" >&2
		exit 1
	fi
	if ! grep -q '^number of failed transactions: 0 ' "$log"; then
		echo "transactions failed in $workload/$impl (synchronous_commit=$sync):" >&2
		cat "$log" >&2
		exit 1
	fi
	[ "$workload" = budget ] && budgets_drop
	[ "$workload" = tenancy ] && tenancy_drop
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$log")
	[ -n "$tps" ] || { echo "no tps in $log" >&2; exit 1; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$sync" "$impl" "$round" "$tps" "$build" >>"$runs"
	printf '  %-12s sync=%-3s %-10s round %s: %10.1f tps\n' "$workload" "$sync" "$impl" "$round" "$tps"
	if [ -n "$counter" ]; then
		# what was counted against the calls made (pgbench's transactions:
		# one claim -> complete, or one replay, each)
		done_n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*$/\1/p' "$log")
		got=$(($(stats_counted "$counter") - before))
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$sync" "$impl" "$round" "$counter" "$got" "$done_n" >>"$counted"
		if [ "$impl" = off ] && [ "$got" != 0 ]; then
			echo "agentretry.track_stats=off still counted $got $counter in $workload/$impl (synchronous_commit=$sync)" >&2
			exit 1
		fi
		if [ "$impl" = defaults ] && [ "$got" -le 0 ]; then
			echo "nothing counted ($counter) in $workload/$impl (synchronous_commit=$sync): are stats at their defaults?" >&2
			exit 1
		fi
	fi
}

: >"$runs"
: >"$counted"
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
if [ -n "${workloads// /}" ]; then
	total=0
	for _ in $BENCH_SYNC; do
		for workload in $workloads; do
			for _ in $(impls_of "$workload"); do total=$((total + 1)); done
		done
	done
	echo "running $((total * BENCH_ROUNDS)) pgbench runs of ${BENCH_SECONDS} s each"
fi
for sync in $BENCH_SYNC; do
	for workload in $workloads; do
		read -r -a impls <<<"$(impls_of "$workload")"
		for ((round = 1; round <= BENCH_ROUNDS; round++)); do
			order=("${impls[@]}")
			if ! ((round % 2)); then
				for ((i = 0; i < ${#impls[@]}; i++)); do
					order[i]=${impls[${#impls[@]} - 1 - i]}
				done
			fi
			for impl in "${order[@]}"; do
				run_one "$workload" "$sync" "$impl" "$round"
			done
		done
	done
done

# The sweep: one database per size, each with agentretry.operations filled
# by sweep_data.sql (reconcile's operations included, reconciled: the
# sweep finds none of them due, whether or not the reconcile part runs).
# A round resets the due rows of a size and times one
# sweep(BENCH_SWEEP_DUE) from the client (psql's \timing: the call and its
# commit).  Before the reset the session calls sweep once, so that the
# timed call measures the work on the rows and not the preparation of its
# plans and the loading of catalogs, the same at any size; after the reset,
# VACUUM and CHECKPOINT leave every round the same table to work on.
# Autovacuum is off for these tables: the VACUUM of each round does its
# work at a time that is not measured.
: >"$sweeps"
table_sizes=()
sweep_sizes=()
table_parts && read -r -a table_sizes <<<"$BENCH_SWEEP_SIZES"
has_part sweep && sweep_sizes=("${table_sizes[@]}")
sweep_db() {
	echo "bench_sweep_$1"
}
sweep_facts=""
for size in "${table_sizes[@]}"; do
	echo "setting up the tables of sweep and reconcile: $size operations, $BENCH_SWEEP_DUE due for the sweep, $BENCH_SWEEP_WAITING in flight not due, $BENCH_RECONCILE_DUE to make due for reconcile"
	t0=$(date +%s)
	psql_q -c "CREATE DATABASE $(sweep_db "$size")"
	if ! db=$(sweep_db "$size") psql_q >"$logdir/sweep_setup_$size.log" 2>&1 <<SQL; then
CREATE EXTENSION agentretry;
ALTER TABLE agentretry.operations SET (autovacuum_enabled = off);
\i $here/sweep_data.sql
SELECT sweep_bench_load($size, $BENCH_SWEEP_DUE, $BENCH_SWEEP_WAITING, $BENCH_RECONCILE_DUE);
VACUUM ANALYZE agentretry.operations;
CHECKPOINT;
SQL
		echo "setup failed for the sweep and reconcile on $size operations:" >&2
		cat "$logdir/sweep_setup_$size.log" >&2
		exit 1
	fi
	n=$(db=$(sweep_db "$size") psql_q -At -c "SELECT count(*) FROM agentretry.operations")
	if [ "$n" != "$size" ]; then
		echo "setup failed: $(sweep_db "$size") has $n operations, expected $size" >&2
		exit 1
	fi
	mb=$(db=$(sweep_db "$size") psql_q -At -c "SELECT pg_total_relation_size('agentretry.operations') / 1048576")
	sweep_facts="$sweep_facts $size: $mb MB, loaded in $(($(date +%s) - t0)) s;"
done

# what one sweep of the due rows must report: a third of them each
# expired, dead-lettered and purged (the purge takes the remainder)
third=$((BENCH_SWEEP_DUE / 3))
sweep_expect="$third|$third|$((BENCH_SWEEP_DUE - 2 * third))|0|f"

sweep_one() {
	local size=$1 round=$2
	local log=$logdir/sweep_${size}_${round}.log
	local got ms

	if ! psql -X -q -At -v ON_ERROR_STOP=1 -d "$(sweep_db "$size")" >"$log" 2>&1 <<SQL; then
SELECT FROM agentretry.sweep(1);
SELECT FROM sweep_bench_due($BENCH_SWEEP_DUE);
TRUNCATE agentretry.events;
VACUUM agentretry.operations;
CHECKPOINT;
\\timing on
SELECT 'sweep', leases_expired, deadlines_exceeded, operations_purged, events_purged, more
	FROM agentretry.sweep($BENCH_SWEEP_DUE);
SQL
		echo "sweep failed on $size operations:" >&2
		cat "$log" >&2
		exit 1
	fi
	got=$(sed -n 's/^sweep|//p' "$log")
	if [ "$got" != "$sweep_expect" ]; then
		echo "sweep on $size operations did other work than expected (expired|dead-lettered|purged|events|more):" >&2
		echo "  expected $sweep_expect, got $got" >&2
		exit 1
	fi
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*$/\1/p' "$log" | tail -1)
	[ -n "$ms" ] || { echo "no time in $log" >&2; exit 1; }
	printf '%s\t%s\t%s\t%s\n' "$size" "$round" "$ms" "$(so_sum)" >>"$sweeps"
	printf '  sweep %11s operations round %s: %10.1f ms\n' "$size" "$round" "$ms"
}

if [ ${#sweep_sizes[@]} -gt 0 ]; then
	echo "running $((${#sweep_sizes[@]} * BENCH_SWEEP_ROUNDS)) timed sweeps of $BENCH_SWEEP_DUE due operations"
fi
for ((round = 1; round <= BENCH_SWEEP_ROUNDS && ${#sweep_sizes[@]} > 0; round++)); do
	order=("${sweep_sizes[@]}")
	if ! ((round % 2)); then
		for ((i = 0; i < ${#sweep_sizes[@]}; i++)); do
			order[i]=${sweep_sizes[${#sweep_sizes[@]} - 1 - i]}
		done
	fi
	for size in "${order[@]}"; do
		sweep_one "$size" "$round"
	done
done

# Reconcile: in the sweep's databases, once the sweep is done with them.  A
# round puts the reconcile operations back due (reconcile_bench_rows: a mix
# of successes after retries, successes with receipts, some of them
# duplicated, and verifications past the stale threshold; most of the
# table is settled, reconcile_at NULL), empties the anomalies, and times
# the calls of reconcile(BENCH_RECONCILE_BATCH) that drain them, one
# transaction each as a job calling it in a loop would (psql's \timing of
# each call and its commit, summed).  As in the sweep, the session calls
# reconcile once before the reset (its plans prepared, nothing due) and
# VACUUM and CHECKPOINT run before the timed calls.  What the drain read
# of agentretry.operations comes from the statistics views, flushed before
# and after it: sequential scans, and heap blocks read or hit (against the
# table's size), so that a plan that reads the whole table shows.
: >"$reconciles"
reconcile_sizes=()
has_part reconcile && reconcile_sizes=("${table_sizes[@]}")
reconcile_calls=$(((BENCH_RECONCILE_DUE + BENCH_RECONCILE_BATCH - 1) / BENCH_RECONCILE_BATCH))
reconcile_expect=""
if [ ${#reconcile_sizes[@]} -gt 0 ]; then
	reconcile_expect=$(db=$(sweep_db "${reconcile_sizes[0]}") psql_q -At -c "SELECT reconcile_bench_expect($BENCH_RECONCILE_DUE)")
fi

# the reads of operations so far, labelled $1 (the session's own counts
# flushed first)
reconcile_stat_sql() {
	cat <<SQL
SELECT pg_stat_force_next_flush();
SELECT '$1', t.seq_scan, io.heap_blks_read + io.heap_blks_hit
	FROM pg_stat_user_tables t JOIN pg_statio_user_tables io USING (relid)
	WHERE relid = 'agentretry.operations'::regclass;
SQL
}

reconcile_one() {
	local size=$1 round=$2
	local log=$logdir/reconcile_${size}_${round}.log
	local got found left ms seq blocks pages

	if ! psql -X -q -At -v ON_ERROR_STOP=1 -d "$(sweep_db "$size")" >"$log" 2>&1 <<SQL; then
SELECT 'warm', agentretry.reconcile($BENCH_RECONCILE_BATCH);
SELECT FROM reconcile_bench_rows($BENCH_RECONCILE_DUE, true);
TRUNCATE agentretry.anomalies;
VACUUM agentretry.operations;
CHECKPOINT;
$(reconcile_stat_sql before)
\\timing on
$(for ((i = 0; i < reconcile_calls; i++)); do echo "SELECT 'reconcile', agentretry.reconcile($BENCH_RECONCILE_BATCH);"; done)
\\timing off
$(reconcile_stat_sql after)
SELECT 'left', count(*) FROM agentretry.operations WHERE reconcile_at IS NOT NULL;
SELECT 'found', reconcile_bench_found();
SELECT 'pages', relpages FROM pg_class WHERE oid = 'agentretry.operations'::regclass;
SQL
		echo "reconcile failed on $size operations:" >&2
		cat "$log" >&2
		exit 1
	fi
	if [ "$(sed -n 's/^warm|//p' "$log")" != 0 ]; then
		echo "reconcile on $size operations: something was due before the reset (see $log)" >&2
		exit 1
	fi
	left=$(sed -n 's/^left|//p' "$log")
	found=$(sed -n 's/^found|//p' "$log")
	got=$(sed -n 's/^reconcile|//p' "$log" | awk '{ n += $1 } END { print n + 0 }')
	if [ "$left" != 0 ] || [ "$found" != "$reconcile_expect" ]; then
		echo "reconcile on $size operations did other work than expected:" >&2
		echo "  $reconcile_calls calls of reconcile($BENCH_RECONCILE_BATCH) left $left of $BENCH_RECONCILE_DUE due" >&2
		echo "  anomalies (success_after_retry|duplicate_receipt|stale_verification|other): expected $reconcile_expect, got $found" >&2
		exit 1
	fi
	if [ "$got" != "$(echo "$reconcile_expect" | awk -F'|' '{ print $1 + $2 + $3 }')" ]; then
		echo "reconcile on $size operations returned $got anomalies in all, the table holds $found" >&2
		exit 1
	fi
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*$/\1/p' "$log" | awk '{ t += $1 } END { printf "%.3f", t }')
	seq=$(awk -F'|' '$1 == "before" { s = $2 } $1 == "after" { print $2 - s }' "$log")
	blocks=$(awk -F'|' '$1 == "before" { s = $3 } $1 == "after" { print $3 - s }' "$log")
	pages=$(sed -n 's/^pages|//p' "$log")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$round" "$ms" "$seq" "$blocks" "$pages" "$(so_sum)" >>"$reconciles"
	printf '  reconcile %11s operations round %s: %10.1f ms (%s calls; operations: %s seq scans, %s heap blocks of %s)\n' \
		"$size" "$round" "$ms" "$reconcile_calls" "$seq" "$blocks" "$pages"
}

# The plans of one reconcile call per size, with auto_explain (EXPLAIN
# ANALYZE with BUFFERS of each statement reconcile runs), outside the
# timed rounds: the operations due must be read through the partial index
# operations_reconcile (and the receipts looked up in operations_receipt),
# and nothing should read the table itself.  The call explained is the
# last of a drain, whose operations are successes of every kind (the
# verifications, due longest, go first).
reconcile_plans=""
reconcile_explain() {
	local size=$1
	local log=$logdir/reconcile_explain_$size.log
	local plan idx seq where

	if ! psql -X -q -At -v ON_ERROR_STOP=1 -d "$(sweep_db "$size")" >"$log" 2>&1 <<SQL; then
SELECT FROM reconcile_bench_rows($BENCH_RECONCILE_DUE, true);
TRUNCATE agentretry.anomalies;
VACUUM agentretry.operations;
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
SET auto_explain.log_min_duration = -1;
SELECT 'drained', agentretry.reconcile($BENCH_RECONCILE_BATCH) FROM generate_series(2, $reconcile_calls);
SET auto_explain.log_min_duration = 0;
SELECT 'explained', agentretry.reconcile($BENCH_RECONCILE_BATCH);
SET auto_explain.log_min_duration = -1;
SELECT 'left', count(*) FROM agentretry.operations WHERE reconcile_at IS NOT NULL;
SQL
		echo "reconcile (explained) failed on $size operations:" >&2
		cat "$log" >&2
		exit 1
	fi
	if [ "$(sed -n 's/^left|//p' "$log")" != 0 ]; then
		echo "reconcile (explained) on $size operations left operations due (see $log)" >&2
		exit 1
	fi
	# the plan of the statement on operations (the first one reconcile runs)
	plan=$(awk '
		/^NOTICE:/ || /^[a-z]+\|/ { inplan = 0 }
		/^Query Text: WITH due AS \( SELECT o\.tenant/ { if (!seen) { inplan = 1; seen = 1 }; next }
		inplan' "$log")
	[ -n "$plan" ] || { echo "no plan of reconcile's operations statement in $log" >&2; exit 1; }
	printf '%s\n' "$plan" >"$logdir/reconcile_plan_$size.txt"
	idx=$(printf '%s\n' "$plan" | grep -c 'Index Scan using operations_reconcile on operations' || true)
	seq=$(printf '%s\n' "$plan" | grep 'Seq Scan on operations' | grep -vc 'never executed' || true)
	# in which part of the statement (its CTEs: due, retried, stale, dup, done)
	where=$(printf '%s\n' "$plan" | awk '/^  CTE / { cte = $2 } /Seq Scan on operations/ && !/never executed/ { print "CTE " cte }' | sort -u | paste -sd, -)
	reconcile_plans="$reconcile_plans- $size operations: due operations read through operations_reconcile: $([ "$idx" -gt 0 ] && echo yes || echo NO); sequential scans of operations: $seq$([ "$seq" -eq 0 ] || echo " (in $where)")
"
	if [ "$seq" -gt 0 ]; then
		echo "warning: reconcile read the whole of agentretry.operations ($size rows) with a sequential scan: see $logdir/reconcile_plan_$size.txt" >&2
	fi
}

if [ ${#reconcile_sizes[@]} -gt 0 ]; then
	echo "running $((${#reconcile_sizes[@]} * BENCH_RECONCILE_ROUNDS)) timed drains of $BENCH_RECONCILE_DUE operations due for reconcile ($reconcile_calls calls of reconcile($BENCH_RECONCILE_BATCH) each)"
fi
for ((round = 1; round <= BENCH_RECONCILE_ROUNDS && ${#reconcile_sizes[@]} > 0; round++)); do
	order=("${reconcile_sizes[@]}")
	if ! ((round % 2)); then
		for ((i = 0; i < ${#reconcile_sizes[@]}; i++)); do
			order[i]=${reconcile_sizes[${#reconcile_sizes[@]} - 1 - i]}
		done
	fi
	for size in "${order[@]}"; do
		reconcile_one "$size" "$round"
	done
done
for size in "${reconcile_sizes[@]}"; do
	reconcile_explain "$size"
done

# Mean tps per cell, ratios and targets.  Targets (DESIGN.md section 8):
# claim -> complete and pattern A at least 0.85x the floor and 1.5x
# PL/pgSQL; replay at least 0.8x the floor.
table=""
if has_part core; then
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
fi

# The retry cycle: agentretry at least 0.7x the floor.  One pgbench
# transaction is one whole cycle (four commits on either side).
cycle_table=""
if has_part cycle; then
	cycle_table=$(awk -F'\t' -v syncs="$BENCH_SYNC" '
	$1 == "cycle" {
		sum[$2, $3] += $5; n[$2, $3]++
		if (!(($2, $3) in lo) || $5 < lo[$2, $3]) lo[$2, $3] = $5
		if ($5 > hi[$2, $3]) hi[$2, $3] = $5
	}
	function mean(s, i) { return sum[s, i] / n[s, i] }
	function spread(s, i) { return mean(s, i) > 0 ? 100 * (hi[s, i] - lo[s, i]) / mean(s, i) : 0 }
	END {
		print "| workload | sync commit | cycles/s raw | cycles/s agentretry | x raw | target | met? |"
		print "|---|---|---:|---:|---:|---|---|"
		ns = split(syncs, ss, " ")
		for (b = 1; b <= ns; b++) {
			s = ss[b]; r = mean(s, "raw"); e = mean(s, "agentretry"); vr = e / r
			met = (vr >= 0.70)
			printf "| retry cycle: claim, fail, claim_due, complete (four commits) | %s | %.0f | %.0f | %.2f | >= 0.70x raw | %s |\n",
				s, r, e, vr, met ? "yes" : "NO"
			spreads = spreads sprintf("cycle/%s: raw %.1f%%, agentretry %.1f%%; ",
				s, spread(s, "raw"), spread(s, "agentretry"))
		}
		print ""
		print "Spread between rounds ((max - min) / mean): " spreads
	}' "$runs")
fi

# Budgets: the cycle with every retry debiting the tenant's budgets at
# least 0.8x the same cycle without budgets.
budget_table=""
if has_part budget; then
	budget_table=$(awk -F'\t' -v syncs="$BENCH_SYNC" '
	$1 == "budget" { sum[$2, $3] += $5; n[$2, $3]++ }
	function mean(s, i) { return sum[s, i] / n[s, i] }
	END {
		print "| workload | sync commit | cycles/s no budget | cycles/s with budgets | x no budget | target | met? |"
		print "|---|---|---:|---:|---:|---|---|"
		ns = split(syncs, ss, " ")
		for (b = 1; b <= ns; b++) {
			s = ss[b]; r = mean(s, "none")
			e = mean(s, "tenant"); vr = e / r
			printf "| retry cycle, every retry debiting the tenant bucket | %s | %.0f | %.0f | %.2f | >= 0.80x | %s |\n",
				s, r, e, vr, (vr >= 0.80) ? "yes" : "NO"
			e = mean(s, "budgets"); vr = e / r
			printf "| retry cycle, every retry debiting the tenant, user and tool budgets | %s | %.0f | %.0f | %.2f | >= 0.80x | %s |\n",
				s, r, e, vr, (vr >= 0.80) ? "yes" : "NO"
		}
	}' "$runs")
fi

# Runs: claim -> complete of steps of a run at least 0.9x the same
# without runs.
runs_table=""
if has_part runs; then
	runs_table=$(awk -F'\t' -v syncs="$BENCH_SYNC" '
	$1 == "runs" { sum[$2, $3] += $5; n[$2, $3]++ }
	function mean(s, i) { return sum[s, i] / n[s, i] }
	END {
		print "| workload | sync commit | tps without runs | tps steps of a run | x without runs | target | met? |"
		print "|---|---|---:|---:|---:|---|---|"
		ns = split(syncs, ss, " ")
		for (b = 1; b <= ns; b++) {
			s = ss[b]; r = mean(s, "plain"); e = mean(s, "run"); vr = e / r
			printf "| claim -> complete, new keys, two commits, each a step of a run | %s | %.0f | %.0f | %.2f | >= 0.90x | %s |\n",
				s, r, e, vr, (vr >= 0.90) ? "yes" : "NO"
		}
	}' "$runs")
fi

# Tenancy: claim -> complete as the member of one tenant among a thousand
# memberships, against single-tenant: the core rows must not regress.
tenancy_table=""
if has_part tenancy; then
	tenancy_table=$(awk -F'\t' -v syncs="$BENCH_SYNC" '
	$1 == "tenancy" { sum[$2, $3] += $5; n[$2, $3]++ }
	function mean(s, i) { return sum[s, i] / n[s, i] }
	END {
		print "| workload | sync commit | tps single-tenant | tps with memberships | x single-tenant | target | met? |"
		print "|---|---|---:|---:|---:|---|---|"
		ns = split(syncs, ss, " ")
		for (b = 1; b <= ns; b++) {
			s = ss[b]; r = mean(s, "single"); e = mean(s, "members"); vr = e / r
			printf "| claim -> complete, new keys, two commits, an agent role without naming its tenant | %s | %.0f | %.0f | %.2f | >= 0.95x | %s |\n",
				s, r, e, vr, (vr >= 0.95) ? "yes" : "NO"
		}
	}' "$runs")
fi

# The sweep: median time per size and the ratio of each size to the
# smallest; target: the largest at most 1.3x the smallest.
sweep_table=""
if has_part sweep; then
	sweep_table=$(sort -t$'\t' -k1,1n -k3,3n "$sweeps" | awk -F'\t' -v sizes="$BENCH_SWEEP_SIZES" -v due="$BENCH_SWEEP_DUE" '
	{ t[$1, ++n[$1]] = $3 }
	function median(s, k) {
		k = n[s]
		return k % 2 ? t[s, (k + 1) / 2] : (t[s, k / 2] + t[s, k / 2 + 1]) / 2
	}
	END {
		print "| operations in the table | due | sweep ms, median | min | max | x smallest |"
		print "|---:|---:|---:|---:|---:|---:|"
		nz = split(sizes, zs, " ")
		base = median(zs[1])
		for (a = 1; a <= nz; a++) {
			z = zs[a]
			printf "| %d | %d | %.1f | %.1f | %.1f | %.2f |\n", z, due, median(z), t[z, 1], t[z, n[z]], median(z) / base
		}
		last = median(zs[nz]) / base
		met = (last <= 1.30)
		print ""
		printf "Sweep of %d due operations, %d vs %d operations: %.2fx (target <= 1.30x: %s)\n",
			due, zs[nz], zs[1], last, met ? "yes" : "NO"
	}')
fi

# What recording costs.  Targets: claim -> complete with events and stats
# at their defaults at least 0.9x the same with track_stats off; replay
# with replays counted at least 0.8x the raw primary-key read (the core
# part's floor).  Replay with track_stats off, and complete with a receipt
# against without, are reported with no target.
stats_table=""
if has_part stats; then
	stats_table=$(awk -F'\t' -v syncs="$BENCH_SYNC" '
	$1 == "stats" || $1 == "stats_replay" || $1 == "receipt" {
		sum[$1, $2, $3] += $5; n[$1, $2, $3]++
		if (!(($1, $2, $3) in lo) || $5 < lo[$1, $2, $3]) lo[$1, $2, $3] = $5
		if ($5 > hi[$1, $2, $3]) hi[$1, $2, $3] = $5
	}
	function mean(w, s, i) { return sum[w, s, i] / n[w, s, i] }
	function spread(w, s, i) { return mean(w, s, i) > 0 ? 100 * (hi[w, s, i] - lo[w, s, i]) / mean(w, s, i) : 0 }
	function row(label, w, s, floor, impl, target, goal,    r, e, v) {
		r = mean(w, s, floor); e = mean(w, s, impl); v = e / r
		printf "| %s | %s | %.0f | %.0f | %.2f | %s | %s |\n", label, s, r, e, v,
			(goal > 0 ? target : "none (reported)"), (goal > 0 ? (v >= goal ? "yes" : "NO") : "-")
	}
	END {
		print "| workload | sync commit | tps floor | tps measured | x floor | target | met? |"
		print "|---|---|---:|---:|---:|---|---|"
		ns = split(syncs, ss, " ")
		for (b = 1; b <= ns; b++) {
			s = ss[b]
			row("claim -> complete, new keys, two commits (B): events and stats at their defaults (trace_all off, track_stats on) vs track_stats off",
				"stats", s, "off", "defaults", ">= 0.90x", 0.90)
			row("replay (claim of a succeeded key), replays counted (defaults) vs the raw primary-key SELECT",
				"stats_replay", s, "raw", "defaults", ">= 0.80x raw", 0.80)
			row("replay, track_stats off vs the raw primary-key SELECT",
				"stats_replay", s, "raw", "off", "", 0)
			row("claim -> complete, new keys: complete with a receipt (due for reconcile, in operations_receipt) vs without",
				"receipt", s, "without", "with", "", 0)
			spreads = spreads sprintf("stats/%s: off %.1f%%, defaults %.1f%%; replay/%s: raw %.1f%%, defaults %.1f%%, off %.1f%%; receipt/%s: without %.1f%%, with %.1f%%; ",
				s, spread("stats", s, "off"), spread("stats", s, "defaults"),
				s, spread("stats_replay", s, "raw"), spread("stats_replay", s, "defaults"), spread("stats_replay", s, "off"),
				s, spread("receipt", s, "without"), spread("receipt", s, "with"))
		}
		print ""
		print "Spread between rounds ((max - min) / mean): " spreads
	}' "$runs")
	# what the defaults counted of the calls made (track_stats off: none)
	stats_table="$stats_table
$(awk -F'\t' '
	$3 == "defaults" {
		k = $1 " sync=" $2 ", " $5
		if (!(k in got)) keys[++nk] = k
		got[k] += $6; made[k] += $7
	}
	END {
		for (i = 1; i <= nk; i++) {
			k = keys[i]
			line = line sprintf("%s %d of %d (%.0f%%); ", k, got[k], made[k], made[k] ? 100 * got[k] / made[k] : 0)
		}
		print "Counted by stats() at the defaults, of the calls pgbench made (a session does not write its last second or so of counts): " line
		print "With track_stats off, nothing was counted (checked after every run)."
	}' "$counted")"
fi

# Reconcile: median time to drain the due operations per size and the
# ratio of each size to the smallest; target: the largest at most 1.3x the
# smallest.
reconcile_table=""
if has_part reconcile; then
	reconcile_table=$(sort -t$'\t' -k1,1n -k3,3n "$reconciles" | awk -F'\t' -v sizes="$BENCH_SWEEP_SIZES" \
		-v due="$BENCH_RECONCILE_DUE" -v calls="$reconcile_calls" -v batch="$BENCH_RECONCILE_BATCH" -v expect="$reconcile_expect" '
	{ t[$1, ++n[$1]] = $3; seq[$1] += $4; blocks[$1] += $5; pages[$1] = $6 }
	function median(s, k) {
		k = n[s]
		return k % 2 ? t[s, (k + 1) / 2] : (t[s, k / 2] + t[s, k / 2 + 1]) / 2
	}
	END {
		print "| operations in the table | due | reconcile(" batch ") calls | drain ms, median | min | max | x smallest | seq scans of operations per drain | heap blocks of operations read per drain (table: pages) |"
		print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		nz = split(sizes, zs, " ")
		base = median(zs[1])
		for (a = 1; a <= nz; a++) {
			z = zs[a]
			printf "| %d | %d | %d | %.1f | %.1f | %.1f | %.2f | %.1f | %.0f (%d) |\n", z, due, calls, median(z),
				t[z, 1], t[z, n[z]], median(z) / base, seq[z] / n[z], blocks[z] / n[z], pages[z]
		}
		last = median(zs[nz]) / base
		split(expect, e, "|")
		print ""
		printf "Anomalies recorded by every drain: %d success_after_retry, %d duplicate_receipt, %d stale_verification.\n", e[1], e[2], e[3]
		printf "Reconcile of %d due operations, %d vs %d operations: %.2fx (target <= 1.30x: %s)\n",
			due, zs[nz], zs[1], last, last <= 1.30 ? "yes" : "NO"
	}')
	reconcile_table="$reconcile_table

Plans of reconcile($BENCH_RECONCILE_BATCH) (auto_explain: EXPLAIN ANALYZE, BUFFERS of the statement on operations; in full in latest.md):
$reconcile_plans"
fi

# the build a run measured is the one installed when its connections opened
builds=$( (cut -f6 "$runs"; cut -f4 "$sweeps"; cut -f7 "$reconciles") | sort -u | tr '\n' ' ')
so_note="agentretry.so md5 $so_before"
if [ "$builds" != "$so_before " ] || [ "$(so_sum)" != "$so_before" ]; then
	so_note="$so_note, REPLACED during the run (runs measured: ${builds% }; see the last column below)"
	echo "warning: $so was replaced during the run" >&2
fi

db=postgres
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
facts=$(
	cat <<FACTS
- command: \`$command_line\`
- started: $started; finished: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(uname -srm), $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM
- server: $(psql_q -At -c "SELECT version()" | cut -d, -f1); shared_buffers $(psql_q -At -c "SHOW shared_buffers"), fsync on, server and pgbench on the same host
- agentretry: commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD -- src sql 2>/dev/null || echo " with uncommitted changes in src/ or sql/"), extension $(psql_q -At -c "SELECT extversion FROM pg_extension WHERE extname = 'agentretry'"), $so_note
FACTS
	if pgbench_parts; then
		echo "- pgbench: -M prepared -c $BENCH_CLIENTS -j $BENCH_THREADS -T $BENCH_SECONDS, $BENCH_ROUNDS round(s) per cell in mirrored order, mean tps; synchronous_commit set per connection (PGOPTIONS)"
	fi
	if has_part core || has_part stats; then
		echo "- replay: $BENCH_REPLAY_KEYS succeeded keys per implementation, uniformly random key per claim"
	fi
	if has_part stats; then
		echo "- stats: defaults = no agentretry setting (trace_all off, track_stats on); off = PGOPTIONS='-c agentretry.track_stats=off'; receipts one per key, the completions left due for reconcile"
	fi
	if has_part cycle; then
		echo "- retry cycle: $BENCH_CYCLE_POOL due retries seeded per implementation; tool bench_retry idempotent, base_delay and max_delay 0, max_attempts 1000"
	fi
	if has_part sweep; then
		echo "- sweep: $BENCH_SWEEP_ROUNDS round(s) per size in mirrored order, median; each table holds $BENCH_SWEEP_DUE due operations (a third each expired leases, retries past deadline and grace, terminal rows past TTL), $BENCH_SWEEP_WAITING in flight not due, $BENCH_RECONCILE_DUE of reconcile's operations (reconciled, not due), the rest succeeded with a receipt and not yet expired; synchronous_commit on; tables:$sweep_facts"
	fi
	if has_part reconcile; then
		echo "- reconcile: $BENCH_RECONCILE_ROUNDS round(s) per size in mirrored order, median of the summed times of $reconcile_calls calls of reconcile($BENCH_RECONCILE_BATCH), one transaction each; in the sweep's tables (none of the sweep's operations due for reconcile), $BENCH_RECONCILE_DUE operations made due for reconcile, per ten keys: 2 successes after retries (one with a receipt of its own), 3 successes with a receipt of their own, 1 with the receipt of a settled operation, a pair (one of them after a retry) sharing a receipt, 2 verifications past agentretry.verify_stale_after (bench/sweep_data.sql); the rest (settled, in flight) reconcile_at NULL; synchronous_commit on; tables:$sweep_facts"
	fi
)

report() {
	if [ -n "$table" ]; then
		echo "$table"
		echo
	fi
	if [ -n "$cycle_table" ]; then
		echo "$cycle_table"
		echo
	fi
	if [ -n "$budget_table" ]; then
		echo "$budget_table"
		echo
	fi
	if [ -n "$runs_table" ]; then
		echo "$runs_table"
		echo
	fi
	if [ -n "$tenancy_table" ]; then
		echo "$tenancy_table"
		echo
	fi
	if [ -n "$stats_table" ]; then
		echo "$stats_table"
		echo
	fi
	if [ -n "$sweep_table" ]; then
		echo "$sweep_table"
		echo
	fi
	if [ -n "$reconcile_table" ]; then
		echo "$reconcile_table"
	fi
	echo "$facts"
}

{
	echo "# agentretry benchmark"
	echo
	report
	if [ -s "$runs" ]; then
		echo
		echo "Per run (workload, synchronous_commit, implementation, round, tps, agentretry.so md5):"
		echo
		echo '```'
		cat "$runs"
		echo '```'
	fi
	if [ -s "$sweeps" ]; then
		echo
		echo "Per sweep (operations, round, ms, agentretry.so md5):"
		echo
		echo '```'
		cat "$sweeps"
		echo '```'
	fi
	if [ -s "$counted" ]; then
		echo
		echo "Counted by the stats part's runs (workload, synchronous_commit, setting, round, counter, counted, pgbench transactions):"
		echo
		echo '```'
		cat "$counted"
		echo '```'
	fi
	if [ -s "$reconciles" ]; then
		echo
		echo "Per drain (operations, round, ms, seq scans of operations, heap blocks of operations read or hit, table pages, agentretry.so md5):"
		echo
		echo '```'
		cat "$reconciles"
		echo '```'
		for size in "${reconcile_sizes[@]}"; do
			echo
			echo "Plan of reconcile($BENCH_RECONCILE_BATCH)'s statement on operations at $size operations (auto_explain, analyze and buffers; reconcile_explain_$size.log among the logs has all of its statements):"
			echo
			echo '```'
			cat "$logdir/reconcile_plan_$size.txt"
			echo '```'
		done
	fi
} >"$results/latest.md"

echo
report
echo
echo "written to $results/latest.md"
