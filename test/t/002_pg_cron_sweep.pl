# pg_cron end to end: schedule_sweep() and unschedule_sweep() manage one
# job per database in cron.job, pg_cron runs the sweep by itself and it
# decides expired leases, and a database other than cron.database_name is
# told the exact statement to run in the pg_cron database, which works.
#
# pg_cron starts jobs on minute boundaries, so the test waits for at most
# one or two of them; both databases' jobs are scheduled before the wait so
# that one boundary serves both.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $job_wait = 150;

# The test clusters listen only on a socket in a private directory (no
# TCP), so pg_cron must run its jobs in background workers rather than
# through libpq connections to localhost.  Two jobs may run at once, next
# to pg_cron's launcher.
my $node = PostgreSQL::Test::Cluster->new('cron', port => 54343);
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
log_min_messages = warning
});
$node->start;

my $t0 = time;

sub query
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

# A statement that may fail: 'ok: <its first value>', or its SQLSTATE,
# message and hint, each on its own line.  The failures under test are
# raised before anything is written, and the callers check cron.job after.
my $error_of_sql = q{
CREATE FUNCTION error_of(stmt text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	state text;
	msg text;
	hint text;
	res text;
BEGIN
	EXECUTE stmt INTO res;
	RETURN 'ok: ' || coalesce(res, 'NULL');
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		hint = PG_EXCEPTION_HINT;
	RETURN concat_ws(E'\n', state, msg, nullif(hint, ''));
END
$$;
};

# Tools of both kinds whose expired leases the sweep decides differently.
my $tools_sql = q{
SELECT agentretry.register_tool('fetch', 'idempotent', 'read');
SELECT agentretry.register_tool('send', 'non_idempotent', 'write');
};

query(q{CREATE EXTENSION pg_cron;});
query(q{CREATE EXTENSION agentretry;} . $error_of_sql . $tools_sql);
query(q{CREATE DATABASE other;});
query(q{CREATE EXTENSION agentretry;} . $error_of_sql . $tools_sql, 'other');

# The jobs as the test expects them; username = current_user: the job
# belongs to the role that scheduled it.
my $jobs_sql = q{
SELECT jobid, jobname, schedule, command, database, username = current_user, active
  FROM cron.job ORDER BY jobid};

# ---------------------------------------------------------------------------
# schedule_sweep / unschedule_sweep in the pg_cron database
# ---------------------------------------------------------------------------
my $res = query(q{SELECT error_of($$SELECT agentretry.schedule_sweep()$$)});
like($res, qr/^ok: \d+$/, 'schedule_sweep() returns a job id');
my ($job) = $res =~ /^ok: (\d+)$/;
$job //= -1;
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|* * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'the job runs agentretry.sweep() every minute in database postgres');

# pg_cron 1.4 keeps one job per (jobname, username): scheduling a name
# again updates that row in place, so the job id stays the same.
is( query(q{SELECT error_of($$SELECT agentretry.schedule_sweep('*/2 * * * *')$$)}),
	"ok: $job",
	'schedule_sweep() again returns the same job id');
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|*/2 * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'calling it again replaced the schedule of the one job');

# Bad schedules change nothing.
is( query(q{SELECT error_of($$SELECT agentretry.schedule_sweep(NULL)$$)}),
	"22004\nschedule must not be null",
	'schedule_sweep(NULL) raises 22004');
is( query(q{SELECT error_of($$SELECT agentretry.schedule_sweep('every minute')$$)}),
	"22023\ninvalid schedule: every minute",
	'an invalid schedule is refused by pg_cron');
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|*/2 * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'the refused calls left the job as it was');

is(query(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}),
	'ok: true', 'unschedule_sweep() returns true when it removed the job');
is(query($jobs_sql), '', 'no job is left');
is(query(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}),
	'ok: false', 'unschedule_sweep() again returns false');
is(query($jobs_sql), '', 'still no job');

$res = query(q{SELECT error_of($$SELECT agentretry.schedule_sweep('* * * * *')$$)});
like($res, qr/^ok: \d+$/, 'schedule_sweep() after unscheduling returns a job id');
($job) = $res =~ /^ok: (\d+)$/;
$job //= -1;
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|* * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'the sweep is scheduled every minute again, as the only job');

# ---------------------------------------------------------------------------
# a database without pg_cron: the error's hint is the statement to run
# ---------------------------------------------------------------------------
my $schedule_hint =
  q{Run in database postgres: SELECT cron.schedule_in_database('agentretry-sweep:other', '* * * * *', 'SELECT agentretry.sweep()', 'other');};
my $unschedule_hint =
  q{Run in database postgres: SELECT cron.unschedule('agentretry-sweep:other');};

my $schedule_error =
  query(q{SELECT error_of($$SELECT agentretry.schedule_sweep()$$)}, 'other');
