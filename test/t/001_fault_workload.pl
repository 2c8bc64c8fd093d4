# Crash and fault test: many workers using agentretry against a provider
# that does not deduplicate, with injected timeouts before and after the
# side effect, workers that die holding a lease, a backend killed with
# pg_terminate_backend and an immediate server shutdown.  Afterwards there
# must be no duplicate side effect and no lost operation.  Then pattern A
# (claim, effect and complete in one transaction) across a second crash.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $n_ops = 200;
my $n_workers = 8;
my $workload_timeout = 90;

# The server listens only on a socket in a private directory, so a fixed
# port cannot collide with another cluster.
my $node = PostgreSQL::Test::Cluster->new('fault', port => 54336);
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
log_statement = none
log_min_messages = warning
agentretry.trace_all = on
});
$node->start;

sub query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

query(q{
CREATE EXTENSION agentretry;

-- 'send' (an email, a payment) must never happen twice; 'fetch' may repeat.
SELECT agentretry.register_tool('send', 'non_idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '100 ms',
	lease => '2 s');
SELECT agentretry.register_tool('fetch', 'idempotent', 'read',
	max_attempts => 50, base_delay => '10 ms', max_delay => '100 ms',
	lease => '2 s');

CREATE TABLE work_items (
	key text PRIMARY KEY,
	tool text NOT NULL,
	args jsonb NOT NULL
);

-- The external system: every call is a new action, committed on its own,
-- whatever became of the caller.  No unique constraint on purpose.
CREATE TABLE provider (
	id bigserial PRIMARY KEY,
	key text NOT NULL,
	tool text NOT NULL,
	token bigint NOT NULL,
	worker text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON provider (key);

-- Calls refused with AR002 because the lease was taken over meanwhile.
CREATE TABLE fenced (
	worker text NOT NULL,
	key text NOT NULL,
	token bigint NOT NULL,
	call text NOT NULL
);
});

query(qq{
INSERT INTO work_items
SELECT format('op-%s', i), CASE WHEN i % 2 = 0 THEN 'send' ELSE 'fetch' END,
	   jsonb_build_object('n', i, 'to', format('user%s\@example.com', i))
  FROM generate_series(1, $n_ops) i;
});

# How a worker records an outcome.  A lease taken over while the worker was
# slow makes the call fail with AR002; that is the fencing working, not an
# error of the worker.
query(q{
CREATE FUNCTION record_outcome(worker text, k text, tok bigint, what text, pid bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	CASE what
	WHEN 'complete' THEN
		PERFORM agentretry.complete(k, tok, jsonb_build_object('provider_id', pid));
	WHEN 'timeout_before' THEN
		PERFORM agentretry.fail(k, tok, 'transient', 'pre_execution', 'timeout');
	WHEN 'timeout_after' THEN
		PERFORM agentretry.fail(k, tok, 'ambiguous', 'post_execution', 'timeout');
	WHEN 'http_503_after' THEN
		PERFORM agentretry.fail(k, tok, 'transient', 'post_execution', 'http_503');
	WHEN 'release' THEN
		PERFORM agentretry.release(k, tok);
	WHEN 'resolve' THEN
		PERFORM agentretry.resolve(k, tok, pid IS NOT NULL,
			CASE WHEN pid IS NOT NULL THEN jsonb_build_object('provider_id', pid) END);
	END CASE;
EXCEPTION WHEN SQLSTATE 'AR002' THEN
	INSERT INTO fenced VALUES (worker, k, tok, what);
END
$$;
});

# One worker: pattern B for run_for, each step in its own transaction.  The
# fault of a lease is a function of key and fencing token, so each key meets
# the same faults in every run.  While it holds a lease the worker says so
# in application_name, for the test to find a backend to kill.
query(q{
CREATE PROCEDURE fault_worker(worker text, run_for interval)
LANGUAGE plpgsql AS $$
DECLARE
	stop_at timestamptz := clock_timestamp() + run_for;
	k text;
	t text;
	a jsonb;
	c agentretry.claim_result;
	f int;
	pid bigint;
BEGIN
	WHILE clock_timestamp() < stop_at LOOP
		-- like a retry queue: claimable keys first, busy and waiting ones last
		SELECT w.key, w.tool, w.args INTO k, t, a
		  FROM work_items w
		  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = w.key
		 WHERE o.state IS NULL OR o.state NOT IN ('succeeded', 'dead', 'cancelled')
		 ORDER BY coalesce(o.lease_expires_at, o.next_attempt_at, '-infinity') > clock_timestamp(),
				  random()
		 LIMIT 1;
		EXIT WHEN NOT FOUND;

		SELECT * INTO c FROM agentretry.claim(k, a, t, owner => worker);
		IF c.outcome IN ('busy', 'wait') THEN
			COMMIT;
			PERFORM pg_sleep(0.02);
			CONTINUE;
		ELSIF c.outcome IN ('replay', 'dead') THEN
			COMMIT;
			CONTINUE;
		ELSIF c.outcome NOT IN ('execute', 'verify') THEN
			RAISE EXCEPTION 'unexpected claim outcome % for %', c.outcome, k;
		END IF;
		PERFORM set_config('application_name',
						   format('%s holding %s %s', worker, k, c.lease_token), false);
		COMMIT;

		f := ('x' || substr(md5(k || ':' || c.lease_token), 1, 7))::bit(28)::int % 100;
		IF c.outcome = 'execute' THEN
			IF f < 10 THEN
				PERFORM record_outcome(worker, k, c.lease_token, 'timeout_before', NULL);
			ELSIF f < 14 THEN
				PERFORM record_outcome(worker, k, c.lease_token, 'release', NULL);
			ELSIF f < 18 THEN
				NULL;			-- dies before acting: the lease lapses
			ELSE
				PERFORM pg_sleep(0.01);
				-- a careful client does not start an action on a lease about
				-- to expire, or a verifier could look before the action lands
				pid := NULL;
				INSERT INTO provider (key, tool, token, worker)
				SELECT k, t, c.lease_token, worker
				 WHERE clock_timestamp() < c.lease_expires_at - interval '1 s'
				RETURNING id INTO pid;
				COMMIT;
				IF pid IS NULL THEN
					PERFORM record_outcome(worker, k, c.lease_token, 'release', NULL);
				ELSIF f < 30 THEN
					PERFORM record_outcome(worker, k, c.lease_token, 'timeout_after', NULL);
				ELSIF f < 36 THEN
					PERFORM record_outcome(worker, k, c.lease_token, 'http_503_after', NULL);
				ELSIF f < 42 THEN
					NULL;		-- dies after acting: the lease lapses
				ELSIF f < 46 THEN
					-- stalls past its lease, then reports: fenced off if
					-- another worker took the operation over meanwhile
					PERFORM pg_sleep(3);
					PERFORM record_outcome(worker, k, c.lease_token, 'complete', pid);
				ELSE
					PERFORM record_outcome(worker, k, c.lease_token, 'complete', pid);
				END IF;
			END IF;
		ELSE
			IF f < 15 THEN
				NULL;			-- dies while verifying: the lease lapses
			ELSE
				SELECT min(id) INTO pid FROM provider WHERE key = k;
				PERFORM record_outcome(worker, k, c.lease_token, 'resolve', pid);
			END IF;
		END IF;
		PERFORM set_config('application_name', worker, false);
		COMMIT;
	END LOOP;
END
$$;
});

# ---------------------------------------------------------------------------
# Pattern B workload
# ---------------------------------------------------------------------------
my %workers;
my @worker_errors;
my $worker_runs = 0;
my $kills = 0;

sub start_worker
{
	my ($name) = @_;
	my $w = { out => '', err => '' };
	$w->{h} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=$name",
			'-c', "CALL fault_worker('$name', '$workload_timeout s')"
		],
		'<', \undef, '>', \$w->{out}, '2>', \$w->{err});
	$workers{$name} = $w;
	$worker_runs++;
	return;
}

