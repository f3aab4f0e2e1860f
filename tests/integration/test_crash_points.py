#!/usr/bin/env python3
"""test_crash_points.py - a crash at each step of the enqueue path.

Starts: otpmaild (sandbox mode, temp state dir) only, no peer.  The daemon
has a test-only crash hook: with OTPMAIL_FAULT=<step> in its environment it
calls abort() at that step (queue/spool.c spool_fault: after_tmp_write,
after_fsync, after_rename (the name is in place), after_dir_fsync in spool_write_file;
agent/control/ops_otp.c: after_db_commit, between store_otp_issue and the enqueue).

mail.send, for each spool step: with delivery paused, 3 acknowledged
messages, then a restart with the fault set; one more mail.send gets no
answer (the daemon aborts); a restart without the fault must list the 3
acknowledged messages, no temporary file is left, the unacknowledged one is
either absent or whole; after resume every delivered message in the sandbox
Maildir has its complete body, and no message is delivered twice.

otp.issue, for every step (after_db_commit too): the issue aborts; after a
restart, a code whose mail was spooled verifies, a resend is not blocked by
the cooldown (the crashed code was never acknowledged), and the resent
code verifies.

A crash while a state record is written (hold, a delivery's result, done;
steps state_after_write and state_after_fsync) and a torn record are
test_crash_state.py, which imports the helpers below.
"""

import email
import email.policy
import os
import re
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402

t = Tap()
SPOOL_STEPS = ("after_tmp_write", "after_fsync", "after_rename", "after_dir_fsync")
# A body big enough that a partial write would show (several pages).
BODY_LINES = 4000


def body_of(tag):
    return "".join("%s line %05d\n" % (tag, i) for i in range(BODY_LINES)) + \
        "END-OF-BODY %s\n" % tag


def whole(text, tag):
    """True if the message text carries every line of body_of(tag)."""
    text = text.replace("\r\n", "\n")
    return all(("%s line %05d\n" % (tag, i)) in text for i in (0, BODY_LINES // 2,
                                                              BODY_LINES - 1)) and \
        text.count("%s line " % tag) == BODY_LINES and ("END-OF-BODY %s\n" % tag) in text


def send(d, tag):
    return d.call({"op": "mail.send", "from": "app@example.org",
                   "to": ["rcpt-%s@example.com" % tag.lower()],
                   "subject": "crash %s" % tag, "text": body_of(tag)})


def list_ids(d):
    r = d.call({"op": "queue.list", "limit": 1000})
    return [m["id"] for m in r.get("messages", [])] if r.get("ok") else None


def tmp_files(d):
    try:
        return os.listdir(os.path.join(d.state, "spool", "tmp"))
    except OSError as e:
        return ["<%s>" % e]


def crash_request(d, req):
    """Sends req to a daemon that must abort: True if it died, no answer."""
    try:
        ans = d.call(req, timeout=20)
    except (OSError, EOFError, ValueError):
        ans = None
    died = wait_for(lambda: not d.alive(), 10)
    return ans, died


def restart_clean(d):
    d.env.pop("OTPMAIL_FAULT", None)
    d.stop()
    d.start()


