-- Tenant policies: the merge tier default < tool < tenant ('*') < tenant
-- and tool, field by field, for every field and every combination of the
-- three levels being set; and the merged policy reaching the decisions,
-- the lease and deadline of a new claim, the TTL of a completion, and the
-- approval gate of a new claim.
BEGIN;
-- every claim here runs inside this file's transaction, which is
-- rolled back at the end: no lease needs to outlive it
SET LOCAL agentretry.allow_uncommitted_leases = on;
SET LOCAL search_path = public, agentretry;
SELECT plan(275);

-- One distinct value per field and level, so that the value shows which
-- level it came from.  The tool is a write (tier 2): its defaults are
-- max_attempts 2, 1 s / 30 s, multiplier 2, full jitter, no deadline, and
-- lease and TTL from the GUCs.
CREATE TEMP TABLE levels (field text, tool_v text, tenant_v text, tenant_tool_v text, default_v text)
ON COMMIT DROP;
INSERT INTO levels VALUES
	('max_attempts', '4', '5', '7', '2'),
	('base_delay', '00:00:02', '00:00:03', '00:00:04', '00:00:01'),
	('max_delay', '00:01:00', '00:02:00', '00:03:00', '00:00:30'),
	('multiplier', '3', '4', '5', '2'),
	('jitter', 'none', 'equal', 'decorrelated', 'full'),
	('deadline', '01:00:00', '02:00:00', '03:00:00', NULL),
	('lease', '00:00:10', '00:00:20', '00:00:30', '00:05:00'),
	('ttl', '1 day', '2 days', '3 days', '7 days'),
	('compensate_tool', 'undo_a', 'undo_b', 'undo_c', NULL);

