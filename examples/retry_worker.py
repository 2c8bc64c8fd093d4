#!/usr/bin/python3
"""A retry worker: runs the tool calls that agentretry scheduled for a retry.

    python3 examples/retry_worker.py --dbname app [--owner NAME] [--batch N] [--poll S]
    python3 examples/retry_worker.py --dbname agentdemo --self-test [--setup-user postgres]

A failed attempt that may be retried is recorded by agentretry as
retry_wait, due at next_attempt_at.  This worker leases due retries with
agentretry.claim_due(), runs each one like the execute answer of a claim
(the key is the provider's idempotency key), and records the outcome with
complete() or fail(), giving the failure class so that agentretry decides
what comes next.  When nothing is due it sleeps until the sweep's NOTIFY
agentretry or until --poll seconds have passed.  Any number of workers may
run at once: claim_due skips rows that another worker holds.

The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
...) and --dbname; the role needs agentretry_agent.  A worker only leases
the tools it can run (TOOLS below).

--self-test runs against a scratch database (the demo's agentdemo): as
--setup-user (a superuser, or a role with agentretry_admin) it registers a
flaky idempotent tool fetch_quote, creates 20 operations whose first
attempt failed, runs two workers until every operation is terminal, then
prints each operation's attempts and the gaps between a failure and the
next attempt, from agentretry.events, and checks them: each operation ended
as the seeded fault plan says, and no retry started before the delay its
decision scheduled.  Exits non-zero on any violation.
"""

import argparse
import collections
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import time

import psycopg2


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

class ToolError(Exception):
    """A failure the tool understood; failure is agentretry's failure class.

    phase says how far the call got (pre_execution, mid_execution,
    post_execution; None: unknown), code is a short reason code, and
    retry_after a delay the provider asked for (Retry-After), in seconds.
    """

    failure = None

    def __init__(self, message, code=None, phase=None, retry_after=None):
        super().__init__(message)
        self.code, self.phase, self.retry_after = code, phase, retry_after


class Transient(ToolError):
    """Timeouts, 429, 5xx, connection resets: may work later."""

    failure = "transient"


class Permanent(ToolError):
    """Validation, permission, unsupported: retrying cannot help."""

    failure = "permanent"


# Any other exception means the worker cannot tell whether the call had
# its effect: it is reported as ambiguous (an idempotent tool is retried
# with the same key, any other is verified).

TOOLS = {}


def tool(name):
    """Register a function(args, idempotency_key) -> result as tool name."""
    def register(fn):
        TOOLS[name] = fn
        return fn
    return register


@tool("fetch_quote")
def fetch_quote(args, idempotency_key):
    """A price quote from a pricing service (simulated): a read, idempotent."""
    time.sleep(0.005)                               # the round trip
    rng = random.Random(idempotency_key)            # same key, same answer
    return {"symbol": args["symbol"], "price": round(rng.uniform(10, 500), 2)}


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------

def lease_lost(error):
    """AR002: our lease was taken over, or the operation was cancelled."""
    return isinstance(error, psycopg2.Error) and error.pgcode == "AR002"