is( $schedule_error,
	"55000\npg_cron runs in database \"postgres\", not in this one\n$schedule_hint",
	'schedule_sweep() in database other raises 55000 with the statement as hint');
my $unschedule_error =
  query(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}, 'other');
is( $unschedule_error,
	"55000\npg_cron runs in database \"postgres\", not in this one\n$unschedule_hint",
	'unschedule_sweep() in database other raises 55000 with the statement as hint');
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|* * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'neither call changed the jobs');

# Run the statement of the hint as it came, where it says.
my ($hint_db, $hint_stmt) = $schedule_error =~ /^Run in database (\w+): (.*)$/m;
$hint_db //= 'postgres';
$hint_stmt //= 'SELECT NULL';
$res = query(qq{SELECT error_of(\$\$$hint_stmt\$\$)}, $hint_db);
like($res, qr/^ok: \d+$/, 'the hint statement returns a job id');
my ($other_job) = $res =~ /^ok: (\d+)$/;
$other_job //= -1;
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|* * * * *|SELECT agentretry.sweep()|postgres|t|t\n"
	  . "$other_job|agentretry-sweep:other|* * * * *|SELECT agentretry.sweep()|other|t|t",
	'the hint statement created the job of database other');

# ---------------------------------------------------------------------------
# pg_cron runs the sweep by itself
# ---------------------------------------------------------------------------

# In each database an idempotent and a non-idempotent operation whose
# worker vanished: leased, then the lease moved into the past.  One
# transaction, so no sweep sees the leases live in between.  The last
# value is when the leases were made to expire.
my $expire_sql = q{
BEGIN;
SELECT outcome, lease_token FROM agentretry.claim('op-fetch', '{"n": 1}', 'fetch', owner => 'worker-1',
	in_transaction => true);
SELECT outcome, lease_token FROM agentretry.claim('op-send', '{"n": 2}', 'send', owner => 'worker-1',
	in_transaction => true);
UPDATE agentretry.operations SET lease_expires_at = clock_timestamp() - interval '1 minute';
SELECT clock_timestamp();
COMMIT;
};
my %expired_at;
foreach my $db ('postgres', 'other')
{
	my @lines = split /\n/, query($expire_sql, $db);
	is("$lines[0] $lines[1]", 'execute|1 execute|1', "both operations leased in $db");
	$expired_at{$db} = $lines[2];
}

my %ops_sql;
foreach my $db ('postgres', 'other')
{
	$ops_sql{$db} = qq{
SELECT key, state, reason, last_failure_class, last_failure_code, attempts,
	   lease_token, lease_expires_at IS NULL, updated_at > '$expired_at{$db}'
  FROM agentretry.operations ORDER BY key};
}
my $leased_ops = "op-fetch|in_progress||||1|1|f|f\nop-send|in_progress||||1|1|f|f";
is(query($ops_sql{postgres}, 'postgres'), $leased_ops,
	'database postgres: two expired leases');
is(query($ops_sql{other}, 'other'), $leased_ops,
	'database other: two expired leases');

# Wait, without calling sweep(), until both databases' operations were
# decided and a run of each job has finished after that.  Stop early if a
# job is missing: nothing would ever run.
my $waited = 0;
while ($waited < $job_wait)
{
	last
	  if query(qq{SELECT count(*) FROM cron.job WHERE jobid IN ($job, $other_job)})
	  ne '2';
	# the job of database other records its runs in database postgres
	my $done = 1;
	foreach my $db ('postgres', 'other')
	{
		my $jobid = $db eq 'postgres' ? $job : $other_job;
		my $end = query(qq{
SELECT coalesce(max(end_time)::text, '-infinity') FROM cron.job_run_details
 WHERE jobid = $jobid AND status = 'succeeded'});
		$done = 0
		  if query(qq{
SELECT count(*) FROM agentretry.operations
 WHERE state = 'in_progress' OR updated_at > '$end'}, $db) ne '0';
	}
	last if $done;
	sleep 1;
	$waited++;
}
note "waited $waited s for pg_cron";

# The sweep decided each expired lease as an ambiguous failure at its
# expiry: the idempotent call is retried, the other one must be verified.
my $decided_ops =
	"op-fetch|retry_wait|idempotent_retry|ambiguous|lease_expired|1|1|t|t\n"
  . "op-send|verify|outcome_unknown|ambiguous|lease_expired|1|1|t|t";
is(query($ops_sql{postgres}, 'postgres'), $decided_ops,
	'database postgres: pg_cron\'s sweep decided both expired leases');
is(query($ops_sql{other}, 'other'), $decided_ops,
	'database other: the job created from the hint decided both expired leases');
my $events_sql = q{
SELECT key, kind, failure_class, code, reason, lease_token, owner
  FROM agentretry.events ORDER BY key, id};
