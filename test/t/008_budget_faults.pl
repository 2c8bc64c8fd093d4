# Crash and fault test of retry budgets and runs.
#
# Two tenants, each with runs of three steps: book (pattern A: claim, the
# booking and complete() commit together), charge (pattern B, idempotent,
# a provider that deduplicates by the idempotency key) and send (pattern
# B, not idempotent, a provider that does not deduplicate: a retry after
# an unknown outcome must be verified).  Every run has its own
# max_retry_events.  Budgets, all with a share per stripe that is not a
# multiple of the cost:
#   - tenant acme: a token bucket of 37 over 4 stripes (9.25 each), no
#     refill, costing 1 per transient failure and 2 per ambiguous one;
#   - tenant acme, tool charge: 6 over 4 stripes (1.5 each), refilling 1
#     token a second, so that denied retries wait for it (budget_wait)
#     and retry workers pay for them when they lease them;
#   - tenant globex, tool charge: 11 over 3 stripes, no refill (a third
#     of 11 is not exact in binary).
# Agents make the first attempts; retry workers lease due retries with
# claim_due() and verify with claim_verifications(), a tenant at a time,
# taking turns between the two (claim_due() without a tenant leases only
# the caller's tenant, default); the driver runs the sweep.  Faults, a
# script per step (the fault of each lease in turn, so that every kind
# happens whatever the timing): transient failures, ambiguous timeouts after
# the side effect, workers terminated with pg_terminate_backend in the
# middle of a transaction (after the booking and complete(), after a
# fail() that debited the budgets) or while holding a lease (before and
# after acting), transactions rolled back after the effect or after a
# fail(), leases given back, workers stalling (then extending their lease
# with heartbeat()), and the server stopped with mode immediate and
# restarted in the middle, once every kind of termination has happened.
#
# Afterwards: no duplicate side effect; every operation succeeded or was
# dead-lettered by a budget, none lost; every retry admitted has exactly
# one debit per budget that applies (the run, the tenant, the tool), with
# the cost of its failure class, and every denial its event; for each
# bucket without refill, capacity minus the committed debits is exactly
# what its stripes hold, right after the crash and at the end, and no
# stripe is negative; the refilling bucket never paid more than its
# capacity and refill; no run retried beyond its max_retry_events, and a
# run denied by its limit used all of it.  Then a probe asks for retries
# one at a time until each bucket without refill denies: it must have
# admitted exactly its capacity, no token stranded in a stripe.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $n_agents = 4;
my $n_retry_workers = 3;
my %n_runs = (acme => 14, globex => 10);
my $workload_timeout = 40;    # seconds: every operation must be terminal by then

# the buckets: [tenant, scope, subject, capacity, stripes, refill per
# second, slack].  Shares of 37 over 4 stripes are quarters, exact in
# binary: that bucket's accounts must balance exactly.  A third of 11 is
# not; amounts within 1e-9 of each other are equal there (as they are to
# the extension when it pays a cost).
my @buckets = (
	[ 'acme', 'tenant', 'acme', 37, 4, 0, 0 ],
	[ 'acme', 'tool', 'charge', 6, 4, 1, 1e-9 ],
	[ 'globex', 'tool', 'charge', 11, 3, 0, 1e-9 ]);
my $slack = 'SELECT * FROM (VALUES '
  . join(', ', map { "('$_->[0]', '$_->[1]', '$_->[2]', $_->[6]::float8)" } @buckets)
  . ') AS slack(tenant, scope, subject, slack)';

my $node = PostgreSQL::Test::Cluster->new('budget_faults');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
log_statement = none
log_min_messages = warning
max_connections = 40
agentretry.trace_all = on
deadlock_timeout = '100ms'
});
$node->start;

sub query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

my $t_start = time;

