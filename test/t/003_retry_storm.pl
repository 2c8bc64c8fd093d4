# Retry storm: a dependency fails every call for a few seconds while agents
# keep starting new calls and retry workers keep retrying the failed ones.
# An idempotent tool's retry budget (a token bucket and a ratio budget)
# must bound the retries that reach the dependency, every denied retry must
# be rescheduled (budget_wait) or dead-lettered (budget_exhausted) and
# nothing may be lost.  Once the dependency heals, retries resume as the
# bucket refills, and in the end every operation that its deadline and the
# budget allowed has succeeded.  The ledger and budget_status must agree
# with a count made from what the clients were told.
#
# Nothing here asserts a duration: the phases last a few seconds so that
# the storm is large compared with the budget, and every bound is computed
# from timestamps that the server recorded.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $n_agents = 6;
my $n_workers = 2;
my $agent_pace = 0.05;    # seconds between an agent's calls
my $worker_batch = 3;    # claim_due max
my $outage_secs = 4;
my $healed_secs = 5;
my $drain_timeout = 30;    # every deadline is at most 20 s away at healing

# The budget under test (tool scope).  The ratio window is longer than the
# whole test, so every count below falls in the budget's first window (the
# test checks that it did): the sliding window is then exactly the count
# since set_budget.  The tool's deadline is shorter than the window, so a
# retry the ratio budget denies (retry_at = now + window) is dead-lettered,
# while one the bucket denies (retry_at = when a stripe has refilled a
# token, under a second) waits for it.
my %budget = (
	capacity => 20,
	refill => 5,
	ratio => 0.2,
	floor => 5,
	window => 60,
	stripes => 4);

# The ratio check reads the other stripes without locks, so it can miss
# retries that other transactions have debited but not yet committed: at
# most one per agent (each fail() commits on its own) and at most
# $worker_batch per retry worker (claim_due pays, in its own transaction, for
# each waiting retry it leases).  The running check below also counts the
# first attempts by their timestamps, which may leave out a claim that the
# debit did see (dated a moment after the debit, committed before its
# check): at most one per agent, a fifth of a retry each, well inside the
# same margin.
my $ratio_margin = $n_agents + $n_workers * $worker_batch;

my $node = PostgreSQL::Test::Cluster->new('storm', port => 54348);
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
log_statement = none
log_min_messages = warning
max_connections = 40
});
$node->start;

sub query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

my $t_start = time;

