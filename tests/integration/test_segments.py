#!/usr/bin/env python3
"""test_segments.py - the segment spool (queue_segments = yes) end to end.

Starts: smtp-sink (dumps) on 127.0.0.2:25 for example.com, smtp-sink -r
RCPT (every RCPT deferred; restarted without it to let mail through) on
127.0.0.3:25 for defer.example.com, and otpmaild (sandbox = no,
queue_segments = yes) on a private state directory, a fresh one per part;
one part runs it under tests/powercut/iofault.so (LD_PRELOAD), one with its
spool on a 2 MiB tmpfs (mount; root).

New messages go to shared append-only files <spool>/seg/<16 hex> (record
"OTPG1 id kind len crc hcrc\\n" payload "END\\n"; queue/segment.c).  Parts:
  deliver    acknowledged messages are in segments, not in msg/ files,
             reach the sink exactly once; once delivered and purged
             (queue_keep_done = 1s) their segment is unlinked while the
             daemon runs, but the open one (appended to), which goes at
             the next start
  load       kill -9 under concurrent mail.send / otp.issue with the queue
             running: every acknowledged message delivered after the
             restart, none twice (but one the sink had before the kill:
             at-least-once)
  append     OTPMAIL_FAULT=seg_after_append (abort after the append, before
             its sync): no answer; the restart answers, the acknowledged
             messages are queued, the unacknowledged one at most once
  deferred   a tempfailed message moves to its own msg/ file (V marker);
             kill -9, its V marker cut off: the file wins, the segment
             goes; retried and delivered once, not again from its segment
  corrupt    daemon stopped: a flipped payload byte (that message to
             corrupt/, logged, the others delivered); a torn tail (cut,
             the earlier ones delivered); a garbage header (a copy of the
             segment in corrupt/, the earlier ones delivered)
  iofault    fdatasync of spool/seg/* fails (EIO): unavailable, the daemon
             serves; the disk back, new messages work; after a restart
             nothing acknowledged is lost and nothing refused is delivered
  diskfull   ENOSPC on the segment: refused, "full" in the detail; nothing
             acknowledged lost (restart), space back: works, all delivered
  idem       idempotency_key after kill -9 / seg_after_sync /
             seg_after_append: the retry gets the same answer, one mail
"""

import collections
import glob
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, TOP_BUILDDIR, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
SHIM = os.path.join(TOP_BUILDDIR, "tests", "powercut", "iofault.so")
CONF = ("sandbox = no\n"
        "log_level = info\n"
        "tls_policy = none\n"
        "queue_segments = yes\n"
        "route = example.com [127.0.0.2]:25\n"
        "route = defer.example.com [127.0.0.3]:25\n"
        "otp_from = noreply@example.com\n"
        "otp_resend_cooldown = 0s\n"
        "otp_max_per_address_hour = 1000\n"
        "default_retry_min = 1s\n"
        "default_retry_max = 2s\n"
        "queue_min_free_space = 0\n"
        "queue_min_free_inodes = 0\n")
SINK = None     # example.com
DSINK = None    # defer.example.com


# --- helpers ---------------------------------------------------------------

def daemon(extra="", **kw):
    return Daemon(conf_extra=CONF + extra, **kw)


def send(d, tag, body=None, domain="example.com", timeout=30, key=None):
    req = {"op": "mail.send", "from": "app@example.com",
           "to": ["%s@%s" % (tag, domain)], "subject": "seg " + tag,
           "text": body if body is not None else "body of %s\nEND-%s\n" % (tag, tag)}
    if key:
        req["idempotency_key"] = key
    return d.call(req, timeout=timeout)


def issue(d, tag, timeout=30, key=None):
    req = {"op": "otp.issue", "to": "%s@example.com" % tag, "purpose": "login"}
    if key:
        req["idempotency_key"] = key
    return d.call(req, timeout=timeout)


def try_call(fn, *a, **kw):
    """fn's answer, or None when the daemon went away."""
    try:
        return fn(*a, **kw)
    except (OSError, EOFError, ValueError):
        return None


def spool(d, *p):
    return os.path.join(d.state, "spool", *p)


def seg_files(d):
    return sorted(glob.glob(spool(d, "seg", "[0-9a-f]" * 16)))


def msg_file(d, qid):
    return glob.glob(spool(d, "msg", "??", qid))


