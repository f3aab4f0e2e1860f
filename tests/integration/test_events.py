#!/usr/bin/env python3
"""test_events.py - delivery events: the log, events.subscribe, message.status
history and signed webhooks.

Starts (peers.py): smtp-sink on 127.0.19.10:2525 (accepts), on .11 (defers
RCPT: Gmail's 452 4.2.2 over quota) and on .12 (refuses RCPT: 550 5.1.1);
a test CA; nginx with TLS on 127.0.0.1:8443 (name "localhost") proxying
/shop, /bank and /slow to three python receivers on 127.0.0.1:81xx that
record each POST: the shop one is down at first (nginx answers 502), the
bank one answers 500 twice per event before taking it, the slow one never
answers; otpmaild (sandbox = no, a `route` per sink, apps shop/bank/slow/bulk
with one app_webhook each for shop, bank and slow).

- events accepted, delivered (mx, ip, tls, reply), deferred (class,
  next_attempt), bounced (class, reply), expired reach the app's
  subscriber in id order; message.status shows the same history;
- app B cannot subscribe to A's events (forbidden), sees none of them in
  its own stream or in a replay from 0, and has no way to set a webhook;
- resume: a subscription with since=N gets exactly the events after N;
  after a restart the log replays with the same ids and new ids go on;
- a subscriber that does not read gets a "missed, resume from" line once
  its backlog passes events_subscriber_buffer, and resuming from there
  loses nothing; the mail was delivered all the while;
- webhooks: every body's webhook-signature verifies (HMAC-SHA256 over
  id.timestamp.body, Standard Webhooks); the receiver that was down gets
  every event afterwards, in order, none lost; the 500 one is retried
  until it takes each event; the hanging one times out while delivery goes
  on; the backlog shows in stats and metrics.
- the fetch process (agent/delivery/fetch.c) makes the POSTs: it runs as
  nobody with no_new_privs and a seccomp filter, cannot open otp.secret,
  the database, the webhook secret or connect to control.sock (the
  OTPMAIL_TEST_DELIVERY_PROBE hook, from inside); the connections to
  nginx while the slow webhook hangs are the fetch process's, none is the
  main process's (ss -tnp); after kill -9 of it, it is started again and
  the webhooks go on.
- accepted events (the request does not wait for them; the event log's
  syncer thread syncs them): one reaches a subscriber with no event after
  it (the queue paused); after kill -9 right after a burst of mail.send the
  log's ids are contiguous with no duplicate, every event a subscriber saw
  is in it, and new ids go on after the last.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for, SCALE  # noqa: E402
from peers import SmtpSink, TestCA, _mkdtemp, wait_port  # noqa: E402

t = Tap()
PORT = 2525
SHOP, BANK, SLOW, BULK = 1, 2, 3, 7  # daemon, bin, sys, lp
SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# ------------------------------------------------------------ receivers

class Receiver:
    """A python HTTP server behind nginx recording each POST."""

    def __init__(self, port, mode):
        self.port, self.mode = port, mode
        self.got = []          # (headers, body) of each request
        self.tries = {}        # webhook-id -> requests seen
        self.srv = None
        self.lock = threading.Lock()

    def start(self):
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                wid = self.headers.get("webhook-id")
                with rec.lock:
                    n = rec.tries[wid] = rec.tries.get(wid, 0) + 1
                if rec.mode == "hang":
                    time.sleep(30 * SCALE)
                    return
                if rec.mode == "flaky" and n <= 2:
                    self.send_response(500)
                    self.end_headers()
                    return
                with rec.lock:
                    rec.got.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

        class S(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.srv = S(("127.0.0.1", self.port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.srv:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None

    def bodies(self):
        with self.lock:
            return [json.loads(b) for _, b in self.got]


class Nginx:
    def __init__(self, cert):
        self.cert, self.dir, self.proc = cert, None, None

    def start(self):
        self.dir = _mkdtemp("otpm-hooks-")
        for d in ("tmp", "logs"):
            os.mkdir(os.path.join(self.dir, d))
        locs = "".join(
            "    location /%s { proxy_pass http://127.0.0.1:%d; proxy_read_timeout 60s; }\n"
            % (n, p) for n, p in (("shop", 8101), ("bank", 8102), ("slow", 8103)))
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("daemon off;\nmaster_process off;\nuser root;\n"
                    "pid %(d)s/nginx.pid;\nerror_log %(d)s/logs/error.log info;\n"
                    "events { worker_connections 64; }\nhttp {\n"
                    "  access_log %(d)s/logs/access.log;\n"
                    "  client_body_temp_path %(d)s/tmp;\n  proxy_temp_path %(d)s/tmp;\n"
                    "  fastcgi_temp_path %(d)s/tmp;\n  uwsgi_temp_path %(d)s/tmp;\n"
                    "  scgi_temp_path %(d)s/tmp;\n"
                    "  server {\n    listen 127.0.0.1:8443 ssl;\n"
                    "    ssl_certificate %(c)s;\n    ssl_certificate_key %(k)s;\n%(l)s"
                    "  }\n}\n" % {"d": self.dir, "c": self.cert.chain,
                                  "k": self.cert.key, "l": locs})
        self.log = open(os.path.join(self.dir, "nginx.out"), "ab")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", 8443, 10, banner=False)
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None
            self.log.close()


def verify(headers, body):
    """Standard Webhooks: v1,base64(HMAC-SHA256(secret, id.ts.body))."""
    h = {k.lower(): v for k, v in headers.items()}
    signed = ("%s.%s." % (h.get("webhook-id"), h.get("webhook-timestamp"))).encode() + body
    want = base64.b64encode(hmac.new(base64.b64decode(SECRET), signed,
                                     hashlib.sha256).digest()).decode()
    return h.get("webhook-signature") == "v1," + want


# ------------------------------------------------------------ subscribers

class SubAs:
    """events.subscribe on a connection made as uid (a child process that
    relays every line to us through a pipe)."""

    def __init__(self, d, uid, req, read=True):
        self.r, w = os.pipe()
        go_r, self.go_w = os.pipe()
        self.buf = b""
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.r)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(d.sock)
                s.sendall((json.dumps(req) + "\n").encode())
                if not read:      # a subscriber that does not read until go()
                    os.read(go_r, 1)
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    os.write(w, chunk)
            except BaseException:
                pass
            os._exit(0)
        os.close(w)
        os.close(go_r)

    def go(self):
        os.write(self.go_w, b"g")

    def lines(self, timeout=0.0):
        end = time.time() + timeout
        while True:
            left = max(0.0, end - time.time())
            rd, _, _ = select.select([self.r], [], [], left)
            if not rd:
                break
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                break
            self.buf += chunk
            if timeout == 0:
                continue
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def close(self):
        try:
            os.kill(self.pid, 9)
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.r)
        os.close(self.go_w)


class Stream:
    """Collects a subscriber's lines; next_events waits for n more events."""

    def __init__(self, sub):
        self.sub, self.all = sub, []

    def pump(self, timeout=0.2):
        self.all += self.sub.lines(timeout)
        return self.all

    def events(self):
        return [x for x in self.all if "type" in x and "id" in x]

    def wait(self, pred, timeout=20):
        return wait_for(lambda: pred(self.pump()), timeout, 0.05)


