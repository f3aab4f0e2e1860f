#!/usr/bin/python3
"""test_mx.py - MX routing through a real DNS server on loopback.

Starts: NSD on 127.0.1.53:5353 serving example.org (peers.DnsServer);
for the daemon part, smtp-sinks on 127.0.1.2:25, 127.0.1.3:25, 127.0.1.6:25
and otpmaild (harness.Daemon) with `resolver = 127.0.1.53@5353`.

1. agent/delivery/mx.c through tests/integration/mxprobe: MX preference order,
   equal preferences shuffled, implicit MX (A/AAAA), CNAME at the target,
   null MX, NXDOMAIN, no MX and no address, MX host without address,
   SERVFAIL (a zone the server does not serve) and a dead DNS server are
   temporary and bounded, address literals, the submission check.
2. The daemon delivers through MX: to the preferred MX; to the second MX
   when the first is down; with every MX down it tries every address of
   every MX, defers, and the retry delivers once one is back; to the domain
   itself (implicit MX); a dead DNS server defers (4.4.3); null MX and
   NXDOMAIN fail at once (5.1.10 / 5.1.2), otp.issue refuses them with
   bad_address.
"""
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, TOP_BUILDDIR  # noqa: E402
from peers import DnsServer, SmtpSink, Zone  # noqa: E402

MXPROBE = os.path.join(TOP_BUILDDIR, "tests", "integration", "mxprobe")
DNS_ADDR = "127.0.1.53"
RESOLVER = DNS_ADDR + "@5353"

ZONE = Zone("example.org", [
    "@ MX 10 mx1",
    "@ MX 20 mx2",
    "mx1 A 127.0.1.2",
    "mx1 AAAA ::1",
    "mx2 A 127.0.1.3",
    "eq MX 10 a.eq",
    "eq MX 10 b.eq",
    "eq MX 5 first.eq",
    "a.eq A 127.0.1.4",
    "b.eq A 127.0.1.5",
    "first.eq A 127.0.1.7",
    "implicit A 127.0.1.6",
    "null MX 0 .",
    "nohost TXT \"exists, no MX, no address\"",
    "deadmx MX 10 missing.example.org.",
    "halfdead MX 10 missing.example.org.",
    "halfdead MX 20 mx2.example.org.",
    "cname MX 10 alias",
    "alias CNAME mx2",
])


def probe(*args, resolver=RESOLVER, timeout=30):
    cmd = [MXPROBE, "-r", resolver] + list(args)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    out = r.stdout.decode(errors="replace")
    res = {"hosts": [], "raw": out}
    for line in out.splitlines():
        if line.startswith("host "):
            h = dict(kv.split("=", 1) for kv in line[5:].split(" "))
            h["addrs"] = [a for a in h["addrs"].split(",") if a]
            res["hosts"].append(h)
        elif line.startswith("status="):
            res["status"] = line.split("=", 1)[1]
        elif line.startswith("reason="):
            res["reason"] = line.split("=", 1)[1]
        elif line.startswith("elapsed_ms="):
            res["ms"] = int(line.split("=", 1)[1])
        elif line.startswith("implicit="):
            res["implicit"] = line.split()[0].split("=")[1] == "1"
    return res


def names(r):
    return [h["name"] for h in r["hosts"]]


