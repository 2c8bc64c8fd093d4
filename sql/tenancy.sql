--
-- tenancy: memberships (tenant_members, add_tenant_member(),
-- remove_tenant_member()), which tenants a role may act for, row level
-- security, and claim_due() / claim_verifications() round robin across
-- the tenants of a worker
--
-- Every tenant here is named tn-*; every row of these tenants is removed
-- at the end, and so is every membership (tenant_members is empty again:
-- single-tenant, as the earlier files expect).
--
-- Roles are cluster-wide: drop leftovers of an interrupted run first.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_ar_t_agent_a, regress_ar_t_agent_b, regress_ar_t_agent_ab,
	regress_ar_t_agent_none, regress_ar_t_agent_g, regress_ar_t_agent_ni, regress_ar_t_group,
	regress_ar_t_group2,
	regress_ar_t_op_a, regress_ar_t_op_b, regress_ar_t_op_none, regress_ar_t_admin,
	regress_ar_t_worker, regress_ar_t_worker40, regress_ar_t_verifier,
	regress_ar_t_adminworker, regress_ar_t_nobody;
RESET client_min_messages;
CREATE ROLE regress_ar_t_agent_a IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_agent_b IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_agent_ab IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_agent_none IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_agent_g IN ROLE agentretry_agent;
-- does not inherit: it has only what is granted to it directly (below)
CREATE ROLE regress_ar_t_agent_ni NOINHERIT;
-- group roles: a tenant of a group is a tenant of its members, and of
-- the members of its members
CREATE ROLE regress_ar_t_group;
CREATE ROLE regress_ar_t_group2 IN ROLE regress_ar_t_group;
CREATE ROLE regress_ar_t_op_a IN ROLE agentretry_operator;
CREATE ROLE regress_ar_t_op_b IN ROLE agentretry_operator;
CREATE ROLE regress_ar_t_op_none IN ROLE agentretry_operator;
CREATE ROLE regress_ar_t_admin IN ROLE agentretry_admin;
CREATE ROLE regress_ar_t_worker IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_worker40 IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_verifier IN ROLE agentretry_agent;
CREATE ROLE regress_ar_t_adminworker IN ROLE agentretry_admin, agentretry_agent;
CREATE ROLE regress_ar_t_nobody;
GRANT USAGE ON SCHEMA agentretry TO regress_ar_t_agent_ni;
GRANT EXECUTE ON FUNCTION agentretry.lookup(text, text) TO regress_ar_t_agent_ni;

SELECT name FROM agentretry.register_tool('tn_tool', 'idempotent', 'read',
	base_delay => '0', max_delay => '0', jitter => 'none', lease => '1 hour');
SELECT name FROM agentretry.register_tool('tn_nonidem', 'non_idempotent', 'write',
	lease => '1 hour');
SELECT name FROM agentretry.register_tool('tn_gate', 'idempotent', 'destructive');

-- A fingerprint of what agentretry stores (data_digest()) and of what it
-- leaves out: memberships, anomalies, tenant policies and budgets.
CREATE FUNCTION tn_digest() RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT md5(public.data_digest() || E'\f' ||
		coalesce((SELECT string_agg(m::text, E'\n' ORDER BY m.tenant, m.role::text)
				  FROM agentretry.tenant_members m), '') || E'\f' ||
		coalesce((SELECT string_agg(a::text, E'\n' ORDER BY a.tenant, a.id)
				  FROM agentretry.anomalies a), '') || E'\f' ||
		coalesce((SELECT string_agg(p::text, E'\n' ORDER BY p.tenant, p.tool)
				  FROM agentretry.tenant_policies p), '') || E'\f' ||
		coalesce((SELECT string_agg(b::text, E'\n' ORDER BY b.tenant, b.scope, b.subject)
				  FROM agentretry.budgets b), ''))
$$;

