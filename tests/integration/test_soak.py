#!/usr/bin/env python3
"""test_soak.py - a steady load for minutes (CI) or an hour: the daemon's
memory, descriptors, spool and database stay flat after the warm-up.

Starts: three smtp-sink peers (no dumps: nothing grows on the sink side)
  127.0.0.2:25  ok.soak.example      accepts everything
  127.0.0.3:25  defer.soak.example   -r RCPT: every RCPT gets 450
  127.0.0.4:25  bounce.soak.example  -f RCPT: every RCPT gets 500
and otpmaild (sandbox = no, one route per domain, an Ed25519 DKIM key,
tls_policy = none, log_level = info, every OTP limit out of the way).

Load (open loop, from this script, pipelined on 4 connections):
otp.issue at OTPMAIL_SOAK_ISSUE_RATE/s (default 100) and mail.send at
OTPMAIL_SOAK_SEND_RATE/s (default 50), each to a new address; 10% of
both go to the deferring domain and 1% to the bouncing one, so the
peer side defers 10% and bounces 1% of the messages.  Deferred OTP
mails retry until their code expires (otp_ttl = 60s); deferred mail
retries (default_retry_min 5s, max 20s) until its lifetime (60s), then
expires with a DSN to the sender (routed to the accepting sink); bounced
mail makes a DSN at once.  Finished messages stay listable for
queue_keep_done = 20s.  With the defaults (queue_keep_done = 1d,
default_lifetime = 5d) the spool grows for days by design, so these
are shortened: every message leaves the spool ~100 s after it came,
and the steady state is reached after that.

By default every request goes to a new address, the worst case for the
database: a per-address record (the hourly count) is kept for an hour
after the address's first code (store/otp.c), so with new addresses at
100/s the database grows for the first hour by design, then levels off.
OTPMAIL_SOAK_ADDRESSES=N cycles through N addresses instead (one
address's domain is fixed by its number, so "n % N" keeps the mix only
when N is a multiple of 100).

Every SAMPLE seconds: the daemon's RSS (VmRSS), its open descriptors
(/proc/PID/fd), the spool (bytes and files under state/spool), the
database directory (bytes under state/db: data files, regions and logs),
the queue's message count, the daemon's CPU seconds (user + system) and
the requests sent and answered so far; written to soak.csv (columns in the
header) in OTPMAIL_SOAK_OUT (default: the test's temp dir, removed at
the end; the daemon's log is copied there too; tests/bench/soak_plot
draws the curves).

Checks (generous bounds, no timing): every request answered, fewer than
1% answered with an error; the daemon is alive at the end and delivered,
deferred, failed (bounced) and expired something; after the warm-up
(the first WARMUP seconds), the samples are cut in two halves and the
second half's maximum stays within: RSS first-half max x 1.25 + 16 MiB
(x 2 + 64 MiB under a sanitizer, whose allocator quarantine grows),
descriptors + 16, spool x 1.5 + 4 MiB, database x 1.5 + 16 MiB (BDB
log files are removed at checkpoints, so the size saw-tooths).

Modes:  (default)                 3 minutes, warm-up 100 s  (bootstrap test --long;
                                  CI runs N = 90, plain and under the sanitizers)
        OTPMAIL_SOAK=long         1 hour, warm-up 600 s
        OTPMAIL_SOAK_SECONDS=N    N seconds (warm-up: 100 s or N/6; N/3
                                  under 180 s, the sanitizer run's 90 s)
Under OTPMAIL_WRAPPER (valgrind) the rates are divided by 20 and the RSS
(valgrind's own) is reported, not checked.  The curves and figures of an
hour's run are in tests/bench/README.md ("Soak").
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

LONG = os.environ.get("OTPMAIL_SOAK") == "long"
DURATION = float(os.environ.get("OTPMAIL_SOAK_SECONDS") or (3600 if LONG else 180))
if DURATION > 200 and not os.environ.get("OTPMAIL_TEST_TIMEOUT"):
    os.environ["OTPMAIL_TEST_TIMEOUT"] = str(int(DURATION + 300))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, WRAPPER, OTPMAILD  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
WARMUP = max(100.0, DURATION / 6) if DURATION >= 300 else \
    100.0 if DURATION >= 180 else DURATION / 3
SAMPLE = 10.0 if DURATION >= 1200 else 5.0
SLOW = 20.0 if WRAPPER else 1.0
ISSUE_RATE = float(os.environ.get("OTPMAIL_SOAK_ISSUE_RATE") or 100) / SLOW
SEND_RATE = float(os.environ.get("OTPMAIL_SOAK_SEND_RATE") or 50) / SLOW
CONNS = 4
# 0: every request to a new address; N: addresses s..-0 .. s..-(N-1) in turn
POOL = int(os.environ.get("OTPMAIL_SOAK_ADDRESSES") or 0)
PIPELINE = 48               # in flight per connection (control_max_pipeline 64)
MiB = 1024 * 1024
SANITIZED = False
try:
    SANITIZED = b"__asan_init" in open(OTPMAILD, "rb").read()
except OSError:
    pass

DOMAINS = ("ok.soak.example", "defer.soak.example", "bounce.soak.example")


def domain_of(n):
    """n-th request's recipient domain: 1% bounce, 10% defer, the rest ok."""
    if n % 100 == 37:
        return DOMAINS[2]
    if n % 10 == 3:
        return DOMAINS[1]
    return DOMAINS[0]


