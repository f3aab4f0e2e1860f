#!/usr/bin/python3
"""test_delivery.py - delivery to real SMTP peers on loopback.

Starts (peers.py): smtp-sink on 127.0.6.2:2525 and 127.0.6.3:2525 (-c
counters), a silent TCP peer on 127.0.6.9:2525, a test CA, a private
Postfix with STARTTLS on 127.0.6.10:2525 and one without STARTTLS on
127.0.6.11:2525; then otpmaild (harness.Daemon, sandbox = no) with
`route = <domain> [127.0.6.x]:2525` lines, so no DNS is involved.

1. smtp-sink: delivery and the remote reply in message.status; session
   reuse (many messages, few connections: smtp-sink's session counter);
   the delivery rate with reuse; a soft reject (-r RCPT) defers, and after
   the sink restarts accepting, queue.flush delivers it; a hard reject
   (-f RCPT) fails; a peer that never answers times out within
   smtp_greeting_timeout while mail to another sink keeps flowing.
2. Postfix + test CA: may, encrypt and verify deliver over TLS (Received:
   says TLS); verify against a certificate without the name defers; a peer
   without STARTTLS under encrypt defers and gets nothing.
3. NSD on 127.0.6.53:5353 (peers.DnsServer) with fb.example.com MX 10 (down)
   and MX 20 (smtp-sink 127.0.6.22), fallback relay smtp-sink 127.0.6.23:
   a default-class mail goes to the second MX, an OTP mail goes to the
   fallback relay right after the first temporary failure.
"""
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import DnsServer, PostfixPeer, SilentPeer, SmtpSink, TestCA, Zone  # noqa: E402

PORT = 2525
SINK1, SINK2, SILENT = "127.0.6.2", "127.0.6.3", "127.0.6.9"
PF_TLS, PF_PLAIN = "127.0.6.10", "127.0.6.11"
TLS_DOMAINS = ("may.example.com", "enc.example.com", "ver.example.com",
               "bad.example.com")

t = Tap()


def status(d, qid):
    r = d.call({"op": "message.status", "id": qid})
    return r


def rcpt_states(r):
    """[(state, reply)] of a message.status answer, whatever its nesting."""
    out = []
    for key in ("recipients", "rcpts"):
        for rc in r.get(key) or []:
            if isinstance(rc, dict):
                out.append((rc.get("state"), rc.get("reply") or ""))
    return out


def wait_rcpt(d, qid, states, timeout=30):
    """Polls message.status until every recipient is in one of states."""
    last = {}

    def pred():
        nonlocal last
        last = status(d, qid)
        rs = rcpt_states(last)
        return rs and all(s in states for s, _ in rs)
    ok = wait_for(pred, timeout, 0.1)
    return bool(ok), last


def send(d, to, subject="delivery test", text="hello\n"):
    r = d.call({"op": "mail.send", "from": "app@sender.example.com",
                "to": to if isinstance(to, list) else [to],
                "subject": subject, "text": text})
    return r.get("id") if r.get("ok") else None, r


def sink_counters(sink):
    m = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", sink.log())
    return tuple(int(x) for x in m[-1]) if m else (0, 0, 0)


