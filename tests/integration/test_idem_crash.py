#!/usr/bin/env python3
"""test_idem_crash.py - a retry after a crash sends no second mail.

Starts: otpmaild (sandbox mode, temp state dir) only, no peer; it uses the
test-only crash hook of test_crash_points.py (OTPMAIL_FAULT=<step> makes
the spool write abort() at that step).

For otp.issue and mail.send, each with an idempotency_key, and each step:
  after_fsync      the mail is on disk, not named, its answer not yet
                   prepared: never sent
  after_rename     the mail is named (it will be delivered), its answer
                   prepared, not given
  after_dir_fsync  the same, the name durable
the request aborts the daemon (no answer); after a restart the same request
(same key, same body) answers ok: with the named steps "replayed" with the
id of the spooled message, with after_fsync a fresh message.  Either way
exactly one mail reaches the sandbox Maildir; a third try replays the same
id; another body under the key gets idempotency_mismatch.

Then the large-spool case: after a crash at after_dir_fsync the daemon
restarts with its spool loading on the loader thread, slowed by the
test-only OTPMAIL_TEST_SLOW_LOAD (ms); the retry answers unavailable
(limit queue_loading, retry_after) and sends nothing, and once the queue
has loaded it replays the spooled id: one mail.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
from test_crash_points import crash_request, list_ids, restart_clean  # noqa: E402

t = Tap()
STEPS = ("after_fsync", "after_rename", "after_dir_fsync")
NAMED = ("after_rename", "after_dir_fsync")


def request(op, to, key):
    if op == "otp.issue":
        return {"op": "otp.issue", "to": to, "purpose": "login",
                "idempotency_key": key}
    return {"op": "mail.send", "from": "app@example.org", "to": [to],
            "subject": "idem " + key, "text": "hello\n", "idempotency_key": key}


def mails_to(d, to):
    n = 0
    for p in d.sandbox_messages():
        with open(p, "rb") as f:
            head = f.read(8192).decode("utf-8", "replace")
        if ("\nTo: %s" % to) in head or head.startswith("To: %s" % to):
            n += 1
    return n


def one(op, step):
    name = "%s %s" % (op, step)
    to = "idem-%s-%s@example.org" % (op.replace(".", "-"), step.replace("_", "-"))
    key = "key-%s-%s" % (op, step)
    with Daemon(env={"OTPMAIL_FAULT": step}) as d:
        ans, died = crash_request(d, request(op, to, key))
        t.ok(died and ans is None and d.proc.returncode == -6,
             "%s: the request aborts the daemon, no answer" % name,
             "answer %r, rc %s" % (ans, d.proc.returncode))
        restart_clean(d)
        spooled = list_ids(d) or []
        t.is_(len(spooled), 1 if step in NAMED else 0,
              "%s: %s message spooled before the crash" %
              (name, "one" if step in NAMED else "no"))
        r = d.call(request(op, to, key))
        t.ok(r.get("ok"), "%s: the retry answers ok" % name, r)
        if step in NAMED:
            t.ok(r.get("replayed") is True and spooled and r.get("id") == spooled[0],
                 "%s: it is the first answer, replayed, with the spooled id" % name,
                 "answer %r, spooled %r" % (r, spooled))
        else:
            t.ok(not r.get("replayed") and r.get("id") not in (None, ""),
                 "%s: a fresh message (the first was never named)" % name, r)
        first = r.get("id")
        t.ok(wait_for(lambda: mails_to(d, to) >= 1, 15),
             "%s: the mail reaches the sandbox" % name)
        # give a second mail, were there one, the time to arrive
        wait_for(lambda: mails_to(d, to) > 1, 2)
        t.is_(mails_to(d, to), 1, "%s: exactly one mail to %s" % (name, to))
        r = d.call(request(op, to, key))
        t.ok(r.get("ok") and r.get("replayed") is True and r.get("id") == first,
             "%s: a third try replays the same id" % name, r)
        other = request(op, to, key)
        other["purpose" if op == "otp.issue" else "subject"] = "other"
        r = d.call(other)
        t.ok(not r.get("ok") and r.get("error") == "idempotency_mismatch",
             "%s: another body under the key: idempotency_mismatch" % name, r)
        t.is_(mails_to(d, to), 1, "%s: still one mail" % name)


def loading():
    """A crashed run's key while a large spool still loads: the retry
    answers unavailable (queue_loading) and sends nothing; once loaded, the
    retry replays the spooled id and one mail arrives."""
    op, step = "otp.issue", "after_dir_fsync"
    name = "%s %s, queue loading" % (op, step)
    to, key = "idem-loading@example.org", "key-loading"
    with Daemon(env={"OTPMAIL_FAULT": step}) as d:
        ans, died = crash_request(d, request(op, to, key))
        t.ok(died and ans is None, "%s: the request aborts the daemon" % name,
             "answer %r" % (ans,))
        # the loader thread waits 4 s before reading the spool: longer than
        # the 2 s a request waits for it
        d.env["OTPMAIL_TEST_SLOW_LOAD"] = "4000"
        restart_clean(d)
        r = d.call(request(op, to, key))
        t.ok(not r.get("ok") and r.get("error") == "unavailable"
             and r.get("limit") == "queue_loading" and r.get("retry_after"),
             "%s: the retry answers unavailable, queue_loading, retry_after" % name, r)
        t.is_(mails_to(d, to), 0, "%s: nothing sent while loading" % name)
        t.ok(wait_for(lambda: d.call({"op": "stats"}).get("queue_loading") is not True, 20),
             "%s: the queue finishes loading" % name)
        spooled = list_ids(d) or []
        r = d.call(request(op, to, key))
        t.ok(r.get("ok") and r.get("replayed") is True and spooled
             and r.get("id") == spooled[0],
             "%s: then the retry replays the spooled id" % name,
             "answer %r, spooled %r" % (r, spooled))
        t.ok(wait_for(lambda: mails_to(d, to) >= 1, 15),
             "%s: the mail reaches the sandbox" % name)
        wait_for(lambda: mails_to(d, to) > 1, 2)
        t.is_(mails_to(d, to), 1, "%s: exactly one mail" % name)


for op in ("otp.issue", "mail.send"):
    for step in STEPS:
        one(op, step)
loading()
t.done()