query(q{
CREATE EXTENSION agentretry;

SELECT agentretry.register_tool(t, i::agentretry.idempotency_class, 'write',
	max_attempts => 50, base_delay => '20 ms', max_delay => '100 ms', lease => '2 s')
  FROM (VALUES ('book', 'non_idempotent'), ('charge', 'idempotent'),
			   ('send', 'non_idempotent')) v(t, i);

-- the steps to do; agent n makes the first attempts of its own items, in
-- the order of ord.  script is the fault of each lease in turn (NULL
-- where the lease is a verification, 'ok' after the end).  tries counts
-- the first attempts started, committed before each: a first attempt of
-- pattern A that rolls back takes its claim with it, and the next one
-- takes the next fault of the script.
CREATE TABLE work (
	tenant text NOT NULL,
	key text NOT NULL,
	run_id text NOT NULL,
	tool text NOT NULL,
	agent int NOT NULL,
	ord float8 NOT NULL,
	script text[] NOT NULL,
	tries int NOT NULL DEFAULT 0,
	PRIMARY KEY (tenant, key)
);

-- The scripts, given to the steps of each tool in turn.
CREATE TABLE scripts (tool text NOT NULL, n int NOT NULL, script text[] NOT NULL);
INSERT INTO scripts VALUES
	('book', 1, '{ok}'),
	('book', 2, '{http_503,ok}'),
	('book', 3, '{rollback,ok}'),
	('book', 4, '{kill_txn,ok}'),
	('book', 5, '{http_503,rollback,ok}'),
	('book', 6, '{http_503,kill_txn,NULL,ok}'),
	('charge', 1, '{ok}'),
	('charge', 2, '{http_503,ok}'),
	('charge', 3, '{timeout_after,ok}'),
	('charge', 4, '{kill_acted,ok}'),
	('charge', 5, '{fail_txn_kill,ok}'),
	('charge', 6, '{http_502_rollback,ok}'),
	('charge', 7, '{timeout_after,timeout_after,ok}'),
	('charge', 8, '{http_503,http_503,http_503,ok}'),
	('charge', 9, '{http_503,stall,ok}'),
	('send', 1, '{ok}'),
	('send', 2, '{http_503,ok}'),
	('send', 3, '{timeout_after}'),
	('send', 4, '{kill_before,NULL,ok}'),
	('send', 5, '{kill_acted}'),
	('send', 6, '{release,ok}'),
	('send', 7, '{http_503,timeout_after}'),
	('send', 8, '{kill_before,NULL,http_503,ok}'),
	('send', 9, '{stall}');

-- side effects.  Pattern A: the booking commits with complete().  No
-- unique constraints on purpose: duplicates are counted, not prevented.
CREATE TABLE bookings (
	id bigserial PRIMARY KEY,
	tenant text NOT NULL, key text NOT NULL, token bigint NOT NULL, worker text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp());
-- Pattern B, idempotent: every call, and the charges the provider made,
-- one per idempotency key (its own check, under a lock of the key)
CREATE TABLE charge_calls (
	id bigserial PRIMARY KEY,
	tenant text NOT NULL, key text NOT NULL, token bigint NOT NULL, worker text NOT NULL,
	charge_id bigint NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE charges (
	id bigserial PRIMARY KEY,
	tenant text NOT NULL, key text NOT NULL, token bigint NOT NULL, worker text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp());
-- Pattern B, not idempotent: every call is a new message
CREATE TABLE sent (
	id bigserial PRIMARY KEY,
	tenant text NOT NULL, key text NOT NULL, token bigint NOT NULL, worker text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp());

-- what claim_due() and claim_verifications() handed out, committed with
-- the lease
CREATE SEQUENCE batches;
CREATE TABLE leases (
	id bigserial PRIMARY KEY,
	worker text NOT NULL, batch bigint NOT NULL, via text NOT NULL,
	tenant text NOT NULL, key text NOT NULL, tool text NOT NULL, token bigint NOT NULL,
	lease_until timestamptz NOT NULL);
-- calls refused with AR002 (the lease had been taken over)
CREATE TABLE fenced (worker text NOT NULL, tenant text NOT NULL, key text NOT NULL,
	token bigint NOT NULL, call text NOT NULL);
CREATE TABLE kills (app text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE control (stop bool NOT NULL);
INSERT INTO control VALUES (false);

-- the fault of lease tok of a step (its first attempts all have token 1)
CREATE FUNCTION fault(tn text, k text, tok bigint) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT coalesce(w.script[w.tries - 1 + tok], 'ok') FROM work w
	 WHERE w.tenant = tn AND w.key = k
$$;

-- The providers.  A careful client does not start an action on a lease
-- about to expire, or a verifier could look before the action lands:
-- NULL when it did not act.
CREATE FUNCTION call_send(wk text, tn text, k text, tok bigint, lease_until timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	sid bigint;
BEGIN
	INSERT INTO sent (tenant, key, token, worker)
	SELECT tn, k, tok, wk WHERE clock_timestamp() < lease_until - interval '1 s'
	RETURNING sent.id INTO sid;
	RETURN sid;
END
$$;

CREATE FUNCTION call_charge(wk text, tn text, k text, tok bigint, lease_until timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	cid bigint;
BEGIN
	IF clock_timestamp() >= lease_until - interval '1 s' THEN
		RETURN NULL;
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext(tn || '/' || k));
	SELECT min(c.id) INTO cid FROM charges c WHERE c.tenant = tn AND c.key = k;
	IF cid IS NULL THEN
		INSERT INTO charges (tenant, key, token, worker) VALUES (tn, k, tok, wk)
		RETURNING charges.id INTO cid;
	END IF;
	INSERT INTO charge_calls (tenant, key, token, worker, charge_id) VALUES (tn, k, tok, wk, cid);
	RETURN cid;
END
$$;

-- How a worker reports.  'fenced' when the lease was taken over meanwhile
-- (AR002): that is the fencing working, not an error of the worker.
CREATE FUNCTION report(tn text, k text, tok bigint, what text, ref bigint DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	d agentretry.decision;
BEGIN
	CASE what
	WHEN 'complete' THEN
		PERFORM agentretry.complete(k, tok, jsonb_build_object('ref', ref), tenant => tn);
		RETURN 'complete';
	WHEN 'release' THEN
		PERFORM agentretry.release(k, tok, tenant => tn);
		RETURN 'release';
	WHEN 'resolve' THEN
		PERFORM agentretry.resolve(k, tok, ref IS NOT NULL,
			CASE WHEN ref IS NOT NULL THEN jsonb_build_object('ref', ref) END, tenant => tn);
		RETURN 'resolve';
	WHEN 'http_503' THEN
		SELECT * INTO d FROM agentretry.fail(k, tok, 'transient', 'pre_execution', 'http_503', tenant => tn);
	WHEN 'rolled_back' THEN
		SELECT * INTO d FROM agentretry.fail(k, tok, 'transient', 'pre_execution', 'rolled_back', tenant => tn);
	WHEN 'http_502_after' THEN
		SELECT * INTO d FROM agentretry.fail(k, tok, 'transient', 'post_execution', 'http_502', tenant => tn);
	WHEN 'timeout_after' THEN
		SELECT * INTO d FROM agentretry.fail(k, tok, 'ambiguous', 'post_execution', 'timeout', tenant => tn);
	END CASE;
	RETURN d.action::text;
EXCEPTION WHEN SQLSTATE 'AR002' THEN
	RETURN 'fenced';
END
$$;
});

# ---------------------------------------------------------------------------
# What a worker does with a lease it holds (committed): an attempt, with
# the fault its step's script says.  A worker that will be
# terminated says so in application_name ("<worker> kill <tenant>/<key>
# <token> <what>") and sleeps; the driver terminates it.
# ---------------------------------------------------------------------------
query(q{
CREATE PROCEDURE act(wk text, tn text, k text, tl text, tok bigint, lease_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
	f text := fault(tn, k, tok);
	ref bigint;
	r text;
	bid bigint;
BEGIN
	IF f = 'stall' THEN
		-- slow (the server may go down meanwhile), then it extends its
		-- lease and acts
		PERFORM set_config('application_name', format('%s stall %s/%s %s', wk, tn, k, tok), false);
		COMMIT;
		PERFORM pg_sleep(1.5);
		PERFORM set_config('application_name', wk, false);
		BEGIN
			lease_until := agentretry.heartbeat(k, tok, tenant => tn);
		EXCEPTION WHEN SQLSTATE 'AR002' THEN
			NULL;		-- taken over: its calls are fenced below
		END;
		COMMIT;
	END IF;
	IF tl = 'book' THEN
		-- pattern A with a leased retry: the booking commits with complete()
		IF f = 'http_503' THEN
			r := report(tn, k, tok, 'http_503');
		ELSIF f = 'rollback' THEN
			-- an error after the booking and complete(): both roll back
			INSERT INTO bookings (tenant, key, token, worker) VALUES (tn, k, tok, wk)
			RETURNING id INTO bid;
			r := report(tn, k, tok, 'complete', bid);
			ROLLBACK;
			r := report(tn, k, tok, 'rolled_back');
		ELSE
			INSERT INTO bookings (tenant, key, token, worker) VALUES (tn, k, tok, wk)
			RETURNING id INTO bid;
			r := report(tn, k, tok, 'complete', bid);
			IF r = 'fenced' THEN
				ROLLBACK;	-- the booking goes with the refused completion
			ELSIF f = 'kill_txn' THEN
				-- terminated before the commit: booking and completion roll
				-- back, the lease lapses
				PERFORM set_config('application_name',
					format('%s kill %s/%s %s book-txn', wk, tn, k, tok), false);
				PERFORM pg_sleep(3);
			END IF;
		END IF;
	ELSIF tl = 'charge' THEN
		IF f = 'http_503' THEN
			r := report(tn, k, tok, 'http_503');
		ELSIF f = 'timeout_after' THEN
			-- the charge happened, the answer timed out
			ref := call_charge(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'timeout_after' END);
		ELSIF f = 'kill_acted' THEN
			-- terminated after the charge, before reporting
			ref := call_charge(wk, tn, k, tok, lease_until);
			PERFORM set_config('application_name',
				format('%s kill %s/%s %s charge-acted', wk, tn, k, tok), false);
			COMMIT;
			PERFORM pg_sleep(3);
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'complete' END, ref);
		ELSIF f = 'fail_txn_kill' THEN
			-- terminated after fail() debited the budgets, before the commit
			ref := call_charge(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'timeout_after' END);
			IF r <> 'fenced' THEN
				PERFORM set_config('application_name',
					format('%s kill %s/%s %s charge-fail-txn', wk, tn, k, tok), false);
				PERFORM pg_sleep(3);
			END IF;
		ELSIF f = 'http_502_rollback' THEN
			-- a failure reported, then rolled back (its debit with it), then
			-- reported again
			ref := call_charge(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'http_502_after' END);
			ROLLBACK;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'http_502_after' END);
		ELSE
			ref := call_charge(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'complete' END, ref);
		END IF;
	ELSE
		IF f = 'http_503' THEN
			r := report(tn, k, tok, 'http_503');
		ELSIF f = 'timeout_after' THEN
			-- sent, the answer timed out: to be verified
			ref := call_send(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'timeout_after' END);
		ELSIF f = 'kill_before' THEN
			-- terminated before sending
			PERFORM set_config('application_name',
				format('%s kill %s/%s %s send-before', wk, tn, k, tok), false);
			COMMIT;
			PERFORM pg_sleep(3);
			r := report(tn, k, tok, 'release');
		ELSIF f = 'kill_acted' THEN
			-- terminated after sending, before reporting
			ref := call_send(wk, tn, k, tok, lease_until);
			PERFORM set_config('application_name',
				format('%s kill %s/%s %s send-acted', wk, tn, k, tok), false);
			COMMIT;
			PERFORM pg_sleep(3);
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'complete' END, ref);
		ELSIF f = 'release' THEN
			-- gives the lease back before acting: not a retry
			r := report(tn, k, tok, 'release');
		ELSE
			ref := call_send(wk, tn, k, tok, lease_until);
			COMMIT;
			r := report(tn, k, tok, CASE WHEN ref IS NULL THEN 'release' ELSE 'complete' END, ref);
		END IF;
	END IF;
	IF r = 'fenced' THEN
		INSERT INTO fenced VALUES (wk, tn, k, tok, tl);
	END IF;
	PERFORM set_config('application_name', wk, false);
	COMMIT;
END
$$;

-- An agent: the first attempt of each of its steps.  book is pattern A,
-- the claim in the same transaction as the booking and complete(): a
-- rollback or a termination takes the claim with it, and the step is new
-- again.
CREATE PROCEDURE agent(wk text, me int)
LANGUAGE plpgsql AS $$
DECLARE
	w record;
	c agentretry.claim_result;
	f text;
	r text;
	bid bigint;
BEGIN
	LOOP
		EXIT WHEN (SELECT stop FROM control);
		SELECT * INTO w FROM work
		 WHERE agent = me
		   AND NOT EXISTS (SELECT FROM agentretry.operations o
							WHERE o.tenant = work.tenant AND o.key = work.key)
		 ORDER BY ord LIMIT 1;
		IF NOT FOUND THEN
			COMMIT;
			PERFORM pg_sleep(0.05);
			CONTINUE;
		END IF;
		UPDATE work SET tries = tries + 1 WHERE tenant = w.tenant AND key = w.key;
		COMMIT;

		SELECT * INTO c FROM agentretry.claim(w.key, jsonb_build_object('key', w.key), w.tool,
			tenant => w.tenant, run_id => w.run_id, step => w.tool, owner => wk);
		IF c.outcome <> 'execute' THEN
			RAISE EXCEPTION 'first claim of %/% answered %', w.tenant, w.key, c.outcome;
		END IF;
		IF w.tool <> 'book' THEN
			COMMIT;
			CALL act(wk, w.tenant, w.key, w.tool, c.lease_token, c.lease_expires_at);
			CONTINUE;
		END IF;

		f := fault(w.tenant, w.key, c.lease_token);
		IF f = 'http_503' THEN
			r := report(w.tenant, w.key, c.lease_token, 'http_503');
		ELSE
			INSERT INTO bookings (tenant, key, token, worker)
			VALUES (w.tenant, w.key, c.lease_token, wk) RETURNING id INTO bid;
			r := report(w.tenant, w.key, c.lease_token, 'complete', bid);
			IF f = 'rollback' THEN
				ROLLBACK;	-- an error after the booking: the claim goes too
				CONTINUE;
			ELSIF f = 'kill_txn' THEN
				PERFORM set_config('application_name',
					format('%s kill %s/%s %s first-book-txn', wk, w.tenant, w.key, c.lease_token), false);
				PERFORM pg_sleep(3);
			END IF;
		END IF;
		IF r = 'fenced' THEN
			RAISE EXCEPTION 'the lease of an uncommitted claim of %/% was taken over', w.tenant, w.key;
		END IF;
		PERFORM set_config('application_name', wk, false);
		COMMIT;
	END LOOP;
END
$$;

-- A retry worker: due retries with claim_due(), one transaction per
-- lease; when none is due, a verification.  A tenant at a time, the two
-- taking turns to be served first.
CREATE PROCEDURE retry_worker(wk text)
LANGUAGE plpgsql AS $$
DECLARE
	b bigint;
	tns text[];
	tn text;
	ids bigint[];
	lid bigint;
	l leases;
	v record;
	ref bigint;
	r text;
BEGIN
	LOOP
		EXIT WHEN (SELECT stop FROM control);
		b := nextval('batches');
		tns := CASE WHEN b % 2 = 0 THEN ARRAY['acme', 'globex'] ELSE ARRAY['globex', 'acme'] END;
		ids := NULL;
		FOREACH tn IN ARRAY tns LOOP
			WITH d AS (
				SELECT x.tenant, x.key, x.tool, x.lease_token, x.lease_expires_at
				  FROM agentretry.claim_due(wk, 2, tenant => tn) x),
			ins AS (
				INSERT INTO leases (worker, batch, via, tenant, key, tool, token, lease_until)
				SELECT wk, b, 'claim_due', d.tenant, d.key, d.tool, d.lease_token, d.lease_expires_at
				  FROM d
				RETURNING leases.id)
			SELECT array_agg(ins.id ORDER BY ins.id) INTO ids FROM ins;
			COMMIT;
			EXIT WHEN ids IS NOT NULL;
		END LOOP;
		IF ids IS NOT NULL THEN
			FOREACH lid IN ARRAY ids LOOP
				SELECT * INTO l FROM leases WHERE leases.id = lid;
				CALL act(wk, l.tenant, l.key, l.tool, l.token, l.lease_until);
			END LOOP;
			CONTINUE;
		END IF;

		FOREACH tn IN ARRAY tns LOOP
			SELECT * INTO v FROM agentretry.claim_verifications(wk, 1, tenant => tn);
			EXIT WHEN FOUND;
		END LOOP;
		IF v.key IS NULL THEN
			COMMIT;
			PERFORM pg_sleep(0.03);
			CONTINUE;
		END IF;
		INSERT INTO leases (worker, batch, via, tenant, key, tool, token, lease_until)
		VALUES (wk, b, 'claim_verifications', v.tenant, v.key, v.tool, v.lease_token, v.lease_expires_at);
		COMMIT;
		-- did the action happen?  (a booking commits with its completion)
		ref := CASE v.tool
			WHEN 'send' THEN (SELECT min(s.id) FROM sent s WHERE s.tenant = v.tenant AND s.key = v.key)
			WHEN 'book' THEN (SELECT min(s.id) FROM bookings s WHERE s.tenant = v.tenant AND s.key = v.key)
			ELSE (SELECT min(s.id) FROM charges s WHERE s.tenant = v.tenant AND s.key = v.key) END;
		r := report(v.tenant, v.key, v.lease_token, 'resolve', ref);
		IF r = 'fenced' THEN
			INSERT INTO fenced VALUES (wk, v.tenant, v.key, v.lease_token, 'resolve');
		END IF;
		COMMIT;
	END LOOP;
END
$$;

-- Each decision that admitted a retry, from the trace: a failure decided
-- as a retry (not one waiting for a budget: that one has paid nothing),
-- and a lease of a retry that had waited for a budget (it pays then).
CREATE VIEW admitted AS
SELECT e.tenant, e.key, e.at, e.kind, e.run_id, e.failure_class
  FROM (SELECT e.*, lag(e.kind) OVER w AS prev_kind, lag(e.reason) OVER w AS prev_reason
		  FROM agentretry.events e WHERE e.key IS NOT NULL
		WINDOW w AS (PARTITION BY e.tenant, e.key ORDER BY e.id)) e
 WHERE (e.kind = 'retry' AND e.reason IS DISTINCT FROM 'budget_wait')
	OR (e.kind = 'claim'
		AND (e.prev_kind = 'denied' OR (e.prev_kind = 'retry' AND e.prev_reason = 'budget_wait')));

-- The debits of each decision, as the ledger has them (one row per
-- budget, all dated alike), and what they should be: the run's 1, the
-- cost of the failure class for the tenant's bucket and the tool's.
CREATE VIEW debit_groups AS
SELECT g.tenant, g.key, g.at,
	   string_agg(g.scope || ' ' || g.subject || ' ' || g.amount, ', '
				  ORDER BY g.scope, g.subject) AS debits,
	   min(g.failure_class::text) AS failure_class,
	   count(DISTINCT g.failure_class) AS classes
  FROM agentretry.budget_ledger g WHERE g.reason = 'debit'
 GROUP BY g.tenant, g.key, g.at;

CREATE VIEW expected_debits AS
SELECT g.tenant, g.key, g.at, concat_ws(', ',
		'run ' || o.run_id || ' 1',
		CASE WHEN g.tenant = 'acme' THEN 'tenant acme ' || c.cost END,
		CASE WHEN o.tool = 'charge' THEN 'tool charge ' || c.cost END) AS debits
  FROM debit_groups g
  JOIN agentretry.operations o ON o.tenant = g.tenant AND o.key = g.key
 CROSS JOIN LATERAL (SELECT CASE g.failure_class WHEN 'ambiguous' THEN 2 ELSE 1 END AS cost) c;

-- Each bucket: what the ledger says was spent, and what its stripes
-- hold (stored, and refilled to now)
CREATE VIEW buckets AS
SELECT b.tenant, b.scope::text AS scope, b.subject, b.capacity, b.stripes, b.refill_per_sec,
	   coalesce(l.spent, 0) AS spent, coalesce(l.debits, 0) AS debits,
	   s.stored, s.held_now, s.lowest, s.highest
  FROM agentretry.budgets b
 CROSS JOIN LATERAL (
	SELECT sum(g.amount) AS spent, count(*) AS debits FROM agentretry.budget_ledger g
	 WHERE g.tenant = b.tenant AND g.scope = b.scope::text AND g.subject = b.subject
	   AND g.reason = 'debit') l
 CROSS JOIN LATERAL (
	SELECT sum(x.tokens) AS stored, sum(x.now_tokens) AS held_now,
		   min(x.now_tokens) AS lowest, max(x.now_tokens) AS highest
	  FROM (SELECT s.tokens, least(b.capacity / b.stripes, s.tokens + b.refill_per_sec / b.stripes
			   * greatest(extract(epoch FROM clock_timestamp() - s.refilled_at)::float8, 0)) AS now_tokens
			  FROM agentretry.budget_stripes s
			 WHERE s.tenant = b.tenant AND s.scope = b.scope AND s.subject = b.subject) x) s
 WHERE b.capacity IS NOT NULL;
});

# the buckets, and the runs with their limits
foreach my $b (@buckets)
{
	my ($tenant, $scope, $subject, $capacity, $stripes, $refill) = @$b;
	query(qq{
SELECT agentretry.set_budget('$tenant', '$scope', '$subject', capacity => $capacity,
	refill_per_sec => $refill, cost_transient => 1, cost_ambiguous => 2, stripes => $stripes)});
}
my $t0 = query(q{SELECT min(refilled_at) FROM agentretry.budget_stripes});

my @run_rows;
foreach my $tenant (sort keys %n_runs)
{
	foreach my $i (1 .. $n_runs{$tenant})
	{
		my $run = sprintf('%s%02d', substr($tenant, 0, 1), $i);
		my $limit = $tenant eq 'acme' ? 2 + $i % 3 : 1 + $i % 3;
		push @run_rows, "('$tenant', '$run', $limit)";
	}
}
query('CREATE TABLE plan (tenant text, run_id text, max_retry_events int); INSERT INTO plan VALUES '
	  . join(', ', @run_rows));
query(qq{
SELECT setseed(0.8);
SELECT count(agentretry.start_run(run_id, tenant, max_retry_events => max_retry_events)) FROM plan;
INSERT INTO work (tenant, key, run_id, tool, agent, ord, script)
SELECT s.tenant, s.key, s.run_id, s.tool, s.i % $n_agents, random(),
	   (SELECT c.script FROM scripts c
		 WHERE c.tool = s.tool
		   AND c.n = 1 + s.r % (SELECT count(*) FROM scripts d WHERE d.tool = s.tool))
  FROM (SELECT p.tenant, p.run_id || '.' || t AS key, p.run_id, t AS tool,
			   row_number() OVER (ORDER BY p.run_id, t) AS i,
			   row_number() OVER (PARTITION BY p.tenant, t ORDER BY p.run_id) - 1 AS r
		  FROM plan p CROSS JOIN unnest(ARRAY['book', 'charge', 'send']) t) s;
});
my $n_ops = query('SELECT count(*) FROM work');

# ---------------------------------------------------------------------------
# Worker processes (psql running a procedure), as in 001_fault_workload.pl
# ---------------------------------------------------------------------------
my %workers;
my @worker_errors;
my $worker_runs = 0;

sub start_worker
{
	my ($name) = @_;
	my $call =
	  $name =~ /^a(\d+)$/
	  ? "CALL agent('$name', $1)"
	  : "CALL retry_worker('$name')";
	my $w = { out => '', err => '' };
	$w->{h} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=$name",
			'-c', $call
		],
		'<', \undef, '>', \$w->{out}, '2>', \$w->{err});
	$workers{$name} = $w;
	$worker_runs++;
	return;
}

