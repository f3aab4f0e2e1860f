#!/usr/bin/env python3
"""test_crash_state.py - a crash while a message's state record is written.

The enqueue path is test_crash_points.py; this is every later envelope
version.  queue/spool.c appends each one (hold, a delivery attempt's
result, done) to the message file as a state record, fdatasynced unless the
message is finished; with OTPMAIL_FAULT=state_after_write the daemon
aborts once the record is appended (before the fdatasync, for every
record), with OTPMAIL_FAULT=state_after_fsync after the fdatasync (durable
records only).  For each of the two steps:

  hold      (sandbox, delivery paused) 4 acknowledged messages, one of them
            held; a restart with the fault; queue.hold of another one gets
            no answer (SIGABRT).  Restarted without the fault: every
            acknowledged message is queued with its whole body, the one held
            before the crash is still held, the hold target is held or
            queued (reported), nothing in spool/corrupt; after release and
            resume each is delivered exactly once, whole.
  done      (sandbox) 3 acknowledged messages, a restart with the fault,
            resume: the first delivery's "done" record aborts the daemon
            (state_after_write; with state_after_fsync the hook must NOT
            fire: a finished message's record is not fdatasynced).  After a
            restart each message is delivered once or twice (reported; twice
            only if its done record is not on disk), whole, none quarantined.
  deferral  (root: smtp-sink on 127.0.10.2:2525 answering 4xx to RCPT,
            sandbox = no, a route to it) 3 acknowledged messages; resume
            with the fault: the first deferral record aborts the daemon.
            After a restart all are still queued or deferred with whole
            bodies; once the sink accepts, queue.flush delivers each exactly
            once.

torn      a held message's file gets the first half of its own last state
          record appended by hand, a message without records 10 bytes of a
          record header; on start each loads with its previous state (held,
          queued), the log says "id=<id>: state record at offset N
          dropped" with N the old size, the file is cut back to N, nothing is
          quarantined; release, delivery and one more restart work on the
          cut files.
"""

import glob
import os
import re
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
# the message bodies and crash helpers of the enqueue-path test
from test_crash_points import body_of, crash_request, list_ids, restart_clean, \
    whole  # noqa: E402

t = Tap()
STEPS = ("state_after_write", "state_after_fsync")
SINK, SINK_PORT = "127.0.10.2", 2525
KEEP = "queue_keep_done = 1h\n"         # finished messages stay listed


def short(step):
    return "W" if step == "state_after_write" else "F"


def send(d, tag, domain="example.com"):
    """mail.send of body_of(tag); the id, or None."""
    r = d.call({"op": "mail.send", "from": "app@example.org",
                "to": ["rcpt-%s@%s" % (tag.lower(), domain)],
                "subject": "crash %s" % tag, "text": body_of(tag)})
    return r.get("id") if r.get("ok") else None


def send_acked(d, tags, domain="example.com"):
    """{id: tag} of the acknowledged ones."""
    acked = {}
    for tag in tags:
        qid = send(d, tag, domain)
        if qid:
            acked[qid] = tag
    return acked


def show(d, qid, body=False):
    return d.call({"op": "queue.show", "id": qid, "body": body})


def corrupt(d):
    return os.listdir(os.path.join(d.state, "spool", "corrupt"))


def dropped_lines(d):
    return re.findall(r"id=(\S+): state record at offset (\d+) dropped", d.log_text())


def spool_file(d, qid):
    g = glob.glob(os.path.join(d.state, "spool", "msg", "*", qid))
    return g[0] if g else None


def spool_records(path):
    """The file's size and its whole state records as (offset, bytes, envelope
    dict), read the way queue/spool.c does (top comment there)."""
    with open(path, "rb") as f:
        data = f.read()
    nl = data.index(b"\n")
    elen, blen = (int(x) for x in data[:nl].split()[1:3])
    off = nl + 1 + elen + blen + 4
    recs = [(0, None, env_dict(data[nl + 1:nl + 1 + elen]))]
    while off < len(data):
        nl = data.find(b"\n", off)
        h = data[off:nl].split() if nl > 0 else []
        if len(h) != 3 or h[0] != b"OTPS1":
            break
        end = nl + 1 + int(h[1]) + 4
        if end > len(data) or data[end - 4:end] != b"END\n":
            break
        recs.append((off, data[off:end], env_dict(data[nl + 1:end - 4])))
        off = end
    return len(data), recs


