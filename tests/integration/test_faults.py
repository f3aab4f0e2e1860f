#!/usr/bin/env python3
"""test_faults.py - misbehaving SMTP peers and DNS servers.

Starts (peers.py): one smtp-sink per fault on 127.0.8.x:2525 (a 4xx and a
5xx reply at each stage: -r / -f with connect, helo, ehlo, mail, rcpt,
data, "."; a disconnect without a reply after DATA, after the message's
"." and after RCPT: -q; a 421 and disconnect after ".": -Q; a stall after
MAIL (without PIPELINING: -p), before the DATA reply and after the ".":
-W / -w), a well-behaved smtp-sink on 127.0.8.2:2525, and otpmaild (sandbox = no, a `route` per
fault domain, smtp_*_timeout of 2-3 s).  Every message ends in the right
state (deferred for 4xx, disconnects, timeouts and garbage; failed for
5xx) with the reason in message.status, within the configured timeouts,
while mail to the good sink keeps flowing.

Two fakes, because no real program does it:
  - an SMTP "peer" that answers garbage (binary bytes, a non-SMTP banner,
    junk after a valid banner, an endless line without a newline): a tiny
    Python socket server in this file;
  - a DNS server that is slow or answers malformed packets (random bytes,
    a truncated answer, an answer with the wrong query id): a tiny Python
    UDP server in this file (NSD only answers well).
A DNS server that is down is covered by test_mx.py, a peer silent from the
start (greeting timeout) by test_delivery.py; not repeated here.  The DNS
part runs a second otpmaild with `resolver = 127.0.8.53@5354` and an
smtp-sink on 127.0.8.60:25: a slow answer within the bound delivers, one
past it defers with "DNS timeout" within the bound, malformed answers
defer (never fail, never refuse otp.issue with bad_address).
"""

import os
import random
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
import peers as peers_mod  # noqa: E402
from peers import SmtpSink  # noqa: E402

t = Tap()
PORT = 2525
GOOD = "127.0.8.2"
TIMEOUTS = ("smtp_connect_timeout = 2s\nsmtp_greeting_timeout = 2s\n"
            "smtp_command_timeout = 2s\nsmtp_data_timeout = 3s\n"
            "smtp_data_done_timeout = 3s\n")
BOUND = 2 + 2 + 3 + 3 + 6      # the timeouts of one session plus slack


def status(d, qid):
    return d.call({"op": "message.status", "id": qid})


def rcpt0(st):
    rs = st.get("recipients") or [{}]
    return rs[0] if isinstance(rs[0], dict) else {}


def send(d, to, text="fault test\n"):
    r = d.call({"op": "mail.send", "from": "app@example.net", "to": [to],
                "subject": "fault", "text": text})
    return r.get("id"), r


# --- a garbage-speaking SMTP "peer" (no real program does this) -------------

class GarbagePeer:
    """Accepts TCP connections and answers with non-SMTP bytes."""

    def __init__(self, addr, port, mode):
        self.addr, self.port, self.mode = addr, port, mode
        self.sock = None
        self.stopped = False

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        rnd = random.Random(8)
        c.settimeout(20)
        try:
            if self.mode == "binary":
                for _ in range(64):
                    c.sendall(bytes(rnd.randrange(256) for _ in range(512)))
                    time.sleep(0.01)
            elif self.mode == "banner":
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nServer: nope\r\n\r\n")
                c.recv(4096)
            elif self.mode == "after_ehlo":
                c.sendall(b"220 garbage.example ESMTP\r\n")
                c.recv(4096)
                c.sendall(b"\x00\xff\xfe junk \x1b[31m\r\nnot a reply at all\r\n"
                          b"99999999999 what\r\n")
                c.recv(4096)
            elif self.mode == "endless":
                c.sendall(b"220 ")
                for _ in range(2000):       # 2 MB, no newline
                    c.sendall(b"x" * 1024)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass


