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
