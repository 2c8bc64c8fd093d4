--
-- bad input: a catalogue, function by function, of every kind of bad
-- argument each public function of schema agentretry takes, with the
-- documented SQLSTATE and message of its refusal, and proof that a refused
-- call changes nothing
--
-- Kinds of bad input: NULL for a required argument; keys, run ids, steps
-- and receipts of 0 and 513 bytes; names (tool, tenant, owner, code,
-- source, compensate_tool, ...) of 0 and 129 bytes; labels that are not in
-- an enum (22P02); absurd intervals (negative, zero where not allowed,
-- '100000 years'; 'infinity' is no interval in PostgreSQL 15: 22007);
-- NaN, Infinity, negative and huge numbers; batch sizes out of range;
-- lease tokens 0, negative and above the newest; payloads over
-- agentretry.max_payload (54000: the limit is lowered to 1024 bytes for
-- the catalogue) and jsonb nested 20 000 levels deep (works or 54001,
-- never a crash).  Argument checks come before anything is read: a bad
-- argument is reported even where the key or run does not exist.
--
-- Everything happens in tenant bi (tools bi_*), which is removed at the
-- end.  Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_bi_admin;
RESET client_min_messages;
CREATE ROLE regress_ar_bi_admin IN ROLE agentretry_admin;

-- data_digest() leaves out anomalies, budgets, budget stripes, tenant
-- policies, token floors and stats counts: bi_digest() adds them
CREATE FUNCTION bi_digest() RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT md5(public.data_digest() || E'\f' ||
		coalesce((SELECT string_agg(a::text, E'\n' ORDER BY a.tenant, a.id)
				  FROM agentretry.anomalies a), '') || E'\f' ||
		coalesce((SELECT string_agg(b::text, E'\n' ORDER BY b.tenant, b.scope, b.subject)
				  FROM agentretry.budgets b), '') || E'\f' ||
		coalesce((SELECT string_agg(s::text, E'\n' ORDER BY s.tenant, s.scope, s.subject, s.stripe)
				  FROM agentretry.budget_stripes s), '') || E'\f' ||
		coalesce((SELECT string_agg(p::text, E'\n' ORDER BY p.tenant, p.tool)
				  FROM agentretry.tenant_policies p), '') || E'\f' ||
		coalesce((SELECT string_agg(f::text, E'\n' ORDER BY f.tenant, f.id)
				  FROM agentretry.token_floors f), '') || E'\f' ||
		coalesce((SELECT string_agg(c::text, E'\n' ORDER BY c.tenant, c.bucket, c.tool, c.backend)
				  FROM agentretry.stats_counts c), ''))
$$;

