#!/usr/bin/env python3
"""test_crash.py - kill -9 under load: nothing acknowledged is lost.

Starts: smtp-sink (peers.SmtpSink, dump dir) on 127.0.9.2:2525 and one
otpmaild (sandbox = no, example.org and example.com routed to the sink,
high OTP limits, short retry times).  16 client threads issue codes
(otp.issue to unique addresses @example.org) and send raw mail (mail.send
with their own Message-ID, to unique addresses @example.com) while the
daemon is killed with SIGKILL at random moments, at least 5 times, and
restarted each time with the same state directory (no manual recovery).
At the end:
- every request answered ok reached the sink complete (mail.send: by
  Message-ID; otp.issue: by the To address), after the queue drained;
- duplicates (the same message delivered twice: it was in flight at a kill)
  are counted and bounded by kills x delivery_workers;
- every acknowledged code, read from the text/plain part of the sink's copy
  (Python's email package), verifies exactly once (a second verify fails);
  half of them are verified while the daemon is killed once more: a verify
  answered ok before the kill never verifies again (no replay after a
  crash), one not yet tried still verifies once;
- the BDB environment came back by itself at every start; the daemon
  answers stats/queue.list and the queue holds nothing acknowledged.
Figures (requests, acks, kills, duplicates, drain time) are printed.
"""

import email
import email.policy
import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
SINK, PORT = "127.0.9.2", 2525
THREADS = 16
KILLS = int(os.environ.get("CRASH_KILLS", "6"))
WORKERS = 8
RUN = "%x" % int(time.time() * 1000)
rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)

CONF = ("sandbox = no\n"
        "otp_from = codes@example.org\n"
        "route = example.org [%s]:%d\n"
        "route = example.com [%s]:%d\n"
        "otp_max_per_client_minute = 1000000\n"
        "otp_max_per_address_hour = 1000\n"
        "otp_resend_cooldown = 0\n"
        "otp_max_global_per_second = 0\n"
        "otp_retry_min = 1s\notp_retry_max = 2s\n"
        "default_retry_min = 1s\ndefault_retry_max = 2s\n"
        "retry_jitter = 0\n"
        "delivery_workers = %d\n"
        "smtp_connect_timeout = 5s\n"
        "control_max_connections = 1000\n"
        "request_workers = 8\n") % (SINK, PORT, SINK, PORT, WORKERS)


class Load:
    def __init__(self, d):
        self.d = d
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.otp_acked = {}    # address -> queue id
        self.mail_acked = {}   # Message-ID -> queue id
        self.sent = 0          # requests written
        self.unanswered = 0    # lost to a kill (no answer)
        self.refused = []      # answered, not ok
        self.errors = []

    def connect(self):
        while not self.stop.is_set():
            try:
                return self.d.client(timeout=10)
            except OSError:
                time.sleep(0.02)
        return None

    def worker(self, n):
        wr = random.Random(rng.random())
        c = self.connect()
        i = 0
        while c is not None and not self.stop.is_set():
            i += 1
            # about 200 requests/s in all: a backlog builds, the drain stays short
            time.sleep(wr.uniform(0.02, 0.12))
            if i % 2:
                to = "c%d.%d.%s@example.org" % (n, i, RUN)
                req = {"op": "otp.issue", "to": to}
                key = ("otp", to)
            else:
                mid = "<crash-%d-%d-%s@test.example>" % (n, i, RUN)
                to = "m%d.%d.%s@example.com" % (n, i, RUN)
                raw = ("From: App <app@example.org>\r\nTo: %s\r\nSubject: crash %d/%d\r\n"
                       "Message-ID: %s\r\n\r\nbody of %s\r\nEND-OF-BODY\r\n" %
                       (to, n, i, mid, mid))
                req = {"op": "mail.send", "from": "app@example.org", "to": [to], "raw": raw}
                key = ("mail", mid)
            try:
                with self.lock:
                    self.sent += 1
                r = c.call(req)
            except (OSError, EOFError, ValueError):
                with self.lock:
                    self.unanswered += 1
                try:
                    c.close()
                except OSError:
                    pass
                c = self.connect()
                continue
            with self.lock:
                if r.get("ok"):
                    (self.otp_acked if key[0] == "otp" else self.mail_acked)[key[1]] = r["id"]
                else:
                    self.refused.append((key, r))
        if c is not None:
            c.close()

    def counts(self):
        with self.lock:
            return len(self.otp_acked), len(self.mail_acked)


_parsed = {}   # dump path -> (kind, key, value) of a complete transaction


