# The pattern-B trap, with real psycopg 3 workers (Debian's python3-psycopg,
# run by /usr/bin/python3) that get killed.
#
# Pattern B is claim (committed) -> act -> complete/fail.  psycopg 3 opens a
# transaction before the first statement unless autocommit is on, so a
# worker written naively keeps its claim uncommitted while it calls the
# provider; if it dies, the claim rolls back and the next worker executes
# again: a silent duplicate.  claim() and claim_due() therefore refuse
# (25001) to hand out a lease inside a transaction block that a BEGIN
# opened before the statement, unless in_transaction => true (pattern A)
# or agentretry.allow_uncommitted_leases = on.
#
#   1. the naive worker (psycopg defaults) is refused with 25001 and the
#      documented hint before it can act; nothing is stored.  With the
#      guard switched off (allow_uncommitted_leases) the same worker shows
#      the trap: its backend is terminated after the provider acted, the
#      claim is gone, the next worker executes again: two side effects;
#   2. the same worker with autocommit=True, killed (SIGKILL of the python
#      process) after the provider acted: once the 1 s lease has expired
#      the next claim answers verify, not execute; resolve(executed) ->
#      succeeded with exactly one side effect;
#   3. pattern A in psycopg's transaction with in_transaction => true: the
#      worker's backend is killed with SIGKILL before COMMIT, which makes
#      the postmaster restart everything (a real crash); neither the claim
#      nor the effect survives; the next worker executes once;
#   4. what is not refused: several statements in one query string, a
#      PL/pgSQL EXCEPTION block of an autocommit statement, a claim in a
#      procedure's transaction after its COMMIT (with or without an
#      EXCEPTION block), replay, busy, wait and verify inside BEGIN,
#      in_transaction => true and the GUC; what is (a DO block in BEGIN, a
#      claim in BEGIN through psql);
#   5. claim_due in a transaction: refused with a due retry, leases it with
#      in_transaction => true, zero rows and no error with nothing due;
#   6. "BEGIN; SELECT claim(...)" sent as one query string is refused once
#      the library is loaded in the session; refused calls count nothing in
#      stats().

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time usleep);

my $python = '/usr/bin/python3';
my $psycopg = `$python -c 'import psycopg; print(psycopg.__version__)' 2>/dev/null` // '';
chomp $psycopg;
if ($psycopg !~ /^3\./)
{
	my $policy = `apt-cache policy python3-psycopg 2>/dev/null` // '';
	plan skip_all => 'psycopg 3 is not importable by /usr/bin/python3, and no python3-psycopg package can be installed here'
	  unless $policy =~ /^\s*Candidate:\s*(?!\(none\))\S/m;
	plan tests => 1;
	fail('psycopg 3 is importable by /usr/bin/python3');
	diag('run test/setup.sh (it installs python3-psycopg), or apt-get install python3-psycopg');
	exit;
}
note "psycopg $psycopg";

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $t0 = time;

my $node = PostgreSQL::Test::Cluster->new('trap');
$node->init;
# Cluster.pm turns restart_after_crash off; scenario 3 needs the postmaster
# to reinitialize after a backend is killed.
$node->append_conf(
	'postgresql.conf', q{
restart_after_crash = on
log_min_messages = warning
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION agentretry;
CREATE ROLE app LOGIN;
GRANT agentretry_agent TO app;

-- send_email must never happen twice; its lease is the shortest allowed
SELECT count(*) FROM (
	SELECT agentretry.register_tool('send_email', 'non_idempotent', 'write', lease => '1 second')
	UNION ALL
	SELECT agentretry.register_tool('refund', 'non_idempotent', 'write')
	UNION ALL
	SELECT agentretry.register_tool('fetch', 'idempotent', 'read',
		base_delay => '10 ms', max_delay => '10 ms', jitter => 'none')
	UNION ALL
	SELECT agentretry.register_tool('lookup', 'idempotent', 'read')
	UNION ALL
	SELECT agentretry.register_tool('probe', 'non_idempotent', 'write')
	UNION ALL
	SELECT agentretry.register_tool('probe_due', 'idempotent', 'read',
		base_delay => '10 ms', max_delay => '10 ms', jitter => 'none')) r;

-- the external provider of pattern B: written on a connection of its own,
-- committed whatever becomes of the worker; no unique constraint on purpose
CREATE TABLE provider_calls (
	id bigserial PRIMARY KEY,
	key text NOT NULL,
	token bigint NOT NULL,
	worker text NOT NULL
);
-- the effect of pattern A: written in the worker's own transaction
CREATE TABLE local_effects (
	id bigserial PRIMARY KEY,
	key text NOT NULL,
	token bigint NOT NULL,
	backend int NOT NULL
);
GRANT SELECT, INSERT ON provider_calls, local_effects TO app;
GRANT USAGE ON provider_calls_id_seq, local_effects_id_seq TO app;

-- the SQLSTATE of a statement (an EXCEPTION block: for reads only)
CREATE FUNCTION sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN '00000';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;

CREATE TABLE do_outcomes (key text, outcome text, token bigint);
GRANT INSERT ON do_outcomes TO app;
});