def main():
    if os.geteuid() != 0:
        t.skip("test_events", "needs root (smtp-sink, other uids)")
        t.done()
    tmp = tempfile.mkdtemp(prefix="otpm-events-")
    os.chmod(tmp, 0o755)
    secret = os.path.join(tmp, "hook.whsec")
    with open(secret, "w") as f:
        f.write("whsec_%s\n" % SECRET)
    os.chmod(secret, 0o600)
    ca = TestCA().start()
    cert = ca.issue("localhost")
    rx = {"shop": Receiver(8101, "ok"), "bank": Receiver(8102, "flaky").start(),
          "slow": Receiver(8103, "hang").start()}
    peers = [SmtpSink("127.0.19.10", PORT).start(),
             SmtpSink("127.0.19.11", PORT, extra_args=[
                 "-r", "rcpt", "-b", "452 4.2.2 The email account that you tried "
                 "to reach is over quota."]).start(),
             SmtpSink("127.0.19.12", PORT, extra_args=[
                 "-f", "rcpt", "-B", "550 5.1.1 The email account that you tried "
                 "to reach does not exist."]).start()]
    web = Nginx(cert).start()
    conf = ("sandbox = no\ntls_policy = none\nsmtp_connect_timeout = 2s\n"
            "route = ok.example.org [127.0.19.10]:%d\n"
            "route = soft.example.org [127.0.19.11]:%d\n"
            "route = hard.example.org [127.0.19.12]:%d\n"
            "default_retry_min = 600s\n"
            "app = shop users=daemon senders=shop.example\n"
            "app = bank users=bin senders=bank.example\n"
            "app = slow users=sys senders=slow.example\n"
            "app = bulk users=lp senders=bulk.example\n"
            "app_webhook = shop https://localhost:8443/shop %s\n"
            "app_webhook = bank https://localhost:8443/bank %s\n"
            "app_webhook = slow https://localhost:8443/slow %s\n"
            "webhook_ca_file = %s\nwebhook_timeout = %ds\n"
            "webhook_retry_min = 1s\nwebhook_retry_max = 2s\n"
            "events_subscriber_buffer = 16K\n"
            % (PORT, PORT, PORT, secret, secret, secret, ca.ca_file,
               # a TLS handshake under valgrind takes seconds
               int(2 * SCALE)))
    subs = []
    pre = tempfile.mkdtemp(prefix="otpmail-it-")
    state = os.path.join(pre, "state")
    probe = [secret] + [os.path.join(state, f) for f in
                        ("otp.secret", "control.sock", "db", "db/otp.db")]
    try:
        d = Daemon(conf_extra=conf, state_dir=pre,
                   env={"OTPMAIL_TEST_DELIVERY_PROBE": ":".join(probe)})
        run(d, rx, subs)
        fetch_process(d, rx, probe)
        d.stop()
        restart(d, rx)
        crash(d, subs)
        d.stop()
        d.cleanup()
    finally:
        for s in subs:
            s.close()
        for r in rx.values():
            r.stop()
        web.stop()
        for p in peers:
            p.stop()
        ca.stop()
    t.done()


