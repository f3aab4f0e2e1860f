#!/usr/bin/env python3
"""test_io_faults.py - a disk that answers EIO: every request the fault
touches is refused (unavailable), nothing refused is ever delivered or
verifies, nothing acknowledged is lost, and the daemon works again, with
no restart, once the disk does.

Starts: smtp-sink (dumps) on 127.0.0.2:25 for example.com, smtp-sink -r
RCPT (every RCPT deferred) on 127.0.0.3:25 for defer.example.com, and
otpmaild (sandbox = no) under tests/powercut/iofault.so (LD_PRELOAD), which
fails chosen fsync, fdatasync, write, rename and link calls under the state
directory with EIO by rules in a control file the test rewrites (no rule:
the disk is back).  A rule fails every matching call, as a broken disk
would, until the test removes it.

Injection points (each a separate check, counted at the end):
  new message, for mail.send and for otp.issue: write of the unnamed file,
  its fsync, the link that names it, the fsync of its directory (8); the
  same for mail.send on a file system without O_TMPFILE (the shim refuses
  it, IOFAULT_NO_TMPFILE): write of tmp/<name>, its fsync, the rename, the
  directory fsync (4);
  state update (queue.hold): the appended record's write, its fdatasync,
  and the rename of a compacted file (3); the refused hold must not
  happen, and the next one, answered ok, must be on disk (a restart);
  delivery results: the state record of a delivered and of a deferred
  message (write, then fdatasync) while the queue runs (2);
  database: the log write of otp.issue's commit, the log flush
  (fdatasync) before the mail is named, that flush failing once only (as
  Linux reports a lost writeback once, and a retried fdatasync returns 0:
  libdb 5.3 must not retry it, and does not), the log write and the log
  flush of a successful otp.verify's commit: it answers unavailable; once
  the disk is back the code verifies, only once (write), or is spent
  (flush: the commit was written, so the code is never accepted twice; a
  new code then verifies once) (5);
  checkpoint: the data files' write and fdatasync at shutdown (1);
  otp.issue with an idempotency_key refused at the spool's link, the log
  write, the log flush: the same request once the disk is back is done,
  not refused again from the key's record nor "in progress" (3).
And a sweep (not counted in those): for mail.send and otp.issue, each
write, fsync, fdatasync, link and rename call under the state directory
from the request's start, failed once in turn (rule "kind * N-1 1"; a
single EIO, as a disk that recovers at once): the answer is ok or
unavailable and a refused message leaves nothing (all of them end up in
the final delivery check too).
Berkeley DB retries a failed write (not a failed fdatasync) up to 100
times before it reports the error: a write rule fails them all.  The plain run takes about 10 s.

For each point: the answer is {"ok": false, "error": "unavailable"} (the
daemon's detail aside), the fault really fired (the shim's log), no file
of the refused message is left in the spool (spool/msg, spool/tmp); for
otp.issue, the code of the refused mail (the shim dumps the file it failed
on, tests/powercut/iofault.c) does not verify; then, with the rule gone,
the same request works.  At the end the daemon is restarted on a sound
disk and the queue resumed: the sink receives exactly the acknowledged
messages (each recipient a tag; duplicates allowed only for a message
whose "delivered" record could not be written, at-least-once), none of
the refused ones, and nothing is quarantined.
"""

import glob
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, TOP_BUILDDIR, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
SHIM = os.path.join(TOP_BUILDDIR, "tests", "powercut", "iofault.so")
CONF = ("sandbox = no\n"
        "log_level = info\n"
        "tls_policy = none\n"
        "route = example.com [127.0.0.2]:25\n"
        "route = defer.example.com [127.0.0.3]:25\n"
        "otp_from = noreply@example.com\n"
        "otp_resend_cooldown = 0s\n"
        "otp_max_per_address_hour = 1000\n"
        "default_retry_min = 1s\n"
        "default_retry_max = 2s\n"
        "queue_min_free_space = 0\n")
NEW = "spool/msg/??/#*"          # an unnamed (O_TMPFILE) message file
NAMED = "spool/msg/??/[!#]*"     # a message file with its name