# ---------------------------------------------------------------------------
# the worker: one pass of a pattern B (or, with --in-transaction, pattern A)
# worker written with psycopg 3, printing what happens as JSON lines
# ---------------------------------------------------------------------------
my $script = "$PostgreSQL::Test::Utils::tmp_check/009_worker.py";
open my $fh, '>', $script or die "$script: $!";
print $fh <<'PY';
import argparse
import json
import sys

import psycopg

p = argparse.ArgumentParser()
p.add_argument('--conninfo', required=True)
p.add_argument('--name', required=True)
p.add_argument('--mode', default='claim', choices=['claim', 'claim_due'])
p.add_argument('--key')
p.add_argument('--args', default='{}')
p.add_argument('--tool')
p.add_argument('--lease')
p.add_argument('--autocommit', action='store_true')
p.add_argument('--in-transaction', action='store_true')
p.add_argument('--allow-uncommitted', action='store_true')
p.add_argument('--hang', action='store_true',
               help='after acting, wait for a line on stdin before completing')
a = p.parse_args()


def say(event, **kw):
    kw['event'] = event
    print(json.dumps(kw, sort_keys=True), flush=True)


def tx(conn):
    return conn.info.transaction_status.name


conn = psycopg.connect(a.conninfo, application_name=a.name)
if a.autocommit:
    conn.autocommit = True
# the external provider: every call commits on its own
provider = psycopg.connect(a.conninfo, autocommit=True,
                           application_name=a.name + ' provider')
say('connected', pid=conn.info.backend_pid, autocommit=conn.autocommit,
    version=psycopg.__version__)

try:
    if a.allow_uncommitted:
        conn.execute("SET agentretry.allow_uncommitted_leases = on")
        if not conn.autocommit:
            conn.commit()
    leases = []
    if a.mode == 'claim':
        outcome, attempt, token = conn.execute(
            "SELECT outcome::text, attempt, lease_token FROM agentretry.claim("
            "key => %s, args => %s::jsonb, tool => %s, lease => %s::interval,"
            " owner => %s, in_transaction => %s)",
            (a.key, a.args, a.tool, a.lease, a.name, a.in_transaction)).fetchone()
        say('claimed', outcome=outcome, attempt=attempt, token=token, tx=tx(conn))
        if outcome == 'execute':
            leases.append((a.key, token))
        elif outcome == 'verify':
            # check the target system, then say what happened
            n = provider.execute("SELECT count(*) FROM provider_calls WHERE key = %s",
                                 (a.key,)).fetchone()[0]
            state = conn.execute(
                "SELECT agentretry.resolve(%s, %s, executed => %s, result => %s::jsonb)::text",
                (a.key, token, n > 0, json.dumps({'provider_calls': n}))).fetchone()[0]
            say('resolved', found=n, state=state, tx=tx(conn))
    else:
        rows = conn.execute(
            "SELECT key, attempt, lease_token FROM agentretry.claim_due("
            "owner => %s, max => 10, tools => %s::text[], lease => %s::interval,"
            " in_transaction => %s)",
            (a.name, [a.tool], a.lease, a.in_transaction)).fetchall()
        say('leased', rows=[list(r) for r in rows], tx=tx(conn))
        leases = [(k, t) for k, _, t in rows]
    for key, token in leases:
        if a.in_transaction:
            conn.execute("INSERT INTO local_effects (key, token, backend)"
                         " VALUES (%s, %s, pg_backend_pid())", (key, token))
        else:
            provider.execute("INSERT INTO provider_calls (key, token, worker)"
                             " VALUES (%s, %s, %s)", (key, token, a.name))
        say('acted', key=key, token=token, tx=tx(conn))
        if a.hang:
            sys.stdin.readline()
        conn.execute("SELECT agentretry.complete(%s, %s, %s::jsonb)",
                     (key, token, json.dumps({'by': a.name})))
    if not conn.autocommit:
        conn.commit()
    say('done', completed=[k for k, _ in leases], tx=tx(conn))
