#!/usr/bin/python3
"""Agent workers sending emails through an unreliable provider, twice.

The same workload, with the same injected faults, runs first with a naive
retry loop and then with agentretry (pattern B: the side effect happens
outside the database).  At the end the provider's records are compared
with what each run believed it did.

The file has three parts:

  1. the simulated world: an at-least-once task queue, an email provider
     that does not deduplicate, and a fault injector;
  2. the two kinds of worker: NaiveWorker and the agentretry workers (the
     example of how agent code uses agentretry): AgentRetryWorker takes
     tasks from the queue, RetryWorker runs the retries agentretry
     scheduled (claim_due), and Sweeper stands in for the pg_cron job that
     calls agentretry.sweep();
  3. running both and printing the summary.

Run by examples/demo.sh, which prepares the databases and roles
(demo_setup.sql).  Connection parameters come from the environment
(PGHOST, PGPORT).
"""

import argparse
import collections
import json
import os
import random
import select
import sys
import threading
import time

import psycopg2
import psycopg2.extras


# ---------------------------------------------------------------------------
# 1. The simulated world
# ---------------------------------------------------------------------------

AGENT_DSN = "dbname=agentdemo user=demo_agent application_name=agent"
OPERATOR_DSN = "dbname=agentdemo user=demo_operator application_name=sweeper"
PROVIDER_DSN = "dbname=provider user=postgres application_name=provider"
ADMIN_DSN = "dbname=agentdemo user=postgres application_name=demo"

# How long the queue waits for an acknowledgement before delivering a task
# again.  Longer than the tool's 2 s lease, as it should be: by the time a
# task is redelivered, the lease of the worker that died holding it expired.
VISIBILITY_TIMEOUT = 3.0

FAULTS = {
    # fault: (share of tasks, what happens on the first attempt)
    "connect_timeout": (0.12, "times out before the request reaches the provider"),
    "read_timeout": (0.12, "times out after the provider sent the email"),
    "killed_after_send": (0.07, "worker is killed after sending, before recording"),
    "killed_before_send": (0.04, "worker is killed after claiming, before sending"),
    "invalid_address": (0.05, "provider rejects the address, every time"),
}
DUPLICATE_DELIVERY_SHARE = 0.10


class ConnectTimeout(Exception):
    """The request never left: certainly not executed."""


class ReadTimeout(Exception):
    """The request was sent but no answer came: maybe executed."""


class InvalidRecipient(Exception):
    """The provider refused the request: retrying cannot help."""


class WorkerKilled(BaseException):
    """The process running a worker died (OOM kill, deploy, node loss)."""


class FaultPlan:
    """Which fault hits which task; the same plan for both runs.

    Each fault fires once, on the first attempt that reaches its point, except
    invalid_address, which is a property of the task's data.
    """

    def __init__(self, plan):
        self.plan = plan          # key -> fault name or None
        self.fired = set()
        self.lock = threading.Lock()

    def fires(self, key, fault):
        with self.lock:
            if self.plan.get(key) != fault or key in self.fired:
                return False
            self.fired.add(key)
            return True

    def kill_point(self, key, fault):
        """Called by workers where a kill is injected; raises WorkerKilled."""
        if self.fires(key, fault):
            raise WorkerKilled(fault)