class RetryWorker:
    """claim_due in a loop; each leased retry is run and its outcome recorded.

    connect() returns a new psycopg2 connection.  The connection is in
    autocommit mode: each lease and each outcome commits at once, as
    pattern B needs (the lease must be visible before the tool acts).
    """

    def __init__(self, connect, owner, batch=10, poll=1.0, log=None, wake_fd=None):
        self.connect, self.owner = connect, owner
        self.batch, self.poll = batch, poll
        self.wake_fds = [] if wake_fd is None else [wake_fd]
        self.log = log or (lambda msg: None)
        self.counts = collections.Counter()

    def run(self, stop):
        """Work until stop (a threading.Event) is set; survives reconnects."""
        while not stop.is_set():
            try:
                conn = self.connect()
            except psycopg2.OperationalError as e:
                self.log("%s: cannot connect: %s" % (self.owner, str(e).strip()))
                stop.wait(1.0)
                continue
            try:
                conn.autocommit = True
                self.loop(conn, stop)
            except psycopg2.OperationalError as e:
                # The server restarted or the network broke.  Leases held
                # now expire; the sweep, claim_due or the next claim decides them.
                self.log("%s: connection lost: %s" % (self.owner, str(e).strip()))
                stop.wait(1.0)
            finally:
                conn.close()

    def loop(self, conn, stop):
        with conn.cursor() as cur:
            cur.execute("LISTEN agentretry")
            while not stop.is_set():
                cur.execute(
                    "SELECT key, tool, args, attempt, lease_token"
                    " FROM agentretry.claim_due(owner => %s, max => %s, tools => %s::text[])",
                    (self.owner, self.batch, sorted(TOOLS)))
                rows = cur.fetchall()
                for row in rows:
                    self.run_one(cur, *row)
                if not rows:
                    self.wait(conn, self.poll)

    def wait(self, conn, timeout):
        """Sleep until NOTIFY agentretry (sent by the sweep), a signal or timeout."""
        if not conn.notifies and conn in select.select([conn] + self.wake_fds, [], [], timeout)[0]:
            conn.poll()
        conn.notifies.clear()

    def run_one(self, cur, key, tool_name, args, attempt, lease_token):
        self.counts["leased"] += 1
        try:
            # We hold the lease: act, with the key as the idempotency key.
            result = TOOLS[tool_name](args, idempotency_key=key)
        except ToolError as e:
            self.failed(cur, key, lease_token, attempt, e.failure, e.phase,
                        e.code, str(e), e.retry_after)
            return
        except Exception as e:          # pylint: disable=broad-except
            # Unknown whether the call had its effect.
            self.failed(cur, key, lease_token, attempt, "ambiguous", None,
                        type(e).__name__, str(e), None)
            return
        try:
            cur.execute("SELECT agentretry.complete(key => %s, lease_token => %s, result => %s)",
                        (key, lease_token, json.dumps(result)))
        except psycopg2.Error as e:
            if not lease_lost(e):
                raise
            # Our lease was taken over (it expired and the key was claimed
            # again) or the operation was cancelled: record nothing.
            self.counts["lease lost"] += 1
            return
        self.counts["completed"] += 1
        self.log("%s: %s attempt %d succeeded" % (self.owner, key, attempt))

    def failed(self, cur, key, lease_token, attempt, failure, phase, code,
               message, retry_after):
        # fail() records the attempt and decides with the tool's policy:
        # retry (scheduled: a worker's claim_due leases it when due),
        # verify (a non-idempotent tool may have acted) or dead.
        try:
            cur.execute(
                "SELECT action, retry_at, reason FROM agentretry.fail("
                " key => %s, lease_token => %s, failure => %s, phase => %s,"
                " code => %s, message => %s, retry_after => %s * interval '1 second')",
                (key, lease_token, failure, phase, code, message, retry_after))
        except psycopg2.Error as e:
            if not lease_lost(e):
                raise
            self.counts["lease lost"] += 1
            return
        action, retry_at, reason = cur.fetchone()
        self.counts["fail -> %s" % action] += 1
        self.log("%s: %s attempt %d failed (%s %s): %s%s" % (
            self.owner, key, attempt, failure, code, action,
            " at %s" % retry_at if retry_at else " (%s)" % reason))


# ---------------------------------------------------------------------------
# The self-test
# ---------------------------------------------------------------------------

SELF_TEST_OPERATIONS = 20
SELF_TEST_WORKERS = 2
SELF_TEST_TIMEOUT = 60.0
# Retry events store the delay in microseconds, timestamps too; allow one
# millisecond for rounding between them.
ROUNDING = 0.001
SYMBOLS = ["ACME", "GLOBX", "INIT", "UMBR", "STARK", "WAYNE", "TYRL"]


def fault_plan(seed, n, max_attempts):
    """key index -> how many attempts fail in a row (the first always does).

    An operation whose failures reach max_attempts ends dead
    (attempts_exhausted); the others succeed on attempt failures + 1.
    Index 0 is exhausted and index 1 succeeds on its last allowed attempt,
    whatever the seed, so that both ends are always checked.
    """
    rng = random.Random(seed)
    plan = [rng.choice([1, 1, 1, 2, 2, 3, max_attempts - 1, max_attempts])
            for _ in range(n)]
    plan[0], plan[1] = max_attempts, max_attempts - 1
    return plan


