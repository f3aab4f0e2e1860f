#!/usr/bin/env python3
"""test_suppress.py - hard bounces and complaints feed each app's suppression
list; DSNs received back are classified; List-Unsubscribe and Feedback-ID.

Starts (peers.py): three smtp-sinks on 127.0.9.40-42:2525 - one answers
every RCPT "550 5.1.1 <bob@dead.example.org>: Recipient address rejected:
User unknown" (Postfix's text), one Gmail's 550 5.1.1, one accepts and
dumps (for shop.example, bank.example, ok.example.org); otpmaild (sandbox =
no, a route per domain, a DKIM key for shop.example) with two apps on real
uids (shop = uid 1 daemon, bank = uid 2 bin), root as admin, uid 65534 a
stranger; then a second otpmaild with suppress_ttl = 2s.
Checks:
- a 550 5.1.1 to a mail.send and to an otp.issue recipient: the recipient's
  last_error_class "hard" is kept in the envelope (message.status), the
  address goes on shop's list (reason hard_bounce, the reply without the
  address); mail.send and otp.issue to it answer "suppressed" with the
  reason; nothing is queued; 6 refused otp.issue spend no rate budget.
- isolation: bank sees an empty list, cannot remove shop's entry (by id or
  address: the same answer as for an address never suppressed), cannot act
  as shop, and mails the address fine; its own complaint (suppress.add) is
  its own; a stranger may call none of the suppress ops; an app may not
  feed a DSN.  An admin lists every app's entries, removes and adds with
  as_app, and through otpmailctl suppress list|add|remove.
- dsn.report: an RFC 3464 DSN for a delivered message (failed, 5.1.1) notes
  class hard on the recipient and suppresses it; a delayed 4.2.2 is
  mailbox_full and suppresses nothing; a DSN naming someone not on the
  message suppresses nothing.
- the database files hold no suppressed address in clear.
- mail.send list_unsubscribe: List-Unsubscribe (https + mailto) and
  List-Unsubscribe-Post: List-Unsubscribe=One-Click arrive; every message
  (mail.send and otp.issue) carries Feedback-ID purpose:class:app:otpmail;
  python3-dkim verifies the signature and finds all three in h=; an app's
  own Feedback-ID is refused (headers) or removed (raw).
- entries expire after suppress_ttl.
"""

import os
import subprocess
import sys
import tempfile
import time

try:
    import dkim  # noqa: F401  python3-dkim lives in Debian's python
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, TOP_BUILDDIR, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
SHOP, BANK, STRANGER = 1, 2, 65534
PORT = 2525
DEAD, DEAD2, OK = "127.0.9.40", "127.0.9.42", "127.0.9.41"
BOB = "bob@dead.example.org"
CARL = "carl@dead2.example.org"
POSTFIX_550 = ("550 5.1.1 <bob@dead.example.org>: Recipient address rejected: "
               "User unknown in virtual mailbox table")
GMAIL_550 = ("550 5.1.1 The email account that you tried to reach does not exist. "
             "Please try double-checking the recipient's email address")
DKIMSIGN = os.path.join(TOP_BUILDDIR, "tests", "dkim", "dkimsign")
CONF = ("sandbox = no\ntls_policy = none\nsmtp_connect_timeout = 2s\n"
        "app = shop users=daemon senders=shop.example\n"
        "app = bank users=bin senders=bank.example\n"
        "otp_max_per_address_hour = 4\notp_resend_cooldown = 0s\n"
        "default_retry_min = 600s\ndefault_retry_max = 600s\n"
        "route = dead.example.org [%s]:%d\n"
        "route = dead2.example.org [%s]:%d\n"
        "route = ok.example.org [%s]:%d\n"
        "route = shop.example [%s]:%d\n"
        "route = bank.example [%s]:%d\n"
        "route = otpmail-test.example.net [%s]:%d\n" %
        (DEAD, PORT, DEAD2, PORT, OK, PORT, OK, PORT, OK, PORT, OK, PORT))