class EmailProvider:
    """Client of an external email API, simulated by a table in another database.

    send() performs the side effect: one committed row per email sent.  The
    provider records the idempotency key it is given but does not deduplicate.
    was_sent() is the provider's status endpoint ("did you send K?"), which
    is what an agent asks when it cannot know whether an attempt worked.
    """

    def __init__(self, faults):
        self.faults = faults
        self.conn = psycopg2.connect(PROVIDER_DSN)
        self.conn.autocommit = True   # the provider's writes are its own

    def send(self, key, to, subject):
        time.sleep(random.uniform(0.003, 0.012))    # network round trip
        if self.faults.fires(key, "connect_timeout"):
            raise ConnectTimeout("connect timeout after 10 s")
        if to.endswith(".invalid"):
            raise InvalidRecipient("550 no such domain: %s" % to.split("@")[1])
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO sent_emails (idempotency_key, recipient, subject)"
                        " VALUES (%s, %s, %s) RETURNING id", (key, to, subject))
            message_id = "msg-%d" % cur.fetchone()[0]
        if self.faults.fires(key, "read_timeout"):
            raise ReadTimeout("read timeout after 30 s")
        return message_id

    def was_sent(self, key):
        """The message id of the email sent with this key, or None."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT id FROM sent_emails WHERE idempotency_key = %s"
                        " ORDER BY id LIMIT 1", (key,))
            row = cur.fetchone()
        return "msg-%d" % row[0] if row else None

    def close(self):
        self.conn.close()


class Outstanding:
    """Counts deliveries not acknowledged yet, so a run knows when the queue is done."""

    def __init__(self):
        self.n = 0
        self.cv = threading.Condition()

    def add(self):
        with self.cv:
            self.n += 1

    def done(self):
        with self.cv:
            self.n -= 1
            self.cv.notify_all()

    def wait_zero(self, timeout):
        with self.cv:
            return self.cv.wait_for(lambda: self.n == 0, timeout)

    def zero(self):
        with self.cv:
            return self.n == 0


class Broker:
    """An at-least-once task queue (SQS, a webhook sender, a job queue).

    A task taken but not acknowledged within VISIBILITY_TIMEOUT is delivered
    again: that is how the task of a killed worker gets done, and why every
    consumer must expect to see a task more than once.
    """

    def __init__(self, outstanding):
        self.outstanding = outstanding
        self.lock = threading.Lock()
        self.ready = collections.deque()
        self.in_flight = {}         # delivery id -> (visible again at, task)
        self.next_id = 0
        self.redeliveries = 0

    def publish(self, task):
        self.outstanding.add()
        with self.lock:
            self.ready.append(task)

    def receive(self):
        with self.lock:
            now = time.monotonic()
            for did, (visible_at, task) in list(self.in_flight.items()):
                if visible_at <= now:
                    del self.in_flight[did]
                    self.ready.append(task)
                    self.redeliveries += 1
            if not self.ready:
                return None
            self.next_id += 1
            task = self.ready.popleft()
            self.in_flight[self.next_id] = (now + VISIBILITY_TIMEOUT, task)
            return self.next_id, task

    def ack(self, delivery_id):
        with self.lock:
            del self.in_flight[delivery_id]
        self.outstanding.done()


def make_workload(n_tasks, seed):
    """The tasks, the fault plan and the order of deliveries, from the seed."""
    rng = random.Random(seed)
    tasks, plan = [], {}
    for i in range(1, n_tasks + 1):
        r, fault = rng.random(), None
        for name, (share, _) in FAULTS.items():
            if r < share:
                fault = name
                break
            r -= share
        domain = "example.invalid" if fault == "invalid_address" else "example.com"
        task = {
            "key": "welcome-email:user-%d" % i,
            "args": {"to": "user%d@%s" % (i, domain),
                     "subject": "Welcome, user %d" % i,
                     "template": "welcome"},
        }
        tasks.append(task)
        plan[task["key"]] = fault
    # A duplicate delivery (the same task again, like a webhook sent twice)
    # lands a few places after the original, so some are processed at the
    # same time as the original and some after it.
    deliveries = list(tasks)
    for task in tasks:
        if rng.random() < DUPLICATE_DELIVERY_SHARE:
            at = deliveries.index(task) + rng.randint(1, 20)
            deliveries.insert(min(at, len(deliveries)), task)
    return tasks, plan, deliveries


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()

    def inc(self, name, n=1):
        with self.lock:
            self.c[name] += n


# ---------------------------------------------------------------------------
# 2a. The naive worker: retry on any error, no idempotency
# ---------------------------------------------------------------------------

NAIVE_MAX_ATTEMPTS = 3


class NaiveWorker(threading.Thread):
    """What agent code typically does: a try/except around the tool call."""

    def __init__(self, name, broker, faults, stats, stop):
        super().__init__(name=name, daemon=True)
        self.broker, self.faults, self.stats, self.stop = broker, faults, stats, stop

    def run(self):
        provider = EmailProvider(self.faults)
        while not self.stop.is_set():
            got = self.broker.receive()
            if got is None:
                time.sleep(0.005)
                continue
            delivery_id, task = got
            try:
                self.handle(provider, task)
            except WorkerKilled:
                # The process died: its connections go, the task is not
                # acknowledged and will be delivered again.
                self.stats.inc("workers killed")
                provider.close()
                provider = EmailProvider(self.faults)
                continue
            self.broker.ack(delivery_id)
        provider.close()

    def handle(self, provider, task):
        key, args = task["key"], task["args"]
        for attempt in range(1, NAIVE_MAX_ATTEMPTS + 1):
            self.faults.kill_point(key, "killed_before_send")
            self.stats.inc("provider calls")
            try:
                provider.send(key, args["to"], args["subject"])
            except (ConnectTimeout, ReadTimeout, InvalidRecipient):
                # Every error looks the same from here: try again.
                time.sleep(0.05 * 2 ** attempt)
                continue
            self.faults.kill_point(key, "killed_after_send")
            return
        self.stats.inc("gave up")


# ---------------------------------------------------------------------------
# 2b. The agentretry workers (pattern B: claim -> act -> complete / fail)
# ---------------------------------------------------------------------------

# The retry workers lease at most this many due retries per claim_due call
# and, when none is due, sleep until the sweep's NOTIFY or this long.
RETRY_BATCH = 10
RETRY_IDLE_WAIT = 0.1

# How often the demo's sweeper calls agentretry.sweep().  In production
# pg_cron runs it every minute (agentretry.schedule_sweep()); the demo's
# leases last 2 s, so it sweeps every second to show the sweep at work.
SWEEP_INTERVAL = 1.0


class AgentRetry:
    """A thin client: one method per agentretry function, nothing hidden.

    The connection is in autocommit mode, so each call is its own
    transaction.  That is what pattern B needs: the claim must be committed
    before the email is sent, so that a concurrent or later claimant of the
    same key sees the lease; the receipt must be committed as soon as it is
    known.
    """

    ClaimResult = collections.namedtuple(
        "ClaimResult", "outcome attempt lease_token result retry_at reason")
    Lease = collections.namedtuple("Lease", "key args attempt lease_token")
    Decision = collections.namedtuple("Decision", "action retry_at attempt reason")

    def __init__(self, owner):
        self.owner = owner
        self.conn = psycopg2.connect(AGENT_DSN)
        self.conn.autocommit = True

    def _one(self, sql, params):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def claim(self, key, args, tool):
        return self.ClaimResult(*self._one(
            "SELECT outcome, attempt, lease_token, result, retry_at, reason"
            " FROM agentretry.claim(key => %s, args => %s, tool => %s, owner => %s)",
            (key, json.dumps(args), tool, self.owner)))

    def claim_due(self, max_leases, tools):
        """Lease up to max_leases due retries of these tools, oldest first.

        Each row is what an execute answer of claim() gives: this worker
        holds the lease and runs the attempt.  Rows other workers hold are
        skipped, so any number of retry workers may poll at once.
        """
        with self.conn.cursor() as cur:
            cur.execute("SELECT key, args, attempt, lease_token"
                        " FROM agentretry.claim_due(owner => %s, max => %s, tools => %s)",
                        (self.owner, max_leases, list(tools)))
            return [self.Lease(*row) for row in cur.fetchall()]

    def complete(self, key, lease_token, result):
        self._one("SELECT agentretry.complete(key => %s, lease_token => %s, result => %s)",
                  (key, lease_token, json.dumps(result)))

    def fail(self, key, lease_token, failure, phase, code, message):
        return self.Decision(*self._one(
            "SELECT action, retry_at, attempt, reason"
            " FROM agentretry.fail(key => %s, lease_token => %s, failure => %s,"
            " phase => %s, code => %s, message => %s)",
            (key, lease_token, failure, phase, code, message)))

    def resolve(self, key, lease_token, executed, result):
        return self._one(
            "SELECT agentretry.resolve(key => %s, lease_token => %s,"
            " executed => %s, result => %s)",
            (key, lease_token, executed, json.dumps(result) if result else None))[0]

    def listen(self):
        """Subscribe to the sweep's NOTIFY agentretry (payload: due retries)."""
        with self.conn.cursor() as cur:
            cur.execute("LISTEN agentretry")

    def wait_for_due(self, timeout):
        """Sleep until a NOTIFY agentretry arrives or timeout seconds pass.

        The sweep notifies once per run when retries are due; the timeout
        makes the worker poll in between, since a retry falls due at its
        own time, not at a sweep.
        """
        if not self.conn.notifies:
            if select.select([self.conn], [], [], timeout)[0]:
                self.conn.poll()
        self.conn.notifies.clear()

    def close(self):
        self.conn.close()


