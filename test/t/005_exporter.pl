# Monitoring end to end: monitoring/queries.yaml read by the real
# prometheus-postgres-exporter (Debian's package), connected as a login role
# that is only a member of agentretry_operator.
#
# Two tenants get operations in every state that waits for someone, a
# retry budget, replays, a retry, an approval and orphan side effects (one
# acknowledged), all through agentretry's functions in one session that
# writes its stats counts at the end; twenty more tenants get 100,000
# operations inserted directly.  Then:
#   - no query of the file reads operations with a sequential scan (EXPLAIN
#     after ANALYZE);
#   - the exporter, started on a free local port, loads the file and reports
#     no error for it (pg_up, pg_exporter_last_scrape_error,
#     pg_exporter_user_queries_load_error, its log);
#   - every metric the file declares is exported, and the values are those
#     of the data: queue depths equal a count of the table for every tenant
#     and state (0 included), stats, backlogs, the budget's balance and the
#     open anomalies equal what was done.
#
# Skipped when the exporter is not installed (test/setup.sh installs it).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use HTTP::Tiny;
use IO::Socket::INET;
use File::Basename qw(dirname);
use File::Spec;
use Time::HiRes qw(time usleep);

my ($exporter) =
  grep { -x $_ }
  map { "$_/prometheus-postgres-exporter" } (split(/:/, $ENV{PATH} // ''), '/usr/bin');
plan skip_all =>
  'prometheus-postgres-exporter is not installed (apt-get install prometheus-postgres-exporter)'
  unless $exporter;

my $queries_file = File::Spec->rel2abs(
	File::Spec->catfile(dirname(__FILE__), '..', '..', 'monitoring', 'queries.yaml'));
my $n_bulk = 100_000;
my $n_bulk_tenants = 20;
my $db = 'app';

# ---------------------------------------------------------------------------
# queries.yaml, as far as this test needs it: each namespace's query and its
# columns with their usage.  The file is written in one layout (a literal
# block for each query, one "- column:" per metric); the exporter itself is
# the judge of the YAML below.
# ---------------------------------------------------------------------------
sub read_queries
{
	my ($file) = @_;
	open my $fh, '<', $file or die "$file: $!";
	my (%ns, $name, $in_query, $column);
	my @order;
	while (my $line = <$fh>)
	{
		if ($line =~ /^([A-Za-z_][A-Za-z0-9_]*):\s*$/)
		{
			$name = $1;
			push @order, $name;
			$ns{$name} = { query => '', columns => [] };
			$in_query = 0;
			next;
		}
		next unless defined $name;
		if ($in_query)
		{
			if ($line =~ /^    (.*)$/ || $line =~ /^\s*$/)
			{
				$ns{$name}{query} .= ($1 // '') . "\n";
				next;
			}
			$in_query = 0;
		}
		if ($line =~ /^  query: \|\s*$/)
		{
			$in_query = 1;
		}
		elsif ($line =~ /^    - ([A-Za-z_][A-Za-z0-9_]*):\s*$/)
		{
			$column = { name => $1 };
			push @{ $ns{$name}{columns} }, $column;
		}
		elsif ($line =~ /^        usage: "?([A-Z]+)"?\s*$/ && $column)
		{
			$column->{usage} = $1;
		}
		elsif ($line =~ /^\S/ && $line !~ /^#/)
		{
			die "$file: unexpected line: $line";
		}
	}
	return (\%ns, \@order);
}

my ($ns, $ns_order) = read_queries($queries_file);
is( join(' ', @$ns_order),
	'agentretry_stats_5m agentretry_queue agentretry_queue_oldest_due agentretry_verify_backlog '
	  . 'agentretry_approval_backlog agentretry_budget agentretry_anomalies',
	'queries.yaml: the namespaces');
is( join(', ', grep { $ns->{$_}{query} !~ /\S/ || !@{ $ns->{$_}{columns} }
		  || grep { !$_->{usage} } @{ $ns->{$_}{columns} } } @$ns_order),
	'', 'queries.yaml: each namespace has a query and columns with a usage');

# ---------------------------------------------------------------------------
# the cluster, the database and the exporter's role
# ---------------------------------------------------------------------------
my $node = PostgreSQL::Test::Cluster->new('exporter');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
log_min_messages = warning
});
$node->start;

sub query
{
	my ($sql) = @_;
	return $node->safe_psql($db, $sql);
}

$node->safe_psql('postgres', "CREATE DATABASE $db");
query(q{
CREATE EXTENSION agentretry;
CREATE ROLE agentretry_exporter LOGIN;
GRANT agentretry_operator TO agentretry_exporter;
});

# ---------------------------------------------------------------------------
# the data, through agentretry's functions, in one session
#
# tools: lookup retries after 10 ms, charge after an hour, wipe needs an
# approval.  acme: in_progress 1, retry_wait 2 (one due), verify 1,
# awaiting_approval 1, dead 1; globex: in_progress 1, retry_wait 1 (not
# due), verify 2.  acme's lookup budget pays for two retries.
# ---------------------------------------------------------------------------
my $data_started = time;
my $data_out = query(q{
\set ON_ERROR_STOP 1
SELECT count(*) FROM (
	SELECT agentretry.register_tool('lookup', 'idempotent', 'read',
		base_delay => '10 ms', max_delay => '10 ms', jitter => 'none')
	UNION ALL
	SELECT agentretry.register_tool('charge', 'non_idempotent', 'write',
		base_delay => '1 hour', max_delay => '1 hour', jitter => 'none')
	UNION ALL
	SELECT agentretry.register_tool('wipe', 'non_idempotent', 'destructive')) r;
SELECT capacity FROM agentretry.set_budget('acme', 'tool', 'lookup', capacity => 10, refill_per_sec => 0);

-- acme: a success, replayed three times
SELECT lease_token AS tok FROM agentretry.claim('a-ok', '{}', 'lookup', 'acme') \gset
SELECT agentretry.complete('a-ok', :tok, '{}', 'acme');
SELECT outcome FROM agentretry.claim('a-ok', '{}', 'lookup', 'acme');
SELECT outcome FROM agentretry.claim('a-ok', '{}', 'lookup', 'acme');
SELECT outcome FROM agentretry.claim('a-ok', '{}', 'lookup', 'acme');
-- a retry that succeeds at its second attempt
SELECT lease_token AS tok FROM agentretry.claim('a-retried', '{}', 'lookup', 'acme') \gset
SELECT action FROM agentretry.fail('a-retried', :tok, 'transient', 'pre_execution', 'http_503', tenant => 'acme');
SELECT pg_sleep(0.05);
SELECT lease_token AS tok FROM agentretry.claim('a-retried', '{}', 'lookup', 'acme') \gset
SELECT agentretry.complete('a-retried', :tok, '{}', 'acme');
-- two retries waiting: one due in 10 ms, one in an hour
SELECT lease_token AS tok FROM agentretry.claim('a-due', '{}', 'lookup', 'acme') \gset
SELECT action FROM agentretry.fail('a-due', :tok, 'transient', 'pre_execution', 'http_503', tenant => 'acme');
SELECT lease_token AS tok FROM agentretry.claim('a-wait', '{}', 'charge', 'acme') \gset
SELECT action FROM agentretry.fail('a-wait', :tok, 'transient', 'pre_execution', 'http_503', tenant => 'acme');
-- leased
SELECT outcome FROM agentretry.claim('a-run', '{}', 'lookup', 'acme');
-- may have happened: verify
SELECT lease_token AS tok FROM agentretry.claim('a-unsure', '{}', 'charge', 'acme') \gset
SELECT action FROM agentretry.fail('a-unsure', :tok, 'ambiguous', 'mid_execution', 'timeout', tenant => 'acme');
-- waits for approval; and another one approved, run and completed
SELECT outcome FROM agentretry.claim('a-erase', '{}', 'wipe', 'acme');
SELECT outcome FROM agentretry.claim('a-erase-2', '{}', 'wipe', 'acme');
SELECT agentretry.approve('a-erase-2', 'acme', 'ticket 1');
SELECT lease_token AS tok FROM agentretry.claim('a-erase-2', '{}', 'wipe', 'acme') \gset
SELECT agentretry.complete('a-erase-2', :tok, '{}', 'acme');
-- dead-lettered
SELECT lease_token AS tok FROM agentretry.claim('a-bad', '{}', 'charge', 'acme') \gset
SELECT action FROM agentretry.fail('a-bad', :tok, 'permanent', 'pre_execution', 'http_400', tenant => 'acme');
-- a side effect nobody claimed
SELECT agentretry.observe('a-ghost', 'rcpt-a', 'acme', 'webhook');

-- globex
SELECT outcome FROM agentretry.claim('b-run', '{}', 'lookup', 'globex');
SELECT lease_token AS tok FROM agentretry.claim('b-wait', '{}', 'charge', 'globex') \gset
SELECT action FROM agentretry.fail('b-wait', :tok, 'transient', 'pre_execution', 'http_503', tenant => 'globex');
SELECT lease_token AS tok FROM agentretry.claim('b-ok', '{}', 'lookup', 'globex') \gset
SELECT agentretry.complete('b-ok', :tok, '{}', 'globex');
SELECT outcome FROM agentretry.claim('b-ok', '{}', 'lookup', 'globex');
SELECT lease_token AS tok FROM agentretry.claim('b-unsure-1', '{}', 'charge', 'globex') \gset
SELECT action FROM agentretry.fail('b-unsure-1', :tok, 'ambiguous', 'mid_execution', 'timeout', tenant => 'globex');
SELECT lease_token AS tok FROM agentretry.claim('b-unsure-2', '{}', 'charge', 'globex') \gset
SELECT action FROM agentretry.fail('b-unsure-2', :tok, 'ambiguous', 'mid_execution', 'timeout', tenant => 'globex');
-- an orphan, acknowledged: no longer open
SELECT agentretry.observe('b-ghost', 'rcpt-b', 'globex', 'webhook');
SELECT agentretry.acknowledge(id, 'seen') IS NOT NULL FROM agentretry.anomalies WHERE tenant = 'globex';

-- this session's counts, into stats_counts before it ends
SELECT agentretry.flush_stats() >= 0;
});
note "data session answers: " . join(' ', split(/\n/, $data_out));

is( query(q{
SELECT string_agg(tenant || ' ' || state || ' ' || n, ', ' ORDER BY tenant, state) FROM (
	SELECT tenant, state::text AS state, count(*) AS n FROM agentretry.operations GROUP BY 1, 2) s}),
	'acme awaiting_approval 1, acme dead 1, acme in_progress 1, acme retry_wait 2, acme succeeded 3, '
	  . 'acme verify 1, globex in_progress 1, globex retry_wait 1, globex succeeded 1, globex verify 2',
	'the data: operations of acme and globex in the states intended');
is( query(q{SELECT attempts || ' ' || state FROM agentretry.operations WHERE tenant = 'acme' AND key = 'a-retried'}),
	'2 succeeded', 'the data: a-retried succeeded at its second attempt');

# 100,000 operations of twenty other tenants, in blocks of 100 keys: 97
# succeeded, a retry due a minute ago, one due in an hour, and one leased,
# awaiting verification, dead or awaiting approval (by turns); then
# ANALYZE: the table the plans are checked on.
query(qq{
INSERT INTO agentretry.operations (tenant, key, op_hash, args, tool, state, attempts, lease_token,
	lease_expires_at, next_attempt_at, first_attempt_at, created_at, updated_at, state_since)
SELECT format('bulk-%s', lpad(((i / 100) % $n_bulk_tenants)::text, 2, '0')), format('bulk-%s', i),
	'\\x00'::bytea, '{}', 'lookup', s.state::agentretry.operation_state, 1, 1,
	CASE WHEN s.state = 'in_progress' THEN now() + interval '5 min' END,
	CASE i % 100 WHEN 97 THEN now() - interval '1 min' WHEN 99 THEN now() + interval '1 hour' END,
	now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
FROM generate_series(1, $n_bulk) AS i,
	LATERAL (SELECT CASE i % 100
		WHEN 97 THEN 'retry_wait'
		WHEN 98 THEN (ARRAY['in_progress', 'verify', 'dead', 'awaiting_approval'])[1 + (i / ($n_bulk_tenants * 100)) % 4]
		WHEN 99 THEN 'retry_wait'
		ELSE 'succeeded' END AS state) s;
ANALYZE;
});
is(query(q{SELECT count(*) FROM agentretry.operations}), $n_bulk + 14, "operations: $n_bulk more rows");

# ---------------------------------------------------------------------------
# plans: no query reads operations whole
# ---------------------------------------------------------------------------
foreach my $name (@$ns_order)
{
	my ($rc, $plan, $err) = $node->psql($db,
		"SET ROLE agentretry_exporter;\nEXPLAIN (COSTS OFF)\n$ns->{$name}{query}");
	ok($rc == 0 && $plan =~ /\S/ && $plan !~ /Seq Scan on operations/,
		"$name: no sequential scan of operations")
	  or diag($rc == 0 ? $plan : $err);
}
my $depth_plan = query("EXPLAIN (COSTS OFF)\n$ns->{agentretry_queue}{query}");
foreach my $index (qw(operations_lease_expiry operations_retry_due operations_attention))
{
	like($depth_plan, qr/\b$index\b/, "agentretry_queue: reads $index");
}

# ---------------------------------------------------------------------------
# the exporter
# ---------------------------------------------------------------------------
my %exp = (out => '', err => '');
my $port;
# straight to 127.0.0.1, whatever proxy the environment names
my $http = HTTP::Tiny->new(timeout => 10, proxy => undef, http_proxy => undef);
my $metrics_text;

sub stop_exporter
{
	return unless $exp{h};
	$exp{h}->signal('TERM') if $exp{h}->pumpable;
	my $until = time + 10;
	while ($exp{h}->pumpable && time < $until)
	{
		$exp{h}->pump_nb;
		usleep(50_000);
	}
	$exp{h}->kill_kill if $exp{h}->pumpable;
	$exp{h}->finish;
	delete $exp{h};
	return;
}

# Ports from 9287 on (not 9187, the package's own): take the first that
# can be bound now; if the exporter still loses it, the next one.
my @exporter_args = (
	'--extend.query-path=' . $queries_file,
	'--disable-default-metrics', '--disable-settings-metrics',
	'--no-collector.database', '--no-collector.bgwriter',
	'--log.level=info');
my $dsn = sprintf('host=%s port=%d dbname=%s user=agentretry_exporter sslmode=disable',
	$node->host, $node->port, $db);
note "exporter: $exporter; DATA_SOURCE_NAME=$dsn";
note 'exporter version: ' . (split /\n/, `$exporter --version 2>&1`)[0];

my $candidate = 9287;
ATTEMPT: for my $attempt (1 .. 5)
{
	my $p;
	for (; $candidate < 9387; $candidate++)
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
	%exp = (out => '', err => '');
	{
		local $ENV{DATA_SOURCE_NAME} = $dsn;
		$exp{h} = IPC::Run::start(
			[ $exporter, @exporter_args, "--web.listen-address=127.0.0.1:$p" ],
			'<', \undef, '>', \$exp{out}, '2>', \$exp{err});
	}
	my $until = time + 30;
	while (time < $until)
	{
		$exp{h}->pump_nb;
		last unless $exp{h}->pumpable;
		if ($exp{err} =~ /Listening on/)
		{
			my $r = $http->get("http://127.0.0.1:$p/metrics");
			if ($r->{success} && $r->{content} =~ /^pg_up /m)
			{
				$port = $p;
				$metrics_text = $r->{content};
				last ATTEMPT;
			}
		}
		usleep(100_000);
	}
	note "exporter on port $p did not answer: $exp{err}";
	stop_exporter();
}
if (!ok(defined $port, 'the exporter answers /metrics' . ($port ? " on 127.0.0.1:$port" : '')))
{
	diag("the exporter did not start: $exp{err}");
	$node->stop;
	done_testing();
	exit;
}
my $scraped = time;

# a second scrape: the same queue depths, without error
my $r2 = $http->get("http://127.0.0.1:$port/metrics");
my $depth_lines = sub { join "\n", grep { /^agentretry_queue_depth\{/ } split /\n/, shift // '' };
ok( $r2->{success}
	  && $r2->{content} =~ /^pg_exporter_last_scrape_error 0$/m
	  && $r2->{content} =~ /^pg_exporter_scrapes_total 2$/m
	  && $depth_lines->($r2->{content}) eq $depth_lines->($metrics_text)
	  && $depth_lines->($metrics_text) ne '',
	'a second scrape: no error, the same queue depths');

is( query(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = 'agentretry_exporter' AND datname = current_database()}),
	't', 'the exporter is connected to the database as agentretry_exporter');
is( query(q{SELECT rolsuper OR rolcreaterole OR rolbypassrls FROM pg_roles WHERE rolname = 'agentretry_exporter'}),
	'f', 'agentretry_exporter has no other privilege than its membership');
stop_exporter();

# ---------------------------------------------------------------------------
# what it exported
# ---------------------------------------------------------------------------
# name => [ { labels => {..}, value => '..' }, ... ]
my %series;
foreach my $line (split /\n/, $metrics_text)
{
	next if $line =~ /^#/ || $line !~ /\S/;
	my ($name, $labels, $value) = $line =~ /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
	  or next;
	my %l;
	$labels //= '';
	while ($labels =~ /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)
	{
		$l{$1} = $2;
	}
	push @{ $series{$name} }, { labels => \%l, value => $value };
}

# The value of the one series of $name whose labels include %want.
sub value_of
{
	my ($name, %want) = @_;
	my @m = grep {
		my $s = $_;
		!grep { !defined $s->{labels}{$_} || $s->{labels}{$_} ne $want{$_} } keys %want
	} @{ $series{$name} // [] };
	return @m == 1 ? $m[0]{value} : @m ? "several (" . scalar(@m) . ")" : 'missing';
}

is(value_of('pg_up'), '1', 'pg_up is 1');
is(value_of('pg_exporter_last_scrape_error'), '0', 'pg_exporter_last_scrape_error is 0');
is(value_of('pg_exporter_user_queries_load_error', filename => $queries_file),
	'0', 'pg_exporter_user_queries_load_error is 0 for queries.yaml');
my @log_errors = grep { /level=warn|error/i } split /\n/, $exp{err};
is(join("\n", @log_errors), '', 'the exporter logged no error or warning');
note "exporter log:\n$exp{err}";

# Every metric the file declares is there, and only what it declares
# carries the agentretry_ prefix.
my (@declared, %metrics_of);
foreach my $n (@$ns_order)
{
	$metrics_of{$n} = [ map { "${n}_$_->{name}" } grep { $_->{usage} ne 'LABEL' } @{ $ns->{$n}{columns} } ];
	push @declared, @{ $metrics_of{$n} };
}
is(join(', ', grep { !$series{$_} } @declared), '', scalar(@declared) . ' declared metrics are exported');
my %declared = map { $_ => 1 } @declared;
is(join(', ', grep { /^agentretry_/ && !$declared{$_} } sort keys %series), '',
	'no agentretry_ metric that the file does not declare');
# each namespace's labels are exactly the LABEL columns (and the exporter's server)
foreach my $n (@$ns_order)
{
	my $labels = join ',', sort('server', map { $_->{name} } grep { $_->{usage} eq 'LABEL' } @{ $ns->{$n}{columns} });
	my @wrong = grep { join(',', sort keys %{ $_->{labels} }) ne $labels }
	  map { @{ $series{$_} // [] } } @{ $metrics_of{$n} };
	is(scalar(@wrong), 0, "$n: every series is labelled $labels");
}

# queue depth: every tenant and state, 0 included, against a count of the table
my @truth = map { [ split /\|/ ] } split /\n/, query(q{
SELECT t.tenant, s.state, count(o.key)
FROM (SELECT DISTINCT tenant FROM agentretry.operations) t
CROSS JOIN unnest(ARRAY['in_progress', 'retry_wait', 'verify', 'awaiting_approval', 'dead']) s (state)
LEFT JOIN agentretry.operations o ON o.tenant = t.tenant AND o.state::text = s.state
GROUP BY 1, 2 ORDER BY 1, 2});
is(scalar(@truth), ($n_bulk_tenants + 2) * 5, 'the table has 22 tenants');
is( join(', ', map { "$_->[0] $_->[1]: " . value_of('agentretry_queue_depth', tenant => $_->[0], state => $_->[1]) . " not $_->[2]" }
		grep { value_of('agentretry_queue_depth', tenant => $_->[0], state => $_->[1]) ne $_->[2] } @truth),
	'', 'agentretry_queue_depth: the count of every tenant and state');
is(scalar(@{ $series{agentretry_queue_depth} }), scalar(@truth), 'agentretry_queue_depth: no other series');
is(value_of('agentretry_queue_depth', tenant => 'acme', state => 'retry_wait'), '2', 'acme: 2 retries waiting');
is(value_of('agentretry_queue_depth', tenant => 'globex', state => 'verify'), '2', 'globex: 2 awaiting verification');
is(value_of('agentretry_queue_depth', tenant => 'globex', state => 'dead'), '0', 'globex: none dead, exported as 0');

# oldest due retry
my $since_data = $scraped - $data_started + 1;
my $acme_due = value_of('agentretry_queue_oldest_due_seconds', tenant => 'acme');
ok($acme_due =~ /^[0-9.e+-]+$/ && $acme_due > 0 && $acme_due < $since_data,
	"acme: the due retry has waited $acme_due s (less than the $since_data s since the data)");
is(value_of('agentretry_queue_oldest_due_seconds', tenant => 'globex'), '0', 'globex: no retry due (the one waiting is due in an hour)');
my $bulk_due = value_of('agentretry_queue_oldest_due_seconds', tenant => 'bulk-00');
ok($bulk_due =~ /^[0-9.e+-]+$/ && $bulk_due >= 60 && $bulk_due < 60 + $since_data,
	"bulk-00: the due retries have waited a minute ($bulk_due s)");

# verify and approval backlogs
is(value_of('agentretry_verify_backlog_count', tenant => 'acme'), '1', 'acme: verify backlog 1');
is(value_of('agentretry_verify_backlog_count', tenant => 'globex'), '2', 'globex: verify backlog 2');
my $verify_age = value_of('agentretry_verify_backlog_oldest_seconds', tenant => 'globex');
ok($verify_age =~ /^[0-9.e+-]+$/ && $verify_age > 0 && $verify_age < $since_data, "globex: oldest verification $verify_age s");
my $bulk_verify_age = value_of('agentretry_verify_backlog_oldest_seconds', tenant => 'bulk-00');
ok($bulk_verify_age =~ /^[0-9.e+-]+$/ && $bulk_verify_age >= 3600,
	"bulk-00: oldest verification an hour old ($bulk_verify_age s)");
is(value_of('agentretry_approval_backlog_count', tenant => 'acme'), '1', 'acme: 1 awaiting approval');
is(value_of('agentretry_approval_backlog_count', tenant => 'globex'), '0', 'globex: none awaiting approval');
is(value_of('agentretry_approval_backlog_oldest_seconds', tenant => 'globex'), '0', 'globex: approval age 0');
my $approval_age = value_of('agentretry_approval_backlog_oldest_seconds', tenant => 'acme');
ok($approval_age =~ /^[0-9.e+-]+$/ && $approval_age > 0 && $approval_age < $since_data, "acme: approval waiting $approval_age s");
is( join(' ', map { value_of("agentretry_verify_backlog_count", tenant => $_->[0]) } grep { $_->[1] eq 'verify' } @truth),
	join(' ', map { $_->[2] } grep { $_->[1] eq 'verify' } @truth),
	'agentretry_verify_backlog_count agrees with the table for every tenant');
is( join(' ', map { value_of("agentretry_approval_backlog_count", tenant => $_->[0]) } grep { $_->[1] eq 'awaiting_approval' } @truth),
	join(' ', map { $_->[2] } grep { $_->[1] eq 'awaiting_approval' } @truth),
	'agentretry_approval_backlog_count agrees with the table for every tenant');

# stats over 5 minutes, counted by hand from the session above
my %stats_expected = (
	'acme lookup' => {
		first_attempts => 4, executions => 5, replays => 3, retries => 1, successes => 2,
		successes_after_retry => 1, verifications => 0, dead_letters => 0, approvals => 0,
		retry_rate => '0.2' },
	'acme charge' => {
		first_attempts => 3, executions => 3, replays => 0, retries => 0, successes => 0,
		verifications => 1, dead_letters => 1, retry_rate => '0',
		completion_p50_seconds => 'NaN' },
	'acme wipe' => { first_attempts => 1, executions => 1, successes => 1, approvals => 1 },
	'acme ' => {
		first_attempts => 0, executions => 0, duplicate_side_effects => 0, retry_rate => 'NaN' },
	'globex lookup' => { first_attempts => 2, executions => 2, replays => 1, successes => 1 },
	'globex charge' => { first_attempts => 3, verifications => 2, retries => 0 },
	'globex ' => { executions => 0 });
my @stats_wrong;
foreach my $k (sort keys %stats_expected)
{
	my ($tenant, $tool) = split / /, $k, 2;
	$tool //= '';
	foreach my $m (sort keys %{ $stats_expected{$k} })
	{
		my $v = value_of("agentretry_stats_5m_$m", tenant => $tenant, tool => $tool);
		push @stats_wrong, "$tenant/$tool $m = $v, not $stats_expected{$k}{$m}"
		  if $v ne $stats_expected{$k}{$m};
	}
}
is(join('; ', @stats_wrong), '', 'agentretry_stats_5m_*: the counts of the session (replays of acme lookup: 3)');
is(scalar(@{ $series{agentretry_stats_5m_replays} }), 7, 'agentretry_stats_5m: 7 tenant and tool rows (two of orphans)');
my $p95 = value_of('agentretry_stats_5m_completion_p95_seconds', tenant => 'acme', tool => 'lookup');
ok($p95 =~ /^[0-9.e+-]+$/ && $p95 > 0 && $p95 <= 1, "acme lookup: completion p95 $p95 s");

# every stats series against stats() itself (a second reading of the same
# window, nothing happened since)
my @stats_cols = map { $_->{name} } grep { $_->{usage} ne 'LABEL' } @{ $ns->{agentretry_stats_5m}{columns} };
my @stats_rows = map { [ split /\|/, $_, -1 ] } split /\n/, query($ns->{agentretry_stats_5m}{query});
my @stats_diff;
foreach my $row (@stats_rows)
{
	my ($tenant, $tool, @v) = @$row;
	for my $i (0 .. $#stats_cols)
	{
		my $want = $v[$i] eq '' ? 'NaN' : $v[$i];
		my $got = value_of("agentretry_stats_5m_$stats_cols[$i]", tenant => $tenant, tool => $tool);
		push @stats_diff, "$tenant/$tool $stats_cols[$i]: $got vs $want"
		  unless $got eq $want || ($got =~ /^[0-9.e+-]+$/ && $want =~ /^[0-9.e+-]+$/ && abs($got - $want) < 1e-9);
	}
}
is(join('; ', @stats_diff), '', 'agentretry_stats_5m: every value is that of stats()');

# the budget: two retries paid out of 10 tokens, no refill
my %budget = (tenant => 'acme', scope => 'tool', subject => 'lookup');
is( join(' ', map { value_of("agentretry_budget_$_", %budget) }
		qw(capacity balance refill_per_sec ratio debits_last_hour tokens_last_hour denials_last_hour last_denial_timestamp_seconds)),
	'10 8 0 NaN 2 2 0 0',
	'agentretry_budget_*: acme lookup capacity 10, balance 8 after two retries, no ratio, no denial');
is(scalar(@{ $series{agentretry_budget_balance} }), 1, 'agentretry_budget: one budget');

# open anomalies: acme's orphan; globex's was acknowledged; every kind for
# both tenants, 0 when none
is(value_of('agentretry_anomalies_open', tenant => 'acme', kind => 'orphan_side_effect'), '1',
	'acme: 1 unacknowledged orphan_side_effect');
is(value_of('agentretry_anomalies_open', tenant => 'globex', kind => 'orphan_side_effect'), '0',
	'globex: its orphan_side_effect was acknowledged');
my $kinds = query(q{SELECT count(*) FROM unnest(enum_range(NULL::agentretry.anomaly_kind))});
is( join(' ', map { "$_->{labels}{tenant}/$_->{labels}{kind}" }
		grep { $_->{value} ne '0' } @{ $series{agentretry_anomalies_open} }),
	'acme/orphan_side_effect', 'no other anomaly is open');
is(scalar(@{ $series{agentretry_anomalies_open} }), ($n_bulk_tenants + 2) * $kinds,
	"agentretry_anomalies_open: every tenant and each of the $kinds kinds");
my $orphan_age = value_of('agentretry_anomalies_oldest_open_seconds', tenant => 'acme', kind => 'orphan_side_effect');
ok($orphan_age =~ /^[0-9.e+-]+$/ && $orphan_age > 0 && $orphan_age < $since_data, "acme: the orphan has been open $orphan_age s");

$node->stop;
done_testing();