# --- SMTP faults --------------------------------------------------------------

def smtp_scenarios():
    """(name, sink args or garbage mode, expected states, reply check)."""
    sc = []
    sc.append(("4xx at connect", ["-r", "connect"], ("deferred",), "4"))
    # a 5xx banner refuses this host, not the recipient: like Postfix's
    # smtp_skip_5xx_greeting, deferring (next MX, later retry) is right too
    sc.append(("5xx at connect", ["-f", "connect"], ("failed", "deferred"), "5"))
    for stage in ("mail", "rcpt", "data", "."):
        sc.append(("4xx at %s" % stage, ["-r", stage], ("deferred",), "4"))
        sc.append(("5xx at %s" % stage, ["-f", stage], ("failed",), "5"))
    # the daemon speaks EHLO: a HELO reject is never reached
    sc.append(("4xx at helo (not reached)", ["-r", "helo"], ("delivered",), "2"))
    sc.append(("5xx at helo (not reached)", ["-f", "helo"], ("delivered",), "2"))
    # EHLO refused: a client may fall back to HELO (RFC 5321 4.1.4) or give up
    # with the reply's class
    sc.append(("4xx at ehlo", ["-r", "ehlo"], ("deferred", "delivered"), None))
    sc.append(("5xx at ehlo", ["-f", "ehlo"], ("failed", "delivered"), None))
    sc.append(("disconnect after DATA", ["-q", "data"], ("deferred",), None))
    sc.append(("disconnect after the final dot (mid-DATA, no reply)", ["-q", "."],
               ("deferred",), None))
    sc.append(("disconnect after RCPT", ["-q", "rcpt"], ("deferred",), None))
    sc.append(("421 and disconnect after the final dot", ["-Q", "."],
               ("deferred",), "421"))
    # smtp-sink's -W answers the commands pipelined behind a delayed one at
    # once (out of order: "503 need MAIL command" first); no real server
    # does that, so this stall is tried without PIPELINING (-p): the
    # pipelined stall is "stall before the DATA reply"
    sc.append(("stall after MAIL", ["-p", "-W", "mail:30"], ("deferred",), "timeout"))
    sc.append(("stall before the DATA reply", ["-w", "30"], ("deferred",), "timeout"))
    sc.append(("stall after the final dot", ["-W", ".:30"], ("deferred",), "timeout"))
    for mode in ("binary", "banner", "after_ehlo", "endless"):
        sc.append(("garbage peer: %s" % mode, mode, ("deferred",), None))
    return sc


