#!/usr/bin/env python3
"""test_queue.py - the persistent queue through the real daemon.

Starts: otpmaild (sandbox mode, temp state dir), no network peer.  Pauses
delivery, submits 1,000+ messages over the control socket (mail.send),
kill -9s the daemon, restarts it and finds every acknowledged message with
queue.list paging.  Then: validation of mail.send (addresses, header
injection, raw messages), message.status, otpmailctl queue list filters
(domain, class, state, sender, age), hold/release/flush/delete, stats and
metrics, a garbage file in the spool (quarantined, daemon keeps serving),
and delivery after resume (sandbox) with the reply in message.status.
"""

import json
import os

from harness import Daemon, Tap, wait_for

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
    import email
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

t.done()
