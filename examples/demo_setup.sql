-- Databases and roles for examples/agent_demo.py, run by examples/demo.sh as
-- a superuser on a throwaway cluster:
--   psql -X -v ON_ERROR_STOP=1 -d postgres -f examples/demo_setup.sql

-- The email provider keeps its records in a database of its own: what it
-- writes commits on its own connections, independently of agentretry, like
-- any external API.
CREATE DATABASE provider;
CREATE DATABASE agentdemo;

-- The agent workers, and the retry workers, log in with a role that holds
-- nothing but agentretry_agent: claim, complete, fail, resolve, heartbeat,
-- release, claim_due.
CREATE ROLE demo_agent LOGIN;

-- The sweeper logs in with a role of its own.  sweep() is granted to
-- agentretry_operator, not to agents: it decides other workers' expired
-- leases and purges rows, which no agent should be able to do at will.  In
-- production the pg_cron job runs as the role that scheduled it, which
-- needs the same grant.  The demo also reads agentretry.operations as this
-- role to know when every task is accounted for.
CREATE ROLE demo_operator LOGIN;

\connect provider

-- One row per email actually sent.  The idempotency key is recorded (so the
-- provider can answer "did you send K?") but not unique: like many APIs,
-- this one does not deduplicate, so two requests with one key send twice.
CREATE TABLE sent_emails (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	idempotency_key text NOT NULL,
	recipient text NOT NULL,
	subject text NOT NULL,
	sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX sent_emails_key ON sent_emails (idempotency_key);

\connect agentdemo

CREATE EXTENSION agentretry;
GRANT agentretry_agent TO demo_agent;
GRANT agentretry_operator TO demo_operator;

-- Trace claims, replays and completions too, not only the decisions, so
-- that the demo can show a key's whole story from agentretry.events.
ALTER DATABASE agentdemo SET agentretry.trace_all = on;

-- Sending an email is a write that the provider cannot deduplicate, hence
-- non_idempotent: a failure that may have happened after the email went out
-- is never blindly retried, it is verified with the provider first.
-- max_attempts stays at the write tier's default (2).  The lease is short
-- so that the leases of killed workers expire, and are decided by the
-- sweep or taken over by the next claim, within the demo; a real tool
-- would use the time its call can take.
SELECT name, idempotency, side_effect, lease
FROM agentretry.register_tool(
	name => 'send_email',
	idempotency => 'non_idempotent',
	side_effect => 'write',
	base_delay => '200 milliseconds',
	max_delay => '2 seconds',
	lease => '2 seconds');