def strip(r):
    return {k: v for k, v in r.items() if k != "req_id"}


def send(d, uid, to, **kw):
    req = {"op": "mail.send", "from": "news@%s" % ("shop.example" if uid == SHOP
                                                   else "bank.example"),
           "to": [to], "subject": "hello", "text": "hello\n"}
    req.update(kw)
    return d.call_as(uid, req)


def final(d, qid, uid=None):
    last = {}

    def pred():
        nonlocal last
        req = {"op": "message.status", "id": qid}
        last = d.call_as(uid, req) if uid else d.call(req)
        rs = last.get("recipients") or [{}]
        return rs[0].get("state") in ("failed", "delivered")
    wait_for(pred, 30, 0.1)
    return last


def queued(d):
    return len(d.call({"op": "queue.list", "limit": 1000}).get("messages", []))


def dkim_record(pub_txt):
    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        return pub_txt.encode() if n.rstrip(".") == "s1._domainkey.shop.example" else None
    return dnsfunc


def sink_copy(sink, marker):
    for m in sink.messages():
        if marker in m.data:
            lines = m.data.split(b"\n")
            while lines and lines[0].split(b":", 1)[0].startswith(b"X-"):
                lines.pop(0)
            return b"\n".join(lines).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return None


def main_daemon(tmp, sink):
    key = os.path.join(tmp, "shop.example.s1.key")
    pub = subprocess.run([DKIMSIGN, "keygen", "rsa", key], capture_output=True,
                         text=True).stdout.strip()
    conf = CONF + "dkim_key = shop.example s1 rsa-sha256 %s\n" % key
    with Daemon(conf_extra=conf) as d:
        # --- a 550 5.1.1 reply: class kept, address suppressed --------------------
        r = send(d, SHOP, BOB)
        t.ok(r.get("ok"), "shop queues a mail to %s" % BOB, r)
        st = final(d, r.get("id"), SHOP)
        rc = (st.get("recipients") or [{}])[0]
        t.ok(rc.get("state") == "failed" and rc.get("last_error_class") == "hard",
             "the 550 5.1.1 recipient is failed with last_error_class hard", st)
        lst = {}
        wait_for(lambda: lst.update(d.call_as(SHOP, {"op": "suppress.list"})) or
                 lst.get("entries"), 10)
        ent = (lst.get("entries") or [{}])[0]
        t.ok(len(lst.get("entries", [])) == 1 and ent.get("app") == "shop" and
             ent.get("reason") == "hard_bounce" and ent.get("reply", "").startswith(
                 "550 5.1.1") and "bob" not in ent.get("reply", "").lower() and
             len(ent.get("id", "")) == 64,
             "shop's list holds one hard_bounce entry, its reply without the address",
             lst)
        before = queued(d)
        r = send(d, SHOP, BOB)
        t.ok(r.get("error") == "suppressed" and r.get("reason") == "hard_bounce" and
             r.get("suppressed_at") == ent.get("created"),
             "mail.send to it answers suppressed with reason and date", r)
        r = send(d, SHOP, "BOB@Dead.Example.org")
        t.ok(r.get("error") == "suppressed", "... whatever the case of the address", r)
        r = d.call_as(SHOP, {"op": "otp.issue", "to": BOB})
        t.ok(r.get("error") == "suppressed", "otp.issue to it answers suppressed", r)
        t.is_(queued(d), before, "nothing was queued for the refused requests")

        # an OTP mail that bounces hard; refusals spend no rate budget
        r = d.call_as(SHOP, {"op": "otp.issue", "to": CARL})
        t.ok(r.get("ok"), "shop issues a code to %s" % CARL, r)
        st = final(d, r.get("id"), SHOP)
        t.ok((st.get("recipients") or [{}])[0].get("last_error_class") == "hard",
             "the OTP mail's recipient gets last_error_class hard", st)
        refused = []
        wait_for(lambda: d.call_as(SHOP, {"op": "otp.issue", "to": CARL}).get("error") ==
                 "suppressed", 10)
        for _ in range(6):
            refused.append(d.call_as(SHOP, {"op": "otp.issue", "to": CARL}).get("error"))
        t.ok(refused == ["suppressed"] * 6, "6 more otp.issue to it: all suppressed",
             refused)
        # each refusal is a "suppressed" event of shop's, replayed from the log
        c = d.client(20)
        c.send({"op": "events.subscribe", "app": "shop", "types": ["suppressed"],
                "since": 0})
        ans, evs = c.recv(), []
        last = ans.get("last_id", 0)
        while ans.get("ok") and (not evs or evs[-1].get("id", 0) < last):
            evs.append(c.recv())
        c.close()
        bob = [e for e in evs if e.get("recipient", "").lower() == BOB.lower()]
        carl = [e for e in evs if e.get("recipient") == CARL]
        t.ok(len(bob) >= 3 and len(carl) >= 7 and
             all(e.get("type") == "suppressed" and e.get("app") == "shop" and
                 e.get("message") is None for e in bob + carl) and
             carl[-1].get("reason") == "hard_bounce",
             "the refusals are suppressed events of shop's (%d for bob, %d for carl)"
             % (len(bob), len(carl)), evs[-3:])
        r = d.call({"op": "suppress.remove", "address": CARL, "as_app": "shop"})
        t.ok(r.get("ok") and r.get("app") == "shop", "an admin removes it (as_app)", r)
        r = d.call_as(SHOP, {"op": "otp.issue", "to": CARL})
        t.ok(r.get("ok"), "then otp.issue works: the refusals spent none of the hourly "
             "budget of 4", r)

        # --- isolation and the attacker's view -------------------------------------
        r = d.call_as(BANK, {"op": "suppress.list"})
        t.ok(r.get("ok") and r.get("entries") == [], "bank sees an empty list", r)
        by_id = strip(d.call_as(BANK, {"op": "suppress.remove", "id": ent["id"]}))
        by_addr = strip(d.call_as(BANK, {"op": "suppress.remove", "address": BOB}))
        never = strip(d.call_as(BANK, {"op": "suppress.remove",
                                        "address": "nobody@dead.example.org"}))
        t.ok(by_id.get("error") == "not_found" and by_addr == never,
             "bank cannot remove shop's entry, by id or by address (the answer is the "
             "one for an address never suppressed)", [by_id, by_addr, never])
        r = d.call_as(BANK, {"op": "suppress.list", "as_app": "shop"})
        r2 = d.call_as(BANK, {"op": "suppress.add", "address": "x@ok.example.org",
                              "as_app": "shop"})
        t.ok(r.get("error") == "forbidden" and r2.get("error") == "forbidden",
             "bank cannot act as shop (list, add)", [r, r2])
        r = send(d, BANK, BOB)
        t.ok(r.get("ok"), "bank mails shop's suppressed address: not suppressed for bank", r)
        r = d.call_as(BANK, {"op": "suppress.add", "address": "dan@ok.example.org"})
        t.ok(r.get("ok") and r.get("reason") == "complaint" and r.get("app") == "bank",
             "bank reports a complaint (suppress.add)", r)
        r = send(d, BANK, "dan@ok.example.org")
        t.ok(r.get("error") == "suppressed" and r.get("reason") == "complaint",
             "bank's mail to the complainer: suppressed (complaint)", r)
        r = send(d, SHOP, "dan@ok.example.org")
        t.ok(r.get("ok"), "shop's mail to bank's complainer goes out", r)
        r = d.call_as(SHOP, {"op": "suppress.list"})
        t.ok({e.get("app") for e in r.get("entries", [])} == {"shop"} and
             "complaint" not in [e.get("reason") for e in r.get("entries", [])],
             "shop's list holds only its own entries (bank's complaint is not there)", r)
        st = [d.call_as(STRANGER, {"op": op, "address": BOB}).get("error")
              for op in ("suppress.list", "suppress.add", "suppress.remove")]
        t.ok(st == ["forbidden"] * 3, "a stranger may call no suppress op", st)
        r = d.call_as(SHOP, {"op": "dsn.report", "dsn": "Final-Recipient: rfc822; "
                             "x@ok.example.org\nAction: failed\nStatus: 5.1.1\n",
                             "as_app": "shop"})
        t.ok(r.get("error") == "forbidden", "an app may not feed a DSN", r)
        r = d.call_as(SHOP, {"op": "suppress.add", "address": "eve@ok.example.org",
                             "reason": "x y"})
        t.ok(r.get("error") == "bad_request", "a reason is one word", r)

        # --- admin ---------------------------------------------------------------
        r = d.call({"op": "suppress.list"})
        apps = {e.get("app") for e in r.get("entries", [])}
        t.ok(apps == {"bank", "shop"}, "an admin lists every app's entries", r)
        p = d.ctl("suppress", "add", "fay@ok.example.org", "--as-app", "shop", "--reason",
                  "admin")
        t.ok(p.returncode == 0, "otpmailctl suppress add", p.stdout + p.stderr)
        p = d.ctl("suppress", "list", "--as-app", "shop")
        t.ok(p.returncode == 0 and " admin " in p.stdout and "hard_bounce" in p.stdout and
             "bank" not in p.stdout and "fay" not in p.stdout,
             "otpmailctl suppress list --as-app shop shows shop's entries, the new one "
             "too", p.stdout + p.stderr)
        p = d.ctl("suppress", "remove", "fay@ok.example.org", "--as-app", "shop")
        p2 = d.ctl("suppress", "remove", "fay@ok.example.org", "--as-app", "shop")
        t.ok(p.returncode == 0 and p2.returncode == 1,
             "otpmailctl suppress remove (exit 0, then 1: not found)",
             p.stdout + p.stderr + p2.stdout + p2.stderr)
        r = d.call({"op": "suppress.add", "address": "gil@ok.example.org",
                    "as_app": "bank"})
        p = d.ctl("suppress", "remove", "--id", r.get("id", "?"))
        t.ok(p.returncode == 0 and "bank" in p.stdout,
             "an admin removes any app's entry by id (otpmailctl suppress remove --id)",
             p.stdout + p.stderr)
        p = d.ctl("suppress", "list", uid=STRANGER)
        t.ok(p.returncode == 4, "otpmailctl suppress list as a stranger: exit 4 forbidden",
             p.stdout + p.stderr)

        # --- a DSN received back ----------------------------------------------------
        r = send(d, SHOP, "gus@ok.example.org")
        qid = r.get("id")
        st = final(d, qid)
        dsn = ("From: MAILER-DAEMON@mx.ok.example.org\r\n"
               "To: news@shop.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/report; "
               "report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\n"
               "Content-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
               "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
               "Reporting-MTA: dns; mx.ok.example.org\r\n\r\n"
               "Original-Recipient: rfc822; gus@ok.example.org\r\n"
               "Final-Recipient: rfc822; gus@mailstore.ok.example.org\r\n"
               "Action: failed\r\nStatus: 5.1.1\r\n"
               "Diagnostic-Code: smtp; 550 5.1.1 <gus@mailstore.ok.example.org>:\r\n"
               " Recipient address rejected: User unknown\r\n\r\n"
               "Final-Recipient: rfc822; hal@ok.example.org\r\n"
               "Action: failed\r\nStatus: 5.1.1\r\n"
               "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
               "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
               "From: news@shop.example\r\nStatus: RO\r\n"
               "Action: delivered\r\n\r\n--b--\r\n")
        r = d.call({"op": "dsn.report", "id": qid, "dsn": dsn})
        rs = r.get("recipients", [])
        t.ok(r.get("ok") and r.get("app") == "shop" and len(rs) == 2 and
             rs[0].get("class") == "hard" and rs[0].get("noted") == "yes" and
             rs[0].get("suppressed") is True and rs[1].get("noted") == "not_a_recipient"
             and rs[1].get("suppressed") is False and rs[1].get("status") == "5.1.1" and
             rs[1].get("action") == "failed",
             "dsn.report: gus (a recipient) is hard and suppressed; hal (not on the "
             "message) is not; the returned headers after the part are not read", r)
        st = d.call_as(SHOP, {"op": "message.status", "id": qid})
        rc = (st.get("recipients") or [{}])[0]
        t.ok(rc.get("state") == "delivered" and rc.get("last_error_class") == "hard",
             "message.status shows the DSN's class on the delivered recipient", st)
        p = d.ctl("status", qid)
        t.ok(p.returncode == 0 and "last_error_class: hard" in p.stdout,
             "... and so does otpmailctl status", p.stdout + p.stderr)
        r = send(d, SHOP, "gus@ok.example.org")
        t.ok(r.get("error") == "suppressed", "mail.send to gus: suppressed", r)
        r = send(d, SHOP, "hal@ok.example.org")
        t.ok(r.get("ok"), "mail.send to hal still goes", r)
        r = send(d, SHOP, "ida@ok.example.org")
        final(d, r.get("id"))
        delayed = ("Content-Type: message/delivery-status\n\n"
                   "Final-Recipient: rfc822;ida@ok.example.org\nAction: delayed\n"
                   "Status: 4.2.2\nDiagnostic-Code: smtp; 452 4.2.2 The email account "
                   "that you tried to reach is over quota.\n")
        r2 = d.call({"op": "dsn.report", "id": r.get("id"), "dsn": delayed})
        rs = r2.get("recipients", [{}])
        t.ok(rs[0].get("class") == "mailbox_full" and rs[0].get("suppressed") is False,
             "a delayed 4.2.2 DSN is mailbox_full and suppresses nothing", r2)
        with open(os.path.join(tmp, "dsn.eml"), "w") as f:
            f.write(dsn.replace("gus@", "jim@").replace("hal@", "kim@"))
        p = d.ctl("dsn", "report", "--dsn-file", os.path.join(tmp, "dsn.eml"),
                  "--as-app", "bank")
        t.ok(p.returncode == 0 and "hard" in p.stdout,
             "otpmailctl dsn report --as-app (no message id)", p.stdout + p.stderr)

        # --- headers: List-Unsubscribe, Feedback-ID, DKIM -------------------------
        r = send(d, SHOP, "lu@ok.example.org", subject="news 1", purpose="newsletter",
                 list_unsubscribe="https://shop.example/u/abc123",
                 list_unsubscribe_mailto="mailto:unsub@shop.example?subject=u")
        t.ok(r.get("ok"), "mail.send with list_unsubscribe", r)
        final(d, r.get("id"))
        wait_for(lambda: sink_copy(sink, b"news 1"), 10)
        msg = sink_copy(sink, b"news 1") or b""
        t.ok(b"List-Unsubscribe: <https://shop.example/u/abc123>,\r\n "
             b"<mailto:unsub@shop.example?subject=u>\r\n" in msg and
             b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in msg and
             b"Feedback-ID: newsletter:mail:shop:otpmail\r\n" in msg,
             "the message carries List-Unsubscribe, List-Unsubscribe-Post and "
             "Feedback-ID", msg[:1500])
        sig = dkim.DKIM(msg)
        ok = sig.verify(dnsfunc=dkim_record(pub))
        h = b""
        for line in msg.split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ").replace(
                b"\r\n\t", b" ").split(b"\r\n"):
            if line.lower().startswith(b"dkim-signature:"):
                h = [x.strip() for x in line.split(b";") if x.strip().startswith(b"h=")][0]
        signed = h[2:].replace(b" ", b"").lower().split(b":")
        t.ok(ok and b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
             and b"feedback-id" in signed,
             "python3-dkim verifies it; h= has list-unsubscribe, list-unsubscribe-post "
             "and feedback-id", h)
        r = send(d, SHOP, "lu@ok.example.org", list_unsubscribe="http://shop.example/u")
        t.ok(r.get("error") == "bad_request" and r.get("field") == "list_unsubscribe",
             "one-click needs an https URI", r)
        r = send(d, SHOP, "lu@ok.example.org", headers={"Feedback-ID": "x:y:bank:otpmail"})
        t.ok(r.get("error") == "bad_request", "an app cannot write its own Feedback-ID", r)
        raw = ("From: news@shop.example\r\nTo: lu@ok.example.org\r\nSubject: raw 2\r\n"
               "Feedback-ID: a:b:bank:otpmail\r\n\r\nhi\r\n")
        r = d.call_as(SHOP, {"op": "mail.send", "from": "news@shop.example",
                             "to": ["lu@ok.example.org"], "raw": raw})
        t.ok(r.get("ok") and "Feedback-ID" in r.get("removed_headers", []),
             "a raw message's own Feedback-ID is removed", r)
        final(d, r.get("id"))
        wait_for(lambda: sink_copy(sink, b"raw 2"), 10)
        msg = sink_copy(sink, b"raw 2") or b""
        t.ok(msg.count(b"\r\nFeedback-ID:") == 1 and
             b"Feedback-ID: mail:mail:shop:otpmail\r\n" in msg,
             "... and ours put in its place", msg[:800])
        r = d.call_as(BANK, {"op": "otp.issue", "to": "otp@ok.example.org",
                             "purpose": "reset"})
        final(d, r.get("id"))
        wait_for(lambda: sink_copy(sink, b"otp@ok.example.org"), 10)
        msg = sink_copy(sink, b"otp@ok.example.org") or b""
        t.ok(b"Feedback-ID: reset:otp:bank:otpmail\r\n" in msg,
             "an OTP mail carries Feedback-ID reset:otp:bank:otpmail", msg[:800])

        # --- nothing in clear on disk -------------------------------------------------
        d.stop()
        found = []
        dbdir = os.path.join(d.state, "db")
        for name in os.listdir(dbdir):
            with open(os.path.join(dbdir, name), "rb") as f:
                data = f.read().lower()
            for a in (BOB, CARL, "dan@ok.example.org", "gus@ok.example.org"):
                if a.encode() in data:
                    found.append((name, a))
        t.ok(not found and os.listdir(dbdir),
             "the database files (%d) hold no suppressed address in clear" %
             len(os.listdir(dbdir)), found)


