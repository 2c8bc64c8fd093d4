# Crash and fault test of runs: compensation (sagas) and versioned context.
#
# Forty runs of three steps (book, charge, reserve) are worked on by
# concurrent step workers, and then compensated (unbook, refund, unreserve)
# by compensation workers that drain claim_due.  Every side effect is
# written in pattern A: the effect row (bookings, refunds), the run's
# checkpoint and complete() commit together or not at all; most steps are
# claimed in that same transaction too.  Faults: workers stall holding a
# lease and are terminated, transactions roll back after the effect and
# the checkpoint, compensations fail transiently, and runs are compensated
# while a step is leased (its worker then dies, or completes late), while a
# transaction that completed a step has not committed yet, and while a
# retry of a step is being claimed, executed and completed in one
# transaction; two new steps of a run are checkpointed at once; a
# compensate() rolls back; and the server is shut down with mode immediate
# in the middle of the compensations.  The sweep then drives every saga to
# its end.
#
# Afterwards: every run is compensated; each committed effect has exactly
# one compensating effect, none is missing or doubled and none undoes an
# effect that never committed; each run's compensations ran in reverse
# order of its steps' completion, after all of them; the context versions
# of each run are 1..n without gaps, each written with the expected_version
# it was based on, context() returns the newest, and no rolled-back
# checkpoint is seen; no transaction ended in a deadlock.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $n_runs = 40;
my $n_step_workers = 4;
my $n_comp_workers = 3;
my $fallback_after = 20;    # seconds: then every run left is compensated
my $quiesce_timeout = 50;    # seconds: every run must be compensated by then

my $node = PostgreSQL::Test::Cluster->new('saga');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
log_statement = none
log_min_messages = warning
agentretry.trace_all = on
# a deadlock, should one happen, costs little time
deadlock_timeout = '100ms'
});
$node->start;

sub query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