sub start_all_workers
{
	start_worker('a' . ($_ - 1)) for 1 .. $n_agents;
	start_worker("w$_") for 1 .. $n_retry_workers;
	return;
}

# Collect workers that ended; with $restart, start again those that failed.
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
		push @worker_errors, map { "$name: $_" } split(/\n/, $w->{err});
		delete $workers{$name};
		start_worker($name) if $restart && !$ok;
	}
	return;
}

sub wait_workers
{
	my $until = time + 30;
	while (%workers && time < $until)
	{
		reap_workers(0);
		usleep(50_000);
	}
	die 'workers did not end' if %workers;
	return;
}

# The driver's errors (kills, sweeps) are collected, not fatal.
my @tick_errors;

sub tick_sql
{
	my ($sql) = @_;
	my ($out, $err, $timed_out) = ('', '', 0);
	$node->psql(
		'postgres', "SET lock_timeout = '5s';\n$sql",
		stdout => \$out,
		stderr => \$err,
		timeout => 30,
		timed_out => \$timed_out);
	push @tick_errors, "$sql: $err" if $err ne '';
	push @tick_errors, "$sql: timed out" if $timed_out;
	return $out;
}

# Terminate the workers that asked for it, once they sleep.
sub kill_sleepers
{
	return tick_sql(q{
WITH k AS (
	SELECT application_name AS app, pg_terminate_backend(pid, 5000) AS ok
	  FROM pg_stat_activity
	 WHERE application_name LIKE '% kill %' AND wait_event = 'PgSleep')
INSERT INTO kills (app) SELECT app FROM k WHERE ok});
}