class FlakyService:
    """Makes fetch_quote fail as the plan says: its failures counted per key."""

    def __init__(self, plan_by_key):
        self.plan = plan_by_key
        self.calls = collections.Counter()
        self.lock = threading.Lock()
        self.real = TOOLS["fetch_quote"]

    def __call__(self, args, idempotency_key):
        with self.lock:
            self.calls[idempotency_key] += 1
            # the seeded first attempt failed without calling the service
            n = self.calls[idempotency_key] + 1
        if n <= self.plan[idempotency_key]:
            if n % 2:
                raise Transient("503 service unavailable", code="http_503",
                                phase="pre_execution")
            # not a ToolError: the worker cannot tell, reports ambiguous
            raise socket.timeout("read timed out")
        return self.real(args, idempotency_key)


def policy(cur, tool_name):
    """The merged policy's backoff fields, in seconds and as numbers."""
    cur.execute("SELECT field, value FROM agentretry.effective_policy(tool => %s)"
                " WHERE field IN ('max_attempts', 'base_delay', 'max_delay',"
                " 'multiplier', 'jitter')", (tool_name,))
    p = dict(cur.fetchall())
    cur.execute("SELECT extract(epoch FROM %s::interval)::float8,"
                " extract(epoch FROM %s::interval)::float8",
                (p["base_delay"], p["max_delay"]))
    base, cap = cur.fetchone()
    return {"max_attempts": int(p["max_attempts"]), "base": base, "cap": cap,
            "multiplier": float(p["multiplier"]), "jitter": p["jitter"]}


def self_test(args):
    tag = "%d-%d" % (os.getpid(), int(time.time()))
    worker_names = ["retry-worker-%d" % i for i in range(1, SELF_TEST_WORKERS + 1)]

    def connect():
        # trace_all adds claim and completion events: each attempt's start
        return psycopg2.connect(dbname=args.dbname, application_name="retry_worker",
                                options="-c agentretry.trace_all=on")

    setup = psycopg2.connect(dbname=args.dbname, user=args.setup_user,
                             application_name="retry_worker self-test")
    setup.autocommit = True
    scur = setup.cursor()
    scur.execute("""
        SELECT name FROM agentretry.register_tool(
            name => 'fetch_quote', idempotency => 'idempotent', side_effect => 'read',
            max_attempts => 5, base_delay => '200 milliseconds', max_delay => '2 seconds',
            jitter => 'equal')""")
    pol = policy(scur, "fetch_quote")
    if pol["jitter"] != "equal":
        print("self-test: fetch_quote's effective jitter is %s, not equal"
              " (a tenant policy overrides it?)" % pol["jitter"])
        return 1

    plan = fault_plan(args.seed, SELF_TEST_OPERATIONS, pol["max_attempts"])
    keys = ["quote:%s:%d" % (tag, i + 1) for i in range(SELF_TEST_OPERATIONS)]
    plan_by_key = dict(zip(keys, plan))
    TOOLS["fetch_quote"] = FlakyService(plan_by_key)

    # Operations whose first attempt failed, as agent code leaves them:
    # claim, the call fails, fail() schedules the retry.
    agent = connect()
    agent.autocommit = True
    acur = agent.cursor()
    for i, key in enumerate(keys):
        acur.execute("SELECT outcome, lease_token FROM agentretry.claim("
                     " key => %s, args => %s, tool => 'fetch_quote', owner => 'agent')",
                     (key, json.dumps({"symbol": SYMBOLS[i % len(SYMBOLS)], "n": i + 1})))
        outcome, token = acur.fetchone()
        if outcome != "execute":
            print("self-test: claim of new key %s answered %s" % (key, outcome))
            return 1
        acur.execute("SELECT action FROM agentretry.fail(key => %s, lease_token => %s,"
                     " failure => 'transient', phase => 'pre_execution', code => 'http_503',"
                     " message => '503 service unavailable')", (key, token))
        if acur.fetchone()[0] != "retry":
            print("self-test: the first failure of %s was not scheduled for a retry" % key)
            return 1
    agent.close()
    print("self-test: %d operations of fetch_quote failed once (seed %d);"
          " %d workers retry them" % (len(keys), args.seed, SELF_TEST_WORKERS), flush=True)

    # The workers poll every 50 ms: nothing here runs the sweep, whose
    # NOTIFY would wake them in production.
    stop = threading.Event()
    log = print if args.verbose else None
    workers = [RetryWorker(connect, name, batch=args.batch, poll=0.05, log=log)
               for name in worker_names]
    threads = [threading.Thread(target=w.run, args=(stop,), name=w.owner)
               for w in workers]
    for t in threads:
        t.start()
    started = time.monotonic()
    finished = False
    while time.monotonic() - started < SELF_TEST_TIMEOUT:
        scur.execute("SELECT count(*) FROM agentretry.operations WHERE key = ANY (%s)"
                     " AND state NOT IN ('succeeded', 'dead', 'cancelled')", (keys,))
        if scur.fetchone()[0] == 0:
            finished = True
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    counts = sum((w.counts for w in workers), collections.Counter())
    if not finished:
        print("self-test: FAILED: operations still not terminal after %.0f s"
              % SELF_TEST_TIMEOUT)
        return 1

    violations = check_and_print(scur, keys, plan_by_key, pol, worker_names)
    setup.close()
    print("workers: %d retries leased, %d completed, %s"
          % (counts["leased"], counts["completed"],
             ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items())
                       if k.startswith("fail -> ")) or "no failures"))
    if violations:
        print("self-test: FAILED, %d violations:" % len(violations))
        for v in violations:
            print("  " + v)
        return 1
    print("self-test: OK: every operation ended as planned and no retry started"
          " before its scheduled delay")
    return 0