-- Set field at the levels of mask (1 tool, 2 tenant-wide, 4 tenant+tool),
-- clearing the others.
CREATE FUNCTION pg_temp.apply_levels(f text, mask int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	l levels;
BEGIN
	SELECT * INTO l FROM levels WHERE field = f;
	IF mask & 1 <> 0 THEN
		EXECUTE format('SELECT agentretry.register_tool(%L, %L, %L, %I => %L)',
					   'pm_tool', 'idempotent', 'write', f, l.tool_v);
	ELSE
		PERFORM agentretry.register_tool('pm_tool', 'idempotent', 'write');
	END IF;
	PERFORM agentretry.drop_tenant_policy('pm', NULL);
	PERFORM agentretry.drop_tenant_policy('pm', 'pm_tool');
	IF mask & 2 <> 0 THEN
		EXECUTE format('SELECT agentretry.set_tenant_policy(%L, NULL, %I => %L)', 'pm', f, l.tenant_v);
	END IF;
	IF mask & 4 <> 0 THEN
		EXECUTE format('SELECT agentretry.set_tenant_policy(%L, %L, %I => %L)', 'pm', 'pm_tool', f, l.tenant_tool_v);
	END IF;
END
$$;

-- the highest level set wins, field by field
CREATE FUNCTION pg_temp.expected(f text, mask int, OUT value text, OUT source text)
LANGUAGE sql AS $$
	SELECT CASE WHEN mask & 4 <> 0 THEN l.tenant_tool_v
				WHEN mask & 2 <> 0 THEN l.tenant_v
				WHEN mask & 1 <> 0 THEN l.tool_v
				ELSE l.default_v END,
		   CASE WHEN mask & 4 <> 0 THEN 'tenant_tool'
				WHEN mask & 2 <> 0 THEN 'tenant'
				WHEN mask & 1 <> 0 THEN 'tool'
				ELSE 'default' END
	FROM levels l WHERE l.field = f
$$;

CREATE FUNCTION pg_temp.check_merge(f text, mask int) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
	e record;
	got record;
BEGIN
	PERFORM pg_temp.apply_levels(f, mask);
	SELECT * INTO e FROM pg_temp.expected(f, mask);
	SELECT p.value, p.source INTO got FROM agentretry.effective_policy('pm', 'pm_tool') p WHERE p.field = f;
	RETURN NEXT is(got.value, e.value, format('%s with levels %s: value', f, mask));
	RETURN NEXT is(got.source, e.source, format('%s with levels %s: source', f, mask));
END
$$;

-- 9 fields x 8 combinations x (value, source) = 144
SELECT pg_temp.check_merge(l.field, m.mask)
FROM levels l, generate_series(0, 7) AS m(mask)
ORDER BY l.field, m.mask;

-- setting one field at every level leaves every other field at its default
CREATE FUNCTION pg_temp.others_default(f text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_temp.apply_levels(f, 7);
	RETURN is((SELECT count(*) FROM agentretry.effective_policy('pm', 'pm_tool') p
			   WHERE p.field NOT IN (f, 'idempotency', 'side_effect') AND p.source <> 'default'),
			  0::bigint, format('only %s is overridden', f));
END
$$;
SELECT pg_temp.others_default(field) FROM levels ORDER BY field;

-- requires_approval is a boolean, so no level can have a value of its own.
-- For each tier default (write: false, destructive: true) and every
-- combination of levels set, the highest level set holds top and the lower
-- levels set hold NOT top, once with top true and once false: the merged
-- value is always the highest level's, also where it goes back to the tier
-- default over a lower level; and the first claim of a new key follows it:
-- approval (awaiting_approval) or execute (in_progress).
CREATE FUNCTION pg_temp.apply_approval(side side_effect_class, mask int, top boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	hi int := CASE WHEN mask & 4 <> 0 THEN 4 WHEN mask & 2 <> 0 THEN 2 WHEN mask & 1 <> 0 THEN 1 ELSE 0 END;
BEGIN
	PERFORM agentretry.register_tool('pa_tool', 'idempotent', side,
		requires_approval => CASE WHEN mask & 1 = 0 THEN NULL WHEN hi = 1 THEN top ELSE NOT top END);
	PERFORM agentretry.drop_tenant_policy('pa', NULL);
	PERFORM agentretry.drop_tenant_policy('pa', 'pa_tool');
	IF mask & 2 <> 0 THEN
		PERFORM agentretry.set_tenant_policy('pa', NULL,
			requires_approval => CASE WHEN hi = 2 THEN top ELSE NOT top END);
	END IF;
	IF mask & 4 <> 0 THEN
		PERFORM agentretry.set_tenant_policy('pa', 'pa_tool', requires_approval => top);
	END IF;
END
$$;

CREATE FUNCTION pg_temp.check_approval(side side_effect_class, mask int, top boolean) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
	want boolean := CASE WHEN mask = 0 THEN side = 'destructive' ELSE top END;
	want_source text := CASE WHEN mask & 4 <> 0 THEN 'tenant_tool'
							 WHEN mask & 2 <> 0 THEN 'tenant'
							 WHEN mask & 1 <> 0 THEN 'tool'
							 ELSE 'default' END;
	k text := format('pa-%s-%s-%s', side, mask, top);
	got record;
	answer text;
	label text := format('requires_approval of a %s tool with levels %s', side, mask)
		|| CASE WHEN mask > 0 THEN format(', the highest level %s', CASE WHEN top THEN 'true' ELSE 'false' END) ELSE '' END;
BEGIN
	PERFORM pg_temp.apply_approval(side, mask, top);
	SELECT p.value, p.source INTO got FROM agentretry.effective_policy('pa', 'pa_tool') p
	WHERE p.field = 'requires_approval';
	RETURN NEXT is(got.value, want::text, label || ': value');
	RETURN NEXT is(got.source, want_source, label || ': source');
	answer := (agentretry.claim(k, '{}', 'pa_tool', tenant => 'pa')).outcome;
	answer := answer || '/' || (agentretry.lookup(k, 'pa')).state;
	RETURN NEXT is(answer,
				   CASE WHEN want THEN 'approval/awaiting_approval' ELSE 'execute/in_progress' END,
				   label || ': a new key''s claim');
END
$$;

-- 2 tiers x (no level + 7 combinations x 2 values of top) x (value, source, claim) = 90
SELECT pg_temp.check_approval(s.side, m.mask, t.top)
FROM unnest(ARRAY['write', 'destructive']::side_effect_class[]) AS s(side),
	 generate_series(0, 7) AS m(mask),
	 unnest(ARRAY[true, false]) AS t(top)
WHERE m.mask > 0 OR t.top
ORDER BY s.side, m.mask, t.top;

-- setting requires_approval at every level leaves every other field at its default
SELECT pg_temp.apply_approval('write', 7, true);
SELECT is((SELECT count(*) FROM effective_policy('pa', 'pa_tool') p
		   WHERE p.field NOT IN ('requires_approval', 'idempotency', 'side_effect') AND p.source <> 'default'),
		  0::bigint, 'only requires_approval is overridden');

-- a tenant's override of the gate does not leak into another tenant
SELECT pg_temp.apply_approval('destructive', 2, false);
SELECT is((SELECT value || '/' || source FROM effective_policy('pa-other', 'pa_tool') WHERE field = 'requires_approval'),
		  'true/default', 'another tenant keeps the destructive tier''s gate');
SELECT is((SELECT outcome::text FROM claim('pa-leak', '{}', 'pa_tool', tenant => 'pa-other')), 'approval',
		  'and its claim of a new key waits for approval');

-- the gate is decided at the first claim: a later change of the policy
-- neither releases an operation awaiting approval nor gates one in flight
SELECT pg_temp.apply_approval('write', 4, true);
SELECT is((SELECT outcome::text FROM claim('pa-late', '{}', 'pa_tool', tenant => 'pa')), 'approval',
		  'a write tool gated by the tenant+tool override: approval');
SELECT pg_temp.apply_approval('write', 4, false);
SELECT is((SELECT outcome::text FROM claim('pa-late', '{}', 'pa_tool', tenant => 'pa')), 'approval',
		  'the override set to false: a claim of the operation still answers approval');
SELECT is((SELECT state::text || '/' || attempts FROM lookup('pa-late', 'pa')), 'awaiting_approval/0',
		  'and it still awaits approval');
SELECT is((SELECT d.action::text || '/' || d.reason
		   FROM claim('pa-flight', '{}', 'pa_tool', tenant => 'pa') c,
				fail('pa-flight', c.lease_token, 'transient', 'pre_execution', tenant => 'pa') d),
		  'retry/not_executed', 'an ungated operation executes and fails before execution');
SELECT pg_temp.apply_approval('write', 4, true);
UPDATE operations SET next_attempt_at = clock_timestamp() - interval '1 millisecond'
WHERE tenant = 'pa' AND key = 'pa-flight';
SELECT is((SELECT outcome::text || '/' || attempt FROM claim('pa-flight', '{}', 'pa_tool', tenant => 'pa')),
		  'execute/2', 'the gate set meanwhile does not hold up its retry');

-- idempotency and side effect belong to the tool
SELECT results_eq(
	$$SELECT field, value, source FROM effective_policy('pm', 'pm_tool')
	  WHERE field IN ('idempotency', 'side_effect') ORDER BY field$$,
	$$VALUES ('idempotency', 'idempotent', 'tool'), ('side_effect', 'write', 'tool')$$,
	'a registered tool gives idempotency and side effect');
SELECT results_eq(
	$$SELECT field, value, source FROM effective_policy('pm', 'pm_unregistered')
	  WHERE field IN ('idempotency', 'side_effect', 'max_attempts') ORDER BY field$$,
	$$VALUES ('idempotency', 'unknown', 'default'), ('max_attempts', '2', 'default'),
			 ('side_effect', 'write', 'default')$$,
	'an unregistered tool is unknown / write with tier-2 defaults');
SELECT is((SELECT count(*) FROM effective_policy('pm', 'pm_tool')), 12::bigint,
		  'effective_policy has one row per field');
SELECT results_eq(
	$$SELECT field, value, source FROM effective_policy('pm', 'pm_tool') WITH ORDINALITY ORDER BY ordinality DESC LIMIT 1$$,
	$$VALUES ('requires_approval', 'false', 'default')$$,
	'the last row is requires_approval');

-- a tenant's override does not leak into another tenant
SELECT pg_temp.apply_levels('max_attempts', 6);
SELECT is((SELECT value || '/' || source FROM effective_policy('other', 'pm_tool') WHERE field = 'max_attempts'),
		  '2/default', 'another tenant keeps the default');
SELECT is((SELECT value || '/' || source FROM effective_policy(tool => 'pm_tool') WHERE field = 'max_attempts'),
		  '2/default', 'tenant NULL is the default tenant');

-- drop_tenant_policy says whether there was something to drop
SELECT is(drop_tenant_policy('pm', 'pm_tool'), true, 'drop an existing override');
SELECT is(drop_tenant_policy('pm', 'pm_tool'), false, 'drop a missing override');
SELECT is(drop_tenant_policy('pm'), true, 'drop the tenant-wide override');

-- ---------------------------------------------------------------------------
-- the merged policy is what the extension uses
-- ---------------------------------------------------------------------------
SELECT register_tool('pm_read', 'idempotent', 'read', base_delay => '0', max_delay => '0');
SELECT set_tenant_policy('pm2', 'pm_read', max_attempts => 2, lease => '43 seconds');
SELECT set_tenant_policy('pm2', lease => '42 seconds', deadline => '1 hour', ttl => '5 days');

-- max_attempts 2 for tenant pm2 (the read tier would allow 6)
SELECT is((SELECT d.action::text || '/' || d.reason
		   FROM claim('pm-a', '{}', 'pm_read', tenant => 'pm2') c,
				fail('pm-a', c.lease_token, 'transient', 'pre_execution', tenant => 'pm2') d),
		  'retry/not_executed', 'first failure retries');
SELECT is((SELECT outcome::text || '/' || attempt FROM claim('pm-a', '{}', 'pm_read', tenant => 'pm2')),
		  'execute/2', 'the retry is due at once (zero backoff)');
SELECT is((SELECT action::text || '/' || reason FROM fail('pm-a', 2, 'transient', 'pre_execution', tenant => 'pm2')),
		  'dead/attempts_exhausted', 'the tenant''s max_attempts ends it at attempt 2');
SELECT is((SELECT d.action::text
		   FROM claim('pm-b', '{}', 'pm_read') c,
				fail('pm-b', c.lease_token, 'transient', 'pre_execution') d),
		  'retry', 'the default tenant is not affected');

-- lease: tenant+tool (43 s) beats tenant-wide (42 s); deadline from the tenant
SELECT claim('pm-c', '{}', 'pm_read', tenant => 'pm2');
SELECT is((SELECT lease_expires_at - first_attempt_at FROM lookup('pm-c', 'pm2')),
		  interval '43 seconds', 'a new claim''s lease comes from the tenant+tool override');
SELECT is((SELECT deadline - first_attempt_at FROM lookup('pm-c', 'pm2')),
		  interval '1 hour', 'the deadline of a new claim comes from the tenant-wide override');
SELECT complete('pm-c', 1, tenant => 'pm2');
SELECT is((SELECT expires_at - completed_at FROM lookup('pm-c', 'pm2')),
		  interval '5 days', 'a completion''s TTL comes from the tenant-wide override');
SELECT is((SELECT expires_at - completed_at FROM lookup('pm-a', 'pm2')),
		  interval '5 days', 'a dead-letter''s TTL too');

-- a policy change reaches an operation in flight at its next decision
SELECT claim('pm-d', '{}', 'pm_read', tenant => 'pm2');
SELECT set_tenant_policy('pm2', 'pm_read', max_attempts => 1, lease => '43 seconds');
SELECT is((SELECT action::text || '/' || reason FROM fail('pm-d', 1, 'transient', 'pre_execution', tenant => 'pm2')),
		  'dead/attempts_exhausted', 'a lowered max_attempts applies to an operation in flight');

-- validation is register_tool's, and a rejected call changes nothing
CREATE TEMP TABLE policies_before ON COMMIT DROP AS SELECT * FROM tenant_policies;
SELECT throws_ok($$SELECT set_tenant_policy('pm2', 'pm_read', max_attempts => 0)$$,
				 '22023', 'max_attempts must be at least 1', 'max_attempts 0');
SELECT throws_ok($$SELECT set_tenant_policy('pm2', lease => '0.5 seconds')$$,
				 '22023', 'lease must be between 1 second and 1 day', 'lease too short');
SELECT throws_ok($$SELECT set_tenant_policy('pm2', base_delay => '10 seconds', max_delay => '1 second')$$,
				 '22023', 'max_delay must not be less than base_delay', 'cap below base');
SELECT throws_ok($$SELECT set_tenant_policy(repeat('t', 129))$$,
				 '22023', 'tenant must be 1 to 128 bytes long', 'tenant too long');
SELECT set_eq('SELECT * FROM agentretry.tenant_policies', 'SELECT * FROM policies_before',
			  'rejected calls change no policy');
SELECT throws_ok($$SELECT register_tool('*', 'idempotent', 'read')$$,
				 '22023', 'tool name "*" is reserved', 'the tool name * is reserved');

SELECT * FROM finish();
ROLLBACK;