def parse_one(m):
    """('mail', msgid, path) | ('otp', addr, code) | ('partial',..) | ('other',..)"""
    data = m.data
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
    except Exception:  # noqa: BLE001 - counted, shown in the figures
        return ("partial", None, None)
    mid = (msg.get("Message-ID") or "").strip()
    if mid.startswith("<crash-"):
        if b"END-OF-BODY" not in data:
            return ("partial", None, None)
        # the copy is the message that was acknowledged, not another one's
        if ("body of %s" % mid).encode() not in data or \
                (msg.get("To") or "").lower() != (m.rcpt or "").lower():
            return ("mismatch", mid, m.path)
        return ("mail", mid, m.path)
    if msg.get_content_type() == "multipart/alternative":
        text = None
        for part in msg.walk():
            if part.get_content_type() == "text/plain":
                try:
                    text = part.get_content()
                except Exception:  # noqa: BLE001
                    text = None
        if text is None or not data.rstrip().endswith(b"--"):
            return ("partial", None, None)
        mm = re.search(r"^\s{4}(\S+)\s*$", text, re.M)
        if (msg.get("To") or "").lower() != (m.rcpt or "").lower():
            return ("mismatch", m.rcpt, m.path)
        return ("otp", (m.rcpt or "").lower(), mm.group(1) if mm else None)
    return ("other", None, None)


def parse_dumps(sink):
    """{'mail': {msgid: [paths]}, 'otp': {addr: [codes]}, 'partial': n, 'other': n}"""
    out = {"mail": {}, "otp": {}, "partial": 0, "other": 0, "mismatch": []}
    for m in sink.messages():
        r = _parsed.get(m.path)
        if r is None:
            r = parse_one(m)
            if r[0] in ("mail", "otp", "mismatch"):
                _parsed[m.path] = r   # complete: never changes again
        kind, key, val = r
        if kind == "mismatch":
            out[kind].append((key, val))
        elif kind in ("partial", "other"):
            out[kind] += 1
        else:
            out[kind].setdefault(key, []).append(val)
    return out