def lease_lost(error):
    """AR002: our lease was taken over (or the key finished) meanwhile."""
    return isinstance(error, psycopg2.Error) and error.pgcode == "AR002"


class AgentRetryWorker(threading.Thread):
    """Takes tasks from the queue and claims their keys.

    handle() is the whole pattern.  Whatever a delivery finds, it leaves
    the key to whoever acts on it next, and agentretry records who that is:
    a scheduled retry (retry_wait) is run by the retry workers through
    claim_due, a live lease by its holder, and the lease of a worker that
    died is decided by the sweep (or by the next claim) and its delivery
    comes back from the queue.  No list of keys to come back to is kept
    here.
    """

    TOOL = "send_email"

    def __init__(self, name, broker, faults, stats, stop):
        super().__init__(name=name, daemon=True)
        self.broker = broker
        self.faults, self.stats, self.stop = faults, stats, stop

    def handle(self, task):
        key, args = task["key"], task["args"]

        while True:
            # claim() decides, under a row lock, what this delivery may do
            # with the key.  The args are fingerprinted: the same key with
            # other args would raise AR001 instead of replaying the wrong
            # receipt.
            c = self.ar.claim(key, args, self.TOOL)
            self.stats.inc("claim: " + c.outcome)

            if c.outcome == "replay":
                # Already sent: the duplicate delivery is answered from the
                # stored receipt (c.result) and the provider is not called.
                return
            if c.outcome in ("dead", "cancelled"):
                # Terminal; c.reason and c.result say why.  An operator decides.
                return
            if c.outcome == "busy":
                # Someone else holds a live lease (until c.retry_at) and
                # will record the outcome.  If it dies, its lease expires
                # and its own delivery comes back from the queue.
                return
            if c.outcome == "wait":
                # A retry is scheduled at c.retry_at; a retry worker will
                # lease it with claim_due then.  Nothing to do here.
                return
            if c.outcome == "verify":
                self.verify(key, c.lease_token)
                return
            assert c.outcome == "execute"
            if not self.execute(key, args, c.lease_token):
                return
            # fail() answered verify: claim the key again to take the
            # verification lease (or find that another worker took it).

    def execute(self, key, args, lease_token):
        """Run one attempt under the lease; True when the key now needs verifying.

        The same for a claim's execute answer and for a row of claim_due.
        """
        # We hold the lease: act, passing the key to the provider.
        self.faults.kill_point(key, "killed_before_send")
        self.stats.inc("provider calls")
        try:
            message_id = self.provider.send(key, args["to"], args["subject"])
        except ConnectTimeout as e:
            # The request never left: transient, before execution.  Safe to
            # retry even for a non-idempotent tool.
            return self.failed(key, lease_token, "transient", "pre_execution",
                               "connect_timeout", str(e))
        except ReadTimeout as e:
            # Sent, but no answer: the email may have gone out.  For a
            # non-idempotent tool agentretry answers "verify", never "retry".
            return self.failed(key, lease_token, "ambiguous", None,
                               "read_timeout", str(e))
        except InvalidRecipient as e:
            # Retrying cannot help: dead-letter it at once.
            return self.failed(key, lease_token, "permanent", "pre_execution",
                               "invalid_recipient", str(e))

        self.faults.kill_point(key, "killed_after_send")

        # Record the receipt.  Only the newest lease may: if ours expired
        # and another worker took the key over, this raises AR002, and the
        # other worker will find our email when it verifies.
        try:
            self.ar.complete(key, lease_token, {"message_id": message_id})
        except psycopg2.Error as e:
            if not lease_lost(e):
                raise
            self.stats.inc("completions fenced off (AR002)")
        return False

    def failed(self, key, lease_token, failure, phase, code, message):
        # fail() records the attempt and applies the tool's policy: retry
        # (agentretry schedules it: state retry_wait until retry_at, when a
        # retry worker's claim_due leases it), verify, or dead (why).
        try:
            d = self.ar.fail(key, lease_token, failure, phase, code, message)
        except psycopg2.Error as e:
            if not lease_lost(e):
                raise
            # Our lease was taken over: the new holder decides now.
            return False
        self.stats.inc("fail -> %s (%s)" % (d.action, d.reason))
        # verify: the next claim of the key hands out a verification lease;
        # this worker claims it at once.
        return d.action == "verify"

    def verify(self, key, lease_token):
        # An earlier attempt may or may not have sent the email (a read
        # timeout, or a worker that died holding the lease).  Ask the
        # provider, then tell agentretry what it said.
        message_id = self.provider.was_sent(key)
        try:
            self.ar.resolve(key, lease_token, message_id is not None,
                            {"message_id": message_id} if message_id else None)
        except psycopg2.Error as e:
            if not lease_lost(e):
                raise
            # Our verification lease expired and another worker verifies.
            return
        # Not sent: resolve made the retry due now (retry_wait), unless the
        # policy forbade it (dead); the retry workers run it.
        self.stats.inc("resolve: executed" if message_id else "resolve: not executed")

    # -- the loop around handle() -------------------------------------------

    def connect(self):
        self.ar = AgentRetry(owner=self.name)
        self.provider = EmailProvider(self.faults)

    def disconnect(self):
        self.ar.close()
        self.provider.close()

    def run(self):
        self.connect()
        while not self.stop.is_set():
            got = self.broker.receive()
            if got is None:
                time.sleep(0.005)
                continue
            delivery_id, task = got
            try:
                self.handle(task)
            except WorkerKilled:
                # The process died holding a lease: its connections go and
                # it records nothing.  The lease expires; the sweep (or the
                # next claim of the key) decides it, and the unacknowledged
                # delivery comes back from the queue and verifies.
                self.stats.inc("workers killed")
                self.disconnect()
                self.connect()
                continue
            self.broker.ack(delivery_id)
        self.disconnect()