# For each bucket that does not refill: its capacity less the committed
# debits, against what its stripes store.
my $exact_ledger_sql = qq{
SELECT coalesce(string_agg(format('%s/%s/%s: capacity %s - spent %s <> stored %s',
								  tenant, scope, subject, capacity, spent, stored), '; '), '')
  FROM buckets JOIN ($slack) s USING (tenant, scope, subject)
 WHERE refill_per_sec = 0 AND abs(capacity - spent - stored) > slack};

# ---------------------------------------------------------------------------
# The workload: agents, retry workers, the sweep, kills, a crash
# ---------------------------------------------------------------------------
my $t_workload = time;
start_all_workers();

my $crashed = 0;
my @crash_errors;
my @crash_leases;
my $after_crash_ledger = 'no crash';
my $after_crash_runs = '';
my $ticks = 0;
my ($terminal, $live_leases) = (0, 0);
while (1)
{
	reap_workers(1);
	kill_sleepers();
	tick_sql('SELECT agentretry.sweep()') if $ticks % 4 == 0;
	$ticks++;
	($terminal, $live_leases) = split /\|/, query(q{
SELECT count(*) FILTER (WHERE o.state IN ('succeeded', 'dead', 'cancelled')),
	   count(*) FILTER (WHERE o.state IN ('in_progress', 'verify')
						  AND o.lease_expires_at > clock_timestamp())
  FROM work w LEFT JOIN agentretry.operations o ON o.tenant = w.tenant AND o.key = w.key});
	last if $terminal == $n_ops;
	last if time - $t_workload > $workload_timeout;

	# The crash: in the middle of the work, once every kind of termination
	# has happened (so that the crash does not take their place), with
	# every worker connected (those just terminated start again) and
	# leases held.
	if (!$crashed
		&& (query(q{SELECT count(DISTINCT split_part(app, ' ', 5)) FROM kills}) == 6
			|| time - $t_workload > 12))
	{
		my ($connected, $live) = (0, 0);
		my $until = time + 3;
		while (time < $until)
		{
			reap_workers(1);
			($connected, $live) = split /\|/, query(q{
SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name ~ '^(a|w)[0-9]+( |$)'),
	   (SELECT count(*) FROM agentretry.operations
		 WHERE state IN ('in_progress', 'verify') AND lease_expires_at > clock_timestamp())});
			last if $connected == $n_agents + $n_retry_workers;
			usleep(50_000);
		}
		if (($connected != $n_agents + $n_retry_workers || $live == 0)
			&& time - $t_workload <= 12)
		{
			usleep(100_000);
			next;
		}
		note sprintf('crash with %d of %d operations terminal, %d live leases, after %.1f s',
			$terminal, $n_ops, $live, time - $t_workload);
		$node->stop('immediate');
		my $errors_before = @worker_errors;
		wait_workers();
		@crash_errors = @worker_errors[ $errors_before .. $#worker_errors ];
		$node->start;
		$crashed = 1;
		@crash_leases = split /\n/, query(q{
SELECT tenant || '/' || key || ' ' || state || ' ' || lease_token FROM agentretry.operations
 WHERE state IN ('in_progress', 'verify') AND lease_expires_at > clock_timestamp()
 ORDER BY 1});
		$after_crash_ledger = query($exact_ledger_sql);
		$after_crash_runs = query(q{
SELECT count(*) FROM agentretry.runs r
 WHERE r.retry_events <> (SELECT count(*) FROM agentretry.budget_ledger g
						   WHERE g.tenant = r.tenant AND g.scope = 'run'
							 AND g.subject = r.run_id AND g.reason = 'debit')
	OR r.retry_events > r.max_retry_events});
		start_all_workers();
	}
	usleep(100_000);
}
my $workload_secs = time - $t_workload;
query('UPDATE control SET stop = true');
{
	# the workers end by themselves; one still asleep is terminated
	my $until = time + 30;
	while (%workers && time < $until)
	{
		reap_workers(0);
		kill_sleepers();
		usleep(50_000);
	}
	die 'workers did not end' if %workers;
}