my $decided_events =
	"op-fetch|retry|ambiguous|lease_expired|idempotent_retry|1|worker-1\n"
  . "op-send|verify|ambiguous|lease_expired|outcome_unknown|1|worker-1";
is(query($events_sql, 'postgres'), $decided_events,
	'database postgres: one event per decision');
is(query($events_sql, 'other'), $decided_events,
	'database other: one event per decision');

# pg_cron recorded the runs: each job succeeded, in its own database, and
# at least one run of each ended after the decisions were stored.
foreach my $db ('postgres', 'other')
{
	my $jobid = $db eq 'postgres' ? $job : $other_job;
	my $last_change = query(q{SELECT max(updated_at) FROM agentretry.operations}, $db);
	is( query(qq{
SELECT database, command, status, return_message, count(*) > 0
  FROM cron.job_run_details
 WHERE jobid = $jobid AND status = 'succeeded' AND end_time >= '$last_change'
 GROUP BY 1, 2, 3, 4}),
		"$db|SELECT agentretry.sweep()|succeeded|SELECT 1|t",
		"a run of the job of database $db succeeded after the decisions");
	is( query(qq{
SELECT count(*) FROM cron.job_run_details
 WHERE jobid = $jobid AND status NOT IN ('succeeded', 'starting', 'running')}),
		'0',
		"no run of the job of database $db failed");
}

# The unschedule hint removes the job of database other, and only it.
($hint_db, $hint_stmt) = $unschedule_error =~ /^Run in database (\w+): (.*)$/m;
$hint_db //= 'postgres';
$hint_stmt //= 'SELECT NULL';
is(query(qq{SELECT error_of(\$\$$hint_stmt\$\$)}, $hint_db),
	'ok: true', 'the unschedule hint statement removes a job');
is( query($jobs_sql),
	"$job|agentretry-sweep:postgres|* * * * *|SELECT agentretry.sweep()|postgres|t|t",
	'only the job of database postgres is left');

# ---------------------------------------------------------------------------
# An admin that is not a superuser.  Reading cron.database_name needs
# pg_read_all_settings, which such a role lacks: schedule_sweep must work,
# or say what to do (55000 and its hint), never fail with 42501.
# ---------------------------------------------------------------------------
query(q{CREATE ROLE ar_admin LOGIN NOSUPERUSER; GRANT agentretry_admin TO ar_admin;});
sub as_admin
{
	my ($sql, $db) = @_;
	return query("SET ROLE ar_admin;\n$sql", $db);
}
my $all_jobs_sql = q{
SELECT jobname, schedule, database, username FROM cron.job ORDER BY jobname, username};
my $jobs_before = query($all_jobs_sql);

like( as_admin(q{SELECT error_of($$SELECT agentretry.schedule_sweep()$$)}, 'other'),
	qr/^55000\npg_cron runs in database "postgres", not in this one\nRun in database postgres: SELECT cron\.schedule_in_database\(/,
	'an admin that is not a superuser, in another database: 55000 and the statement to run, not 42501');
like( as_admin(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}, 'other'),
	qr/^55000\npg_cron runs in database "postgres", not in this one\nRun in database postgres: SELECT cron\.unschedule\(/,
	'and unschedule_sweep: 55000 and the statement to run');
is( as_admin(q{SELECT error_of($$SELECT agentretry.schedule_sweep()$$)}),
	"55000\nrole \"ar_admin\" may not use pg_cron\n"
	  . "As a superuser, run GRANT USAGE ON SCHEMA cron TO ar_admin; or schedule as a superuser: "
	  . "SELECT cron.schedule('agentretry-sweep:postgres', '* * * * *', 'SELECT agentretry.sweep()');",
	'in the pg_cron database, without the use of schema cron: 55000 and what to grant');
is( as_admin(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}),
	"55000\nrole \"ar_admin\" may not use pg_cron\n"
	  . "As a superuser, run GRANT USAGE ON SCHEMA cron TO ar_admin; or SELECT cron.unschedule('agentretry-sweep:postgres');",
	'unschedule_sweep likewise');
is(query($all_jobs_sql), $jobs_before, 'the refused calls changed no job');

query(q{GRANT USAGE ON SCHEMA cron TO ar_admin;});
like(as_admin(q{SELECT error_of($$SELECT agentretry.schedule_sweep('*/3 * * * *')$$)}),
	qr/^ok: \d+$/, 'with the use of schema cron, the admin schedules the sweep');
is( query($all_jobs_sql),
	"agentretry-sweep:postgres|*/3 * * * *|postgres|ar_admin\n$jobs_before",
	'the job belongs to the admin, beside the superuser\'s');
is(as_admin(q{SELECT error_of($$SELECT agentretry.unschedule_sweep()$$)}),
	'ok: true', 'and unschedules it');
is(query($all_jobs_sql), $jobs_before, 'only the admin\'s job was removed');

$node->stop;
note sprintf('total: %.1f s', time - $t0);
done_testing();
