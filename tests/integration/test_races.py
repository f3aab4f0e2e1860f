#!/usr/bin/python3
"""test_races.py - queue admin operations against messages in flight.

Starts (peers.py): smtp-sink on 127.0.9.2:2525 that waits 3 s before
answering the final "." with 250 (-W .:3), and one on 127.0.9.3:2525 that
waits 3 s before its DATA reply and answers the "." with 4xx (-w 3 -r .;
smtp-sink ignores a -W delay of a command it rejects); otpmaild (sandbox = no,
tls_policy none) routing ok.example.org to the first and soft.example.org
to the second, with a 600 s retry so nothing is retried by itself.

A message is "in flight" while its delivery holds it (queue.show says
"delivering"; the sink has the data and has not answered).  Against such a
message, each admin operation answers at once and takes effect when the
attempt ends (the queue has no "being delivered; retry" answer: Q_BUSY is
never returned), and never causes a second delivery:
- hold while the attempt defers: the message stays held, is not retried;
  release sends it again; flush of a held message does nothing;
- hold while the attempt succeeds: delivered once, done;
- delete while the attempt defers or succeeds: gone afterwards (not_found,
  its file removed), no further attempt;
- flush (by id, by domain, all) repeated during the attempt: one delivery;
- release of a message that is not held, during the attempt: no effect;
- hold and release within one attempt: ends deferred, not held, not sent
  twice.
"""
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

PORT = 2525
OK_SINK, SOFT_SINK = "127.0.9.2", "127.0.9.3"
DELAY = 3

t = Tap()


def send(d, to, subject):
    r = d.call({"op": "mail.send", "from": "app@sender.example.com", "to": [to],
                "subject": subject, "text": "race test\n"})
    if not r.get("ok"):
        raise RuntimeError("mail.send: %r" % r)
    return r["id"]


def show(d, qid):
    return d.call({"op": "queue.show", "id": qid})


def in_flight(d, qid, timeout=15):
    """Waits until the message's delivery holds it."""
    return wait_for(lambda: show(d, qid).get("status") == "delivering", timeout, 0.02)


def attempts(d, qid):
    return len(re.findall(r"event=delivery id=%s " % qid, d.log_text()))


def settled(d, qid, timeout=DELAY + 15):
    """Waits until the attempt in flight is over; returns queue.show."""
    wait_for(lambda: show(d, qid).get("status") != "delivering", timeout, 0.05)
    return show(d, qid)


def copies(sink, subject):
    return len([m for m in sink.messages() if ("Subject: " + subject).encode() in m.data])


def spool_file(d, qid):
    for root, _, files in os.walk(os.path.join(d.state, "spool", "msg")):
        if qid in files:
            return os.path.join(root, qid)
    return None