note sprintf('workload: %.1f s, %d ticks, %d worker runs', $workload_secs, $ticks, $worker_runs);
note 'leases left by the crash: ' . join(', ', @crash_leases);
note 'kills: ' . query(q{
SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind) FROM (
	SELECT split_part(app, ' ', 5) AS kind, count(*) AS n FROM kills GROUP BY 1) k});
note 'operations: ' . query(q{
SELECT string_agg(s || ' ' || n, ', ' ORDER BY s) FROM (
	SELECT o.tenant || ' ' || o.tool || ' ' || o.state || coalesce('/' || o.reason, '') AS s,
		   count(*) AS n
	  FROM agentretry.operations o GROUP BY 1) x});
note 'ledger: ' . query(q{
SELECT string_agg(s || ' ' || n, ', ' ORDER BY s) FROM (
	SELECT tenant || ' ' || scope || ' ' || CASE WHEN scope = 'run' THEN '*' ELSE subject END
		   || ' ' || reason AS s, count(*) AS n
	  FROM agentretry.budget_ledger GROUP BY 1) x});
note 'buckets: ' . query(q{
SELECT string_agg(format('%s/%s/%s spent %s of %s, holds %s', tenant, scope, subject, spent,
						 capacity, round(held_now::numeric, 4)), '; ' ORDER BY tenant, scope)
  FROM buckets});
