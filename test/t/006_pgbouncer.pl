# agentretry through PgBouncer in transaction pooling mode (Debian's
# pgbouncer, started here on a free local port): every statement of a
# client may run on another server connection, and one server connection
# serves many clients in turn, so nothing may depend on a session.
#
# PgBouncer: pool_mode = transaction, default_pool_size = 2 (so the pool
# has exactly two server connections) and server_round_robin = 1 (idle
# server connections are reused oldest first, so that consecutive
# transactions of a client change server connections); auth_type = trust
# with an auth_file; 127.0.0.1 only.  Clients are psql processes (several
# at once); no statement sent through the pooler is a SET, and none uses a
# server-side prepared statement.  Where a step must run on a given server
# connection, the other one is held by a holder client's open transaction
# (the pool has only those two), and every call reports pg_backend_pid()
# from its own transaction.
#
#   - the core flow, tenant core: claim (execute), busy, complete, replay,
#     AR001 for other args; fail (transient) -> retry_wait (wait) ->
#     claim_due -> complete; fail (ambiguous) -> verify -> resolve;
#     observe (confirmed, orphan); an expired lease decided by sweep();
#     stats() exact once each server connection has written its counts;
#   - pattern A (BEGIN; claim; insert an effect; complete; COMMIT) pinned
#     to one server connection while a second client's claim of the key
#     waits for it on the other one and then replays; a rolled-back one
#     leaves neither the operation nor the effect;
#   - two logical clients whose transactions alternate on one server
#     connection, leases taken on one server connection and completed on
#     the other, and a tenant policy set through the pooler that both
#     server connections apply at once: the answers are those of a
#     session of one's own;
#   - LISTEN agentretry through the pooler never reaches the client that
#     listened: the LISTEN stays on the server connection that ran it
#     (transaction mode resets nothing), the sweep's NOTIFY goes to
#     whichever client is using that server connection when the sweep
#     commits, or PgBouncer drops it when that server connection is idle;
#     a direct connection gets every one.
#
# Fails when pgbouncer is missing but can be installed (test/setup.sh
# installs it); skipped only when no pgbouncer package is available.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IO::Socket::INET;
use Time::HiRes qw(time usleep);

my ($pgbouncer) =
  grep { -x $_ }
  map { "$_/pgbouncer" } (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/bin');
if (!$pgbouncer)
{
	my $policy = `apt-cache policy pgbouncer 2>/dev/null` // '';
	plan skip_all => 'pgbouncer is not installed, and no pgbouncer package can be installed here'
	  unless $policy =~ /^\s*Candidate:\s*(?!\(none\))\S/m;
	plan tests => 1;
	fail('pgbouncer is installed');
	diag('pgbouncer is missing, although the Debian package pgbouncer can be installed: '
		  . 'run test/setup.sh (which installs it with its service disabled), '
		  . 'or apt-get install pgbouncer');
	exit;
}

my $db = 'app';
my $timeout = 60;

# ---------------------------------------------------------------------------
# the cluster: the application's role (agent and operator, as a worker that
# also sweeps would be), an admin role, tools and the effects table of
# pattern A
#
# lookup: idempotent read, retried after 300 ms; charge: non-idempotent
# write; refund: non-idempotent write (pattern A).
# ---------------------------------------------------------------------------
my $node = PostgreSQL::Test::Cluster->new('server');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
log_min_messages = warning
log_statement = all
});
$node->start;

$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql(
	$db, q{
CREATE EXTENSION agentretry;
CREATE ROLE app LOGIN;
GRANT agentretry_agent, agentretry_operator TO app;
CREATE ROLE ops LOGIN;
GRANT agentretry_admin TO ops;
SELECT count(*) FROM (
	SELECT agentretry.register_tool('lookup', 'idempotent', 'read',
		max_attempts => 5, base_delay => '300 ms', max_delay => '300 ms', jitter => 'none')
	UNION ALL
	SELECT agentretry.register_tool('charge', 'non_idempotent', 'write')
	UNION ALL
	SELECT agentretry.register_tool('refund', 'non_idempotent', 'write')) r;
CREATE TABLE effects (order_id int NOT NULL, amount_cents int NOT NULL, backend int NOT NULL);
GRANT SELECT, INSERT ON effects TO app;
});

# ---------------------------------------------------------------------------
# PgBouncer, on the first free port from 6532 on (not 6432, the package's
# own); if it still loses the port, the next one
# ---------------------------------------------------------------------------
my $bdir = PostgreSQL::Test::Utils::tempdir('pgbouncer');
my $blog = "$PostgreSQL::Test::Utils::log_path/006_pgbouncer_pgbouncer.log";
my %pgb = (out => '', err => '');
my $bport;

sub stop_pgbouncer
{
	return unless $pgb{h};
	$pgb{h}->signal('TERM') if $pgb{h}->pumpable;
	my $until = time + 10;
	while ($pgb{h}->pumpable && time < $until)
	{
		$pgb{h}->pump_nb;
		usleep(50_000);
	}
	$pgb{h}->kill_kill if $pgb{h}->pumpable;
	$pgb{h}->finish;
	delete $pgb{h};
	return;
}