def sink_tests(ca):
    conf = (
        "sandbox = no\nhostname = otpmail.example.com\n"
        "tls_policy = none\n"
        "route = example.org [%s]:%d\n"
        "route = example.net [%s]:%d\n"
        "route = silent.example.com [%s]:%d\n"
        "route = soft.example.org [%s]:%d\n"
        "route = hard.example.org [%s]:%d\n"
        "delivery_workers = 8\n"
        "max_connections_per_domain = 4\n"
        "session_idle_timeout = 2s\n"
        "smtp_connect_timeout = 3s\n"
        "smtp_greeting_timeout = 3s\n"
        "smtp_command_timeout = 5s\n"
        "default_retry_min = 600s\n"
        % (SINK1, PORT, SINK2, PORT, SILENT, PORT, SINK2, PORT, SINK2, PORT))
    with Daemon(conf_extra=conf) as d, \
            SmtpSink(SINK1, PORT, extra_args=["-c"]) as s1, \
            SmtpSink(SINK2, PORT) as s2:
        # 1. one message, reply kept
        qid, r = send(d, "bob@example.org", text="first message\n")
        t.ok(qid is not None, "mail.send accepted", r)
        got = None
        try:
            got = s1.wait_for(1, 20)
        except RuntimeError as e:
            t.diag(str(e))
        t.ok(got and got[0].rcpt == "bob@example.org" and
             b"first message" in got[0].data, "smtp-sink received it")
        if got:
            t.ok(b"X-Helo-Args: otpmail.example.com" in got[0].data,
                 "EHLO with the configured hostname", got[0].data[:400])
        ok, st = wait_rcpt(d, qid, ("delivered",), 10)
        t.ok(ok and rcpt_states(st)[0][1].startswith("250"),
             "status: delivered with the remote 250 reply", json.dumps(st))
        t.ok(re.search(r"event=delivery id=%s .*relay=.*ip=%s .*tls_policy=none "
                       r".*result=delivered .*reply=.*delay=" % (qid, SINK1),
                       d.log_text()) is not None,
             "delivery logged as key=value (id, relay, ip, tls, result, reply, delay)",
             d.log_text()[-1500:])

        # 2. session reuse: many messages, few connections
        time.sleep(2.5)             # first session idles out
        n = 60
        t0 = time.time()
        ids = []
        for i in range(n):
            q, _ = send(d, "user%d@example.org" % i, text="reuse %d\n" % i)
            ids.append(q)
        t.ok(all(ids), "%d messages accepted" % n)
        try:
            s1.wait_for(n + 1, 60)
            dt = time.time() - t0
            t.ok(True, "all %d arrived" % n)
            t.diag("delivered %d messages in %.2fs (%.0f msg/s, submission "
                   "included)" % (n, dt, n / dt))
        except RuntimeError as e:
            t.ok(False, "all %d arrived" % n, str(e))
        time.sleep(3.5)             # idle sessions close (session_idle_timeout 2s)
        s1.stop_process()
        sess, quit_, mesg = sink_counters(s1)
        t.diag("smtp-sink counters: sess=%d quit=%d mesg=%d" % (sess, quit_, mesg))
        t.ok(mesg >= n + 1 and 1 <= sess <= 8 + 1,
             "session reuse: %d messages over %d connections" % (mesg, sess))
        t.ok(quit_ == sess, "idle sessions end with QUIT")
        s1.restart(extra_args=[])

        # 3. soft reject -> deferred; restart accepting + queue.flush -> delivered
        s2.restart(extra_args=["-r", "RCPT"])
        qid, _ = send(d, "soft@soft.example.org")
        ok, st = wait_rcpt(d, qid, ("deferred",), 20)
        reply = rcpt_states(st)[0][1] if rcpt_states(st) else ""
        t.ok(ok and reply.startswith("4"), "soft reject: deferred with the 4xx reply",
             json.dumps(st))
        before = len(s2.messages())
        s2.restart(extra_args=[])
        r = d.call({"op": "queue.flush", "id": qid})
        t.ok(r.get("ok"), "queue.flush", r)
        ok, st = wait_rcpt(d, qid, ("delivered",), 20)
        t.ok(ok and len(s2.messages()) == before + 1,
             "after the restart: delivered", json.dumps(st))

        # 4. hard reject -> failed
        s2.restart(extra_args=["-f", "RCPT"])
        qid, _ = send(d, "hard@hard.example.org")
        ok, st = wait_rcpt(d, qid, ("failed", "bounced"), 20)
        reply = rcpt_states(st)[0][1] if rcpt_states(st) else ""
        t.ok(ok and reply.startswith("5"), "hard reject: failed with the 5xx reply",
             json.dumps(st))
        s2.restart(extra_args=[])

        # 5. a peer that never answers ties up one worker only
        with SilentPeer(SILENT, PORT):
            t0 = time.time()
            qs, _ = send(d, "stuck@silent.example.com")
            time.sleep(0.3)
            before = len(s2.messages())
            others = [send(d, "flow%d@example.net" % i)[0] for i in range(5)]
            try:
                s2.wait_for(before + 5, 10)
                flowed = time.time() - t0
                # an order, not a speed: the others arrived while the
                # silent peer still held its message (not yet deferred)
                stuck = [x for x, _ in rcpt_states(status(d, qs))]
                t.ok(stuck and "deferred" not in stuck,
                     "other deliveries continue while a peer is silent", stuck)
                t.diag("the 5 others arrived in %.1f s" % flowed)
            except RuntimeError as e:
                t.ok(False, "other deliveries continue while a peer is silent", str(e))
            ok, st = wait_rcpt(d, qs, ("deferred",), 15)
            reply = rcpt_states(st)[0][1] if rcpt_states(st) else ""
            t.ok(ok and "timeout" in reply, "silent peer: deferred with a timeout",
                 json.dumps(st))
            t.diag("deferred after %.1f s (smtp_greeting_timeout 3 s)" % (time.time() - t0))
            t.ok(all(others), "the others were accepted")