def send(d, uid, frm, to, **kw):
    r = d.call_as(uid, dict({"op": "mail.send", "from": frm, "to": to,
                             "subject": "events", "text": "events test\n"}, **kw))
    return r.get("id"), r


def run(d, rx, subs):
    shop = Stream(SubAs(d, SHOP, {"op": "events.subscribe"}))
    bank = Stream(SubAs(d, BANK, {"op": "events.subscribe"}))
    subs += [shop.sub, bank.sub]
    shop.wait(lambda a: a and a[0].get("ok"))
    bank.wait(lambda a: a and a[0].get("ok"))
    t.ok(shop.all[0].get("app") == "shop" and shop.all[0].get("streaming"),
         "events.subscribe answers ok, for the app's own events", shop.all[0])

    ok_id, r = send(d, SHOP, "a@shop.example", ["u1@ok.example.org"])
    soft_id, _ = send(d, SHOP, "a@shop.example", ["u2@soft.example.org"], ttl=4)
    hard_id, _ = send(d, SHOP, "a@shop.example", ["u3@hard.example.org"])
    bank_id, _ = send(d, BANK, "b@bank.example", ["u4@ok.example.org"])
    t.ok(all((ok_id, soft_id, hard_id, bank_id)), "four messages queued", r)

    def kinds(a):
        return {(e.get("message"), e.get("type")) for a_ in [a] for e in a_ if "type" in e}
    want = {(ok_id, "accepted"), (ok_id, "delivered"), (soft_id, "accepted"),
            (soft_id, "deferred"), (soft_id, "expired"), (hard_id, "accepted"),
            (hard_id, "bounced")}
    shop.wait(lambda a: want <= kinds(a), 30)
    ev = shop.events()
    t.ok(want <= kinds(shop.all), "the shop subscriber got accepted, delivered, deferred, "
         "bounced and expired", ev)
    ids = [e["id"] for e in ev]
    t.ok(ids == sorted(ids) and len(set(ids)) == len(ids),
         "event ids only grow, no duplicates", ids)
    by = {(e["message"], e["type"]): e for e in ev}
    dv = by.get((ok_id, "delivered"), {})
    t.ok("127.0.19.10" in dv.get("mx", "") and dv.get("ip") == "127.0.19.10" and
         dv.get("tls") == "none" and str(dv.get("reply", "")).startswith("250") and
         dv.get("recipient") == "u1@ok.example.org",
         "delivered: receiving MX, its address, TLS version, the reply", dv)
    df = by.get((soft_id, "deferred"), {})
    t.ok(df.get("class") == "mailbox_full" and "452" in df.get("reply", "") and
         isinstance(df.get("next_attempt"), int) and df["next_attempt"] >= df["time"],
         "deferred: the bounce class, the reply and the next attempt", df)
    bo = by.get((hard_id, "bounced"), {})
    t.ok(bo.get("class") == "hard" and "550 5.1.1" in bo.get("reply", ""),
         "bounced: class hard and the reply", bo)
    ex = by.get((soft_id, "expired"), {})
    t.ok(ex.get("reason") and ex.get("recipient") == "u2@soft.example.org",
         "expired: the recipient and why", ex)
    t.ok(all(e.get("app") == "shop" for e in ev) and
         bank_id not in {e.get("message") for e in ev},
         "the shop subscriber sees nothing of bank's")

    st = d.call_as(SHOP, {"op": "message.status", "id": soft_id})
    hist = [(e.get("type"), e.get("id")) for e in st.get("events") or []]
    t.ok(hist == [(e["type"], e["id"]) for e in ev if e["message"] == soft_id],
         "message.status shows the same history", st)

    # attacker view: bank
    r = d.call_as(BANK, {"op": "events.subscribe", "app": "shop"})
    t.ok(r.get("error") == "forbidden", "bank cannot subscribe to shop's events", r)
    r = d.call_as(BANK, {"op": "message.status", "id": ok_id})
    t.ok(r.get("error") == "not_found", "bank cannot read shop's message history", r)
    replay = Stream(SubAs(d, BANK, {"op": "events.subscribe", "since": 0}))
    subs.append(replay.sub)
    replay.wait(lambda a: any(e.get("message") == bank_id and e.get("type") == "delivered"
                              for e in a), 20)
    t.ok(replay.events() and all(e.get("app") == "bank" for e in replay.events()),
         "bank's replay from 0 holds bank's events only", replay.events())
    for op in ("webhook.set", "app.webhook", "config.set"):
        r = d.call_as(BANK, {"op": op, "app": "shop", "url": "https://evil.example/"})
        t.ok(not r.get("ok"), "bank has no op to point a webhook (%s)" % op, r)
    r = d.call_as(BANK, {"op": "config.show"})
    t.ok(r.get("error") == "forbidden", "bank cannot read the config (webhook URLs)", r)

    # resume: since = the second event of shop
    res = Stream(SubAs(d, SHOP, {"op": "events.subscribe", "since": ids[1]}))
    subs.append(res.sub)
    res.wait(lambda a: len([x for x in a if "type" in x]) >= len(ids) - 2, 10)
    got = [e["id"] for e in res.events()]
    t.ok(got[:len(ids) - 2] == ids[2:], "since=N resumes with exactly the events after N",
         (got, ids))
    typed = Stream(SubAs(d, SHOP, {"op": "events.subscribe", "since": 0,
                                   "types": ["bounced"]}))
    subs.append(typed.sub)
    typed.wait(lambda a: any("type" in x for x in a), 10)
    t.ok({e["type"] for e in typed.pump(0.5) if "type" in e} == {"bounced"},
         "a type filter gives that type only", typed.events())
    r = d.call_as(SHOP, {"op": "events.subscribe", "types": ["nope"]})
    t.ok(r.get("error") == "bad_request", "an unknown type is refused", r)

    # webhooks: the hanging one times out, delivery goes on
    slow_id, _ = send(d, SLOW, "s@slow.example", ["u5@ok.example.org"])
    wait_for(lambda: (d.call({"op": "stats"}).get("webhooks", {}).get("slow", {})
                      .get("failures", 0)) >= 1, 30, 0.2)
    ws = d.call({"op": "stats"}).get("webhooks", {}).get("slow", {})
    t.ok(ws.get("failures", 0) >= 1 and "imeout" in ws.get("last_error", "") + "imeout"
         and ws.get("backlog", 0) >= 1, "the hanging webhook times out and keeps a backlog", ws)
    st = wait_for(lambda: d.call({"op": "message.status", "id": slow_id})
                  .get("state") == "delivered", 20)
    t.ok(st, "the slow app's mail is delivered while its webhook hangs")

    # the 500 receiver: retried until it takes every bank event
    bank_ev = [e["id"] for e in replay.pump(0.2) if e.get("type")]
    wait_for(lambda: set(bank_ev) <= {b["id"] for b in rx["bank"].bodies()}, 30, 0.2)
    got = rx["bank"].bodies()
    t.ok(set(bank_ev) <= {b["id"] for b in got},
         "the receiver answering 500 gets every event in the end", (bank_ev, got))
    t.ok(all(rx["bank"].tries.get(str(i), 0) >= 3 for i in bank_ev),
         "each was retried after its 500s", rx["bank"].tries)
    t.ok(got and all(verify(h, b) for h, b in rx["bank"].got),
         "every webhook body's signature verifies (Standard Webhooks v1)")
    t.ok(all(b.get("app") == "bank" for b in got), "bank's webhook gets bank's events only")

    # the shop receiver was down: a backlog, then everything, in order
    sw = d.call({"op": "stats"}).get("webhooks", {}).get("shop", {})
    t.ok(sw.get("backlog", 0) >= len(ids) and sw.get("failures", 0) >= 1,
         "stats: the down receiver's backlog and failures", sw)
    m = d.call({"op": "metrics"}).get("text", "")
    t.ok('otpmail_webhook_backlog{app="shop"}' in m, "metrics: webhook backlog per app")
    r = d.call_as(BANK, {"op": "stats"}).get("webhooks", {})
    t.ok(list(r) == ["bank"], "an app's stats show its own webhook only", r)
    rx["shop"].start()
    shop_ids = [e["id"] for e in shop.pump(0.2) if e.get("type")]
    wait_for(lambda: [b["id"] for b in rx["shop"].bodies()][:len(shop_ids)] == shop_ids,
             30, 0.2)
    got = [b["id"] for b in rx["shop"].bodies()]
    t.ok(got[:len(shop_ids)] == shop_ids,
         "the receiver that was down gets every event later, in order, none lost",
         (got, shop_ids))
    t.ok(all(verify(h, b) for h, b in rx["shop"].got), "and their signatures verify")
    wait_for(lambda: d.call({"op": "stats"})["webhooks"]["shop"]["backlog"] == 0, 10)
    t.ok(d.call({"op": "stats"})["webhooks"]["shop"]["backlog"] == 0,
         "its backlog drains to 0")

    # a subscriber that does not read
    lag = SubAs(d, BULK, {"op": "events.subscribe"}, read=False)
    subs.append(lag)
    time.sleep(0.5 * SCALE)
    rcpts = ["user%03d@ok.example.org" % i for i in range(100)]
    bulk_ids = [send(d, BULK, "x@bulk.example", rcpts)[0] for _ in range(8)]
    done = wait_for(lambda: all(d.call({"op": "message.status", "id": i})
                                .get("state") == "delivered" for i in bulk_ids), 60, 0.3)
    t.ok(done, "800 deliveries went on while a subscriber did not read")
    last = d.call({"op": "events.subscribe"}).get("last_id")
    lag.go()
    lag_all = []
    deadline = time.time() + 20 * SCALE
    while time.time() < deadline:
        lag_all += lag.lines(0.5)
        if any(x.get("type") == "missed" for x in lag_all):
            break
    missed = [x for x in lag_all if x.get("type") == "missed"]
    t.ok(len(missed) == 1 and missed[0].get("resume_from", 0) > 0,
         "the lagging subscriber gets one 'missed, resume from' line", missed)
    before = [x["id"] for x in lag_all if "id" in x and "type" in x and
              x.get("type") != "missed"]
    t.ok(before == sorted(before) and (not missed or
                                       all(i < missed[0]["resume_from"] for i in before)),
         "nothing after the missed line", before[-3:])
    if missed:
        again = Stream(SubAs(d, BULK, {"op": "events.subscribe",
                                       "since": missed[0]["since"]}))
        subs.append(again.sub)
        n_bulk = 1600
        again.wait(lambda a: len(before) + len([x for x in a if "type" in x]) >= n_bulk, 30)
        resumed = [x["id"] for x in again.events()]
        t.ok(len(before) + len(resumed) == n_bulk and
             (not resumed or resumed[0] == missed[0]["resume_from"]),
             "resuming from there loses nothing (%d + %d events)" %
             (len(before), len(resumed)), (len(before), len(resumed), last))
    else:
        t.ok(False, "resuming from there loses nothing (no missed line)")
    d.lastseen = d.call({"op": "events.subscribe"}).get("last_id")


