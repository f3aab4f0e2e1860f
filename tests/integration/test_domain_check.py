#!/usr/bin/python3
"""test_domain_check.py - domain.check / `otpmailctl domain check`, and the
exit codes of `dkim check` and `dkim records`.

Starts: NSD on 127.0.5.53:5353 serving example.org (DKIM records of the
daemon's RSA and Ed25519 keys, SPF, DMARC, TLS-RPT, the host's A record),
example.net (a wrong DKIM record, an SPF record that excludes the host, no
DMARC) and the reverse zone of the host's address; otpmaild (delivery on,
hostname otpmail.example.org) with the keys.

- example.org: every DKIM key OK, SPF allows the host's address, DMARC OK,
  FCrDNS OK, MTA-STS WARN (none published), TLS-RPT OK; exit status 0;
- example.net: DKIM FAIL (mismatch), SPF FAIL, DMARC WARN suggesting
  p=none with rua, exit status 1; `dkim check` exits 1 on the mismatch;
- a domain with no key: DKIM FAIL; a bad domain name: bad_request;
- the lookups are the fetch process's (agent/delivery/fetch.c), logged
  there with its pid; a hostile zone (many.example.org: 41 MX hosts, one
  with a 200-byte name, 18 addresses on the first, 41 KB of TXT records at
  _dmarc with one of 5000 bytes) comes back cut to the fetch frame's
  bounds (16 hosts) and domain.check still answers; after kill -9 of the
  fetch process domain.check answers again from a new one (or says
  unavailable, naming the fetch process, while it restarts);
- a fetch process that never answers a request (the test hook
  OTPMAIL_TEST_FETCH_HANG; OTPMAIL_TEST_FETCH_SLACK=1 with 1 s HTTP timeouts
  makes the request timeout 2 s): domain.check still answers within it, the
  process is logged lost ("no answer in time") and ended, and a new one
  answers the next requests;
- requests reuse a few standing connections to the fetch process: 120
  domain.checks from 10 clients at once open at most 8 pooled connections
  (and a few used once, past those), and the descriptor counts of both
  processes stay flat; a reply that comes
  after its request was answered (the test hook OTPMAIL_TEST_FETCH_LATE,
  as a timed-out request's reply would) is not taken as the next
  request's: its id differs, the process is ended, and the next requests
  get their own answers from a new one;
- `dkim records` on a daemon without keys says so; --check-config warns
  about a missing key for otp_from's domain and about Ed25519-only keys.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_dkim import Keys, txt_zone_line, write_conf_keys  # noqa: E402
from test_mtasts import internal_conf  # noqa: E402
from harness import Daemon, Tap, OTPMAILD, SCALE  # noqa: E402
from peers import DnsServer, Zone, _mkdtemp  # noqa: E402

DNS_ADDR = "127.0.5.53"
HOST_IP = "198.18.5.25"        # not a locally served zone in libunbound
HOST = "otpmail.example.org"
LATE = "late.example.org"      # answered twice by the fetch process (test hook)
HANG = "hang.example.org"      # never answered by the fetch process (test hook)
# the request timeout: the HTTP timeouts (1 s here) + the slack (test hook)
TIMEOUT_CONF = "mta_sts_fetch_timeout = 1s\nwebhook_timeout = 1s\n"
FETCH_TIMEOUT = 2
POOL_MAX = 8                   # FETCH_POOL_MAX (agent/delivery/fetch.c)
LONG = ".".join(["l%02d" % i + "x" * 60 for i in range(3)]) + ".many"


def hostile():
    """many.example.org: more MX hosts, addresses and TXT bytes than the
    fetch frame carries."""
    r = ['many TXT "v=spf1 mx -all"', "many MX 5 mx00.many", "many MX 6 %s" % LONG,
         "%s A 198.18.7.200" % LONG]
    # 18 addresses: the 8 A records (mx.c keeps 8 per family, in the order
    # the resolver gives, which may rotate) all kept, 2 of the 10 AAAA cut
    r += ["mx00.many A %s" % HOST_IP]
    r += ["mx00.many A 198.18.5.%d" % i for i in range(1, 8)]
    r += ["mx00.many AAAA 2001:db8::%d" % i for i in range(1, 11)]
    for i in range(1, 40):
        r += ["many MX %d mx%02d.many" % (10 + i, i), "mx%02d.many A 198.18.7.%d" % (i, i)]
    r += [txt_zone_line("_dmarc.many", "filler%02d " % i + "x" * 2990) for i in range(12)]
    r += [txt_zone_line("_dmarc.many", "v=DMARC1; p=none; rua=mailto:dmarc@example.org; "
                        "x=" + "y" * 4950)]
    return r


def zones(keys, wrong):
    return [
        Zone("example.org", [
            txt_zone_line("rsa1._domainkey", keys.rsa_txt),
            txt_zone_line("ed1._domainkey", keys.ed_txt),
            '@ TXT "v=spf1 ip4:198.18.5.0/24 -all"',
            '_dmarc TXT "v=DMARC1; p=none; rua=mailto:dmarc@example.org"',
            '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@example.org"',
            "otpmail A %s" % HOST_IP,
        ] + hostile()),
        Zone("example.net", [
            txt_zone_line("rsa1._domainkey", wrong.rsa_txt),
            '@ TXT "v=spf1 ip4:10.0.0.1 -all"',
        ]),
        Zone("5.18.198.in-addr.arpa", ["25 PTR %s." % HOST]),
    ]


def lines(r, check):
    return [c for c in r.get("checks", []) if c.get("check") == check]


def fetch_pids(d):
    return re.findall(r"event=fetch_process_started pid=(\d+)", d.log_text())


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fdkinds(pid):
    """What a process holds open, by kind (socket, pipe, file), for the diag."""
    kinds = {}
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            k = os.readlink("/proc/%d/fd/%s" % (pid, f)).split(":")[0]
        except OSError:
            continue
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def settled(pids):
    """The descriptor counts once they have not moved for a second: a
    connection used once is closed by the fetch process's thread shortly after
    its answer, and libunbound's thread closes a query's socket once it is
    answered or given up."""
    deadline = time.time() + 6 * SCALE
    last, same = None, 0
    while time.time() < deadline:
        now = [nfds(p) for p in pids]
        same = same + 1 if now == last else 0
        if same >= 5:
            return now
        last = now
        time.sleep(0.2)
    return last


def pool(t, d, pid):
    """Many requests, several at once, over a few standing connections."""
    def client(k, j):
        for i in range(6):
            d.call({"op": "domain.check", "domain": "p%d-%d-%d.example.org" % (k, j, i)})

    def batch(k):
        th = [threading.Thread(target=client, args=(k, j)) for j in range(10)]
        for x in th:
            x.start()
        for x in th:
            x.join()

    def pooled():
        return len(re.findall(r"event=fetch_connection_opened pool=yes open=\d+ pid=%s\b"
                              % pid, d.log_text()))

    pids = [d.pid(), int(pid)]
    batch(0)
    before, pool_before = settled(pids), pooled()
    kinds_before = [fdkinds(p) for p in pids]
    batch(1)
    after, pool_after = settled(pids), pooled()
    # The pool may still grow toward its bound in the second batch (the first
    # need not have had 8 requests in flight at once): each pooled connection
    # opened then is one descriptor in either process, and nothing else may
    # stay open.
    grown = pool_after - pool_before
    t.ok(after == [n + grown for n in before] and pool_after <= POOL_MAX,
         "120 domain.checks from 10 clients at once: the descriptors of "
         "the main and fetch processes stay flat",
         (before, after, pool_before, pool_after, kinds_before, [fdkinds(p) for p in pids]))
    log = d.log_text()
    opened = re.findall(r"event=fetch_connection_opened pool=(yes|no) open=\d+ pid=%s\b" %
                        pid, log)
    lookups = len(re.findall(r"event=fetch_dns .*pid=%s\b" % pid, log))
    t.ok(0 < opened.count("yes") <= POOL_MAX and len(opened) * 4 < lookups,
         "the requests reused standing connections (at most %d in the pool)" % POOL_MAX,
         (opened.count("yes"), len(opened), lookups))


def late_reply(t, d):
    """A reply after its request's on a reused connection is refused (ids)."""
    pid = fetch_pids(d)[-1]
    d.call({"op": "domain.check", "domain": LATE})
    deadline = time.time() + 10 * SCALE
    r = {}
    while time.time() < deadline:
        r = d.call({"op": "domain.check", "domain": "example.org"})
        st = {c["check"]: c["status"] for c in r.get("checks", [])}
        if r.get("ok") and st.get("spf") == "OK" and st.get("fcrdns") == "OK":
            break
        time.sleep(0.3)
    log = d.log_text()
    # the late reply is read after its request's answer (another request's id)
    # or, on a slow machine, with it in one read (more than one reply)
    t.ok(re.search(r'event=fetch_process_lost pid=%s .*detail="(a reply to another '
                   r'request|more than one reply)"' % pid, log),
         "a late reply on a reused connection: refused (by its id, or as a second "
         "reply), the process ended",
         re.findall(r"event=fetch_process_lost.*", log))
    t.ok(r.get("ok") and st.get("spf") == "OK" and st.get("fcrdns") == "OK" and
         len(fetch_pids(d)) == 3, "the next requests get their own answers, from a new "
         "fetch process", r)


