#!/usr/bin/env python3
"""test_queue.py - the persistent queue through the real daemon.

Starts: otpmaild (sandbox mode, temp state dir); then smtp-sink (peers.py)
on 127.0.7.2:2525 (hard-rejects RCPT) and 127.0.7.3:2525 (accepts) and a
second otpmaild (sandbox = no, routes to them, and to 127.0.7.9:2525 where
nothing listens).  Part 1 pauses
delivery, submits 1,000+ messages over the control socket (mail.send),
kill -9s the daemon, restarts it and finds every acknowledged message with
queue.list paging.  Then: validation of mail.send (addresses, header
injection, raw messages), message.status, otpmailctl queue list filters
(domain, class, state, sender, age), hold/release/flush/delete, stats and
metrics, a garbage file in the spool (quarantined, daemon keeps serving),
and delivery after resume (sandbox) with the reply in message.status.
Part 2: a permanent failure gives status "failed" with the remote reply and
one RFC 3464 DSN from the null sender, delivered to the sender's domain
and parsed back by Python's email package; an OTP-class message to a dead
host is "deferred" with the reason, then "expired" at its ttl, with no DSN.
"""

import json
import os

import email
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
N = 1000
NOBODY = 65534


def ctl_json(d, *args):
    p = d.ctl("--json", *args)
    try:
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        return p.returncode, {"raw": p.stdout, "stderr": p.stderr}


def list_all(d, **filters):
    ids, after = [], None
    while True:
        req = dict({"op": "queue.list", "limit": 1000}, **filters)
        if after:
            req["after"] = after
        r = d.call(req)
        if not r.get("ok"):
            return None, r
        ids += [m["id"] for m in r["messages"]]
        if not r.get("more") or not r["messages"]:
            return ids, r
        after = r["messages"][-1]["id"]


