#!/usr/bin/python3
"""test_dane.py - DANE: TLSA records validated by DNSSEC through libunbound.

Starts: NSD on 127.0.2.53:5353 serving two DNSSEC-signed zones
(ldns-signzone; their DS records are the trust anchor) and one unsigned
zone (peers.DnsServer); a test CA (openssl); for the daemon part, private
Postfix instances with STARTTLS on 127.0.2.10:25 and 127.0.2.11:25 and
otpmaild with `resolver`, `dns_trust_anchor` and `domain_tls_policy dane`.

1. agent/delivery/mx.c through tests/integration/mxprobe: TLSA at _25._tcp.<mx> of a
   signed zone comes back secure with the right data; MX hosts of a signed
   zone are secure; no TLSA in a signed zone is a secure empty answer; TLSA
   in an unsigned zone is not secure; a wrong trust anchor (bogus) is a
   temporary failure, never an insecure answer.
2. The daemon under `dane`: the TLSA record matches the Postfix certificate
   -> delivered over TLS; the TLSA record does not match -> deferred and
   nothing reaches Postfix (never sent in clear); no TLSA in a signed zone,
   or a TLSA in an unsigned zone -> delivered as `may`; a DANE-TA record
   (2 0 1) of the test CA -> delivered.
3. tls.policy: source dane with the MX host, its DNSSEC flag and TLSA
   count for the signed zone, configured (TLSA 0) without a TLSA record, no
   DNSSEC in the unsigned zone; the MX and TLSA lookups are the fetch
   process's (event=fetch_dns with its pid), not the main process's.
"""
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, TOP_BUILDDIR  # noqa: E402
from peers import DnsServer, PostfixPeer, TestCA, Zone, tlsa_rdata  # noqa: E402

MXPROBE = os.path.join(TOP_BUILDDIR, "tests", "integration", "mxprobe")
DNS_ADDR = "127.0.2.53"
RESOLVER = DNS_ADDR + "@5353"
GOOD_MX = "127.0.2.10"
BAD_MX = "127.0.2.11"


