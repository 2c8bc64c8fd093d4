--
-- setup: install the extension and the small functions the later files use
--
CREATE EXTENSION agentretry;

SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'agentretry';

-- Runs one statement and reports how it ended: 'ok', or its SQLSTATE and
-- primary message (never the source location, which changes with every
-- edit of the C code).  With detail, errdetail is appended.
CREATE FUNCTION try_sql(stmt text, with_detail boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	state text;
	msg text;
	det text;
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL;
	IF with_detail AND det <> '' THEN
		RETURN state || ': ' || msg || ' / ' || det;
	END IF;
	RETURN state || ': ' || msg;
END
$$;

-- A fingerprint of everything agentretry stores.  SECURITY DEFINER so that
-- roles without any privilege on agentretry can still be checked.
CREATE FUNCTION data_digest()
RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT md5(
		coalesce((SELECT string_agg(o::text, E'\n' ORDER BY o.tenant, o.key)
				  FROM agentretry.operations o), '') || E'\f' ||
		coalesce((SELECT string_agg(e::text, E'\n' ORDER BY e.tenant, e.id)
				  FROM agentretry.events e), '') || E'\f' ||
		coalesce((SELECT string_agg(t::text, E'\n' ORDER BY t.name)
				  FROM agentretry.tools t), '') || E'\f' ||
		coalesce((SELECT string_agg(r::text, E'\n' ORDER BY r.tenant, r.run_id)
				  FROM agentretry.runs r), '') || E'\f' ||
		coalesce((SELECT string_agg(c::text, E'\n' ORDER BY c.tenant, c.run_id, c.version)
				  FROM agentretry.run_context c), '') || E'\f' ||
		coalesce((SELECT string_agg(l::text, E'\n' ORDER BY l.tenant, l.id)
				  FROM agentretry.budget_ledger l), ''))
$$;

-- Runs a statement that must fail and reports its SQLSTATE and message,
-- followed by whether the stored data is exactly as it was before.
CREATE FUNCTION expect_error(stmt text, with_detail boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := data_digest();
	outcome text := try_sql(stmt, with_detail);
BEGIN
	RETURN outcome || CASE WHEN data_digest() = before
						   THEN ' (unchanged)' ELSE ' (DATA CHANGED)' END;
END
$$;

-- Runs a statement and says how it ended ('ok: ' and its single value, or
-- SQLSTATE, message and detail) and whether anything stored changed.
CREATE FUNCTION try_stmt(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before text := data_digest();
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
	RETURN res || CASE WHEN data_digest() = before THEN ' (unchanged)' ELSE ' (DATA CHANGED)' END;
END
$$;

GRANT EXECUTE ON FUNCTION try_sql(text, boolean), data_digest(),
	expect_error(text, boolean), try_stmt(text) TO PUBLIC;

-- the checks can fail: a change is seen, and so is a statement that works
SELECT expect_error($$SELECT agentretry.register_tool('setup_probe', 'idempotent', 'read')$$);
SELECT expect_error($$SELECT agentretry.op_hash('{}')$$);
SELECT expect_error($$SELECT 1 / 0$$);