query(qq{
CREATE EXTENSION agentretry;

-- Idempotent, so every transient failure is a retry for the budget to
-- judge; enough attempts that no operation runs out of them here.
SELECT agentretry.register_tool('storm_fetch', 'idempotent', 'read',
	max_attempts => 50, base_delay => '200 ms', max_delay => '1 s',
	jitter => 'none', deadline => '20 s');

-- The dependency the tool calls, and the switch that ends the sessions.
CREATE TABLE dependency (healthy boolean NOT NULL);
INSERT INTO dependency VALUES (false);
CREATE TABLE control (agents_run boolean NOT NULL, workers_run boolean NOT NULL);
INSERT INTO control VALUES (false, false);

-- What each client was told, committed with the call it records: a first
-- claim, a lease from claim_due, a fail() decision, a complete().
CREATE TABLE storm_log (
	id bigserial PRIMARY KEY,
	key text NOT NULL,
	who text NOT NULL,
	kind text NOT NULL CHECK (kind IN ('first', 'lease', 'decision', 'complete')),
	outcome text,
	action text,
	reason text,
	attempt integer,
	lease_token bigint,
	retry_at timestamptz,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON storm_log (key, id);
});

query(q{
-- One call of the dependency under a lease: complete when it is healthy,
-- else report a transient failure (a 503 before anything happened).
CREATE FUNCTION call_dependency(k text, who text, tok bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	d agentretry.decision;
BEGIN
	IF (SELECT healthy FROM dependency) THEN
		PERFORM agentretry.complete(k, tok, jsonb_build_object('ok', true));
		INSERT INTO storm_log (key, who, kind, lease_token) VALUES (k, who, 'complete', tok);
	ELSE
		SELECT * INTO d FROM agentretry.fail(k, tok, 'transient', 'pre_execution', 'http_503');
		INSERT INTO storm_log (key, who, kind, action, reason, attempt, lease_token, retry_at)
		VALUES (k, who, 'decision', d.action, d.reason, d.attempt, tok, d.retry_at);
	END IF;
END
$$;

-- An agent: a new key every pace seconds, called at once (first attempt).
CREATE PROCEDURE agent(name text, pace float8)
LANGUAGE plpgsql AS $$
DECLARE
	i integer := 0;
	k text;
	c agentretry.claim_result;
BEGIN
	WHILE (SELECT agents_run FROM control) LOOP
		i := i + 1;
		k := format('%s-%s', name, i);
		SELECT * INTO c FROM agentretry.claim(k, jsonb_build_object('q', k), 'storm_fetch', owner => name);
		IF c.outcome <> 'execute' THEN
			RAISE EXCEPTION 'new key % answered %', k, c.outcome;
		END IF;
		INSERT INTO storm_log (key, who, kind, outcome, attempt, lease_token)
		VALUES (k, name, 'first', c.outcome, c.attempt, c.lease_token);
		COMMIT;
		PERFORM call_dependency(k, name, c.lease_token);
		COMMIT;
		PERFORM pg_sleep(pace);
	END LOOP;
END
$$;

-- A retry worker: lease due retries, call the dependency for each, one
-- transaction per call; nap when nothing is due.  It stops only between
-- batches, so it never leaves a lease behind.
CREATE PROCEDURE retry_worker(name text, batch integer)
LANGUAGE plpgsql AS $$
DECLARE
	keys text[];
	toks bigint[];
	n integer;
BEGIN
	WHILE (SELECT workers_run FROM control) LOOP
		WITH l AS (
			SELECT d.key, d.attempt, d.lease_token
			FROM agentretry.claim_due(name, batch, ARRAY['storm_fetch']) AS d),
		logged AS (
			INSERT INTO storm_log (key, who, kind, attempt, lease_token)
			SELECT l.key, name, 'lease', l.attempt, l.lease_token FROM l
			RETURNING storm_log.key, storm_log.lease_token)
		SELECT array_agg(logged.key), array_agg(logged.lease_token) INTO keys, toks FROM logged;
		COMMIT;
		FOR n IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
			PERFORM call_dependency(keys[n], name, toks[n]);
			COMMIT;
		END LOOP;
		IF keys IS NULL THEN
			PERFORM pg_sleep(0.05);
		END IF;
	END LOOP;
END
$$;

-- The ledger rows of the storm's budget.
CREATE VIEW storm_ledger AS
SELECT * FROM agentretry.budget_ledger
WHERE tenant = 'default' AND scope = 'tool' AND subject = 'storm_fetch';

-- The last thing each client was told about each key.
CREATE VIEW client_last AS
SELECT DISTINCT ON (key) key, kind, action, reason, lease_token
FROM storm_log ORDER BY key, id DESC;

-- Retries debited, counted from what the clients saw: a fail() that
-- answered a retry not waiting for a budget, and a lease of an operation
-- whose last answer was budget_wait (claim_due pays for it then).
CREATE VIEW hand_debits AS
SELECT key, count(*) AS n FROM (
	SELECT key, kind, action, reason,
		lag(kind) OVER w AS prev_kind, lag(reason) OVER w AS prev_reason
	FROM storm_log WINDOW w AS (PARTITION BY key ORDER BY id)) l
WHERE (kind = 'decision' AND action = 'retry' AND reason <> 'budget_wait')
   OR (kind = 'lease' AND prev_kind = 'decision' AND prev_reason = 'budget_wait')
GROUP BY key;

-- Every fail() the budget denied, with the ledger row of that denial: the
-- one row of the key written between the client's previous entry (the
-- claim or the lease it failed under, during which nothing else could
-- touch the key) and this one.
CREATE VIEW fail_denials AS
SELECT l.id, l.key, l.action, l.reason, l.retry_at AS decided_retry_at, o.deadline,
	(SELECT count(*) FROM storm_ledger g
	 WHERE g.key = l.key AND g.reason LIKE 'denied%' AND g.at > p.at AND g.at <= l.at) AS ledger_rows,
	g.reason AS ledger_reason, g.at AS denied_at, g.retry_at AS budget_retry_at
FROM storm_log l
JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = l.key
JOIN LATERAL (SELECT p.at FROM storm_log p WHERE p.key = l.key AND p.id < l.id
			  ORDER BY p.id DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT g.reason, g.at, g.retry_at FROM storm_ledger g
				   WHERE g.key = l.key AND g.reason LIKE 'denied%' AND g.at > p.at AND g.at <= l.at
				   ORDER BY g.id DESC LIMIT 1) g ON true
WHERE l.kind = 'decision' AND l.reason IN ('budget_wait', 'budget_exhausted');
});

# ---------------------------------------------------------------------------
# background sessions
# ---------------------------------------------------------------------------
my %sessions;
my @session_errors;

sub start_session
{
	my ($name, $sql) = @_;
	my $s = { out => '', err => '' };
	$s->{h} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=$name",
			'-c', $sql
		],
		'<', \undef, '>', \$s->{out}, '2>', \$s->{err});
	$sessions{$name} = $s;
	return;
}

