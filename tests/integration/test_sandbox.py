#!/usr/bin/python3
"""test_sandbox.py - the sandbox transport end to end.

Starts: otpmaild (harness.Daemon) with the built-in default sandbox = yes;
no network peer at all.  A mail.send and an otp.issue land in the
sandbox Maildir (new/, nothing left in tmp/), message.status says
delivered ("250 sandbox"), the code read from the mail verifies,
sandbox.list (newest first: file, from, to, subject, date, size) and
sandbox.show (by file and latest) show them, bad names are refused, and
otpmailctl sandbox list|show print the same.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, wait_for  # noqa: E402

t = Tap()


def rcpt_states(r):
    out = []
    for key in ("recipients", "rcpts"):
        for rc in r.get(key) or []:
            if isinstance(rc, dict):
                out.append((rc.get("state"), rc.get("reply") or ""))
    return out


def main():
    with Daemon() as d:
        r = d.call({"op": "mail.send", "from": "app@example.com",
                    "to": ["dev@example.org"], "subject": "Sandbox hello",
                    "text": "first line\n.dotted line\n"})
        t.ok(r.get("ok") and r.get("id"), "mail.send accepted", r)
        qid = r.get("id")
        got = wait_for(lambda: d.sandbox_messages(), 15)
        t.ok(got and len(got) == 1, "one message in the sandbox Maildir new/")
        tmp = os.path.join(d.state, "sandbox", "tmp")
        t.ok(os.path.isdir(tmp) and not os.listdir(tmp), "nothing left in tmp/")
        data = open(got[0], "rb").read() if got else b""
        t.ok(b"Subject: Sandbox hello" in data and b"first line" in data and
             re.search(rb"(=2E|\.)dotted line", data),
             "the message as submitted", data[:500])
        t.ok(data.startswith(b"Return-Path: <app@example.com>") and
             b"Delivered-To: dev@example.org" in data.split(b"\n\n")[0].replace(b"\r", b""),
             "envelope lines on top", data[:300])

        def delivered():
            st = d.call({"op": "message.status", "id": qid})
            rs = rcpt_states(st)
            return st if rs and all(s == "delivered" for s, _ in rs) else None
        st = wait_for(delivered, 10)
        t.ok(st and rcpt_states(st)[0][1] == "250 sandbox",
             "message.status: delivered, reply \"250 sandbox\"",
             json.dumps(d.call({"op": "message.status", "id": qid})))
        t.ok(re.search(r"event=delivery id=%s relay=sandbox .*result=delivered" % qid,
                       d.log_text()) is not None, "delivery logged", d.log_text()[-1000:])

        # An OTP mail: the code in the sandbox verifies.
        r = d.call({"op": "otp.issue", "to": "user@example.org"})
        t.ok(r.get("ok"), "otp.issue", r)
        got = wait_for(lambda: len(d.sandbox_messages()) >= 2 and d.sandbox_messages(), 15)
        t.ok(got and len(got) == 2, "the OTP mail arrived in the sandbox")
        r = d.call({"op": "sandbox.show", "latest": True})
        text = r.get("text", "")
        t.ok(r.get("ok") and "user@example.org" in text, "sandbox.show latest: the OTP mail",
             r)
        body = text.replace("\r", "").split("\n\n", 1)[-1]
        m = re.search(r"\b(\d{6})\b", body)
        t.ok(m is not None, "a 6-digit code in the mail", body[:600])
        if m:
            r = d.call({"op": "otp.verify", "to": "user@example.org", "code": m.group(1)})
            t.ok(r.get("ok"), "the code from the sandbox verifies", r)

        r = d.call({"op": "sandbox.list"})
        msgs = r.get("messages") or []
        t.ok(r.get("ok") and len(msgs) == 2, "sandbox.list: two messages", r)
        if len(msgs) == 2:
            t.ok("user@example.org" in msgs[0].get("to", "") and
                 msgs[1].get("subject") == "Sandbox hello", "newest first", msgs)
            t.ok(all(k in msgs[1] for k in ("file", "from", "to", "subject", "date", "size"))
                 and msgs[1]["size"] == len(data) and "app@example.com" in msgs[1]["from"]
                 and msgs[1]["date"], "fields: file, from, to, subject, date, size", msgs[1])
            r = d.call({"op": "sandbox.show", "file": msgs[1]["file"]})
            t.ok(r.get("ok") and r.get("text", "").encode() == data,
                 "sandbox.show by file: the whole message", r.get("detail"))
        r = d.call({"op": "sandbox.list", "limit": 1})
        t.ok(r.get("ok") and len(r.get("messages") or []) == 1, "limit")
        r = d.call({"op": "sandbox.show", "file": "../../otpmail.conf"})
        t.ok(not r.get("ok") and r.get("error") == "bad_request", "path traversal refused", r)
        r = d.call({"op": "sandbox.show", "file": "1.M1P1Q1_none.otpmail"})
        t.is_(r.get("error"), "not_found", "unknown file: not_found")
        r = d.call({"op": "sandbox.show"})
        t.is_(r.get("error"), "bad_request", "neither file nor latest: bad_request")

        p = d.ctl("sandbox", "list")
        t.ok(p.returncode == 0 and "Sandbox hello" in p.stdout, "otpmailctl sandbox list",
             p.stdout + p.stderr)
        p = d.ctl("sandbox", "show", "--latest")
        t.ok(p.returncode == 0 and m is not None and m.group(1) in p.stdout,
             "otpmailctl sandbox show --latest prints the code", p.stdout[-800:] + p.stderr)
    t.done()


if __name__ == "__main__":
    main()