note 'fenced calls: ' . query(q{SELECT count(*) FROM fenced});

# ---------------------------------------------------------------------------
# The run of the test itself
# ---------------------------------------------------------------------------
is($terminal, $n_ops, "all $n_ops operations reached a terminal state in time");
is($crashed, 1, 'the server was stopped with mode immediate and restarted');
cmp_ok(scalar @crash_leases, '>', 0, 'the crash left live leases of dead workers behind');
is(scalar(grep { /connection to server was lost/ } @crash_errors),
	$n_agents + $n_retry_workers, 'every worker lost its connection in the crash');
my @unexpected = grep {
	/\b(ERROR|FATAL|PANIC)\b|error:/
	  && !/FATAL:  terminating connection due to (administrator command|immediate shutdown command)/
} @worker_errors;
is(join("\n", @unexpected), '', 'workers failed only by losing their connections');
is(join("\n", @tick_errors), '', 'the sweep and the driver never failed');
is(scalar(grep { /due to administrator command/ } @worker_errors),
	query(q{SELECT count(*) FROM kills}), 'each terminated worker was told why');

# The faults were really injected.
is( query(q{
SELECT string_agg(what, ', ' ORDER BY what) FROM (VALUES
	('kill first-book-txn', (SELECT count(*) FROM kills WHERE app LIKE '% first-book-txn')),
	('kill book-txn', (SELECT count(*) FROM kills WHERE app LIKE '% book-txn')),
	('kill charge-acted', (SELECT count(*) FROM kills WHERE app LIKE '% charge-acted')),
	('kill charge-fail-txn', (SELECT count(*) FROM kills WHERE app LIKE '% charge-fail-txn')),
	('kill send-before', (SELECT count(*) FROM kills WHERE app LIKE '% send-before')),
	('kill send-acted', (SELECT count(*) FROM kills WHERE app LIKE '% send-acted')),
	('transient failure', (SELECT count(*) FROM agentretry.events WHERE kind = 'retry' AND code = 'http_503')),
	('ambiguous timeout retried', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'retry' AND code = 'timeout' AND failure_class = 'ambiguous')),
	('ambiguous timeout verified', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'verify' AND code = 'timeout')),
	('rolled back effect', (SELECT count(*) FROM agentretry.events WHERE code = 'rolled_back')),
	('transient after acting', (SELECT count(*) FROM agentretry.events WHERE code = 'http_502')),
	('expired lease retried', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'retry' AND code = 'lease_expired')),
	('expired lease verified', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'verify' AND code = 'lease_expired')),
	('verified not executed', (SELECT count(*) FROM agentretry.events
		WHERE code = 'verified_not_executed')),
	('verified executed', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'resolve' AND reason = 'verified_executed')),
	('release', (SELECT count(*) FROM agentretry.events WHERE kind = 'release')),
	('denied by a run', (SELECT count(*) FROM agentretry.budget_ledger WHERE reason = 'denied_run')),
	('denied by a bucket', (SELECT count(*) FROM agentretry.budget_ledger WHERE reason = 'denied_tokens')),
	('retry waiting for a budget', (SELECT count(*) FROM agentretry.events
		WHERE kind = 'retry' AND reason = 'budget_wait')),
	('paid by claim_due after waiting', (SELECT count(*) FROM admitted a
		JOIN leases l ON l.tenant = a.tenant AND l.key = a.key AND l.via = 'claim_due'
		WHERE a.kind = 'claim'))) v(what, n)
 WHERE n = 0}),
	'',
	'every kind of fault, denial and budget wait happened');

is( query(q{
SELECT string_agg(via || ' ' || tenant, ', ' ORDER BY via, tenant)
  FROM (SELECT DISTINCT via, tenant FROM leases) l}),
	'claim_due acme, claim_due globex, claim_verifications acme, claim_verifications globex',
	'the retry workers leased retries and verifications of both tenants');
is( query(q{
SELECT count(*) FROM (SELECT tenant, key, token FROM leases GROUP BY 1, 2, 3 HAVING count(*) > 1) d}),
	'0', 'no lease was handed out twice');

# ---------------------------------------------------------------------------
# Nothing lost, nothing done twice
# ---------------------------------------------------------------------------
is( query(q{
SELECT coalesce(string_agg(w.tenant || '/' || w.key || ' ' || coalesce(o.state::text, 'missing')
						   || coalesce('/' || o.reason, ''), ', '), '')
  FROM work w LEFT JOIN agentretry.operations o ON o.tenant = w.tenant AND o.key = w.key
 WHERE o.key IS NULL
	OR NOT (o.state = 'succeeded' OR (o.state = 'dead' AND o.reason = 'budget_exhausted'))}),
	'',
	'every step succeeded or was dead-lettered by a budget: none lost, stuck or waiting');