sub start_agents
{
	my ($prefix) = @_;
	start_session("$prefix$_", "CALL agent('$prefix$_', $agent_pace)")
	  for 1 .. $n_agents;
	return;
}

sub start_workers
{
	start_session("w$_", "CALL retry_worker('w$_', $worker_batch)")
	  for 1 .. $n_workers;
	return;
}

# Wait for the sessions whose names match to end by themselves.
sub wait_sessions
{
	my ($pattern) = @_;
	my $until = time + 60;
	foreach my $name (sort grep { /$pattern/ } keys %sessions)
	{
		my $s = $sessions{$name};
		while ($s->{h}->pumpable && time < $until)
		{
			$s->{h}->pump_nb;
			usleep(20_000);
		}
		die "session $name did not end" if $s->{h}->pumpable;
		$s->{h}->finish;
		push @session_errors, map { "$name: $_" } split(/\n/, $s->{err});
		delete $sessions{$name};
	}
	return;
}

# ---------------------------------------------------------------------------
# phase 1: the outage
# ---------------------------------------------------------------------------
query(qq{
SELECT agentretry.set_budget('default', 'tool', 'storm_fetch',
	capacity => $budget{capacity}, refill_per_sec => $budget{refill},
	cost_transient => 1, cost_ambiguous => 2,
	ratio => $budget{ratio}, ratio_window => '$budget{window} s', ratio_floor => $budget{floor},
	stripes => $budget{stripes});
UPDATE control SET agents_run = true, workers_run = true;
});
# when the bucket started full (set_budget dates every stripe alike): the
# origin of its refill and of the ratio window
my $t0 = query(q{SELECT min(refilled_at) FROM agentretry.budget_stripes WHERE subject = 'storm_fetch'});
my $t0_sql = "'$t0'::timestamptz";

start_agents('a');
start_workers();
sleep $outage_secs;
query(q{UPDATE control SET agents_run = false, workers_run = false});
wait_sessions(qr/^(a|w)\d+$/);
my $outage_end = query(q{SELECT clock_timestamp()});
is(join("\n", @session_errors), '', 'the outage: no session failed');
@session_errors = ();