def probe_tests(t):
    r = probe("mx", "example.org")
    t.is_(r.get("status"), "ok", "MX lookup ok")
    t.is_(names(r), ["mx1.example.org", "mx2.example.org"],
          "MX hosts in preference order")
    t.ok(r["hosts"] and r["hosts"][0]["addrs"] == ["[::1]:25", "127.0.1.2:25"],
         "every address of the MX, IPv6 first, port set", r["raw"])
    t.ok(not r.get("implicit"), "not an implicit MX")
    t.ok(r["hosts"] and all(h["secure"] == "0" for h in r["hosts"]),
         "unsigned zone: not secure")

    r = probe("mx", "example.org", "2525")
    t.ok(r["hosts"] and r["hosts"][1]["addrs"] == ["127.0.1.3:2525"],
         "port passed through", r["raw"])

    orders = set()
    for _ in range(12):
        r = probe("mx", "eq.example.org")
        orders.add(tuple(names(r)))
    t.ok(all(o[0] == "first.eq.example.org" for o in orders),
         "lowest preference always first", orders)
    t.ok(len(orders) == 2, "equal preferences shuffled (both orders seen)",
         orders)

    r = probe("mx", "implicit.example.org")
    t.ok(r.get("status") == "ok" and r.get("implicit") and
         names(r) == ["implicit.example.org"] and
         r["hosts"][0]["addrs"] == ["127.0.1.6:25"],
         "no MX: implicit MX to the domain's address", r["raw"])

    r = probe("mx", "cname.example.org")
    t.ok(r.get("status") == "ok" and r["hosts"] and
         r["hosts"][0]["addrs"] == ["127.0.1.3:25"],
         "CNAME at the MX target followed", r["raw"])

    r = probe("mx", "null.example.org")
    t.is_(r.get("status"), "nullmx", "null MX")
    r = probe("mx", "nx.example.org")
    t.is_(r.get("status"), "nxdomain", "NXDOMAIN is permanent")
    r = probe("mx", "nohost.example.org")
    t.is_(r.get("status"), "nohost", "no MX and no address")
    r = probe("mx", "deadmx.example.org")
    t.is_(r.get("status"), "nohost", "MX host without address")
    r = probe("mx", "halfdead.example.org")
    t.ok(r.get("status") == "ok" and names(r) == ["mx2.example.org"],
         "MX host without address skipped, the next one kept", r["raw"])

    r = probe("mx", "elsewhere.example.net")
    t.is_(r.get("status"), "tempfail", "SERVFAIL/REFUSED is temporary")

    r = probe("host", "mx2.example.org", "587")
    t.ok(r.get("status") == "ok" and r["hosts"][0]["addrs"] == ["127.0.1.3:587"],
         "host lookup for a route", r["raw"])
    r = probe("host", "[127.0.1.9]", "2525")
    t.ok(r.get("status") == "ok" and r["hosts"][0]["addrs"] == ["127.0.1.9:2525"],
         "address literal route", r["raw"])
    r = probe("host", "missing.example.org")
    t.is_(r.get("status"), "nxdomain", "route host that does not exist")

    r = probe("tlsa", "mx1.example.org")
    t.ok(r.get("status") == "ok" and "tlsa secure=0 n=0" in r["raw"],
         "no TLSA, not secure", r["raw"])

    # a DNS server that does not answer: temporary, within seconds
    r = probe("-T", "2000", "mx", "example.org", resolver="127.0.1.54@5353")
    t.ok(r.get("status") == "tempfail" and r.get("ms", 99999) < 5000,
         "dead DNS server: tempfail within the bound", r["raw"])

    # submission-time check (shared resolver, default bound)
    for dom, want in (("example.org", "accept"), ("implicit.example.org", "accept"),
                      ("nx.example.org", "refuse"), ("null.example.org", "refuse"),
                      ("nohost.example.org", "refuse"),
                      ("elsewhere.example.net", "accept")):
        r = probe("check", dom)
        t.is_(r.get("status"), want, "domain check %s: %s" % (dom, want))
    r = probe("check", "example.org", resolver="127.0.1.54@5353")
    t.ok(r.get("status") == "accept" and r.get("ms", 99999) < 5000,
         "domain check: a DNS timeout does not refuse", r["raw"])


def wait_state(d, qid, states, timeout=30):
    deadline = time.time() + timeout
    r = None
    while time.time() < deadline:
        r = d.call({"op": "message.status", "id": qid})
        if r.get("ok") and r.get("state") in states:
            return r
        time.sleep(0.2)
    return r


def send(d, to):
    return d.call({"op": "mail.send", "from": "app@sender.example.com",
                   "to": [to], "subject": "mx test", "text": "hello\n"})