class RetryWorker(AgentRetryWorker):
    """Runs the retries agentretry scheduled: claim_due in a loop.

    A failed attempt that may be retried is recorded as retry_wait with
    next_attempt_at; once that has passed, claim_due leases it to one
    retry worker, which runs it exactly like a claim's execute answer.
    When nothing is due the worker waits for the sweep's NOTIFY agentretry,
    or polls again after RETRY_IDLE_WAIT.
    """

    def connect(self):
        super().connect()
        self.ar.listen()

    def run(self):
        self.connect()
        while not self.stop.is_set():
            leases = self.ar.claim_due(RETRY_BATCH, [self.TOOL])
            if not leases:
                self.ar.wait_for_due(RETRY_IDLE_WAIT)
                continue
            for lease in leases:
                self.stats.inc("retries run by claim_due workers")
                try:
                    if self.execute(lease.key, lease.args, lease.lease_token):
                        # verify: take the verification lease by claim, as
                        # a queue worker does.
                        self.handle({"key": lease.key, "args": lease.args})
                except WorkerKilled:
                    # Kills are injected into first attempts, which are
                    # always queue deliveries, so this does not happen in
                    # the demo.  A retry worker that died leaves its leases
                    # to expire; the sweep decides them (for send_email:
                    # verify, listed in agentretry.verify_queue).
                    self.stats.inc("workers killed")
                    self.disconnect()
                    self.connect()
                    break
        self.disconnect()