def smtp_tests():
    sc = smtp_scenarios()
    routes = "".join("route = f%d.example.org [127.0.8.%d]:%d\n" % (i, 10 + i, PORT)
                     for i in range(len(sc)))
    conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
            "route = example.net [%s]:%d\n" % (GOOD, PORT) + routes + TIMEOUTS +
            "default_retry_min = 600s\ndefault_retry_max = 600s\n"
            "delivery_workers = 8\n")
    peers = []
    try:
        good = SmtpSink(GOOD, PORT).start()
        peers.append(good)
        for i, (name, how, _, _) in enumerate(sc):
            addr = "127.0.8.%d" % (10 + i)
            if isinstance(how, str):
                peers.append(GarbagePeer(addr, PORT, how).start())
            else:
                s = SmtpSink(addr, PORT, extra_args=how)
                peers.append(s)
                if how[1] == "connect":
                    # its banner is the reject: wait for the port only
                    orig = peers_mod.wait_port
                    peers_mod.wait_port = lambda a, p, to=10, banner=True: \
                        orig(a, p, to, banner=False)
                    try:
                        s.start()
                    finally:
                        peers_mod.wait_port = orig
                else:
                    s.start()
        with Daemon(conf_extra=conf) as d:
            sent = {}
            t0 = time.time()
            for i, (name, how, want, check) in enumerate(sc):
                qid, r = send(d, "user@f%d.example.org" % i)
                sent[name] = (qid, time.time(), r)
            # the good peer keeps receiving while every fault is in progress
            time.sleep(0.5)
            flow = [send(d, "flow%d@example.net" % i)[0] for i in range(10)]
            try:
                good.wait_for(10, 30)
                # an order, not a speed: the flow arrived while peers were
                # still misbehaving (their messages not yet decided)
                pending = [name for name, (qid, _, _) in sent.items() if qid and
                           rcpt0(status(d, qid)).get("state") not in
                           ("failed", "deferred", "delivered")]
                t.ok(pending, "other deliveries keep flowing while %d peers misbehave "
                     "(%d still undecided)" % (len(sc), len(pending)))
                t.diag("flow arrived after %.1f s" % (time.time() - t0))
            except RuntimeError as e:
                t.ok(False, "other deliveries keep flowing while peers misbehave",
                     "%s\n%s" % (e, d.log_text()[-2000:]))
            t.ok(all(flow), "the flow messages were accepted")

            for i, (name, how, want, check) in enumerate(sc):
                qid, ts, r = sent[name]
                if not qid:
                    t.ok(False, "%s: accepted" % name, r)
                    continue
                final = set(want) | {"failed", "deferred", "delivered"}
                last = {}

                def pred():
                    nonlocal last
                    last = status(d, qid)
                    return rcpt0(last).get("state") in final
                # BOUND is what the timeouts allow; wait 3 times that: a
                # loaded machine is slow, a peer that stalls forever is not
                wait_for(pred, max(1, 3 * BOUND - (time.time() - ts)), 0.2)
                took = time.time() - ts
                rc = rcpt0(last)
                reply = rc.get("reply") or ""
                reason = reply or last.get("last_error") or ""
                good_state = rc.get("state") in want or last.get("state") in want
                if check is None:
                    good_reply = bool(reason)
                elif check == "timeout":
                    good_reply = "timeout" in reason.lower() or \
                        "timed out" in reason.lower()
                else:
                    good_reply = reason.startswith(check) or \
                        (" " + check) in reason
                t.ok(good_state and good_reply,
                     "%s: %s with the reason in message.status (%.1fs): %s" %
                     (name, "/".join(want), took, reason[:80]),
                     "state %r, status %r" % (rc.get("state"), last))
            t.ok(d.alive(), "the daemon is still up after every fault")
    finally:
        for p in reversed(peers):
            try:
                p.stop()
            except Exception as e:      # keep stopping the others
                t.diag("stopping %r: %s" % (p, e))


# --- DNS faults: a slow or malformed DNS server (no real program does it) ----

def dns_name(buf, off):
    labels = []
    while buf[off]:
        n = buf[off]
        labels.append(buf[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels).lower(), off + 1


def dns_rr(rtype, rdata, ttl=60):
    # the owner is the question's name, by pointer (offset 12)
    return struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(rdata)) + rdata