except psycopg.Error as e:
    say('error', cls=type(e).__name__, sqlstate=e.sqlstate,
        message=e.diag.message_primary, detail=e.diag.message_detail,
        hint=e.diag.message_hint, tx=tx(conn))
    sys.exit(3)
PY
close $fh;

my $json = JSON::PP->new->canonical;
my %workers;

# start a worker; options are the script's, without the dashes
sub start_worker
{
	my ($name, %o) = @_;
	my @cmd = ($python, $script, '--conninfo', $node->connstr('postgres') . ' user=app',
		'--name', $name);
	foreach my $opt (sort keys %o)
	{
		(my $flag = "--$opt") =~ tr/_/-/;
		if ($o{$opt} eq '1') { push @cmd, $flag; }
		else { push @cmd, $flag, $o{$opt}; }
	}
	my $w = { name => $name, in => '', out => '', err => '', events => [] };
	$w->{h} = IPC::Run::start(\@cmd, '<', \$w->{in}, '>', \$w->{out}, '2>', \$w->{err});
	$workers{$name} = $w;
	return $w;
}

# the worker's next event, or undef once it has ended without another
sub next_event
{
	my ($w) = @_;
	my $deadline = time + $timeout;
	while (1)
	{
		if ($w->{out} =~ s/^([^\n]*)\n//)
		{
			my $ev = $json->decode($1);
			push @{ $w->{events} }, $ev;
			return $ev;
		}
		if (!$w->{done} && !$w->{h}->pumpable)
		{
			$w->{ok} = $w->{h}->finish;
			$w->{result} = $w->{h}->full_result;
			$w->{done} = 1;
			next;
		}
		return undef if $w->{done};
		die "worker $w->{name}: no event in $timeout s; stderr: $w->{err}"
		  if time > $deadline;
		$w->{h}->pump_nb;
		usleep(10_000);
	}
}

# the events up to the worker's end
sub rest_events
{
	my ($w) = @_;
	my @evs;
	while (my $ev = next_event($w)) { push @evs, $ev; }
	diag("worker $w->{name} stderr: $w->{err}") if $w->{err} =~ /Traceback/;
	return @evs;
}

# run a worker to its end: its events by name (the last of each)
sub run_worker
{
	my ($name, %o) = @_;
	my $w = start_worker($name, %o);
	my %by = map { $_->{event} => $_ } rest_events($w);
	$by{_events} = join(' ', map { $_->{event} } @{ $w->{events} });
	$by{_exit} = $w->{result} >> 8;
	return \%by;
}

sub kill_worker
{
	my ($w) = @_;
	$w->{h}->signal('KILL');
	rest_events($w);
	return $w->{result} & 127;
}

sub query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# psql as app; -c sends the string as one query (several statements: one
# implicit transaction), otherwise the script goes through stdin statement
# by statement.  Returns stdout and the SQLSTATEs of the errors.
sub psql_app
{
	my ($sql, %o) = @_;
	my ($out, $err) = ('', '');
	my @cmd = ('psql', '-X', '-q', '-A', '-t', '-v', 'VERBOSITY=verbose',
		'-d', $node->connstr('postgres') . ' user=app');
	my $in;
	if ($o{one_query}) { push @cmd, '-c', $sql; }
	else { $in = $sql; }
	IPC::Run::run(\@cmd, '<', \$in, '>', \$out, '2>', \$err);
	chomp $out;
	my @states = $err =~ /^(?:ERROR|FATAL):  ([0-9A-Z]{5}):/mg;
	return { out => $out, err => $err, states => join(' ', @states) };
}

sub op_state
{
	my ($key) = @_;
	my $r = query(qq{
SELECT state || ' ' || attempts || ' ' || lease_token FROM agentretry.operations
 WHERE tenant = 'default' AND key = '$key'});
	return $r eq '' ? 'none' : $r;
}

sub provider_calls
{
	my ($key) = @_;
	return query(qq{SELECT count(*) FROM provider_calls WHERE key = '$key'});
}

sub local_effects
{
	my ($key) = @_;
	return query(qq{SELECT count(*) FROM local_effects WHERE key = '$key'});
}

sub lookup_state
{
	my ($key) = @_;
	return query(qq{SELECT sqlstate_of(\$\$SELECT agentretry.lookup('$key')\$\$)});
}

# wait until the worker's connections are gone from the server
sub wait_gone
{
	my ($name) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE '$name%'});
}