# Collect workers that ended; with $restart, start again those that lost
# their connection (the others ran out of work).
sub reap_workers
{
	my ($restart) = @_;
	foreach my $name (sort keys %workers)
	{
		my $w = $workers{$name};
		if ($w->{h}->pumpable)
		{
			$w->{h}->pump_nb;
			next if $w->{h}->pumpable;
		}
		my $ok = $w->{h}->finish;
		push @worker_errors, split(/\n/, $w->{err});
		delete $workers{$name};
		start_worker($name) if $restart && !$ok;
	}
	return;
}

# Wait for every worker to end by itself.
sub wait_workers
{
	my $until = time + 60;
	while (%workers && time < $until)
	{
		reap_workers(0);
		usleep(50_000);
	}
	die 'workers did not end' if %workers;
	return;
}

sub remaining
{
	return query(q{
SELECT count(*) FROM work_items w
  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = w.key
 WHERE o.state IS NULL OR o.state NOT IN ('succeeded', 'dead', 'cancelled')});
}

# Terminate a backend while it holds an execution lease it has not recorded
# (it sleeps just before acting, and nowhere else under a holding name).
# Returns (key, token) when that lease was still live and unrecorded once
# the backend was gone, else nothing.
sub kill_lease_holder
{
	my $row = query(q{
SELECT application_name, pg_terminate_backend(pid, 10000)
  FROM pg_stat_activity
 WHERE application_name LIKE 'w% holding %' AND wait_event = 'PgSleep'
 LIMIT 1});
	return () if $row eq '';
	my ($app, $terminated) = split /\|/, $row;
	my (undef, undef, $key, $token) = split / /, $app;
	$kills++ if $terminated eq 't';
	my $state = query(qq{
SELECT state, lease_token, lease_expires_at > clock_timestamp()
  FROM agentretry.operations WHERE tenant = 'default' AND key = '$key'});
	note "terminated $app: $terminated, now $state";
	return ($key, $token)
	  if $terminated eq 't' && $state eq "in_progress|$token|t";
	return ();
}