my ($ops1, $debits1, $denials1, $firsts1) = split /\|/, query(qq{
SELECT (SELECT count(*) FROM agentretry.operations),
	(SELECT count(*) FROM storm_ledger WHERE reason = 'debit'),
	(SELECT count(*) FROM storm_ledger WHERE reason LIKE 'denied%'),
	(SELECT count(*) FROM storm_log WHERE kind = 'first')});
note "outage: $ops1 operations, $debits1 retries debited, $denials1 denials, "
  . query(qq{SELECT string_agg(reason || ' ' || n, ', ' ORDER BY reason) FROM
	(SELECT reason, count(*) AS n FROM storm_ledger GROUP BY reason) r});

# Every key an agent claimed is an operation, and every operation is in a
# state that the last answer its clients got explains: a retry waiting for
# its backoff, a retry waiting for the budget (or dead-lettered by
# claim_due when the budget still denied it and would only allow it after
# the deadline), or dead-lettered by the budget.  Nobody holds a lease.
is($ops1, $firsts1, 'the outage: one operation per key the agents claimed');
is( query(q{
SELECT string_agg(what || ': ' || n, ', ' ORDER BY what) FROM (
SELECT coalesce(o.state::text, 'missing') || ' ' || coalesce(o.reason, '-') || ' after '
	   || coalesce(c.kind, '-') || ' ' || coalesce(c.action, '-') || ' ' || coalesce(c.reason, '-') AS what,
	   count(*) AS n
FROM agentretry.operations o FULL JOIN client_last c ON c.key = o.key
WHERE NOT ((c.kind = 'decision' AND c.action = 'retry' AND c.reason = 'not_executed'
			AND o.state = 'retry_wait' AND o.reason = 'not_executed')
		OR (c.kind = 'decision' AND c.action = 'retry' AND c.reason = 'budget_wait'
			AND ((o.state = 'retry_wait' AND o.reason = 'budget_wait')
				 OR (o.state = 'dead' AND o.reason = 'budget_exhausted')))
		OR (c.kind = 'decision' AND c.action = 'dead' AND c.reason = 'budget_exhausted'
			AND o.state = 'dead' AND o.reason = 'budget_exhausted'))
   OR o.key IS NULL OR c.key IS NULL
GROUP BY 1) s}),
	'',
	'the outage: every operation is waiting for a retry or dead-lettered by the budget, as its clients were told'
);
is( query(q{SELECT string_agg(state || ' ' || reason || ' ' || n, ', ' ORDER BY state, reason) FROM (
	SELECT state, coalesce(reason, '-') AS reason, count(*) AS n FROM agentretry.operations GROUP BY 1, 2) s
	WHERE state NOT IN ('retry_wait', 'dead')}),
	'', 'the outage: nothing succeeded and nothing is leased');

# The bucket never pays more than it held and gained: capacity plus refill
# since set_budget, counted up to now, when every session has ended.
my $token_bound1 = query(qq{
SELECT floor($budget{capacity} + $budget{refill} * extract(epoch FROM '$outage_end'::timestamptz - $t0_sql))});
cmp_ok($debits1, '<=', $token_bound1,
	"the outage: $debits1 retries debited, within the bucket's capacity plus refill ($token_bound1)");

# The ratio budget: all of it is one window (checked at the end), so at
# most max(floor, ratio x first attempts), give or take what concurrent
# checks could not see.
my $ratio_bound1 = query(qq{
SELECT floor(greatest($budget{floor}, $budget{ratio} * $firsts1)) + $ratio_margin});
cmp_ok($debits1, '<=', $ratio_bound1,
	"the outage: $debits1 retries debited, within the ratio budget ($ratio_bound1 with the margin)");

# The storm asked for far more retries than the budget allowed.
cmp_ok($denials1, '>', $debits1, 'the outage: the budget denied more retries than it allowed');
cmp_ok($debits1, '>=', $budget{floor}, 'the outage: the budget allowed retries nonetheless');

