-- raw_floor.sql
--
-- The floor of the benchmark: the least a program could do to remember
-- that a key was taken and what it returned, with plain SQL on a minimal
-- table (INSERT ... ON CONFLICT to take a key, UPDATE to record the
-- result, a primary-key SELECT to read it back).  No fingerprint, lease,
-- fencing or validation.

CREATE TABLE raw_operations (
	key text PRIMARY KEY,
	state text,
	result jsonb
);

-- The floor of the retry cycle: the least a program could do to run
-- retries as a queue.  A key is taken, marked waiting with the time it is
-- due, picked up by the oldest-due-first SELECT ... FOR UPDATE SKIP LOCKED
-- that every hand-written queue uses, and marked done.  The partial index
-- holds only the waiting rows, like agentretry's operations_retry_due.  No tenant, fingerprint, lease expiry, fencing
-- token, attempt count, backoff, deadline or event.
CREATE TABLE raw_retries (
	key text PRIMARY KEY,
	state text NOT NULL,
	next_at timestamptz,
	result jsonb
);
CREATE INDEX raw_retries_due ON raw_retries (next_at) WHERE state = 'retry_wait';