def fetch_side(t, d):
    """The lookups are the fetch process's; hostile answers stay bounded."""
    pids = fetch_pids(d)
    t.is_(len(pids), 1, "one fetch process, started with the daemon (sandbox = no)")
    pid = pids[-1]
    log = d.log_text()
    for kind, name in (("host", HOST), ("txt", "example.org"), ("ptr", HOST_IP),
                       ("txt", "rsa1._domainkey.example.org.")):
        t.ok(re.search(r"event=fetch_dns kind=%s name=%s status=ok .*pid=%s\b" %
                       (kind, re.escape(name), pid), log),
             "the %s lookup of %s was the fetch process's (pid %s)" % (kind, name, pid))
    r = d.call({"op": "domain.check", "domain": "many.example.org"})
    st = {c["check"]: c for c in r.get("checks", [])}
    t.ok(r.get("ok") and st.get("spf", {}).get("status") == "OK",
         "41 MX hosts: cut to 16 in the fetch process, SPF mx still matches", r)
    log = d.log_text()
    t.ok(re.search(r"event=fetch_dns kind=mx name=many.example.org status=ok "
                   r"records=0 hosts=16 pid=%s\b" % pid, log),
         "the MX reply carried 16 hosts (DLP_FETCH_HOST_MAX)",
         re.findall(r"event=fetch_dns kind=mx name=many.*", log))
    dm = st.get("dmarc", {})
    t.ok(dm.get("status") == "OK" and len(dm.get("detail", "")) < 1100,
         "41 KB of TXT at _dmarc (one record of 5000 bytes): answered, bounded", dm)
    t.ok("fetch_process_lost" not in log, "the hostile answers did not cost the process")
    pool(t, d, pid)

    os.kill(int(pid), signal.SIGKILL)
    r = d.call({"op": "domain.check", "domain": "example.org"})
    t.ok(r.get("ok") or (r.get("error") == "unavailable" and
                         "fetch process" in r.get("detail", "")),
         "kill -9 of the fetch process: domain.check answers or says why not", r)
    deadline = time.time() + 10 * SCALE
    while not r.get("ok") and time.time() < deadline:
        time.sleep(0.3)
        r = d.call({"op": "domain.check", "domain": "example.org"})
    st = {c["check"]: c["status"] for c in r.get("checks", [])}
    t.ok(r.get("ok") and st.get("spf") == "OK" and st.get("fcrdns") == "OK",
         "domain.check answers again, from a new fetch process", r)
    pids = fetch_pids(d)
    t.ok(len(pids) == 2 and "event=fetch_process_lost pid=%s" % pid in d.log_text() and
         re.search(r"event=fetch_dns kind=ptr name=%s status=ok .*pid=%s\b" %
                   (re.escape(HOST_IP), pids[-1]), d.log_text()),
         "the loss is logged; the lookups are the new process's", pids)
    late_reply(t, d)
    hung(t, d)