with Daemon(conf_extra="queue_keep_done = 1h\n") as d:
    p = d.ctl("queue", "pause")
    t.is_(p.returncode, 0, "otpmailctl queue pause")

    # --- 1,000 acknowledged messages, then kill -9 ------------------------
    sent = []
    c = d.client()
    bad = None
    for i in range(N):
        if i % 10 == 0:
            to, cls = ["user%d@slow.example.net" % i], "otp"
        else:
            to, cls = ["user%d@example.com" % i], "default"
        r = c.call({"op": "mail.send", "from": "App <app@example.org>", "to": to,
                    "subject": "message %d" % i, "text": "hello %d\n" % i,
                    "class": cls})
        if not r.get("ok"):
            bad = r
            break
        sent.append(r["id"])
    c.close()
    t.is_(len(sent), N, "1,000 mail.send acknowledged")
    if bad:
        t.diag(bad)
    t.is_(len(set(sent)), N, "1,000 distinct ids")
    t.ok(sent == sorted(sent), "ids sort in submission order")

    d.kill9()
    d.start()
    ids, last = list_all(d)
    t.ok(ids is not None and set(sent) <= set(ids), "all 1,000 found after kill -9 + restart",
         last if ids is None else "missing %d" % len(set(sent) - set(ids)))
    t.ok(last.get("paused") is True, "the pause survived the restart")

    # --- filters through otpmailctl ----------------------------------------
    rc, r = ctl_json(d, "queue", "list", "--domain", "slow.example.net", "--limit", "1000")
    t.ok(rc == 0 and len(r.get("messages", [])) == N // 10, "queue list --domain", r)
    rc, r = ctl_json(d, "queue", "list", "--class", "otp", "--limit", "1000")
    t.ok(rc == 0 and len(r.get("messages", [])) == N // 10, "queue list --class otp")
    rc, r = ctl_json(d, "queue", "list", "--state", "queued", "--limit", "5")
    t.ok(rc == 0 and len(r["messages"]) == 5 and r["more"] is True, "queue list --limit pages")
    m0 = r["messages"][0]
    t.ok(all(k in m0 for k in ("id", "class", "state", "sender", "recipients", "created",
                               "age", "attempts", "next_attempt", "last_error", "size")),
         "a list entry carries id/class/state/sender/recipients/age/next/last error/size", m0)
    rc, r = ctl_json(d, "queue", "list", "--sender", "APP@example.org", "--limit", "1000")
    t.ok(rc == 0 and len(r["messages"]) == N, "queue list --sender (case-insensitive)")
    rc, r = ctl_json(d, "queue", "list", "--older-than", "3600")
    t.ok(rc == 0 and r["messages"] == [], "queue list --older-than 3600: none")
    rc, r = ctl_json(d, "queue", "list", "--younger-than", "3600", "--limit", "1")
    t.ok(rc == 0 and len(r["messages"]) == 1, "queue list --younger-than 3600")
    p = d.ctl("queue", "list", "--domain", "slow.example.net", "--limit", "3")
    t.ok(p.returncode == 0 and "slow.example.net" in p.stdout and "--after" in p.stdout,
         "human table with a paging hint", p.stdout)
    r = d.call({"op": "queue.list", "state": "bogus"})
    t.ok(r.get("error") == "bad_request" and r.get("field") == "state", "bad state filter")

    # --- hold / release / delete / flush -----------------------------------
    hid, did = sent[1], sent[2]
    rc, r = ctl_json(d, "queue", "hold", hid, sent[3])
    t.ok(rc == 0 and r.get("count") == 2, "queue hold two ids")
    rc, r = ctl_json(d, "queue", "list", "--state", "held")
    t.is_(sorted(m["id"] for m in r.get("messages", [])), sorted([hid, sent[3]]),
          "both listed as held")
    rc, r = ctl_json(d, "queue", "release", sent[3])
    t.ok(rc == 0 and r.get("count") == 1, "queue release")
    rc, r = ctl_json(d, "queue", "delete", did)
    t.ok(rc == 0 and r.get("count") == 1, "queue delete")
    r = d.call({"op": "message.status", "id": did})
    t.is_(r.get("error"), "not_found", "deleted message: not_found")
    rc, r = ctl_json(d, "queue", "delete", did)
    t.ok(rc != 0 and r.get("error") == "not_found", "deleting it again: not_found, exit != 0")
    r = d.call({"op": "queue.delete", "ids": [sent[4], "0" * 24]})
    t.ok(r.get("ok") and r.get("count") == 1 and r.get("not_found") == ["0" * 24],
         "a list with an unknown id reports it", r)
    rc, r = ctl_json(d, "queue", "flush", "--domain", "slow.example.net")
    t.ok(rc == 0 and r.get("count") == N // 10, "queue flush --domain", r)
    rc, r = ctl_json(d, "queue", "flush", "--all")
    t.ok(rc == 0 and r.get("count", 0) >= N - 3, "queue flush --all", r)
    r = d.call({"op": "queue.flush"})
    t.is_(r.get("error"), "bad_request", "flush without a target: bad_request")
    t.ok("op=queue.hold" in d.log_text() and "uid=0" in d.log_text(),
         "admin actions are logged with the caller's uid")

    # --- message.status / queue.show / stats / metrics ----------------------
    r = d.call({"op": "message.status", "id": sent[5]})
    t.ok(r.get("ok") and r["state"] == "queued" and r["recipients"][0]["to"] ==
         "user5@example.com" and r["recipients"][0]["state"] == "pending",
         "message.status of a queued message", r)
    r = d.call({"op": "message.status", "id": "f" * 24})
    t.is_(r.get("error"), "not_found", "message.status of an unknown id")
    r = d.call({"op": "queue.show", "id": sent[5], "body": True})
    t.ok(r.get("ok") and "Subject: message 5\r\n" in r.get("body", "") and
         "Message-ID: <" in r["body"] and "Date: " in r["body"], "queue.show --body", r)
    r = d.call({"op": "stats"})
    t.ok(r.get("ok") and r["states"]["queued"] + r["states"]["held"] >= N - 3 and
         r["classes"]["otp"] == N // 10 and r["paused"] is True, "stats counts", r)
    rc, r = ctl_json(d, "metrics")
    txt = r.get("text", "")
    t.ok('otpmail_queue_messages{state="queued"}' in txt and
         'otpmail_deliveries_total{result="delivered"}' in txt, "metrics exposition", txt[:400])
    r = d.call_as(NOBODY, {"op": "queue.list"})
    t.is_(r.get("error"), "forbidden", "queue.list refused to a stranger")

    # --- mail.send validation -----------------------------------------------
    base = {"op": "mail.send", "from": "app@example.org", "to": "a@example.com",
            "subject": "s", "text": "t"}
    r = d.call(dict(base, to=["ok@example.com", "bad address@example.com"]))
    t.ok(r.get("error") == "bad_request" and r.get("field") == "to", "bad recipient", r)
    r = d.call(dict(base, subject="x\r\nBcc: victim@example.net"))
    t.ok(r.get("error") == "bad_request" and r.get("field") == "subject",
         "CRLF in subject refused", r)
    r = d.call(dict(base, headers={"X-Tag": "a\nBcc: v@example.net"}))
    t.ok(r.get("error") == "bad_request" and r.get("field") == "headers",
         "LF in an extra header refused", r)
    r = d.call(dict(base, headers={"Bcc": "v@example.net"}))
    t.is_(r.get("field"), "headers", "reserved header refused")
    r = d.call(dict(base, **{"from": "evil\r\n@example.org"}))
    t.is_(r.get("field"), "from", "CRLF in from refused")
    r = d.call(dict(base, text="x" * (11 * 1024 * 1024)))
    t.is_(r.get("error"), "bad_request", "oversized message refused")
    r = d.call({"op": "mail.send", "from": "app@example.org", "to": "a@example.com",
                "raw": "Subject: no from\n\nbody\n"})
    t.ok(r.get("error") == "bad_request" and r.get("field") == "raw", "raw without From", r)
    r = d.call({"op": "mail.send", "from": "app@example.org", "to": "a@example.com",
                "raw": "From: a@example.org\nX-Long: " + "y" * 1200 + "\n\nbody\n"})
    t.is_(r.get("field"), "raw", "raw with a header line > 998 bytes")
    r = d.call({"op": "mail.send", "from": "app@example.org", "to": ["r1@example.com"],
                "raw": "From: a@example.org\nBcc: hidden@example.net,\n other@example.net\n"
                       "Subject: raw\n\nline1\nline2\nBcc: body line\n"})
    t.ok(r.get("ok"), "raw message accepted", r)
    raw_id = r.get("id")
    r = d.call({"op": "queue.show", "id": raw_id, "body": True})
    body = r.get("body", "")
    t.ok("\r\nSubject: raw\r\n\r\nline1\r\nline2\r\n" in body and "Date: " in body and
         "Message-ID: " in body and "\n" not in body.replace("\r\n", ""),
         "raw: CRLF line ends, Date and Message-ID added", body[:500])
    t.ok("hidden@" not in body and "other@" not in body and "Bcc: body line" in body,
         "raw: the Bcc header (with its continuation) removed, the body untouched", body[:500])
    r = d.call(dict(base, html="<p>hi</p>", headers={"Reply-To": "help@example.org"}))
    t.ok(r.get("ok"), "text + html + extra header accepted", r)
    r = d.call({"op": "queue.show", "id": r.get("id"), "body": True})
    em = email.message_from_string(r.get("body", ""))
    t.ok(em.get_content_type() == "multipart/alternative" and
         [p.get_content_type() for p in em.get_payload()] == ["text/plain", "text/html"] and
         em.get_payload()[1].get_payload(decode=True) == b"<p>hi</p>\r\n" and
         em["Reply-To"] == "help@example.org", "multipart/alternative built (Python email parses it)",
         r.get("body", "")[:800])

    # --- a garbage file in the spool ---------------------------------------
    spool = os.path.join(d.state, "spool")
    with open(os.path.join(spool, "msg", "00", "0123456789abcdef01234567"), "wb") as f:
        f.write(b"OTPQ1 12 34 00000000 00000000\ngarbage that is not a message")
    with open(os.path.join(spool, "msg", "01", "junk.txt"), "wb") as f:
        f.write(b"junk")
    d.kill9()
    d.start()
    corrupt = os.listdir(os.path.join(spool, "corrupt"))
    t.ok("0123456789abcdef01234567" in corrupt and "junk.txt" in corrupt,
         "garbage files quarantined into corrupt/", corrupt)
    t.ok("corrupt" in d.log_text(), "quarantine logged")
    t.ok(d.call({"op": "ping"}).get("ok"), "the daemon keeps serving")
    ids, _ = list_all(d)
    t.ok(ids is not None and len(ids) >= N - 2, "the queue is intact after the garbage")

    # --- resume: the sandbox delivers; status says so -----------------------
    rc, r = ctl_json(d, "queue", "resume")
    t.is_(rc, 0, "otpmailctl queue resume")
    st = wait_for(lambda: (lambda r: r if r.get("state") == "delivered" else None)(
        d.call({"op": "message.status", "id": sent[5]})), timeout=60)
    t.ok(st and st["recipients"][0]["state"] == "delivered" and
         st["recipients"][0]["attempts"] == 1 and st["recipients"][0]["reply"],
         "delivered, with the reply and attempt count", st)
    r = d.call({"op": "message.status", "id": hid})
    t.is_(r.get("state"), "held", "a held message stays held after resume")
    done = wait_for(lambda: d.call({"op": "stats"})["states"]["done"] >= N - 3, timeout=90)
    t.ok(done, "every released message delivered to the sandbox")
    r = d.call({"op": "stats"})
    t.ok(r["totals"]["delivered"] >= N - 3, "stats: delivered total", r)

# --- part 2: failures, DSNs, OTP expiry against real SMTP peers -------------
REJ, ACC, DEAD, PORT = "127.0.7.2", "127.0.7.3", "127.0.7.9", 2525
conf = ("sandbox = no\n"
        "route = bad.example.net [%s]:%d\n"
        "route = example.org [%s]:%d\n"
        "route = dead.example.net [%s]:%d\n"
        "otp_retry_min = 1s\notp_retry_max = 1s\n"
        "smtp_connect_timeout = 2s\n"
        "bounce_from = MAILER-DAEMON@mx.example.org\n") % (REJ, PORT, ACC, PORT, DEAD, PORT)


def status_in(d, qid, states, timeout):
    last = {}

    def pred():
        nonlocal last
        last = d.call({"op": "message.status", "id": qid})
        return last.get("state") in states
    return wait_for(pred, timeout, 0.1), last


with SmtpSink(REJ, PORT, extra_args=["-f", "RCPT"]) as rej, SmtpSink(ACC, PORT) as acc:
    with Daemon(conf_extra=conf) as d:
        r = d.call({"op": "mail.send", "from": "app@example.org",
                    "to": ["nobody@bad.example.net"], "subject": "will bounce",
                    "text": "body\n"})
        t.ok(r.get("ok"), "message to a rejecting host queued", r)
        fid = r.get("id")
        okk, st = status_in(d, fid, ("failed",), 30)
        rc0 = (st.get("recipients") or [{}])[0]
        t.ok(okk and rc0.get("state") == "failed" and (rc0.get("reply") or "").startswith("5"),
             "permanent failure: status failed with the 5xx reply", st)
        wait_for(lambda: acc.messages(), 30)
        dsn = [m for m in acc.messages() if b"multipart/report" in m.data]
        t.is_(len(dsn), 1, "one DSN delivered to the sender's domain")
        if dsn:
            data = dsn[0].data
            t.ok(b"X-Mail-Args: <>\n" in data.replace(b"\r", b"") and
                 b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>" in data,
                 "the DSN comes from the null sender, From: bounce_from", data[:300])
            em = email.message_from_bytes(data)
            parts = em.get_payload() if em.is_multipart() else []
            ds = parts[1].get_payload() if len(parts) > 1 else []
            t.ok(em.get_content_type() == "multipart/report" and len(parts) == 3 and
                 parts[1].get_content_type() == "message/delivery-status" and
                 any(b.get("Final-Recipient") == "rfc822; nobody@bad.example.net" and
                     b.get("Action") == "failed" and (b.get("Status") or "").startswith("5.")
                     for b in ds[1:]),
                 "the DSN parses as multipart/report naming the failed recipient",
                 data[:1500])
        r = d.call({"op": "queue.show", "id": fid})
        t.ok("dsn_sent" in r.get("flags", []), "the failed message is marked dsn_sent", r)
        r = d.call({"op": "queue.list", "sender": "", "limit": 10})
        bl = [m for m in r.get("messages", []) if m["sender"] == ""]
        t.ok(len(bl) == 1 and bl[0]["recipients"][0]["to"] == "app@example.org",
             "the DSN is listed with a null sender, to the original sender", r)

        # OTP class to a dead host: deferred with a reason, then expired, no DSN
        r = d.call({"op": "mail.send", "from": "app@example.org",
                    "to": "code@dead.example.net", "subject": "your code",
                    "text": "123456\n", "class": "otp", "ttl": 4})
        t.ok(r.get("ok"), "OTP-class message with ttl 4 s queued", r)
        oid = r.get("id")
        okk, st = status_in(d, oid, ("deferred",), 15)
        t.ok(okk and st.get("last_error") and st.get("next_attempt"),
             "dead host: deferred, with the reason and the next attempt", st)
        okk, st = status_in(d, oid, ("expired",), 20)
        rc0 = (st.get("recipients") or [{}])[0]
        t.ok(okk and rc0.get("state") == "expired" and rc0.get("attempts", 0) >= 1,
             "after its ttl: expired (a late code is useless)", st)
        time.sleep(1)
        t.is_(len([m for m in acc.messages() if b"multipart/report" in m.data]), 1,
              "no DSN for OTP mail")
        r = d.call({"op": "stats"})
        t.ok(r["totals"]["failed"] >= 1 and r["totals"]["bounces"] == 1 and
             r["totals"]["expired"] >= 1, "stats: failed, expired and bounce totals", r)

t.done()