-- bi_try(expr): SELECT expr, and say how it ended ('ok: ' and its value,
-- or SQLSTATE: message / detail) and whether anything stored changed.
-- What an accepted call wrote is undone, so that every call of the
-- catalogue meets the same data.  With state_only, the SQLSTATE alone
-- ('ok' when it worked), for refusals whose message is not fixed.
CREATE FUNCTION bi_try(expr text, state_only boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := bi_digest();
	res text;
	changed boolean;
	state text;
	msg text;
	det text;
BEGIN
	BEGIN
		EXECUTE 'SELECT ' || expr INTO res;
		res := CASE WHEN state_only THEN 'ok' ELSE 'ok: ' || coalesce(res, 'NULL') END;
		changed := bi_digest() <> before;
		RAISE EXCEPTION USING ERRCODE = 'BI001', MESSAGE = 'undo';
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL;
		IF state <> 'BI001' THEN
			res := CASE WHEN state_only THEN state
					    ELSE state || ': ' || msg || CASE WHEN det <> '' THEN ' / ' || det ELSE '' END END;
			changed := bi_digest() <> before;
		END IF;
	END;
	RETURN res || CASE WHEN changed THEN ' (DATA CHANGED)' ELSE ' (unchanged)' END;
END
$$;

-- bi_undo(expr): SELECT expr and undo whatever it wrote; 'ok: ' and its
-- value, or SQLSTATE: message.  For inputs that are (or may be) accepted.
CREATE FUNCTION bi_undo(expr text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	res text;
	state text;
	msg text;
BEGIN
	BEGIN
		EXECUTE 'SELECT ' || expr INTO res;
		res := 'ok: ' || coalesce(res, 'NULL');
		RAISE EXCEPTION USING ERRCODE = 'BI001', MESSAGE = 'undo';
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
		IF state <> 'BI001' THEN
			res := state || ': ' || msg;
		END IF;
	END;
	RETURN res;
END
$$;

-- the counts of the tables data_digest() does not fingerprint, and of
-- those it does, to compare at the end
CREATE VIEW bi_counts AS
SELECT 'anomalies' AS tbl, count(*) AS n FROM agentretry.anomalies
UNION ALL SELECT 'stats_counts', count(*) FROM agentretry.stats_counts
UNION ALL SELECT 'budgets', count(*) FROM agentretry.budgets
UNION ALL SELECT 'budget_stripes', count(*) FROM agentretry.budget_stripes
UNION ALL SELECT 'budget_ledger', count(*) FROM agentretry.budget_ledger
UNION ALL SELECT 'runs', count(*) FROM agentretry.runs
UNION ALL SELECT 'run_context', count(*) FROM agentretry.run_context
UNION ALL SELECT 'tenant_policies', count(*) FROM agentretry.tenant_policies
UNION ALL SELECT 'tools', count(*) FROM agentretry.tools
UNION ALL SELECT 'token_floors', count(*) FROM agentretry.token_floors
UNION ALL SELECT 'operations', count(*) FROM agentretry.operations
UNION ALL SELECT 'events', count(*) FROM agentretry.events;

--
-- the operations, run, anomaly, budget and policy the calls below aim at
--
SELECT name FROM agentretry.register_tool('bi_nonidem', 'non_idempotent', 'write');
SELECT name FROM agentretry.register_tool('bi_gated', 'idempotent', 'write',
	requires_approval => true);
-- bi-live: leased, token 1
SELECT outcome, lease_token FROM agentretry.claim('bi-live', '{}', tenant => 'bi');
-- bi-verify: awaiting verification, verification lease token 2
SELECT outcome FROM agentretry.claim('bi-verify', '{}', 'bi_nonidem', 'bi');
SELECT action FROM agentretry.fail('bi-verify', 1, 'ambiguous', tenant => 'bi');
SELECT outcome, lease_token FROM agentretry.claim('bi-verify', '{}', 'bi_nonidem', 'bi');
-- bi-done: succeeded; bi-dead: dead-lettered; bi-appr: awaiting approval
SELECT outcome FROM agentretry.claim('bi-done', '{}', tenant => 'bi');
SELECT agentretry.complete('bi-done', 1, '{}', 'bi');
SELECT outcome FROM agentretry.claim('bi-dead', '{}', tenant => 'bi');
SELECT action FROM agentretry.fail('bi-dead', 1, 'permanent', tenant => 'bi');
SELECT outcome FROM agentretry.claim('bi-appr', '{}', 'bi_gated', 'bi');
-- a running run with one version of context
SELECT agentretry.start_run('bi-run', 'bi');
SELECT agentretry.checkpoint('bi-run', 'first', '{"n": 1}', 'bi');
-- an anomaly (evidence for an unknown key), a budget, a tenant policy
SELECT agentretry.observe('bi-orphan', 'r-bi', 'bi', 'webhook');
SELECT scope, subject, capacity FROM agentretry.set_budget('bi', 'tenant', 'bi', capacity => 10);
SELECT tenant, tool, max_attempts FROM agentretry.set_tenant_policy('bi', 'bi_nonidem', max_attempts => 3);
SELECT key, state, attempts, lease_token FROM agentretry.operations
WHERE tenant = 'bi' ORDER BY key;
-- nothing of this session's counts is left to write; what is stored now
-- must still be stored, unchanged, at the end
SELECT agentretry.flush_stats() >= 0 AS flushed;
CREATE TEMP TABLE bi_before AS
SELECT bi_digest() AS digest, (SELECT jsonb_object_agg(tbl, n) FROM bi_counts) AS counts;

-- counting for stats() is off from here on: an accepted call (undone)
-- would otherwise leave counts in memory for a later call to write
SET agentretry.track_stats = off;
SET agentretry.max_payload = 1024;

--
-- claim(key, args, tool, tenant, run_id, step, lease, owner)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.claim(NULL, '{}', tenant => 'bi')$$,
	$$agentretry.claim('bi-new', NULL, tenant => 'bi')$$,
	$$agentretry.claim('', '{}', tenant => 'bi')$$,
	$$agentretry.claim(repeat('k', 513), '{}', tenant => 'bi')$$,
	$$agentretry.claim('bi-new:compensate', '{}', tenant => 'bi')$$,
	$$agentretry.claim('bi-new', '{}', tool => '', tenant => 'bi')$$,
	$$agentretry.claim('bi-new', '{}', tool => repeat('t', 129), tenant => 'bi')$$,
	$$agentretry.claim('bi-new', '{}', tool => '*', tenant => 'bi')$$,
	$$agentretry.claim('bi-new', '{}', tenant => '')$$,
	$$agentretry.claim('bi-new', '{}', tenant => repeat('t', 129))$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', run_id => '')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', run_id => repeat('r', 513))$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', step => '')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', step => repeat('s', 513))$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', lease => '-1 second')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', lease => '0')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', lease => '100000 years')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', lease => 'infinity')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', owner => '')$$,
	$$agentretry.claim('bi-new', '{}', tenant => 'bi', owner => repeat('o', 129))$$,
	$$agentretry.claim('bi-new', to_jsonb(repeat('x', 2000)), tenant => 'bi')$$,
	$$agentretry.claim('bi-live', '{"other": 1}', tenant => 'bi')$$,
	-- a NULL tool is the default tool ('default'): the live lease answers busy
	$$(agentretry.claim('bi-live', '{}', tool => NULL, tenant => 'bi')).outcome$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- complete(key, lease_token, result, tenant, compensate_tool,
-- compensate_args, receipt)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.complete(NULL, 1, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', NULL, tenant => 'bi')$$,
	$$agentretry.complete('', 1, tenant => 'bi')$$,
	$$agentretry.complete(repeat('k', 513), 1, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 1, tenant => '')$$,
	$$agentretry.complete('bi-live', 1, tenant => repeat('t', 129))$$,
	$$agentretry.complete('bi-live', 1, tenant => 'bi', compensate_tool => '')$$,
	$$agentretry.complete('bi-live', 1, tenant => 'bi', compensate_tool => repeat('c', 129))$$,
	$$agentretry.complete('bi-live', 1, tenant => 'bi', receipt => '')$$,
	$$agentretry.complete('bi-live', 1, tenant => 'bi', receipt => repeat('r', 513))$$,
	$$agentretry.complete('bi-live', 0, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', -1, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', -9223372036854775808, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 2, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 9223372036854775807, tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 1, to_jsonb(repeat('x', 2000)), 'bi')$$,
	$$agentretry.complete('bi-live', 1, NULL, 'bi', 'bi_revert', to_jsonb(repeat('x', 2000)))$$,
	$$agentretry.complete('bi-none', 1, tenant => 'bi')$$,
	$$agentretry.complete('bi-none', 1, tenant => 'bi', receipt => '')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a compensate_tool is a tool name, and "*" is reserved (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$agentretry.complete('bi-live', 1, tenant => 'bi', compensate_tool => '*')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- fail(key, lease_token, failure, phase, code, message, retry_after, tenant)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.fail(NULL, 1, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', NULL, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, NULL, tenant => 'bi')$$,
	$$agentretry.fail('', 1, 'transient', tenant => 'bi')$$,
	$$agentretry.fail(repeat('k', 513), 1, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'sometimes', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', 'afterwards', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', code => '', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', code => repeat('c', 129), tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', retry_after => '-1 second', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', retry_after => '-100000 years', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', retry_after => 'infinity', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', tenant => '')$$,
	$$agentretry.fail('bi-live', 1, 'transient', tenant => repeat('t', 129))$$,
	$$agentretry.fail('bi-live', 0, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', -1, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 2, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 9223372036854775807, 'transient', tenant => 'bi')$$,
	$$agentretry.fail('bi-live', 1, 'transient', message => repeat('m', 2000), tenant => 'bi')$$,
	$$agentretry.fail('bi-none', 1, 'transient', code => '', tenant => 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a retry_after of 100000 years is a (very) late retry, not an error
SELECT bi_undo($$(SELECT action || ' ' || reason || ' ' || (retry_at > now() + interval '1000 years')
	FROM agentretry.fail('bi-live', 1, 'transient', 'pre_execution', retry_after => '100000 years', tenant => 'bi'))$$)
	AS late_retry;

--
-- resolve(key, lease_token, executed, result, tenant, receipt)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.resolve(NULL, 2, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', NULL, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', 2, NULL, tenant => 'bi')$$,
	$$agentretry.resolve('', 2, true, tenant => 'bi')$$,
	$$agentretry.resolve(repeat('k', 513), 2, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', 2, true, tenant => '')$$,
	$$agentretry.resolve('bi-verify', 2, true, tenant => repeat('t', 129))$$,
	$$agentretry.resolve('bi-verify', 2, true, tenant => 'bi', receipt => '')$$,
	$$agentretry.resolve('bi-verify', 2, true, tenant => 'bi', receipt => repeat('r', 513))$$,
	$$agentretry.resolve('bi-verify', 0, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', -1, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', 3, true, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', 9223372036854775807, false, tenant => 'bi')$$,
	$$agentretry.resolve('bi-verify', 2, true, to_jsonb(repeat('x', 2000)), 'bi')$$,
	$$agentretry.resolve('bi-none', 1, true, tenant => 'bi', receipt => repeat('r', 513))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- heartbeat(key, lease_token, extend, tenant)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.heartbeat(NULL, 1, tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', NULL, tenant => 'bi')$$,
	$$agentretry.heartbeat('', 1, tenant => 'bi')$$,
	$$agentretry.heartbeat(repeat('k', 513), 1, tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 1, '-1 minute', tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 1, '0', tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 1, '100000 years', tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 1, 'infinity', tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 1, tenant => '')$$,
	$$agentretry.heartbeat('bi-live', 1, tenant => repeat('t', 129))$$,
	$$agentretry.heartbeat('bi-live', 0, tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', -1, tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-live', 2, tenant => 'bi')$$,
	$$agentretry.heartbeat('bi-none', 1, '0', tenant => 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- release(key, lease_token, tenant)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.release(NULL, 1, 'bi')$$,
	$$agentretry.release('bi-live', NULL, 'bi')$$,
	$$agentretry.release('', 1, 'bi')$$,
	$$agentretry.release(repeat('k', 513), 1, 'bi')$$,
	$$agentretry.release('bi-live', 1, '')$$,
	$$agentretry.release('bi-live', 1, repeat('t', 129))$$,
	$$agentretry.release('bi-live', 0, 'bi')$$,
	$$agentretry.release('bi-live', -1, 'bi')$$,
	$$agentretry.release('bi-live', 2, 'bi')$$,
	$$agentretry.release('bi-live', 9223372036854775807, 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- lookup(key, tenant)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$(agentretry.lookup(NULL, 'bi')).state$$,
	$$(agentretry.lookup('', 'bi')).state$$,
	$$(agentretry.lookup(repeat('k', 513), 'bi')).state$$,
	$$(agentretry.lookup('bi-live', '')).state$$,
	$$(agentretry.lookup('bi-live', repeat('t', 129))).state$$,
	$$(agentretry.lookup('bi-none', 'bi')).state$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- claim_due(owner, max, tools, tenant, lease): max 1 to 1000
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.claim_due('w', NULL, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', 0, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', -1, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', 1001, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', 2147483647, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', -2147483648, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('', tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due(repeat('o', 129), tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => ''))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => repeat('t', 129)))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tools => ARRAY['bi_nonidem', NULL], tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => 'bi', lease => '-1 second'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => 'bi', lease => '0'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => 'bi', lease => '100000 years'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tenant => 'bi', lease => 'infinity'))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- the names in the filter are tool names: 1 to 128 bytes (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.claim_due('w', tools => ARRAY[''], tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_due('w', tools => ARRAY[repeat('t', 129)], tenant => 'bi'))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- claim_verifications(owner, max, tools, tenant, lease): max 1 to 1000
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', NULL, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', 0, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', -1, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', 1001, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', 2147483647, tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('', tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications(repeat('o', 129), tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tenant => ''))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tenant => repeat('t', 129)))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tools => ARRAY[NULL::text], tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tenant => 'bi', lease => '-1 second'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tenant => 'bi', lease => '0'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tenant => 'bi', lease => '100000 years'))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- the names in the filter are tool names: 1 to 128 bytes (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tools => ARRAY[''], tenant => 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.claim_verifications('v', tools => ARRAY[repeat('t', 129)], tenant => 'bi'))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- sweep(max) and reconcile(max): max 1 to 100000
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.sweep(NULL)$$,
	$$agentretry.sweep(0)$$,
	$$agentretry.sweep(-1)$$,
	$$agentretry.sweep(100001)$$,
	$$agentretry.sweep(2147483647)$$,
	$$agentretry.sweep(-2147483648)$$,
	$$agentretry.reconcile(NULL)$$,
	$$agentretry.reconcile(0)$$,
	$$agentretry.reconcile(-1)$$,
	$$agentretry.reconcile(100001)$$,
	$$agentretry.reconcile(2147483647)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- observe(key, receipt, tenant, source, detail)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.observe(NULL, 'r', 'bi')$$,
	$$agentretry.observe('bi-live', NULL, 'bi')$$,
	$$agentretry.observe('', 'r', 'bi')$$,
	$$agentretry.observe(repeat('k', 513), 'r', 'bi')$$,
	$$agentretry.observe('bi-live', '', 'bi')$$,
	$$agentretry.observe('bi-live', repeat('r', 513), 'bi')$$,
	$$agentretry.observe('bi-live', 'r', '')$$,
	$$agentretry.observe('bi-live', 'r', repeat('t', 129))$$,
	$$agentretry.observe('bi-live', 'r', 'bi', '')$$,
	$$agentretry.observe('bi-live', 'r', 'bi', repeat('s', 129))$$,
	$$agentretry.observe('bi-live', 'r', 'bi', 'webhook', to_jsonb(repeat('x', 2000)))$$,
	$$agentretry.observe('bi-none', '', 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- acknowledge(id, note): AR003 for an id that is no anomaly's
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.acknowledge(NULL)$$,
	$$agentretry.acknowledge(NULL, 'note')$$,
	$$agentretry.acknowledge(0)$$,
	$$agentretry.acknowledge(-1)$$,
	$$agentretry.acknowledge(-9223372036854775808)$$,
	$$agentretry.acknowledge(9223372036854775807)$$,
	$$agentretry.acknowledge((SELECT id FROM agentretry.anomalies WHERE tenant = 'bi'), repeat('n', 2000))$$,
	$$agentretry.acknowledge(-1, repeat('n', 2000))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- requeue(key, tenant, reset_attempts)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.requeue(NULL, 'bi')$$,
	$$agentretry.requeue('bi-dead', 'bi', NULL)$$,
	$$agentretry.requeue('', 'bi')$$,
	$$agentretry.requeue(repeat('k', 513), 'bi')$$,
	$$agentretry.requeue('bi-dead', '')$$,
	$$agentretry.requeue('bi-dead', repeat('t', 129))$$,
	$$agentretry.requeue('bi-none', 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- cancel(key, tenant, reason)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.cancel(NULL, 'bi')$$,
	$$agentretry.cancel('', 'bi')$$,
	$$agentretry.cancel(repeat('k', 513), 'bi')$$,
	$$agentretry.cancel('bi-live', '')$$,
	$$agentretry.cancel('bi-live', repeat('t', 129))$$,
	$$agentretry.cancel('bi-live', 'bi', '')$$,
	$$agentretry.cancel('bi-live', 'bi', repeat('r', 513))$$,
	$$agentretry.cancel('bi-none', 'bi')$$,
	$$agentretry.cancel('bi-none', 'bi', '')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- approve(key, tenant, note) and reject(key, tenant, reason)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.approve(NULL, 'bi')$$,
	$$agentretry.approve('', 'bi')$$,
	$$agentretry.approve(repeat('k', 513), 'bi')$$,
	$$agentretry.approve('bi-appr', '')$$,
	$$agentretry.approve('bi-appr', repeat('t', 129))$$,
	$$agentretry.approve('bi-none', 'bi')$$,
	$$agentretry.approve('bi-appr', 'bi', repeat('n', 2000))$$,
	$$agentretry.reject(NULL, 'bi', 'no')$$,
	$$agentretry.reject('bi-appr', 'bi', NULL)$$,
	$$agentretry.reject('', 'bi', 'no')$$,
	$$agentretry.reject(repeat('k', 513), 'bi', 'no')$$,
	$$agentretry.reject('bi-appr', '', 'no')$$,
	$$agentretry.reject('bi-appr', repeat('t', 129), 'no')$$,
	$$agentretry.reject('bi-none', 'bi', 'no')$$,
	$$agentretry.reject('bi-appr', 'bi', repeat('n', 2000))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- start_run(run_id, tenant, workflow_version, max_retry_events,
-- correlation_id)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.start_run(NULL, 'bi')$$,
	$$agentretry.start_run('', 'bi')$$,
	$$agentretry.start_run(repeat('r', 513), 'bi')$$,
	$$agentretry.start_run('bi-run-new', '')$$,
	$$agentretry.start_run('bi-run-new', repeat('t', 129))$$,
	$$agentretry.start_run('bi-run-new', 'bi', workflow_version => '')$$,
	$$agentretry.start_run('bi-run-new', 'bi', workflow_version => repeat('v', 129))$$,
	$$agentretry.start_run('bi-run-new', 'bi', max_retry_events => -1)$$,
	$$agentretry.start_run('bi-run-new', 'bi', max_retry_events => -2147483648)$$,
	$$agentretry.start_run('bi-run-new', 'bi', correlation_id => '')$$,
	$$agentretry.start_run('bi-run-new', 'bi', correlation_id => repeat('c', 513))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- finish_run(run_id, tenant, succeeded)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.finish_run(NULL, 'bi')$$,
	$$agentretry.finish_run('bi-run', 'bi', NULL)$$,
	$$agentretry.finish_run('', 'bi')$$,
	$$agentretry.finish_run(repeat('r', 513), 'bi')$$,
	$$agentretry.finish_run('bi-run', '')$$,
	$$agentretry.finish_run('bi-run', repeat('t', 129))$$,
	$$agentretry.finish_run('bi-run-none', 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- checkpoint(run_id, step, context, tenant, expected_version)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.checkpoint(NULL, 's', '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run', NULL, '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run', 's', NULL, 'bi')$$,
	$$agentretry.checkpoint('', 's', '{}', 'bi')$$,
	$$agentretry.checkpoint(repeat('r', 513), 's', '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run', '', '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run', repeat('s', 513), '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run', 's', '{}', '')$$,
	$$agentretry.checkpoint('bi-run', 's', '{}', repeat('t', 129))$$,
	$$agentretry.checkpoint('bi-run', 's', '{}', 'bi', -1)$$,
	$$agentretry.checkpoint('bi-run', 's', '{}', 'bi', -2147483648)$$,
	$$agentretry.checkpoint('bi-run', 's', '{}', 'bi', 2147483647)$$,
	$$agentretry.checkpoint('bi-run', 's', to_jsonb(repeat('x', 2000)), 'bi')$$,
	$$agentretry.checkpoint('bi-run-none', 's', '{}', 'bi')$$,
	$$agentretry.checkpoint('bi-run-none', 's', '{}', 'bi', -1)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- context(run_id, tenant, version): version at least 1
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.context(NULL, 'bi')$$,
	$$agentretry.context('', 'bi')$$,
	$$agentretry.context(repeat('r', 513), 'bi')$$,
	$$agentretry.context('bi-run', '')$$,
	$$agentretry.context('bi-run', repeat('t', 129))$$,
	$$agentretry.context('bi-run', 'bi', 0)$$,
	$$agentretry.context('bi-run', 'bi', -1)$$,
	$$agentretry.context('bi-run', 'bi', -2147483648)$$,
	$$agentretry.context('bi-run', 'bi', 2147483647)$$,
	$$agentretry.context('bi-run-none', 'bi')$$,
	$$agentretry.context('bi-run-none', 'bi', 0)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- compensate(run_id, tenant, reason)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.compensate(NULL, 'bi')$$,
	$$agentretry.compensate('', 'bi')$$,
	$$agentretry.compensate(repeat('r', 513), 'bi')$$,
	$$agentretry.compensate('bi-run', '')$$,
	$$agentretry.compensate('bi-run', repeat('t', 129))$$,
	$$agentretry.compensate('bi-run', 'bi', repeat('n', 2000))$$,
	$$agentretry.compensate('bi-run-none', 'bi')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- register_tool(name, idempotency, side_effect, max_attempts, base_delay,
-- max_delay, multiplier, jitter, deadline, lease, ttl, compensate_tool,
-- requires_approval)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.register_tool(NULL, 'idempotent', 'read')$$,
	$$agentretry.register_tool('bi_t', NULL, 'read')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', NULL)$$,
	$$agentretry.register_tool('', 'idempotent', 'read')$$,
	$$agentretry.register_tool(repeat('t', 129), 'idempotent', 'read')$$,
	$$agentretry.register_tool('*', 'idempotent', 'read')$$,
	$$agentretry.register_tool('bi_t', 'maybe', 'read')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'harmless')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', jitter => 'lots')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', max_attempts => 0)$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', max_attempts => -2147483648)$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', base_delay => '-1 second')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', base_delay => '100000 years')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', max_delay => '-1 second')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', max_delay => '100000 years')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', base_delay => 'infinity')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', multiplier => 'NaN')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', multiplier => 'Infinity')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', multiplier => '-Infinity')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', multiplier => -2)$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', multiplier => 0)$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', deadline => '0')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', deadline => '-1 day')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', deadline => '100000 years')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', lease => '0')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', lease => '-1 minute')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', lease => '100000 years')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', ttl => '0')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', ttl => '-1 day')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', ttl => '100000 years')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', compensate_tool => '')$$,
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', compensate_tool => repeat('c', 129))$$,
	$$agentretry.register_tool('bi_nonidem', 'idempotent', 'read', multiplier => 'NaN')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a compensate_tool is a tool name, and "*" is reserved (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$agentretry.register_tool('bi_t', 'idempotent', 'read', compensate_tool => '*')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- set_tenant_policy(tenant, tool, max_attempts, base_delay, max_delay,
-- multiplier, jitter, deadline, lease, ttl, compensate_tool,
-- requires_approval) and drop_tenant_policy(tenant, tool)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.set_tenant_policy('', 'bi_nonidem')$$,
	$$agentretry.set_tenant_policy(repeat('t', 129), 'bi_nonidem')$$,
	$$agentretry.set_tenant_policy('bi', '')$$,
	$$agentretry.set_tenant_policy('bi', repeat('t', 129))$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', jitter => 'lots')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', max_attempts => 0)$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', max_attempts => -1)$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', base_delay => '-1 second')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', base_delay => '100000 years')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', max_delay => '-1 second')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', max_delay => '100000 years')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', base_delay => '1 hour', max_delay => '1 minute')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', multiplier => 'NaN')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', multiplier => 'Infinity')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', multiplier => '-Infinity')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', multiplier => 0.5)$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', deadline => '0')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', deadline => '100000 years')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', lease => '0')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', lease => '100000 years')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', ttl => '0')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', ttl => '100000 years')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', compensate_tool => '')$$,
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', compensate_tool => repeat('c', 129))$$,
	$$agentretry.drop_tenant_policy('', 'bi_nonidem')$$,
	$$agentretry.drop_tenant_policy(repeat('t', 129), 'bi_nonidem')$$,
	$$agentretry.drop_tenant_policy('bi', '')$$,
	$$agentretry.drop_tenant_policy('bi', repeat('t', 129))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a compensate_tool is a tool name, and "*" is reserved (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$agentretry.set_tenant_policy('bi', 'bi_nonidem', compensate_tool => '*')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- effective_policy(tenant, tool)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.effective_policy('', 'bi_nonidem'))$$,
	$$(SELECT count(*) FROM agentretry.effective_policy(repeat('t', 129), 'bi_nonidem'))$$,
	$$(SELECT count(*) FROM agentretry.effective_policy('bi', ''))$$,
	$$(SELECT count(*) FROM agentretry.effective_policy('bi', repeat('t', 129)))$$,
	$$(SELECT count(*) FROM agentretry.effective_policy('bi', '*'))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- set_budget(tenant, scope, subject, capacity, refill_per_sec,
-- cost_transient, cost_ambiguous, ratio, ratio_window, ratio_floor,
-- stripes) and drop_budget(tenant, scope, subject)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.set_budget('bi', NULL, 'bi', capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tool', NULL, capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, refill_per_sec => NULL)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => NULL)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_ambiguous => NULL)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, ratio_window => NULL)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, ratio_floor => NULL)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, stripes => NULL)$$,
	$$agentretry.set_budget('bi', 'planet', 'bi_t', capacity => 1)$$,
	$$agentretry.set_budget('', 'tool', 'bi_t', capacity => 1)$$,
	$$agentretry.set_budget(repeat('t', 129), 'tool', 'bi_t', capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tool', '', capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tool', repeat('s', 129), capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tenant', 'someone-else', capacity => 1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 'NaN')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 'Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => '-Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => -1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 0)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1e300)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, refill_per_sec => 'NaN')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, refill_per_sec => 'Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, refill_per_sec => -1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, refill_per_sec => 1e300)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => 'NaN')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => 'Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => 0)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => -1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_transient => 1e300)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_ambiguous => 'NaN')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_ambiguous => '-Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, cost_ambiguous => 1e300)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 'NaN')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 'Infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => -0.1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 1e300)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_window => '0')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_window => '-1 minute')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_window => '100000 years')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_window => 'infinity')$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_floor => -1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', ratio => 0.1, ratio_floor => -2147483648)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, stripes => 0)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, stripes => -1)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, stripes => 65)$$,
	$$agentretry.set_budget('bi', 'tool', 'bi_t', capacity => 1, stripes => 2147483647)$$,
	$$agentretry.drop_budget('bi', NULL, 'bi')$$,
	$$agentretry.drop_budget('bi', 'tenant', NULL)$$,
	$$agentretry.drop_budget('bi', 'planet', 'bi')$$,
	$$agentretry.drop_budget('', 'tenant', 'bi')$$,
	$$agentretry.drop_budget(repeat('t', 129), 'tenant', 'bi')$$,
	$$agentretry.drop_budget('bi', 'tool', '')$$,
	$$agentretry.drop_budget('bi', 'tool', repeat('s', 129))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- check_policy(...) is internal: granted to nobody (an admin gets 42501);