my $t0 = time;
start_worker("w$_") for 1 .. $n_workers;

my ($killed_key, $killed_token);
my $kill_tries = 0;
my $restarted = 0;
my @crash_leases;
my @crash_errors;
my $left = $n_ops;
while (1)
{
	reap_workers(1);
	$left = remaining();
	last if $left == 0;
	last if time - $t0 > $workload_timeout;

	if (!defined $killed_key && $left <= $n_ops * 0.9)
	{
		$kill_tries++;
		($killed_key, $killed_token) = kill_lease_holder();
	}
	if (   !$restarted
		&& $left <= $n_ops * 0.6
		&& query(q{
SELECT count(*) FROM pg_stat_activity
 WHERE application_name ~ '^w[0-9]+( |$)' AND state = 'active'}) == $n_workers)
	{
		# the crash hits every worker in the middle of its work
		$node->stop('immediate');
		# every worker loses its connection
		my $errors_before = @worker_errors;
		wait_workers();
		@crash_errors = @worker_errors[ $errors_before .. $#worker_errors ];
		$node->start;
		$restarted = 1;
		@crash_leases = split /\n/, query(q{
SELECT key || ' ' || state || ' ' || lease_token FROM agentretry.operations
 WHERE state IN ('in_progress', 'verify') AND lease_expires_at > clock_timestamp()
 ORDER BY key});
		start_worker("w$_") for 1 .. $n_workers;
	}
	usleep(100_000);
}
my $workload_secs = time - $t0;

# workers stop by themselves once nothing is left
wait_workers();

note sprintf('pattern B workload: %.1f s, %d worker runs, %d kill tries, %d kills',
	$workload_secs, $worker_runs, $kill_tries, $kills);
note 'fenced calls: ' . query(q{SELECT count(*) FROM fenced});
note 'leases orphaned by the crash: ' . join(', ', @crash_leases);

is($left, 0, 'every operation reached a terminal state in time');
ok(defined $killed_key,
	'a backend was terminated while it held an unrecorded execution lease');
is($restarted, 1, 'the server was shut down with mode immediate and restarted');
cmp_ok(scalar @crash_leases, '>', 0,
	'the crash left live leases of dead workers behind');

# The only errors are lost connections.
my @unexpected = grep {
	/\b(ERROR|FATAL|PANIC)\b|error:/
	  && !/FATAL:  terminating connection due to (administrator command|immediate shutdown command)/
} @worker_errors;
is(join("\n", @unexpected), '', 'workers failed only by losing their connections');
is(scalar(grep { /due to administrator command/ } @worker_errors),
	$kills, 'each terminated worker was told why');
is(scalar(grep { /connection to server was lost/ } @crash_errors),
	$n_workers, 'every worker lost its connection in the crash');
is($worker_runs, 2 * $n_workers + $kills,
	'workers reconnected after the kill and after the crash, and only then');

# Nothing lost: every key has an operation and all of them succeeded (with
# max_attempts 50 no fault sequence of this workload dead-letters one).
is( query(q{
SELECT coalesce(o.state::text, 'missing'), count(*) FROM work_items w
  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = w.key
 GROUP BY 1 ORDER BY 1}),
	"succeeded|$n_ops",
	'every operation succeeded: none lost, stuck or dead');

# No duplicate side effect of the non-idempotent tool.
is( query(q{
SELECT count(*) FROM (SELECT key FROM provider WHERE tool = 'send'
					   GROUP BY key HAVING count(*) > 1) d}),
	'0',
	'no send key has more than one provider row');
is( query(q{
SELECT count(*) FROM work_items w
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = w.key
 WHERE w.tool = 'send' AND o.state = 'succeeded'
   AND (SELECT count(*) FROM provider p WHERE p.key = w.key) <> 1}),
	'0',
	'every succeeded send operation has exactly one provider row');

# Every action is accounted for: it belongs to a succeeded operation, or to
# a dead one whose last failure left the outcome unknown, for an operator to
# reconcile (a send found not executed by its verifier must have no action;
# an idempotent fetch may have acted in any attempt).
is( query(q{
SELECT count(*) FROM provider p
  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = p.key
 WHERE o.key IS NULL
	OR NOT (o.state = 'succeeded'
			OR (o.state = 'dead'
				AND (p.tool = 'fetch'
					 OR o.last_failure_class = 'ambiguous'
					 OR (o.last_failure_class = 'transient'
						 AND o.last_failure_phase IS DISTINCT FROM 'pre_execution'))))}),
	'0',
	'every provider row belongs to a succeeded operation or a dead one of unknown outcome');
is( query(q{
SELECT count(*) FROM provider p
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = p.key
 WHERE o.state = 'dead'}),
	'0',
	'no action belongs to a dead operation in this workload');

# The receipt names the action that happened.
is( query(q{
SELECT count(*) FROM agentretry.operations o
 WHERE o.tenant = 'default' AND o.state = 'succeeded'
   AND NOT EXISTS (SELECT FROM provider p
					WHERE p.id = (o.result ->> 'provider_id')::bigint AND p.key = o.key)}),
	'0',
	'every receipt points at a provider row of its own key');

# An idempotent tool may act again after an ambiguous failure, but each
# lease acts at most once, and only under an execution lease.
is( query(q{
SELECT count(*) FROM (SELECT key, token FROM provider
					   GROUP BY key, token HAVING count(*) > 1) d}),
	'0',
	'no lease acted twice');
is( query(q{
SELECT count(*) FROM provider p
 WHERE NOT EXISTS (SELECT FROM agentretry.events e
					WHERE e.tenant = 'default' AND e.key = p.key
					  AND e.kind = 'claim' AND e.lease_token = p.token)}),
	'0',
	'every action was taken under an execution lease');

# Fencing tokens: one per lease issued, 1..n without gaps.
is( query(q{
SELECT count(*) FROM agentretry.operations o
  LEFT JOIN LATERAL (
	SELECT count(*) AS n, count(DISTINCT lease_token) AS nd,
		   min(lease_token) AS lo, max(lease_token) AS hi
	  FROM agentretry.events e
	 WHERE e.tenant = o.tenant AND e.key = o.key AND e.kind IN ('claim', 'verifying')) l ON true
 WHERE o.tenant = 'default'
   AND NOT (l.n = o.lease_token AND l.nd = l.n AND l.lo = 1 AND l.hi = o.lease_token)}),
	'0',
	'each operation\'s lease_token equals the number of leases issued, 1..n');
is( query(q{
SELECT count(*) FROM agentretry.operations o
 WHERE o.tenant = 'default'
   AND o.attempts <> (SELECT count(*) FILTER (WHERE kind = 'claim')
						   - count(*) FILTER (WHERE kind = 'release')
						FROM agentretry.events e
					   WHERE e.tenant = o.tenant AND e.key = o.key)}),
	'0',
	'attempts equal execution leases minus releases');
is( query(q{
SELECT count(*) FROM agentretry.operations o
 WHERE o.tenant = 'default' AND o.state = 'succeeded'
   AND (SELECT count(*) FROM agentretry.events e
		 WHERE e.tenant = o.tenant AND e.key = o.key
		   AND e.kind IN ('complete', 'resolve')) <> 1}),
	'0',
	'each success was recorded exactly once');

# A send completed by its worker was acted on under the completing lease; one
# resolved by a verifier was acted on under an earlier lease.
is( query(q{
SELECT count(*) FROM work_items w
  JOIN provider p ON p.key = w.key
  JOIN agentretry.events e ON e.tenant = 'default' AND e.key = w.key
							 AND e.kind IN ('complete', 'resolve')
 WHERE w.tool = 'send'
   AND NOT ((e.kind = 'complete' AND p.token = e.lease_token)
			OR (e.kind = 'resolve' AND p.token < e.lease_token))}),
	'0',
	'each send was acted on under the lease that completed it, or before its verification');

# Workers that stalled past their lease were fenced off, and their calls
# changed nothing.
cmp_ok(query(q{SELECT count(*) FROM fenced WHERE call = 'complete'}),
	'>', 0, 'a stalled worker\'s complete was refused with AR002');
is( query(q{
SELECT count(*) FROM fenced f
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = f.key
 WHERE f.token >= o.lease_token
	OR EXISTS (SELECT FROM agentretry.events e
				WHERE e.tenant = 'default' AND e.key = f.key
				  AND e.kind = 'complete' AND e.lease_token = f.token)}),
	'0',
	'every refused call held a superseded lease and recorded nothing');

# The killed backend's lease was taken over as an ambiguous failure, and
# so were the leases orphaned by the crash.
SKIP:
{
	skip 'no backend was killed', 1 unless defined $killed_key;
	is( query(qq{
SELECT count(*) FROM agentretry.events
 WHERE tenant = 'default' AND key = '$killed_key' AND code = 'lease_expired'
   AND failure_class = 'ambiguous' AND lease_token = $killed_token}),
		'1',
		'the lease of the terminated backend expired and was decided as ambiguous');
}
my $orphans = join(', ',
	map { my ($key, $state, $token) = split / /; "('$key', $token)" }
	  @crash_leases);
SKIP:
{
	skip 'the crash orphaned no lease', 1 unless @crash_leases;
	is( query(qq{
SELECT count(*) FROM (VALUES $orphans) c(key, token)
  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = c.key
 WHERE NOT (o.state = 'succeeded' AND o.lease_token > c.token)}),
		'0',
		'every lease orphaned by the crash was taken over before the operation succeeded');
}

# The faults were really injected (each kind at least once).
is( query(q{
SELECT bool_and(n > 0) FROM (VALUES
	((SELECT count(*) FROM agentretry.events WHERE kind = 'retry' AND code = 'timeout'
		AND failure_phase = 'pre_execution')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'verify' AND code = 'timeout')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'verify' AND code = 'http_503')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'retry' AND code = 'timeout'
		AND reason = 'idempotent_retry')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'verify' AND code = 'lease_expired')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'retry' AND code = 'lease_expired')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'resolve')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'retry'
		AND code = 'verified_not_executed')),
	((SELECT count(*) FROM agentretry.events WHERE kind = 'release'))) v(n)}),
	't',
	'every kind of fault happened during the workload');

