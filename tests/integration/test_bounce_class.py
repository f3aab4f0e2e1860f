#!/usr/bin/env python3
"""test_bounce_class.py - every failure and deferral gets its bounce class.

Starts (peers.py): one smtp-sink per reply on 127.0.9.x:2525 that rejects
RCPT, MAIL or the final "." with a chosen reply in a big provider's
documented form (-f/-r with -B/-b: Gmail's 550 5.1.1 and 452 4.2.2,
Microsoft's Spamhaus block, Gmail's 5.7.26 DMARC refusal, Yahoo's 421
[TSS04], a local RBL named by an admin's rule), nothing on a port (a refused
connection), and otpmaild (sandbox = no, a `route` per reply, an admin's
bounce_rules_file).  message.status and queue.show show last_error_class,
reply_class and the blocklist; the delivery log line has bounce=; an
admin's rule goes first; a bad rules line refuses the start with file:line.
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import OTPMAILD, Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
PORT = 2525
SCENARIOS = [
    # name, smtp-sink arguments, state, class, blocklist
    ("Gmail no such user",
     ["-f", "rcpt", "-B", "550 5.1.1 The email account that you tried to reach "
      "does not exist. Please try double-checking the recipient's email address"],
     "failed", "hard", None),
    ("Gmail over quota",
     ["-r", "rcpt", "-b", "452 4.2.2 The email account that you tried to reach is "
      "over quota. Please direct the recipient to https://support.google.com/mail/"],
     "deferred", "mailbox_full", None),
    ("Microsoft Spamhaus block",
     ["-f", "mail", "-B", "550 5.7.1 Service unavailable, Client host [127.0.0.1] "
      "blocked using Spamhaus. To request removal from this list see "
      "https://www.spamhaus.org/query/ip/127.0.0.1"],
     "failed", "policy", "Spamhaus"),
    ("Gmail DMARC",
     ["-f", ".", "-B", "550 5.7.26 Unauthenticated email from example.net is not "
      "accepted due to domain's DMARC policy. Please contact the administrator"],
     "failed", "auth", None),
    ("Yahoo TSS04",
     ["-r", "rcpt", "-b", "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily "
      "deferred due to unexpected volume or user complaints"],
     "deferred", "policy", None),
    ("greylisting",
     ["-r", "rcpt", "-b", "450 4.2.0 Recipient address rejected: Greylisted"],
     "deferred", "temporary", None),
    ("an admin's RBL",
     ["-f", "rcpt", "-B", "554 5.7.1 Rejected: 127.0.0.1 listed at rbl.example.test"],
     "failed", "policy", "LocalRBL"),
    ("connection refused", None, "deferred", "transport", None),
]
RULES = ("# an admin's rules\n"
         "policy:LocalRBL  5xx  *  \"rbl.example.test\"\n")


def status(d, qid):
    return d.call({"op": "message.status", "id": qid})


def rcpt0(st):
    rs = st.get("recipients") or [{}]
    return rs[0] if isinstance(rs[0], dict) else {}


def main():
    if os.geteuid() != 0:
        t.skip("test_bounce_class", "needs root (smtp-sink -u nobody)")
        t.done()
    tmp = tempfile.mkdtemp(prefix="otpm-bounce-")
    rules = os.path.join(tmp, "bounce-rules")
    with open(rules, "w") as f:
        f.write(RULES)
    os.chmod(tmp, 0o755)
    os.chmod(rules, 0o644)
    routes = "".join("route = b%d.example.org [127.0.9.%d]:%d\n" % (i, 10 + i, PORT)
                     for i in range(len(SCENARIOS)))
    conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n" +
            routes + "smtp_connect_timeout = 2s\n"
            "default_retry_min = 600s\ndefault_retry_max = 600s\n"
            "bounce_rules_file = %s\n" % rules)
    peers = []
    try:
        for i, (name, how, _, _, _) in enumerate(SCENARIOS):
            if how is not None:
                peers.append(SmtpSink("127.0.9.%d" % (10 + i), PORT,
                                      extra_args=how).start())
        with Daemon(conf_extra=conf) as d:
            sent = []
            for i, sc in enumerate(SCENARIOS):
                r = d.call({"op": "mail.send", "from": "app@example.net",
                            "to": ["user@b%d.example.org" % i], "subject": "bounce",
                            "text": "bounce class test\n"})
                sent.append(r.get("id"))
                t.ok(r.get("ok"), "%s: accepted" % sc[0], r)
            for i, (name, how, want, klass, blist) in enumerate(SCENARIOS):
                qid = sent[i]
                last = {}

                def pred():
                    nonlocal last
                    last = status(d, qid)
                    return rcpt0(last).get("state") in ("failed", "deferred",
                                                        "delivered")
                wait_for(pred, 30, 0.2)
                rc = rcpt0(last)
                t.ok(rc.get("state") == want and rc.get("reply_class") == klass and
                     last.get("last_error_class") == klass and
                     rc.get("reply_blocklist") == blist and
                     last.get("last_error_blocklist") == blist,
                     "%s: %s, class %s%s in message.status" %
                     (name, want, klass, " (%s)" % blist if blist else ""), last)
                show = d.call({"op": "queue.show", "id": qid})
                t.ok(show.get("last_error_class") == klass and
                     rcpt0(show).get("reply_class") == klass,
                     "%s: class %s in queue.show" % (name, klass), show)
            p = d.ctl("queue", "list", "--all")
            t.ok("[hard] 550 5.1.1" in p.stdout and "[policy:Spamhaus] 550" in p.stdout,
                 "otpmailctl queue list shows the class before the last error",
                 p.stdout)
            log = d.log_text()
            t.ok("bounce=hard" in log and "bounce=transport" in log and
                 "blocklist=Spamhaus" in log,
                 "the delivery log lines carry the class and the blocklist",
                 log[-2000:])
            m = d.call({"op": "metrics"}).get("text", "")
            t.ok('bounce="mailbox_full"' in m and 'bounce="policy"' in m,
                 "the delivery metrics have a bounce label", m[-1500:])
        # a bad line refuses the start, with file:line
        with open(rules, "a") as f:
            f.write("hard 550 5.1\n")
        d = Daemon(conf_extra=conf, start=False)
        chk = subprocess.run([OTPMAILD, "--check-config", "-c", d.conf],
                             capture_output=True, text=True)
        t.ok(chk.returncode != 0 and "%s:3: bad enhanced code" % rules in chk.stderr,
             "--check-config refuses a bad rules line with file:line", chk.stderr)
        try:
            d.start()
            t.ok(False, "a bad rules line refuses the start")
        except RuntimeError as e:
            t.ok("%s:3: bad enhanced code" % rules in str(e),
                 "a bad rules line refuses the start with file:line", str(e)[-800:])
        finally:
            d.stop()
    finally:
        for p in reversed(peers):
            try:
                p.stop()
            except Exception as e:      # keep stopping the others
                t.diag("stopping %r: %s" % (p, e))
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    t.done()


main()