def tls_tests(ca):
    cert = ca.issue("mx.example.com", alt=TLS_DOMAINS[:3])
    with PostfixPeer(PF_TLS, PORT, domains=TLS_DOMAINS + ("plain.example.com",),
                     hostname="mx.example.com", tls=True, cert=cert) as pf, \
            PostfixPeer(PF_PLAIN, PORT, domains=("plain.example.com",),
                        hostname="plain.example.com", tls=False) as pp:
        conf = ("sandbox = no\nhostname = otpmail.example.com\n"
                "tls_ca_file = %s\n" % ca.ca_file)
        for dom, pol in zip(TLS_DOMAINS, ("may", "encrypt", "verify", "verify")):
            conf += "route = %s [%s]:%d\ndomain_tls_policy = %s %s\n" % (
                dom, PF_TLS, PORT, dom, pol)
        conf += ("route = plain.example.com [%s]:%d\n"
                 "domain_tls_policy = plain.example.com encrypt\n"
                 "smtp_connect_timeout = 3s\nsmtp_command_timeout = 10s\n"
                 "default_retry_min = 600s\n" % (PF_PLAIN, PORT))
        with Daemon(conf_extra=conf) as d:
            for dom, pol in zip(TLS_DOMAINS[:3], ("may", "encrypt", "verify")):
                qid, r = send(d, "user@" + dom, subject="tls " + pol)
                ok, st = wait_rcpt(d, qid, ("delivered",), 30)
                t.ok(ok, "%s: delivered to Postfix" % pol, json.dumps(st) + pf.log()[-800:])
                # Postfix writes the Maildir after its 250: wait for it.
                msgs = wait_for(lambda: [m for m in pf.messages()
                                         if m.rcpt == "user@" + dom], 15)
                t.ok(msgs and re.search(rb"using TLSv1\.[23]", msgs[0].data),
                     "%s: Postfix received it over TLS" % pol,
                     msgs[0].data[:600] if msgs else "no message")
            t.ok(re.search(r"domain=ver\.example\.com .*tls_policy=verify tls=TLSv1\.[23] "
                           r"cipher=\S+ tls_auth=verified result=delivered",
                           d.log_text()) is not None,
                 "verify: logged with TLS version, cipher, verified", d.log_text()[-1500:])

            qid, _ = send(d, "user@bad.example.com", subject="wrong name")
            ok, st = wait_rcpt(d, qid, ("deferred",), 30)
            reply = rcpt_states(st)[0][1] if rcpt_states(st) else ""
            t.ok(ok and "verification" in reply,
                 "verify, certificate without the name: deferred", json.dumps(st))
            t.ok(not [m for m in pf.messages() if m.rcpt == "user@bad.example.com"],
                 "nothing sent to the wrong-name peer")

            qid, _ = send(d, "user@plain.example.com", subject="no starttls")
            ok, st = wait_rcpt(d, qid, ("deferred",), 30)
            reply = rcpt_states(st)[0][1] if rcpt_states(st) else ""
            t.ok(ok and "STARTTLS" in reply, "encrypt, peer without STARTTLS: deferred",
                 json.dumps(st))
            t.ok(not pp.messages(), "nothing sent in clear")

            # several messages on one session: after the reply to the end of
            # the data the next MAIL needs no RSET (RFC 5321, 4.1.1.4)
            ids = [send(d, "burst%d@%s" % (i, TLS_DOMAINS[0]), subject="burst")[0]
                   for i in range(10)]
            done = [wait_rcpt(d, q, ("delivered",), 30)[0] for q in ids]
            t.ok(all(done), "10 more messages delivered to Postfix", done)
        # the daemon has ended its sessions with QUIT: Postfix counted the commands
        counts = wait_for(lambda: [l for l in pf.log().splitlines()
                                   if "disconnect from" in l and "mail=" in l], 10) or []
        mails = [int(m) for l in counts for m in re.findall(r" mail=(\d+)", l)]
        t.ok(mails and max(mails) >= 2 and not any("rset=" in l for l in counts),
             "Postfix took several transactions on one session, without RSET",
             "\n".join(counts))


