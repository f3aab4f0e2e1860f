#!/usr/bin/python3
"""test_tls_verify.py - tls_policy verify against real Postfix peers: a
certificate from a CA otpmail does not trust, or for another name, defers
with the reason and sends nothing; the right CA and name deliver over TLS.

Starts (peers.py): two test CAs, one trusted (tls_ca_file) and one not; a
private Postfix with STARTTLS on 127.0.7.10:2525 whose certificate (for
untrusted.example.org) comes from the untrusted CA; a private Postfix on
127.0.7.11:2525 whose certificate from the trusted CA names
right.example.org only; otpmaild with `tls_policy = verify` and routes:
untrusted.example.org -> the first, right.example.org and wrong.example.org
-> the second.  A plain `may` domain on the untrusted peer shows the peer
itself works.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import PostfixPeer, TestCA  # noqa: E402

PORT = 2525
PF_UNTRUSTED, PF_RIGHT = "127.0.7.10", "127.0.7.11"

t = Tap()


def rcpt(d, qid):
    r = d.call({"op": "message.status", "id": qid})
    rs = r.get("recipients") or []
    return (rs[0].get("state"), rs[0].get("reply") or "") if rs else (None, ""), r


def wait_state(d, qid, states, timeout=30):
    last = {}

    def pred():
        nonlocal last
        (st, _), last = rcpt(d, qid)
        return st in states
    ok = wait_for(pred, timeout, 0.1)
    return bool(ok), rcpt(d, qid)[0], last


def send(d, to):
    r = d.call({"op": "mail.send", "from": "app@sender.example.com", "to": [to],
                "subject": "verify " + to, "text": "hello\n"})
    if not r.get("ok"):
        raise RuntimeError("mail.send: %r" % r)
    return r["id"]


def main():
    with TestCA("otpmail trusted CA") as ca, TestCA("someone else's CA") as other:
        bad_cert = other.issue("untrusted.example.org")
        good_cert = ca.issue("right.example.org")
        with PostfixPeer(PF_UNTRUSTED, PORT, domains=("untrusted.example.org",
                                                      "may.example.org"),
                         hostname="untrusted.example.org", cert=bad_cert) as pu, \
                PostfixPeer(PF_RIGHT, PORT, domains=("right.example.org",
                                                     "wrong.example.org"),
                            hostname="right.example.org", cert=good_cert) as pr:
            conf = ("sandbox = no\nhostname = otpmail.example.com\n"
                    "tls_policy = verify\ntls_ca_file = %s\n"
                    "route = untrusted.example.org [%s]:%d\n"
                    "route = may.example.org [%s]:%d\n"
                    "domain_tls_policy = may.example.org may\n"
                    "route = right.example.org [%s]:%d\n"
                    "route = wrong.example.org [%s]:%d\n"
                    "smtp_connect_timeout = 5s\nsmtp_command_timeout = 10s\n"
                    "default_retry_min = 600s\n"
                    % (ca.ca_file, PF_UNTRUSTED, PORT, PF_UNTRUSTED, PORT,
                       PF_RIGHT, PORT, PF_RIGHT, PORT))
            with Daemon(conf_extra=conf) as d:
                # the untrusted CA
                qid = send(d, "user@untrusted.example.org")
                ok, (st, reply), full = wait_state(d, qid, ("deferred", "failed"))
                t.ok(ok and st == "deferred", "untrusted CA: deferred, not failed",
                     json.dumps(full))
                t.ok(re.search(r"certificate", reply, re.I) and
                     re.search(r"unable to get local issuer|unknown ca|untrusted|"
                               r"self.signed|issuer", reply, re.I),
                     "untrusted CA: the reply says the certificate's issuer is "
                     "not trusted (%s)" % reply, json.dumps(full))
                t.diag("untrusted CA reply: %s" % reply)
                t.ok(not [m for m in pu.messages() if m.rcpt == "user@untrusted.example.org"],
                     "untrusted CA: nothing reached the peer")
                q = d.call({"op": "queue.show", "id": qid})
                t.ok(q.get("ok") and q.get("status") == "deferred" and
                     "certificate" in (q.get("last_error") or reply),
                     "untrusted CA: queue.show says why", json.dumps(q)[:800])

                # the same peer under `may`: the peer itself works
                qm = send(d, "user@may.example.org")
                ok, (st, reply), full = wait_state(d, qm, ("delivered",))
                t.ok(ok, "the same peer under may: delivered", json.dumps(full) + pu.log()[-600:])

                # a certificate from the trusted CA for another name
                qid = send(d, "user@wrong.example.org")
                ok, (st, reply), full = wait_state(d, qid, ("deferred", "failed"))
                t.ok(ok and st == "deferred", "wrong host name: deferred", json.dumps(full))
                t.ok(re.search(r"hostname|host name|name mismatch|does not match|"
                               r"wrong.example.org", reply, re.I) and
                     re.search(r"verif|certificate", reply, re.I),
                     "wrong host name: the reply says the name does not match (%s)"
                     % reply, json.dumps(full))
                t.diag("wrong name reply: %s" % reply)
                t.ok(not [m for m in pr.messages() if m.rcpt == "user@wrong.example.org"],
                     "wrong host name: nothing reached the peer")

                # the right CA and the right name
                qid = send(d, "user@right.example.org")
                ok, (st, reply), full = wait_state(d, qid, ("delivered",))
                t.ok(ok and reply.startswith("250"), "right CA and name: delivered",
                     json.dumps(full) + pr.log()[-600:])
                msgs = wait_for(lambda: [m for m in pr.messages()
                                         if m.rcpt == "user@right.example.org"], 15)
                t.ok(msgs and re.search(rb"using TLSv1\.[23]", msgs[0].data),
                     "right CA and name: received over TLS",
                     msgs[0].data[:600] if msgs else "no message")
                t.ok(re.search(r"domain=right\.example\.org .*tls_policy=verify "
                               r"tls=TLSv1\.[23] .*tls_auth=verified result=delivered",
                               d.log_text()) is not None,
                     "right CA and name: logged as verified", d.log_text()[-1500:])
    t.done()


if __name__ == "__main__":
    main()