with SmtpSink(SINK, PORT) as sink:
    with Daemon(conf_extra=CONF) as d:
        load = Load(d)
        ths = [threading.Thread(target=load.worker, args=(n,), daemon=True)
               for n in range(THREADS)]
        t0 = time.time()
        for th in ths:
            th.start()
        kills = restarts = 0
        start_fail = None
        start_times = []
        for k in range(KILLS):
            # some kills right after a start (recovery, backlog delivery)
            time.sleep(rng.uniform(0.05, 0.3) if k % 3 == 1 else rng.uniform(0.8, 2.5))
            d.kill9()
            kills += 1
            time.sleep(rng.uniform(0, 0.3))
            s0 = time.time()
            try:
                d.start(timeout=30)
                restarts += 1
                start_times.append(time.time() - s0)
            except RuntimeError as e:
                start_fail = str(e)
                break
        time.sleep(1.0)  # some load after the last restart too
        load.stop.set()
        for th in ths:
            th.join(30)
        load_time = time.time() - t0
        n_otp, n_mail = load.counts()
        t.diag("load %.1f s: %d requests, %d otp.issue + %d mail.send acknowledged, %d "
               "unanswered (in flight at a kill), %d refused; %d kills, restarts in %s s" %
               (load_time, load.sent, n_otp, n_mail, load.unanswered, len(load.refused),
                kills, ", ".join("%.2f" % s for s in start_times)))
        t.ok(kills >= 5, "killed with SIGKILL %d times under load" % kills)
        t.ok(restarts == kills and start_fail is None,
             "the daemon started again after every kill, without a manual step "
             "(BDB environment recovered)", start_fail)
        t.ok(n_otp > 100 and n_mail > 100, "load: both kinds acknowledged (%d, %d)" %
             (n_otp, n_mail))
        t.ok(not load.refused, "no request refused under load",
             load.refused[:5])
        t.ok(not any(th.is_alive() for th in ths), "client threads finished")

        # drain: every acknowledged message reaches the sink
        d0 = time.time()
        want_mail = set(load.mail_acked)
        want_otp = {a.lower() for a in load.otp_acked}

        def drained():
            got = parse_dumps(sink)
            return (want_mail <= set(got["mail"]) and want_otp <= set(got["otp"])) and got
        got = wait_for(drained, 90, 0.5) or parse_dumps(sink)
        drain = time.time() - d0
        miss_mail = sorted(want_mail - set(got["mail"]))
        miss_otp = sorted(want_otp - set(got["otp"]))
        t.diag("drained in %.1f s; sink holds %d mail.send + %d OTP messages, %d partial "
               "transactions (aborted by a kill, not accepted), %d other" %
               (drain, len(got["mail"]), len(got["otp"]), got["partial"], got["other"]))
        diag = []
        for mid in miss_mail[:5]:
            diag.append("%s: %r" % (mid, d.call({"op": "message.status",
                                                 "id": load.mail_acked[mid]})))
        t.ok(not miss_mail, "every acknowledged mail.send reached the sink (%d of %d "
             "missing)" % (len(miss_mail), len(want_mail)), "\n".join(diag))
        diag = []
        amap = {a.lower(): q for a, q in load.otp_acked.items()}
        for a in miss_otp[:5]:
            diag.append("%s: %r" % (a, d.call({"op": "message.status", "id": amap[a]})))
        t.ok(not miss_otp, "every acknowledged otp.issue mail reached the sink (%d of %d "
             "missing)" % (len(miss_otp), len(want_otp)), "\n".join(diag))

        t.ok(not got["mismatch"], "every copy at the sink is whole and goes to its own "
             "recipient (To = RCPT, body of its Message-ID)", got["mismatch"][:5])

        # duplicates
        dup_mail = sum(len(v) - 1 for v in got["mail"].values())
        dup_otp = sum(len(v) - 1 for v in got["otp"].values())
        bound = kills * WORKERS
        t.diag("duplicates: %d mail.send, %d OTP (bound: %d kills x %d delivery workers = "
               "%d)" % (dup_mail, dup_otp, kills, WORKERS, bound))
        t.ok(dup_mail + dup_otp <= bound, "duplicates bounded by in-flight deliveries "
             "(%d <= %d)" % (dup_mail + dup_otp, bound))
        t.ok(got["otp"] and all(len(set(v)) == 1 for v in got["otp"].values()),
             "a duplicated OTP mail carries the same code (a re-delivery, not a re-issue)",
             [(a, v) for a, v in got["otp"].items() if len(set(v)) > 1][:5])
        extra = set(got["mail"]) - want_mail
        t.diag("%d delivered mail.send were never acknowledged (answer lost to a kill)" %
               len(extra))

        # every acknowledged code verifies exactly once
        codes = [(a, got["otp"][a][0]) for a in sorted(want_otp) if a in got["otp"]]
        t.ok(codes and all(c and re.fullmatch(r"\d{6}", c) for _, c in codes),
             "a 6-digit code in the text/plain part of every OTP mail",
             [x for x in codes if not (x[1] and re.fullmatch(r"\d{6}", x[1]))][:5])
        # half of them: verify once while the daemon is killed mid-stream;
        # an answered success must stay consumed after the restart (no replay)
        codes_k = [x for i, x in enumerate(codes) if i % 2]
        codes_n = [x for i, x in enumerate(codes) if not i % 2]
        vres = {}        # addr -> "ok" | "fail" | "lost" (sent, no answer)
        rlock = threading.Lock()

        def verifier_k(chunk):
            vr = random.Random(rng.random())
            try:
                c = d.client(timeout=10)
            except OSError:
                return
            for a, code in chunk:
                time.sleep(vr.uniform(0.005, 0.02))
                try:
                    r = c.call({"op": "otp.verify", "to": a, "code": code or "x"})
                except (OSError, EOFError, ValueError):
                    with rlock:
                        vres[a] = "lost"
                    break
                with rlock:
                    vres[a] = "ok" if r.get("ok") else "fail:%s" % r.get("error")
            c.close()
        vths = [threading.Thread(target=verifier_k, args=(codes_k[i::THREADS],))
                for i in range(THREADS)]
        for th in vths:
            th.start()
        # kill about a third of the way through, counted in answers (not in
        # seconds: a daemon under valgrind answers many times slower)
        target = int(len(codes_k) * rng.uniform(0.2, 0.5))

        def answered():
            with rlock:
                return len(vres) >= target
        wait_for(answered, 60, 0.002)
        d.kill9()
        kills += 1
        for th in vths:
            th.join(60)
        try:
            d.start(timeout=30)
            restarted = True
        except RuntimeError as e:
            restarted = False
            t.diag(str(e))
        t.ok(restarted, "restarted after a kill -9 in the middle of %d verifies" %
             len(codes_k))
        answered_ok = [a for a, v in vres.items() if v == "ok"]
        t.diag("kill during verify: %d answered ok, %d lost in flight, %d not sent, %d "
               "other" % (len(answered_ok), sum(1 for v in vres.values() if v == "lost"),
                          len(codes_k) - len(vres),
                          sum(1 for v in vres.values() if v not in ("ok", "lost"))))
        t.ok(len(answered_ok) > 0 and len(vres) < len(codes_k),
             "the kill landed in the middle of the verifies")
        t.ok(all(v in ("ok", "lost") for v in vres.values()),
             "every verify answered before the kill succeeded",
             [(a, v) for a, v in vres.items() if v not in ("ok", "lost")][:5])
        replay, missing, twice = [], [], []
        c = d.client(timeout=30)
        for a, code in codes_k:
            r1 = c.call({"op": "otp.verify", "to": a, "code": code or "x"})
            st = vres.get(a)
            if st == "ok" and r1.get("ok"):
                replay.append(a)
            elif st is None and not r1.get("ok"):
                missing.append((a, r1))
            if r1.get("ok"):
                r2 = c.call({"op": "otp.verify", "to": a, "code": code or "x"})
                if r2.get("ok"):
                    twice.append(a)
        c.close()
        t.ok(not replay, "a code whose verify was answered ok before kill -9 does not "
             "verify again after the restart (%d replays of %d)" % (len(replay),
                                                                   len(answered_ok)),
             replay[:5])
        t.ok(not missing, "a code not yet verified at the kill verifies after the restart",
             missing[:5])
        t.ok(not twice, "after the restart no code verifies twice", twice[:5])

        # the other half: exactly once, in parallel
        res = {"first_ok": 0, "first_bad": [], "second_ok": []}
        chunks = [codes_n[i::THREADS] for i in range(THREADS)]

        def verifier(chunk):
            c = d.client(timeout=30)
            for a, code in chunk:
                r1 = c.call({"op": "otp.verify", "to": a, "code": code or "x"})
                r2 = c.call({"op": "otp.verify", "to": a, "code": code or "x"})
                with rlock:
                    if r1.get("ok"):
                        res["first_ok"] += 1
                    else:
                        res["first_bad"].append((a, r1))
                    if r2.get("ok"):
                        res["second_ok"].append((a, r2))
            c.close()
        v0 = time.time()
        vths = [threading.Thread(target=verifier, args=(ch,)) for ch in chunks]
        for th in vths:
            th.start()
        for th in vths:
            th.join(120)
        t.diag("verified %d codes twice in %.1f s" % (len(codes_n), time.time() - v0))
        t.ok(res["first_ok"] == len(codes_n) and not res["first_bad"],
             "every other acknowledged code verifies (%d of %d)" % (res["first_ok"],
                                                                    len(codes_n)),
             res["first_bad"][:5])
        t.ok(not res["second_ok"], "and only once: a second verify fails (%d succeeded)" %
             len(res["second_ok"]), res["second_ok"][:5])

        # message.status agrees: every acknowledged message is delivered
        ids = list(load.mail_acked.values()) + list(load.otp_acked.values())
        states = {}
        for i in range(0, len(ids), 50):
            for q, r in zip(ids[i:i + 50], d.pipeline(
                    [{"op": "message.status", "id": q} for q in ids[i:i + 50]])):
                states[q] = r.get("state")
        notdel = [(q, s_) for q, s_ in states.items() if s_ != "delivered"]
        t.ok(not notdel, "message.status: all %d acknowledged messages delivered" % len(ids),
             notdel[:5])

        # the state is consistent after all the kills
        r = d.call({"op": "stats"})
        t.ok(r.get("ok"), "stats answers", r)
        q = d.call({"op": "queue.list", "state": "queued", "limit": 1000})
        acked_ids = set(load.mail_acked.values()) | set(load.otp_acked.values())
        stuck = [m["id"] for m in q.get("messages", []) if m["id"] in acked_ids]
        t.ok(q.get("ok") and not stuck, "no acknowledged message left queued", stuck[:5])
        log = d.log_text()
        # (a kill right after a start may come before "event=started" is logged:
        # the socket answers first; so this is a figure, not a check)
        t.diag("log: %d event=started, %d queue recoveries" %
               (log.count("event=started"), log.count("event=queue detail=\"recovered")))
        t.ok("panic" not in log.lower() and "DB_RUNRECOVERY" not in log,
             "no BDB panic / run-recovery error in the log",
             [ln for ln in log.splitlines() if "panic" in ln.lower() or
              "RUNRECOVERY" in ln][:5])

t.done()