my $msg_claim =
  'claim() cannot lease inside a transaction block without in_transaction => true';
my $msg_due =
  'claim_due() cannot lease inside a transaction block without in_transaction => true';
my $hint =
  'Commit the claim before acting (autocommit), or pass in_transaction => true when the side effect commits in this same transaction.';

# ---------------------------------------------------------------------------
# 1. the naive worker: psycopg's defaults (autocommit False)
# ---------------------------------------------------------------------------
{
	my $r = run_worker('w1', key => 'mail-1', args => '{"to": "ann@example.com"}',
		tool => 'send_email');
	is($r->{connected}{autocommit}, JSON::PP::false, '1: the worker runs with psycopg\'s default, autocommit False');
	like($r->{connected}{version}, qr/^3\./, '1: the worker uses psycopg 3');
	is($r->{_events}, 'connected error', '1: the claim fails, the worker never acts');
	is($r->{error}{sqlstate}, '25001', '1: psycopg raises SQLSTATE 25001 (active_sql_transaction)');
	is($r->{error}{cls}, 'ActiveSqlTransaction', '1: as psycopg.errors.ActiveSqlTransaction');
	is($r->{error}{message}, $msg_claim, '1: the message names claim() and in_transaction');
	is($r->{error}{hint}, $hint, '1: the hint says to commit the claim first or pass in_transaction');
	like($r->{error}{detail}, qr/next claim executes it again/, '1: the detail says why');
	is($r->{error}{tx}, 'INERROR', '1: the error aborts the worker\'s transaction');
	is(lookup_state('mail-1'), 'AR003', '1: the operation does not exist afterwards (lookup: AR003)');
	is(query(q{SELECT count(*) FROM agentretry.operations WHERE key = 'mail-1'}),
		'0', '1: no row in agentretry.operations');
	is(query(q{SELECT count(*) FROM agentretry.events WHERE key = 'mail-1'}),
		'0', '1: no event either');
	is(provider_calls('mail-1'), '0', '1: no provider call');
}

# The trap itself, with the guard switched off for the session: the same
# naive worker acts (the provider commits), its backend is terminated
# before it commits, the claim is gone and the next worker executes again.
{
	my $w = start_worker('w0a', key => 'mail-0', tool => 'send_email',
		allow_uncommitted => 1, hang => 1);
	my $c = next_event($w);
	my $cl = next_event($w);
	is("$cl->{event} $cl->{outcome} $cl->{attempt} $cl->{token} $cl->{tx}",
		'claimed execute 1 1 INTRANS',
		'1, guard off: the naive worker is handed an uncommitted lease');
	my $acted = next_event($w);
	is($acted->{event}, 'acted', '1, guard off: the provider acted');
	is(provider_calls('mail-0') . ' ' . op_state('mail-0'), '1 none',
		'1, guard off: the side effect is committed, the claim is not');
	is(query("SELECT pg_terminate_backend($c->{pid}, 10000)"), 't',
		'1, guard off: the worker\'s backend is terminated before complete');
	$w->{in} .= "go\n";
	my @rest = rest_events($w);
	is(join(' ', map { $_->{event} } @rest), 'error', '1, guard off: the worker\'s complete fails');
	is(lookup_state('mail-0'), 'AR003', '1, guard off: the claim rolled back with the backend');
	my $r = run_worker('w0b', key => 'mail-0', tool => 'send_email', autocommit => 1);
	is("$r->{claimed}{outcome} $r->{claimed}{attempt}", 'execute 1',
		'1, guard off: the next worker is told to execute attempt 1 again');
	is(provider_calls('mail-0'), '2', '1, guard off: the side effect happened twice (the trap)');
}