class Sweeper(threading.Thread):
    """Calls agentretry.sweep() every SWEEP_INTERVAL seconds.

    In production pg_cron does this every minute: SELECT
    agentretry.schedule_sweep() once, as a role with agentretry_operator
    (the job runs as the role that scheduled it).  The sweep decides the
    expired leases of workers that died (as ambiguous failures: for
    send_email, verify) even when no delivery of their task ever comes
    back, dead-letters retries past their deadline, purges old rows, and
    NOTIFYs agentretry when retries are due, which wakes the retry workers.

    It runs as demo_operator: sweep() is granted to agentretry_operator,
    not to the agents' role.
    """

    def __init__(self, stats, stop):
        super().__init__(name="sweeper", daemon=True)
        self.stats, self.stop = stats, stop

    def run(self):
        conn = psycopg2.connect(OPERATOR_DSN)
        conn.autocommit = True
        while not self.stop.wait(SWEEP_INTERVAL):
            with conn.cursor() as cur:
                cur.execute("SELECT leases_expired FROM agentretry.sweep()")
                expired = cur.fetchone()[0]
            self.stats.inc("sweeps")
            if expired:
                self.stats.inc("sweeps that decided leases")
                self.stats.inc("leases decided by the sweep", expired)
        conn.close()


# ---------------------------------------------------------------------------
# 3. Running both and comparing
# ---------------------------------------------------------------------------