END
{
	local $?;
	stop_pgbouncer();
}

open my $ul, '>', "$bdir/userlist.txt" or die "$bdir/userlist.txt: $!";
print $ul qq{"app" ""\n"ops" ""\n};
close $ul;

sub pgbouncer_ini
{
	my ($port) = @_;
	my $ini = "$bdir/pgbouncer.ini";
	open my $fh, '>', $ini or die "$ini: $!";
	printf $fh <<'EOF', $node->host, $node->port, $db, $port, $bdir, $blog, $bdir;
[databases]
app = host=%s port=%d dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/userlist.txt
pool_mode = transaction
default_pool_size = 2
min_pool_size = 0
reserve_pool_size = 0
server_round_robin = 1
max_client_conn = 50
logfile = %s
pidfile = %s/pgbouncer.pid
EOF
	close $fh;
	return $ini;
}

note "pgbouncer: $pgbouncer, " . (split /\n/, `$pgbouncer --version 2>&1`)[0];

my $candidate = 6532;
ATTEMPT: for my $attempt (1 .. 5)
{
	my $p;
	for (; $candidate < 6632; $candidate++)
	{
		my $s = IO::Socket::INET->new(
			LocalAddr => '127.0.0.1', LocalPort => $candidate,
			Proto => 'tcp', Listen => 1, ReuseAddr => 1);
		next unless $s;
		close $s;
		$p = $candidate++;
		last;
	}
	last unless $p;
	%pgb = (out => '', err => '');
	$pgb{h} = IPC::Run::start([ $pgbouncer, pgbouncer_ini($p) ],
		'<', \undef, '>', \$pgb{out}, '2>', \$pgb{err});
	my $until = time + 20;
	while (time < $until)
	{
		$pgb{h}->pump_nb;
		last unless $pgb{h}->pumpable;
		if ("$pgb{out}$pgb{err}" =~ /listening on 127\.0\.0\.1:$p\b/)
		{
			$bport = $p;
			last ATTEMPT;
		}
		usleep(50_000);
	}
	note "pgbouncer on port $p did not start: $pgb{out}$pgb{err}";
	stop_pgbouncer();
}
if (!ok(defined $bport, 'pgbouncer listens' . ($bport ? " on 127.0.0.1:$bport" : '')))
{
	diag("pgbouncer did not start: $pgb{out}$pgb{err}");
	$node->stop;
	done_testing();
	exit;
}

# ---------------------------------------------------------------------------
# clients: psql processes, one connection each, fed one statement at a
# time.  After each, psql echoes its SQLSTATE and a marker; notifications
# psql prints are collected apart.  Every statement sent through the
# pooler is kept (for the check that none is a SET).
# ---------------------------------------------------------------------------
my @pooled_sql;
my $marker = 0;
my %clients;

sub start_client
{
	my ($name, $connstr, $pooled) = @_;
	my $c = {
		name => $name, pooled => $pooled, in => '', out => '', err => '',
		notifications => [] };
	$c->{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-v', 'VERBOSITY=terse',
			'-d', $connstr, '-f', '-'
		],
		'<', \$c->{in}, '>', \$c->{out}, '2>', \$c->{err});
	$clients{$name} = $c;
	my $r = sql($c, 'SELECT 1');
	die "client $name could not connect: $r->{err}" unless $r->{state} eq '00000';
	return $c;
}

