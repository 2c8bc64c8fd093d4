# Upgrade and dump/restore test.
#
# 1. Upgrades, compared member by member in pg_dump's own words.  For each
#    released version V (0.1.0, 0.2.0, 0.3.0, 0.4.0) a database gets
#    CREATE EXTENSION agentretry VERSION 'V' and then ALTER EXTENSION
#    agentretry UPDATE; one more gets a fresh CREATE EXTENSION agentretry
#    (the complete script of the current version).  The schema dump of each
#    with pg_dump -s --binary-upgrade is compared with the fresh install's.
#    A plain schema dump shows only CREATE EXTENSION, which cannot differ;
#    --binary-upgrade dumps every member object (type, table, column,
#    constraint, index, trigger, view, function, sequence, comment, grant
#    and initial privilege, the list of configuration tables) as pg_upgrade
#    would restore it.  Only what has to differ between two databases is
#    normalised (see normalise_dump below); a difference in anything else
#    fails the test and is printed as a unified diff.
#
# 2. Dump and restore of a database in use.  A database at the current
#    version gets rows in every configuration table (tools, tenant policies,
#    budgets, their stripes and ledger, operations in every state, events,
#    runs with context, anomalies, stats counts, token floors).  It is
#    dumped with pg_dump -Fc and restored with pg_restore into a new
#    database.  Then every relation registered with pg_extension_config_dump
#    (read from pg_extension.extconfig) has the same rows (the sorted text
#    of each table) and the same sequence state; new events, anomalies,
#    ledger rows and token floors get ids above every restored one; and the
#    restored database works: a restored success replays, a restored lease
#    still fences other callers, a key purged before the dump gets a token
#    above its tenant's floor, a new key executes, a run's context goes on
#    from its restored version.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use File::Path qw(make_path);

my @released = ('0.1.0', '0.2.0', '0.3.0', '0.4.0');

my $node = PostgreSQL::Test::Cluster->new('upgrade_dump');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
log_min_messages = warning
});
$node->start;

# Dumps and their normalised forms stay in tmp_check for inspection.
my $outdir = "$PostgreSQL::Test::Utils::tmp_check/upgrade_dump";
make_path($outdir);

sub query
{
	my ($db, $sql) = @_;
	return $node->safe_psql($db, $sql);
}

sub write_file
{
	my ($path, $text) = @_;
	open my $fh, '>', $path or die "$path: $!";
	print $fh $text;
	close $fh or die "$path: $!";
	return;
}

# A unified diff of two texts, labelled.
sub unified_diff
{
	my ($name, $label_a, $a, $label_b, $b) = @_;
	my ($fa, $fb) = ("$outdir/$name.a", "$outdir/$name.b");
	write_file($fa, $a);
	write_file($fb, $b);
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'diff', '-u', '--label', $label_a, '--label', $label_b, $fa, $fb ],
		'>', \$out, '2>', \$err);
	return $out . $err;
}

# Equal texts pass; otherwise the test fails and prints the diff.
sub same_text
{
	my ($got, $expected, $test_name, $label_got, $label_expected, $file_name) = @_;
	my $ok = ok($got eq $expected, $test_name);
	diag(unified_diff($file_name, $label_expected, $expected, $label_got, $got))
	  unless $ok;
	return $ok;
}