# ---------------------------------------------------------------------------
# 2. pattern B done right: autocommit, the worker killed after acting
# ---------------------------------------------------------------------------
{
	my $w = start_worker('w2a', key => 'mail-2', args => '{"to": "bob@example.com"}',
		tool => 'send_email', autocommit => 1, hang => 1);
	my $c = next_event($w);
	is($c->{autocommit}, JSON::PP::true, '2: the worker runs with autocommit=True');
	my $cl = next_event($w);
	is("$cl->{event} $cl->{outcome} $cl->{attempt} $cl->{token} $cl->{tx}",
		'claimed execute 1 1 IDLE', '2: the claim executes and is committed at once');
	is(next_event($w)->{event}, 'acted', '2: the provider acted');
	is(query(q{
SELECT state || ' ' || lease_owner || ' ' || (lease_expires_at > clock_timestamp())
  FROM agentretry.operations WHERE key = 'mail-2'}),
		'in_progress w2a true', '2: the committed lease of w2a is live');
	is(kill_worker($w), 9, '2: the worker process is killed with SIGKILL before complete');
	ok(wait_gone('w2a'), '2: its connections are gone');
	is(provider_calls('mail-2'), '1', '2: one provider call');
	ok( $node->poll_query_until('postgres', q{
SELECT lease_expires_at <= clock_timestamp() FROM agentretry.operations WHERE key = 'mail-2'}),
		'2: the 1 s lease expires');
	my $r = run_worker('w2b', key => 'mail-2', args => '{"to": "bob@example.com"}',
		tool => 'send_email', autocommit => 1);
	is("$r->{claimed}{outcome} $r->{claimed}{token}", 'verify 2',
		'2: the next claim answers verify (lease 2), not execute');
	is($r->{_events}, 'connected claimed resolved done', '2: the next worker checks the provider instead of acting');
	is("$r->{resolved}{found} $r->{resolved}{state}", '1 succeeded',
		'2: it finds the call and resolve(executed => true) answers succeeded');
	is(op_state('mail-2'), 'succeeded 1 2', '2: the operation succeeded at attempt 1');
	is( query(q{SELECT last_failure_class || ' ' || (result ->> 'provider_calls') FROM agentretry.operations WHERE key = 'mail-2'}),
		'ambiguous 1', '2: the expiry was decided as an ambiguous failure; the receipt is the verifier\'s');
	is(provider_calls('mail-2'), '1', '2: exactly one provider call: no duplicate');
	$r = run_worker('w2c', key => 'mail-2', args => '{"to": "bob@example.com"}',
		tool => 'send_email', autocommit => 1);
	is($r->{claimed}{outcome}, 'replay', '2: a later claim replays');
	is(provider_calls('mail-2'), '1', '2: still exactly one provider call');
}