# ---------------------------------------------------------------------------
# phase 2: the dependency heals
# ---------------------------------------------------------------------------
my $waiting_at_heal = query(q{
SELECT count(*) FROM agentretry.operations WHERE state = 'retry_wait'});
my $budget_waiting_at_heal = query(q{
SELECT count(*) FROM agentretry.operations WHERE state = 'retry_wait' AND reason = 'budget_wait'});
query(q{
CREATE TABLE at_heal AS SELECT key, state, reason FROM agentretry.operations;
UPDATE dependency SET healthy = true;
UPDATE control SET agents_run = true, workers_run = true;
});
my $healed_at = query(q{SELECT clock_timestamp()});

start_agents('h');
start_workers();
sleep $healed_secs;
query(q{UPDATE control SET agents_run = false});
wait_sessions(qr/^h\d+$/);

# The workers go on until nothing is waiting: each waiting retry either
# gets the budget in time, or is dead-lettered once the budget would only
# allow it after its deadline.
my $drained = 0;
my $drain_until = time + $drain_timeout;
while (time < $drain_until)
{
	$drained = query(q{
SELECT count(*) = 0 FROM agentretry.operations WHERE state NOT IN ('succeeded', 'dead')}) eq 't';
	last if $drained;
	usleep(200_000);
}
query(q{UPDATE control SET workers_run = false});
wait_sessions(qr/^w\d+$/);
my $end = query(q{SELECT clock_timestamp()});
ok($drained, 'after the outage: every operation reached a terminal state');
is(join("\n", @session_errors), '', 'after the outage: no session failed');

my ($ops, $debits, $denials, $firsts, $within_window) = split /\|/, query(qq{
SELECT (SELECT count(*) FROM agentretry.operations),
	(SELECT count(*) FROM storm_ledger WHERE reason = 'debit'),
	(SELECT count(*) FROM storm_ledger WHERE reason LIKE 'denied%'),
	(SELECT count(*) FROM storm_log WHERE kind = 'first'),
	'$end'::timestamptz < $t0_sql + interval '$budget{window} s'});
note sprintf(
	'healed: %d operations, %d retries debited (%d after healing), %d denials; %d waiting retries at healing (%d for the budget)',
	$ops, $debits,
	query(qq{SELECT count(*) FROM storm_ledger WHERE reason = 'debit' AND at > '$healed_at'}),
	$denials, $waiting_at_heal, $budget_waiting_at_heal);
note 'final states: '
  . query(q{SELECT string_agg(state || ' ' || reason || ' ' || n, ', ' ORDER BY state, reason) FROM (
	SELECT state, coalesce(reason, '-') AS reason, count(*) AS n FROM agentretry.operations GROUP BY 1, 2) s});

is($ops, $firsts, 'one operation per key the agents claimed');

# Every operation succeeded, with exactly one complete() by a client that
# held its newest lease, or was dead-lettered by the budget: by fail() or,
# for a retry waiting for the budget, by claim_due finding that the budget
# would allow it only after the deadline.
is( query(q{
SELECT string_agg(what || ': ' || n, ', ' ORDER BY what) FROM (
SELECT coalesce(o.state::text, 'missing') || ' ' || coalesce(o.reason, '-') || ' after '
	   || coalesce(c.kind, '-') || ' ' || coalesce(c.action, '-') || ' ' || coalesce(c.reason, '-') AS what,
	   count(*) AS n
FROM agentretry.operations o FULL JOIN client_last c ON c.key = o.key
WHERE NOT ((o.state = 'succeeded' AND c.kind = 'complete' AND c.lease_token = o.lease_token
			AND (SELECT count(*) FROM storm_log l WHERE l.key = o.key AND l.kind = 'complete') = 1)
		OR (o.state = 'dead' AND o.reason = 'budget_exhausted' AND c.kind = 'decision'
			AND ((c.action = 'dead' AND c.reason = 'budget_exhausted')
				 OR (c.action = 'retry' AND c.reason = 'budget_wait'))))
   OR o.key IS NULL OR c.key IS NULL
GROUP BY 1) s}),
	'',
	'every operation succeeded once, or was dead-lettered by the budget'
);