def expiry():
    with Daemon(conf_extra="suppress_ttl = 2s\n") as d:
        r = d.call({"op": "suppress.add", "address": "old@example.org"})
        t.ok(r.get("ok") and r.get("expires") == r.get("created") + 2,
             "with suppress_ttl = 2s an entry expires 2 s after it was made", r)
        r = d.call({"op": "mail.send", "from": "a@example.org", "to": ["old@example.org"],
                    "subject": "s", "text": "t\n"})
        t.ok(r.get("error") == "suppressed", "suppressed at first", r)
        time.sleep(2.5)
        r = d.call({"op": "mail.send", "from": "a@example.org", "to": ["old@example.org"],
                    "subject": "s", "text": "t\n"})
        t.ok(r.get("ok"), "mail goes once the entry expired", r)
        r = d.call({"op": "suppress.list"})
        t.ok(r.get("entries") == [], "an expired entry is not listed", r)


def main():
    if os.geteuid() != 0:
        t.skip("test_suppress", "needs root (smtp-sink -u nobody, app uids)")
        t.done()
    tmp = tempfile.mkdtemp(prefix="otpm-supp-")
    os.chmod(tmp, 0o755)
    peers = []
    try:
        peers.append(SmtpSink(DEAD, PORT, extra_args=["-f", "rcpt", "-B", POSTFIX_550])
                     .start())
        peers.append(SmtpSink(DEAD2, PORT, extra_args=["-f", "rcpt", "-B", GMAIL_550])
                     .start())
        sink = SmtpSink(OK, PORT).start()
        peers.append(sink)
        main_daemon(tmp, sink)
        expiry()
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