-- Runs a statement of one value and says how it ended ('ok: ' and the
-- value, or SQLSTATE, message and detail) and whether anything stored
-- changed.
CREATE FUNCTION tn_stmt(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := tn_digest();
	res text;
	state text;
	msg text;
	det text;
BEGIN
	BEGIN
		EXECUTE stmt INTO res;
		res := 'ok: ' || coalesce(res, 'NULL');
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL;
		res := state || ': ' || msg || CASE WHEN det <> '' THEN ' / ' || det ELSE '' END;
	END;
	RETURN res || CASE WHEN tn_digest() = before THEN ' (unchanged)' ELSE ' (DATA CHANGED)' END;
END
$$;
GRANT EXECUTE ON FUNCTION tn_digest(), tn_stmt(text) TO PUBLIC;

--
-- before the first membership: single-tenant, as before
--
SELECT count(*) AS memberships FROM agentretry.tenant_members;
SET ROLE regress_ar_t_agent_none;
-- no tenant: default; a named tenant is not checked
SELECT outcome, lease_token FROM agentretry.claim('tn-single-1', '{}', 'tn_tool');
SELECT outcome, lease_token FROM agentretry.claim('tn-single-2', '{}', 'tn_tool', tenant => 'tn-c');
SELECT tenant, state FROM agentretry.lookup('tn-single-1');
SELECT tenant, state FROM agentretry.lookup('tn-single-2', 'tn-c');
SELECT count(*) AS fields FROM agentretry.effective_policy(NULL, 'tn_tool');
SELECT agentretry.complete('tn-single-1', 1, '{}');
SELECT agentretry.complete('tn-single-2', 1, '{}', 'tn-c');
RESET ROLE;
-- an operator without a membership reads every tenant's rows
SET ROLE regress_ar_t_op_none;
SELECT tenant, key, state FROM agentretry.operations WHERE key LIKE 'tn-single-%' ORDER BY key;
SELECT count(*) AS in_flight FROM agentretry.in_flight WHERE key LIKE 'tn-single-%';
RESET ROLE;

--
-- add_tenant_member(role, tenant) and remove_tenant_member(role, tenant):
-- admin only; true when added / removed, false when there was nothing to do
--
SET ROLE regress_ar_t_admin;
SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-a') AS added;
SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-a') AS added_again;
SELECT role, tenant, added_at <= clock_timestamp() AS added_at FROM agentretry.tenant_members;
RESET ROLE;
-- from now on a tenant must be one of the caller's; the admin role and
-- superusers act for every tenant, so that without a tenant named the
-- tenant is ambiguous for them, even while only one tenant has members
SET ROLE regress_ar_t_agent_none;
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('tn-single-1')$$);
RESET ROLE;
SET ROLE regress_ar_t_admin;
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('tn-single-1')$$);
RESET ROLE;
SELECT replace(tn_stmt($$SELECT state FROM agentretry.lookup('tn-single-1')$$), current_user, 'SUPERUSER');
SET ROLE regress_ar_t_admin;
-- bad input, refused with nothing changed
SELECT tn_stmt($$SELECT agentretry.add_tenant_member(NULL, 'tn-a')$$);
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', NULL)$$);
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', '')$$);
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', repeat('t', 129))$$);
-- bytes, not characters: 65 two-byte characters are 130 bytes
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', repeat('é', 65))$$);
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_no_such_role', 'tn-a')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member(NULL, 'tn-a')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', NULL)$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_no_such_role', 'tn-a')$$);
-- nothing to remove: false
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-zz')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_b', 'tn-a')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', repeat('t', 129))$$);
-- the longest tenant: 128 bytes (64 two-byte characters)
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_nobody', repeat('é', 64))$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_nobody', repeat('é', 64))$$);
RESET ROLE;
-- only the admin role (and superusers) manage memberships
SET ROLE regress_ar_t_op_a;
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_op_a', 'tn-b')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-a')$$);
SELECT tn_stmt($$INSERT INTO agentretry.tenant_members (tenant, role) VALUES ('tn-b', 'regress_ar_t_op_a')$$);
RESET ROLE;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-b')$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.tenant_members$$);
RESET ROLE;
SET ROLE regress_ar_t_nobody;
SELECT tn_stmt($$SELECT agentretry.add_tenant_member('regress_ar_t_nobody', 'tn-b')$$);
SELECT tn_stmt($$SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-a')$$);
RESET ROLE;
-- a superuser may
SELECT agentretry.add_tenant_member('regress_ar_t_agent_b', 'tn-b') AS added;

-- the other memberships
SET ROLE regress_ar_t_admin;
SELECT count(*) FILTER (WHERE added) AS added
FROM (SELECT agentretry.add_tenant_member(r::regrole, t) AS added
	  FROM (VALUES ('regress_ar_t_agent_ab', 'tn-a'), ('regress_ar_t_agent_ab', 'tn-b'),
				   ('regress_ar_t_op_a', 'tn-a'), ('regress_ar_t_op_b', 'tn-b'),
				   ('regress_ar_t_group', 'tn-g'), ('regress_ar_t_nobody', 'tn-c'),
				   ('regress_ar_t_worker', 'tn-rr-big'), ('regress_ar_t_worker', 'tn-rr-small'),
				   ('regress_ar_t_verifier', 'tn-rv-a'), ('regress_ar_t_verifier', 'tn-rv-b'))
		   AS v(r, t)) x;
SELECT count(*) FILTER (WHERE agentretry.add_tenant_member('regress_ar_t_worker40',
	format('tn-rr40-%s', lpad(n::text, 2, '0')))) AS added
FROM generate_series(1, 40) n;
RESET ROLE;
SELECT role, count(*) AS tenants, min(tenant), max(tenant)
FROM agentretry.tenant_members GROUP BY role ORDER BY role::text;

--
-- the rows of a tenant, in every table that has a tenant column: one
-- operation in each state, a run with a context and a compensable step,
-- a budget with a ledger, a tenant policy, a token floor, an anomaly and
-- counts.  Called as superuser, who acts for every tenant.
--
CREATE FUNCTION tn_fill(t text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	c agentretry.claim_result;
BEGIN
	PERFORM agentretry.set_budget(t, 'tenant', t, capacity => 100);
	PERFORM agentretry.set_tenant_policy(t, 'tn_tool', max_attempts => 5);
	-- in_progress, one lease per function that takes a lease
	PERFORM agentretry.claim(k, '{}', 'tn_tool', t, owner => 'tn-owner')
	FROM unnest(ARRAY['lease-c', 'lease-f', 'lease-h', 'lease-r']) k;
	-- verify: one with a verifier's lease (token 2), one waiting for a verifier
	PERFORM agentretry.claim(k, '{}', 'tn_nonidem', t, owner => 'tn-owner')
	FROM unnest(ARRAY['verify', 'verify-free']) k;
	PERFORM agentretry.fail(k, 1, 'ambiguous', 'mid_execution', tenant => t)
	FROM unnest(ARRAY['verify', 'verify-free']) k;
	PERFORM agentretry.claim('verify', '{}', 'tn_nonidem', t, owner => 'tn-verifier');
	-- retry_wait, due at once (debits the budget)
	PERFORM agentretry.claim('wait', '{}', 'tn_tool', t, owner => 'tn-owner');
	PERFORM agentretry.fail('wait', 1, 'transient', 'pre_execution', tenant => t);
	-- dead
	PERFORM agentretry.claim('dead', '{}', 'tn_tool', t, owner => 'tn-owner');
	PERFORM agentretry.fail('dead', 1, 'permanent', 'pre_execution', tenant => t);
	-- succeeded, with a receipt
	PERFORM agentretry.claim('done', '{}', 'tn_tool', t, owner => 'tn-owner');
	PERFORM agentretry.complete('done', 1, '{}', t, receipt => 'r-done');
	-- awaiting approval, twice
	PERFORM agentretry.claim(k, '{}', 'tn_gate', t, owner => 'tn-owner')
	FROM unnest(ARRAY['gate-1', 'gate-2']) k;
	-- runs: one running with a context, one with a completed compensable step
	PERFORM agentretry.start_run('run', t);
	PERFORM agentretry.checkpoint('run', 'step-1', '{"v": 1}', t);
	PERFORM agentretry.start_run('run-c', t);
	c := agentretry.claim('run-c-step', '{}', 'tn_tool', t, run_id => 'run-c', step => 's1',
		owner => 'tn-owner');
	PERFORM agentretry.complete('run-c-step', c.lease_token, '{}', t, 'tn_tool', '{"undo": true}');
	-- what only purges and reconciliation write
	INSERT INTO agentretry.token_floors (tenant, floor, raised_at) VALUES (t, 7, clock_timestamp());
	INSERT INTO agentretry.anomalies (tenant, kind, key, found_at)
	VALUES (t, 'orphan_side_effect', 'tn-orphan', clock_timestamp());
END
$$;
SELECT tn_fill(t) FROM unnest(ARRAY['tn-a', 'tn-b', 'tn-c']) t;
SELECT agentretry.flush_stats() > 0 AS flushed;
SELECT tenant, key, state, attempts, lease_token, run_id
FROM agentretry.operations WHERE tenant = 'tn-b' ORDER BY key;

-- the relations with a tenant column, and for each tenant how many rows
-- the role reading sees of them: all, none or some
CREATE FUNCTION tn_true_count(rel text, t text, other boolean) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	EXECUTE format('SELECT count(*) FROM agentretry.%I WHERE %s', rel,
		CASE WHEN other THEN 'tenant NOT IN (''tn-a'', ''tn-b'')' ELSE 'tenant = $1' END)
	INTO n USING t;
	RETURN n;
END
$$;
CREATE FUNCTION tn_rls(rels text[] DEFAULT ARRAY['operations', 'events', 'token_floors',
	'tenant_policies', 'budgets', 'budget_stripes', 'budget_ledger', 'runs', 'run_context',
	'anomalies', 'stats_counts', 'tenant_members', 'in_flight', 'dead_letters', 'verify_queue',
	'budget_status', 'run_status', 'approval_queue'])
RETURNS TABLE (rel text, tn_a text, tn_b text, other_tenants text)
LANGUAGE plpgsql AS $$
DECLARE
	na bigint;
	nb bigint;
	nother bigint;
BEGIN
	FOREACH rel IN ARRAY rels LOOP
		EXECUTE format('SELECT count(*) FILTER (WHERE tenant = ''tn-a''),'
			' count(*) FILTER (WHERE tenant = ''tn-b''),'
			' count(*) FILTER (WHERE tenant NOT IN (''tn-a'', ''tn-b''))'
			' FROM agentretry.%I', rel) INTO na, nb, nother;
		tn_a := CASE na WHEN tn_true_count(rel, 'tn-a', false) THEN 'all' WHEN 0 THEN 'none' ELSE 'some' END;
		tn_b := CASE nb WHEN tn_true_count(rel, 'tn-b', false) THEN 'all' WHEN 0 THEN 'none' ELSE 'some' END;
		other_tenants := CASE nother WHEN tn_true_count(rel, NULL, true) THEN 'all' WHEN 0 THEN 'none' ELSE 'some' END;
		RETURN NEXT;
	END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION tn_true_count(text, text, boolean), tn_rls(text[]) TO PUBLIC;
-- every relation has rows of tn-a, of tn-b and of other tenants
SELECT r AS rel, tn_true_count(r, 'tn-a', false) > 0 AS tn_a,
	tn_true_count(r, 'tn-b', false) > 0 AS tn_b, tn_true_count(r, NULL, true) > 0 AS other
FROM unnest(ARRAY['operations', 'events', 'token_floors', 'tenant_policies', 'budgets',
	'budget_stripes', 'budget_ledger', 'runs', 'run_context', 'anomalies', 'stats_counts',
	'tenant_members', 'in_flight', 'dead_letters', 'verify_queue', 'budget_status',
	'run_status', 'approval_queue']) r;

--
-- row level security: an operator sees the rows of its tenants, in the
-- tables and through the views; the admin role and superusers see every
-- tenant's
--
SET ROLE regress_ar_t_op_a;
SELECT * FROM tn_rls();
RESET ROLE;
SET ROLE regress_ar_t_op_b;
SELECT * FROM tn_rls();
RESET ROLE;
-- an operator of no tenant sees nothing
SET ROLE regress_ar_t_op_none;
SELECT * FROM tn_rls();
RESET ROLE;
SET ROLE regress_ar_t_admin;
SELECT * FROM tn_rls();
RESET ROLE;
SELECT * FROM tn_rls();
-- agents read tenant policies and budgets: their tenants' only
SET ROLE regress_ar_t_agent_a;
SELECT * FROM tn_rls(ARRAY['tenant_policies', 'budgets']);
SELECT tenant, tool, max_attempts FROM agentretry.tenant_policies WHERE tenant LIKE 'tn-%';
RESET ROLE;
SET ROLE regress_ar_t_agent_ab;
SELECT * FROM tn_rls(ARRAY['tenant_policies', 'budgets']);
RESET ROLE;
SET ROLE regress_ar_t_agent_none;
SELECT * FROM tn_rls(ARRAY['tenant_policies', 'budgets']);
RESET ROLE;
-- row level security and the checks of agentretry's functions both follow
-- current_user: in a SECURITY DEFINER function owned by regress_ar_t_op_a,
-- called by regress_ar_t_op_b, the tables show tn-a's rows and lookup()
-- acts for regress_ar_t_op_a (a function of another role never acts with
-- the tenants of the role that calls it)
CREATE FUNCTION tn_as_op_a(t text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_catalog, pg_temp
AS $$
BEGIN
	RETURN format('current_user %s sees %s; lookup(%s): %s', current_user,
		(SELECT string_agg(DISTINCT o.tenant, ',') FROM agentretry.operations o
		 WHERE o.tenant LIKE 'tn-%'),
		t, tn_stmt(format('SELECT state FROM agentretry.lookup(%L, %L)', 'done', t)));
END
$$;
ALTER FUNCTION tn_as_op_a(text) OWNER TO regress_ar_t_op_a;
GRANT EXECUTE ON FUNCTION tn_as_op_a(text) TO PUBLIC;
SET ROLE regress_ar_t_op_b;
SELECT tn_as_op_a('tn-a');
SELECT tn_as_op_a('tn-b');
RESET ROLE;
DROP FUNCTION tn_as_op_a(text);

--
-- stats(): without a tenant, the rows of the caller's tenants only; a
-- named tenant must be one of them
--
SET ROLE regress_ar_t_op_a;
SELECT tenant, tool, first_attempts, executions, retries, successes, dead_letters, anomalies
FROM agentretry.stats('1 hour') ORDER BY tenant, tool;
SELECT tn_stmt($$SELECT count(*) FROM agentretry.stats('1 hour', 'tn-a')$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.stats('1 hour', 'tn-c')$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.stats('1 hour', 'default')$$);
RESET ROLE;
SET ROLE regress_ar_t_op_b;
SELECT string_agg(DISTINCT tenant, ',') AS tenants FROM agentretry.stats('1 hour');
RESET ROLE;
SET ROLE regress_ar_t_op_none;
SELECT count(*) AS rows FROM agentretry.stats('1 hour');
RESET ROLE;
-- the admin role: every tenant
SET ROLE regress_ar_t_admin;
SELECT string_agg(DISTINCT tenant, ',') AS tenants FROM agentretry.stats('1 hour')
WHERE tenant IN ('tn-a', 'tn-b', 'tn-c');
SELECT tn_stmt($$SELECT count(*) > 0 FROM agentretry.stats('1 hour', 'tn-c')$$);
RESET ROLE;
SELECT string_agg(DISTINCT tenant, ',') AS tenants FROM agentretry.stats('1 hour')
WHERE tenant IN ('tn-a', 'tn-b', 'tn-c');

--
-- acknowledge(): another tenant's anomaly does not exist for the caller,
-- exactly as an id that does not exist at all
--
SELECT max(id) FILTER (WHERE tenant = 'tn-a') AS anomaly_a,
	max(id) FILTER (WHERE tenant = 'tn-b') AS anomaly_b,
	max(id) FILTER (WHERE tenant = 'tn-c') AS anomaly_c,
	max(id) + 1000 AS anomaly_none
FROM agentretry.anomalies \gset
-- (the ids differ from run to run: shown as N)
CREATE FUNCTION tn_ack(id bigint) RETURNS text
LANGUAGE sql AS $$
	SELECT regexp_replace(tn_stmt(format('SELECT agentretry.acknowledge(%s, %L) IS NOT NULL',
		id, 'seen by ' || current_user)), 'anomaly -?\d+', 'anomaly N')
$$;
GRANT EXECUTE ON FUNCTION tn_ack(bigint) TO PUBLIC;
SET ROLE regress_ar_t_op_a;
SELECT tn_ack(:anomaly_b) AS tn_b, tn_ack(:anomaly_c) AS tn_c, tn_ack(:anomaly_none) AS no_such_id;
SELECT tn_ack(:anomaly_a) AS tn_a;
RESET ROLE;
SET ROLE regress_ar_t_op_b;
SELECT tn_ack(:anomaly_a) AS tn_a;
SELECT tn_ack(:anomaly_b) AS tn_b;
RESET ROLE;
SET ROLE regress_ar_t_op_none;
SELECT tn_ack(:anomaly_a) AS tn_a;
RESET ROLE;
SET ROLE regress_ar_t_admin;
SELECT tn_ack(:anomaly_c) AS tn_c;
RESET ROLE;
SELECT tenant, acknowledged_by, note FROM agentretry.anomalies
WHERE tenant IN ('tn-a', 'tn-b', 'tn-c') ORDER BY tenant;

--
-- a named tenant the caller is not a member of: 42501, nothing changed.
-- The rows exist and are in a state where each call would act (members
-- of tn-b make the same calls below).
--
SET ROLE regress_ar_t_agent_a;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'claim', $$SELECT outcome FROM agentretry.claim('wait', '{}', 'tn_tool', 'tn-b')$$),
	(2, 'claim', $$SELECT outcome FROM agentretry.claim('new', '{}', 'tn_tool', 'tn-b')$$),
	(3, 'complete', $$SELECT agentretry.complete('lease-c', 1, '{}', 'tn-b')$$),
	(4, 'fail', $$SELECT action FROM agentretry.fail('lease-f', 1, 'transient', tenant => 'tn-b')$$),
	(5, 'resolve', $$SELECT agentretry.resolve('verify', 2, true, tenant => 'tn-b')$$),
	(6, 'heartbeat', $$SELECT agentretry.heartbeat('lease-h', 1, '2 hours', 'tn-b') IS NOT NULL$$),
	(7, 'release', $$SELECT agentretry.release('lease-r', 1, 'tn-b')$$),
	(8, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c', 'tn-b')$$),
	(9, 'start_run', $$SELECT agentretry.start_run('run-new', 'tn-b')$$),
	(10, 'finish_run', $$SELECT agentretry.finish_run('run', 'tn-b')$$),
	(11, 'checkpoint', $$SELECT agentretry.checkpoint('run', 'step-2', '{"v": 2}', 'tn-b')$$),
	(12, 'context', $$SELECT agentretry.context('run', 'tn-b')$$),
	(13, 'compensate', $$SELECT agentretry.compensate('run-c', 'tn-b')$$),
	(14, 'observe', $$SELECT agentretry.observe('done', 'r-done', 'tn-b')$$),
	(15, 'effective_policy', $$SELECT count(*) FROM agentretry.effective_policy('tn-b', 'tn_tool')$$),
	(16, 'claim_due', $$SELECT count(*) FROM agentretry.claim_due('w', 10, tenant => 'tn-b')$$),
	(17, 'claim_verifications', $$SELECT count(*) FROM agentretry.claim_verifications('w', 10, tenant => 'tn-b')$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
SET ROLE regress_ar_t_op_a;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'approve', $$SELECT agentretry.approve('gate-1', 'tn-b')$$),
	(2, 'reject', $$SELECT agentretry.reject('gate-2', 'tn-b', 'no')$$),
	(3, 'requeue', $$SELECT agentretry.requeue('dead', 'tn-b')$$),
	(4, 'cancel', $$SELECT agentretry.cancel('wait', 'tn-b')$$),
	(5, 'context', $$SELECT agentretry.context('run', 'tn-b')$$),
	(6, 'compensate', $$SELECT agentretry.compensate('run-c', 'tn-b')$$),
	(7, 'observe', $$SELECT agentretry.observe('done', 'r-done', 'tn-b')$$),
	(8, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c', 'tn-b')$$),
	(9, 'effective_policy', $$SELECT count(*) FROM agentretry.effective_policy('tn-b', 'tn_tool')$$),
	(10, 'stats', $$SELECT count(*) FROM agentretry.stats('1 hour', 'tn-b')$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
-- a member of tn-a and tn-b may act for both, not for tn-c
SET ROLE regress_ar_t_agent_ab;
SELECT t AS tenant, tn_stmt(format($$SELECT state FROM agentretry.lookup('lease-c', %L)$$, t)) AS lookup
FROM unnest(ARRAY['tn-a', 'tn-b', 'tn-c']) t;
RESET ROLE;

--
-- the calls of members of tn-b, without naming the tenant: their only
-- tenant
--
SET ROLE regress_ar_t_op_b;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'approve', $$SELECT agentretry.approve('gate-1')$$),
	(2, 'reject', $$SELECT agentretry.reject('gate-2', NULL, 'no')$$),
	(3, 'requeue', $$SELECT agentretry.requeue('dead')$$),
	(4, 'cancel', $$SELECT agentretry.cancel('wait')$$),
	(5, 'context', $$SELECT agentretry.context('run')$$),
	(6, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c')$$),
	(7, 'effective_policy', $$SELECT value FROM agentretry.effective_policy(NULL, 'tn_tool') WHERE field = 'max_attempts'$$),
	(8, 'stats', $$SELECT string_agg(DISTINCT tenant, ',') FROM agentretry.stats('1 hour', 'tn-b')$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
SET ROLE regress_ar_t_agent_b;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'claim', $$SELECT outcome FROM agentretry.claim('new', '{}', 'tn_tool')$$),
	(2, 'complete', $$SELECT agentretry.complete('lease-c', 1, '{}')$$),
	(3, 'fail', $$SELECT action FROM agentretry.fail('lease-f', 1, 'transient')$$),
	(4, 'resolve', $$SELECT agentretry.resolve('verify', 2, true)$$),
	(5, 'heartbeat', $$SELECT agentretry.heartbeat('lease-h', 1, '2 hours') IS NOT NULL$$),
	(6, 'release', $$SELECT agentretry.release('lease-r', 1)$$),
	(7, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c')$$),
	(8, 'start_run', $$SELECT agentretry.start_run('run-new')$$),
	(9, 'checkpoint', $$SELECT agentretry.checkpoint('run', 'step-2', '{"v": 2}')$$),
	(10, 'finish_run', $$SELECT agentretry.finish_run('run')$$),
	(11, 'context', $$SELECT agentretry.context('run')$$),
	(12, 'compensate', $$SELECT agentretry.compensate('run-c')$$),
	(13, 'observe', $$SELECT agentretry.observe('done', 'r-done')$$),
	(14, 'effective_policy', $$SELECT count(*) FROM agentretry.effective_policy(NULL, 'tn_tool')$$),
	(15, 'claim_due', $$SELECT string_agg(tenant || '/' || key, ',' ORDER BY key) FROM agentretry.claim_due('w', 10)$$),
	(16, 'claim_verifications', $$SELECT string_agg(tenant || '/' || key, ',' ORDER BY key) FROM agentretry.claim_verifications('w', 10)$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
SELECT tenant, key, state, attempts, lease_token, lease_owner, reason
FROM agentretry.operations WHERE tenant = 'tn-b' ORDER BY key;
-- tn-a and tn-c were not touched
SELECT tenant, count(*) FILTER (WHERE state = 'in_progress') AS in_progress,
	count(*) FILTER (WHERE state = 'verify') AS verify,
	count(*) FILTER (WHERE state = 'awaiting_approval') AS awaiting_approval,
	count(*) FILTER (WHERE state = 'retry_wait') AS retry_wait,
	count(*) FILTER (WHERE state = 'dead') AS dead,
	count(*) FILTER (WHERE state = 'succeeded') AS succeeded
FROM agentretry.operations WHERE tenant IN ('tn-a', 'tn-c') GROUP BY tenant ORDER BY tenant;

--
-- no tenant named: the caller's only tenant; several: ambiguous (22023);
-- none: 42501
--
SET ROLE regress_ar_t_agent_a;
SELECT tenant, key, state FROM agentretry.lookup('lease-c');
SELECT outcome FROM agentretry.claim('tn-a-null', '{}', 'tn_tool');
SELECT tenant, key FROM agentretry.lookup('tn-a-null', 'tn-a');
RESET ROLE;
SET ROLE regress_ar_t_agent_ab;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c')$$),
	(2, 'claim', $$SELECT outcome FROM agentretry.claim('tn-ab-null', '{}', 'tn_tool')$$),
	(3, 'start_run', $$SELECT agentretry.start_run('run-ab')$$),
	(4, 'effective_policy', $$SELECT count(*) FROM agentretry.effective_policy()$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
SET ROLE regress_ar_t_agent_none;
SELECT f AS function, tn_stmt(s) AS answer FROM (VALUES
	(1, 'lookup', $$SELECT state FROM agentretry.lookup('lease-c')$$),
	(2, 'claim', $$SELECT outcome FROM agentretry.claim('tn-none-null', '{}', 'tn_tool')$$),
	(3, 'claim_due', $$SELECT count(*) FROM agentretry.claim_due('w', 10)$$),
	(4, 'claim_verifications', $$SELECT count(*) FROM agentretry.claim_verifications('w', 10)$$),
	(5, 'claim (named)', $$SELECT outcome FROM agentretry.claim('tn-none-null', '{}', 'tn_tool', 'default')$$)
) v(n, f, s) ORDER BY n;
RESET ROLE;
SET ROLE regress_ar_t_op_none;
SELECT tn_stmt($$SELECT agentretry.requeue('dead')$$);
RESET ROLE;
-- the admin role and superusers act for every tenant: a tenant must be
-- named, any tenant
SET ROLE regress_ar_t_admin;
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('lease-c')$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.effective_policy()$$);
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('lease-c', 'tn-c')$$);
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('lease-c', 'tn-nobody-is-a-member-of')$$);
RESET ROLE;
SELECT replace(tn_stmt($$SELECT state FROM agentretry.lookup('lease-c')$$), current_user, 'SUPERUSER');
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('lease-c', 'tn-c')$$);
-- with exactly one membership of their own, that one
SELECT agentretry.add_tenant_member('regress_ar_t_admin', 'tn-c') AS added;
SELECT agentretry.add_tenant_member(current_user::regrole, 'tn-a') AS added;
SET ROLE regress_ar_t_admin;
SELECT tenant, key, state FROM agentretry.lookup('lease-c');
RESET ROLE;
SELECT replace(tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$), current_user, 'SUPERUSER');
-- with two, ambiguous again
SELECT agentretry.add_tenant_member('regress_ar_t_admin', 'tn-b') AS added;
SET ROLE regress_ar_t_admin;
SELECT tn_stmt($$SELECT state FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
SELECT agentretry.remove_tenant_member('regress_ar_t_admin', 'tn-b') AS removed,
	agentretry.remove_tenant_member('regress_ar_t_admin', 'tn-c') AS removed,
	agentretry.remove_tenant_member(current_user::regrole, 'tn-a') AS removed;

--
-- membership through a role: the tenants of the roles whose privileges the
-- caller inherits (pg_has_role(..., 'USAGE')); a GRANT or REVOKE of a role
-- takes effect at once
--
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('g-1', '{}', 'tn_tool', 'tn-g')$$);
RESET ROLE;
GRANT regress_ar_t_group TO regress_ar_t_agent_g;
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('g-1', '{}', 'tn_tool', 'tn-g')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
REVOKE regress_ar_t_group FROM regress_ar_t_agent_g;
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1', 'tn-g')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
-- two levels: regress_ar_t_group2 is a member of regress_ar_t_group
GRANT regress_ar_t_group2 TO regress_ar_t_agent_g;
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
REVOKE regress_ar_t_group FROM regress_ar_t_group2;
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
GRANT regress_ar_t_group TO regress_ar_t_group2;
-- a direct membership and one through a role: one tenant, not two
SELECT agentretry.add_tenant_member('regress_ar_t_agent_g', 'tn-g') AS added;
SET ROLE regress_ar_t_agent_g;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
SELECT agentretry.remove_tenant_member('regress_ar_t_agent_g', 'tn-g') AS removed;
REVOKE regress_ar_t_group2 FROM regress_ar_t_agent_g;
-- a role that does not inherit its roles' privileges does not act for
-- their tenants either
GRANT regress_ar_t_group TO regress_ar_t_agent_ni;
SET ROLE regress_ar_t_agent_ni;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1', 'tn-g')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
ALTER ROLE regress_ar_t_agent_ni INHERIT;
SET ROLE regress_ar_t_agent_ni;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('g-1')$$);
RESET ROLE;
REVOKE regress_ar_t_group FROM regress_ar_t_agent_ni;
-- becoming an admin: every tenant
GRANT agentretry_admin TO regress_ar_t_agent_a;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c', 'tn-c')$$);
-- its one membership answers for NULL
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
REVOKE agentretry_admin FROM regress_ar_t_agent_a;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c', 'tn-c')$$);
RESET ROLE;

--
-- memberships are cached per session and forgotten when tenant_members
-- changes: a removal takes effect at the next call
--
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-a') AS removed;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c', 'tn-a')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('tn-a-removed', '{}', 'tn_tool', 'tn-a')$$);
RESET ROLE;
SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-a') AS added;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
-- within one transaction, its own change counts from the next statement;
-- a rollback forgets it
BEGIN;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-a') AS removed;
SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-b') AS added;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c', 'tn-a')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
ROLLBACK;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c', 'tn-b')$$);
RESET ROLE;
-- and a savepoint rolled back
BEGIN;
SAVEPOINT s;
SELECT agentretry.remove_tenant_member('regress_ar_t_agent_a', 'tn-a') AS removed;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
ROLLBACK TO SAVEPOINT s;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
COMMIT;
-- a role renamed keeps its memberships
ALTER ROLE regress_ar_t_agent_b RENAME TO regress_ar_t_agent_b2;
SELECT role, tenant FROM agentretry.tenant_members WHERE tenant = 'tn-b' ORDER BY role::text;
SET ROLE regress_ar_t_agent_b2;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('lease-c')$$);
RESET ROLE;
ALTER ROLE regress_ar_t_agent_b2 RENAME TO regress_ar_t_agent_b;