# Nothing that was still allowed to retry was given up: an operation
# dead-lettered by the budget was last denied with no retry time, or with
# one after its deadline.
is( query(qq{
SELECT count(*) FROM agentretry.operations o
JOIN LATERAL (SELECT g.reason, g.retry_at FROM storm_ledger g WHERE g.key = o.key
			  ORDER BY g.id DESC LIMIT 1) g ON true
WHERE o.state = 'dead'
  AND NOT (g.reason LIKE 'denied%' AND (g.retry_at IS NULL OR g.retry_at > o.deadline))}),
	'0',
	'every dead-lettered operation was last denied by the budget until after its deadline');

# Each denial fail() answered matches its ledger row: a retry the budget
# allows before the deadline waits for it (budget_wait, scheduled no
# earlier than the budget allows), any other is dead-lettered
# (budget_exhausted).  The bucket denies until a stripe has refilled one
# token (under 1 / (refill / stripes) seconds), or for a second when the
# stripes that could pay are held by running transactions (debits never
# wait); the ratio budget for a window.
is( query(q{
SELECT count(*) FROM fail_denials
WHERE ledger_rows <> 1
   OR NOT ((reason = 'budget_wait' AND action = 'retry' AND budget_retry_at IS NOT NULL
			AND budget_retry_at <= deadline AND decided_retry_at >= budget_retry_at)
		OR (reason = 'budget_exhausted' AND action = 'dead'
			AND (budget_retry_at IS NULL OR budget_retry_at > deadline)))}),
	'0',
	'every denial fail() answered waits for the budget within the deadline, or is dead-lettered');
is( query(qq{
SELECT count(*) FROM storm_ledger WHERE reason LIKE 'denied%'
  AND NOT ((reason = 'denied_tokens' AND retry_at > at
			AND retry_at <= at + greatest(interval '1 s' * $budget{stripes} / $budget{refill},
										  interval '1 s'))
		OR (reason = 'denied_ratio' AND retry_at = at + interval '$budget{window} s'))}),
	'0',
	'each denial says when the budget may allow the retry');

is( query(q{
SELECT string_agg(DISTINCT reason, ', ' ORDER BY reason) FROM fail_denials}),
	'budget_exhausted, budget_wait',
	'the storm had retries both rescheduled for the budget and dead-lettered by it');

# After healing, retries resumed: retries that waited for the budget were
# paid and succeeded.
cmp_ok(
	query(qq{SELECT count(*) FROM storm_ledger WHERE reason = 'debit' AND at > '$healed_at'}),
	'>', 0, 'retries were debited again after healing');
cmp_ok(
	query(q{
SELECT count(*) FROM at_heal h JOIN agentretry.operations o USING (key)
WHERE h.state = 'retry_wait' AND h.reason = 'budget_wait' AND o.state = 'succeeded'}),
	'>', 0, 'retries that waited for the budget through the outage succeeded');
is( query(qq{
SELECT count(*) FROM agentretry.operations
WHERE first_attempt_at > '$healed_at' AND NOT (state = 'succeeded' AND attempts = 1)}),
	'0',
	'every call started after healing succeeded at its first attempt');

# Bounds over the whole run.
my $token_bound = query(qq{
SELECT floor($budget{capacity} + $budget{refill} * extract(epoch FROM '$end'::timestamptz - $t0_sql))});
cmp_ok($debits, '<=', $token_bound,
	"$debits retries debited in all, within the bucket's capacity plus refill ($token_bound)");