def env_dict(text):
    out = {}
    for line in text.decode(errors="replace").splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, v)
    return out


def last_env(d, qid):
    p = spool_file(d, qid)
    return spool_records(p)[1][-1][2] if p else None


def delivered_tags(texts):
    tags = []
    for tx in texts:
        m = re.search(r"^Subject: crash (\S+)", tx, re.M)
        tags.append(m.group(1) if m and whole(tx, m.group(1)) else "<partial>")
    return tags


def sandbox_texts(d):
    out = []
    for p in d.sandbox_messages():
        with open(p, "rb") as f:
            out.append(f.read().decode(errors="replace"))
    return out


def bodies_whole(d, acked, what):
    bad = []
    for qid, tag in acked.items():
        r = show(d, qid, body=True)
        if not (r.get("ok") and whole(r.get("body", ""), tag)):
            bad.append("%s %s" % (qid, str(r)[:200]))
    t.ok(not bad, "%s: every acknowledged message queued with its whole body" % what, bad)


def counts_in(tags, acked):
    return {tag: tags.count(tag) for tag in acked.values()}


def crash_and_check(d, step, what, req=None):
    """The daemon must abort now (req sent) or soon; checks it died of the hook."""
    if req is not None:
        ans, died = crash_request(d, req)
    else:
        ans, died = None, wait_for(lambda: not d.alive(), 30)
    t.ok(died and ans is None and d.proc.returncode == -6,
         "%s %s: the daemon aborts (SIGABRT), no answer" % (what, step),
         "answer %r, alive %s, rc %s" % (ans, d.alive(), d.proc.returncode))


# --- hold ----------------------------------------------------------------

def hold_step(step):
    what = "hold " + step
    with Daemon(conf_extra=KEEP) as d:
        d.call({"op": "queue.pause"})
        acked = send_acked(d, ["HOLD%s%d" % (short(step), i) for i in range(4)])
        ids = list(acked)
        t.is_(len(acked), 4, "%s: 4 messages acknowledged" % what)
        pre, target = ids[0], ids[1]
        r = d.call({"op": "queue.hold", "id": pre})
        t.ok(r.get("ok"), "%s: one message held (acknowledged) before the crash" % what, r)
        d.stop()
        d.env["OTPMAIL_FAULT"] = step
        d.start()
        crash_and_check(d, step, "hold", {"op": "queue.hold", "id": target})
        restart_clean(d)
        listed = list_ids(d) or []
        t.ok(set(acked) <= set(listed) and len(listed) == 4,
             "%s: every acknowledged message still queued" % what, listed)
        bodies_whole(d, acked, what)
        tr = show(d, target)
        t.ok(tr.get("status") in ("held", "queued"),
             "%s: the hold target is held or queued" % what, tr)
        t.diag("%s: after the crash the hold target is %s" % (what, tr.get("status")))
        t.is_(show(d, pre).get("status"), "held",
              "%s: the message held before the crash is still held" % what)
        others = [show(d, q).get("status") for q in ids[2:]]
        t.is_(others, ["queued", "queued"], "%s: the others are queued" % what)
        t.is_(corrupt(d), [], "%s: nothing in spool/corrupt" % what)
        if dropped_lines(d):
            t.diag("%s: %r" % (what, dropped_lines(d)))

        r = d.call({"op": "queue.release", "ids": [pre, target]})
        t.ok(r.get("ok"), "%s: queue.release" % what, r)
        d.call({"op": "queue.resume"})
        wait_for(lambda: len(d.sandbox_messages()) >= 4, 30)
        wait_for(lambda: all(show(d, q).get("status") == "delivered" for q in ids), 10)
        tags = delivered_tags(sandbox_texts(d))
        counts = counts_in(tags, acked)
        t.diag("%s: delivered %s time(s)" % (what, sorted(counts.values())))
        t.ok(sorted(tags) == sorted(acked.values()),
             "%s: every message delivered exactly once, whole" % what, tags)


# --- the done record of a delivery (sandbox) ----------------------------------