# ---------------------------------------------------------------------------
# 3. pattern A in psycopg's transaction, with a real crash before COMMIT
# ---------------------------------------------------------------------------
{
	my $w = start_worker('w3a', key => 'refund-3', args => '{"order": 3}',
		tool => 'refund', in_transaction => 1, hang => 1);
	my $c = next_event($w);
	is($c->{autocommit}, JSON::PP::false, '3: the worker runs with psycopg\'s default transaction');
	my $cl = next_event($w);
	is("$cl->{event} $cl->{outcome} $cl->{attempt} $cl->{token} $cl->{tx}",
		'claimed execute 1 1 INTRANS', '3: with in_transaction => true the claim executes in the transaction');
	my $acted = next_event($w);
	is("$acted->{event} $acted->{tx}", 'acted INTRANS', '3: the effect is written in the same transaction');
	is(op_state('refund-3') . ' ' . local_effects('refund-3'), 'none 0',
		'3: neither claim nor effect is visible before COMMIT');
	my $logpos = -s $node->logfile;
	ok(kill('KILL', $c->{pid}), "3: the worker's backend ($c->{pid}) is killed with SIGKILL");
	# until the postmaster has restarted everything, a connection may still
	# get through to the server that is going down
	$node->wait_for_log(
		qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s,
		$logpos);
	ok($node->poll_query_until('postgres', 'SELECT true'), '3: the server accepts connections again');
	my $log = substr(slurp_file($node->logfile), $logpos);
	like($log, qr/server process \(PID $c->{pid}\) was terminated by signal 9/,
		'3: the postmaster saw the backend crash');
	like($log, qr/all server processes terminated; reinitializing/,
		'3: and restarted every server process (crash recovery)');
	$w->{in} .= "go\n";
	my @rest = rest_events($w);
	is(join(' ', map { $_->{event} } @rest), 'error', '3: the worker finds its connection lost');
	is($rest[0]{cls}, 'OperationalError', '3: as psycopg.OperationalError');
	is(lookup_state('refund-3'), 'AR003', '3: the claim is gone (lookup: AR003)');
	is(local_effects('refund-3'), '0', '3: the effect is gone');
	my $r = run_worker('w3b', key => 'refund-3', args => '{"order": 3}',
		tool => 'refund', in_transaction => 1);
	is( "$r->{claimed}{outcome} $r->{claimed}{attempt} $r->{claimed}{token}",
		'execute 1 1', '3: the next worker executes attempt 1');
	is($r->{_events}, 'connected claimed acted done', '3: it acts, completes and commits');
	is(op_state('refund-3'), 'succeeded 1 1', '3: the operation succeeded');
	is(local_effects('refund-3'), '1', '3: exactly one effect');
	$r = run_worker('w3c', key => 'refund-3', args => '{"order": 3}',
		tool => 'refund', in_transaction => 1);
	is("$r->{claimed}{outcome} $r->{_events}", 'replay connected claimed done',
		'3: a later claim in a transaction replays without acting');
	is(local_effects('refund-3'), '1', '3: still exactly one effect');
}