def fallback_tests(ca):
    zone = Zone("example.com", ["fb MX 10 mx1.fb", "fb MX 20 mx2.fb",
                                "mx1.fb A 127.0.6.21", "mx2.fb A 127.0.6.22"])
    with DnsServer([zone], "127.0.6.53", 5353) as dns, \
            SmtpSink("127.0.6.22", PORT) as mx2, SmtpSink("127.0.6.23", PORT) as fb:
        conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
                "resolver = %s\nsmtp_port = %d\nfallback_relay = [127.0.6.23]:%d\n"
                "mx_allow_internal = yes\n"
                "smtp_connect_timeout = 3s\n" % (dns.resolver, PORT, PORT))
        with Daemon(conf_extra=conf) as d:
            # OTP first: no session to the domain is open yet.
            r = d.call({"op": "otp.issue", "to": "code@fb.example.com"})
            t.ok(r.get("ok"), "otp.issue", r)
            try:
                got = fb.wait_for(1, 20)
            except RuntimeError as e:
                got = []
                t.diag(str(e))
            t.ok(got and got[0].rcpt == "code@fb.example.com" and
                 not [m for m in mx2.messages() if m.rcpt == "code@fb.example.com"],
                 "otp class: to the fallback relay right after the first failure",
                 d.log_text()[-1500:])
            qid, r = send(d, "dflt@fb.example.com", subject="default class")
            ok, st = wait_rcpt(d, qid, ("delivered",), 20)
            t.ok(ok and [m for m in mx2.messages() if m.rcpt == "dflt@fb.example.com"]
                 and len(fb.messages()) == 1,
                 "default class: first MX down, delivered to the second MX",
                 json.dumps(st) + d.log_text()[-1500:])


def batch_tests(ca):
    """Messages due together go to the delivery process in batches: each
    result must land on its own message.  Half the recipients are refused
    for good, so a result applied to its neighbour would show."""
    conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
            "log_level = debug\n"
            "route = example.org [%s]:%d\nroute = hard.example.org [%s]:%d\n"
            "delivery_workers = 2\ndefault_retry_min = 600s\n"
            % (SINK1, PORT, SINK2, PORT))
    with Daemon(conf_extra=conf) as d, SmtpSink(SINK1, PORT) as ok_sink, \
            SmtpSink(SINK2, PORT, extra_args=["-f", "RCPT"]):
        d.call({"op": "queue.pause"})
        sent = []
        for i in range(24):
            to = "b%d@%s" % (i, "example.org" if i % 2 == 0 else "hard.example.org")
            qid, _ = send(d, to, subject="batch %d" % i)
            sent.append((qid, to))
        d.call({"op": "queue.resume"})
        final = [wait_rcpt(d, q, ("delivered", "failed"), 30) for q, _ in sent]
        batches = [int(n) for n in
                   re.findall(r"event=delivery_batch messages=(\d+)", d.log_text())]
        t.ok(batches and max(batches) >= 2,
             "messages due together went to the delivery process in batches", batches)
        right = [ok and rcpt_states(st)[0][0] == ("delivered" if "hard" not in to
                                                  else "failed")
                 for (ok, st), (_, to) in zip(final, sent)]
        t.ok(all(right), "each message of a batch got its own outcome (24: 12 "
             "delivered, 12 refused)", [to for r, (_, to) in zip(right, sent) if not r])
        got = sorted(m.rcpt for m in ok_sink.messages())
        t.ok(got == sorted(to for _, to in sent if "hard" not in to),
             "the accepting server got each of its 12 once", got)


def main():
    with TestCA() as ca:
        for fn in (sink_tests, batch_tests, tls_tests, fallback_tests):
            try:
                fn(ca)
            except Exception as e:  # report and go on with the next part
                import traceback
                t.ok(False, "%s ran" % fn.__name__, traceback.format_exc())
    t.done()


if __name__ == "__main__":
    main()