def corrupt(d):
    try:
        return sorted(os.listdir(spool(d, "corrupt")))
    except OSError:
        return []


def list_ids(d):
    r = d.call({"op": "queue.list", "limit": 1000})
    return [m["id"] for m in r.get("messages", [])] if r.get("ok") else None


def records(path):
    """The records of a segment: (offset, header length, id, kind, length)."""
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], 0
    while off < len(data):
        nl = data.find(b"\n", off)
        if nl < 0:
            break
        f = data[off:nl].split()
        if len(f) != 6 or f[0] != b"OTPG1":
            break
        hl, ln = nl + 1 - off, int(f[3])
        out.append((off, hl, f[1].decode(), f[2].decode(), ln))
        off += hl + ln + 4
    return out


def delivered(sink):
    """Counter: local part of the recipient -> transactions the sink has."""
    return collections.Counter(m.rcpt.split("@")[0] for m in sink.messages()
                               if m.rcpt)


def seen_any(sink):
    """Every recipient in a dump file, closed or still open (a transaction in
    progress counts: it may be repeated, at-least-once)."""
    out = set()
    for p in glob.glob(os.path.join(sink.dir, "dump", "*")):
        try:
            with open(p, "rb") as f:
                m = re.search(rb"^X-Rcpt-Args: <?([^>@\s]+)", f.read(), re.M)
            if m:
                out.add(m.group(1).decode())
        except OSError:
            pass
    return out


def wait_delivered(sink, tags, timeout=30):
    tags = set(tags)
    wait_for(lambda: set(delivered(sink)) >= tags, timeout)
    return delivered(sink)


def restart_clean(d):
    d.env.pop("OTPMAIL_FAULT", None)
    d.stop()
    d.start()


def crash_request(d, fn, *a, **kw):
    """Runs a request on a daemon that must abort: (answer, died)."""
    ans = try_call(fn, d, *a, timeout=20, **kw)
    died = wait_for(lambda: not d.alive(), 10)
    return ans, died


def log_has(d, pattern):
    return re.search(pattern, d.log_text()) is not None


# --- parts ------------------------------------------------------------------