def mail_send_step(step):
    with Daemon(conf_extra="queue_keep_done = 1h\n") as d:
        d.ctl("queue", "pause")
        acked = {}
        for i in range(3):
            tag = "ACK%d%s" % (i, step.upper().replace("_", ""))
            r = send(d, tag)
            if r.get("ok"):
                acked[r["id"]] = tag
        t.is_(len(acked), 3, "%s: 3 messages acknowledged before the crash" % step)
        d.stop()
        d.env["OTPMAIL_FAULT"] = step
        d.start()
        bad = "BAD" + step.upper().replace("_", "")
        ans, died = crash_request(d, {"op": "mail.send", "from": "app@example.org",
                                      "to": ["rcpt-bad@example.com"],
                                      "subject": "crash %s" % bad,
                                      "text": body_of(bad)})
        t.ok(died and ans is None, "%s: mail.send aborts the daemon, no answer" % step,
             "answer %r, alive %s" % (ans, d.alive()))
        t.ok(d.proc.returncode == -6, "%s: it died of SIGABRT (the hook fired)" % step,
             d.proc.returncode)
        restart_clean(d)
        ids = list_ids(d) or []
        t.ok(set(acked) <= set(ids), "%s: every acknowledged message still queued" % step,
             "missing %s" % sorted(set(acked) - set(ids)))
        # a write of the restarted daemon may be in flight: a leftover stays
        t.ok(wait_for(lambda: not tmp_files(d), 5),
             "%s: no temporary file left in spool/tmp" % step, tmp_files(d))
        extra = [i for i in ids if i not in acked]
        t.ok(len(extra) <= 1, "%s: at most the one unacknowledged message more" % step,
             extra)
        bodies_whole = True
        for qid in ids:
            r = d.call({"op": "queue.show", "id": qid, "body": True})
            tag = acked.get(qid, bad)
            if not (r.get("ok") and whole(r.get("body", ""), tag)):
                bodies_whole = False
                t.diag("%s: %s not whole: %r" % (step, qid, str(r)[:300]))
        t.ok(bodies_whole, "%s: every listed message's body is complete" % step)
        if step in ("after_rename", "after_dir_fsync"):
            t.diag("%s: the unacknowledged message is %s" %
                   (step, "in the queue" if extra else "gone"))
        else:
            t.is_(extra, [], "%s: a message never renamed into place is not queued" % step)
        corrupt = os.listdir(os.path.join(d.state, "spool", "corrupt"))
        t.is_(corrupt, [], "%s: nothing quarantined as corrupt" % step)

        d.ctl("queue", "resume")
        want = len(ids)
        got = wait_for(lambda: len(d.sandbox_messages()) >= want and
                       d.sandbox_messages(), 30)
        texts = []
        for p in d.sandbox_messages():
            with open(p, "rb") as f:
                texts.append(f.read().decode(errors="replace"))
        t.ok(got and len(texts) == want, "%s: every queued message delivered once (%d)" %
             (step, want), "%d in the sandbox" % len(texts))
        partial = []
        for tx in texts:
            m = re.search(r"^Subject: crash (\S+)", tx, re.M)
            tag = m.group(1) if m else None
            if tag is None or not whole(tx, tag):
                partial.append(tx[:200])
        t.is_(partial, [], "%s: no half-written message delivered" % step)
        tags = sorted(re.search(r"^Subject: crash (\S+)", tx, re.M).group(1)
                      for tx in texts if re.search(r"^Subject: crash (\S+)", tx, re.M))
        t.ok(set(acked.values()) <= set(tags) and len(tags) == len(set(tags)),
             "%s: each acknowledged message delivered, none twice" % step, tags)


def code_in(d, to, timeout=15):
    def find():
        for p in d.sandbox_messages():
            with open(p, "rb") as f:
                msg = email.message_from_bytes(f.read(), policy=email.policy.default)
            if (msg["To"] or "").find(to) < 0:
                continue
            for part in msg.walk():
                if part.get_content_type() == "text/plain":
                    m = re.search(r"^\s{4}(\d{6})\s*$", part.get_content(), re.M)
                    if m:
                        return m.group(1)
        return None
    return wait_for(find, timeout)


def otp_step(step):
    with Daemon(env={"OTPMAIL_FAULT": step}) as d:
        to = "crash-%s@example.org" % step.replace("_", "-")
        ans, died = crash_request(d, {"op": "otp.issue", "to": to, "purpose": "login"})
        t.ok(died and ans is None and d.proc.returncode == -6,
             "otp %s: otp.issue aborts the daemon, no answer" % step,
             "answer %r, rc %s" % (ans, d.proc.returncode))
        restart_clean(d)
        t.ok(wait_for(lambda: not tmp_files(d), 5),
             "otp %s: no temporary file left" % step, tmp_files(d))
        spooled = list_ids(d) or []
        if spooled:
            code = code_in(d, to)
            r = d.call({"op": "otp.verify", "to": to, "purpose": "login",
                        "code": code or "000000"})
            t.ok(code and r.get("ok"), "otp %s: the code of the spooled mail verifies" %
                 step, r)
        else:
            t.ok(step in ("after_db_commit", "after_tmp_write", "after_fsync"),
                 "otp %s: no mail spooled" % step, spooled)
        r = d.call({"op": "otp.issue", "to": to, "purpose": "login"})
        t.ok(r.get("ok"), "otp %s: a resend is not blocked by a cooldown" % step, r)
        if r.get("ok"):
            p = wait_for(lambda: [x for x in d.sandbox_messages() if r["id"] in x], 15)
            code = None
            if p:
                with open(p[0], "rb") as f:
                    msg = email.message_from_bytes(f.read(), policy=email.policy.default)
                for part in msg.walk():
                    if part.get_content_type() == "text/plain":
                        m = re.search(r"^\s{4}(\d{6})\s*$", part.get_content(), re.M)
                        code = m.group(1) if m else None
            v = d.call({"op": "otp.verify", "to": to, "purpose": "login",
                        "code": code or "000000"})
            t.ok(code and v.get("ok"), "otp %s: the resent code verifies" % step, v)


def main():
    if os.geteuid() != 0:
        t.skip("test_crash_points", "needs root")
        t.done()
    # the daemons abort on purpose: no core files (they inherit this limit)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for step in SPOOL_STEPS:
        mail_send_step(step)
    for step in ("after_db_commit",) + SPOOL_STEPS:
        otp_step(step)
    t.done()


if __name__ == "__main__":
    main()