class Conn:
    """One control connection: a writer (the scheduler) and a reader thread."""

    def __init__(self, path, stats):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.slots = threading.Semaphore(PIPELINE)
        self.stats = stats
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def send(self, req):
        self.slots.acquire()
        self.s.sendall((json.dumps(req) + "\n").encode())

    def read(self):
        for line in self.f:
            try:
                r = json.loads(line)
            except ValueError:
                r = {"ok": False, "error": "bad json"}
            self.stats.answer(r)
            self.slots.release()

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.reader.join(60)
        self.s.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {"otp.issue": 0, "mail.send": 0}
        self.ok = 0
        self.errors = {}
        self.first_error = None

    def answer(self, r):
        with self.lock:
            if r.get("ok"):
                self.ok += 1
            else:
                e = str(r.get("error"))
                self.errors[e] = self.errors.get(e, 0) + 1
                if self.first_error is None:
                    self.first_error = r

    def answered(self):
        with self.lock:
            return self.ok + sum(self.errors.values())


def tree_size(path):
    size = files = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                size += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return size, files


def sample(d, t0, stats):
    pid = d.pid()
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = len(os.listdir("/proc/%d/fd" % pid))
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    spool, spool_files = tree_size(os.path.join(d.state, "spool"))
    db, _ = tree_size(os.path.join(d.state, "db"))
    st = d.call({"op": "stats"})
    return {"t": round(time.time() - t0, 1), "cpu": cpu, "rss": rss, "fds": fds,
            "spool": spool,
            "spool_files": spool_files, "db": db, "queue": st.get("total", -1),
            "sent": sum(stats.sent.values()), "answered": stats.answered()}


COLUMNS = ("t", "cpu", "rss", "fds", "spool", "spool_files", "db", "queue", "sent", "answered")


def run_load(d, out_csv):
    stats = Stats()
    conns = [Conn(d.sock, stats) for _ in range(CONNS)]
    samples = []
    csv = open(out_csv, "w")
    csv.write(" ".join(COLUMNS) + "\n")
    t0 = time.time()
    next_sample = t0
    # one merged schedule: issue i at t0 + i/ISSUE_RATE, send j at t0 + j/SEND_RATE
    ni = nm = 0
    n = 0
    stamp = "%x%x" % (int(t0), os.getpid())
    while True:
        now = time.time()
        if now >= next_sample:
            s = sample(d, t0, stats)
            samples.append(s)
            csv.write(" ".join(str(s[c]) for c in COLUMNS) + "\n")
            csv.flush()
            next_sample += SAMPLE
            if now - t0 >= DURATION:
                break
            continue
        ti = t0 + ni / ISSUE_RATE
        tm = t0 + nm / SEND_RATE
        due = min(ti, tm, next_sample)
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        if due == next_sample:
            continue
        n += 1
        to = "s%s-%d@%s" % (stamp, n % POOL if POOL else n, domain_of(n))
        if ti <= tm:
            req = {"op": "otp.issue", "to": to, "purpose": "login"}
            ni += 1
        else:
            req = {"op": "mail.send", "from": "app@ok.soak.example", "to": [to],
                   "subject": "soak %d" % n, "text": "soak message %d\n" % n}
            nm += 1
        stats.sent[req["op"]] += 1
        conns[n % CONNS].send(req)
    for c in conns:
        c.close()
    csv.close()
    return stats, samples, time.time() - t0


def flat(samples, key, factor, slack, unit=1, what=None):
    late = [s for s in samples if s["t"] >= WARMUP]
    half = len(late) // 2
    a, b = late[:half], late[half:]
    if not a or not b:
        t.ok(False, "%s: enough samples after the warm-up" % key)
        return
    ma, mb = max(s[key] for s in a), max(s[key] for s in b)
    bound = ma * factor + slack
    t.ok(mb <= bound, "%s flat after the warm-up: second half max %.1f <= %.1f "
         "(first half max %.1f)" % (what or key, mb / unit, bound / unit, ma / unit))