def provider_counts():
    """key -> number of emails the provider sent with it."""
    conn = psycopg2.connect(PROVIDER_DSN)
    with conn.cursor() as cur:
        cur.execute("SELECT idempotency_key, count(*) FROM sent_emails GROUP BY 1")
        counts = dict(cur.fetchall())
    conn.close()
    return counts


def reset(admin):
    pconn = psycopg2.connect(PROVIDER_DSN)
    pconn.autocommit = True
    with pconn.cursor() as cur:
        cur.execute("TRUNCATE sent_emails RESTART IDENTITY")
    pconn.close()
    with admin.cursor() as cur:
        cur.execute("TRUNCATE agentretry.operations, agentretry.events")


def unfinished_operations(monitor):
    """Operations some worker still has to act on: leased, waiting or unverified."""
    with monitor.cursor() as cur:
        cur.execute("SELECT count(*) FROM agentretry.operations"
                    " WHERE state IN ('in_progress', 'retry_wait', 'verify')")
        return cur.fetchone()[0]


def wait_accounted(outstanding, timeout):
    """Wait until every delivery is acknowledged and every operation terminal.

    The queue being empty is not enough with agentretry: a scheduled retry
    or a pending verification is recorded in agentretry.operations, not in
    the queue.  The queue is checked first: once it is empty no delivery
    can start new work, so operations found all terminal afterwards stay
    so (a retry worker only leases rows in retry_wait, and there are none).
    """
    monitor = psycopg2.connect(OPERATOR_DSN)
    monitor.autocommit = True
    give_up = time.monotonic() + timeout
    try:
        while time.monotonic() < give_up:
            if outstanding.zero() and unfinished_operations(monitor) == 0:
                return True
            time.sleep(0.1)
        return False
    finally:
        monitor.close()


def run_workload(mode, args, tasks, plan, deliveries):
    stats = Stats()
    faults = FaultPlan(plan)
    outstanding = Outstanding()
    broker = Broker(outstanding)
    for task in deliveries:
        broker.publish(task)
    stop = threading.Event()
    if mode == "naive":
        workers = [NaiveWorker("naive-%d" % i, broker, faults, stats, stop)
                   for i in range(1, args.workers + 1)]
    else:
        workers = [AgentRetryWorker("agent-%d" % i, broker, faults, stats, stop)
                   for i in range(1, args.workers + 1)]
        workers += [RetryWorker("retry-%d" % i, broker, faults, stats, stop)
                    for i in range(1, args.retry_workers + 1)]
        workers.append(Sweeper(stats, stop))
    started = time.monotonic()
    for w in workers:
        w.start()
    if mode == "naive":
        finished = outstanding.wait_zero(args.timeout)
    else:
        finished = wait_accounted(outstanding, args.timeout)
    stop.set()
    for w in workers:
        w.join()
    stats.c["seconds"] = round(time.monotonic() - started, 1)
    stats.c["redeliveries"] = broker.redeliveries
    stats.c["unfinished"] = not finished
    if not finished:
        print("  %s run did not finish within %d s" % (mode, args.timeout))
    return stats.c