def hung(t, d):
    """A fetch process that never answers: the request times out, the process
    is ended and replaced, and the next requests are answered."""
    pid = fetch_pids(d)[-1]
    t0 = time.time()
    r = d.call({"op": "domain.check", "domain": HANG}, timeout=60)
    took = time.time() - t0
    t.ok(isinstance(r, dict) and took < FETCH_TIMEOUT + 10 * SCALE,
         "a request the fetch process never answers: domain.check still answers "
         "(%.1f s, request timeout %d s)" % (took, FETCH_TIMEOUT), r)
    log = d.log_text()
    t.ok(re.search(r'event=fetch_process_lost pid=%s .*detail="no answer in time"' % pid,
                   log), "the request timed out and the stuck process was ended",
         re.findall(r"event=fetch_process_lost.*", log))
    deadline = time.time() + 10 * SCALE
    ok = False
    while not ok and time.time() < deadline:
        r = d.call({"op": "domain.check", "domain": "example.org"})
        st = {c["check"]: c["status"] for c in r.get("checks", [])}
        ok = r.get("ok") and st.get("spf") == "OK" and st.get("fcrdns") == "OK"
        if not ok:
            time.sleep(0.3)
    pids = fetch_pids(d)
    t.ok(ok and pids[-1] != pid, "a new fetch process answers the next requests", (r, pids))


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_domain_check", "needs root")
        t.done()
    kd = _mkdtemp("otpm-dc-keys-", 0o700)
    keys = Keys(kd)
    wd = _mkdtemp("otpm-dc-wrong-", 0o700)
    wrong = Keys(wd)
    with DnsServer(zones(keys, wrong), addr=DNS_ADDR, port=5353) as dns:
        conf = ("sandbox = no\n" + dns.conf_extra() + internal_conf() +
                write_conf_keys(keys) +
                "dkim_key = example.net rsa1 rsa-sha256 %s\n" % keys.rsa +
                "hostname = %s\notp_from = noreply@example.org\n" % HOST + TIMEOUT_CONF)
        with Daemon(conf_extra=conf, env={"OTPMAIL_TEST_FETCH_LATE": LATE,
                                          "OTPMAIL_TEST_FETCH_HANG": HANG,
                                          "OTPMAIL_TEST_FETCH_SLACK": "1"}) as d:
            r = d.call({"op": "domain.check", "domain": "example.org"})
            t.ok(r.get("ok"), "domain.check answers", r)
            st = {c["check"]: c["status"] for c in r.get("checks", [])}
            t.ok([c["status"] for c in lines(r, "dkim")] == ["OK", "OK"],
                 "example.org: both DKIM keys OK", lines(r, "dkim"))
            t.is_(st.get("spf"), "OK", "example.org: SPF allows the host's address")
            t.is_(st.get("dmarc"), "OK", "example.org: DMARC OK")
            t.ok(st.get("fcrdns") == "OK", "example.org: FCrDNS OK", lines(r, "fcrdns"))
            t.is_(st.get("mta-sts"), "WARN", "example.org: no MTA-STS is a warning")
            t.is_(st.get("tls-rpt"), "OK", "example.org: TLS-RPT record OK")
            out = d.ctl("domain", "check", "example.org")
            t.ok(out.returncode == 0 and "OK   spf" in out.stdout and
                 "WARN mta-sts" in out.stdout,
                 "otpmailctl domain check: one line per check, exit 0",
                 out.stdout + out.stderr)

            r = d.call({"op": "domain.check", "domain": "example.net"})
            st = {c["check"]: c["status"] for c in r.get("checks", [])}
            t.is_(st.get("dkim"), "FAIL", "example.net: DKIM mismatch FAIL")
            t.is_(st.get("spf"), "FAIL", "example.net: SPF excludes the host: FAIL")
            dm = lines(r, "dmarc")
            t.ok(dm and dm[0]["status"] == "WARN" and "p=none" in dm[0]["detail"] and
                 "rua=" in dm[0]["detail"], "example.net: no DMARC, p=none with rua suggested",
                 dm)
            out = d.ctl("domain", "check", "example.net")
            t.is_(out.returncode, 1, "otpmailctl domain check exits 1 on a FAIL")
            out = d.ctl("dkim", "check", "--domain", "example.net")
            t.is_(out.returncode, 1, "otpmailctl dkim check exits 1 on a mismatch")
            out = d.ctl("dkim", "check", "--domain", "example.org")
            t.is_(out.returncode, 0, "otpmailctl dkim check exits 0 when all match")

            r = d.call({"op": "domain.check", "domain": "nokey.example.com"})
            t.ok(lines(r, "dkim") and lines(r, "dkim")[0]["status"] == "FAIL",
                 "a domain without a key: DKIM FAIL", r)
            r = d.call({"op": "domain.check", "domain": "bad domain"})
            t.is_(r.get("error"), "bad_request", "a bad domain name is refused")
            fetch_side(t, d)

    with Daemon(conf_extra="") as d:
        out = d.ctl("dkim", "records")
        t.ok(out.returncode == 0 and "no DKIM key" in out.stdout,
             "dkim records without a key says so", out.stdout + out.stderr)

    conf = os.path.join(kd, "warn.conf")
    with open(conf, "w") as f:
        f.write("sandbox = no\nstate_dir = %s/state\nhostname = %s\n"
                "otp_from = noreply@example.com\n"
                "dkim_key = example.org ed1 ed25519-sha256 %s\n" % (kd, HOST, keys.ed))
    p = subprocess.run([OTPMAILD, "--check-config", "-c", conf], capture_output=True,
                       text=True)
    t.ok(p.returncode == 0 and "no dkim_key covers" in p.stderr and
         "only Ed25519" in p.stderr, "--check-config warns: no key for otp_from, "
         "Ed25519 only", p.stderr)
    shutil.rmtree(kd, ignore_errors=True)
    shutil.rmtree(wd, ignore_errors=True)
    t.done()


if __name__ == "__main__":
    main()