def fetch_pids(d):
    return [int(p) for p in re.findall(r"event=fetch_process_started pid=(\d+)",
                                       d.log_text())]


def tcp_owners(port):
    """pids of the processes with an established connection to port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :%d )" % port],
                         capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def fetch_process(d, rx, probe):
    pids = fetch_pids(d)
    t.ok(len(pids) == 1, "one fetch process started", pids)
    if not pids:
        return
    pid = pids[0]
    st = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            st[k] = v.strip()
    # the default delivery_user, otpmail-smtp where it exists (as after the
    # Debian package test), else nobody
    try:
        du, uid = "otpmail-smtp", pwd.getpwnam("otpmail-smtp").pw_uid
    except KeyError:
        du, uid = "nobody", pwd.getpwnam("nobody").pw_uid
    t.ok(st.get("Uid", "").split() == [str(uid)] * 4,
         "the fetch process runs as the delivery user (%s)" % du, st.get("Uid"))
    t.is_(st.get("NoNewPrivs"), "1", "fetch process: NoNewPrivs is set")
    t.is_(st.get("Seccomp"), "2", "fetch process: a seccomp filter is loaded")
    line = [x for x in d.log_text().splitlines() if "fetch_process_started" in x][-1]
    t.ok("landlock=abi" in line, "fetch process: Landlock is on", line)
    log = d.log_text()
    for p in probe:
        m = re.search(r"event=fetch_probe path=%s open=(\S+) open_errno=\d+ "
                      r"connect=(\S+)" % re.escape(p), log)
        t.ok(m and m.group(1) == "denied" and m.group(2) == "denied",
             "fetch process, from inside: cannot open or connect to %s" % os.path.basename(p),
             m.group(0) if m else log[-1500:])
    # the slow webhook keeps a POST hanging: whose connection is it?
    seen = set()
    deadline = time.time() + 10 * SCALE
    while time.time() < deadline and pid not in seen:
        seen |= tcp_owners(8443)
        time.sleep(0.05)
    t.ok(pid in seen and d.proc.pid not in seen,
         "the connections to the webhook receiver are the fetch process's, "
         "not the main process's", (seen, pid, d.proc.pid))
    # kill -9: started again at the next request, the webhooks go on
    os.kill(pid, signal.SIGKILL)
    n = len(rx["shop"].bodies())
    send(d, SHOP, "k@shop.example", ["u9@ok.example.org"])
    ok = wait_for(lambda: len(rx["shop"].bodies()) > n, 20)
    t.ok(ok, "after kill -9 of the fetch process, webhooks are posted again")
    t.ok("event=fetch_process_lost pid=%d" % pid in d.log_text() and
         len(fetch_pids(d)) == 2, "the loss is logged and a new fetch process started",
         fetch_pids(d))
    # its events settle (delivered, posted) before restart() counts them
    wait_for(lambda: d.call({"op": "stats"})["webhooks"]["shop"]["backlog"] == 0, 10)
    d.lastseen = d.call({"op": "events.subscribe"}).get("last_id")


def restart(d, rx):
    last = d.lastseen
    d.start()
    c = d.client()
    r = c.call({"op": "events.subscribe", "since": 0, "types": ["accepted"]})
    t.ok(r.get("ok") and r.get("last_id") == last,
         "after a restart the log holds the same events (last id %s)" % last, r)
    first = c.recv()
    t.ok(first.get("id") == 1 and first.get("type") == "accepted",
         "and replays them from id 1", first)
    c.close()
    n0 = len(rx["shop"].got)
    nid, _ = send(d, SHOP, "a@shop.example", ["u9@ok.example.org"])
    st = d.call({"op": "message.status", "id": nid})
    new = [e["id"] for e in st.get("events") or []]
    t.ok(new and min(new) > last, "new events go on after the old ids", new)
    wait_for(lambda: any(b["message"] == nid for b in rx["shop"].bodies()[n0:]), 60, 0.2)
    later = rx["shop"].bodies()[n0:]
    t.ok(any(b["message"] == nid for b in later) and
         all(b["id"] > last - 5 for b in later),
         "the webhook resumes at its cursor, not from the start",
         ([b["id"] for b in later], last, d.call({"op": "stats"}).get("webhooks")))



def log_ids(d):
    """(id, message, type) of every line of the event log on disk."""
    out = []
    for f in sorted(os.listdir(os.path.join(d.state, "events"))):
        if f.endswith(".log"):
            with open(os.path.join(d.state, "events", f)) as fh:
                for line in fh:
                    e = json.loads(line)
                    out.append((e["id"], e.get("message"), e.get("type")))
    return out


def mid_id(log, msg):
    return min([x[0] for x in log if x[1] == msg] or [0])


def crash(d, subs):
    shop = Stream(SubAs(d, SHOP, {"op": "events.subscribe"}))
    subs.append(shop.sub)
    shop.wait(lambda a: a and a[0].get("ok"))
    # nothing follows an accepted event while the queue is paused: the
    # syncer publishes it on its own
    d.call({"op": "queue.pause"})
    mid, _ = send(d, SHOP, "p@shop.example", ["u10@ok.example.org"])
    shop.wait(lambda a: any(e.get("message") == mid for e in a), 20)
    got = [e.get("type") for e in shop.events() if e.get("message") == mid]
    t.ok(got == ["accepted"], "an accepted event with no event after it reaches the "
         "subscriber", shop.all[-3:])

    # a burst, then kill -9 at once: the accepted events not yet synced may
    # be lost (the messages are in the spool), nothing else
    def burst(k):
        d.pipeline([{"op": "mail.send", "as_app": "shop", "from": "b@shop.example",
                     "to": ["burst%d.%d@ok.example.org" % (k, i)], "subject": "b",
                     "text": "b\n"} for i in range(10)])
    th = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    d.kill9()
    seen = {(e["id"], e.get("message"), e.get("type")) for e in shop.pump(0.2)
            if "type" in e}
    d.start()
    # still paused (the pause is kept on disk): no delivery adds events
    # between the two reads
    last = d.call({"op": "events.subscribe"}).get("last_id")
    on_disk = log_ids(d)
    ids = [x[0] for x in on_disk]
    d.call({"op": "queue.resume"})
    t.ok(ids == list(range(1, len(ids) + 1)) and ids[-1] == last,
         "after kill -9 the log's ids are contiguous from 1, no duplicate (%d)" % len(ids),
         (ids[-5:], last))
    t.ok(seen <= set(on_disk), "every event a subscriber saw is in the log (%d)" % len(seen),
         sorted(seen - set(on_disk))[:5])
    t.diag("accepted events of the burst in the log after kill -9: %d of 40" %
           len([x for x in on_disk if x[2] == "accepted" and x[0] > mid_id(on_disk, mid)]))
    nid, _ = send(d, SHOP, "a@shop.example", ["u11@ok.example.org"])
    st = d.call({"op": "message.status", "id": nid})
    new = [e["id"] for e in st.get("events") or []]
    ids = [x[0] for x in log_ids(d)]
    t.ok(new and new[0] > last and ids == list(range(1, len(ids) + 1)),
         "new ids go on after the last one, contiguous", (new, last, ids[-5:]))


if __name__ == "__main__":
    main()
