#!/usr/bin/python3
"""test_smtputf8.py - SMTPUTF8 (RFC 6531): UTF-8 local parts reach a server
that offers SMTPUTF8 intact, fail permanently with a clear reason at one
that does not, and are refused at submission when the option is off.

Starts: two private Postfix peers, 127.0.4.61 for example.net with
smtputf8_enable = yes and 127.0.4.62 for example.com with smtputf8_enable
= no (it does not announce SMTPUTF8); otpmaild routing to them.

- mail.send from app@example.org to "Jörg Müller <jörg@EXAMPLE.net>" (the
  ö decomposed): accepted, the local part in NFC, the queue entry
  flagged smtputf8; Postfix receives it for jörg@ (Delivered-To), the To
  header carries the raw UTF-8 address (RFC 6532), the body intact, the
  DKIM signatures (RSA, Ed25519) verify with python3-dkim;
- otp.issue to a UTF-8 address: delivered the same way;
- the same message to jörg@example.com: the recipient fails permanently,
  queue.show says 5.6.7 and "does not support SMTPUTF8", the bounce has
  "Final-Recipient: utf-8; j\\x{F6}rg@example.com"; an ASCII message to
  that server still goes through;
- attacks at submission: a C1 control or an overlong local part of UTF-8
  (65 octets) is bad_request, a UTF-8 address in Reply-To bad_address;
- with smtputf8 = no, a UTF-8 local part is bad_address naming the option.
"""
import email
import email.policy
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# (test_dkim re-runs this script under Debian's python3 if dkim is missing)
from test_dkim import Keys, verify, write_conf_keys  # noqa: E402
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import PostfixPeer, _mkdtemp  # noqa: E402

PF_UTF8 = "127.0.4.61"
PF_ASCII = "127.0.4.62"
JOERG = "jörg"
BODY = "Grüße an Jörg — code 493817\n"


def send(d, to, **kw):
    req = {"op": "mail.send", "from": "App <app@example.org>", "to": to,
           "subject": "Grüße", "text": BODY}
    req.update(kw)
    return d.call(req)