sub pooled_client
{
	my ($name, $user) = @_;
	return start_client($name,
		"host=127.0.0.1 port=$bport dbname=$db user=" . ($user // 'app') . ' sslmode=disable', 1);
}

sub send_sql
{
	my ($c, $sql) = @_;
	$sql .= ';' unless $sql =~ /;\s*\z/;
	push @pooled_sql, $sql if $c->{pooled};
	$c->{n} = ++$marker;
	$c->{out} = $c->{err} = '';
	$c->{in} .= "$sql\n\\echo '\@\@' :SQLSTATE '\@\@$c->{n}'\n";
	$c->{h}->pump_nb;
	return;
}

# the answer to the statement last sent: rows (columns split on |), the
# SQLSTATE (00000 on success) and what psql wrote to stderr
sub wait_sql
{
	my ($c) = @_;
	my $n = $c->{n};
	my $until = time + $timeout;
	while ($c->{out} !~ /^\@\@ (\S+) \@\@$n$/m)
	{
		die "client $c->{name}: no answer after $timeout s: $c->{out} $c->{err}"
		  if time > $until || !$c->{h}->pumpable;
		$c->{h}->pump_nb;
		$pgb{h}->pump_nb if $pgb{h};
		usleep(2_000);
	}
	my ($state) = $c->{out} =~ /^\@\@ (\S+) \@\@$n$/m;
	my (@lines, @notes);
	foreach my $line (split /\n/, $c->{out})
	{
		next if $line =~ /^\@\@ /;
		if ($line =~ /^Asynchronous notification "([^"]*)"(?: with payload "([^"]*)")? received from server process with PID (\d+)\.$/)
		{
			push @notes, { channel => $1, payload => $2 // '', sender => $3 };
			next;
		}
		push @lines, $line;
	}
	push @{ $c->{notifications} }, @notes;
	return {
		state => $state, err => $c->{err}, notifications => \@notes,
		rows => [ map { [ split /\|/, $_, -1 ] } @lines ],
		text => join("\n", @lines) };
}

sub sql
{
	my ($c, $sql) = @_;
	send_sql($c, $sql);
	return wait_sql($c);
}

# the text of a statement that must succeed (a failing one is a failing test)
sub val
{
	my ($c, $sql) = @_;
	my $r = sql($c, $sql);
	if ($r->{state} ne '00000')
	{
		fail("$c->{name}: $sql");
		diag("$r->{state}: $r->{err}");
	}
	return $r->{text};
}

sub quit_client
{
	my ($c) = @_;
	$c->{in} .= "\\q\n";
	$c->{h}->finish;
	delete $clients{ $c->{name} };
	return;
}

# ---------------------------------------------------------------------------
# The pool's two server connections, and how to run a statement on one of
# them: a holder client opens a transaction on the other one, so the only
# one free is the one wanted.
# ---------------------------------------------------------------------------
my $H1 = pooled_client('holder-1');
my $H2 = pooled_client('holder-2');
my $A = pooled_client('client-a');
my $B = pooled_client('client-b');
my $C = pooled_client('client-c');
my $direct = start_client('direct', $node->connstr($db) . ' application_name=direct', 0);

sql($H1, 'BEGIN');
my $p1 = val($H1, 'SELECT pg_backend_pid()');
sql($H2, 'BEGIN');
my $p2 = val($H2, 'SELECT pg_backend_pid()');
sql($H1, 'COMMIT');
sql($H2, 'COMMIT');
my @pool = sort { $a <=> $b } ($p1, $p2);
ok($p1 =~ /^\d+$/ && $p2 =~ /^\d+$/ && $p1 != $p2,
	"two transactions open at once run on two server connections ($p1, $p2)");
is( $node->safe_psql($db,
		q{SELECT string_agg(pid::text, ' ' ORDER BY pid) FROM pg_stat_activity WHERE usename = 'app'}),
	"@pool",
	'the server has exactly these two connections of role app for the '
	  . scalar(grep { $_->{pooled} } values %clients) . ' pooled clients');
my ($X, $Y) = @pool;
my %other = ($X => $Y, $Y => $X);

# Opens a transaction on server connection $pid in a holder client and
# returns that client; no other transaction of the pool is open then.
sub begin_on
{
	my ($pid) = @_;
	sql($H1, 'BEGIN');
	my $got = val($H1, 'SELECT pg_backend_pid()');
	return $H1 if $got eq $pid;
	sql($H2, 'BEGIN');
	$got = val($H2, 'SELECT pg_backend_pid()');
	sql($H1, 'COMMIT');
	die "holder-2 got server connection $got, not $pid" unless $got eq $pid;
	return $H2;
}

# every call of a client through the pooler, with the server connection
# that ran it
my @calls;

# Runs $sql, a statement whose last column is pg_backend_pid(), from client
# $c on server connection $pid (or wherever the pooler puts it when $pid
# is undef); returns the answer with the pid taken off the rows.
sub call_on
{
	my ($pid, $c, $sql) = @_;
	my $holder = defined $pid ? begin_on($other{$pid}) : undef;
	my $r = sql($c, $sql);
	sql($holder, 'COMMIT') if $holder;
	my $ran_on;
	foreach my $row (@{ $r->{rows} })
	{
		$ran_on = pop @$row;
	}
	$r->{pid} = $ran_on // '';
	$r->{text} = join("\n", map { join('|', @$_) } @{ $r->{rows} });
	push @calls, { client => $c->{name}, pid => $r->{pid}, sql => $sql }
	  if $r->{state} eq '00000';
	if (defined $pid && $r->{state} eq '00000' && $r->{pid} ne $pid)
	{
		fail("$c->{name} ran on server connection $pid");
		diag("it ran on $r->{pid}: $sql");
	}
	return $r;
}

sub claim_sql
{
	my ($key, $args, $tool, $tenant, $extra) = @_;
	return "SELECT c.outcome, c.attempt, c.lease_token, c.result, c.reason, pg_backend_pid() "
	  . "FROM agentretry.claim('$key', '$args', '$tool', '$tenant'"
	  . ($extra ? ", $extra" : '') . ') c';
}

sub state_of
{
	my ($tenant, $key) = @_;
	return $node->safe_psql($db,
		"SELECT state || ' ' || attempts || ' ' || coalesce(reason, '-') FROM agentretry.operations "
		  . "WHERE tenant = '$tenant' AND key = '$key'");
}

# ---------------------------------------------------------------------------
# the core flow, tenant core, clients a, b and c on both server connections
# ---------------------------------------------------------------------------
my $r = call_on($X, $A, claim_sql('k1', '{"n": 1}', 'lookup', 'core'));
my ($out, $att, $tok1) = @{ $r->{rows}[0] // [] };
is("$out $att", 'execute 1', "core: claim of a new key through the pooler executes, attempt 1 (client a, server $X)");
$r = call_on($Y, $B, claim_sql('k1', '{"n": 1}', 'lookup', 'core'));
is($r->{rows}[0][0], 'busy', "core: a second client's claim of the leased key answers busy (client b, server $Y)");
$r = call_on($Y, $A, "SELECT agentretry.complete('k1', $tok1, '{\"r\": 1}', 'core'), pg_backend_pid()");
is($r->{state}, '00000', "core: client a completes on server $Y the lease it took on server $X")
  or diag($r->{err});
$r = call_on($X, $B, claim_sql('k1', '{"n": 1}', 'lookup', 'core'));
is("$r->{rows}[0][0] $r->{rows}[0][3]", 'replay {"r": 1}', 'core: the claim again replays the stored result (client b)');
$r = call_on(undef, $C, claim_sql('k1', '{"n": 2}', 'lookup', 'core'));
is($r->{state}, 'AR001', 'core: the key with other args raises AR001 (client c)');
like($r->{err}, qr/ERROR:/, 'core: AR001 comes with its message');
is(state_of('core', 'k1'), 'succeeded 1 -', 'core: k1 succeeded once');

# fail (transient, before acting) -> retry_wait -> claim_due -> complete
$r = call_on($Y, $B, claim_sql('k2', '{"n": 2}', 'lookup', 'core'));
my ($tok2) = ($r->{rows}[0] // [])->[2];
is($r->{rows}[0][0], 'execute', 'core: k2 executes');
$r = call_on($X, $B,
	"SELECT d.action, d.attempt, d.reason, d.retry_at > now(), pg_backend_pid() "
	  . "FROM agentretry.fail('k2', $tok2, 'transient', 'pre_execution', 'http_503', tenant => 'core') d");
is($r->{text}, 'retry|1|not_executed|t', 'core: a transient failure before acting is retried later');
$r = call_on($Y, $C, claim_sql('k2', '{"n": 2}', 'lookup', 'core'));
is($r->{rows}[0][0], 'wait', 'core: a claim before the retry is due answers wait (client c)');
usleep(400_000);
$r = call_on($X, $A,
	"SELECT d.key, d.attempt, d.lease_token, pg_backend_pid() "
	  . "FROM agentretry.claim_due('worker-a', 10, tenant => 'core') d");
my ($dkey, $datt, $tok2b) = @{ $r->{rows}[0] // [] };
is(scalar(@{ $r->{rows} }) . " $dkey $datt", '1 k2 2', 'core: claim_due leases the due retry, attempt 2 (client a)');
ok($tok2b > $tok2, 'core: with a newer fencing token');
$r = call_on($Y, $C, "SELECT agentretry.complete('k2', $tok2b, '{\"r\": 2}', 'core'), pg_backend_pid()");
is($r->{state}, '00000', 'core: another client completes it with that token');
$r = call_on($X, $C, "SELECT agentretry.complete('k2', $tok2, '{\"r\": 0}', 'core'), pg_backend_pid()");
is($r->{state}, 'AR002', 'core: the first attempt\'s token is fenced off (AR002)');
is(state_of('core', 'k2'), 'succeeded 2 -', 'core: k2 succeeded at its second attempt');

# fail (ambiguous) -> verify -> resolve, then evidence
$r = call_on($X, $A, claim_sql('k3', '{"amount": 5}', 'charge', 'core'));
my ($tok3) = ($r->{rows}[0] // [])->[2];
is($r->{rows}[0][0], 'execute', 'core: k3 (charge) executes');
$r = call_on($Y, $A,
	"SELECT d.action, d.reason, pg_backend_pid() "
	  . "FROM agentretry.fail('k3', $tok3, 'ambiguous', 'mid_execution', 'timeout', tenant => 'core') d");
is($r->{text}, 'verify|outcome_unknown', 'core: an ambiguous failure of a non-idempotent tool is to be verified');
$r = call_on($Y, $B, claim_sql('k3', '{"amount": 5}', 'charge', 'core'));
my ($tok3v) = ($r->{rows}[0] // [])->[2];
is($r->{rows}[0][0], 'verify', 'core: the next claim hands out a verification lease (client b)');
$r = call_on($X, $C, claim_sql('k3', '{"amount": 5}', 'charge', 'core'));
is($r->{rows}[0][0], 'busy', 'core: a claim during the verification answers busy (client c)');
$r = call_on($X, $B,
	"SELECT agentretry.resolve('k3', $tok3v, true, '{\"charged\": true}', 'core', receipt => 'rcpt-3'), pg_backend_pid()");
is($r->{text}, 'succeeded', 'core: resolve(executed => true) on the other server connection: succeeded');
$r = call_on($Y, $C, claim_sql('k3', '{"amount": 5}', 'charge', 'core'));
is("$r->{rows}[0][0] $r->{rows}[0][3]", 'replay {"charged": true}', 'core: k3 replays');
$r = call_on($Y, $C, "SELECT agentretry.observe('k3', 'rcpt-3', 'core', 'webhook'), pg_backend_pid()");
is($r->{text}, 'confirmed', 'core: observe with the same receipt: confirmed');
$r = call_on($X, $A, "SELECT agentretry.observe('k-ghost', 'rcpt-g', 'core', 'webhook'), pg_backend_pid()");
is($r->{text}, 'orphan', 'core: observe of an unknown key: orphan');

# an expired lease, for the sweep further on
$r = call_on($Y, $A, claim_sql('k4', '{"n": 4}', 'lookup', 'core', "lease => '1 second'"));
my $k4_claimed = time;
is("$r->{rows}[0][0] $r->{rows}[0][1]", 'execute 1', 'core: k4 executes with a lease of 1 s (nobody completes it)');

# ---------------------------------------------------------------------------
# pattern A: claim, effect and receipt in one transaction of client a, on
# one server connection; client b's claim of the key waits for it on the
# other one and then replays
# ---------------------------------------------------------------------------
my $args42 = '{"order": 42, "amount_cents": 1999}';
sql($A, 'BEGIN');
$r = call_on(undef, $A, claim_sql('order-42:refund', $args42, 'refund', 'shop', 'in_transaction => true'));
my ($out42, $att42, $tok42) = @{ $r->{rows}[0] // [] };
my $a_pid = $r->{pid};
is("$out42 $att42", 'execute 1', 'pattern A: the claim in the transaction executes');
send_sql($B, claim_sql('order-42:refund', $args42, 'refund', 'shop'));
my $waiting = '';
for (1 .. 200)
{
	$waiting = $node->safe_psql($db,
		q{SELECT wait_event_type FROM pg_stat_activity WHERE usename = 'app' AND wait_event_type = 'Lock'});
	last if $waiting eq 'Lock';
	usleep(25_000);
}
is($waiting, 'Lock', 'pattern A: client b\'s claim of the same key waits on a lock');
my $r_ins = call_on(undef, $A,
	'INSERT INTO effects VALUES (42, 1999, pg_backend_pid()) RETURNING order_id, pg_backend_pid()');
my $r_cpl = call_on(undef, $A,
	"SELECT agentretry.complete('order-42:refund', $tok42, '{\"refund_id\": 7}', 'shop'), pg_backend_pid()");
my $r_cmt = sql($A, 'COMMIT');
is( join(' ', $r_ins->{state}, $r_cpl->{state}, $r_cmt->{state}),
	'00000 00000 00000', 'pattern A: effect, complete and COMMIT succeed');
is( join(' ', $r_ins->{pid}, $r_cpl->{pid}),
	"$a_pid $a_pid", "pattern A: the whole transaction ran on one server connection ($a_pid)");
my $r_b = wait_sql($B);
my $b_pid = pop @{ $r_b->{rows}[0] // [] };
is( join(' ', @{ $r_b->{rows}[0] // [] }[ 0, 3 ]),
	'replay {"refund_id": 7}', 'pattern A: client b\'s waiting claim then replays the result');
is($b_pid, $other{$a_pid} // '', 'pattern A: client b waited on the other server connection');
push @calls, { client => 'client-b', pid => $b_pid, sql => 'pattern A claim' };

# rolled back: neither the operation nor the effect
my $args43 = '{"order": 43, "amount_cents": 500}';
sql($C, 'BEGIN');
$r = call_on(undef, $C, claim_sql('order-43:refund', $args43, 'refund', 'shop', 'in_transaction => true'));
my ($out43, $att43, $tok43) = @{ $r->{rows}[0] // [] };
is($out43, 'execute', 'pattern A, rolled back: the claim executes');
call_on(undef, $C, 'INSERT INTO effects VALUES (43, 500, pg_backend_pid()) RETURNING order_id, pg_backend_pid()');
call_on(undef, $C,
	"SELECT agentretry.complete('order-43:refund', $tok43, '{\"refund_id\": 8}', 'shop'), pg_backend_pid()");
is(sql($C, 'ROLLBACK')->{state}, '00000', 'pattern A, rolled back: ROLLBACK');
$r = call_on(undef, $A, "SELECT l.state, pg_backend_pid() FROM agentretry.lookup('order-43:refund', 'shop') l");
is($r->{state}, 'AR003', 'pattern A, rolled back: the operation does not exist (lookup: AR003)');
is(val($B, 'SELECT count(*) FROM effects WHERE order_id = 43'), '0', 'pattern A, rolled back: no effect');

# and done again, committed this time, by client b
sql($B, 'BEGIN');
$r = call_on(undef, $B, claim_sql('order-43:refund', $args43, 'refund', 'shop', 'in_transaction => true'));
($out43, $att43, $tok43) = @{ $r->{rows}[0] // [] };
is("$out43 $att43", 'execute 1', 'pattern A, again: a new claim executes attempt 1');
call_on(undef, $B, 'INSERT INTO effects VALUES (43, 500, pg_backend_pid()) RETURNING order_id, pg_backend_pid()');
call_on(undef, $B,
	"SELECT agentretry.complete('order-43:refund', $tok43, '{\"refund_id\": 9}', 'shop'), pg_backend_pid()");
is(sql($B, 'COMMIT')->{state}, '00000', 'pattern A, again: COMMIT');
$r = call_on(undef, $C, claim_sql('order-43:refund', $args43, 'refund', 'shop'));
is("$r->{rows}[0][0] $r->{rows}[0][3]", 'replay {"refund_id": 9}', 'pattern A, again: a claim replays the committed result');
is( $node->safe_psql($db, q{SELECT string_agg(order_id || ' ' || amount_cents, ', ' ORDER BY order_id) FROM effects}),
	'42 1999, 43 500', 'pattern A: one effect for order 42, one for order 43 (none of the rolled-back one)');
is( join(', ', map { state_of('shop', $_) } qw(order-42:refund order-43:refund)),
	'succeeded 1 -, succeeded 1 -', 'pattern A: both refunds succeeded at their first attempt');

# ---------------------------------------------------------------------------
# no session state: clients a and b take turns on server connection X,
# each one's next transaction on Y; a policy set through the pooler (as
# ops, another pool) is applied by both server connections at once
# ---------------------------------------------------------------------------
my @same;    # [ client, pid ] of each call of this section, in order
sub same_call
{
	my ($pid, $c, $sql) = @_;
	my $res = call_on($pid, $c, $sql);
	push @same, [ $c->{name}, $res->{pid} ];
	return $res;
}

$r = same_call($X, $A, claim_sql('a-1', '{}', 'lookup', 'same'));
my $tok_a1 = $r->{rows}[0][2];
is($r->{rows}[0][0], 'execute', "same backend: client a claims a-1 on $X");
$r = same_call($X, $B, claim_sql('b-1', '{}', 'lookup', 'same'));
my $tok_b1 = $r->{rows}[0][2];
is($r->{rows}[0][0], 'execute', "same backend: client b claims b-1 right after, on the same server connection $X");
$r = same_call($X, $B, claim_sql('a-1', '{}', 'lookup', 'same'));
is($r->{rows}[0][0], 'busy', 'same backend: client b\'s claim of a-1 there is busy (the lease is not the session\'s)');
$r = same_call($Y, $A, "SELECT agentretry.complete('a-1', $tok_a1, '{\"a\": 1}', 'same'), pg_backend_pid()");
is($r->{state}, '00000', "same backend: client a completes a-1 on $Y");
$r = same_call($Y, $B,
	"SELECT d.action, d.reason, pg_backend_pid() "
	  . "FROM agentretry.fail('b-1', $tok_b1, 'transient', 'pre_execution', 'http_503', tenant => 'same') d");
is($r->{text}, 'retry|not_executed', "same backend: client b's failure of b-1 on $Y is retried");
$r = same_call($X, $A, claim_sql('b-1', '{}', 'lookup', 'same'));
is($r->{rows}[0][0], 'wait', 'same backend: client a sees b-1 waiting for its retry');

my $OPS = pooled_client('ops', 'ops');
$r = sql($OPS, q{SELECT max_attempts FROM agentretry.set_tenant_policy('same', 'lookup', max_attempts => 1)});
is($r->{text}, '1', 'same backend: ops sets max_attempts 1 for tenant same through the pooler');

usleep(400_000);
$r = same_call($X, $B, claim_sql('b-1', '{}', 'lookup', 'same'));
my $tok_b1b = $r->{rows}[0][2];
is("$r->{rows}[0][0] $r->{rows}[0][1]", 'execute 2', "same backend: b-1's retry executes attempt 2 on $X");
$r = same_call($Y, $B,
	"SELECT d.action, d.reason, pg_backend_pid() "
	  . "FROM agentretry.fail('b-1', $tok_b1b, 'transient', 'pre_execution', 'http_503', tenant => 'same') d");
is($r->{text}, 'dead|attempts_exhausted', "same backend: $Y applies the new policy (dead, attempts_exhausted)");
$r = same_call($Y, $A, claim_sql('a-2', '{}', 'lookup', 'same'));
my $tok_a2 = $r->{rows}[0][2];
$r = same_call($X, $A,
	"SELECT d.action, d.reason, pg_backend_pid() "
	  . "FROM agentretry.fail('a-2', $tok_a2, 'transient', 'pre_execution', 'http_503', tenant => 'same') d");
is($r->{text}, 'dead|attempts_exhausted', "same backend: $X applies it too");
$r = same_call($Y, $B, claim_sql('a-1', '{}', 'lookup', 'same'));
is("$r->{rows}[0][0] $r->{rows}[0][3]", 'replay {"a": 1}', "same backend: client b replays a-1 on $Y");
$r = same_call($X, $A, claim_sql('a-1', '{}', 'lookup', 'same'));
is("$r->{rows}[0][0] $r->{rows}[0][3]", 'replay {"a": 1}', "same backend: client a replays a-1 on $X");
is( join(', ', map { state_of('same', $_) } qw(a-1 a-2 b-1)),
	'succeeded 1 -, dead 1 attempts_exhausted, dead 2 attempts_exhausted',
	'same backend: the operations are what one session of each client would have left');

my %pids_of;
$pids_of{ $_->[0] }{ $_->[1] } = 1 foreach @same;
is( join(' ', map { "$_:" . join(',', sort keys %{ $pids_of{$_} }) } sort keys %pids_of),
	"client-a:$X,$Y client-b:$X,$Y",
	'same backend: each client\'s transactions ran on both server connections');
ok( (grep { $same[$_][1] eq $same[ $_ + 1 ][1] && $same[$_][0] ne $same[ $_ + 1 ][0] } 0 .. $#same - 1),
	'same backend: a transaction of one client followed one of the other on the same server connection');

# ---------------------------------------------------------------------------
# the sweep, and LISTEN: client l listens through the pooler (its LISTEN
# stays on server connection Lx after its transaction); the direct
# connection listens too.  k4's lease has expired.
#
#   1. a sweep in a transaction on Lx: its NOTIFY goes to the client that
#      ran that transaction, not to client l;
#   2. a sweep on the other server connection while Lx is idle: PgBouncer
#      gets the notification from an idle server connection and drops it;
#      client l's next transaction on Lx does not get it either.
# ---------------------------------------------------------------------------
my $L = pooled_client('client-l');
sql($direct, 'LISTEN agentretry');
sql($L, 'BEGIN');
my $Lx = val($L, 'LISTEN agentretry; SELECT pg_backend_pid()');
sql($L, 'COMMIT');
ok($Lx eq $X || $Lx eq $Y, "LISTEN: client l listens, on server connection $Lx");

my $left = $k4_claimed + 1.6 - time;
usleep(int($left * 1e6)) if $left > 0;

# notifications received by the pooled clients so far
sub notified
{
	my $n = 0;
	$n += scalar(@{ $_->{notifications} }) foreach grep { $_->{pooled} } values %clients;
	return $n;
}

my $sweep_sql = 'SELECT s.leases_expired, s.deadlines_exceeded, s.operations_purged, s.events_purged, '
  . 's.due_retries, s.more, s.ledger_purged, s.runs_purged, s.anomalies_found, pg_backend_pid() '
  . 'FROM agentretry.sweep() s';
my $sweeper = begin_on($Lx);
my $s1 = sql($sweeper, $sweep_sql);
my $s1_pid = pop @{ $s1->{rows}[0] // [] };
my $c1 = sql($sweeper, 'COMMIT');
is($s1_pid, $Lx, 'sweep 1 ran on the listening server connection');
is( join('|', @{ $s1->{rows}[0] // [] }),
	'1|0|0|0|1|f|0|0|1',
	'sweep 1: one expired lease decided (k4, due again at once), one retry due, one anomaly (k2 succeeded after a retry)');
is( join(' ', map { "$_->{channel}:$_->{payload}" } @{ $c1->{notifications} }),
	'agentretry:1',
	"sweep 1: its NOTIFY (payload 1) went to $sweeper->{name}, which ran the transaction on $Lx and listens to nothing");
is(state_of('core', 'k4'), 'retry_wait 1 idempotent_retry', 'sweep 1: k4 is waiting for its retry');

$sweeper = begin_on($other{$Lx});
my $s2 = sql($sweeper, $sweep_sql);
my $s2_pid = pop @{ $s2->{rows}[0] // [] };
my $c2 = sql($sweeper, 'COMMIT');
is($s2_pid, $other{$Lx}, 'sweep 2 ran on the other server connection');
is(join('|', @{ $s2->{rows}[0] // [] }), '0|0|0|0|1|f|0|0|0', 'sweep 2: nothing to decide, one retry due');
is(scalar(@{ $c2->{notifications} }), 0, 'sweep 2: no notification for the client that ran it');
my $notified_before = notified();
usleep(300_000);
$r = call_on($Lx, $L, 'SELECT 1, pg_backend_pid()');
is($r->{pid}, $Lx, "LISTEN: client l's next transaction runs on $Lx, the server connection that listens");
$r = sql($L, 'SELECT 2');
is(scalar(@{ $L->{notifications} }), 0, 'LISTEN through the pooler: client l received neither NOTIFY');
sql($_, 'SELECT 3') foreach grep { $_->{pooled} } values %clients;
is(notified(), $notified_before, 'LISTEN through the pooler: no pooled client received sweep 2\'s NOTIFY');
sql($direct, 'SELECT 1');
is( join(' ', map { "$_->{channel}:$_->{payload}" } @{ $direct->{notifications} }),
	'agentretry:1 agentretry:1', 'LISTEN on a direct connection: both NOTIFYs (payload 1) received');
my $dropped = () = slurp_file($blog) =~ /got packet 'A' from server when not linked/g;
note "pgbouncer log: $dropped notification(s) dropped from an idle server connection";

# k4's retry, by a retry worker
$r = call_on(undef, $B,
	"SELECT d.key, d.attempt, d.lease_token, pg_backend_pid() FROM agentretry.claim_due('worker-b', 10, tenant => 'core') d");
my (undef, $att4, $tok4) = @{ $r->{rows}[0] // [] };
is(scalar(@{ $r->{rows} }) . " $r->{rows}[0][0] $att4", '1 k4 2', 'core: claim_due leases k4, attempt 2');
$r = call_on(undef, $C, "SELECT agentretry.complete('k4', $tok4, '{\"r\": 4}', 'core'), pg_backend_pid()");
is($r->{state}, '00000', 'core: k4 completed');
is(state_of('core', 'k4'), 'succeeded 2 -', 'core: k4 succeeded at its second attempt');

# ---------------------------------------------------------------------------
# stats: each server connection holds the counts of the calls it served
# (whichever client made them) until it writes them.  Two transactions
# open at once, one on each server connection, write them; then stats()
# is exact.
# ---------------------------------------------------------------------------
my $before = sql($C, q{SELECT tool, executions FROM agentretry.stats('1 hour', 'core') ORDER BY tool});
note 'stats() of core before the server connections wrote their counts: ' . join(', ', split /\n/, $before->{text});
sql($H1, 'BEGIN');
my $f1 = sql($H1, 'SELECT agentretry.flush_stats() >= 0, pg_backend_pid()');
sql($H2, 'BEGIN');
my $f2 = sql($H2, 'SELECT agentretry.flush_stats() >= 0, pg_backend_pid()');
sql($H1, 'COMMIT');
sql($H2, 'COMMIT');
is( join(' ', sort { $a <=> $b } map { $_->{rows}[0][1] // 0 } $f1, $f2),
	"$X $Y", 'stats: flush_stats() ran on both server connections');

$r = sql($C, q{
SELECT tool, first_attempts, executions, replays, retries, successes, successes_after_retry,
	verifications, dead_letters, budget_denials, approvals, anomalies, duplicate_side_effects, retry_rate
FROM agentretry.stats('1 hour', 'core') ORDER BY tool NULLS FIRST});
is( $r->{text},
	join("\n",
		'|0|0|0|0|0|0|0|0|0|0|{"orphan_side_effect": 1}|0|',
		'charge|1|1|1|0|1|0|1|0|0|0|{}|0|0',
		'lookup|3|5|1|2|3|2|0|0|0|0|{"success_after_retry": 1}|0|0.4'),
	'stats(): the exact counts of tenant core (lookup: 3 first attempts, 5 executions, 1 replay, '
	  . '2 retries, 3 successes, 2 after a retry; charge: 1 attempt, 1 replay, 1 verification, 1 success; the orphan)');
diag($r->{err}) if $r->{state} ne '00000';

# ---------------------------------------------------------------------------
# no SET, and no other server connection than the two
# ---------------------------------------------------------------------------
my @set = grep { /\b(?:SET|RESET)\b|set_config\s*\(/i } @pooled_sql;
is(join("\n", @set), '', scalar(@pooled_sql) . ' statements through the pooler, not one of them a SET');
# What the server was sent, from its log (log_statement = all): PgBouncer
# itself sets the startup parameters it tracks (application_name here) on a
# server connection before it serves a client; nothing else is a SET.
my @server_sets;
foreach my $line (grep { /statement: (?:SET|RESET)\b/i } split /\n/, slurp_file($node->logfile))
{
	my ($stmt) = $line =~ /statement: (.*)$/;
	push @server_sets, $line
	  if grep { !/^\s*$/ && !/^\s*SET (?:application_name|client_encoding|datestyle|timezone|standard_conforming_strings)\s*=/i }
	  split /;/, $stmt;
}
is(join("\n", @server_sets), '', 'the server received no SET but PgBouncer\'s own for the parameters it tracks');
note 'SETs of PgBouncer the server received: '
  . scalar(grep { /statement: SET /i } split /\n/, slurp_file($node->logfile));

my %seen = map { $_->{pid} => 1 } @calls;
is(join(' ', sort { $a <=> $b } keys %seen), "$X $Y", scalar(@calls) . ' calls of clients a, b, c and l, all on the two server connections');

quit_client($clients{$_}) foreach sort keys %clients;
stop_pgbouncer();
$node->stop;
done_testing();