-- as its owner, its checks are those of register_tool
--
SET ROLE regress_ar_bi_admin;
SELECT bi_try($$agentretry.check_policy(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)$$) AS admin_call;
RESET ROLE;
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.check_policy(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$agentretry.check_policy(0, NULL, NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$agentretry.check_policy(NULL, '100000 years', NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$agentretry.check_policy(NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL)$$,
	$$agentretry.check_policy(NULL, NULL, NULL, NULL, '-1 day', NULL, NULL, NULL)$$,
	$$agentretry.check_policy(NULL, NULL, NULL, NULL, NULL, '0', NULL, NULL)$$,
	$$agentretry.check_policy(NULL, NULL, NULL, NULL, NULL, NULL, '0', NULL)$$,
	$$agentretry.check_policy(NULL, NULL, NULL, NULL, NULL, NULL, NULL, '')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- invalidate_cache() is a trigger function, not callable
SELECT bi_try($$agentretry.invalidate_cache()$$) AS direct_call;

--
-- schedule_sweep(schedule): the schedule is required (checked before
-- pg_cron is looked for); unschedule_sweep(), cron_database(),
-- tier_defaults(), stats_buckets(), run_max_retries() and flush_stats()
-- take no arguments
--
SELECT bi_try($$agentretry.schedule_sweep(NULL)$$) AS null_schedule;

--
-- stats(since, tenant) and stats_since(since): since not NULL, not
-- negative; a tenant, when given, of 1 to 128 bytes
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.stats(NULL))$$,
	$$(SELECT count(*) FROM agentretry.stats(NULL, 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.stats('-1 second'))$$,
	$$(SELECT count(*) FROM agentretry.stats('-100000 years', 'bi'))$$,
	$$(SELECT count(*) FROM agentretry.stats('infinity', 'bi'))$$,
	$$agentretry.stats_since(NULL)$$,
	$$agentretry.stats_since('-1 second')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a window reaching back 100000 years holds everything there is (only a
-- negative since is refused)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.stats('100000 years', 'bi'))$$,
	$$agentretry.stats_since('100000 years') < now()$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- a tenant, like every tenant argument, is 1 to 128 bytes (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$(SELECT count(*) FROM agentretry.stats('1 hour', ''))$$,
	$$(SELECT count(*) FROM agentretry.stats('1 hour', repeat('t', 129)))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- stats_quantile(hist, p): a histogram without counts has no quantile
-- (NULL, as stats() shows for a tool without successes); p is a fraction
-- from 0 to 1
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.stats_quantile(NULL, 0.5)$$,
	$$agentretry.stats_quantile('{}', 0.5)$$,
	$$agentretry.stats_quantile('{1,2,3}', 0)$$,
	$$agentretry.stats_quantile('{1,2,3}', 1)$$,
	$$agentretry.stats_quantile('{1,2,3}', NULL)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- p outside 0 to 1 is no quantile (22023)
SELECT call, bi_try(call, true) AS outcome FROM unnest(ARRAY[
	$$agentretry.stats_quantile('{1,2,3}', -1)$$,
	$$agentretry.stats_quantile('{1,2,3}', 2)$$,
	$$agentretry.stats_quantile('{1,2,3}', 'NaN')$$,
	$$agentretry.stats_quantile('{1,2,3}', 'Infinity')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- op_hash(args, ignore): NULL args has no fingerprint; ignore is a list
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.op_hash(NULL)$$,
	$$agentretry.op_hash(NULL, '{a}')$$,
	$$agentretry.op_hash('{}', '{{a}, {b}}')$$,
	$$agentretry.op_hash('{}', '{{{a}}}')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- backoff(attempt, base, cap, multiplier, jitter, previous)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.backoff(NULL, '1s', '10s')$$,
	$$agentretry.backoff(1, NULL, '10s')$$,
	$$agentretry.backoff(1, '1s', NULL)$$,
	$$agentretry.backoff(1, '1s', '10s', NULL)$$,
	$$agentretry.backoff(1, '1s', '10s', 2, NULL)$$,
	$$agentretry.backoff(1, '1s', '10s', 2, 'lots')$$,
	$$agentretry.backoff(0, '1s', '10s')$$,
	$$agentretry.backoff(-1, '1s', '10s')$$,
	$$agentretry.backoff(-2147483648, '1s', '10s')$$,
	$$agentretry.backoff(1, '-1s', '10s')$$,
	$$agentretry.backoff(1, '-100000 years', '10s')$$,
	$$agentretry.backoff(1, '1s', '-10s')$$,
	$$agentretry.backoff(1, 'infinity', '10s')$$,
	$$agentretry.backoff(1, '1s', '10s', 'NaN')$$,
	$$agentretry.backoff(1, '1s', '10s', 'Infinity')$$,
	$$agentretry.backoff(1, '1s', '10s', '-Infinity')$$,
	$$agentretry.backoff(1, '1s', '10s', -2)$$,
	$$agentretry.backoff(1, '1s', '10s', 0)$$,
	$$agentretry.backoff(1, '1s', '10s', 2, 'decorrelated', '-1s')$$,
	-- huge values saturate at the cap
	$$agentretry.backoff(2147483647, '1s', '10s', 2, 'none')$$,
	$$agentretry.backoff(5, '1s', '10s', 1e308, 'none')$$,
	$$agentretry.backoff(1, '100000 years', '100000 years', 2, 'none') = interval '100000 years'$$,
	$$agentretry.backoff(3, '1s', '10s', 2, 'decorrelated', '100000 years')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

--
-- decide(failure, phase, idempotency, side_effect, attempt, max_attempts,
-- delay, retry_after, deadline, now)
--
SELECT call, bi_try(call) AS outcome FROM unnest(ARRAY[
	$$agentretry.decide(NULL, NULL, 'idempotent', 'read', 1, 3)$$,
	$$agentretry.decide('transient', NULL, NULL, 'read', 1, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', NULL, 1, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', NULL, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, NULL)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, NULL)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, now => NULL)$$,
	$$agentretry.decide('sometimes', NULL, 'idempotent', 'read', 1, 3)$$,
	$$agentretry.decide('transient', 'afterwards', 'idempotent', 'read', 1, 3)$$,
	$$agentretry.decide('transient', NULL, 'maybe', 'read', 1, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'harmless', 1, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 0, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', -1, 3)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 0)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, -2147483648)$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, '-1 second')$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, '-100000 years')$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, retry_after => '-1 second')$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, 'infinity')$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, now => 'infinity')$$,
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 1, 3, now => '-infinity')$$,
	-- huge values are decided like any other
	$$agentretry.decide('transient', NULL, 'idempotent', 'read', 2147483647, 2147483647)$$,
	$$(SELECT action || ' ' || reason || ' ' || (retry_at > '3026-01-01 00:00:00+00')
		FROM agentretry.decide('transient', 'pre_execution', 'idempotent', 'read', 1, 3, '100000 years',
			now => '2026-01-01 00:00:00+00'))$$,
	$$agentretry.decide('transient', 'pre_execution', 'idempotent', 'read', 1, 3,
		retry_after => '100000 years', deadline => '2026-01-02 00:00:00+00', now => '2026-01-01 00:00:00+00')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

RESET agentretry.max_payload;

--
-- jsonb nested 20 000 levels deep, wherever a function takes jsonb: it
-- works or is refused with 54001, and the server stays up.  Parsing the
-- value needs a larger stack than the default; the calls run with the
-- default, then with the larger stack.  Whatever a call writes is undone.
--
SET max_stack_depth = '7MB';
CREATE TEMP TABLE bi_deep AS
	SELECT (repeat('[', 20000) || repeat(']', 20000))::jsonb AS v;
RESET max_stack_depth;
SELECT call, bi_undo(call) ~ '^(ok|54001)' AS works_or_54001 FROM unnest(ARRAY[
	$$agentretry.op_hash((SELECT v FROM bi_deep))$$,
	$$agentretry.op_hash((SELECT v FROM bi_deep), '{a}')$$,
	$$agentretry.claim('bi-deep', (SELECT v FROM bi_deep), tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 1, (SELECT v FROM bi_deep), 'bi')$$,
	$$agentretry.complete('bi-live', 1, NULL, 'bi', 'bi_revert', (SELECT v FROM bi_deep))$$,
	$$agentretry.resolve('bi-verify', 2, true, (SELECT v FROM bi_deep), 'bi')$$,
	$$agentretry.checkpoint('bi-run', 's', (SELECT v FROM bi_deep), 'bi')$$,
	$$agentretry.observe('bi-live', 'r', 'bi', 'webhook', (SELECT v FROM bi_deep))$$,
	$$agentretry.observe('bi-deep-orphan', 'r', 'bi', 'webhook', (SELECT v FROM bi_deep))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
-- and with the larger stack
SET max_stack_depth = '7MB';
SELECT call, bi_undo(call) ~ '^(ok|54001)' AS works_or_54001 FROM unnest(ARRAY[
	$$agentretry.op_hash((SELECT v FROM bi_deep))$$,
	$$agentretry.claim('bi-deep', (SELECT v FROM bi_deep), tenant => 'bi')$$,
	$$agentretry.complete('bi-live', 1, (SELECT v FROM bi_deep), 'bi')$$,
	$$agentretry.checkpoint('bi-run', 's', (SELECT v FROM bi_deep), 'bi')$$,
	$$agentretry.observe('bi-deep-orphan', 'r', 'bi', 'webhook', (SELECT v FROM bi_deep))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;
RESET max_stack_depth;
RESET agentretry.track_stats;
SELECT 1 AS server_up;
DROP TABLE bi_deep;

--
-- after all of the above: nothing stored changed
--
SELECT bi_digest() = digest AS digest_unchanged FROM bi_before;
SELECT c.tbl, c.n = (b.counts ->> c.tbl)::bigint AS count_unchanged
FROM bi_counts c, bi_before b ORDER BY c.tbl;
SELECT key, state, attempts, lease_token FROM agentretry.operations
WHERE tenant = 'bi' ORDER BY key;

-- leave nothing behind for the files that follow
DROP TABLE bi_before;
DROP VIEW bi_counts;
DROP FUNCTION bi_try(text, boolean), bi_undo(text), bi_digest();
DROP ROLE regress_ar_bi_admin;
SELECT agentretry.drop_budget('bi', 'tenant', 'bi');
SELECT agentretry.drop_tenant_policy('bi', 'bi_nonidem');
DELETE FROM agentretry.anomalies WHERE tenant = 'bi';
DELETE FROM agentretry.events WHERE tenant = 'bi';
DELETE FROM agentretry.budget_ledger WHERE tenant = 'bi';
DELETE FROM agentretry.operations WHERE tenant = 'bi';
DELETE FROM agentretry.run_context WHERE tenant = 'bi';
DELETE FROM agentretry.runs WHERE tenant = 'bi';
DELETE FROM agentretry.token_floors WHERE tenant = 'bi';
DELETE FROM agentretry.stats_counts WHERE tenant = 'bi';
DELETE FROM agentretry.tools WHERE name LIKE 'bi\_%';