def rcpt_final(d, qid):
    def pred():
        r = d.call({"op": "queue.show", "id": qid})
        rc = r.get("recipients") or []
        if rc and all(x.get("state") in ("delivered", "failed") for x in rc):
            return r
        return None
    return wait_for(pred, 30)


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_smtputf8", "needs root")
        t.done()
    kd = _mkdtemp("otpm-utf8-keys-", 0o700)
    keys = Keys(kd)
    conf = ("sandbox = no\n" + write_conf_keys(keys) +
            "route = example.net [%s]:25\n"
            "route = example.com [%s]:25\n"
            "default_retry_min = 60s\n" % (PF_UTF8, PF_ASCII))
    with PostfixPeer(PF_UTF8, 25, domains=["example.net"], hostname="mx.example.net",
                     tls=False, extra_main={"smtputf8_enable": "yes"}) as pf, \
            PostfixPeer(PF_ASCII, 25, domains=["example.com"], hostname="mx.example.com",
                        tls=False, extra_main={"smtputf8_enable": "no"}) as pfa, \
            Daemon(conf_extra=conf) as d:
        # 1. delivered intact to a server that offers SMTPUTF8
        # o + U+0308: the canonical form is NFC (U+00F6)
        r = send(d, ["Jörg Müller <jo\u0308rg@EXAMPLE.net>"])
        t.ok(r.get("ok"), "mail.send to a UTF-8 local part accepted", r)
        qid = r.get("id")
        s = d.call({"op": "queue.show", "id": qid}) if qid else {}
        t.ok("smtputf8" in (s.get("flags") or []), "queue entry flagged smtputf8", s)
        t.is_([x.get("to") for x in s.get("recipients") or []], ["jörg@example.net"],
              "the envelope keeps the UTF-8 local part in NFC, the domain lower-cased")
        r2 = d.call({"op": "otp.issue", "to": "jörg.otp@example.net"})
        t.ok(r2.get("ok"), "otp.issue to a UTF-8 local part accepted", r2)
        try:
            msgs = pf.wait_for(2, 30)
        except RuntimeError as e:
            t.ok(False, "delivered through Postfix", "%s\n%s" % (e, d.log_text()[-3000:]))
            t.done()
        t.is_(sorted(m.rcpt for m in msgs), ["jörg.otp@example.net", "jörg@example.net"],
              "Postfix received both for the UTF-8 mailboxes")
        m = [x for x in msgs if x.rcpt == "jörg@example.net"][0]
        head = m.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        t.ok("<jörg@example.net>".encode() in head,
             "the To header carries the raw UTF-8 address (RFC 6532)",
             head.decode(errors="replace"))
        pm = email.message_from_string(m.data.decode(), policy=email.policy.SMTPUTF8)
        to = [(a.display_name, a.addr_spec) for a in pm["To"].addresses]
        t.is_(to, [("Jörg Müller", "jörg@example.net")], "To round-trips")
        t.is_(pm.get_content(), BODY, "body intact")
        ok, out = verify(keys, m.data)
        t.ok(ok, "its DKIM signatures (RSA, Ed25519) verify after the Postfix hop", out)

        # 2. a server without SMTPUTF8: a permanent failure with the reason
        r = send(d, [JOERG + "@example.com"])
        t.ok(r.get("ok"), "mail.send to jörg@example.com accepted", r)
        s = rcpt_final(d, r.get("id")) or {}
        rc = (s.get("recipients") or [{}])[0]
        t.ok(rc.get("state") == "failed", "recipient failed permanently", s)
        reply = rc.get("reply") or ""
        t.ok("5.6.7" in reply and "does not support SMTPUTF8" in reply,
             "queue.show gives the clear reason", reply)
        def dsn():
            r = d.call({"op": "queue.list", "sender": "", "limit": 10})
            return [m for m in r.get("messages", []) if m["sender"] == ""]
        bl = wait_for(dsn, 15)
        body = d.call({"op": "queue.show", "id": bl[0]["id"], "body": True}).get(
            "body", "") if bl else ""
        t.ok("Final-Recipient: utf-8; j\\x{F6}rg@example.com" in body,
             "the bounce names it as a utf-8 address (RFC 6533)", body[-1500:])
        r = send(d, ["plain@example.com"], **{"from": "app@example.org"})
        s = rcpt_final(d, r.get("id")) or {}
        t.ok([x.get("state") for x in s.get("recipients") or []] == ["delivered"],
             "an ASCII message still goes to that server", s)
        got = [x.rcpt for x in pfa.wait_for(1, 20)]
        t.is_(got, ["plain@example.com"], "the non-SMTPUTF8 server got only the ASCII one")

        # 3. what a hostile app may try
        for to, err, why in (
                (["j\u0085rg@example.net"], "bad_request", "control"),
                (["ö" * 33 + "@example.net"], "bad_request", "longer than 64")):
            r = send(d, to)
            t.ok(r.get("error") == err and why in r.get("detail", ""),
                 "refused %r: %s" % (to[0], err), r)
        r = send(d, ["bob@example.net"], headers={"Reply-To": "jörg@example.org"})
        t.ok(r.get("error") == "bad_address" and r.get("field") == "headers" and
             "only in from and to" in r.get("detail", ""),
             "a UTF-8 address in Reply-To is bad_address", r)
        r = send(d, ["Jörg <jörg@example.net>"], **{"from": "Jörg <jörg@example.org>"})
        t.ok(r.get("ok"), "a UTF-8 sender is taken too", r)

    # 4. the option off
    with Daemon(conf_extra="sandbox = no\nsmtputf8 = no\n") as d:
        r = send(d, [JOERG + "@example.net"])
        t.ok(r.get("error") == "bad_address" and r.get("field") == "to" and
             "smtputf8 = yes" in r.get("detail", ""),
             "smtputf8 = no: a UTF-8 local part is bad_address", r)
        r = d.call({"op": "otp.issue", "to": JOERG + "@example.net"})
        t.ok(r.get("error") == "bad_address", "smtputf8 = no: otp.issue too", r)
    shutil.rmtree(kd, ignore_errors=True)
    t.done()


if __name__ == "__main__":
    main()