# ---------------------------------------------------------------------------
# Pattern A across a crash: claim, effect and complete commit together or
# not at all.
# ---------------------------------------------------------------------------
my $n_keys = 1500;
query(q{
SELECT agentretry.register_tool('ledger', 'non_idempotent', 'write');
-- the side effect, in the same database; no unique constraint on purpose
CREATE TABLE effects (key text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON effects (key);
});

my $script = "$PostgreSQL::Test::Utils::tmp_check/pattern_a.pgbench";
PostgreSQL::Test::Utils::append_to_file(
	$script, qq{\\set n random(1, $n_keys)
BEGIN;
SELECT (outcome = 'execute')::int AS go, coalesce(lease_token, 0) AS tok
  FROM agentretry.claim('a-' || :n, jsonb_build_object('n', :n), 'ledger',
		in_transaction => true) \\gset
\\if :go
INSERT INTO effects (key) VALUES ('a-' || :n);
SELECT agentretry.complete('a-' || :n, :tok, '{"ok": true}');
\\endif
COMMIT;
});

# Three transactions claimed, acted and completed but not yet committed
# when the server goes down.
my @open;
foreach my $i (1 .. 3)
{
	my ($in, $out, $err) = (
		qq{BEGIN;
SELECT lease_token FROM agentretry.claim('a-open-$i', '{}', 'ledger', in_transaction => true);
INSERT INTO effects (key) VALUES ('a-open-$i');
SELECT agentretry.complete('a-open-$i', 1);
SELECT pg_sleep(300);
}, '', '');
	push @open,
	  IPC::Run::start(
		[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c', $in ],
		'<', \undef, '>', \$out, '2>', \$err);
}
$node->poll_query_until('postgres',
	q{SELECT count(*) = 3 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'open pattern A transactions did not start';

my ($pb_out, $pb_err) = ('', '');
my $pb_t0 = time;
my $pb = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '4', '-j', '2', '-T', '60', '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$pb_out, '2>', \$pb_err);
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 300 FROM agentretry.operations WHERE key LIKE 'a-%'})
  or die 'pgbench made no progress';
$node->stop('immediate');
$pb->finish;
$_->finish foreach @open;
my $pb_secs = time - $pb_t0;
$node->start;

cmp_ok($pb_secs, '<', 60, 'the crash cut the pgbench run short');
like($pb_err, qr/aborted|server closed the connection|terminating connection/,
	'pgbench clients lost their connections in the crash');

my $violations_sql = qq{
SELECT count(*) FROM (
	SELECT k.key, o.state, o.lease_token, o.attempts,
		   (SELECT count(*) FROM effects e WHERE e.key = k.key) AS effects
	  FROM (SELECT 'a-' || i AS key FROM generate_series(1, $n_keys) i
			UNION ALL SELECT 'a-open-' || i FROM generate_series(1, 3) i) k
	  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = k.key) s
 WHERE NOT ((s.state = 'succeeded' AND s.effects = 1 AND s.lease_token = 1 AND s.attempts = 1)
			OR (s.state IS NULL AND s.effects = 0))};

my $done_before = query(q{
SELECT count(*) FROM agentretry.operations WHERE key LIKE 'a-%' AND state = 'succeeded'});
cmp_ok($done_before, '>=', 300, 'pattern A operations committed before the crash survive');
is(query($violations_sql), '0',
	'after the crash each key has a succeeded operation with one effect, or neither');
is( query(q{
SELECT count(*) FROM agentretry.operations WHERE key LIKE 'a-open-%'}) . '/'
	  . query(q{SELECT count(*) FROM effects WHERE key LIKE 'a-open-%'}),
	'0/0',
	'uncommitted claims and effects vanished in the crash');
is( query(q{
SELECT count(*) FROM agentretry.operations WHERE key LIKE 'a-%' AND state <> 'succeeded'}),
	'0',
	'no pattern A operation is left in progress');

# Work continues after the restart: run every key once more, concurrently.
$node->command_ok(
	[
		'pgbench', '-n', '-c', '4', '-j', '2', '-t', '250', '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'pgbench runs pattern A again after the restart');
query(qq{
DO \$\$
DECLARE
	c agentretry.claim_result;
	k text;
BEGIN
	FOR k IN SELECT 'a-' || i FROM generate_series(1, $n_keys) i
			 UNION ALL SELECT 'a-open-' || i FROM generate_series(1, 3) i LOOP
		SELECT * INTO c FROM agentretry.claim(k, CASE WHEN k LIKE 'a-open-%' THEN '{}'
			ELSE jsonb_build_object('n', substr(k, 3)::int) END, 'ledger');
		IF c.outcome = 'execute' THEN
			INSERT INTO effects (key) VALUES (k);
			PERFORM agentretry.complete(k, c.lease_token, '{"ok": true}');
		ELSIF c.outcome <> 'replay' THEN
			RAISE EXCEPTION 'unexpected outcome % for %', c.outcome, k;
		END IF;
	END LOOP;
END
\$\$;
});
is( query(qq{
SELECT count(*) FROM agentretry.operations
 WHERE key LIKE 'a-%' AND state = 'succeeded' AND lease_token = 1 AND attempts = 1}),
	$n_keys + 3,
	'every pattern A key succeeded once in its first and only attempt');
is(query($violations_sql), '0', 'every pattern A key has exactly one effect');

$node->stop;
note sprintf('total: %.1f s', time - $t0);
done_testing();