def daemon_tests(t):
    # the MX hosts of these zones live on loopback: allowed for this test
    conf = ("sandbox = no\nresolver = %s\nhostname = otpmail.example.com\n"
            "mx_allow_internal = yes\n"
            "tls_policy = none\ndefault_retry_min = 1s\n"
            "smtp_connect_timeout = 3s\n" % RESOLVER)
    try:
        d = Daemon(conf_extra=conf)
    except (RuntimeError, OSError) as e:
        t.ok(False, "otpmaild starts with a resolver", e)
        return
    with d, SmtpSink("127.0.1.2", 25) as mx1, SmtpSink("127.0.1.3", 25) as mx2, \
            SmtpSink("127.0.1.6", 25) as imp:
        r = send(d, "bob@example.org")
        if not r.get("ok"):
            t.ok(False, "mail.send accepted", r)
            return
        got = mx1.wait_for(1, 30)
        t.ok(len(got) == 1 and "bob@example.org" in (got[0].rcpt or ""),
             "delivered to the preferred MX")
        t.ok(not mx2.messages(), "second MX not used while the first is up")

        mx1.stop_process()
        r = send(d, "carol@example.org")
        try:
            got = mx2.wait_for(1, 40)
            t.ok(got[0].rcpt == "carol@example.org",
                 "first MX down: delivered to the second MX")
        except RuntimeError as e:
            t.ok(False, "first MX down: delivered to the second MX",
                 "%s\n%s" % (e, d.log_text()[-3000:]))

        # every MX down: every address of every MX tried, deferred; the
        # retry delivers once an MX is back
        mx2.stop_process()
        r = send(d, "frank@example.org")
        qid = r.get("id")
        st = wait_state(d, qid, ("deferred", "failed", "delivered"), 30)
        t.ok(st and st.get("state") == "deferred",
             "every MX down: deferred", st)
        lines = [l for l in d.log_text().splitlines() if qid and qid in l]
        tried = [a for a in ("::1", "127.0.1.2", "127.0.1.3")
                 if any(a in l for l in lines)]
        t.is_(tried, ["::1", "127.0.1.2", "127.0.1.3"],
              "every address of every MX tried before deferring")
        mx2.restart()
        try:
            got = mx2.wait_for(2, 40)
            t.ok(any(m.rcpt == "frank@example.org" for m in got),
                 "MX back: the retry delivers")
        except RuntimeError as e:
            t.ok(False, "MX back: the retry delivers", e)

        r = send(d, "dave@implicit.example.org")
        try:
            imp.wait_for(1, 30)
            t.ok(True, "implicit MX: delivered to the domain's address")
        except RuntimeError as e:
            t.ok(False, "implicit MX: delivered to the domain's address", e)

        for to, code in (("x@null.example.org", "5.1.10"),
                         ("x@nx.example.org", "5.1.2")):
            r = send(d, to)
            qid = r.get("id")
            st = wait_state(d, qid, ("failed", "bounced", "done"), 20) if qid else r
            t.ok(st and st.get("state") in ("failed", "bounced") and
                 code in str(st), "%s fails at once with %s" % (to, code), st)

    with Daemon(conf_extra="sandbox = no\nresolver = %s\nmx_allow_internal = yes\n"
                "otp_check_deliverability = yes\n" % RESOLVER) as d:
        for to in ("a@null.example.org", "a@nx.example.org"):
            r = d.call({"op": "otp.issue", "to": to, "purpose": "login"})
            t.ok(not r.get("ok") and r.get("error") == "bad_address",
                 "otp.issue refuses %s with bad_address" % to, r)
        r = d.call({"op": "otp.issue", "to": "a@example.org", "purpose": "login"})
        t.ok(r.get("ok"), "otp.issue accepts a domain with an MX", r)
        # the verdicts are kept a while: the same domains again (other
        # addresses, other case) ask the fetch process nothing
        r1 = d.call({"op": "otp.issue", "to": "b@NX.example.org", "purpose": "login"})
        r2 = d.call({"op": "otp.issue", "to": "b@Example.org", "purpose": "login"})
        log = d.log_text()
        looked = {n: len(re.findall(r"event=fetch_dns kind=mx name=%s " % re.escape(n), log))
                  for n in ("nx.example.org", "example.org")}
        t.ok(r1.get("error") == "bad_address" and "does not exist" in str(r1) and
             r2.get("ok") and looked == {"nx.example.org": 1, "example.org": 1},
             "the check's verdicts are kept: one MX lookup per domain", (r1, r2, looked))

    # a dead DNS server: submission is not refused, delivery defers
    with Daemon(conf_extra="sandbox = no\nresolver = 127.0.1.54@5353\n"
                "otp_check_deliverability = yes\ndefault_retry_min = 60s\n") as d:
        r = d.call({"op": "otp.issue", "to": "b@example.org", "purpose": "login"})
        t.ok(r.get("ok"), "dead DNS: otp.issue accepted, not refused as bad_address", r)
        r = send(d, "c@example.org")
        st = wait_state(d, r.get("id"), ("deferred", "failed"), 30)
        t.ok(st and st.get("state") == "deferred" and "4.4.3" in str(st),
             "dead DNS: delivery deferred (4.4.3), not failed", st)


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_mx", "needs root")
        t.done()
    if not os.path.exists(MXPROBE):
        t.ok(False, "mxprobe built", MXPROBE)
        t.done()
    with DnsServer([ZONE], addr=DNS_ADDR, port=5353):
        probe_tests(t)
        if os.environ.get("OTPMAIL_MX_PROBE_ONLY"):
            t.done()
        daemon_tests(t)
    t.done()


if __name__ == "__main__":
    main()