def probe(args, anchor):
    cmd = [MXPROBE, "-r", RESOLVER]
    if anchor:
        cmd += ["-a", anchor]
    r = subprocess.run(cmd + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    return r.stdout.decode(errors="replace")


def field(out, prefix):
    for line in out.splitlines():
        if line.startswith(prefix):
            return line
    return ""


def zones(good_tlsa, bad_tlsa, ta_tlsa):
    return [
        Zone("dane.example.net", [
            "@ MX 10 mx",
            "mx A %s" % GOOD_MX,
            "_25._tcp.mx TLSA %s" % good_tlsa,
            "notlsa A %s" % GOOD_MX,
            "plain MX 10 notlsa",
            "ta MX 10 mxta",
            "mxta A %s" % GOOD_MX,
            "_25._tcp.mxta TLSA %s" % ta_tlsa,
        ], signed=True),
        Zone("danebad.example.net", [
            "@ MX 10 mx",
            "mx A %s" % BAD_MX,
            "_25._tcp.mx TLSA %s" % bad_tlsa,
        ], signed=True),
        Zone("example.org", [
            "@ MX 10 mx",
            "mx A %s" % GOOD_MX,
            "_25._tcp.mx TLSA %s" % good_tlsa,
        ]),
    ]


def probe_tests(t, dns, good_tlsa):
    ta = dns.trust_anchor
    out = probe(["tlsa", "mx.dane.example.net"], ta)
    want = "rr " + good_tlsa.lower()
    t.ok("status=ok" in out and "tlsa secure=1 n=1" in out and want in out,
         "signed zone: TLSA secure with the certificate's digest", out)

    out = probe(["mx", "dane.example.net"], ta)
    t.ok("status=ok" in out and
         "host name=mx.dane.example.net pref=10 secure=1" in out,
         "signed zone: MX host secure", out)

    out = probe(["tlsa", "notlsa.dane.example.net"], ta)
    t.ok("status=ok" in out and "tlsa secure=1 n=0" in out,
         "signed zone without TLSA: secure empty answer", out)

    out = probe(["tlsa", "mx.example.org"], ta)
    t.ok("status=ok" in out and "tlsa secure=0 n=1" in out,
         "unsigned zone: TLSA present but not secure", out)
    out = probe(["mx", "example.org"], ta)
    t.ok("status=ok" in out and "secure=0" in out,
         "unsigned zone: MX host not secure", out)

    out = probe(["tlsa", "mx.dane.example.net"], None)
    t.ok("status=ok" in out and "tlsa secure=0" in out,
         "no trust anchor: signed zone not secure", out)

    # a trust anchor that does not match the zone's key: bogus
    bad = os.path.join(dns.dir, "bad-anchor")
    with open(ta) as f, open(bad, "w") as g:
        for line in f:
            parts = line.split()
            if len(parts) >= 7 and parts[0] == "dane.example.net.":
                d = parts[-1]
                parts[-1] = ("0" if d[0] != "0" else "1") + d[1:]
            g.write(" ".join(parts) + "\n")
    out = probe(["tlsa", "mx.dane.example.net"], bad)
    t.ok("status=tempfail" in out and "DNSSEC" in out,
         "bogus TLSA answer: temporary failure", out)
    out = probe(["mx", "dane.example.net"], bad)
    t.ok("status=tempfail" in out, "bogus MX answer: temporary failure", out)


def wait_status(d, qid, pred, timeout):
    deadline = time.time() + timeout
    r = None
    while time.time() < deadline:
        r = d.call({"op": "message.status", "id": qid})
        if pred(r):
            return r, True
        time.sleep(0.3)
    return r, False


def policy_tests(t, d):
    """tls.policy under dane: lookups through the fetch process."""
    def policy(dom):
        return d.call({"op": "tls.policy", "domain": dom}, timeout=60)

    p = policy("dane.example.net")
    t.ok(p.get("source") == "dane" and p.get("mx") == [
        {"host": "mx.dane.example.net", "dnssec": True, "tlsa": 1}],
        "tls.policy: source dane, the MX host secure with 1 TLSA record", p)
    p = policy("plain.dane.example.net")
    t.ok(p.get("source") == "configured" and p.get("mx") == [
        {"host": "notlsa.dane.example.net", "dnssec": True, "tlsa": 0}],
        "tls.policy: signed zone without TLSA: configured, TLSA 0", p)
    p = policy("example.org")
    t.ok(p.get("source") == "configured" and p.get("mx") == [
        {"host": "mx.example.org", "dnssec": False}],
        "tls.policy: unsigned zone: not secure, TLSA not asked", p)
    pid = re.findall(r"event=fetch_process_started pid=(\d+)", d.log_text())[-1:]
    log = d.log_text()
    t.ok(pid and re.search(r"event=fetch_dns kind=mx name=dane.example.net status=ok "
                           r"records=0 hosts=1 pid=%s\b" % pid[0], log) and
         re.search(r"event=fetch_dns kind=tlsa name=mx.dane.example.net status=ok "
                   r".*pid=%s\b" % pid[0], log),
         "the MX and TLSA lookups of tls.policy were the fetch process's", pid)


def daemon_tests(t, dns, good, bad):
    conf = ("sandbox = no\n%s"
            "hostname = otpmail.example.com\n"
            "tls_policy = may\n"
            "domain_tls_policy = dane.example.net dane\n"
            "domain_tls_policy = danebad.example.net dane\n"
            "domain_tls_policy = plain.dane.example.net dane\n"
            "domain_tls_policy = ta.dane.example.net dane\n"
            "domain_tls_policy = example.org dane\n"
            "default_retry_min = 60s\n"
            "smtp_connect_timeout = 5s\n" % dns.conf_extra())
    try:
        d = Daemon(conf_extra=conf)
    except (RuntimeError, OSError) as e:
        t.ok(False, "otpmaild starts with the DANE policies", e)
        return
    with d, PostfixPeer(GOOD_MX, 25, domains=["dane.example.net",
                                              "plain.dane.example.net",
                                              "ta.dane.example.net",
                                              "example.org"],
                        hostname="mx.dane.example.net", cert=good) as pg, \
            PostfixPeer(BAD_MX, 25, domains=["danebad.example.net"],
                        hostname="mx.danebad.example.net", cert=bad) as pb:
        policy_tests(t, d)
        r = d.call({"op": "mail.send", "from": "app@sender.example.com",
                    "to": ["bob@dane.example.net"], "subject": "dane ok",
                    "text": "hello over DANE\n"})
        if not t.ok(r.get("ok"), "mail.send to the DANE domain accepted", r):
            return
        try:
            msgs = pg.wait_for(1, 40)
            data = msgs[0].data.decode(errors="replace")
            t.ok("using TLS" in data,
                 "matching TLSA: delivered, over TLS", data[:800])
        except RuntimeError as e:
            t.ok(False, "matching TLSA: delivered, over TLS",
                 "%s\n%s" % (e, d.log_text()[-3000:]))

        r = d.call({"op": "mail.send", "from": "app@sender.example.com",
                    "to": ["bob@danebad.example.net"], "subject": "dane bad",
                    "text": "must not travel\n"})
        qid = r.get("id")
        st, seen = wait_status(
            d, qid, lambda x: "defer" in str(x).lower(), 40)
        t.ok(seen, "TLSA mismatch: deferred", st)
        t.diag("deferred with: %s" % (st or {}).get("last_error"))
        time.sleep(2)
        t.ok(not pb.messages(), "TLSA mismatch: nothing delivered",
             pb.log()[-2000:])

        # dane without a TLSA record (secure denial) or in an unsigned zone
        # behaves as "may"; a DANE-TA (2 0 1) record of the CA also matches
        for n, (to, name) in enumerate((
                ("carol@plain.dane.example.net", "signed zone, no TLSA: delivered as may"),
                ("dave@example.org", "unsigned zone: TLSA ignored, delivered as may"),
                ("erin@ta.dane.example.net", "DANE-TA record of the CA: delivered"))):
            r = d.call({"op": "mail.send", "from": "app@sender.example.com",
                        "to": [to], "subject": "dane %d" % n, "text": "hi\n"})
            try:
                msgs = pg.wait_for(n + 2, 40)
                t.ok(any(m.rcpt == to for m in msgs), name)
            except RuntimeError as e:
                st, _ = wait_status(d, r.get("id"), lambda x: True, 1)
                t.ok(False, name, "%s\n%s" % (e, st))


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_dane", "needs root")
        t.done()
    if not os.path.exists(MXPROBE):
        t.ok(False, "mxprobe built", MXPROBE)
        t.done()
    with TestCA() as ca:
        good = ca.issue("mx.dane.example.net", alt=("mxta.dane.example.net",))
        bad = ca.issue("mx.danebad.example.net")
        other = ca.issue("someone-else.example.net")
        good_tlsa = tlsa_rdata(good.cert, 3, 1, 1)
        # danebad publishes the digest of a different key than it serves
        bad_tlsa = tlsa_rdata(other.cert, 3, 1, 1)
        ta_tlsa = tlsa_rdata(ca.ca_file, 2, 0, 1)
        with DnsServer(zones(good_tlsa, bad_tlsa, ta_tlsa), addr=DNS_ADDR,
                       port=5353) as dns:
            probe_tests(t, dns, good_tlsa)
            if os.environ.get("OTPMAIL_MX_PROBE_ONLY"):
                t.done()
            daemon_tests(t, dns, good, bad)
    t.done()


if __name__ == "__main__":
    main()