query(q{
CREATE EXTENSION agentretry;

-- steps: two not idempotent, one idempotent; book and charge name their
-- compensate tool in the registry, reserve's is given to complete()
SELECT agentretry.register_tool('book', 'non_idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s', compensate_tool => 'unbook');
SELECT agentretry.register_tool('charge', 'idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s', compensate_tool => 'refund');
SELECT agentretry.register_tool('reserve', 'non_idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s');
-- compensate tools: one not idempotent, two idempotent
SELECT agentretry.register_tool('unbook', 'non_idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s');
SELECT agentretry.register_tool('refund', 'idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s');
SELECT agentretry.register_tool('unreserve', 'idempotent', 'write',
	max_attempts => 50, base_delay => '10 ms', max_delay => '50 ms',
	lease => '2 s');

-- What the driver does to each run, by flavour:
--	plain, pair: compensate it once k steps have succeeded (finishing it
--	  first when asked); the first two steps of a pair run are executed,
--	  in pattern A, by two workers that checkpoint at the same time;
--	inflight: compensate it while its third step is leased (then terminate
--	  that step's worker when kill is set, else the step completes late);
--	locked: compensate it while a transaction that completed its second
--	  step holds that step's row lock (compensate() skips it, the sweep
--	  catches it up);
--	retry: its second step fails once; compensate it while the retry,
--	  claimed in pattern A, is in its transaction (claim, effect,
--	  checkpoint and complete).
-- rollback_first: a compensate() that rolls back comes first.
CREATE TABLE plan (
	run_id text PRIMARY KEY,
	k int NOT NULL,
	flavour text NOT NULL,
	kill bool NOT NULL,
	finish bool NOT NULL,
	rollback_first bool NOT NULL
);
CREATE TABLE steps (
	key text PRIMARY KEY,
	run_id text NOT NULL,
	n int NOT NULL,
	tool text NOT NULL,
	args jsonb NOT NULL
);

-- the effects of steps and of compensations; no unique constraints on
-- purpose.  nonce names the checkpoint written with the effect.
CREATE TABLE bookings (
	id bigserial PRIMARY KEY,
	run_id text NOT NULL,
	step_key text NOT NULL,
	worker text NOT NULL,
	token bigint NOT NULL,
	nonce text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE refunds (
	seq bigserial PRIMARY KEY,
	run_id text NOT NULL,
	step_key text NOT NULL,
	comp_key text NOT NULL,
	worker text NOT NULL,
	token bigint NOT NULL,
	nonce text NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- checkpoints about to be rolled back, committed before their transaction
-- starts
CREATE TABLE doomed (nonce text PRIMARY KEY, worker text NOT NULL, key text NOT NULL);
-- checkpoints tried with a stale expected_version on purpose
CREATE TABLE stale_tries (key text NOT NULL, nonce text NOT NULL, refused bool NOT NULL);
-- AR005 met by checkpoints racing each other
CREATE TABLE conflicts (worker text NOT NULL, key text NOT NULL, n int NOT NULL);
-- claims refused with AR004 (a new step of a run no longer running)
CREATE TABLE refused_claims (worker text NOT NULL, key text NOT NULL);
-- steps of pair runs whose worker saw the other step's worker in its
-- transaction too
CREATE TABLE pairs_met (key text NOT NULL);
-- transactions of workers ended by a deadlock
CREATE TABLE deadlocks (worker text NOT NULL, key text NOT NULL, kind text NOT NULL);
-- steps in flight refused anything else with AR004 (their run had ended)
CREATE TABLE refused_steps (worker text NOT NULL, key text NOT NULL, kind text NOT NULL,
	message text NOT NULL);
-- calls refused with AR002 (the lease was taken over)
CREATE TABLE fenced (worker text NOT NULL, key text NOT NULL, token bigint NOT NULL, call text NOT NULL);
-- what the driver did
CREATE TABLE comp_log (run_id text NOT NULL, how text NOT NULL, killed bool NOT NULL,
	at timestamptz NOT NULL, scheduled int NOT NULL);
CREATE TABLE kills (app text NOT NULL, kind text NOT NULL);
CREATE TABLE rolled_back_compensations (run_id text NOT NULL, state_before text NOT NULL,
	state_after text NOT NULL, compensations int NOT NULL);
CREATE TABLE control (stop bool NOT NULL);
INSERT INTO control VALUES (false);

-- a fault chosen by key and fencing token, so a lease meets the same fault
-- in every run of the test
CREATE FUNCTION fault(k text, tok bigint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
	SELECT ('x' || substr(md5(k || ':' || tok), 1, 7))::bit(28)::int % 100
$$;

-- the newest version of the run's context, as the context says
CREATE FUNCTION ctx_version(r text) RETURNS int
LANGUAGE sql AS $$ SELECT coalesce((agentretry.context(r) ->> 'v')::int, 0) $$;

-- Writes the run's next context version based on the version read
-- (optimistic, expected_version); AR005 when another worker wrote first:
-- read again and retry.  Returns the version written.
CREATE FUNCTION write_checkpoint(r text, k text, worker text, nonce text, kind text,
	stale_try bool)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
	v int;
	written int;
	tries int := 0;
	refused bool;
BEGIN
	IF stale_try THEN
		v := ctx_version(r);
		IF v > 0 THEN
			refused := false;
			BEGIN
				PERFORM agentretry.checkpoint(r, k,
					jsonb_build_object('v', v, 'nonce', nonce || ':stale', 'worker', worker,
									   'key', k, 'kind', kind),
					expected_version => v - 1);
			EXCEPTION WHEN SQLSTATE 'AR005' THEN
				refused := true;
			END;
			INSERT INTO stale_tries VALUES (k, nonce, refused);
		END IF;
	END IF;
	LOOP
		tries := tries + 1;
		IF tries > 100 THEN
			RAISE EXCEPTION 'checkpoint of % kept conflicting', k;
		END IF;
		v := ctx_version(r);
		PERFORM pg_sleep(0.03);	-- room for another writer
		BEGIN
			written := agentretry.checkpoint(r, k,
				jsonb_build_object('v', v + 1, 'nonce', nonce, 'worker', worker,
								   'key', k, 'kind', kind),
				expected_version => v);
			EXIT;
		EXCEPTION WHEN SQLSTATE 'AR005' THEN
			NULL;
		END;
	END LOOP;
	IF tries > 1 THEN
		INSERT INTO conflicts VALUES (worker, k, tries - 1);
	END IF;
	RETURN written;
END
$$;
});

# ---------------------------------------------------------------------------
# Workers.  While it holds a lease it stalls on, a worker says so in
# application_name ("<worker> holding <key> <token> <kind>", kind stall,
# inflight, late, locked, retry or pair) for the driver to find it, and
# other workers to leave the key alone.
# ---------------------------------------------------------------------------
query(q{
CREATE PROCEDURE step_worker(worker text, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
	s record;
	pl record;
	c agentretry.claim_result;
	f int;
	kind text;
	nonce text;
	note text;
	msg text;
	other text;
	fenced_call text;
BEGIN
	PERFORM setseed(seed);
	LOOP
		EXIT WHEN (SELECT stop FROM control);
		-- a step to work on: a new one of a running run (the third only
		-- once the first two succeeded, the second of a retry run once
		-- the first did), a due retry, one to verify, an expired lease
		SELECT st.key, st.run_id, st.n, st.tool, st.args,
			   coalesce(o.attempts, 0) AS attempts, coalesce(o.lease_token, 0) AS token,
			   EXISTS (SELECT FROM deadlocks d WHERE d.key = st.key) AS had_deadlock INTO s
		  FROM steps st
		  JOIN plan p ON p.run_id = st.run_id
		  JOIN agentretry.runs r ON r.tenant = 'default' AND r.run_id = st.run_id
		  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = st.key
		 WHERE ((o.state IS NULL AND r.state = 'running'
				 AND (SELECT count(*) FROM agentretry.operations q
					   WHERE q.tenant = 'default' AND q.run_id = st.run_id
						 AND q.compensation_of IS NULL AND q.state = 'succeeded'
						 AND q.key <> st.key)
					 >= CASE WHEN st.n = 3 THEN 2
							 WHEN st.n = 2 AND p.flavour = 'retry' THEN 1 ELSE 0 END)
				-- now and then a step of a run that is no longer running,
				-- as a worker with a stale queue would: refused with AR004
				OR (o.state IS NULL AND r.state <> 'running' AND random() < 0.002)
				OR (o.state = 'retry_wait' AND o.next_attempt_at <= clock_timestamp())
				OR (o.state IN ('in_progress', 'verify')
					AND coalesce(o.lease_expires_at, '-infinity') < clock_timestamp()))
		 -- not one that another worker is claiming in its open transaction
		   AND NOT EXISTS (SELECT FROM pg_stat_activity a
							WHERE a.application_name LIKE '% holding ' || st.key || ' %')
		 -- two workers take the oldest runs first, so that steps of one
		 -- run are worked on, and checkpointed, concurrently
		 -- (first of all, the other half of a pair whose first half is
		 -- held, so that the pair meets whatever the other workers do)
		 ORDER BY CASE WHEN st.n < 3 AND EXISTS (SELECT FROM pg_stat_activity a
							WHERE a.application_name LIKE
								  format('%% holding %s-s%s %% pair', st.run_id, 3 - st.n))
					   THEN 0 ELSE 1 END,
				  CASE WHEN worker IN ('s1', 's2') THEN st.run_id END, random()
		 LIMIT 1;
		IF NOT FOUND THEN
			COMMIT;
			PERFORM pg_sleep(0.02);
			CONTINUE;
		END IF;
		SELECT * INTO pl FROM plan WHERE run_id = s.run_id;

		-- the fault of the lease about to be issued (the next token)
		f := fault(s.key, s.token + 1);
		kind := CASE WHEN pl.flavour = 'inflight' AND s.n = 3 AND s.attempts = 0 THEN 'inflight'
					 WHEN pl.flavour = 'locked' AND s.n = 2 AND s.attempts = 0 THEN 'locked'
					 WHEN pl.flavour = 'retry' AND s.n = 2 AND s.attempts = 0 THEN 'retryfail'
					 WHEN pl.flavour = 'retry' AND s.n = 2 AND s.attempts = 1 THEN 'retry'
					 WHEN pl.flavour = 'pair' AND s.n < 3 AND s.attempts = 0
						  AND NOT s.had_deadlock THEN 'pair'
					 WHEN f < 15 THEN 'stall'
					 WHEN f < 25 THEN 'rollback'
					 ELSE 'normal' END;
		nonce := format('%s/%s/%s/%s', worker, s.key, s.token + 1, clock_timestamp());
		note := NULL;

		IF kind IN ('normal', 'retry', 'pair') THEN
			-- pattern A: claim, effect, checkpoint and complete in one
			-- transaction
			BEGIN
				SELECT * INTO c FROM agentretry.claim(s.key, s.args, s.tool,
					run_id => s.run_id, step => s.key, owner => worker);
				IF c.outcome = 'execute' THEN
					nonce := format('%s/%s/%s/%s', worker, s.key, c.lease_token, clock_timestamp());
					IF kind = 'retry' THEN
						-- the retry of a step runs while its run is compensated
						-- (the driver does it on seeing this, at most 1.2 s)
						PERFORM set_config('application_name',
							format('%s holding %s %s retry', worker, s.key, c.lease_token), false);
						FOR i IN 1 .. 60 LOOP
							EXIT WHEN (SELECT r.state FROM agentretry.runs r
										WHERE r.tenant = 'default' AND r.run_id = s.run_id) <> 'running';
							PERFORM pg_sleep(0.02);
						END LOOP;
					ELSIF kind = 'pair' THEN
						-- the run's first two steps checkpoint at the same time
						PERFORM set_config('application_name',
							format('%s holding %s %s pair', worker, s.key, c.lease_token), false);
						other := format('%% holding %s-s%s %% pair', s.run_id, 3 - s.n);
						FOR i IN 1 .. 75 LOOP
							IF EXISTS (SELECT FROM pg_stat_activity a
										WHERE a.application_name LIKE other) THEN
								INSERT INTO pairs_met VALUES (s.key);
								EXIT;
							END IF;
							PERFORM pg_sleep(0.02);
						END LOOP;
						PERFORM pg_sleep(0.05);
					END IF;
					INSERT INTO bookings (run_id, step_key, worker, token, nonce)
					VALUES (s.run_id, s.key, worker, c.lease_token, nonce);
					IF kind = 'normal' AND f % 2 = 1 THEN
						PERFORM agentretry.complete(s.key, c.lease_token,
							jsonb_build_object('booking', nonce),
							compensate_tool => CASE WHEN s.n = 3 THEN 'unreserve' END,
							compensate_args => CASE WHEN s.n = 3
											   THEN jsonb_build_object('seat', s.key) END);
						PERFORM pg_sleep(0.01);
						PERFORM write_checkpoint(s.run_id, s.key, worker, nonce, 'step', f % 3 = 0);
					ELSE
						PERFORM write_checkpoint(s.run_id, s.key, worker, nonce, 'step', f % 3 = 0);
						PERFORM agentretry.complete(s.key, c.lease_token,
							jsonb_build_object('booking', nonce),
							compensate_tool => CASE WHEN s.n = 3 THEN 'unreserve' END,
							compensate_args => CASE WHEN s.n = 3
											   THEN jsonb_build_object('seat', s.key) END);
					END IF;
				ELSIF c.outcome = 'verify' THEN
					-- in pattern A the effect commits with complete(): look for it
					PERFORM agentretry.resolve(s.key, c.lease_token,
						EXISTS (SELECT FROM bookings b WHERE b.step_key = s.key),
						(SELECT jsonb_build_object('booking', min(b.nonce)) FROM bookings b
						  WHERE b.step_key = s.key));
				ELSIF c.outcome NOT IN ('busy', 'wait', 'replay', 'dead', 'cancelled') THEN
					RAISE EXCEPTION 'unexpected claim outcome % for %', c.outcome, s.key;
				END IF;
			EXCEPTION
				WHEN SQLSTATE 'AR004' THEN
					note := 'refused';
					msg := SQLERRM;
				WHEN SQLSTATE 'AR002' THEN
					note := 'fenced';
				WHEN deadlock_detected THEN
					note := 'deadlock';
			END;
			IF note = 'refused' AND msg LIKE 'cannot start a step%' THEN
				INSERT INTO refused_claims VALUES (worker, s.key);
			ELSIF note = 'refused' THEN
				INSERT INTO refused_steps VALUES (worker, s.key, kind, msg);
			ELSIF note = 'fenced' THEN
				INSERT INTO fenced VALUES (worker, s.key, c.lease_token, kind);
			ELSIF note = 'deadlock' THEN
				INSERT INTO deadlocks VALUES (worker, s.key, kind);
			END IF;
			PERFORM set_config('application_name', worker, false);
			COMMIT;
			IF note = 'deadlock' THEN
				PERFORM pg_sleep(0.05 + random() * 0.2);	-- back off
			END IF;
			CONTINUE;
		END IF;

		-- the other faults hold a committed lease
		note := NULL;
		BEGIN
			SELECT * INTO c FROM agentretry.claim(s.key, s.args, s.tool,
				run_id => s.run_id, step => s.key, owner => worker);
		EXCEPTION WHEN SQLSTATE 'AR004' THEN
			note := 'refused';
		END;
		IF note = 'refused' THEN
			INSERT INTO refused_claims VALUES (worker, s.key);
			COMMIT;
			CONTINUE;
		END IF;
		IF c.outcome IN ('busy', 'wait') THEN
			COMMIT;
			PERFORM pg_sleep(0.01);
			CONTINUE;
		ELSIF c.outcome IN ('replay', 'dead', 'cancelled') THEN
			COMMIT;
			CONTINUE;
		ELSIF c.outcome NOT IN ('execute', 'verify') THEN
			RAISE EXCEPTION 'unexpected claim outcome % for %', c.outcome, s.key;
		END IF;
		fenced_call := NULL;

		IF c.outcome = 'verify' THEN
			COMMIT;
			BEGIN
				PERFORM agentretry.resolve(s.key, c.lease_token,
					EXISTS (SELECT FROM bookings b WHERE b.step_key = s.key),
					(SELECT jsonb_build_object('booking', min(b.nonce)) FROM bookings b
					  WHERE b.step_key = s.key));
			EXCEPTION WHEN SQLSTATE 'AR002' THEN
				fenced_call := 'resolve';
			END;
			IF fenced_call IS NOT NULL THEN
				INSERT INTO fenced VALUES (worker, s.key, c.lease_token, fenced_call);
			END IF;
			COMMIT;
			CONTINUE;
		END IF;
		nonce := format('%s/%s/%s/%s', worker, s.key, c.lease_token, clock_timestamp());

		IF kind = 'inflight' THEN
			-- holds the lease until the driver has compensated the run
			-- (at most 1.2 s), then a moment longer: the driver may end it
			PERFORM set_config('application_name',
				format('%s holding %s %s inflight', worker, s.key, c.lease_token), false);
			COMMIT;
			FOR i IN 1 .. 60 LOOP
				EXIT WHEN (SELECT r.state FROM agentretry.runs r
							WHERE r.tenant = 'default' AND r.run_id = s.run_id) <> 'running';
				PERFORM pg_sleep(0.02);
				COMMIT;
			END LOOP;
			-- from here on the driver no longer takes it for a step in flight
			PERFORM set_config('application_name',
				format('%s holding %s %s late', worker, s.key, c.lease_token), false);
			PERFORM pg_sleep(0.3);
		ELSIF kind = 'stall' THEN
			PERFORM set_config('application_name',
				format('%s holding %s %s stall', worker, s.key, c.lease_token), false);
			COMMIT;
			PERFORM pg_sleep(0.8);
			IF f < 8 THEN
				-- gone without a word: the lease lapses
				PERFORM set_config('application_name', worker, false);
				COMMIT;
				CONTINUE;
			END IF;
		END IF;
		COMMIT;

		IF kind = 'retryfail' THEN
			-- the first attempt fails before acting
			BEGIN
				PERFORM agentretry.fail(s.key, c.lease_token, 'transient',
					'pre_execution', 'http_503');
			EXCEPTION WHEN SQLSTATE 'AR002' THEN
				fenced_call := 'fail';
			END;
		ELSIF kind = 'rollback' THEN
			-- the effect and the checkpoint are written, then rolled back
			INSERT INTO doomed VALUES (nonce, worker, s.key);
			COMMIT;
			BEGIN
				INSERT INTO bookings (run_id, step_key, worker, token, nonce)
				VALUES (s.run_id, s.key, worker, c.lease_token, nonce);
				PERFORM write_checkpoint(s.run_id, s.key, worker, nonce, 'step', false);
			EXCEPTION
				WHEN deadlock_detected THEN
					fenced_call := 'deadlock';
				WHEN SQLSTATE 'AR004' THEN
					fenced_call := 'refused';
					msg := SQLERRM;
			END;
			ROLLBACK;
			IF fenced_call = 'deadlock' THEN
				INSERT INTO deadlocks VALUES (worker, s.key, kind);
			ELSIF fenced_call = 'refused' THEN
				INSERT INTO refused_steps VALUES (worker, s.key, kind, msg);
			END IF;
			fenced_call := NULL;
			BEGIN
				IF f < 20 THEN
					PERFORM agentretry.fail(s.key, c.lease_token, 'transient',
						'pre_execution', 'rolled_back');
				ELSE
					PERFORM agentretry.release(s.key, c.lease_token);
				END IF;
			EXCEPTION WHEN SQLSTATE 'AR002' THEN
				fenced_call := 'fail';
			END;
		ELSE
			BEGIN
				INSERT INTO bookings (run_id, step_key, worker, token, nonce)
				VALUES (s.run_id, s.key, worker, c.lease_token, nonce);
				IF kind = 'locked' THEN
					-- complete first: the step's row stays locked until commit,
					-- until the driver has compensated the run (at most 1.2 s)
					PERFORM agentretry.complete(s.key, c.lease_token,
						jsonb_build_object('booking', nonce));
					PERFORM set_config('application_name',
						format('%s holding %s %s locked', worker, s.key, c.lease_token), false);
					FOR i IN 1 .. 60 LOOP
						EXIT WHEN (SELECT r.state FROM agentretry.runs r
									WHERE r.tenant = 'default' AND r.run_id = s.run_id) <> 'running';
						PERFORM pg_sleep(0.02);
					END LOOP;
					PERFORM write_checkpoint(s.run_id, s.key, worker, nonce, 'step', f % 3 = 0);
				ELSE
					PERFORM write_checkpoint(s.run_id, s.key, worker, nonce, 'step', f % 3 = 0);
					PERFORM agentretry.complete(s.key, c.lease_token,
						jsonb_build_object('booking', nonce),
						compensate_tool => CASE WHEN s.n = 3 THEN 'unreserve' END,
						compensate_args => CASE WHEN s.n = 3
										   THEN jsonb_build_object('seat', s.key) END);
				END IF;
			EXCEPTION
				WHEN SQLSTATE 'AR002' THEN
					fenced_call := 'complete';
				WHEN SQLSTATE 'AR004' THEN
					fenced_call := 'refused';
					msg := SQLERRM;
				WHEN deadlock_detected THEN
					fenced_call := 'deadlock';
			END;
		END IF;
		IF fenced_call = 'deadlock' THEN
			INSERT INTO deadlocks VALUES (worker, s.key, kind);
		ELSIF fenced_call = 'refused' THEN
			INSERT INTO refused_steps VALUES (worker, s.key, kind, msg);
		ELSIF fenced_call IS NOT NULL THEN
			INSERT INTO fenced VALUES (worker, s.key, c.lease_token, fenced_call);
		END IF;
		PERFORM set_config('application_name', worker, false);
		COMMIT;
	END LOOP;
END
$$;

CREATE PROCEDURE comp_worker(worker text)
LANGUAGE plpgsql AS $$
DECLARE
	v record;
	d record;
	c agentretry.claim_result;
	f int;
	kind text;
	nonce text;
	step_key text;
	fenced_call text;
	msg text;
BEGIN
	LOOP
		EXIT WHEN (SELECT stop FROM control);
		fenced_call := NULL;

		-- a compensation to verify (its lease expired, its tool is not
		-- idempotent)
		SELECT o.key, o.args, o.tool, o.run_id, o.step INTO v
		  FROM agentretry.operations o
		 WHERE o.tenant = 'default' AND o.compensation_of IS NOT NULL AND o.state = 'verify'
		   AND coalesce(o.lease_expires_at, '-infinity') < clock_timestamp()
		 ORDER BY random() LIMIT 1;
		IF FOUND THEN
			SELECT * INTO c FROM agentretry.claim(v.key, v.args, v.tool,
				run_id => v.run_id, step => v.step, owner => worker);
			COMMIT;
			IF c.outcome = 'verify' THEN
				BEGIN
					PERFORM agentretry.resolve(v.key, c.lease_token,
						EXISTS (SELECT FROM refunds r WHERE r.comp_key = v.key),
						(SELECT jsonb_build_object('refund', min(r.nonce)) FROM refunds r
						  WHERE r.comp_key = v.key));
				EXCEPTION WHEN SQLSTATE 'AR002' THEN
					fenced_call := 'resolve';
				END;
				IF fenced_call IS NOT NULL THEN
					INSERT INTO fenced VALUES (worker, v.key, c.lease_token, fenced_call);
				END IF;
				COMMIT;
			END IF;
			CONTINUE;
		END IF;

		SELECT * INTO d FROM agentretry.claim_due(worker, 1,
			ARRAY['unbook', 'refund', 'unreserve']);
		IF NOT FOUND THEN
			COMMIT;
			PERFORM pg_sleep(0.02);
			CONTINUE;
		END IF;
		step_key := (SELECT o.compensation_of FROM agentretry.operations o
					  WHERE o.tenant = 'default' AND o.key = d.key);
		f := fault(d.key, d.lease_token);
		kind := CASE WHEN f < 12 THEN 'stall'
					 WHEN f < 20 THEN 'transient'
					 WHEN f < 28 THEN 'rollback'
					 ELSE 'normal' END;
		IF kind = 'stall' THEN
			PERFORM set_config('application_name',
				format('%s holding %s %s stall', worker, d.key, d.lease_token), false);
			COMMIT;
			PERFORM pg_sleep(0.8);
			IF f < 6 THEN
				PERFORM set_config('application_name', worker, false);
				COMMIT;
				CONTINUE;
			END IF;
		END IF;
		COMMIT;

		nonce := format('%s/%s/%s/%s', worker, d.key, d.lease_token, clock_timestamp());
		IF kind = 'transient' THEN
			BEGIN
				PERFORM agentretry.fail(d.key, d.lease_token, 'transient',
					'pre_execution', 'http_503');
			EXCEPTION WHEN SQLSTATE 'AR002' THEN
				fenced_call := 'fail';
			END;
		ELSIF kind = 'rollback' THEN
			INSERT INTO doomed VALUES (nonce, worker, d.key);
			COMMIT;
			INSERT INTO refunds (run_id, step_key, comp_key, worker, token, nonce)
			VALUES (d.run_id, step_key, d.key, worker, d.lease_token, nonce);
			PERFORM write_checkpoint(d.run_id, d.key, worker, nonce, 'compensation', false);
			ROLLBACK;
			BEGIN
				PERFORM agentretry.fail(d.key, d.lease_token, 'transient',
					'pre_execution', 'rolled_back');
			EXCEPTION WHEN SQLSTATE 'AR002' THEN
				fenced_call := 'fail';
			END;
		ELSE
			BEGIN
				INSERT INTO refunds (run_id, step_key, comp_key, worker, token, nonce)
				VALUES (d.run_id, step_key, d.key, worker, d.lease_token, nonce);
				PERFORM write_checkpoint(d.run_id, d.key, worker, nonce, 'compensation',
										 f % 3 = 0);
				PERFORM agentretry.complete(d.key, d.lease_token,
					jsonb_build_object('refund', nonce));
			EXCEPTION
				WHEN SQLSTATE 'AR002' THEN
					fenced_call := 'complete';
				WHEN SQLSTATE 'AR004' THEN
					fenced_call := 'refused';
					msg := SQLERRM;
				WHEN deadlock_detected THEN
					fenced_call := 'deadlock';
			END;
		END IF;
		IF fenced_call = 'deadlock' THEN
			INSERT INTO deadlocks VALUES (worker, d.key, kind);
		ELSIF fenced_call = 'refused' THEN
			INSERT INTO refused_steps VALUES (worker, d.key, kind, msg);
		ELSIF fenced_call IS NOT NULL THEN
			INSERT INTO fenced VALUES (worker, d.key, d.lease_token, fenced_call);
		END IF;
		PERFORM set_config('application_name', worker, false);
		COMMIT;
	END LOOP;
END
$$;

-- The driver's tick: terminate about half of the stalled lease holders,
-- and compensate the runs whose time has come.
CREATE PROCEDURE drive(fallback bool)
LANGUAGE plpgsql AS $$
DECLARE
	h record;
	p record;
BEGIN
	FOR h IN SELECT a.pid, a.application_name FROM pg_stat_activity a
			  WHERE a.application_name LIKE '% holding % stall' AND a.wait_event = 'PgSleep'
				AND fault(a.application_name, 0) % 2 = 0
	LOOP
		IF pg_terminate_backend(h.pid, 5000) THEN
			INSERT INTO kills VALUES (h.application_name, 'stall');
		END IF;
	END LOOP;
	COMMIT;

	FOR p IN SELECT pl.*, r.state,
				(SELECT count(*) FROM agentretry.operations o
				  WHERE o.tenant = 'default' AND o.run_id = pl.run_id
					AND o.compensation_of IS NULL AND o.state = 'succeeded') AS s,
				(SELECT o.state FROM agentretry.operations o
				  WHERE o.tenant = 'default'
					AND o.key = pl.run_id || CASE WHEN pl.flavour = 'inflight' THEN '-s3'
												  ELSE '-s2' END)
				  AS flight_state
			   FROM plan pl
			   JOIN agentretry.runs r ON r.tenant = 'default' AND r.run_id = pl.run_id
			  WHERE r.state IN ('running', 'succeeded')
			  ORDER BY pl.run_id
	LOOP
		IF p.flavour IN ('inflight', 'locked', 'retry') AND NOT fallback THEN
			SELECT a.pid, a.application_name INTO h FROM pg_stat_activity a
			 WHERE a.application_name LIKE
				format('%% holding %s-s%s %% %s', p.run_id,
					   CASE WHEN p.flavour = 'inflight' THEN 3 ELSE 2 END, p.flavour);
			IF FOUND THEN
				INSERT INTO comp_log VALUES (p.run_id, p.flavour, p.kill, clock_timestamp(),
					agentretry.compensate(p.run_id, reason => 'cancelled while a step runs'));
				COMMIT;
				IF p.kill THEN
					IF pg_terminate_backend(h.pid, 5000) THEN
						INSERT INTO kills VALUES (h.application_name, 'inflight');
					END IF;
					COMMIT;
				END IF;
				CONTINUE;
			END IF;
			-- the step was not caught in flight (a crash): undo the run
			-- once the step has ended
			CONTINUE WHEN p.flight_state IS NULL
				OR p.flight_state NOT IN ('succeeded', 'cancelled', 'dead');
		ELSIF p.s < p.k AND NOT fallback THEN
			CONTINUE;
		END IF;

		IF p.finish AND p.s = 3 AND p.state = 'running' THEN
			PERFORM agentretry.finish_run(p.run_id);
			COMMIT;
			p.state := 'succeeded';
		END IF;
		IF p.rollback_first THEN
			BEGIN
				PERFORM agentretry.compensate(p.run_id, reason => 'changed my mind');
				RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'roll back';
			EXCEPTION WHEN SQLSTATE 'P0001' THEN
				NULL;
			END;
			INSERT INTO rolled_back_compensations
			SELECT p.run_id, p.state, r.state,
				   (SELECT count(*) FROM agentretry.operations o
					 WHERE o.tenant = 'default' AND o.run_id = p.run_id
					   AND o.compensation_of IS NOT NULL)
			  FROM agentretry.runs r WHERE r.tenant = 'default' AND r.run_id = p.run_id;
		END IF;
		INSERT INTO comp_log VALUES (p.run_id, CASE WHEN fallback THEN 'fallback' ELSE 'plan' END,
			false, clock_timestamp(), agentretry.compensate(p.run_id, reason => 'cancelled'));
		COMMIT;
	END LOOP;
END
$$;
});

# The plan, from a fixed seed.
srand(4004);
my @plan_rows;
foreach my $i (1 .. $n_runs)
{
	my $run = sprintf('r%02d', $i);
	my $flavour =
		$i % 4 == 0 ? 'inflight'
	  : $i % 8 == 2 ? 'locked'
	  : $i % 8 == 6 ? 'retry'
	  : $i % 8 == 1 ? 'pair'
	  :               'plain';
	my $kill = $i % 8 == 0 ? 'true' : 'false';
	my $k = 1 + int(rand(3));
	my $finish = ($k == 3 && rand() < 0.5) ? 'true' : 'false';
	my $rollback_first = $i % 5 == 1 ? 'true' : 'false';
	push @plan_rows, "('$run', $k, '$flavour', $kill, $finish, $rollback_first)";
}
query('INSERT INTO plan VALUES ' . join(', ', @plan_rows));
query(q{
INSERT INTO steps
SELECT p.run_id || '-s' || n, p.run_id, n, (ARRAY['book', 'charge', 'reserve'])[n],
	   jsonb_build_object('run', p.run_id, 'step', n)
  FROM plan p CROSS JOIN generate_series(1, 3) n;
SELECT count(agentretry.start_run(run_id, max_retry_events => 1000)) FROM plan;
});

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
	  $name =~ /^s(\d+)/
	  ? "CALL step_worker('$name', 0.$1)"
	  : "CALL comp_worker('$name')";
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
	start_worker("s$_") for 1 .. $n_step_workers;
	start_worker("c$_") for 1 .. $n_comp_workers;
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

# Checkpoint invariants, by run: the versions are 1..n without gaps with
# n = runs.context_version, each version says it was written on top of the
# one before (its "v" is its number), context() returns the newest, and no
# rolled-back checkpoint is there.
my $context_violations_sql = q{
SELECT count(*) FROM agentretry.runs r
  LEFT JOIN LATERAL (
	SELECT count(*) AS n, min(version) AS lo, max(version) AS hi,
		   count(*) FILTER (WHERE (c.context ->> 'v')::int <> c.version) AS bad_v,
		   count(*) FILTER (WHERE c.context ->> 'nonce' IN (SELECT nonce FROM doomed)) AS doomed
	  FROM agentretry.run_context c
	 WHERE c.tenant = r.tenant AND c.run_id = r.run_id) x ON true
 WHERE r.tenant = 'default'
   AND NOT (x.n = r.context_version AND coalesce(x.lo, 1) = 1
			AND coalesce(x.hi, 0) = r.context_version AND x.bad_v = 0 AND x.doomed = 0
			AND agentretry.context(r.run_id) IS NOT DISTINCT FROM
				(SELECT c.context FROM agentretry.run_context c
				  WHERE c.tenant = r.tenant AND c.run_id = r.run_id
					AND c.version = r.context_version))};

# ---------------------------------------------------------------------------
# The workload: drive, sweep, crash once, until every run is compensated
# ---------------------------------------------------------------------------
my $t0 = time;
start_all_workers();

my $crashed = 0;
my @crash_errors;
my @crash_leases;
my $after_crash_context = '';
my $after_crash_runs = '';
my $fallback = 0;
my $ticks = 0;
my $status = '';
my @tick_errors;
while (1)
{
	reap_workers(1);
	$fallback = 1 if time - $t0 > $fallback_after;
	# the driver's and the sweep's errors are collected, not fatal
	foreach my $sql ('CALL drive(' . ($fallback ? 'true' : 'false') . ')',
		'SELECT agentretry.sweep()')
	{
		my ($out, $err, $timed_out) = ('', '', 0);
		$node->psql(
			'postgres', "SET lock_timeout = '5s';\n$sql",
			stdout => \$out,
			stderr => \$err,
			timeout => 30,
			timed_out => \$timed_out);
		push @tick_errors, "$sql: $err" if $err ne '';
		push @tick_errors, "$sql: timed out" if $timed_out;
	}
	$status = query(q{
SELECT count(*) FILTER (WHERE state = 'compensated') || ' '
	   || count(*) FILTER (WHERE state = 'compensating') || ' '
	   || (SELECT count(*) FROM refunds) || ' '
	   || (SELECT count(*) FROM pg_stat_activity
		    WHERE application_name ~ ' (inflight|late|locked|retry)$')
  FROM agentretry.runs WHERE tenant = 'default'});
	$ticks++;
	my ($compensated, $compensating, $refunds, $in_flight) = split / /, $status;
	last if $compensated == $n_runs;
	last if time - $t0 > $quiesce_timeout;

	# the crash spares the steps in flight that the driver compensates, so
	# that what becomes of them is known
	if (!$crashed
		&& $in_flight == 0
		&& (($refunds >= 30 && $compensating >= 3) || time - $t0 > 12))
	{
		note "crash at $status after " . sprintf('%.1f s', time - $t0);
		$node->stop('immediate');
		my $errors_before = @worker_errors;
		wait_workers();
		@crash_errors = @worker_errors[ $errors_before .. $#worker_errors ];
		$node->start;
		$crashed = 1;
		@crash_leases = split /\n/, query(q{
SELECT key || ' ' || state || ' ' || lease_token FROM agentretry.operations
 WHERE state IN ('in_progress', 'verify') AND lease_expires_at > clock_timestamp()
 ORDER BY key});
		$after_crash_context = query($context_violations_sql);
		$after_crash_runs = query(q{
SELECT count(*) FILTER (WHERE state = 'compensating') || ' '
	   || count(*) FILTER (WHERE state = 'compensated')
  FROM agentretry.runs WHERE tenant = 'default'});
		start_all_workers();
	}
	usleep(100_000);
}
my $workload_secs = time - $t0;
query('UPDATE control SET stop = true');
wait_workers();

note sprintf('workload: %.1f s, %d ticks, %d worker runs, fallback %s',
	$workload_secs, $ticks, $worker_runs, $fallback ? 'used' : 'not used');
note 'leases left by the crash: ' . join(', ', @crash_leases);
note "runs compensating/compensated right after the crash: $after_crash_runs";
note 'kills: ' . query(q{SELECT string_agg(kind || ' ' || app, ', ') FROM kills});
note 'driver: ' . query(q{SELECT string_agg(how || ' ' || n, ', ') FROM (SELECT how, count(*) n FROM comp_log GROUP BY how) x});
note 'claims refused with AR004: ' . query(q{SELECT count(*) FROM refused_claims});
note 'fenced calls: ' . query(q{SELECT count(*) FROM fenced});
note 'checkpoint races (AR005): ' . query(q{SELECT coalesce(sum(n), 0) FROM conflicts});
note 'step states: ' . query(q{
SELECT string_agg(s || ' ' || n, ', ') FROM (
	SELECT coalesce(o.state::text, 'never claimed') || coalesce('/' || o.reason, '') AS s, count(*) n
	  FROM steps st LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = st.key
	 GROUP BY 1 ORDER BY 1) x});

# ---------------------------------------------------------------------------
# The run of the test itself
# ---------------------------------------------------------------------------
cmp_ok($workload_secs, '<', $quiesce_timeout, 'every run was compensated in time');
is($crashed, 1, 'the server was shut down with mode immediate and restarted');
is(scalar(grep { /connection to server was lost/ } @crash_errors),
	$n_step_workers + $n_comp_workers,
	'every worker lost its connection in the crash');
my @unexpected = grep {
	/\b(ERROR|FATAL|PANIC)\b|error:/
	  && !/FATAL:  terminating connection due to (administrator command|immediate shutdown command)/
} @worker_errors;
is(join("\n", @unexpected), '', 'workers failed only by losing their connections');
is(join("\n", @tick_errors), '', 'compensate(), finish_run() and the sweep never failed');
is( query(q{SELECT coalesce(string_agg(kind || ' ' || key, ', ' ORDER BY key), '') FROM deadlocks}),
	'',
	'no worker\'s transaction ended in a deadlock');
is( query(q{
SELECT coalesce(string_agg(kind || ' ' || key || ': ' || message, E'\n' ORDER BY key), '')
  FROM refused_steps}),
	'',
	'no step or compensation in flight was refused because its run had ended meanwhile');
is(scalar(grep { /due to administrator command/ } @worker_errors),
	query(q{SELECT count(*) FROM kills}),
	'each terminated worker was told why');

# The faults were really injected.
is( query(q{
SELECT (SELECT count(*) FROM kills WHERE kind = 'stall' AND app NOT LIKE '%:compensate%') > 0,
	   (SELECT count(*) FROM kills WHERE kind = 'stall' AND app LIKE '%:compensate%') > 0,
	   (SELECT count(*) FROM kills WHERE kind = 'inflight') > 0,
	   (SELECT count(*) FROM comp_log WHERE how = 'inflight' AND NOT killed) > 0,
	   (SELECT count(*) FROM comp_log WHERE how = 'locked') > 0,
	   (SELECT count(*) FROM comp_log WHERE how = 'retry') > 0,
	   (SELECT count(*) FROM pairs_met) > 0,
	   (SELECT count(*) FROM refused_claims) > 0,
	   (SELECT count(*) FROM doomed WHERE key NOT LIKE '%:compensate') > 0,
	   (SELECT count(*) FROM doomed WHERE key LIKE '%:compensate') > 0,
	   (SELECT count(*) FROM agentretry.events WHERE kind = 'retry' AND code = 'http_503'
		   AND key LIKE '%:compensate') > 0,
	   (SELECT count(*) FROM agentretry.events WHERE code = 'lease_expired'
		   AND key LIKE '%:compensate') > 0,
	   (SELECT count(*) FROM agentretry.events WHERE code = 'lease_expired'
		   AND key NOT LIKE '%:compensate') > 0,
	   (SELECT count(*) FROM stale_tries) > 0,
	   (SELECT count(*) FROM rolled_back_compensations) > 0}),
	't|t|t|t|t|t|t|t|t|t|t|t|t|t|t',
	'stalled step and compensation workers and in-flight step workers were terminated, '
	  . 'runs were compensated with a step leased or locked, two new steps of a run were '
	  . 'checkpointed at once, new steps refused, effects rolled back, compensations failed '
	  . 'and expired');

# ---------------------------------------------------------------------------
# Runs and operations
# ---------------------------------------------------------------------------
is( query(q{
SELECT state, count(*) FROM agentretry.runs WHERE tenant = 'default' GROUP BY 1 ORDER BY 1}),
	"compensated|$n_runs",
	'every run is compensated');
is( query(q{
SELECT count(*) FROM agentretry.run_status s
 WHERE s.tenant = 'default'
   AND NOT (s.compensations_pending = 0 AND s.compensations_dead = 0
			AND s.in_progress = 0 AND s.retry_wait = 0 AND s.verify = 0
			AND s.compensations_done = (SELECT count(*) FROM refunds f WHERE f.run_id = s.run_id))}),
	'0',
	'run_status: nothing pending, open or dead; compensations done = compensation effects');
is( query(q{
SELECT coalesce(string_agg(DISTINCT o.state || '/' || coalesce(o.reason, ''), ', '), '')
  FROM agentretry.operations o
 WHERE o.tenant = 'default' AND o.compensation_of IS NULL
   AND NOT (o.state = 'succeeded' OR (o.state = 'cancelled' AND o.reason = 'compensating'))}),
	'',
	'every step that was started succeeded or was cancelled because its run was compensated');
is( query(q{
SELECT count(*) FROM agentretry.runs r
 WHERE r.tenant = 'default'
   AND (SELECT count(*) FROM agentretry.events e
		 WHERE e.tenant = r.tenant AND e.run_id = r.run_id AND e.key IS NULL
		   AND e.kind = 'compensated') <> 1}),
	'0',
	'each run was reported compensated exactly once');
is( query(q{SELECT count(*) FROM agentretry.events WHERE kind = 'needs_review'}),
	'0', 'no run ever needed review');
is( query(q{
SELECT count(*) FROM refused_claims f
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = f.key}),
	'0',
	'a claim of a new step of a run no longer running, refused with AR004, stored nothing');
is( query(q{
SELECT count(*) FROM rolled_back_compensations
 WHERE state_after <> state_before OR compensations <> 0}),
	'0',
	'a compensate() that rolled back left the run as it was, with no compensation');

# ---------------------------------------------------------------------------
# Effects: exactly once, and undone exactly once
# ---------------------------------------------------------------------------
is( query(q{
SELECT count(*) FROM (SELECT step_key FROM bookings GROUP BY step_key HAVING count(*) > 1) d}),
	'0', 'no step has more than one effect');
is( query(q{
SELECT count(*) FROM steps st
  LEFT JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = st.key
  LEFT JOIN bookings b ON b.step_key = st.key
 WHERE coalesce(o.state = 'succeeded', false) <> (b.step_key IS NOT NULL)
	OR (b.step_key IS NOT NULL AND b.token <> o.lease_token)}),
	'0',
	'a step has an effect exactly when it succeeded, made under the lease that completed it');
is( query(q{
SELECT count(*) FROM agentretry.operations o
  LEFT JOIN agentretry.operations c ON c.tenant = o.tenant AND c.compensation_of = o.key
 WHERE o.tenant = 'default' AND o.compensation_of IS NULL
   AND (o.state = 'succeeded') IS DISTINCT FROM (c.key IS NOT NULL)}),
	'0',
	'every succeeded step, and no other, has a compensation');
is( query(q{
SELECT count(*) FROM agentretry.operations c
 WHERE c.tenant = 'default' AND c.compensation_of IS NOT NULL
   AND NOT (c.state = 'succeeded' AND c.key = c.compensation_of || ':compensate')}),
	'0',
	'every compensation succeeded');
is( query(q{
SELECT count(*) FROM (SELECT step_key FROM refunds GROUP BY step_key HAVING count(*) > 1) d}),
	'0', 'no step was undone twice');
is( query(q{
SELECT count(*) FROM bookings b FULL JOIN refunds f ON f.step_key = b.step_key
 WHERE b.step_key IS NULL OR f.step_key IS NULL}),
	'0',
	'each committed effect has exactly one compensating effect, and no compensating effect '
	  . 'undoes an effect that never committed');
is( query(q{
SELECT count(*) FROM refunds f
  LEFT JOIN agentretry.operations c ON c.tenant = 'default' AND c.key = f.comp_key
 WHERE c.key IS NULL OR c.state <> 'succeeded' OR c.lease_token <> f.token
	OR c.compensation_of <> f.step_key OR c.run_id <> f.run_id}),
	'0',
	'each compensating effect was made under the lease that completed its compensation');

# Reverse order: the n-th compensating effect of a run undoes the step that
# completed n-th last, and the first came after the last completion.
is( query(q{
WITH s AS (
	SELECT o.run_id, o.key, row_number() OVER (PARTITION BY o.run_id
											   ORDER BY o.completed_at DESC, o.key DESC) AS pos
	  FROM agentretry.operations o
	 WHERE o.tenant = 'default' AND o.compensation_of IS NULL AND o.state = 'succeeded'),
c AS (
	SELECT f.run_id, f.step_key AS key, row_number() OVER (PARTITION BY f.run_id ORDER BY f.seq) AS pos
	  FROM refunds f)
SELECT count(*) FROM s FULL JOIN c ON c.run_id = s.run_id AND c.pos = s.pos
 WHERE s.key IS DISTINCT FROM c.key}),
	'0',
	'each run\'s compensations happened in reverse order of its steps\' completion');
is( query(q{
SELECT count(*) FROM refunds f
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.run_id = f.run_id
 WHERE o.compensation_of IS NULL AND o.state = 'succeeded' AND o.completed_at >= f.at}),
	'0',
	'every compensating effect came after the completion of every step of its run');
is( query(q{
SELECT count(*) FROM refunds f
  JOIN refunds g ON g.run_id = f.run_id AND g.seq > f.seq
  JOIN agentretry.operations c ON c.tenant = 'default' AND c.key = f.comp_key
 WHERE g.at <= c.completed_at}),
	'0',
	'a run\'s next compensation started only after the one before it completed');

# Runs compensated while their third step was leased: the step's worker
# died (its lease expired, the step was verified not executed and
# cancelled) or completed late (its compensation ran first).
is( query(q{
SELECT count(*) FROM comp_log l
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = l.run_id || '-s3'
 WHERE l.how = 'inflight' AND l.killed
   AND NOT (o.state = 'cancelled' AND o.reason = 'compensating'
			AND NOT EXISTS (SELECT FROM bookings b WHERE b.step_key = o.key)
			AND EXISTS (SELECT FROM agentretry.events e
						 WHERE e.tenant = 'default' AND e.key = o.key AND e.kind = 'verify'
						   AND e.code = 'lease_expired'))}),
	'0',
	'a step whose worker died while its run was being compensated was verified and cancelled');
is( query(q{
SELECT count(*) FROM comp_log l
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = l.run_id || '-s3'
 WHERE l.how = 'inflight' AND NOT l.killed AND o.state = 'succeeded' AND o.completed_at > l.at
   AND (SELECT f.step_key FROM refunds f WHERE f.run_id = l.run_id ORDER BY f.seq LIMIT 1) = o.key}),
	query(q{SELECT count(*) FROM comp_log WHERE how = 'inflight' AND NOT killed}),
	'a step that completed after its run was compensated was undone, and first');
is( query(q{
SELECT count(*) FROM comp_log l
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = l.run_id || '-s2'
 WHERE l.how = 'locked'
   AND NOT (o.state = 'succeeded' AND o.completed_at < l.at
			AND EXISTS (SELECT FROM refunds f WHERE f.step_key = o.key))}),
	'0',
	'a step completed before its run was compensated, but committed after, was undone');
is( query(q{
SELECT count(*) FROM comp_log l
  JOIN agentretry.operations o ON o.tenant = 'default' AND o.key = l.run_id || '-s2'
 WHERE l.how = 'retry' AND o.state = 'succeeded' AND o.completed_at > l.at
   AND (SELECT f.step_key FROM refunds f WHERE f.run_id = l.run_id ORDER BY f.seq LIMIT 1) = o.key}),
	query(q{SELECT count(*) FROM comp_log WHERE how = 'retry'}),
	'a retry claimed in pattern A before its run was compensated, and completed after, '
	  . 'was undone first');

# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
is($after_crash_context, '0',
	'right after the crash: context versions 1..n without gaps, each on top of the one before, '
	  . 'context() the newest, no rolled-back checkpoint');
is(query($context_violations_sql), '0',
	'in the end: context versions 1..n without gaps, each on top of the one before, '
	  . 'context() the newest, no rolled-back checkpoint');
is( query(q{
SELECT count(*) FROM agentretry.run_context c
 WHERE c.tenant = 'default'
   AND agentretry.context(c.run_id, version => c.version) IS DISTINCT FROM c.context}),
	'0',
	'context(run, version) returns each stored version');
is( query(q{
SELECT count(*) FROM (
	SELECT nonce FROM bookings UNION ALL SELECT nonce FROM refunds) e
  FULL JOIN agentretry.run_context c ON c.tenant = 'default' AND c.context ->> 'nonce' = e.nonce
 WHERE e.nonce IS NULL OR c.version IS NULL
	OR c.step <> coalesce((SELECT b.step_key FROM bookings b WHERE b.nonce = e.nonce),
						  (SELECT f.comp_key FROM refunds f WHERE f.nonce = e.nonce))}),
	'0',
	'every checkpoint committed with exactly one effect and every effect with one checkpoint');
is( query(q{
SELECT count(*) FROM agentretry.runs r
 WHERE r.tenant = 'default'
   AND NOT ((SELECT count(DISTINCT c.context ->> 'worker') FILTER (WHERE c.context ->> 'kind' = 'step')
			   FROM agentretry.run_context c WHERE c.tenant = r.tenant AND c.run_id = r.run_id) >= 1
		AND (SELECT count(DISTINCT c.context ->> 'worker') FILTER (WHERE c.context ->> 'kind' = 'compensation')
			   FROM agentretry.run_context c WHERE c.tenant = r.tenant AND c.run_id = r.run_id) >= 1)}),
	'0',
	'the context of every run was written by several workers, step and compensation workers');
is( query(q{SELECT count(*) FILTER (WHERE NOT refused) FROM stale_tries}),
	'0',
	'every checkpoint with a stale expected_version was refused with AR005');
is( query(q{
SELECT count(*) FROM agentretry.run_context c WHERE c.context ->> 'nonce' LIKE '%:stale'}),
	'0',
	'and stored nothing');

$node->stop;
note sprintf('total: %.1f s', time - $t0);
done_testing();