def main():
    conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
            "route = ok.example.org [%s]:%d\nroute = soft.example.org [%s]:%d\n"
            "default_retry_min = 600s\ndefault_retry_max = 600s\n"
            "smtp_command_timeout = 20s\nsession_idle_timeout = 1s\n"
            % (OK_SINK, PORT, SOFT_SINK, PORT))
    with SmtpSink(OK_SINK, PORT, extra_args=["-W", ".:%d" % DELAY]) as ok_sink, \
            SmtpSink(SOFT_SINK, PORT, extra_args=["-w", str(DELAY), "-r", "."]), \
            Daemon(conf_extra=conf) as d:
        # hold during an attempt that defers
        q = send(d, "h@soft.example.org", "hold-soft")
        t.ok(in_flight(d, q), "the message is in flight (delivering)", show(d, q))
        r = d.call({"op": "queue.hold", "id": q})
        t.ok(r.get("ok"), "queue.hold in flight: ok at once", r)
        s = settled(d, q)
        t.ok(s.get("held") and s.get("status") == "held" and
             s["recipients"][0].get("state") == "deferred",
             "after the attempt: held, the recipient deferred", json.dumps(s))
        r = d.call({"op": "queue.flush", "id": q})
        time.sleep(1)
        t.ok(r.get("ok") and attempts(d, q) == 1 and show(d, q).get("held"),
             "flush of a held message: no new attempt", r)
        r = d.call({"op": "queue.release", "id": q})
        t.ok(r.get("ok") and in_flight(d, q), "release: sent again at once", r)
        s = settled(d, q)
        t.ok(not s.get("held") and s.get("status") == "deferred" and attempts(d, q) == 2,
             "after the second attempt: deferred, not held, 2 attempts", json.dumps(s))

        # hold during an attempt that succeeds
        q = send(d, "h@ok.example.org", "hold-ok")
        in_flight(d, q)
        r = d.call({"op": "queue.hold", "id": q})
        s = settled(d, q)
        t.ok(r.get("ok") and s.get("status") == "delivered",
             "hold while the attempt succeeds: delivered", json.dumps(s))
        wait_for(lambda: copies(ok_sink, "hold-ok") >= 1, 10)
        t.is_(copies(ok_sink, "hold-ok"), 1, "delivered once")

        # delete during an attempt that defers
        q = send(d, "d@soft.example.org", "delete-soft")
        in_flight(d, q)
        path = spool_file(d, q)
        r = d.call({"op": "queue.delete", "id": q})
        t.ok(r.get("ok"), "queue.delete in flight: ok at once", r)
        t.is_(show(d, q).get("error"), "not_found", "at once no longer listed")
        time.sleep(DELAY + 1)
        t.ok(path and not os.path.exists(path) and attempts(d, q) == 1,
             "after the attempt: its file removed, no further attempt",
             "file %s exists: %s, attempts %d" % (path, path and os.path.exists(path),
                                                  attempts(d, q)))
        r = d.call({"op": "queue.flush", "id": q})
        t.is_(r.get("error"), "not_found", "flush of the deleted message: not_found")

        # delete during an attempt that succeeds
        q = send(d, "d@ok.example.org", "delete-ok")
        in_flight(d, q)
        path = spool_file(d, q)
        r = d.call({"op": "queue.delete", "id": q})
        time.sleep(DELAY + 1)
        t.ok(r.get("ok") and show(d, q).get("error") == "not_found" and
             not os.path.exists(path) and attempts(d, q) == 1,
             "delete while the attempt succeeds: gone, one attempt", r)
        t.ok(copies(ok_sink, "delete-ok") <= 1, "never sent twice")

        # flush, again and again, during an attempt
        q = send(d, "f@ok.example.org", "flush-ok")
        in_flight(d, q)
        rs = []
        for _ in range(5):
            rs.append(d.call({"op": "queue.flush", "id": q}))
            rs.append(d.call({"op": "queue.flush", "domain": "ok.example.org"}))
            rs.append(d.call({"op": "queue.flush", "all": True}))
            time.sleep(0.2)
        s = settled(d, q)
        t.ok(all(r.get("ok") for r in rs), "every flush in flight: ok", rs[:3])
        time.sleep(1)
        t.ok(s.get("status") == "delivered" and attempts(d, q) == 1 and
             copies(ok_sink, "flush-ok") == 1,
             "15 flushes during the attempt: one attempt, one copy",
             "%s attempts=%d copies=%d" % (json.dumps(s), attempts(d, q),
                                           copies(ok_sink, "flush-ok")))

        # release of a message that is not held, during the attempt
        q = send(d, "r@soft.example.org", "release-soft")
        in_flight(d, q)
        r = d.call({"op": "queue.release", "id": q})
        s = settled(d, q)
        time.sleep(1)
        t.ok(r.get("ok") and s.get("status") == "deferred" and attempts(d, q) == 1,
             "release of a message not held, in flight: no effect, deferred once",
             json.dumps(s))

        # hold and release within one attempt
        q = send(d, "hr@soft.example.org", "hold-release")
        in_flight(d, q)
        r1 = d.call({"op": "queue.hold", "id": q})
        r2 = d.call({"op": "queue.release", "id": q})
        s = settled(d, q)
        t.ok(r1.get("ok") and r2.get("ok") and not s.get("held") and
             s.get("status") in ("deferred", "delivering", "queued"),
             "hold then release in flight: not held afterwards", json.dumps(s))
        t.ok(d.alive(), "the daemon is still running")
    t.done()


if __name__ == "__main__":
    main()