def code_in(body):
    """The code of an OTP mail: the indented line of its text part."""
    m = re.search(r"^\s{4}([0-9A-Z]{4,12})\s*$", body, re.M)
    return m.group(1) if m else None


class Faults:
    def __init__(self, base):
        self.ctl = os.path.join(base, "ctl")
        self.log = os.path.join(base, "faults")
        self.dump = os.path.join(base, "dump")
        os.mkdir(self.dump)
        self.points = []

    def env(self, root):
        return {"LD_PRELOAD": SHIM, "IOFAULT_ROOT": root, "IOFAULT_CTL": self.ctl,
                "IOFAULT_LOG": self.log, "IOFAULT_DUMP": self.dump,
                # the shim is loaded ahead of the sanitizer runtime
                "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
                ":verify_asan_link_order=0"}

    def set(self, *rules):
        # the shim ignores any other line: a mistyped rule must not pass
        # for a test that injected nothing
        for r in rules:
            assert len(r.split()) in (2, 4, 5), "bad iofault rule %r" % r
        with open(self.ctl + ".new", "w") as f:
            # "op glob" fails every call from now on; "op glob after count"
            # [slow=MS] as written
            f.write("".join(r + (" 0 0\n" if len(r.split()) == 2 else "\n")
                            for r in rules))
        os.rename(self.ctl + ".new", self.ctl)

    def clear(self):
        self.set()

    def fired(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def dump_of(self, n):
        """The file the n-th fault (from 0) was injected on, as dumped."""
        lines = self.fired()
        if len(lines) <= n:
            return ""
        try:
            with open(os.path.join(self.dump, lines[n].split()[-1]), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def spool_files_with(d, needle):
    """Message files (named or not yet) whose content holds needle."""
    hits = []
    for p in glob.glob(os.path.join(d.state, "spool", "msg", "*", "*")) + \
            glob.glob(os.path.join(d.state, "spool", "tmp", "*")):
        try:
            with open(p, "rb") as f:
                if needle.encode() in f.read():
                    hits.append(p)
        except OSError:
            pass
    return hits


class Run:
    def __init__(self, d, fx):
        self.d = d
        self.fx = fx
        self.acked = {}          # tag -> queue id
        self.refused = set()     # tags
        self.twice = set()       # tags with two acknowledged mails
        self.n = 0
        self.covered = 0

    def tag(self, what):
        self.n += 1
        return "iof%02d-%s" % (self.n, what)

    def request(self, op, tag):
        if op == "mail.send":
            return self.d.call({"op": "mail.send", "from": "app@example.com",
                                "to": ["%s@example.com" % tag],
                                "subject": "io faults " + tag, "text": "body %s\n" % tag},
                               timeout=120)
        return self.d.call({"op": "otp.issue", "to": "%s@example.com" % tag,
                            "purpose": "login"}, timeout=120)

    def refused_point(self, name, op, rules):
        """One injection point on the request path of op."""
        tag = self.tag(re.sub(r"[^A-Za-z0-9.]+", "_", name))
        before = len(self.fx.fired())
        self.fx.set(*rules)
        r = self.request(op, tag)
        dump = self.fx.dump_of(before)
        self.fx.clear()
        fired = len(self.fx.fired()) > before
        t.ok(fired, "%s: the fault fired" % name)
        t.ok(r.get("error") == "unavailable", "%s: %s answers unavailable" % (name, op), r)
        if r.get("ok"):
            self.acked[tag] = r["id"]
        else:
            self.refused.add(tag)
        t.is_(spool_files_with(self.d, tag + "@"), [],
              "%s: no file of the refused message in the spool" % name)
        if op == "otp.issue" and " spool/" in " " + rules[0].split()[1]:
            code = code_in(dump)
            if code is None:
                t.diag("%s: no code in the dumped file (%d bytes)" % (name, len(dump)))
            else:
                v = self.d.call({"op": "otp.verify", "to": "%s@example.com" % tag,
                                 "purpose": "login", "code": code}, timeout=120)
                t.ok(not v.get("ok"), "%s: the refused mail's code does not verify" %
                     name, v)
        self.after(name, op)
        if fired and r.get("error") == "unavailable":
            self.covered += 1

    def sweep(self, op):
        """Each call of each kind a request makes, failed once (the N-th
        call from the request's start): the answer is ok or unavailable,
        and a refused message leaves nothing.  Returns the calls failed."""
        hit = 0
        for kind in ("write", "fsync", "fdatasync", "link", "rename"):
            for n in range(1, 40):
                tag = self.tag("sweep")
                before = len(self.fx.fired())
                self.fx.set("%s * %d 1" % (kind, n - 1))
                r = self.request(op, tag)
                self.fx.clear()
                if len(self.fx.fired()) == before:
                    # fewer than n such calls: the request went through
                    if r.get("ok"):
                        self.acked[tag] = r["id"]
                    break
                hit += 1
                if r.get("ok"):
                    self.acked[tag] = r["id"]
                    continue
                self.refused.add(tag)
                if r.get("error") != "unavailable" or spool_files_with(self.d, tag + "@"):
                    t.ok(False, "%s, %s call %d failed: unavailable, nothing left" %
                         (op, kind, n), r)
        return hit

    def after(self, name, op):
        tag = self.tag("after")
        r = self.request(op, tag)
        t.ok(r.get("ok"), "%s: disk back: %s works again, no restart" % (name, op), r)
        if r.get("ok"):
            self.acked[tag] = r["id"]


def state_points(run, d, fx):
    """queue.hold on a queued message: its appended state record."""
    tag = run.tag("state")
    r = run.request("mail.send", tag)
    qid = r.get("id")
    run.acked[tag] = qid
    for name, rule in (("state record write", "write " + NAMED),
                       ("state record fdatasync", "fdatasync " + NAMED)):
        before = len(fx.fired())
        fx.set(rule)
        h = d.call({"op": "queue.hold", "id": qid})
        fx.clear()
        fired = len(fx.fired()) > before
        t.ok(fired, "%s: the fault fired" % name)
        t.ok(h.get("error") == "unavailable", "%s: queue.hold answers unavailable" %
             name, h)
        s = d.call({"op": "queue.show", "id": qid})
        t.ok(s.get("ok") and s.get("state") == "queued",
             "%s: the refused hold did not happen" % name, s)
        h = d.call({"op": "queue.hold", "id": qid})
        t.ok(h.get("ok"), "%s: disk back: queue.hold works" % name, h)
        d.stop()
        d.start()
        s = d.call({"op": "queue.show", "id": qid})
        t.ok(s.get("ok") and s.get("state") == "held",
             "%s: the hold answered ok is on disk (held after a restart)" % name, s)
        r = d.call({"op": "queue.release", "id": qid})
        t.ok(r.get("ok"), "%s: queue.release works" % name, r)
        if fired and h.get("ok"):
            run.covered += 1
    # past 64 KiB of records a state update rewrites the file (tmp/, rename)
    path = glob.glob(os.path.join(d.state, "spool", "msg", "*", qid))[0]
    while os.path.getsize(path) < 60 * 1024:
        d.pipeline([{"op": "queue.hold", "id": qid}, {"op": "queue.release", "id": qid}] * 8)
    name = "compaction rename"
    before = len(fx.fired())
    fx.set("rename spool/msg/*")
    for i in range(200):
        op = ("queue.hold", "queue.release")[i % 2]
        h = d.call({"op": op, "id": qid})
        if not h.get("ok"):
            break
    fx.clear()
    fired = len(fx.fired()) > before
    t.ok(fired, "%s: the fault fired" % name)
    t.ok(h.get("error") == "unavailable", "%s: %s answers unavailable" % (name, op), h)
    s = d.call({"op": "queue.show", "id": qid})
    t.is_(s.get("state"), ("queued", "held")[i % 2],
          "%s: the refused %s did not happen" % (name, op))
    t.is_(os.listdir(os.path.join(d.state, "spool", "tmp")), [],
          "%s: no temporary file left" % name)
    s = d.call({"op": "queue.show", "id": qid, "body": True})
    t.ok(s.get("ok") and ("body %s" % tag) in s.get("body", ""),
         "%s: the message still reads whole" % name, s)
    h = d.call({"op": op, "id": qid})
    t.ok(h.get("ok"), "%s: disk back: %s works" % (name, op), h)
    d.call({"op": "queue.release", "id": qid})
    if fired and h.get("ok"):
        run.covered += 1


def delivery_points(run, d, fx, sink):
    """Delivery results while every state record fails: nothing is lost."""
    tags = []
    for i in range(3):
        tag = run.tag("dlv")
        r = run.request("mail.send", tag)
        run.acked[tag] = r.get("id")
        tags.append(tag)
    dtag = run.tag("deferred")
    r = d.call({"op": "mail.send", "from": "app@example.com",
                "to": ["%s@defer.example.com" % dtag], "subject": "io faults deferred",
                "text": "deferred\n"})
    t.ok(r.get("ok"), "a message for the deferring peer is queued", r)
    deferred_id = r.get("id")
    before = len(fx.fired())
    fx.set("write " + NAMED, "fdatasync " + NAMED)
    d.call({"op": "queue.resume"})
    got = wait_for(lambda: {m.rcpt.split("@")[0] for m in sink.messages()} >=
                   set(tags), timeout=30)
    t.ok(got, "delivery results unwritable: the messages are delivered anyway")

    def deferred_tried():
        s = d.call({"op": "queue.show", "id": deferred_id})
        return s if s.get("ok") and s.get("attempts", 0) >= 1 else None
    s = wait_for(deferred_tried, timeout=30)
    t.ok(s, "the deferred message was tried", s)
    lines = fx.fired()[before:]
    # the record's write works, its fdatasync does not: the deferred
    # message's next attempt (a delivered one's record is not synced)
    fx.set("fdatasync " + NAMED)
    attempts = s.get("attempts", 0) if s else 0
    d.call({"op": "queue.flush", "ids": [deferred_id]})
    s = wait_for(lambda: (lambda r: r if r.get("attempts", 0) > attempts else None)(
        d.call({"op": "queue.show", "id": deferred_id})), timeout=30)
    t.ok(s, "the deferred message was tried again", s)
    lines += fx.fired()[before + len(lines):]
    fx.clear()
    # every message delivered so far may have lost its "delivered" record
    delivered = {m.rcpt.split("@")[0] for m in sink.messages()}
    t.diag("delivery-time faults: %d (%s)" % (len(lines), sorted({l.split()[0]
                                                                 for l in lines})))
    t.ok(d.call({"op": "ping"}).get("ok"), "the daemon keeps serving")
    s = d.call({"op": "queue.show", "id": deferred_id})
    t.ok(s.get("ok") and s.get("state") in ("deferred", "queued", "delivering"),
         "the deferred message is still queued", s)
    for op in ("write", "fdatasync"):
        t.ok(any(l.startswith(op) for l in lines), "delivery results: %s faults fired" % op)
        if any(l.startswith(op) for l in lines):
            run.covered += 1
    d.call({"op": "queue.delete", "id": deferred_id})
    d.call({"op": "queue.pause"})
    return delivered


def idem_point(run, d, fx, name, rule):
    """otp.issue with an idempotency_key refused by a fault: the same
    request, once the disk is back, is done (not a replayed refusal, not
    "in progress"), and replays from then on."""
    tag = run.tag("idem")
    req = {"op": "otp.issue", "to": "%s@example.com" % tag, "purpose": "login",
           "idempotency_key": tag}
    before = len(fx.fired())
    fx.set(rule)
    r = d.call(req, timeout=120)
    fx.clear()
    fired = len(fx.fired()) > before
    t.ok(fired, "%s: the fault fired" % name)
    t.ok(r.get("error") == "unavailable", "%s: answers unavailable" % name, r)
    r2 = d.call(req, timeout=120)
    t.ok(r2.get("ok") and not r2.get("replayed"), "%s: disk back: the same request "
         "(same key) is done" % name, r2)
    r3 = d.call(req, timeout=120)
    t.ok(r3.get("ok") and r3.get("replayed") and r3.get("id") == r2.get("id"),
         "%s: and replayed after that" % name, r3)
    if r2.get("ok"):
        run.acked[tag] = r2["id"]
    if fired and r.get("error") == "unavailable" and r2.get("ok"):
        run.covered += 1


def verify_point(run, d, fx, name, rule, spent):
    """otp.verify while the database log cannot be written or flushed.
    spent: the refused verify's commit was made, only its write or flush
    failed, so the code is used up (never accepted twice; the user asks for
    another)."""
    tag = run.tag("verify")
    r = run.request("otp.issue", tag)
    run.acked[tag] = r.get("id")
    body = d.call({"op": "queue.show", "id": r.get("id"), "body": True}).get("body", "")
    code = code_in(body)
    req = {"op": "otp.verify", "to": "%s@example.com" % tag, "purpose": "login",
           "code": code}
    before = len(fx.fired())
    fx.set(rule)
    v = d.call(req, timeout=120)
    fx.clear()
    fired = len(fx.fired()) > before
    t.ok(fired, "%s: the fault fired" % name)
    t.ok(v.get("error") == "unavailable", "%s: otp.verify answers unavailable, "
         "not ok" % name, v)
    if spent:
        v = d.call(req, timeout=120)
        t.ok(v.get("error") == "invalid_code", "%s: disk back: the code is spent" % name, v)
        r = run.request("otp.issue", tag)
        run.acked[tag] = r.get("id")
        run.twice.add(tag)      # two mails to this address
        body = d.call({"op": "queue.show", "id": r.get("id"), "body": True}).get("body", "")
        req["code"] = code_in(body)
    v = d.call(req, timeout=120)
    t.ok(v.get("ok"), "%s: disk back: a%s code verifies" % (name, " new" if spent else ""),
         v)
    v = d.call(req, timeout=120)
    t.ok(not v.get("ok"), "%s: once" % name, v)
    if fired:
        run.covered += 1


def stall_point(d, fx, sink):
    """A stalled event log holds no delivery: the leases of delivered
    messages wait for their events' sync, the delivery workers do not."""
    d.stop()
    with open(d.conf, "a") as f:
        f.write("delivery_workers = 2\n")   # the stall once held every one
    d.start()
    d.call({"op": "queue.resume"})
    tags = ["stall%d" % i for i in range(6)]
    before = len(fx.fired())
    fx.set("fdatasync events/* 0 0 slow=8000")
    ids = {}
    for tag in tags:
        r = d.call({"op": "mail.send", "from": "app@example.com",
                    "to": ["%s@example.com" % tag], "subject": "stall " + tag,
                    "text": "stall %s\n" % tag})
        ids[tag] = r.get("id")
    got = wait_for(lambda: {m.rcpt.split("@")[0] for m in sink.messages()} >= set(tags),
                   timeout=6)
    stalled = [l for l in fx.fired()[before:] if l.endswith(" slow")]
    t.ok(stalled, "the event log's fdatasync stalls (8 s each)", fx.fired()[before:])
    t.ok(got, "during the stall, 6 messages on 2 delivery workers all reach the sink")
    s = d.call({"op": "queue.show", "id": ids[tags[0]]})
    t.is_(s.get("state"), "delivering", "a delivered message stays leased while its "
          "events are not durable")
    fx.clear()

    def released():
        return all(d.call({"op": "queue.show", "id": i}).get("state") == "done"
                   for i in ids.values())
    t.ok(wait_for(released, timeout=40), "once the stall ends, each is released (done)")
    st = d.call({"op": "message.status", "id": ids[tags[-1]]})
    t.ok("delivered" in [e.get("type") for e in st.get("events") or []],
         "its delivered event is there", st)


def main():
    if not os.path.exists(SHIM):
        t.skip("I/O faults", "no %s (make check builds it)" % SHIM)
        t.done()
        return
    base = tempfile.mkdtemp(prefix="otpm-iofault-")
    fx = Faults(base)
    sink = SmtpSink("127.0.0.2", 25).start()
    dsink = SmtpSink("127.0.0.3", 25, dump=False, extra_args=["-r", "RCPT"]).start()
    d = Daemon(conf_extra=CONF, start=False)
    os.makedirs(d.state, 0o700)
    d.env.update(fx.env(d.state))
    run = Run(d, fx)
    try:
        d.start()
        d.call({"op": "queue.pause"})
        for op in ("mail.send", "otp.issue"):
            for step, rule in (("write", "write " + NEW), ("fsync", "fsync " + NEW),
                               ("link", "link spool/msg/*"),
                               ("dir fsync", "fsync spool/msg/??")):
                run.refused_point("%s %s" % (op, step), op, [rule])
        # a file system without O_TMPFILE: tmp/<name>, fsync, rename
        d.stop()
        d.env["IOFAULT_NO_TMPFILE"] = "1"
        d.start()
        for step, rule in (("write", "write spool/tmp/*"), ("fsync", "fsync spool/tmp/*"),
                           ("rename", "rename spool/msg/*"),
                           ("dir fsync", "fsync spool/msg/??")):
            run.refused_point("mail.send without O_TMPFILE: %s" % step, "mail.send", [rule])
        d.stop()
        del d.env["IOFAULT_NO_TMPFILE"]
        d.start()
        for op in ("mail.send", "otp.issue"):
            n = run.sweep(op)
            t.ok(n > 0, "%s: each of its %d calls failed once in turn: unavailable or ok, "
                 "nothing left of a refused one" % (op, n))
        run.refused_point("otp.issue log write", "otp.issue", ["write db/log.*"])
        run.refused_point("otp.issue log flush", "otp.issue", ["fdatasync db/log.*"])
        # Linux reports a failed writeback once: the next fdatasync returns 0
        # whether or not the data reached the disk (libdb must not retry)
        run.refused_point("otp.issue log flush fails once", "otp.issue",
                          ["fdatasync db/log.* 0 1"])
        for what, rule in (("spool link", "link spool/msg/*"),
                           ("log write", "write db/log.*"),
                           ("log flush", "fdatasync db/log.*")):
            idem_point(run, d, fx, "otp.issue with an idempotency_key, %s" % what, rule)
        # the commit stays in the log buffer and the flush writes it
        # (store_commit): a failed write is a failed flush, the code spent
        verify_point(run, d, fx, "otp.verify log write", "write db/log.*", True)
        verify_point(run, d, fx, "otp.verify log flush", "fdatasync db/log.*", True)
        state_points(run, d, fx)
        delivered = delivery_points(run, d, fx, sink)

        # checkpoint at shutdown on a failing disk, then a sound restart
        before = len(fx.fired())
        fx.set("write db/*.db", "fdatasync db/*.db")
        rc = d.stop(timeout=120)
        fired = len(fx.fired()) > before
        fx.clear()
        t.ok(fired, "checkpoint at shutdown: the fault fired")
        t.diag("exit status with a failing checkpoint: %s" % rc)
        d.start()
        t.ok(True, "the daemon starts again after the failed checkpoint")
        if fired:
            run.covered += 1

        ids = {m["id"] for m in d.call({"op": "queue.list", "limit": 1000})
               .get("messages", [])}
        missing = sorted(tag for tag, qid in run.acked.items()
                         if qid not in ids and tag not in delivered)
        t.is_(missing, [], "after the restart every acknowledged message is queued "
              "(or was delivered)")
        d.call({"op": "queue.resume"})
        want = set(run.acked)
        wait_for(lambda: {m.rcpt.split("@")[0] for m in sink.messages()} >= want,
                 timeout=30)
        got = [m.rcpt.split("@")[0] for m in sink.messages()]
        t.is_(sorted(set(got) - want), [], "nothing refused (or unknown) was delivered")
        t.is_(sorted(want - set(got)), [], "every acknowledged message was delivered")
        dups = sorted({g for g in got if got.count(g) > (2 if g in run.twice else 1)} -
                      delivered)
        t.is_(dups, [], "no duplicate but where a delivered record was lost")
        t.is_(os.listdir(os.path.join(d.state, "spool", "corrupt")), [],
              "nothing quarantined")
        t.diag("injection points covered: %d (faults injected: %d)" %
               (run.covered, len(fx.fired())))
        t.is_(run.covered, 26, "all 26 injection points covered")
        stall_point(d, fx, sink)
    finally:
        d.stop()
        d.cleanup()
        sink.stop()
        dsink.stop()
        shutil.rmtree(base, ignore_errors=True)
    t.done()


main()