# ---------------------------------------------------------------------------
# 4. what is not refused, and what is
# ---------------------------------------------------------------------------
{
	my $r = psql_app(
		q{SELECT outcome || ' ' || lease_token FROM agentretry.claim('multi-4', '{}', 'lookup'); SELECT 'second'},
		one_query => 1);
	is("$r->{states}|$r->{out}", "|execute 1\nsecond",
		'4: psql -c "SELECT claim(...); SELECT ..." (implicit transaction) executes');
	is(op_state('multi-4'), 'in_progress 1 1', '4: and its lease is committed');

	$r = psql_app(q{
DO $$
DECLARE
	c agentretry.claim_result;
BEGIN
	BEGIN
		SELECT * INTO c FROM agentretry.claim('do-4', '{}', 'lookup');
	EXCEPTION WHEN SQLSTATE 'AR001' THEN
		RAISE NOTICE 'other args';
	END;
	INSERT INTO do_outcomes VALUES ('do-4', c.outcome, c.lease_token);
END
$$;});
	is($r->{states}, '', '4: a claim in an EXCEPTION block of an autocommit DO is not refused');
	is(query(q{SELECT outcome || ' ' || token FROM do_outcomes WHERE key = 'do-4'}),
		'execute 1', '4: it executes');
	is(op_state('do-4'), 'in_progress 1 1', '4: and its lease is committed');

	$r = psql_app(q{
BEGIN;
DO $$
DECLARE
	c agentretry.claim_result;
BEGIN
	BEGIN
		SELECT * INTO c FROM agentretry.claim('do-in-begin-4', '{}', 'lookup');
	EXCEPTION WHEN SQLSTATE 'AR001' THEN
		RAISE NOTICE 'other args';
	END;
END
$$;
ROLLBACK;});
	is($r->{states}, '25001', '4: the same DO block inside BEGIN is refused');

	# replay of a succeeded key, by the naive worker
	$r = run_worker('w4', key => 'mail-2', args => '{"to": "bob@example.com"}',
		tool => 'send_email');
	is( "$r->{claimed}{outcome} $r->{claimed}{tx} $r->{_events}",
		'replay INTRANS connected claimed done',
		'4: psycopg\'s default transaction: a claim of a succeeded key replays, no error');
	is(provider_calls('mail-2'), '1', '4: and nothing acts');

	# busy, wait, verify, each in BEGIN
	query(q{
SELECT outcome FROM agentretry.claim('busy-4', '{}', 'lookup', lease => '1 hour');
SELECT outcome FROM agentretry.claim('wait-4', '{}', 'lookup');
SELECT action FROM agentretry.fail('wait-4', 1, 'transient', 'pre_execution', 'http_503', retry_after => '1 hour');
SELECT outcome FROM agentretry.claim('verify-4', '{}', 'refund');
SELECT action FROM agentretry.fail('verify-4', 1, 'ambiguous', 'post_execution', 'timeout');
});
	$r = psql_app(q{
BEGIN;
SELECT outcome FROM agentretry.claim('busy-4', '{}', 'lookup');
SELECT outcome FROM agentretry.claim('wait-4', '{}', 'lookup');
SELECT outcome || ' ' || lease_token FROM agentretry.claim('verify-4', '{}', 'refund');
COMMIT;});
	is("$r->{states}|$r->{out}", "|busy\nwait\nverify 2",
		'4: inside BEGIN, busy, wait and verify (a verification lease) are answered');
	is(op_state('verify-4'), 'verify 1 2', '4: the verification lease is committed');

	$r = psql_app(q{
BEGIN;
SELECT outcome FROM agentretry.claim('begin-4', '{}', 'lookup');
ROLLBACK;});
	like($r->{err}, qr/ERROR:  25001: \Q$msg_claim\E/, '4: psql: BEGIN; claim of a new key is refused (25001)');
	like($r->{err}, qr/HINT:  \Q$hint\E/, '4: psql: with the hint');
	is(op_state('begin-4'), 'none', '4: and nothing is stored');

	$r = psql_app(q{
SET agentretry.allow_uncommitted_leases = on;
BEGIN;
SELECT outcome || ' ' || lease_token FROM agentretry.claim('guc-4', '{}', 'lookup');
COMMIT;});
	is("$r->{states}|$r->{out}", '|execute 1',
		'4: SET agentretry.allow_uncommitted_leases = on; BEGIN; claim executes');
	is(op_state('guc-4'), 'in_progress 1 1', '4: and commits with the block');

	$r = psql_app(q{
BEGIN;
SELECT outcome || ' ' || lease_token FROM agentretry.claim('in-tx-4', '{}', 'lookup', in_transaction => true);
ROLLBACK;});
	is("$r->{states}|$r->{out}", '|execute 1', '4: BEGIN; claim(..., in_transaction => true) executes');
	is(op_state('in-tx-4'), 'none', '4: and rolls back with the block');

	# a procedure's transactions are not blocks a BEGIN opened
	query(q{
CREATE PROCEDURE claim_after_commit(k text, in_exception_block boolean)
LANGUAGE plpgsql AS $$
DECLARE
	c agentretry.claim_result;
BEGIN
	INSERT INTO do_outcomes VALUES (k, 'started', NULL);
	COMMIT;
	IF in_exception_block THEN
		BEGIN
			SELECT * INTO c FROM agentretry.claim(k, '{}', 'lookup');
		EXCEPTION WHEN SQLSTATE 'AR001' THEN
			RAISE NOTICE 'other args';
		END;
	ELSE
		SELECT * INTO c FROM agentretry.claim(k, '{}', 'lookup');
	END IF;
	INSERT INTO do_outcomes VALUES (k, c.outcome, c.lease_token);
	COMMIT;
END
$$;
GRANT EXECUTE ON PROCEDURE claim_after_commit(text, boolean) TO app;
});
	$r = psql_app(q{CALL claim_after_commit('proc-4', false);});
	is("$r->{states}|" . op_state('proc-4'), '|in_progress 1 1',
		'4: a procedure that commits and then claims executes');
	$r = psql_app(q{CALL claim_after_commit('proc-exc-4', true);});
	is("$r->{states}|" . op_state('proc-exc-4'), '|in_progress 1 1',
		'4: so does one that claims in an EXCEPTION block after its COMMIT');
}