def expected_delay_bounds(pol, attempt):
    """Equal jitter: e/2 .. e, e = min(cap, base * multiplier^(attempt-1))."""
    e = min(pol["cap"], pol["base"] * pol["multiplier"] ** (attempt - 1))
    return e / 2, e


def check_and_print(cur, keys, plan_by_key, pol, worker_names):
    """Print each operation's story from events; return the violations found.

    One line per operation: the attempts' start times (from the claim
    events) in ms after the first, then for each failure that was retried
    the gap until the next attempt started and the delay the decision
    scheduled (the retry event's delay).
    """
    violations = []
    cur.execute("""
        SELECT key, state::text, reason, attempts,
               extract(epoch FROM first_attempt_at)::float8,
               extract(epoch FROM last_attempt_at)::float8
        FROM agentretry.operations WHERE key = ANY (%s)""", (keys,))
    rows = {r[0]: r[1:] for r in cur.fetchall()}
    cur.execute("""
        SELECT key, kind, attempt, extract(epoch FROM at)::float8,
               extract(epoch FROM delay)::float8, reason, owner
        FROM agentretry.events WHERE key = ANY (%s) ORDER BY id""", (keys,))
    events = collections.defaultdict(list)
    for key, *ev in cur.fetchall():
        events[key].append(ev)

    prefix = keys[0].rsplit(":", 1)[0]
    print("operations %s:N; ms after attempt 1; gap/delay: from a failure to the"
          " next attempt / the delay its retry was scheduled with" % prefix)
    print("%4s %5s  %-30s  %-28s  %s" % ("N", "fails", "ended", "attempts at", "gap/delay"))
    for key in keys:
        failures = plan_by_key[key]
        exhausted = failures >= pol["max_attempts"]
        want = (("dead", "attempts_exhausted", pol["max_attempts"]) if exhausted
                else ("succeeded", None, failures + 1))
        state, reason, attempts, first_at, last_at = rows.get(key, (None,) * 5)
        bad = []
        if (state, reason, attempts) != want:
            bad.append("ended %s (%s) after %s attempts; the plan says %s (%s) after %d"
                       % ((state, reason, attempts) + want))
            if state is None:
                violations += ["%s: %s" % (key, b) for b in bad]
                continue

        starts = {}         # attempt -> when it started (its claim event)
        decided = {}        # attempt -> (kind, at, delay, reason) of its failure
        for kind, attempt, at, delay, ev_reason, owner in events[key]:
            if kind == "claim":
                if attempt in starts:
                    bad.append("attempt %d started twice" % attempt)
                starts[attempt] = at
                if attempt > 1 and owner not in worker_names:
                    bad.append("attempt %d was leased by %s, not by a retry worker"
                               % (attempt, owner))
            elif kind in ("retry", "verify", "dead"):
                decided[attempt] = (kind, at, delay, ev_reason)
        if sorted(starts) != list(range(1, attempts + 1)):
            bad.append("attempts traced: %s, recorded: %d" % (sorted(starts), attempts))
        if 1 in starts and abs(starts[1] - first_at) > 1e-6:
            bad.append("first_attempt_at differs from the first claim")
        if attempts in starts and abs(starts[attempts] - last_at) > 1e-6:
            bad.append("last_attempt_at differs from the last claim")

        gaps = []
        for n in range(1, attempts + 1):
            if n not in decided:
                if n < attempts or exhausted:
                    bad.append("attempt %d failed without a decision" % n)
                continue
            kind, at, delay, ev_reason = decided[n]
            if kind != "retry":
                if not (kind == "dead" and ev_reason == "attempts_exhausted"
                        and n == pol["max_attempts"]):
                    bad.append("attempt %d was decided %s (%s)" % (n, kind, ev_reason))
                continue
            if n + 1 not in starts:
                bad.append("the retry after attempt %d never started" % n)
                continue
            gap = starts[n + 1] - at
            gaps.append("%.0f/%.0f" % (gap * 1000, delay * 1000))
            if gap < delay - ROUNDING:
                bad.append("attempt %d started %.1f ms after attempt %d failed, before"
                           " the scheduled delay of %.1f ms"
                           % (n + 1, gap * 1000, n, delay * 1000))
            lo, hi = expected_delay_bounds(pol, n)
            if not lo - ROUNDING <= delay <= hi + ROUNDING:
                bad.append("the delay after attempt %d is %.1f ms, outside equal"
                           " jitter's %.0f..%.0f ms" % (n, delay * 1000, lo * 1000, hi * 1000))

        t0 = starts.get(1, first_at)
        print("%4s %5d  %-30s  %-28s  %s" % (
            key.rsplit(":", 1)[1], failures,
            "%s%s, %d" % (state, " (%s)" % reason if reason else "", attempts),
            " ".join("%.0f" % ((starts[n] - t0) * 1000) for n in sorted(starts)),
            " ".join(gaps)))
        violations += ["%s: %s" % (key, b) for b in bad]
    return violations


