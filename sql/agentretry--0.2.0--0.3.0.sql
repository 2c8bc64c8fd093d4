/* agentretry--0.2.0--0.3.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION agentretry UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- 0.3.0: retry budgets, kept in a transactional ledger.
--
-- Every retry (a failure decided as retry by fail, resolve, a claim or
-- claim_due finding an expired lease, the sweep) is checked, in the
-- caller's transaction, against
--	 - the run's limit: at most max_retries retry events per run_id
--	   (agentretry.run_max_retries, default 5);
--	 - every budget defined for the operation's tenant, owner (scope user)
--	   and tool: a token bucket (capacity, refill per second, a cost per
--	   failure class) and/or a ratio budget (retries at most ratio x first
--	   attempts over ratio_window, but always at least ratio_floor).
-- A retry that a budget denies is scheduled when the budget allows it
-- again, if that is before the deadline (reason budget_wait), else
-- dead-lettered (budget_exhausted).  Debits and denials are appended to
-- budget_ledger.  Rolling the retry back rolls its debit back.
--
-- Hot budgets: a budget's tokens and counters are split over `stripes`
-- rows; a debit locks one stripe that can pay, skipping stripes other
-- transactions hold, so concurrent retries of one tenant do not queue on
-- one row for the length of their transactions.
-- ---------------------------------------------------------------------------

CREATE TYPE agentretry.budget_scope AS ENUM ('tenant', 'user', 'tool');
COMMENT ON TYPE agentretry.budget_scope IS
	'what a budget bounds: a tenant''s retries, one owner''s (the lease owner), or one tool''s';

CREATE TABLE agentretry.budgets (
	tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 128),
	scope agentretry.budget_scope NOT NULL,
	subject text NOT NULL CHECK (octet_length(subject) BETWEEN 1 AND 128),
	capacity double precision CHECK (capacity > 0 AND capacity <= 1e9),
	refill_per_sec double precision NOT NULL DEFAULT 0 CHECK (refill_per_sec >= 0 AND refill_per_sec <= 1e9),
	cost_transient double precision NOT NULL DEFAULT 1 CHECK (cost_transient > 0 AND cost_transient <= 1e6),
	cost_ambiguous double precision NOT NULL DEFAULT 2 CHECK (cost_ambiguous > 0 AND cost_ambiguous <= 1e6),
	ratio double precision CHECK (ratio > 0 AND ratio <= 100),
	ratio_window interval NOT NULL DEFAULT interval '1 minute'
		CHECK (ratio_window BETWEEN interval '1 second' AND interval '1 day'),
	ratio_floor integer NOT NULL DEFAULT 10 CHECK (ratio_floor >= 0),
	stripes integer NOT NULL DEFAULT 4 CHECK (stripes BETWEEN 1 AND 64),
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	PRIMARY KEY (tenant, scope, subject),
	CHECK (capacity IS NOT NULL OR ratio IS NOT NULL)
);
COMMENT ON TABLE agentretry.budgets IS
	'retry budgets: a token bucket (capacity, refill, cost by failure class) and/or a ratio of retries to first attempts, per tenant, owner or tool';
COMMENT ON COLUMN agentretry.budgets.ratio IS
	'retries allowed per first attempt over ratio_window (0.1 = 10 %); NULL: no ratio budget';
COMMENT ON COLUMN agentretry.budgets.ratio_floor IS
	'retries always allowed per ratio_window, whatever the ratio (so that a quiet tool can still retry)';
COMMENT ON COLUMN agentretry.budgets.stripes IS
	'rows the budget is split over, so that concurrent debits lock different rows';
SELECT pg_catalog.pg_extension_config_dump('agentretry.budgets', '');

-- A budget's live state, one row per stripe: its share of the tokens (lazy
-- refill: tokens as of refilled_at) and its share of the ratio counters
-- (a sliding window of two fixed windows: the current one from win_start
-- and the one before).
CREATE TABLE agentretry.budget_stripes (
	tenant text NOT NULL,
	scope agentretry.budget_scope NOT NULL,
	subject text NOT NULL,
	stripe integer NOT NULL,
	tokens double precision NOT NULL,
	refilled_at timestamptz NOT NULL,
	win_start timestamptz NOT NULL,
	cur_first bigint NOT NULL DEFAULT 0,
	cur_retries bigint NOT NULL DEFAULT 0,
	prev_first bigint NOT NULL DEFAULT 0,
	prev_retries bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (tenant, scope, subject, stripe),
	FOREIGN KEY (tenant, scope, subject) REFERENCES agentretry.budgets ON DELETE CASCADE
);
COMMENT ON TABLE agentretry.budget_stripes IS
	'live state of each budget, split over stripes: tokens as of refilled_at, and first attempts and retries of the current and previous ratio window';
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_stripes', '');

CREATE TABLE agentretry.budget_ledger (
	tenant text NOT NULL,
	id bigint GENERATED ALWAYS AS IDENTITY,
	at timestamptz NOT NULL,
	scope text NOT NULL,
	subject text NOT NULL,
	key text NOT NULL,
	amount double precision NOT NULL,
	balance_after double precision,
	reason text NOT NULL,
	failure_class agentretry.failure_class,
	retry_at timestamptz,
	PRIMARY KEY (tenant, id)
);
COMMENT ON TABLE agentretry.budget_ledger IS
	'append-only: every retry debit (reason debit) and every denial (reason denied_tokens, denied_ratio, denied_run, denied_held), with the balance after it';
COMMENT ON COLUMN agentretry.budget_ledger.scope IS
	'tenant, user or tool, or run for the per-run limit';
COMMENT ON COLUMN agentretry.budget_ledger.balance_after IS
	'tokens in the whole budget after this row (all stripes, refilled to at); NULL for ratio-only budgets and run rows';
CREATE INDEX budget_ledger_subject ON agentretry.budget_ledger (tenant, scope, subject, at);
CREATE INDEX budget_ledger_at ON agentretry.budget_ledger (at);
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('agentretry.budget_ledger_id_seq', '');

-- The per-run limit: retry events so far per run_id.  The sweep drops a
-- run's counter once it has been idle for agentretry.event_retention.
CREATE TABLE agentretry.run_retries (
	tenant text NOT NULL,
	run_id text NOT NULL,
	retries integer NOT NULL,
	updated_at timestamptz NOT NULL,
	PRIMARY KEY (tenant, run_id)
);
CREATE INDEX run_retries_updated_at ON agentretry.run_retries (updated_at);
COMMENT ON TABLE agentretry.run_retries IS
	'retry events per run, bounded by agentretry.run_max_retries';
SELECT pg_catalog.pg_extension_config_dump('agentretry.run_retries', '');

-- The sweep purges ledger rows with the events' retention.
ALTER TYPE agentretry.sweep_summary ADD ATTRIBUTE ledger_purged integer;

-- Backends cache whether any budget exists, so that operations without
-- budgets pay nothing; every change tells them to ask again.
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON agentretry.budgets FOR EACH STATEMENT EXECUTE FUNCTION agentretry.invalidate_cache();

CREATE FUNCTION agentretry.set_budget(
	tenant text,
	scope agentretry.budget_scope,
	subject text,
	capacity double precision DEFAULT NULL,
	refill_per_sec double precision DEFAULT 0,
	cost_transient double precision DEFAULT 1,
	cost_ambiguous double precision DEFAULT 2,
	ratio double precision DEFAULT NULL,
	ratio_window interval DEFAULT '1 minute',
	ratio_floor integer DEFAULT 10,
	stripes integer DEFAULT 4)
RETURNS agentretry.budgets
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r agentretry.budgets;
	t text := coalesce(set_budget.tenant, 'default');
	now timestamptz := clock_timestamp();
BEGIN
	IF scope IS NULL OR subject IS NULL OR refill_per_sec IS NULL OR cost_transient IS NULL
	   OR cost_ambiguous IS NULL OR ratio_window IS NULL OR ratio_floor IS NULL OR stripes IS NULL THEN
		RAISE EXCEPTION 'scope, subject, refill_per_sec, costs, ratio_window, ratio_floor and stripes must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(t) NOT BETWEEN 1 AND 128 OR octet_length(subject) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant and subject must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF scope = 'tenant' AND subject IS DISTINCT FROM t THEN
		RAISE EXCEPTION 'the subject of a tenant budget is its tenant'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('tenant is %s, subject is %s.', t, subject);
	END IF;
	IF capacity IS NULL AND ratio IS NULL THEN
		RAISE EXCEPTION 'a budget needs a capacity, a ratio, or both'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF capacity IS NOT NULL AND NOT (capacity > 0 AND capacity <= 1e9) THEN
		RAISE EXCEPTION 'capacity must be positive and at most 1e9'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('capacity is %s.', capacity);
	END IF;
	IF NOT (refill_per_sec >= 0 AND refill_per_sec <= 1e9) THEN
		RAISE EXCEPTION 'refill_per_sec must be between 0 and 1e9'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('refill_per_sec is %s.', refill_per_sec);
	END IF;
	IF NOT (cost_transient > 0 AND cost_transient <= 1e6 AND cost_ambiguous > 0 AND cost_ambiguous <= 1e6) THEN
		RAISE EXCEPTION 'costs must be positive and at most 1e6'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ratio IS NOT NULL AND NOT (ratio > 0 AND ratio <= 100) THEN
		RAISE EXCEPTION 'ratio must be positive and at most 100'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('ratio is %s.', ratio);
	END IF;
	IF ratio_window NOT BETWEEN interval '1 second' AND interval '1 day' THEN
		RAISE EXCEPTION 'ratio_window must be between 1 second and 1 day'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ratio_floor < 0 THEN
		RAISE EXCEPTION 'ratio_floor must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF stripes NOT BETWEEN 1 AND 64 THEN
		RAISE EXCEPTION 'stripes must be between 1 and 64'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- a retry is paid from one stripe: each must be able to hold the dearest
	IF capacity IS NOT NULL AND capacity / stripes < greatest(cost_transient, cost_ambiguous) THEN
		RAISE EXCEPTION 'capacity must be at least stripes times the largest cost'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('capacity %s over %s stripes cannot pay a retry costing %s.',
								  capacity, stripes, greatest(cost_transient, cost_ambiguous)),
				  HINT = 'Raise capacity or lower stripes.';
	END IF;

	INSERT INTO agentretry.budgets AS b
		(tenant, scope, subject, capacity, refill_per_sec, cost_transient, cost_ambiguous,
		 ratio, ratio_window, ratio_floor, stripes)
	VALUES
		(t, set_budget.scope, set_budget.subject, set_budget.capacity, set_budget.refill_per_sec,
		 set_budget.cost_transient, set_budget.cost_ambiguous, set_budget.ratio,
		 set_budget.ratio_window, set_budget.ratio_floor, set_budget.stripes)
	ON CONFLICT ON CONSTRAINT budgets_pkey DO UPDATE SET
		capacity = excluded.capacity,
		refill_per_sec = excluded.refill_per_sec,
		cost_transient = excluded.cost_transient,
		cost_ambiguous = excluded.cost_ambiguous,
		ratio = excluded.ratio,
		ratio_window = excluded.ratio_window,
		ratio_floor = excluded.ratio_floor,
		stripes = excluded.stripes,
		updated_at = now
	RETURNING b.* INTO r;

	-- replacing a budget starts it full, with fresh counters
	DELETE FROM agentretry.budget_stripes s
	WHERE s.tenant = r.tenant AND s.scope = r.scope AND s.subject = r.subject;
	INSERT INTO agentretry.budget_stripes (tenant, scope, subject, stripe, tokens, refilled_at, win_start)
	SELECT r.tenant, r.scope, r.subject, i, coalesce(r.capacity / r.stripes, 0), now, now
	FROM generate_series(0, r.stripes - 1) AS i;
	RETURN r;
END
$$;
COMMENT ON FUNCTION agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer) IS
	'set or replace a retry budget for a tenant, an owner (scope user) or a tool; it starts full';

CREATE FUNCTION agentretry.drop_budget(tenant text, scope agentretry.budget_scope, subject text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text := coalesce(drop_budget.tenant, 'default');
BEGIN
	IF scope IS NULL OR subject IS NULL THEN
		RAISE EXCEPTION 'scope and subject must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(t) NOT BETWEEN 1 AND 128 OR octet_length(subject) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'tenant and subject must be 1 to 128 bytes long'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM agentretry.budgets b
	WHERE b.tenant = t AND b.scope = drop_budget.scope AND b.subject = drop_budget.subject;
	RETURN FOUND;
END
$$;
COMMENT ON FUNCTION agentretry.drop_budget(text, agentretry.budget_scope, text) IS
	'remove a retry budget (its ledger rows stay); false when there was none';

-- ---------------------------------------------------------------------------
-- budget_status: one row per budget, its balance refilled to now
-- ---------------------------------------------------------------------------
CREATE VIEW agentretry.budget_status AS
SELECT b.tenant, b.scope, b.subject, b.capacity,
	   CASE WHEN b.capacity IS NOT NULL THEN
		   (SELECT sum(least(b.capacity / b.stripes,
							 s.tokens + b.refill_per_sec / b.stripes
									  * extract(epoch FROM pg_catalog.clock_timestamp() - s.refilled_at)::float8))
			FROM agentretry.budget_stripes s
			WHERE s.tenant = b.tenant AND s.scope = b.scope AND s.subject = b.subject)
	   END AS balance,
	   b.refill_per_sec, b.cost_transient, b.cost_ambiguous,
	   b.ratio, b.ratio_window, b.ratio_floor,
	   l.debits_last_hour, l.tokens_last_hour, l.denials_last_hour, l.last_denial,
	   b.stripes, b.updated_at
FROM agentretry.budgets b
LEFT JOIN LATERAL (
	SELECT count(*) FILTER (WHERE g.reason = 'debit') AS debits_last_hour,
		   coalesce(sum(g.amount) FILTER (WHERE g.reason = 'debit'), 0) AS tokens_last_hour,
		   count(*) FILTER (WHERE g.reason LIKE 'denied%') AS denials_last_hour,
		   (SELECT max(d.at) FROM agentretry.budget_ledger d
			WHERE d.tenant = b.tenant AND d.scope = b.scope::text AND d.subject = b.subject
			  AND d.reason LIKE 'denied%') AS last_denial
	FROM agentretry.budget_ledger g
	WHERE g.tenant = b.tenant AND g.scope = b.scope::text AND g.subject = b.subject
	  AND g.at > pg_catalog.clock_timestamp() - interval '1 hour') l ON true;
COMMENT ON VIEW agentretry.budget_status IS
	'per budget: capacity, balance now, refill rate, costs, ratio, debits and denials in the last hour, last denial';

-- ---------------------------------------------------------------------------
-- privileges
-- ---------------------------------------------------------------------------
REVOKE ALL ON agentretry.budgets, agentretry.budget_stripes, agentretry.budget_ledger,
	agentretry.run_retries, agentretry.budget_status FROM PUBLIC;
REVOKE ALL ON FUNCTION
	agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer),
	agentretry.drop_budget(text, agentretry.budget_scope, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	agentretry.set_budget(text, agentretry.budget_scope, text, double precision, double precision, double precision, double precision, double precision, interval, integer, integer),
	agentretry.drop_budget(text, agentretry.budget_scope, text)
TO agentretry_admin;
GRANT SELECT ON agentretry.budgets TO agentretry_agent, agentretry_operator, agentretry_admin;
GRANT SELECT ON agentretry.budget_stripes, agentretry.budget_ledger, agentretry.run_retries,
	agentretry.budget_status
TO agentretry_operator;