def part_deliver():
    name = "deliver"
    with daemon("queue_keep_done = 1s\n") as d:
        d.call({"op": "queue.pause"})
        tags = ["dlv%02d" % i for i in range(12)]
        acked = {}
        lock = threading.Lock()

        def worker(ts):
            for tg in ts:
                r = try_call(issue if tg.endswith(("3", "7")) else send, d, tg)
                if r and r.get("ok"):
                    with lock:
                        acked[tg] = r["id"]
        ths = [threading.Thread(target=worker, args=(tags[i::4],)) for i in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        t.is_(sorted(acked), tags, "%s: 12 concurrent mail.send/otp.issue acknowledged" %
              name)
        segs = seg_files(d)
        t.ok(segs, "%s: the spool has segment files (%d)" % (name, len(segs)))
        in_segs = {r[2] for p in segs for r in records(p) if r[3] == "M"}
        t.is_(sorted(set(acked.values()) - in_segs), [],
              "%s: each acknowledged message is an M record of a segment" % name)
        t.is_([q for q in acked.values() if msg_file(d, q)], [],
              "%s: no msg/ file for them" % name)
        # a restart: the next message opens a new segment, so the first
        # one is no longer appended to and can go while the daemon runs
        d.stop()
        d.start()
        r = send(d, "dlv-cur")
        if r.get("ok"):
            acked["dlv-cur"] = r["id"]
        cur = [p for p in seg_files(d) if p not in segs]
        t.ok(r.get("ok") and len(cur) == 1, "%s: after a restart a new message goes to "
             "a new segment" % name, (r, seg_files(d)))
        d.call({"op": "queue.resume"})
        want = tags + ["dlv-cur"]
        wait_delivered(SINK, want)
        wait_for(lambda: any(delivered(SINK)[x] > 1 for x in want), 1)
        got = delivered(SINK)
        t.is_({x: got[x] for x in want}, {x: 1 for x in want},
              "%s: each delivered to smtp-sink exactly once" % name)
        purged = wait_for(lambda: not set(acked.values()) & set(list_ids(d) or []), 15)
        t.ok(purged, "%s: delivered and purged (queue_keep_done = 1s)" % name,
             list_ids(d))
        t.ok(wait_for(lambda: not [p for p in segs if os.path.exists(p)], 5),
             "%s: the first segment, all purged, is unlinked while the daemon runs" %
             name, seg_files(d))
        t.ok(all(os.path.exists(p) for p in cur),
             "%s: the segment appended to stays while it is the open one" % name)
        d.stop()
        d.start()
        t.is_([p for p in cur if os.path.exists(p)], [],
              "%s: it goes at the next start (no message left in it)" % name)
        r = send(d, "dlv-after")
        t.ok(r.get("ok") and wait_for(lambda: delivered(SINK)["dlv-after"] == 1, 15),
             "%s: a new message after the restart is delivered" % name, r)
        t.is_(corrupt(d), [], "%s: nothing in corrupt/" % name)


def part_load():
    name = "load"
    with daemon() as d:
        acked, lock, stop = {}, threading.Lock(), threading.Event()

        def worker(w):
            for i in range(200):
                if stop.is_set():
                    return
                tg = "load%d-%03d" % (w, i)
                r = try_call(issue if i % 3 == 0 else send, d, tg, timeout=10)
                if r is None:
                    return
                if r.get("ok"):
                    with lock:
                        acked[tg] = r["id"]
        ths = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for th in ths:
            th.start()
        wait_for(lambda: len(acked) >= 150, 20, 0.005)
        d.kill9()
        # the sink may still be reading what the daemon sent before it died
        time.sleep(0.5)
        before = {x for x in seen_any(SINK) if x.startswith("load")}
        stop.set()
        for th in ths:
            th.join()
        t.ok(len(acked) >= 150, "%s: %d acknowledged before the kill -9" %
             (name, len(acked)))
        d.start()
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the restarted daemon answers" % name)
        got = wait_delivered(SINK, acked, 40)
        time.sleep(1.0)
        got = delivered(SINK)
        t.is_(sorted(x for x in acked if got[x] == 0), [],
              "%s: every acknowledged message delivered after the restart" % name)
        dups = sorted(x for x in got if x.startswith("load") and got[x] > 1)
        again = [x for x in dups if x in before]
        t.diag("%s: %d delivered before the kill, %d of them again after it "
               "(at-least-once: the done record follows the delivery)"
               % (name, len(before), len(again)))
        t.is_([x for x in dups if x not in before], [], "%s: none delivered twice" % name)
        unacked = sorted(x for x in got if x.startswith("load") and x not in acked)
        t.diag("%s: %d unacknowledged delivered (allowed)" % (name, len(unacked)))
        t.is_(corrupt(d), [], "%s: nothing in corrupt/" % name)


def part_append():
    name = "seg_after_append"
    with daemon() as d:
        d.call({"op": "queue.pause"})
        acked = {}
        for i in range(3):
            r = send(d, "app%d" % i)
            if r.get("ok"):
                acked["app%d" % i] = r["id"]
        t.is_(len(acked), 3, "%s: 3 acknowledged first" % name)
        d.stop()
        d.env["OTPMAIL_FAULT"] = "seg_after_append"
        d.start()
        ans, died = crash_request(d, send, "app-bad")
        t.ok(died and ans is None and d.proc.returncode == -6,
             "%s: mail.send aborts the daemon before the sync, no answer" % name,
             "answer %r, rc %s" % (ans, d.proc.returncode))
        restart_clean(d)
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the restart answers" % name)
        ids = list_ids(d) or []
        t.ok(set(acked.values()) <= set(ids), "%s: the acknowledged messages are "
             "queued" % name, ids)
        extra = [q for q in ids if q not in acked.values()]
        t.ok(len(extra) <= 1, "%s: at most the unacknowledged one more" % name, extra)
        t.diag("%s: the unacknowledged message is %s" %
               (name, "queued" if extra else "gone"))
        t.is_(corrupt(d), [], "%s: nothing in corrupt/" % name)
        d.call({"op": "queue.resume"})
        got = wait_delivered(SINK, acked)
        if extra:
            wait_for(lambda: delivered(SINK)["app-bad"] >= 1, 15)
        time.sleep(0.5)
        got = delivered(SINK)
        t.is_({x: got[x] for x in acked}, {x: 1 for x in acked},
              "%s: each acknowledged message delivered once" % name)
        t.is_(got["app-bad"], 1 if extra else 0,
              "%s: the unacknowledged one delivered as often as it is queued" % name)


def part_deferred():
    name = "deferred"
    with daemon() as d:
        r = send(d, "dfr", domain="defer.example.com")
        qid = r.get("id")
        t.ok(r.get("ok"), "%s: a message for the tempfailing sink is accepted" % name, r)

        def tried():
            s = d.call({"op": "queue.show", "id": qid})
            return s if s.get("attempts", 0) >= 1 and s.get("state") != "delivering" \
                else None
        s = wait_for(tried, 20)
        t.ok(s and s.get("state") in ("deferred", "queued"),
             "%s: it was tried and deferred" % name, s)
        t.ok(wait_for(lambda: msg_file(d, qid), 5),
             "%s: it moved to its own msg/ file" % name,
             os.listdir(spool(d, "seg")))
        marks = [r[3] for p in seg_files(d) for r in records(p) if r[2] == qid]
        t.ok("M" in marks and "V" in marks,
             "%s: its segment has its M record and a V marker" % name, marks)
        d.kill9()
        # as if the crash came between its file and the V marker: the
        # marker cut off; the file must win over the segment's copy
        seg = [p for p in seg_files(d) if any(r[2] == qid for r in records(p))]
        recs = records(seg[0]) if seg else []
        cut = bool(recs) and recs[-1][2] == qid and recs[-1][3] == "V"
        if cut:
            os.truncate(seg[0], recs[-1][0])
        t.ok(cut, "%s: its V marker, the segment's last record, cut off (kill -9 "
             "before the marker)" % name, recs)
        DSINK.restart(extra_args=[])
        try:
            d.start()
            ids = list_ids(d) or []
            t.is_(ids.count(qid), 1, "%s: after kill -9, queued once (the file wins)"
                  % name)
            if cut and {r[2] for r in recs} == {qid}:
                t.ok(wait_for(lambda: not os.path.exists(seg[0]), 5),
                     "%s: its segment, with no other message, is unlinked" % name)
            d.call({"op": "queue.flush", "ids": [qid]})
            ok = wait_for(lambda: delivered(DSINK)["dfr"] >= 1, 20)
            t.ok(ok, "%s: retried and delivered" % name)
            time.sleep(2.5)     # a second copy would have come by now (retry 1-2 s)
            t.is_(delivered(DSINK)["dfr"], 1, "%s: delivered once, not again from its "
                  "segment copy" % name)
            s = d.call({"op": "queue.show", "id": qid})
            t.ok(s.get("state") == "done" or not s.get("ok"),
                 "%s: it is done" % name, s)
        finally:
            DSINK.restart(extra_args=["-r", "RCPT"])


def fill_segment(d, prefix, n=3):
    """n messages, one after another (one segment, in order): tag -> id."""
    d.call({"op": "queue.pause"})
    acked = {}
    for i in range(n):
        tg = "%s%d" % (prefix, i)
        r = send(d, tg, body=("%s line\n" % tg) * 200)
        if r.get("ok"):
            acked[tg] = r["id"]
    return acked


def one_segment(d, acked, name):
    """The segment holding acked's messages, with its records: (path, recs)."""
    for p in seg_files(d):
        recs = records(p)
        if {r[2] for r in recs} >= set(acked.values()):
            return p, recs
    t.diag("%s: segments: %s" % (name, [(p, records(p)) for p in seg_files(d)]))
    return None, []


def part_corrupt(kind):
    name = "corrupt %s" % kind
    with daemon() as d:
        acked = fill_segment(d, "c%s" % kind[:3])
        tags = sorted(acked)
        d.stop()
        path, recs = one_segment(d, acked, name)
        ms = [r for r in recs if r[3] == "M"]
        if not t.ok(path and len(ms) == 3, "%s: 3 messages in one segment" % name,
                    recs):
            return
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if kind == "payload":
                off, hl, _, _, ln = ms[1]
                f.seek(off + hl + ln // 2)
                b = f.read(1)
                f.seek(off + hl + ln // 2)
                f.write(bytes([b[0] ^ 0x20]))
            elif kind == "torn tail":
                off, hl, _, _, ln = ms[2]
                f.truncate(off + hl + ln // 2)
            else:
                off, hl, _, _, _ = ms[1]
                f.seek(off)
                f.write(b"#" * (hl - 1))     # its newline stays: garbage, not torn
        d.start()
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the daemon starts and answers" % name)
        ids = set(list_ids(d) or [])
        if kind == "payload":
            bad = tags[1]
            t.ok(acked[bad] in corrupt(d), "%s: the damaged message is in corrupt/" %
                 name, corrupt(d))
            t.ok(log_has(d, r"corrupt message %s in segment" % acked[bad]),
                 "%s: and logged" % name)
            want, gone = [tags[0], tags[2]], [bad]
        elif kind == "torn tail":
            t.ok(log_has(d, r"bytes after the last whole record cut off"),
                 "%s: the tail is cut, logged" % name)
            t.is_([c for c in corrupt(d) if c.startswith("segment-")], [],
                  "%s: a torn tail is no corruption (no copy in corrupt/)" % name)
            t.ok(os.path.getsize(path) < size, "%s: the segment is cut" % name)
            want, gone = tags[:2], [tags[2]]
        else:
            t.ok([c for c in corrupt(d) if c.startswith("segment-")],
                 "%s: a copy of the segment is in corrupt/" % name, corrupt(d))
            t.ok(log_has(d, r"not a torn tail: a copy of the segment is in corrupt/"),
                 "%s: logged" % name)
            want, gone = tags[:1], tags[1:]
            t.diag("%s: %s acknowledged, past the garbage, lost by design (no resync)"
                   % (name, ", ".join(gone)))
        t.is_(sorted(q for q in ids if q in acked.values()),
              sorted(acked[x] for x in want), "%s: the earlier messages are queued"
              % name)
        d.call({"op": "queue.resume"})
        wait_delivered(SINK, want, 20)
        time.sleep(0.5)
        got = delivered(SINK)
        t.is_({x: got[x] for x in tags}, {x: (1 if x in want else 0) for x in tags},
              "%s: %s delivered once, %s not" % (name, "+".join(want), "+".join(gone)))
        r = send(d, "c%s-after" % kind[:3])
        t.ok(r.get("ok") and wait_for(lambda: delivered(SINK)["c%s-after" % kind[:3]]
                                      == 1, 15),
             "%s: a new message is accepted and delivered" % name, r)


class Faults:
    def __init__(self, base):
        self.ctl = os.path.join(base, "ctl")
        self.log = os.path.join(base, "faults")
        self.dump = os.path.join(base, "dump")
        os.mkdir(self.dump)

    def env(self, root):
        return {"LD_PRELOAD": SHIM, "IOFAULT_ROOT": root, "IOFAULT_CTL": self.ctl,
                "IOFAULT_LOG": self.log, "IOFAULT_DUMP": self.dump,
                "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
                ":verify_asan_link_order=0"}

    def set(self, *rules):
        with open(self.ctl + ".new", "w") as f:
            f.write("".join(r + " 0 0\n" for r in rules))
        os.rename(self.ctl + ".new", self.ctl)

    def fired(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except OSError:
            return []


def part_iofault():
    name = "iofault"
    if not os.path.exists(SHIM):
        t.skip("%s: fdatasync of a segment fails" % name, "no %s" % SHIM)
        return
    base = tempfile.mkdtemp(prefix="otpm-segiof-")
    fx = Faults(base)
    d = daemon(start=False)
    os.makedirs(d.state, 0o700)
    d.env.update(fx.env(d.state))
    try:
        d.start()
        d.call({"op": "queue.pause"})
        acked, refused = {}, set()
        for i in range(3):
            r = send(d, "iofa%d" % i)
            if r.get("ok"):
                acked["iofa%d" % i] = r["id"]
        t.is_(len(acked), 3, "%s: 3 acknowledged on a sound disk" % name)
        fx.set("fdatasync spool/seg/*")
        answers, lock = {}, threading.Lock()

        def one(tg, fn):
            r = try_call(fn, d, tg, timeout=60)
            with lock:
                answers[tg] = r
        ths = [threading.Thread(target=one, args=("iofr%d" % i, send if i < 3 else issue))
               for i in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        fired = fx.fired()
        fx.set()
        t.ok(fired, "%s: the fault fired (%d fdatasync)" % (name, len(fired)))
        for tg, r in answers.items():
            if r and r.get("ok"):
                acked[tg] = r["id"]
            else:
                refused.add(tg)
        t.ok(all(r and not r.get("ok") and r.get("error") == "unavailable"
                 for r in answers.values()),
             "%s: mail.send x3 / otp.issue answer unavailable, not ok" % name, answers)
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the daemon keeps answering" % name)
        ids = set(list_ids(d) or [])
        t.ok(set(acked.values()) <= ids, "%s: the acknowledged ones still queued" % name)
        for i in range(3):
            r = send(d, "iofb%d" % i)
            if r.get("ok"):
                acked["iofb%d" % i] = r["id"]
        t.ok(all("iofb%d" % i in acked for i in range(3)),
             "%s: the disk back, new messages are accepted" % name)
        t.diag("%s: segments now: %s" % (name, [(os.path.basename(p), len(records(p)))
                                                for p in seg_files(d)]))
        d.stop()
        d.start()
        ids = set(list_ids(d) or [])
        t.is_(sorted(x for x in acked if acked[x] not in ids), [],
              "%s: after a restart every acknowledged message is queued" % name)
        back = sorted(q for q in ids if q not in acked.values())
        # a segment whose sync failed still takes the refused ones' C markers
        t.is_(back, [], "%s: after a restart no refused message is queued again" % name)
        d.call({"op": "queue.resume"})
        wait_delivered(SINK, acked, 20)
        time.sleep(1.0)
        got = delivered(SINK)
        t.is_({x: got[x] for x in acked}, {x: 1 for x in acked},
              "%s: every acknowledged message delivered once" % name)
        t.is_(sorted(x for x in refused if got[x]), [],
              "%s: no refused message delivered" % name)
    finally:
        d.stop()
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def part_diskfull():
    name = "diskfull"
    d = daemon(start=False)
    sp = spool(d)
    os.makedirs(sp, mode=0o700)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", sp],
                       capture_output=True, text=True)
    if m.returncode != 0:
        t.ok(False, "%s: mount a 2 MiB tmpfs on the spool" % name, m.stderr)
        d.cleanup()
        return
    big = lambda tg: "".join("%s %05d %s\n" % (tg, i, "x" * 60) for i in range(1400))
    try:
        d.start()
        d.call({"op": "queue.pause"})
        with open(os.path.join(sp, "filler"), "wb") as f:
            f.write(b"\0" * max(0, free_bytes(sp) - 450 * 1024))
        acked, refusal = {}, None
        for i in range(20):
            tg = "full%02d" % i
            r = send(d, tg, body=big(tg))
            if r.get("ok"):
                acked[tg] = r["id"]
            else:
                refusal = r
                break
        t.ok(acked and refusal is not None and refusal.get("error") == "unavailable",
             "%s: %d accepted, then refused with unavailable" % (name, len(acked)),
             refusal)
        if not t.ok("full" in str(refusal) or "space" in str(refusal),
                    "%s: the refusal says the disk is full" % name, refusal):
            # a short write is carried on until the real errno comes back
            t.diag("the daemon's log:")
            t.diag("\n".join(l for l in d.log_text().splitlines()
                              if "segment" in l)[-1500:])
        # the last bytes too: a small OTP mail may still fit in a page
        fd = os.open(os.path.join(sp, "filler2"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass
        os.close(fd)
        small = []
        for i in range(3):
            r = issue(d, "fullotp%d" % i)
            small.append(r)
            if r.get("ok"):
                acked["fullotp%d" % i] = r["id"]
        t.ok(all(r.get("ok") or (r.get("error") == "unavailable" and
                                 ("full" in str(r) or "space" in str(r)))
                 for r in small),
             "%s: small OTP mails: accepted, or refused saying the disk is full (%d of 3 "
             "accepted)" % (name, sum(1 for r in small if r.get("ok"))), small)
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the daemon keeps serving" % name)
        d.stop()
        try:
            d.start()
            started = True
        except RuntimeError as e:
            started = False
            t.diag(str(e)[-1500:])
        t.ok(started, "%s: the daemon restarts on the full spool" % name)
        if not started:
            return
        ids = list_ids(d) or []
        t.is_(sorted(x for x in acked if acked[x] not in ids), [],
              "%s: after the restart every acknowledged message is queued" % name)
        t.is_(sorted(q for q in ids if q not in acked.values()), [],
              "%s: and nothing refused" % name)
        t.is_(corrupt(d), [], "%s: nothing in corrupt/" % name)
        for f in ("filler", "filler2"):
            os.unlink(os.path.join(sp, f))
        r = send(d, "full-after", body=big("full-after"))
        t.ok(r.get("ok"), "%s: space back: mail.send works again" % name, r)
        if r.get("ok"):
            acked["full-after"] = r["id"]
        r = issue(d, "fullotp-after")
        t.ok(r.get("ok"), "%s: space back: otp.issue works" % name, r)
        if r.get("ok"):
            acked["fullotp-after"] = r["id"]
        d.call({"op": "queue.resume"})
        wait_delivered(SINK, acked, 30)
        got = delivered(SINK)
        t.is_({x: got[x] for x in acked}, {x: 1 for x in acked},
              "%s: every acknowledged message delivered once" % name)
    except RuntimeError as e:
        t.ok(False, "%s: daemon runs" % name, str(e)[-2000:])
    finally:
        d.stop()
        u = subprocess.run(["umount", sp], capture_output=True, text=True)
        if u.returncode != 0:
            subprocess.run(["umount", "-l", sp])
        t.ok(not os.path.ismount(sp), "%s: tmpfs unmounted" % name, u.stderr)
        d.cleanup()


def part_idem(how, op):
    name = "idem %s %s" % (op, how)
    tg = "idem-%s-%s" % (op.replace(".", ""), how.replace("_", ""))
    fn = send if op == "mail.send" else issue
    env = {"OTPMAIL_FAULT": how} if how != "kill9" else None
    with daemon(env=env) as d:
        d.call({"op": "queue.pause"})
        if how == "kill9":
            first = fn(d, tg, key=tg)
            t.ok(first.get("ok"), "%s: answered ok" % name, first)
            qid = first.get("id") or "-"
            in_seg = any(r[2] == qid and r[3] == "M"
                         for p in seg_files(d) for r in records(p))
            t.ok(in_seg and not msg_file(d, qid),
                 "%s: its mail lives in a segment" % name)
            d.kill9()
            d.start()
        else:
            ans, died = crash_request(d, fn, tg, key=tg)
            t.ok(died and ans is None and d.proc.returncode == -6,
                 "%s: the request aborts the daemon, no answer" % name,
                 "answer %r, rc %s" % (ans, d.proc.returncode))
            restart_clean(d)
            ids = list_ids(d) or []
            if how == "seg_after_sync":
                t.is_(len(ids), 1, "%s: its message is in the segment" % name)
            first = {"id": ids[0]} if ids else None
        d.call({"op": "queue.pause"})
        r = fn(d, tg, key=tg)
        if first:
            t.ok(r.get("ok") and r.get("replayed") is True and r.get("id") == first["id"],
                 "%s: the retry gets the same answer (replayed, same id)" % name,
                 "answer %r, first %r" % (r, first))
        else:
            t.ok(r.get("ok") and not r.get("replayed"),
                 "%s: nothing spooled: the retry is done afresh" % name, r)
        r2 = fn(d, tg, key=tg)
        t.ok(r2.get("ok") and r2.get("replayed") and r2.get("id") == r.get("id"),
             "%s: a third try replays it too" % name, r2)
        d.call({"op": "queue.resume"})
        wait_for(lambda: delivered(SINK)[tg] >= 1, 15)
        time.sleep(0.5)
        t.is_(delivered(SINK)[tg], 1, "%s: one mail" % name)


def main():
    global SINK, DSINK
    if os.geteuid() != 0:
        t.skip("test_segments", "needs root (peers on port 25, mount)")
        t.done()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # aborts on purpose
    started = time.time()
    SINK = SmtpSink("127.0.0.2", 25).start()
    DSINK = SmtpSink("127.0.0.3", 25, extra_args=["-r", "RCPT"]).start()
    try:
        part_deliver()
        part_load()
        part_append()
        part_deferred()
        for kind in ("payload", "torn tail", "garbage header"):
            part_corrupt(kind)
        part_iofault()
        part_diskfull()
        part_idem("kill9", "mail.send")
        for op in ("mail.send", "otp.issue"):
            part_idem("seg_after_sync", op)
        part_idem("seg_after_append", "otp.issue")
    finally:
        SINK.stop()
        DSINK.stop()
    t.diag("run time %.1f s" % (time.time() - started))
    t.done()


if __name__ == "__main__":
    main()