# ---------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dbname", help="database (default: PGDATABASE, else libpq's default)")
    p.add_argument("--owner", default="retry-worker@%s:%d" % (socket.gethostname(), os.getpid()),
                   help="lease owner recorded by agentretry")
    p.add_argument("--batch", type=int, default=10, help="retries leased per claim_due call")
    p.add_argument("--poll", type=float, default=1.0,
                   help="seconds to wait for a NOTIFY before polling again")
    p.add_argument("--self-test", action="store_true",
                   help="run the self-test described above and exit")
    p.add_argument("--setup-user", help="self-test: role that registers the tool and reads"
                   " the events (default: the connecting role)")
    p.add_argument("--seed", type=int, default=1, help="self-test: fault plan seed")
    p.add_argument("--verbose", action="store_true", help="self-test: log every attempt")
    args = p.parse_args()

    if args.self_test:
        return self_test(args)

    # SIGINT or SIGTERM: finish the leases in hand, then stop.  The wake-up
    # pipe ends a wait for NOTIFY at once instead of after --poll seconds.
    stop = threading.Event()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = RetryWorker(lambda: psycopg2.connect(dbname=args.dbname,
                                                  application_name="retry_worker"),
                         args.owner, batch=args.batch, poll=args.poll,
                         log=lambda msg: print(msg, flush=True), wake_fd=wake_r)
    print("%s: running %s" % (args.owner, ", ".join(sorted(TOOLS))), flush=True)
    worker.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