is( query(q{
SELECT count(*) FROM agentretry.operations o
  LEFT JOIN LATERAL (SELECT g.reason, g.retry_at FROM agentretry.budget_ledger g
					  WHERE g.tenant = o.tenant AND g.key = o.key
					  ORDER BY g.id DESC LIMIT 1) g ON true
 WHERE o.state = 'dead'
   AND NOT (g.reason IN ('denied_run', 'denied_tokens') AND g.retry_at IS NULL)}),
	'0',
	'every dead step was last denied by its run or by a bucket that would never pay');
is( query(q{SELECT count(*) FROM agentretry.operations o
	WHERE NOT EXISTS (SELECT FROM work w WHERE w.tenant = o.tenant AND w.key = o.key)}),
	'0', 'no operation but the steps');

is( query(q{
SELECT count(*) FROM (SELECT tenant, key FROM bookings GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no step was booked twice');
is( query(q{
SELECT count(*) FROM work w
  JOIN agentretry.operations o ON o.tenant = w.tenant AND o.key = w.key
  LEFT JOIN bookings b ON b.tenant = w.tenant AND b.key = w.key
 WHERE w.tool = 'book'
   AND ((o.state = 'succeeded') <> (b.id IS NOT NULL)
		OR (b.id IS NOT NULL AND (b.token <> o.lease_token OR (o.result ->> 'ref')::bigint <> b.id)))}),
	'0',
	'pattern A: a booking exactly when the step succeeded, made under the lease that completed it');
is( query(q{
SELECT count(*) FROM (SELECT tenant, key FROM sent GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no message was sent twice');
is( query(q{
SELECT count(*) FROM work w
  JOIN agentretry.operations o ON o.tenant = w.tenant AND o.key = w.key
  LEFT JOIN sent s ON s.tenant = w.tenant AND s.key = w.key
 WHERE w.tool = 'send'
   AND ((o.state = 'succeeded') <> (s.id IS NOT NULL)
		OR (s.id IS NOT NULL AND (o.result ->> 'ref')::bigint <> s.id))}),
	'0',
	'a message sent exactly when the step succeeded, and its receipt names it');
is( query(q{
SELECT count(*) FROM (SELECT tenant, key FROM charges GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'the provider charged each idempotency key at most once');
is( query(q{
SELECT count(*) FROM work w
  JOIN agentretry.operations o ON o.tenant = w.tenant AND o.key = w.key
  LEFT JOIN charges c ON c.tenant = w.tenant AND c.key = w.key
 WHERE w.tool = 'charge'
   AND ((o.state = 'succeeded' AND (c.id IS NULL OR (o.result ->> 'ref')::bigint <> c.id))
		OR (c.id IS NOT NULL AND o.state <> 'succeeded'
			AND NOT (o.last_failure_class = 'ambiguous' OR o.last_failure_phase = 'post_execution')))}),
	'0',
	'every succeeded charge has its one charge, and a charge of a dead step followed an unknown outcome');
is( query(q{
SELECT count(*) FROM (
	SELECT tenant, key, token FROM charge_calls GROUP BY 1, 2, 3 HAVING count(*) > 1
	UNION ALL SELECT tenant, key, token FROM sent GROUP BY 1, 2, 3 HAVING count(*) > 1) d}),
	'0', 'no lease acted twice');
is( query(q{
SELECT count(*) FROM (
	SELECT tenant, key, token FROM bookings
	UNION ALL SELECT tenant, key, token FROM charge_calls
	UNION ALL SELECT tenant, key, token FROM sent) a
 WHERE NOT EXISTS (SELECT FROM agentretry.events e
					WHERE e.tenant = a.tenant AND e.key = a.key AND e.kind = 'claim'
					  AND e.lease_token = a.token)}),
	'0', 'every action was taken under an execution lease');
is( query(q{
SELECT count(*) FROM fenced f
  JOIN agentretry.operations o ON o.tenant = f.tenant AND o.key = f.key
 WHERE f.token >= o.lease_token}),
	'0', 'every refused call held a superseded lease');

# ---------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------
is($after_crash_ledger, '',
	'right after the crash: each bucket without refill holds exactly its capacity less the committed debits');
is($after_crash_runs, '0',
	'right after the crash: each run counts exactly its committed run debits, within its limit');
is(query($exact_ledger_sql), '',
	'each bucket without refill holds exactly its capacity less the committed debits');
is( query(q{
SELECT count(*) FROM agentretry.budget_stripes s
  JOIN buckets b ON b.tenant = s.tenant AND b.scope = s.scope::text AND b.subject = s.subject
 WHERE s.tokens < 0 OR s.tokens > b.capacity / b.stripes + 1e-9}),
	'0', 'no stripe is negative or over its share');
is( query(qq{
SELECT count(*) FROM buckets
 WHERE lowest < 0 OR held_now > capacity + 1e-9
	OR held_now > capacity - spent
				  + refill_per_sec * extract(epoch FROM clock_timestamp() - '$t0'::timestamptz) + 1e-9}),
	'0',
	'refilled to now, no bucket holds more than its capacity and refill less what it paid');
is( query(q{
SELECT count(*) FROM agentretry.budget_ledger g
  JOIN buckets b ON b.tenant = g.tenant AND b.scope = g.scope AND b.subject = g.subject
 WHERE g.reason = 'debit' AND (g.balance_after < -1e-9 OR g.balance_after > b.capacity + 1e-9)}),
	'0', 'every debit left its bucket between empty and full');
is( query(q{
SELECT count(*) FROM agentretry.budget_status s
  JOIN buckets b ON b.tenant = s.tenant AND b.scope = s.scope::text AND b.subject = s.subject
 WHERE s.debits_last_hour <> b.debits OR s.tokens_last_hour <> b.spent
	OR abs(s.balance - b.held_now) > 1e-9 + b.refill_per_sec * 0.1}),
	'0',
	'budget_status shows the debits and tokens of the ledger, and the balance of the stripes '
	  . '(refilled to its own now)');

# Retries admitted and debits: one group of ledger rows per admitted
# retry, dated as its decision, with a row for each budget that applies.
my ($n_admitted, $n_groups) = split /\|/,
  query(q{SELECT (SELECT count(*) FROM admitted), (SELECT count(*) FROM debit_groups)});
note "retries admitted: $n_admitted, of them paid when leased after a budget wait: "
  . query(q{SELECT count(*) FROM admitted WHERE kind = 'claim'});
cmp_ok($n_admitted, '>', 0, 'retries were admitted');
is($n_groups, $n_admitted, 'as many debit decisions in the ledger as retries admitted');
is( query(q{
SELECT count(*) FROM admitted a FULL JOIN debit_groups g USING (tenant, key, at)
 WHERE a.key IS NULL OR g.key IS NULL
	OR g.classes <> 1 OR (a.kind = 'retry' AND a.failure_class::text <> g.failure_class)}),
	'0',
	'each admitted retry has its debits, dated as the decision, for its failure class, and no debit is without one');
is( query(q{
SELECT coalesce(string_agg(g.key || ': ' || g.debits || ' <> ' || x.debits, '; '), '')
  FROM debit_groups g JOIN expected_debits x USING (tenant, key, at)
 WHERE g.debits <> x.debits}),
	'',
	'each admitted retry debited its run 1 and each bucket that applies the cost of its failure class');
is( query(q{
SELECT string_agg(b.tenant || '/' || b.scope || '/' || b.subject || ' ' || b.debits || ' ' || n.n, ', '
				  ORDER BY b.tenant, b.scope)
  FROM buckets b
  JOIN LATERAL (SELECT count(*) AS n FROM admitted a
				  JOIN agentretry.operations o ON o.tenant = a.tenant AND o.key = a.key
				 WHERE a.tenant = b.tenant AND (b.scope = 'tenant' OR o.tool = b.subject)) n ON true
 WHERE b.debits <> n.n}),
	'',
	'each bucket has one debit per admitted retry it applies to');

# Every denial has its event: a retry waiting for the budget, a
# dead-letter, or a lease denied again.
is( query(q{
SELECT count(*) FROM agentretry.budget_ledger g
 WHERE g.reason LIKE 'denied%'
   AND (SELECT count(*) FROM agentretry.events e
		 WHERE e.tenant = g.tenant AND e.key = g.key AND e.at = g.at
		   AND ((e.kind = 'retry' AND e.reason = 'budget_wait')
				OR (e.kind = 'dead' AND e.reason = 'budget_exhausted')
				OR (e.kind = 'denied' AND e.reason = g.reason))) <> 1}),
	'0',
	'every denial in the ledger has its event');
is( query(q{
SELECT count(*) FROM agentretry.events e
 WHERE ((e.kind = 'retry' AND e.reason = 'budget_wait')
		OR (e.kind = 'dead' AND e.reason = 'budget_exhausted') OR e.kind = 'denied')
   AND (SELECT count(*) FROM agentretry.budget_ledger g
		 WHERE g.tenant = e.tenant AND g.key = e.key AND g.at = e.at
		   AND g.reason LIKE 'denied%') <> 1}),
	'0',
	'every budget wait, budget dead-letter and denied lease has one denial in the ledger');

# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
is( query(q{
SELECT coalesce(string_agg(format('%s/%s %s of %s, %s run debits, %s admitted', r.tenant, r.run_id,
								  r.retry_events, r.max_retry_events, d.n, a.n), '; '), '')
  FROM agentretry.runs r
 CROSS JOIN LATERAL (SELECT count(*) AS n FROM agentretry.budget_ledger g
					  WHERE g.tenant = r.tenant AND g.scope = 'run' AND g.subject = r.run_id
						AND g.reason = 'debit') d
 CROSS JOIN LATERAL (SELECT count(*) AS n FROM admitted a
					  WHERE a.tenant = r.tenant AND a.run_id = r.run_id) a
 WHERE NOT (r.retry_events <= r.max_retry_events AND r.retry_events = d.n
			AND r.retry_events = a.n)}),
	'',
	'no run retried beyond its max_retry_events, and each counts exactly its admitted retries');
is( query(q{
SELECT count(*) FROM agentretry.runs r
 WHERE EXISTS (SELECT FROM agentretry.budget_ledger g
				WHERE g.tenant = r.tenant AND g.scope = 'run' AND g.subject = r.run_id
				  AND g.reason = 'denied_run')
   AND r.retry_events <> r.max_retry_events}),
	'0',
	'a run that denied a retry had used all its retry events');
cmp_ok(
	query(q{SELECT count(*) FROM agentretry.runs WHERE retry_events = max_retry_events}),
	'>', 0, 'some runs used all their retry events');

# ---------------------------------------------------------------------------
# The probe: with the workers gone, retries one at a time until each bucket
# without refill denies.  It must have admitted exactly its capacity.
# ---------------------------------------------------------------------------
my $probe = q{
DO $$
DECLARE
	c agentretry.claim_result;
	d agentretry.decision;
	i int := 0;
BEGIN
	PERFORM agentretry.start_run('%1$s-probe', '%1$s', max_retry_events => 1000);
	LOOP
		i := i + 1;
		SELECT * INTO c FROM agentretry.claim('%1$s-probe-' || i, '{}', '%2$s', tenant => '%1$s',
			run_id => '%1$s-probe', step => 'probe', owner => 'probe');
		SELECT * INTO d FROM agentretry.fail('%1$s-probe-' || i, c.lease_token, 'transient',
			'pre_execution', 'probe', tenant => '%1$s');
		EXIT WHEN d.action <> 'retry' OR i >= 100;
	END LOOP;
END
$$;
};
query(sprintf($probe, 'globex', 'charge'));    # the tool bucket of globex
query(sprintf($probe, 'acme', 'send'));        # the tenant bucket of acme
note 'after the probe: '
  . query(q{
SELECT string_agg(format('%s/%s/%s spent %s of %s in %s debits, stores %s', tenant, scope, subject,
						 spent, capacity, debits, stored), '; ' ORDER BY tenant, scope)
  FROM buckets WHERE refill_per_sec = 0});
is( query(q{
SELECT count(*) FROM agentretry.budget_ledger
 WHERE key LIKE '%-probe-%' AND reason LIKE 'denied%' AND NOT (reason = 'denied_tokens' AND retry_at IS NULL)}),
	'0', 'the probe was denied only by an empty bucket');
foreach my $b (grep { $_->[5] == 0 } @buckets)
{
	my ($tenant, $scope, $subject, $capacity, $stripes, $refill, $slack) = @$b;
	is( query(qq{
SELECT spent || ' ' || CASE WHEN abs(stored) <= $slack THEN 'empty' ELSE 'holds ' || stored END
  FROM buckets WHERE tenant = '$tenant' AND scope = '$scope' AND subject = '$subject'}),
		"$capacity empty",
		"$tenant/$scope/$subject ($capacity over $stripes stripes, no refill) admitted exactly "
		  . 'its capacity and holds nothing: no token stranded');
}
is(query($exact_ledger_sql), '',
	'after the probe, each bucket without refill holds exactly its capacity less the committed debits');
is( query(q{
SELECT count(*) FROM admitted a FULL JOIN debit_groups g USING (tenant, key, at)
 WHERE a.key IS NULL OR g.key IS NULL}),
	'0', 'after the probe, still one debit decision per admitted retry');

$node->stop;
note sprintf('total: %.1f s', time - $t_start);
done_testing();