def dns_encode(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


class FakeDns:
    """A UDP DNS server answering per name: mx.<zone> A 127.0.8.60, <zone>
    MX 10 mx.<zone>; zones slowok (1 s), slow (20 s), garbage, trunc,
    badid; anything else REFUSED."""

    def __init__(self, addr="127.0.8.53", port=5354):
        self.addr, self.port = addr, port
        self.sock = None
        self.queries = []

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.addr, self.port))
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def _loop(self):
        while True:
            try:
                q, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            threading.Thread(target=self._answer, args=(q, peer), daemon=True).start()

    def _answer(self, q, peer):
        try:
            qid, flags = struct.unpack("!HH", q[:4])
            name, off = dns_name(q, 12)
            qtype, = struct.unpack("!H", q[off:off + 2])
            question = q[12:off + 4]
        except (struct.error, IndexError):
            return
        self.queries.append((name, qtype))
        zone = name[3:] if name.startswith("mx.") else name
        kind = zone.split(".")[0]
        rd = flags & 0x0100
        hdr_flags = 0x8080 | rd          # QR, RA, RD copied
        answers = []
        rcode = 0
        if not zone.endswith("example.org") or kind not in (
                "slowok", "slow", "garbage", "trunc", "badid"):
            rcode = 5
        elif qtype == 15 and not name.startswith("mx."):
            answers.append(dns_rr(15, struct.pack("!H", 10) + dns_encode("mx." + zone)))
        elif qtype == 1 and name.startswith("mx."):
            answers.append(dns_rr(1, socket.inet_aton("127.0.8.60")))
        resp = struct.pack("!HHHHHH", qid, hdr_flags | rcode, 1, len(answers), 0, 0) + \
            question + b"".join(answers)
        if kind == "slowok":
            time.sleep(1)
        elif kind == "slow":
            time.sleep(20)
        elif kind == "garbage":
            resp = bytes(random.randrange(256) for _ in range(200))
        elif kind == "trunc":
            resp = struct.pack("!HHHHHH", qid, hdr_flags, 1, 3, 0, 0) + question + \
                b"\xc0\x0c\x00\x0f\x00\x01\x00\x00"
        elif kind == "badid":
            resp = struct.pack("!H", qid ^ 0x5a5a) + resp[2:]
        try:
            self.sock.sendto(resp, peer)
        except OSError:
            pass

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None


def dns_tests():
    conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
            "resolver = 127.0.8.53@5354\nmx_allow_internal = yes\n" + TIMEOUTS +
            "default_retry_min = 600s\ndefault_retry_max = 600s\n"
            "otp_check_deliverability = yes\n")
    dns = FakeDns().start()
    mx = SmtpSink("127.0.8.60", 25)
    try:
        mx.start()
        with Daemon(conf_extra=conf) as d:
            qid, r = send(d, "ok@slowok.example.org")
            try:
                mx.wait_for(1, 15)
                t.ok(True, "a slow DNS answer (1 s) within the bound delivers")
            except RuntimeError as e:
                t.ok(False, "a slow DNS answer (1 s) within the bound delivers",
                     "%s %s\n%s" % (e, status(d, qid), d.log_text()[-1500:]))
            cases = (("slow", "DNS server slower than the lookup bound (20 s)",
                      "timeout"),
                     ("garbage", "DNS answers random bytes", None),
                     ("trunc", "DNS answer truncated mid-record", None),
                     ("badid", "DNS answer with the wrong query id", None))
            sent = {}
            for kind, name, _ in cases:
                sent[kind] = (send(d, "x@%s.example.org" % kind), time.time())
            for kind, name, check in cases:
                (qid, r), ts = sent[kind]
                last = {}

                def pred():
                    nonlocal last
                    last = status(d, qid)
                    return rcpt0(last).get("state") in ("deferred", "failed",
                                                        "delivered")
                wait_for(pred, 25, 0.2)
                took = time.time() - ts
                rc = rcpt0(last)
                reason = rc.get("reply") or last.get("last_error") or ""
                t.ok(rc.get("state") == "deferred" and reason and
                     (check is None or check in reason.lower()),
                     "%s: deferred, not failed, with the reason (%.1fs): %s" %
                     (name, took, reason[:80]), last)
            for kind in ("garbage", "trunc", "badid"):
                r = d.call({"op": "otp.issue", "to": "a@%s.example.org" % kind,
                            "purpose": "login"})
                t.ok(r.get("ok"),
                     "otp.issue with a malformed DNS answer (%s) is not refused "
                     "as bad_address" % kind, r)
            t.ok(d.alive(), "the daemon is still up after the DNS faults")
    finally:
        mx.stop()
        dns.stop()


def main():
    if os.geteuid() != 0:
        t.skip("test_faults", "needs root (smtp-sink -u nobody, port 25)")
        t.done()
    smtp_tests()
    dns_tests()
    t.done()


if __name__ == "__main__":
    main()