sub run_program
{
	my (@cmd) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# ---------------------------------------------------------------------------
# 1. upgraded databases against a fresh install, as pg_dump --binary-upgrade
#    dumps them
# ---------------------------------------------------------------------------

# Normalisation of a --binary-upgrade schema dump: only what must differ
# between two databases of one cluster holding the same schema.  Every rule
# rewrites part of one line and removes no line, so a line that one dump
# has and the other lacks (an object, a column, a grant, a missing value
# recorded by ADD COLUMN, ...) still shows in the comparison.
#   - \restrict and \unrestrict KEY: pg_dump picks a random key for every
#     dump.
#   - "-- Dumped from database version" and "-- Dumped by pg_dump version":
#     pg_dump's header; the same server and pg_dump made all dumps here,
#     so these cannot differ, but they are not part of the schema.
#   - the argument of every binary_upgrade_set_next_*_oid and
#     binary_upgrade_set_next_*_relfilenode call: the OID (pg_type,
#     pg_enum, pg_class) or relfilenode the next CREATE is to get, whatever
#     the server assigned in that database.  The statement the call
#     prepares follows it and is compared as it is.
#   - the LSNs of binary_upgrade_set_next_attribute_versions: one per
#     attribute of a table or composite type, the WAL position of when the
#     attribute was created (the attributes an update added carry later
#     ones than their relation's others), never the same in two databases.
#     Their number is kept.
#   - the relation OIDs of binary_upgrade_create_empty_extension (the
#     extension's configuration relations, pg_extension.extconfig): each is
#     replaced by the relation's name in that database, so the list and
#     its order are still compared; an OID of no relation stays a number.
#   - relfrozenxid and relminmxid in the UPDATE of pg_class after each
#     table: transaction ids of the database.
#   - the OID in "WHERE oid = '...'" of those UPDATEs for TOAST tables,
#     which are named after OIDs (pg_toast.pg_toast_<oid>).
#   - the database's name, should pg_dump print it (without --create it
#     does not): each database has its own.  The names used here occur
#     nowhere else.
sub normalise_dump
{
	my ($dump, $db, $relname_of) = @_;
	my @out;
	for my $line (split /\n/, $dump, -1)
	{
		$line =~ s/^\\((?:un)?restrict) \S+$/\\$1 KEY/;
		$line =~ s/^(-- Dumped (?:from database|by pg_dump) version ).*$/$1VERSION/;
		$line =~ s/(binary_upgrade_set_next_\w+_(?:oid|relfilenode)\()'\d+'/$1'OID'/;
		$line =~ s!(binary_upgrade_set_next_attribute_versions\('\{)([^}]*)(\})!
			$1 . join(',', map { 'LSN' } split(/,/, $2)) . $3!e;
		$line =~ s!(binary_upgrade_create_empty_extension\('agentretry', 'agentretry', (?:true|false), '[^']*', )'\{([\d,]*)\}'!
			$1 . "'{" . join(',', map { $relname_of->{$_} // $_ } split(/,/, $2)) . "}'"!e;
		$line =~ s/^SET relfrozenxid = '\d+', relminmxid = '\d+'$/SET relfrozenxid = 'XID', relminmxid = 'MXID'/;
		$line =~ s/^WHERE oid = '\d+';$/WHERE oid = 'OID';/;
		$line =~ s/\b\Q$db\E\b/DBNAME/g;
		push @out, $line;
	}
	return join("\n", @out);
}

# The dump of one database, raw and normalised, and what it must show.
sub dump_schema
{
	my ($db) = @_;
	my $file = "$outdir/$db.sql";
	my ($rc, $out, $err) = run_program('pg_dump', '-s', '--binary-upgrade',
		'-f', $file, '-d', $node->connstr($db));
	is($rc, 0, "$db: pg_dump -s --binary-upgrade succeeds") or diag($err);
	my $dump = slurp_file($file);
	my %relname_of = split /[|\n]/, query($db,
		q{SELECT c.oid, c.oid::regclass FROM pg_class c
		  WHERE c.relnamespace = 'agentretry'::regnamespace});
	my $normalised = normalise_dump($dump, $db, \%relname_of);
	write_file("$outdir/$db.normalised.sql", $normalised);

	# The dump names every member of the extension (ALTER EXTENSION ...
	# ADD, one per member), not just CREATE EXTENSION.
	my $members = query($db,
		q{SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
		  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
			AND e.extname = 'agentretry'});
	my $added = () = $dump =~ /^ALTER EXTENSION agentretry ADD /mg;
	cmp_ok($members, '>', 50, "$db: the extension has its members");
	is($added, $members, "$db: the dump adds each of its $members members to the extension");
	return $normalised;
}

my $fresh_db = 'ar_dump_fresh_install';
query('postgres', "CREATE DATABASE $fresh_db");
query($fresh_db, 'CREATE EXTENSION agentretry');
my $current = query($fresh_db,
	q{SELECT extversion FROM pg_extension WHERE extname = 'agentretry'});
is($current, query('postgres',
		q{SELECT default_version FROM pg_available_extensions WHERE name = 'agentretry'}),
	'fresh install: the default version');
# CREATE EXTENSION runs the complete script of the version when there is one
# (and 0.1.0 with the updates when there is none), so the comparison below
# compares the complete script with the update scripts.
my $sharedir = query('postgres',
	q{SELECT setting FROM pg_config WHERE name = 'SHAREDIR'});
ok(-f "$sharedir/extension/agentretry--$current.sql",
	"the complete script of $current is installed");
my $fresh_dump = dump_schema($fresh_db);

for my $v (@released)
{
	(my $db = "ar_dump_upgraded_from_$v") =~ tr/./_/;
	query('postgres', "CREATE DATABASE $db");
	query($db, "CREATE EXTENSION agentretry VERSION '$v'");
	is(query($db, q{SELECT extversion FROM pg_extension WHERE extname = 'agentretry'}),
		$v, "$v installed");
	query($db, 'ALTER EXTENSION agentretry UPDATE');
	is(query($db, q{SELECT extversion FROM pg_extension WHERE extname = 'agentretry'}),
		$current, "$v updated to $current");
	my $dump = dump_schema($db);
	same_text($dump, $fresh_dump,
		"updated from $v: pg_dump --binary-upgrade dumps what a fresh install dumps",
		"updated from $v", "fresh install of $current", "fresh_vs_$db");
}

# ---------------------------------------------------------------------------
# 2. dump and restore of a database in use
# ---------------------------------------------------------------------------
my $src = 'ar_dump_source';
my $dst = 'ar_dump_restored';
query('postgres', "CREATE DATABASE $src");

# Tools of every tier and the policies and budgets of tenant acme.  t_pay
# retries an hour later, so its retries are still waiting after the
# restore; t_short keeps a terminal operation for 1 ms, so the sweep purges
# it at once and raises acme's token floor.
query($src, q{
CREATE EXTENSION agentretry;
SELECT (agentretry.register_tool('t_pay', 'non_idempotent', 'write',
	max_attempts => 3, base_delay => '1 hour', max_delay => '1 hour', jitter => 'none',
	compensate_tool => 't_refund')).name;
SELECT (agentretry.register_tool('t_refund', 'idempotent', 'write')).name;
SELECT (agentretry.register_tool('t_fetch', 'idempotent', 'read',
	max_attempts => 5, base_delay => '1 hour', max_delay => '2 hours', multiplier => 1.5,
	jitter => 'none', lease => '10 minutes')).name;
SELECT (agentretry.register_tool('t_purge', 'non_idempotent', 'destructive')).name;
SELECT (agentretry.register_tool('t_short', 'idempotent', 'write', ttl => '1 millisecond')).name;
SELECT (agentretry.set_tenant_policy('acme', max_attempts => 4, deadline => '1 day')).tool;
SELECT (agentretry.set_tenant_policy('acme', 't_fetch', lease => '20 minutes',
	requires_approval => false)).tool;
SELECT (agentretry.set_budget('acme', 'tenant', 'acme', capacity => 50, refill_per_sec => 0.5,
	stripes => 3)).subject;
SELECT (agentretry.set_budget('acme', 'tool', 't_pay', ratio => 0.5, ratio_floor => 4)).subject;
});

# Operations in every state, with receipts, a run with its context, an
# orphan side effect (one anomaly acknowledged), a purge, and the stats of
# the session written out.  agentretry.trace_all makes claims, replays and
# completions events too.
query($src, q{
SET agentretry.trace_all = on;
-- succeeded, with a receipt, in a run; and a replay of it
SELECT agentretry.start_run('run-1', 'acme', workflow_version => 'wf-2',
	correlation_id => 'corr-1');
SELECT outcome FROM agentretry.claim('k-done', '{"amount": 10}', 't_pay', 'acme',
	run_id => 'run-1', step => 'charge', owner => 'w1');
SELECT agentretry.complete('k-done', 1, '{"charge": "ch-1"}', 'acme',
	compensate_args => '{"charge": "ch-1"}', receipt => 'rcpt-1');
SELECT outcome FROM agentretry.claim('k-done', '{"amount": 10}', 't_pay', 'acme');
SELECT agentretry.checkpoint('run-1', 'charge', '{"charged": "ch-1"}', 'acme');
SELECT agentretry.checkpoint('run-1', 'ship', '{"charged": "ch-1", "shipped": false}', 'acme',
	expected_version => 1);
-- in progress: a lease held across the dump
SELECT outcome FROM agentretry.claim('k-leased', '{"n": 1}', 't_fetch', 'acme',
	run_id => 'run-1', step => 'ship', owner => 'w2');
-- waiting for a retry (a debit of both budgets), and cancelled
SELECT outcome FROM agentretry.claim('k-retry', '{"n": 2}', 't_pay', 'acme', owner => 'w3');
SELECT action FROM agentretry.fail('k-retry', 1, 'transient', 'pre_execution', 'http_503',
	'unavailable', tenant => 'acme');
SELECT outcome FROM agentretry.claim('k-cancelled', '{"n": 3}', 't_pay', 'acme');
SELECT action FROM agentretry.fail('k-cancelled', 1, 'transient', 'pre_execution', 'http_503',
	tenant => 'acme');
SELECT agentretry.cancel('k-cancelled', 'acme', 'customer withdrew');
-- awaiting verification, and dead
SELECT outcome FROM agentretry.claim('k-verify', '{"n": 4}', 't_pay', 'acme');
SELECT action FROM agentretry.fail('k-verify', 1, 'ambiguous', 'post_execution', 'timeout',
	tenant => 'acme');
SELECT outcome FROM agentretry.claim('k-dead', '{"n": 5}', 't_fetch', 'acme');
SELECT action FROM agentretry.fail('k-dead', 1, 'permanent', code => 'http_404', tenant => 'acme');
-- awaiting approval (a destructive tool), in another tenant too
SELECT outcome FROM agentretry.claim('k-approval', '{"n": 6}', 't_purge', 'acme');
SELECT outcome FROM agentretry.claim('k-approval', '{"n": 6}', 't_purge');
-- succeeded in the default tenant
SELECT outcome FROM agentretry.claim('k-done', '{"n": 7}', 't_fetch');
SELECT agentretry.complete('k-done', 1, '{"rows": 7}', receipt => 'rcpt-7');
-- to be purged: its tenant's floor rises to its token (2: claimed twice)
SELECT outcome FROM agentretry.claim('k-purged', '{"n": 8}', 't_short', 'acme');
SELECT agentretry.release('k-purged', 1, 'acme');
SELECT outcome, lease_token FROM agentretry.claim('k-purged', '{"n": 8}', 't_short', 'acme');
SELECT agentretry.complete('k-purged', 2, '{"ok": true}', 'acme');
-- an orphan side effect, acknowledged, and a second one left open
SELECT agentretry.observe('k-unknown', 'rcpt-9', 'acme', 'webhook', '{"status": "paid"}');
SELECT agentretry.observe('k-unknown-2', 'rcpt-10', 'acme', 'audit');
SELECT agentretry.acknowledge(id, 'checked') FROM agentretry.anomalies WHERE key = 'k-unknown';
SELECT 'slept' FROM pg_sleep(0.01);
SELECT (agentretry.sweep()).operations_purged;
SELECT agentretry.flush_stats();
-- a membership (a predefined role, present in every cluster): tenancy on
SELECT agentretry.add_tenant_member('pg_read_all_stats', 'acme');
});

my %config = map { my ($rel, $kind, $cond) = split /\|/; ($rel => [ $kind, $cond // '' ]) }
  split /\n/, query($src, q{
	SELECT u.c::regclass, c.relkind, u.w
	FROM pg_extension e, unnest(e.extconfig, e.extcondition) u (c, w)
	JOIN pg_class c ON c.oid = u.c
	WHERE e.extname = 'agentretry' ORDER BY 1});
my @tables = sort grep { $config{$_}[0] eq 'r' } keys %config;
my @sequences = sort grep { $config{$_}[0] eq 'S' } keys %config;
cmp_ok(scalar(@tables), '>=', 12, 'configuration tables: ' . join(', ', @tables));
cmp_ok(scalar(@sequences), '>=', 4, 'configuration sequences: ' . join(', ', @sequences));
is(query($src, q{SELECT array_agg(DISTINCT state ORDER BY state) FROM agentretry.operations}),
	'{in_progress,retry_wait,verify,succeeded,dead,cancelled,awaiting_approval}',
	'source: an operation in every state');

# Every configuration table's rows as sorted text, and every configuration
# sequence's state.
sub table_text
{
	my ($db, $table) = @_;
	return query($db, qq{
		SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')
		FROM $table t});
}

sub sequence_state
{
	my ($db, $seq) = @_;
	return query($db, qq{SELECT last_value, is_called FROM $seq});
}

my (%src_rows, %src_seq);
for my $t (@tables)
{
	$src_rows{$t} = table_text($src, $t);
	ok($src_rows{$t} ne '', "source: $t has rows");
}
$src_seq{$_} = sequence_state($src, $_) for @sequences;

# pg_dump -Fc, then pg_restore into a new, empty database
my $archive = "$outdir/$src.dump";
my ($rc, $out, $err) = run_program('pg_dump', '-Fc', '-f', $archive, '-d', $node->connstr($src));
is($rc, 0, 'pg_dump -Fc succeeds') or diag($err);
query('postgres', "CREATE DATABASE $dst");
($rc, $out, $err) = run_program('pg_restore', '--exit-on-error', '-d', $node->connstr($dst),
	$archive);
is($rc, 0, 'pg_restore succeeds') or diag($err);
is($err, '', 'pg_restore reports nothing');

is(query($dst, q{SELECT extversion FROM pg_extension WHERE extname = 'agentretry'}),
	$current, "restored: the extension at $current");
my %restored_config = map { my ($rel, $kind, $cond) = split /\|/; ($rel => [ $kind, $cond // '' ]) }
  split /\n/, query($dst, q{
	SELECT u.c::regclass, c.relkind, u.w
	FROM pg_extension e, unnest(e.extconfig, e.extcondition) u (c, w)
	JOIN pg_class c ON c.oid = u.c
	WHERE e.extname = 'agentretry' ORDER BY 1});
is(join(',', map { "$_ $restored_config{$_}[0] '$restored_config{$_}[1]'" } sort keys %restored_config),
	join(',', map { "$_ $config{$_}[0] '$config{$_}[1]'" } sort keys %config),
	'restored: the same configuration relations, with the same conditions');
for my $t (@tables)
{
	(my $file = "rows_$t") =~ tr/./_/;
	same_text(table_text($dst, $t), $src_rows{$t}, "restored: $t has the same rows",
		"$t restored", "$t source", $file);
}
for my $s (@sequences)
{
	is(sequence_state($dst, $s), $src_seq{$s}, "restored: $s where it was");
}

# The restored database at work.  The highest id of each table with an
# identity, as restored; rows added from now on must all be above it.
my %max_id;
my %idseq = ('agentretry.events' => 1, 'agentretry.anomalies' => 1,
	'agentretry.budget_ledger' => 1, 'agentretry.token_floors' => 1);
for my $t (sort keys %idseq)
{
	$max_id{$t} = query($dst, "SELECT max(id) || ' ' || count(*) FROM $t");
}
my $floor = query($dst,
	q{SELECT max(floor) FROM agentretry.token_floors WHERE tenant = 'acme'});
is($floor, '2', 'restored: acme\'s token floor');

my $work = query($dst, q{
SET agentretry.trace_all = on;
-- a restored success replays its result, in either tenant
SELECT 'replay acme', outcome, result FROM agentretry.claim('k-done', '{"amount": 10}', 't_pay', 'acme');
SELECT 'replay default', outcome, result FROM agentretry.claim('k-done', '{"n": 7}', 't_fetch', 'default');
-- a restored lease still holds
SELECT 'leased', outcome FROM agentretry.claim('k-leased', '{"n": 1}', 't_fetch', 'acme');
-- a restored retry waits, a restored verification verifies
SELECT 'retry', outcome FROM agentretry.claim('k-retry', '{"n": 2}', 't_pay', 'acme');
SELECT 'verify', outcome FROM agentretry.claim('k-verify', '{"n": 4}', 't_pay', 'acme');
-- the purged key starts above the restored floor; a new key executes
SELECT 'purged', outcome, lease_token FROM agentretry.claim('k-purged', '{"n": 8}', 't_short', 'acme');
SELECT 'new', outcome, lease_token FROM agentretry.claim('k-new', '{"n": 9}', 't_pay', 'acme',
	run_id => 'run-1', step => 'notify');
SELECT 'complete', agentretry.complete('k-new', 3, '{"sent": true}', 'acme', receipt => 'rcpt-11');
-- a new retry: a ledger row and an event
SELECT 'fail', action FROM agentretry.fail('k-leased', 1, 'transient', 'pre_execution', 'http_503',
	tenant => 'acme');
-- a new orphan side effect: an anomaly
SELECT 'observe', agentretry.observe('k-unknown-3', 'rcpt-12', 'acme', 'webhook');
-- the run's context goes on from its restored version
SELECT 'context', agentretry.context('run-1', 'acme');
SELECT 'checkpoint', agentretry.checkpoint('run-1', 'notify', '{"notified": true}', 'acme',
	expected_version => 2);
-- k-purged completes and is purged again: a new floor
SELECT 'complete purged', agentretry.complete('k-purged', 3, '{"ok": true}', 'acme');
SELECT 'slept' FROM pg_sleep(0.01);
SELECT 'sweep', (agentretry.sweep()).operations_purged;
});
is($work, join("\n",
		'replay acme|replay|{"charge": "ch-1"}',
		'replay default|replay|{"rows": 7}',
		'leased|busy',
		'retry|wait',
		'verify|verify',
		'purged|execute|3',
		'new|execute|3',
		'complete|',
		'fail|retry',
		'observe|orphan',
		'context|{"charged": "ch-1", "shipped": false}',
		'checkpoint|3',
		'complete purged|',
		'slept',
		'sweep|1'),
	'restored: replays, leases, waits, token floors, new keys, runs and the sweep work');

# A new row that took an id of a restored one could still be stored (the
# keys are (tenant, id)), so count: every row beyond the restored ones has
# an id above theirs.
for my $t (sort keys %idseq)
{
	my ($max, $count) = split / /, $max_id{$t};
	my ($new, $above) = split /\|/, query($dst,
		qq{SELECT count(*) - $count, count(*) FILTER (WHERE id > $max) FROM $t});
	cmp_ok($new, '>', 0, "restored: new rows in $t");
	is($above, $new, "restored: the $new new rows of $t have ids above the $count restored (max $max)");
}

$node->stop;
done_testing();