def done_step(step):
    what = "done " + step
    with Daemon(conf_extra=KEEP) as d:
        d.call({"op": "queue.pause"})
        acked = send_acked(d, ["DONE%s%d" % (short(step), i) for i in range(3)])
        t.is_(len(acked), 3, "%s: 3 messages acknowledged" % what)
        d.stop()
        d.env["OTPMAIL_FAULT"] = step
        d.start()
        d.call({"op": "queue.resume"})
        if step == "state_after_fsync":
            # a finished message's record is not fdatasynced: no hook
            wait_for(lambda: len(d.sandbox_messages()) >= 3 or not d.alive(), 30)
            wait_for(lambda: not d.alive() or all(
                show(d, q).get("status") == "delivered" for q in acked), 10)
            t.ok(d.alive(), "%s: the done record is not fdatasynced, the hook does "
                 "not fire" % what, "rc %s" % d.proc.returncode)
            on_disk = {q: (last_env(d, q) or {}).get("finished", "0") != "0"
                       for q in acked}
        else:
            crash_and_check(d, step, "done")
            on_disk = {q: (last_env(d, q) or {}).get("finished", "0") != "0"
                       for q in acked}
            t.ok(any(on_disk.values()),
                 "%s: the aborting done record is whole in the file" % what, on_disk)
        t.diag("%s: %d of 3 done records on disk at the crash, %d message(s) in the "
               "Maildir" % (what, sum(on_disk.values()), len(d.sandbox_messages())))
        restart_clean(d)
        t.ok(set(acked) <= set(list_ids(d) or []),
             "%s: every acknowledged message still listed" % what)
        ok = wait_for(lambda: all(show(d, q).get("status") == "delivered" for q in acked),
                      30)
        t.ok(ok, "%s: every message delivered after the restart" % what,
             [show(d, q) for q in acked])
        tags = delivered_tags(sandbox_texts(d))
        counts = counts_in(tags, acked)
        t.diag("%s: delivered %s time(s)" % (
            what, ", ".join("%s %d" % (acked[q], counts[acked[q]]) for q in acked)))
        t.ok("<partial>" not in tags, "%s: no partial body delivered" % what, tags)
        t.ok(all(1 <= n <= 2 for n in counts.values()) and
             len(tags) == sum(counts.values()),
             "%s: each message delivered once or twice, nothing else" % what, counts)
        again = [acked[q] for q in acked if on_disk[q] and counts[acked[q]] != 1]
        t.is_(again, [], "%s: a message whose done record is on disk is not "
              "delivered again" % what)
        t.is_(corrupt(d), [], "%s: nothing in spool/corrupt" % what)


# --- a deferral record (a 4xx peer; durable) --------------------------------

def deferral_step(step, sink):
    what = "deferral " + step
    conf = KEEP + ("sandbox = no\nroute = crash.example.net [%s]:%d\n"
                   "smtp_connect_timeout = 2s\nsmtp_command_timeout = 5s\n"
                   "session_idle_timeout = 1s\n") % (SINK, SINK_PORT)
    if sink.extra_args != ["-r", "RCPT"]:
        sink.restart(extra_args=["-r", "RCPT"])
    # restart() keeps the dumps of a step before: every dump file there now,
    # closed or still open (a killed sink's), is not this step's
    before = set(glob.glob(os.path.join(sink.dir, "dump", "*")))

    def new_messages():
        return [m for m in sink.messages() if m.path not in before]
    with Daemon(conf_extra=conf) as d:
        d.call({"op": "queue.pause"})
        acked = send_acked(d, ["DEFER%s%d" % (short(step), i) for i in range(3)],
                           "crash.example.net")
        t.is_(len(acked), 3, "%s: 3 messages acknowledged" % what)
        d.stop()
        d.env["OTPMAIL_FAULT"] = step
        d.start()
        d.call({"op": "queue.resume"})
        crash_and_check(d, step, "deferral")
        deferred = sum(int((last_env(d, q) or {}).get("attempts", "0")) > 0 for q in acked)
        t.ok(deferred >= 1, "%s: the aborting deferral record is in the file" % what)
        restart_clean(d)
        listed = list_ids(d) or []
        t.ok(set(acked) <= set(listed), "%s: every acknowledged message still queued" %
             what, listed)
        st = {q: show(d, q).get("status") for q in acked}
        t.ok(all(s in ("queued", "deferred", "delivering") for s in st.values()),
             "%s: each is queued or deferred, none lost or done" % what, st)
        t.diag("%s: after the restart %s" % (what, sorted(st.values())))
        bodies_whole(d, acked, what)
        t.is_(corrupt(d), [], "%s: nothing in spool/corrupt" % what)
        t.is_(len(new_messages()), 0, "%s: nothing reached the 4xx peer" % what)

        sink.restart(extra_args=[])
        ok = wait_for(lambda: d.call({"op": "queue.flush", "all": True}).get("ok") and
                      all(show(d, q).get("status") == "delivered" for q in acked), 30, 0.5)
        t.ok(ok, "%s: delivered once the peer accepts" % what,
             [show(d, q) for q in acked])
        tags = delivered_tags([m.data.decode(errors="replace")
                               for m in new_messages()])
        counts = counts_in(tags, acked)
        t.diag("%s: delivered %s time(s)" % (what, sorted(counts.values())))
        t.ok(sorted(tags) == sorted(acked.values()),
             "%s: every message delivered exactly once, whole" % what, tags)