# ---------------------------------------------------------------------------
# 5. claim_due in a transaction
# ---------------------------------------------------------------------------
{
	query(q{
SELECT outcome FROM agentretry.claim('fetch-5', '{}', 'fetch');
SELECT action FROM agentretry.fail('fetch-5', 1, 'transient', 'pre_execution', 'http_503');
});
	ok( $node->poll_query_until('postgres', q{
SELECT next_attempt_at <= clock_timestamp() FROM agentretry.operations WHERE key = 'fetch-5'}),
		'5: a retry of fetch-5 is due');
	my $r = run_worker('w5a', mode => 'claim_due', tool => 'fetch');
	is($r->{_events}, 'connected error', '5: claim_due in psycopg\'s transaction fails, the worker never acts');
	is($r->{error}{sqlstate}, '25001', '5: with SQLSTATE 25001');
	is($r->{error}{message}, $msg_due, '5: the message names claim_due()');
	is($r->{error}{hint}, $hint, '5: with the hint');
	is(op_state('fetch-5'), 'retry_wait 1 1', '5: the retry is left as it was');

	$r = run_worker('w5b', mode => 'claim_due', tool => 'fetch', in_transaction => 1);
	is($json->encode($r->{leased}{rows}), '[["fetch-5",2,2]]',
		'5: with in_transaction => true it leases fetch-5, attempt 2, lease 2');
	is("$r->{leased}{tx} $r->{_events}", 'INTRANS connected leased acted done',
		'5: in the transaction, which the worker acts in, completes and commits');
	is(op_state('fetch-5'), 'succeeded 2 2', '5: fetch-5 succeeded at attempt 2');
	is(local_effects('fetch-5'), '1', '5: with exactly one effect');

	$r = run_worker('w5c', mode => 'claim_due', tool => 'fetch');
	is( "$r->{_events} " . $json->encode($r->{leased}{rows}) . " $r->{leased}{tx}",
		'connected leased done [] INTRANS',
		'5: nothing due: claim_due in psycopg\'s transaction returns zero rows, no error');
	$r = psql_app(q{
BEGIN;
SELECT count(*) FROM agentretry.claim_due('w5d', 10, tools => ARRAY['fetch']);
COMMIT;});
	is("$r->{states}|$r->{out}", '|0', '5: psql: BEGIN; claim_due with nothing due: zero rows');
}

# ---------------------------------------------------------------------------
# 6. gaps of the guard
# ---------------------------------------------------------------------------
{
	# the library is loaded by the first statement (as by any earlier
	# agentretry call of the session, or by preloading it), so it sees the
	# BEGIN that the claim's transaction started with
	my $r = psql_app(
		q{SELECT agentretry.op_hash('{}') IS NOT NULL; BEGIN; SELECT outcome || ' ' || lease_token FROM agentretry.claim('one-string-6', '{}', 'send_email')},
		one_query => 1);
	is($r->{states}, '25001',
		'6: "BEGIN; SELECT claim(...)" sent as one query string is refused (the block stays open after it)');
}
is(op_state('one-string-6'), 'none', '6: the lease handed out in that block never committed');

{
	my $r = psql_app(q{
BEGIN;
SELECT outcome FROM agentretry.claim('probe-6', '{}', 'probe');
ROLLBACK;
SELECT outcome FROM agentretry.claim('probe-due-6', '{}', 'probe_due');
SELECT action FROM agentretry.fail('probe-due-6', 1, 'transient', 'pre_execution', 'http_503');
SELECT pg_sleep(0.05);
BEGIN;
SELECT key FROM agentretry.claim_due('w6', 10, tools => ARRAY['probe_due']);
ROLLBACK;
SELECT agentretry.flush_stats() >= 0;
});
	is($r->{states}, '25001 25001', '6: a claim and a claim_due refused in one session');
	my $stats = query(q{
SELECT string_agg(t.tool || ' ' || coalesce(s.first_attempts, 0) || ' ' || coalesce(s.executions, 0)
				  || ' ' || coalesce(s.retries, 0), ', ' ORDER BY t.tool)
  FROM (VALUES ('probe'), ('probe_due')) t(tool)
  LEFT JOIN agentretry.stats('1 hour') s ON s.tool = t.tool});
	is($stats, 'probe 0 0 0, probe_due 1 1 0',
		'6: stats() counts no attempt for the refused claim nor the refused claim_due');
}

note sprintf('%.1f s', time - $t0);
$node->stop;
done_testing();