ok($within_window, "the whole run fell in the ratio budget's first window");
my $ratio_bound = query(qq{
SELECT floor(greatest($budget{floor}, $budget{ratio} * $firsts)) + $ratio_margin});
cmp_ok($debits, '<=', $ratio_bound,
	"$debits retries debited in all, within the ratio budget ($ratio_bound with the margin)");

# The same bounds at every debit, in the order the ledger recorded them:
# the retries debited so far against the first attempts made so far, and
# against the bucket's refill so far.  A debit is dated before it may wait
# for a stripe's lock, so one dated earlier may have paid later, out of a
# refill that another debit had already seen: a token per stripe of
# margin.
is( query(qq{
SELECT count(*) FROM (
	SELECT g.at, count(*) OVER (ORDER BY g.id) AS so_far
	FROM storm_ledger g WHERE g.reason = 'debit') g
WHERE g.so_far > floor(greatest($budget{floor}, $budget{ratio} *
		(SELECT count(*) FROM agentretry.operations o WHERE o.first_attempt_at <= g.at)))
		+ $ratio_margin}),
	'0',
	'at every debit, the retries so far were within the ratio budget');
is( query(qq{
SELECT count(*) FROM (
	SELECT g.at, count(*) OVER (ORDER BY g.at, g.id) AS so_far
	FROM storm_ledger g WHERE g.reason = 'debit') g
WHERE g.so_far > $budget{capacity} + $budget{refill} * extract(epoch FROM g.at - $t0_sql) + $budget{stripes}}),
	'0',
	'at every debit, the retries so far were within the bucket');

# ---------------------------------------------------------------------------
# the ledger and budget_status against the clients' count
# ---------------------------------------------------------------------------
my $hand_debits = query(q{SELECT coalesce(sum(n), 0) FROM hand_debits});
is($debits, $hand_debits,
	"the ledger has one debit per retry the clients were allowed ($hand_debits)");
is( query(qq{
SELECT count(*) FROM hand_debits h
FULL JOIN (SELECT key, count(*) AS n FROM storm_ledger WHERE reason = 'debit' GROUP BY key) g USING (key)
WHERE coalesce(h.n, 0) <> coalesce(g.n, 0)}),
	'0',
	'and the same per key');
is( query(qq{SELECT count(*) FROM storm_ledger WHERE reason = 'debit' AND (amount <> 1 OR balance_after IS NULL
	OR balance_after < 0 OR balance_after > $budget{capacity})}),
	'0',
	'every debit cost one token and left a balance between empty and full');

# Denials: each one fail() answered has its ledger row (checked above);
# the others are claim_due's checks of retries waiting for the budget,
# which tell no client, so they can only be on keys whose last answer was
# budget_wait.
my $hand_fail_denials = query(q{SELECT count(*) FROM fail_denials});
cmp_ok($denials, '>=', $hand_fail_denials,
	"the ledger has every denial fail() answered ($hand_fail_denials)");
is( query(qq{
SELECT count(*) FROM (SELECT key, count(*) AS n FROM storm_ledger WHERE reason LIKE 'denied%' GROUP BY key) g
LEFT JOIN (SELECT key, count(*) AS n FROM fail_denials GROUP BY key) f USING (key)
WHERE g.n < coalesce(f.n, 0)
   OR (g.n > coalesce(f.n, 0)
	   AND NOT EXISTS (SELECT FROM storm_log l WHERE l.key = g.key AND l.kind = 'decision'
					   AND l.reason = 'budget_wait'))}),
	'0',
	'every other denial is of a retry that was waiting for the budget');