def account(mode, tasks, plan, sent, admin):
    """Compare what the provider did with what each task should have got."""
    r = collections.Counter()
    states = {}
    if mode == "agentretry":
        with admin.cursor() as cur:
            cur.execute("SELECT key, state::text, reason, result FROM agentretry.operations")
            states = {k: (s, reason, res) for k, s, reason, res in cur.fetchall()}
    for task in tasks:
        key = task["key"]
        n = sent.get(key, 0)
        invalid = plan[key] == "invalid_address"
        r["emails sent"] += n
        r["tasks sent twice or more"] += n > 1
        r["duplicate emails"] += max(n - 1, 0)
        if mode == "naive":
            # The naive loop keeps no record; a task is lost when a valid
            # email was never sent.
            r["tasks lost"] += (n == 0 and not invalid)
            continue
        state, reason, result = states.get(key, (None, None, None))
        # Accounted for: recorded as sent with a receipt and really sent
        # (more than once counts as a duplicate above), or dead-lettered
        # and really not sent.
        ok = ((state == "succeeded" and n >= 1
               and result.get("message_id") is not None)
              or (state == "dead" and n == 0))
        r["tasks lost"] += not ok
        if state is not None:
            r["final: %s" % state + (" (%s)" % reason if reason else "")] += 1
    if mode == "agentretry":
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM agentretry.operations"
                        " WHERE state = 'succeeded' AND attempts > 1")
            r["succeeded after a retry"] = cur.fetchone()[0]
    return r


def events_summary(admin):
    with admin.cursor() as cur:
        cur.execute("""
            SELECT count(*) FILTER (WHERE code = 'lease_expired'),
                   count(*) FILTER (WHERE kind = 'resolve'),
                   count(*) FILTER (WHERE code = 'verified_not_executed')
            FROM agentretry.events""")
        takeovers, executed, not_executed = cur.fetchone()
    return {"takeovers (expired leases decided)": takeovers,
            "verifications: sent": executed,
            "verifications: not sent": not_executed}


def delivered_twice(admin, keys):
    """Of these keys, the first whose second delivery was answered replay.

    A duplicate that arrives while the first delivery holds the lease is
    answered busy, which is not traced; one that arrives later is answered
    replay, which tells the story.
    """
    with admin.cursor() as cur:
        cur.execute("SELECT key FROM agentretry.events WHERE kind = 'replay'"
                    " AND key = ANY (%s)", (keys,))
        replayed = {k for (k,) in cur.fetchall()}
    return next((k for k in keys if k in replayed), keys[0] if keys else None)


def print_trace(admin, key, why):
    """A key's story, as agentretry.events tells it."""
    with admin.cursor() as cur:
        cur.execute("""
            SELECT extract(epoch FROM at - min(at) OVER ())::float8 * 1000,
                   kind, attempt, lease_token, owner,
                   concat_ws(' ', failure_class::text, failure_phase::text, code, reason)
            FROM agentretry.events WHERE key = %s ORDER BY id""", (key,))
        rows = cur.fetchall()
    print("%s (%s):" % (key, why))
    for ms, kind, attempt, token, owner, detail in rows:
        print(("  %+7.0f ms  %-9s attempt %d  lease %d  %-8s %s"
               % (ms, kind, attempt, token, owner, detail)).rstrip())
    print()