def main():
    sinks = [SmtpSink("127.0.0.2", 25, dump=False),
             SmtpSink("127.0.0.3", 25, dump=False, extra_args=["-r", "RCPT"]),
             SmtpSink("127.0.0.4", 25, dump=False, extra_args=["-f", "RCPT"])]
    for s in sinks:
        s.start()
    base = tempfile.mkdtemp(prefix="otpm-soak-")
    key = os.path.join(base, "dkim.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    conf = "".join(line + "\n" for line in [
        "sandbox = no",
        "log_level = info",
        "tls_policy = none",
        "route = %s [127.0.0.2]:25" % DOMAINS[0],
        "route = %s [127.0.0.3]:25" % DOMAINS[1],
        "route = %s [127.0.0.4]:25" % DOMAINS[2],
        "otp_from = noreply@%s" % DOMAINS[0],
        "bounce_from = mailer-daemon@%s" % DOMAINS[0],
        "dkim_key = %s soak ed25519-sha256 %s" % (DOMAINS[0], key),
        "otp_resend_cooldown = 0",
        "otp_max_per_address_hour = 1000000",
        "otp_max_per_client_minute = 100000000",
        "otp_max_global_per_second = 0",
        "otp_ttl = 60s",
        "default_retry_min = 5s",
        "default_retry_max = 20s",
        "default_lifetime = 60s",
        "queue_keep_done = 20s",
        "control_max_connections = 64",
    ])
    out = os.environ.get("OTPMAIL_SOAK_OUT")
    d = Daemon(conf_extra=conf, start=False)
    try:
        d.start()
        if out:
            os.makedirs(out, exist_ok=True)
        csv = os.path.join(out or d.dir, "soak.csv")
        t.diag("soak: %.0f s, warm-up %.0f s, %.1f otp.issue/s + %.1f mail.send/s, "
               "sample every %.0f s -> %s" % (DURATION, WARMUP, ISSUE_RATE, SEND_RATE,
                                             SAMPLE, csv))
        stats, samples, took = run_load(d, csv)
        sent = sum(stats.sent.values())
        t.diag("sent %d otp.issue + %d mail.send in %.0f s (%.1f/s); answers: %d ok, "
               "errors %r" % (stats.sent["otp.issue"], stats.sent["mail.send"], took,
                              sent / took, stats.ok, stats.errors))
        t.is_(stats.answered(), sent, "every request answered")
        nerr = sum(stats.errors.values())
        t.ok(nerr * 100 < sent, "fewer than 1%% errors (%d of %d)" % (nerr, sent),
             stats.first_error)
        t.ok(d.alive(), "the daemon is alive at the end")
        st = d.call({"op": "stats"})
        tot = st.get("totals", {})
        t.diag("stats: %s" % json.dumps(st, sort_keys=True))
        for k in ("delivered", "deferred", "failed", "expired", "bounces"):
            t.ok(tot.get(k, 0) > 0, "some messages %s (%d)" % (k, tot.get(k, 0)))
        if WRAPPER:
            # valgrind's own memory is in the RSS: reported, not checked
            t.diag("RSS under %s: %.1f MiB at the end" % (WRAPPER[0],
                                                         samples[-1]["rss"] / MiB))
        else:
            rss_factor, rss_slack = (2.0, 64 * MiB) if SANITIZED else (1.25, 16 * MiB)
            flat(samples, "rss", rss_factor, rss_slack, MiB, "RSS (MiB)")
        flat(samples, "fds", 1, 16, 1, "descriptors")
        flat(samples, "spool", 1.5, 4 * MiB, MiB, "spool (MiB)")
        flat(samples, "db", 1.5, 16 * MiB, MiB, "database (MiB)")
        last = samples[-1]
        t.diag("last sample: RSS %.1f MiB, %d fds, spool %.1f MiB in %d files, "
               "db %.1f MiB, %d queued" % (last["rss"] / MiB, last["fds"],
                                           last["spool"] / MiB, last["spool_files"],
                                           last["db"] / MiB, last["queue"]))
    finally:
        d.stop()
        if out:
            shutil.copy(d.logfile, os.path.join(out, "otpmaild.log"))
        d.cleanup()
        for s in sinks:
            s.stop()
        subprocess.run(["rm", "-rf", base])
    t.done()


main()