--
-- inside a transaction block a lease needs in_transaction => true; the
-- tenant is checked first
--
BEGIN;
SET ROLE regress_ar_t_agent_a;
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('tn-a-tx', '{}', 'tn_tool', 'tn-b')$$);
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('tn-a-tx', '{}', 'tn_tool')$$);
SELECT tn_stmt($$SELECT outcome FROM agentretry.claim('tn-a-tx', '{}', 'tn_tool', in_transaction => true)$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.claim_due('w', 10, tenant => 'tn-b', in_transaction => true)$$);
SELECT tn_stmt($$SELECT count(*) FROM agentretry.claim_due('w', 10)$$);
SELECT tn_stmt($$SELECT string_agg(key, ',') FROM agentretry.claim_due('w', 10, in_transaction => true)$$);
RESET ROLE;
ROLLBACK;

--
-- claim_due() without a tenant, for a worker that acts for several
-- tenants: round robin.  Each call visits the tenants in turn, from the
-- one after the last this session visited, and gives each an equal share
-- of max; a share a tenant cannot use goes to the others.
--
-- The worker's calls, each in a transaction of its own, and what each
-- leased
CREATE TABLE tn_leases (worker text, call integer, tenant text, key text, lease_token bigint);
CREATE TABLE tn_calls (worker text, call integer, leased integer);
GRANT SELECT, INSERT ON tn_leases, tn_calls TO PUBLIC;
CREATE PROCEDURE tn_worker(calls integer, mx integer, tools text[] DEFAULT NULL,
	verifications boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
	n integer;
	me text := current_user;
BEGIN
	FOR i IN 1..calls LOOP
		IF verifications THEN
			INSERT INTO tn_leases SELECT me, i, d.tenant, d.key, d.lease_token
			FROM agentretry.claim_verifications(me, mx, tools) d;
		ELSE
			INSERT INTO tn_leases SELECT me, i, d.tenant, d.key, d.lease_token
			FROM agentretry.claim_due(me, mx, tools) d;
		END IF;
		GET DIAGNOSTICS n = ROW_COUNT;
		INSERT INTO tn_calls VALUES (me, i, n);
		COMMIT;
	END LOOP;
END
$$;
GRANT EXECUTE ON PROCEDURE tn_worker(integer, integer, text[], boolean) TO PUBLIC;
-- n retries of a tenant, due at once, the first key due first
CREATE FUNCTION tn_due(t text, n integer, tool text DEFAULT 'tn_tool') RETURNS bigint
LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(1, n) i, agentretry.claim(format('due-%s',
		lpad(i::text, 3, '0')), '{}', tool, t, owner => 'tn-owner') c WHERE c.outcome = 'execute';
	SELECT count(*) FROM generate_series(1, n) i, agentretry.fail(format('due-%s',
		lpad(i::text, 3, '0')), 1, 'transient', 'pre_execution', tenant => t) f
	WHERE f.action = 'retry';
	UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 hour'
		+ substr(key, 5)::integer * interval '1 second'
	WHERE tenant = t AND state = 'retry_wait';
	SELECT count(*) FROM agentretry.operations
	WHERE tenant = t AND state = 'retry_wait' AND next_attempt_at <= clock_timestamp();
$$;
-- each lease is the row's current lease, no row was leased twice, and each
-- tenant's rows were leased oldest due first
CREATE VIEW tn_lease_check AS
SELECT l.worker, count(*) AS leases, count(DISTINCT (l.tenant, l.key)) AS rows_leased,
	count(*) FILTER (WHERE o.lease_owner = l.worker AND o.lease_token = l.lease_token
		AND o.state IN ('in_progress', 'verify') AND o.lease_expires_at > clock_timestamp()) AS current,
	bool_and(l.call >= l.prev_call) AS oldest_first
FROM (SELECT *, lag(call, 1, 0) OVER (PARTITION BY worker, tenant ORDER BY key) AS prev_call
	  FROM tn_leases) l
JOIN agentretry.operations o USING (tenant, key)
GROUP BY l.worker;

-- 300 due retries in tn-rr-big, 20 in tn-rr-small; the worker acts for both
SELECT tn_due('tn-rr-big', 300) AS big, tn_due('tn-rr-small', 20) AS small;
-- a new session: the turn starts at the first tenant
\c
SET ROLE regress_ar_t_worker;
CALL tn_worker(34, 10);
RESET ROLE;
-- max 10: 5 each while both have due rows (tn-rr-small is not starved by
-- tn-rr-big's backlog), then tn-rr-big gets all 10, then nothing is left
SELECT big, small, count(*) AS calls, min(call) AS first_call, max(call) AS last_call
FROM (SELECT c.call, count(l.key) FILTER (WHERE l.tenant = 'tn-rr-big') AS big,
			 count(l.key) FILTER (WHERE l.tenant = 'tn-rr-small') AS small
	  FROM tn_calls c LEFT JOIN tn_leases l USING (worker, call)
	  WHERE c.worker = 'regress_ar_t_worker' GROUP BY c.call) x
GROUP BY big, small ORDER BY first_call;
SELECT * FROM tn_lease_check WHERE worker = 'regress_ar_t_worker';

-- 40 tenants with 2 due retries each, max 5: a call visits at most 16
-- tenants and leases for 5 of them; the next call goes on after the last
-- tenant visited, so that every tenant is served within 8 calls
SELECT sum(tn_due(format('tn-rr40-%s', lpad(n::text, 2, '0')), 2)) AS due
FROM generate_series(1, 40) n;
SET ROLE regress_ar_t_worker40;
CALL tn_worker(17, 5);
RESET ROLE;
SELECT c.call, c.leased, count(DISTINCT l.tenant) AS tenants, min(l.tenant) AS first_tenant,
	max(l.tenant) AS last_tenant
FROM tn_calls c LEFT JOIN tn_leases l USING (worker, call)
WHERE c.worker = 'regress_ar_t_worker40' GROUP BY c.call, c.leased ORDER BY c.call;
SELECT count(DISTINCT tenant) FILTER (WHERE call <= 8) AS served_by_call_8,
	count(DISTINCT tenant) FILTER (WHERE call BETWEEN 9 AND 16) AS served_by_calls_9_to_16
FROM tn_leases WHERE worker = 'regress_ar_t_worker40';
SELECT * FROM tn_lease_check WHERE worker = 'regress_ar_t_worker40';
-- these rows are not needed any more
DELETE FROM agentretry.events WHERE tenant LIKE 'tn-rr%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'tn-rr%';

-- an admin worker acts for every tenant, members or not: it finds the
-- tenants with due rows by walking the operations' partial indexes.
-- tn-zadm-1 .. tn-zadm-3 have 5 due retries each (of a tool of their own,
-- so that no other tenant's due rows are leased) and no member.  The
-- tenants with waiting rows that sort before them get shares they cannot
-- use, which go to the tn-zadm tenants.
SELECT name FROM agentretry.register_tool('tn_zadm_tool', 'idempotent', 'read',
	base_delay => '0', max_delay => '0', jitter => 'none', lease => '1 hour');
SELECT tn_due(t, 5, 'tn_zadm_tool') AS due
FROM unnest(ARRAY['tn-zadm-1', 'tn-zadm-2', 'tn-zadm-3']) t;
SELECT count(*) AS memberships FROM agentretry.tenant_members WHERE tenant LIKE 'tn-zadm-%';
\c
SET ROLE regress_ar_t_adminworker;
CALL tn_worker(4, 5, ARRAY['tn_zadm_tool']);
RESET ROLE;
SELECT c.call, c.leased,
	count(l.key) FILTER (WHERE l.tenant = 'tn-zadm-1') AS zadm_1,
	count(l.key) FILTER (WHERE l.tenant = 'tn-zadm-2') AS zadm_2,
	count(l.key) FILTER (WHERE l.tenant = 'tn-zadm-3') AS zadm_3
FROM tn_calls c LEFT JOIN tn_leases l USING (worker, call)
WHERE c.worker = 'regress_ar_t_adminworker' GROUP BY c.call, c.leased ORDER BY c.call;
SELECT * FROM tn_lease_check WHERE worker = 'regress_ar_t_adminworker';
-- with a tenant named, it leases that tenant's rows only, as before
SELECT tn_due('tn-zadm-4', 2, 'tn_zadm_tool') AS due;
SET ROLE regress_ar_t_adminworker;
SELECT tenant, key FROM agentretry.claim_due('w', 5, tenant => 'tn-zadm-4') ORDER BY key;
RESET ROLE;

-- with a tools filter that only tenants in the middle of the walk match:
-- tn-wk-01 .. tn-wk-30 have 2 due retries of tn_wk_x each, tn-wk-11 ..
-- tn-wk-20 also 3 of tn_wk_y each.  A worker asking for tn_wk_y with max 10
-- gets 10, 10 and 10, then nothing: the walk counts only tenants with work
-- it may lease, and a call goes on after the last tenant it took (it once
-- went on after the last one walked, and every later call came back empty)
SELECT (agentretry.register_tool(t, 'idempotent', 'read',
	base_delay => '0', max_delay => '0', jitter => 'none', lease => '1 hour')).name
FROM unnest(ARRAY['tn_wk_x', 'tn_wk_y']) t;
SELECT sum(tn_due(format('tn-wk-%s', lpad(n::text, 2, '0')), 2, 'tn_wk_x')) AS x_due
FROM generate_series(1, 30) n;
SELECT count(*) AS y_due
FROM generate_series(11, 20) n, generate_series(1, 3) i,
	agentretry.claim(format('wk-y-%s', i), '{}', 'tn_wk_y',
		format('tn-wk-%s', lpad(n::text, 2, '0'))) c,
	agentretry.fail(format('wk-y-%s', i), c.lease_token, 'transient', 'pre_execution',
		tenant => format('tn-wk-%s', lpad(n::text, 2, '0'))) f
WHERE f.action = 'retry';
UPDATE agentretry.operations SET next_attempt_at = clock_timestamp() - interval '1 hour'
	+ CASE WHEN key LIKE 'wk-y-%' THEN substr(key, 6)::integer * interval '1 second'
		   ELSE interval '0' END
WHERE tenant LIKE 'tn-wk-%' AND state = 'retry_wait';
DELETE FROM tn_calls WHERE worker = 'regress_ar_t_adminworker';
DELETE FROM tn_leases WHERE worker = 'regress_ar_t_adminworker';
\c
SET ROLE regress_ar_t_adminworker;
CALL tn_worker(4, 10, ARRAY['tn_wk_y']);
RESET ROLE;
SELECT c.call, c.leased, count(l.key) FILTER (WHERE l.key NOT LIKE 'wk-y-%') AS not_y
FROM tn_calls c LEFT JOIN tn_leases l USING (worker, call)
WHERE c.worker = 'regress_ar_t_adminworker'
GROUP BY c.call, c.leased ORDER BY c.call;
SELECT * FROM tn_lease_check WHERE worker = 'regress_ar_t_adminworker';
DELETE FROM agentretry.events WHERE tenant LIKE 'tn-wk-%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'tn-wk-%';

-- claim_verifications() round robin: tn-rv-a has 1 operation to verify,
-- tn-rv-b 12, tn-rv-c 5; max 6
SELECT agentretry.add_tenant_member('regress_ar_t_verifier', 'tn-rv-c') AS added;
CREATE FUNCTION tn_to_verify(t text, n integer, tool text DEFAULT 'tn_nonidem') RETURNS bigint
LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(1, n) i, agentretry.claim(format('v-%s',
		lpad(i::text, 3, '0')), '{}', tool, t, owner => 'tn-owner') c
	WHERE c.outcome = 'execute';
	SELECT count(*) FROM generate_series(1, n) i, agentretry.fail(format('v-%s',
		lpad(i::text, 3, '0')), 1, 'ambiguous', 'mid_execution', tenant => t) f
	WHERE f.action = 'verify';
	UPDATE agentretry.operations SET state_since = clock_timestamp() - interval '1 hour'
		+ substr(key, 3)::integer * interval '1 second'
	WHERE tenant = t AND state = 'verify';
	SELECT count(*) FROM agentretry.operations WHERE tenant = t AND state = 'verify';
$$;
SELECT tn_to_verify('tn-rv-a', 1) AS a, tn_to_verify('tn-rv-b', 12) AS b, tn_to_verify('tn-rv-c', 5) AS c;
SET ROLE regress_ar_t_verifier;
CALL tn_worker(4, 6, NULL, true);
RESET ROLE;
SELECT c.call, c.leased,
	count(l.key) FILTER (WHERE l.tenant = 'tn-rv-a') AS rv_a,
	count(l.key) FILTER (WHERE l.tenant = 'tn-rv-b') AS rv_b,
	count(l.key) FILTER (WHERE l.tenant = 'tn-rv-c') AS rv_c
FROM tn_calls c LEFT JOIN tn_leases l USING (worker, call)
WHERE c.worker = 'regress_ar_t_verifier' GROUP BY c.call, c.leased ORDER BY c.call;
SELECT * FROM tn_lease_check WHERE worker = 'regress_ar_t_verifier';

-- an admin verifier finds the tenants with operations to verify by
-- walking the tenants that need attention (dead letters and approvals
-- too), a bounded number of steps per call.  Every tenant with operations
-- to verify must be served, however many tenants with dead letters only
-- sort between them: tn-sv-00 and tn-sv-21 have 3 operations to verify
-- each, tn-sv-01 .. tn-sv-20 a dead letter each.
SELECT name FROM agentretry.register_tool('tn_sv_nonidem', 'non_idempotent', 'write',
	lease => '1 hour');
SELECT tn_to_verify(t, 3, 'tn_sv_nonidem') AS to_verify FROM unnest(ARRAY['tn-sv-00', 'tn-sv-21']) t;
SELECT count(*) AS claimed FROM generate_series(1, 20) n,
	agentretry.claim('dead', '{}', 'tn_tool', format('tn-sv-%s', lpad(n::text, 2, '0'))) c
WHERE c.outcome = 'execute';
SELECT count(*) AS dead FROM generate_series(1, 20) n,
	agentretry.fail('dead', 1, 'permanent', 'pre_execution',
		tenant => format('tn-sv-%s', lpad(n::text, 2, '0'))) f
WHERE f.action = 'dead';
\c
SET ROLE regress_ar_t_adminworker;
CALL tn_worker(10, 1, ARRAY['tn_sv_nonidem'], true);
RESET ROLE;
SELECT t AS tenant, count(l.key) > 0 AS served
FROM unnest(ARRAY['tn-sv-00', 'tn-sv-21']) t
LEFT JOIN tn_leases l ON l.tenant = t AND l.worker = 'regress_ar_t_adminworker'
GROUP BY t ORDER BY t;

--
-- the last membership removed: single-tenant again
--
SET ROLE regress_ar_t_admin;
SELECT count(*) AS memberships,
	count(*) FILTER (WHERE agentretry.remove_tenant_member(role, tenant)) AS removed
FROM agentretry.tenant_members;
RESET ROLE;
SELECT count(*) AS memberships FROM agentretry.tenant_members;
SET ROLE regress_ar_t_agent_none;
SELECT outcome FROM agentretry.claim('tn-single-3', '{}', 'tn_tool');
SELECT tenant, state FROM agentretry.lookup('tn-single-3');
SELECT tenant, state FROM agentretry.lookup('lease-h', 'tn-b');
RESET ROLE;
SET ROLE regress_ar_t_agent_ab;
SELECT tenant, state FROM agentretry.lookup('tn-single-3');
RESET ROLE;
SET ROLE regress_ar_t_op_none;
SELECT * FROM tn_rls();
RESET ROLE;
-- a first membership that rolls back leaves agentretry single-tenant
BEGIN;
SELECT agentretry.add_tenant_member('regress_ar_t_agent_a', 'tn-a') AS added;
SET ROLE regress_ar_t_agent_none;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('tn-single-3')$$);
RESET ROLE;
ROLLBACK;
SET ROLE regress_ar_t_agent_none;
SELECT tn_stmt($$SELECT tenant FROM agentretry.lookup('tn-single-3')$$);
SELECT agentretry.complete('tn-single-3', 1, '{}');
RESET ROLE;
SELECT count(*) AS memberships FROM agentretry.tenant_members;

-- remove what this file created
SELECT agentretry.flush_stats() >= 0 AS flushed;
DELETE FROM agentretry.events WHERE tenant LIKE 'tn-%' OR key LIKE 'tn-single-%';
DELETE FROM agentretry.operations WHERE tenant LIKE 'tn-%' OR key LIKE 'tn-single-%';
DELETE FROM agentretry.run_context WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.runs WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.budget_ledger WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.budgets WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.tenant_policies WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.token_floors WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.anomalies WHERE tenant LIKE 'tn-%';
DELETE FROM agentretry.stats_counts WHERE tenant LIKE 'tn-%' OR tool LIKE 'tn\_%';
DELETE FROM agentretry.tools WHERE name LIKE 'tn\_%';
SELECT count(*) AS rows_left FROM agentretry.operations WHERE tenant LIKE 'tn-%';
DROP VIEW tn_lease_check;
DROP TABLE tn_leases, tn_calls;
DROP PROCEDURE tn_worker(integer, integer, text[], boolean);
DROP FUNCTION tn_due(text, integer, text), tn_to_verify(text, integer, text), tn_fill(text),
	tn_rls(text[]), tn_true_count(text, text, boolean), tn_ack(bigint), tn_stmt(text),
	tn_digest();
REVOKE EXECUTE ON FUNCTION agentretry.lookup(text, text) FROM regress_ar_t_agent_ni;
REVOKE USAGE ON SCHEMA agentretry FROM regress_ar_t_agent_ni;
DROP ROLE regress_ar_t_agent_a, regress_ar_t_agent_b, regress_ar_t_agent_ab,
	regress_ar_t_agent_none, regress_ar_t_agent_g, regress_ar_t_agent_ni, regress_ar_t_group,
	regress_ar_t_group2, regress_ar_t_op_a, regress_ar_t_op_b, regress_ar_t_op_none,
	regress_ar_t_admin, regress_ar_t_worker, regress_ar_t_worker40, regress_ar_t_verifier,
	regress_ar_t_adminworker, regress_ar_t_nobody;
SELECT count(*) AS roles_left FROM pg_roles WHERE rolname LIKE 'regress\_ar\_t\_%';