def print_summary(n_tasks, n_deliveries, plan, naive, ar):
    faults = collections.Counter(f for f in plan.values() if f)
    print()
    print("Workload: %d tasks, %d deliveries (%d duplicate deliveries)"
          % (n_tasks, n_deliveries, n_deliveries - n_tasks))
    for name, (_, what) in FAULTS.items():
        print("  %4d %-19s %s" % (faults[name], name, what))
    print()
    rows = [
        ("tasks", n_tasks, n_tasks),
        ("deliveries incl. redeliveries", n_deliveries + naive["redeliveries"],
         n_deliveries + ar["redeliveries"]),
        ("workers killed", naive["workers killed"], ar["workers killed"]),
        ("provider calls (send)", naive["provider calls"], ar["provider calls"]),
        ("emails sent (side effects)", naive["emails sent"], ar["emails sent"]),
        ("DUPLICATE emails", naive["duplicate emails"], ar["duplicate emails"]),
        ("tasks with duplicates", naive["tasks sent twice or more"],
         ar["tasks sent twice or more"]),
        ("tasks lost / unaccounted", naive["tasks lost"], ar["tasks lost"]),
        ("deliveries given up", naive["gave up"], "-"),
    ]
    for k in sorted(k for k in ar if k.startswith("final: ")):
        rows.append((k, "-", ar[k]))
    rows += [
        ("succeeded on a second attempt", "-", ar["succeeded after a retry"]),
        ("replays (duplicates prevented)", "-", ar["claim: replay"]),
        ("claims answered busy / wait", "-", "%d / %d" % (ar["claim: busy"], ar["claim: wait"])),
    ]
    takeovers = ar["takeovers (expired leases decided)"]
    by_sweep = ar["leases decided by the sweep"]
    rows += [
        ("takeovers (expired leases decided)", "-", takeovers),
        ("  decided by the sweep / a claim", "-",
         "%d / %d" % (by_sweep, takeovers - by_sweep)),
        ("sweeps run / that decided leases", "-",
         "%d / %d" % (ar["sweeps"], ar["sweeps that decided leases"])),
        ("retries run by claim_due workers", "-", ar["retries run by claim_due workers"]),
        ("verifications: sent", "-", ar["verifications: sent"]),
        ("verifications: not sent", "-", ar["verifications: not sent"]),
    ]
    for k in sorted(k for k in ar if k.startswith("fail -> ")):
        rows.append((k, "-", ar[k]))
    rows.append(("completions fenced off (AR002)", "-", ar["completions fenced off (AR002)"]))
    rows.append(("wall time, seconds", naive["seconds"], ar["seconds"]))
    w = max(len(r[0]) for r in rows)
    print("%-*s  %12s  %12s" % (w, "", "naive retry", "agentretry"))
    print("%s  %s  %s" % ("-" * w, "-" * 12, "-" * 12))
    for name, a, b in rows:
        print("%-*s  %12s  %12s" % (w, name, a, b))
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--retry-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=int(os.environ.get("DEMO_SEED", "42")))
    p.add_argument("--timeout", type=int, default=60, help="seconds per run")
    args = p.parse_args()

    tasks, plan, deliveries = make_workload(args.tasks, args.seed)
    admin = psycopg2.connect(ADMIN_DSN)
    admin.autocommit = True

    results = {}
    for i, mode in enumerate(("naive", "agentretry"), 1):
        label = "naive retry loop" if mode == "naive" else "agentretry (pattern B)"
        print("run %d/2: %s, %d workers, seed %d ..." % (i, label, args.workers, args.seed),
              flush=True)
        reset(admin)
        stats = run_workload(mode, args, tasks, plan, deliveries)
        stats.update(account(mode, tasks, plan, provider_counts(), admin))
        if mode == "agentretry":
            stats.update(events_summary(admin))
        results[mode] = stats
        print("  done in %.1f s" % stats["seconds"], flush=True)

    naive, ar = results["naive"], results["agentretry"]
    print_summary(len(tasks), len(deliveries), plan, naive, ar)

    # Three keys' stories from the agentretry run: a worker killed after
    # sending, one killed before sending (its retry run by a retry worker),
    # and a task delivered twice.
    counts = collections.Counter(t["key"] for t in deliveries)
    stories = [
        (next((k for k, f in plan.items() if f == "killed_after_send"), None),
         "worker killed after sending"),
        (next((k for k, f in plan.items() if f == "killed_before_send"), None),
         "worker killed before sending"),
        (delivered_twice(admin, [t["key"] for t in tasks
                                 if counts[t["key"]] > 1 and plan[t["key"]] is None]),
         "delivered twice"),
    ]
    for key, why in stories:
        if key is not None:
            print_trace(admin, key, why)

    if ar["duplicate emails"] or ar["tasks lost"] or ar["unfinished"]:
        print("FAIL: agentretry sent %d duplicate emails and lost %d tasks%s"
              % (ar["duplicate emails"], ar["tasks lost"],
                 " (the run did not finish)" if ar["unfinished"] else ""))
        return 1
    print("OK: the naive loop sent %d duplicate emails; agentretry sent none"
          " and accounted for all %d tasks." % (naive["duplicate emails"], len(tasks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