# --- a torn record ---------------------------------------------------------------

def torn():
    what = "torn"
    with Daemon(conf_extra=KEEP) as d:
        d.call({"op": "queue.pause"})
        acked = send_acked(d, ["TORN%d" % i for i in range(3)])
        t.is_(len(acked), 3, "%s: 3 messages acknowledged" % what)
        a, b, c = list(acked)
        d.call({"op": "queue.hold", "id": a})
        d.stop()
        pa, pb = spool_file(d, a), spool_file(d, b)
        size_a, recs_a = spool_records(pa)
        size_b, recs_b = spool_records(pb)
        t.ok(len(recs_a) == 2 and recs_a[-1][2].get("held") == "1" and len(recs_b) == 1,
             "%s: the held message has one state record, the other none" % what,
             (recs_a, recs_b))
        last = recs_a[-1][1]
        with open(pa, "ab") as f:
            f.write(last[:len(last) // 2])
        with open(pb, "ab") as f:     # a tear inside the header line
            f.write(last[:10])
        d.start()
        drops = dict(dropped_lines(d))
        t.diag("%s: log: %s" % (what, drops))
        t.is_(drops.get(a), str(size_a),
              "%s: the log names the held message and the offset of its torn record" %
              what)
        t.is_(drops.get(b), str(size_b),
              "%s: the log names the message with a torn first record" % what)
        t.is_((os.path.getsize(pa), os.path.getsize(pb)), (size_a, size_b),
              "%s: both files are cut back to their last whole record" % what)
        t.is_([show(d, q).get("status") for q in (a, b, c)], ["held", "queued", "queued"],
              "%s: each message loads with the state before the torn record" % what)
        bodies_whole(d, acked, what)
        t.is_(corrupt(d), [], "%s: nothing in spool/corrupt" % what)

        d.call({"op": "queue.release", "id": a})
        d.call({"op": "queue.resume"})
        ok = wait_for(lambda: all(show(d, q).get("status") == "delivered"
                                  for q in acked), 30)
        tags = delivered_tags(sandbox_texts(d))
        t.ok(ok and sorted(tags) == sorted(acked.values()),
             "%s: after release each message is delivered exactly once, whole" % what,
             tags)
        d.stop()
        n0 = len(dropped_lines(d))
        d.start()
        t.ok(len(dropped_lines(d)) == n0 and not corrupt(d) and
             all(show(d, q).get("status") == "delivered" for q in acked),
             "%s: the records appended after the cut load cleanly on the next start" %
             what, dropped_lines(d)[n0:])


def main():
    # the daemons abort on purpose: no core files (they inherit this limit)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for step in STEPS:
        hold_step(step)
    for step in STEPS:
        done_step(step)
    if os.geteuid() != 0:
        t.skip("deferral records (smtp-sink -u nobody)", "needs root")
    else:
        from peers import SmtpSink
        with SmtpSink(SINK, SINK_PORT, extra_args=["-r", "RCPT"]) as sink:
            for step in STEPS:
                deferral_step(step, sink)
    torn()
    t.done()


if __name__ == "__main__":
    main()