# Every denial is traced, at the time of its ledger row: fail() records
# its decision (a retry waiting for the budget, or a dead-letter); claim_due
# records a retry denied again ('denied') or dead-lettered.  So the denials
# are those fail() answered, plus the claim_due denials traced, plus one
# dead-letter by claim_due per operation whose last answer was budget_wait.
is( query(q{
SELECT count(*) FROM storm_ledger g
WHERE g.reason LIKE 'denied%'
  AND (SELECT count(*) FROM agentretry.events e
	   WHERE e.tenant = 'default' AND e.key = g.key AND e.at = g.at
		 AND ((e.kind = 'retry' AND e.reason = 'budget_wait')
			  OR (e.kind = 'dead' AND e.reason = 'budget_exhausted')
			  OR (e.kind = 'denied' AND e.reason = g.reason))) <> 1}),
	'0',
	'every denial in the ledger has its event');
my $hand_claim_denials = query(q{
SELECT (SELECT count(*) FROM agentretry.events WHERE tenant = 'default' AND kind = 'denied')
	 + (SELECT count(*) FROM agentretry.operations o JOIN client_last c USING (key)
		WHERE o.state = 'dead' AND c.action = 'retry' AND c.reason = 'budget_wait')});
is($denials, $hand_fail_denials + $hand_claim_denials,
	"the ledger's denials are those fail() answered and those of claim_due ($hand_claim_denials)");

is( query(qq{
SELECT debits_last_hour || ' ' || tokens_last_hour || ' ' || denials_last_hour || ' '
	   || (last_denial = (SELECT max(at) FROM storm_ledger WHERE reason LIKE 'denied%'))
	   || ' ' || (balance >= 0 AND balance <= capacity)
FROM agentretry.budget_status WHERE scope = 'tool' AND subject = 'storm_fetch'}),
	"$hand_debits $hand_debits $denials true true",
	'budget_status: debits and tokens as counted, every denial, the last one, a balance within capacity'
);

# The stripes' counters: every retry of the run, and no more first
# attempts than were made (one that finds every stripe held by other
# sessions' open transactions is not counted, which errs on the strict
# side of a ratio: src/budget.c; in a storm against a nearly empty bucket,
# retries that gather their cost hold several stripes at once), all in the
# current window; and no stripe owes tokens once refilled to now (what a
# debit could take from it).
note(query(qq{SELECT 'first attempts counted by the stripes: ' || sum(cur_first) || ' of $firsts'
			  FROM agentretry.budget_stripes WHERE scope = 'tool' AND subject = 'storm_fetch'}));
is( query(qq{
SELECT (sum(cur_first) BETWEEN 1 AND $firsts) || ' ' || sum(cur_retries) || ' '
	   || sum(prev_first + prev_retries) || ' '
	   || bool_and(tokens + $budget{refill}.0 / $budget{stripes}
				   * extract(epoch FROM clock_timestamp() - refilled_at) >= 0)
FROM agentretry.budget_stripes WHERE scope = 'tool' AND subject = 'storm_fetch'}),
	"true $hand_debits 0 true",
	'budget_stripes count every retry, and never more first attempts than were made');

note 'closest approach to the bounds at a debit (retries so far minus the bound): ratio '
  . query(qq{
SELECT max(g.so_far - floor(greatest($budget{floor}, $budget{ratio} *
		(SELECT count(*) FROM agentretry.operations o WHERE o.first_attempt_at <= g.at))))
FROM (SELECT g.at, count(*) OVER (ORDER BY g.id) AS so_far
	  FROM storm_ledger g WHERE g.reason = 'debit') g})
  . ', bucket '
  . query(qq{
SELECT round(max(g.so_far - $budget{capacity} - $budget{refill} * extract(epoch FROM g.at - $t0_sql))::numeric, 2)
FROM (SELECT g.at, count(*) OVER (ORDER BY g.at, g.id) AS so_far
	  FROM storm_ledger g WHERE g.reason = 'debit') g})
  . '; lowest stored tokens of a stripe: '
  . query(q{SELECT round(min(tokens)::numeric, 4) FROM agentretry.budget_stripes});
$node->stop;
note sprintf('total: %.1f s', time - $t_start);
done_testing();
