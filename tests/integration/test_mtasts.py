#!/usr/bin/python3
"""test_mtasts.py - MTA-STS (RFC 8461) against real peers.

Starts: NSD on 127.0.3.53:5353 (MX, A and _mta-sts TXT records of five
domains), a test CA, nginx on 127.0.3.80:443 serving the policies at
https://mta-sts.<domain>/.well-known/mta-sts.txt, Postfix with STARTTLS on
127.0.3.10:25 (a certificate for the MX names) and 127.0.3.11:25 (a
certificate for another name), and otpmaild with tls_ca_file = the test CA.

- enforce, MX listed, valid certificate: delivered over verified TLS;
  tls.policy / `otpmailctl tls policy` say source mta-sts;
- enforce, certificate for another name: deferred with a clear reason,
  nothing reaches that server;
- enforce, MX not listed in the policy: deferred without connecting;
- testing, bad certificate: delivered, the failure logged and counted;
- TXT record but no policy (404): delivered as without a policy, a log
  line and a metric;
- the policy is kept in <state_dir>/mta-sts.json; after a restart, with the
  TXT id changed and the policy gone from the server, the cached policy
  stays in force (a failed fetch keeps the cache);
- a domain_tls_policy entry overrides MTA-STS (source configured);
- a cached policy is fetched again half-way to its max_age without mail;
- the lookups and fetches are the fetch process's (agent/delivery/fetch.c):
  the cache keeps the main process's canonical text of the parsed policy,
  not the served file; after kill -9 of the fetch process the next lookup
  starts a new one and the policy stays in force (twice in a row: a second
  loss within a second fails the lookup softly, the cache answers).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, OTPMAILD, SCALE  # noqa: E402
from peers import DnsServer, HttpsServer, PostfixPeer, TestCA, Zone  # noqa: E402
from test_dane import wait_status  # noqa: E402

DNS_ADDR = "127.0.3.53"
WEB = "127.0.3.80"
GOOD_MX = "127.0.3.10"
BAD_MX = "127.0.3.11"
POLICY = "/.well-known/mta-sts.txt"


def internal_conf():
    """The peers of these tests are on loopback: where the daemon refuses
    MX hosts at internal addresses (mx_allow_internal), allow them."""
    p = subprocess.run([OTPMAILD, "--check-config"], capture_output=True, text=True,
                       env=dict(os.environ, OTPMAIL_CONFIG=""), cwd="/tmp")
    return ("mx_allow_internal = yes\n"
            if re.search(r"^mx_allow_internal =", p.stdout, re.M) else "")


def zones(sts_id="1"):
    z = []
    for dom, mx, addr in (("sts.example.net", "mx", GOOD_MX),
                          ("stsbad.example.net", "mx", BAD_MX),
                          ("stsnomatch.example.net", "mx", GOOD_MX),
                          ("ststest.example.net", "mx", BAD_MX),
                          ("stsfail.example.net", "mx", GOOD_MX),
                          ("stsconf.example.net", "mx", BAD_MX),
                          ("stsshort.example.net", "mx", GOOD_MX)):
        z.append(Zone(dom, [
            "@ MX 10 %s" % mx,
            "%s A %s" % (mx, addr),
            "mta-sts A %s" % WEB,
            '_mta-sts TXT "v=STSv1; id=%s"' % (sts_id if dom == "sts.example.net"
                                               else "1"),
        ]))
    return z


def policy(mode, *mx, max_age=86400):
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (
        mode, "".join("mx: %s\r\n" % m for m in mx), max_age)


def delivered(t, d, peer, n, name):
    try:
        peer.wait_for(n, 30)
        t.ok(True, name)
    except RuntimeError as e:
        t.ok(False, name, "%s\n%s" % (e, d.log_text()[-2000:]))


def send(d, to, subject):
    return d.call({"op": "mail.send", "from": "app@sender.example.com",
                   "to": [to], "subject": subject, "text": "hello\n"})


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_mtasts", "needs root")
        t.done()
    with TestCA() as ca:
        good = ca.issue("mx.sts.example.net", alt=("mx.stsnomatch.example.net",
                                                   "mx.stsfail.example.net"))
        other = ca.issue("someone-else.example.net")
        web = ca.issue("mta-sts.sts.example.net", alt=tuple(
            "mta-sts.%s.example.net" % n for n in
            ("stsbad", "stsnomatch", "ststest", "stsfail", "stsconf", "stsshort")))
        with DnsServer(zones(), addr=DNS_ADDR, port=5353) as dns, \
                HttpsServer(web, addr=WEB) as https, \
                PostfixPeer(GOOD_MX, 25, domains=["sts.example.net",
                                                  "stsfail.example.net",
                                                  "stsnomatch.example.net"],
                            hostname="mx.sts.example.net", cert=good) as pg, \
                PostfixPeer(BAD_MX, 25, domains=["stsbad.example.net",
                                                 "ststest.example.net",
                                                 "stsconf.example.net"],
                            hostname="mx.stsbad.example.net", cert=other) as pb:
            https.put("mta-sts.sts.example.net", POLICY,
                      policy("enforce", "mx.sts.example.net"))
            https.put("mta-sts.stsbad.example.net", POLICY,
                      policy("enforce", "mx.stsbad.example.net"))
            https.put("mta-sts.stsnomatch.example.net", POLICY,
                      policy("enforce", "mail.stsnomatch.example.net"))
            https.put("mta-sts.ststest.example.net", POLICY,
                      policy("testing", "*.ststest.example.net"))
            https.put("mta-sts.stsconf.example.net", POLICY,
                      policy("enforce", "mx.stsconf.example.net"))
            https.put("mta-sts.stsshort.example.net", POLICY,
                      policy("testing", "mx.stsshort.example.net", max_age=4))
            conf = ("sandbox = no\n%s%s"
                    "hostname = otpmail.example.com\n"
                    "tls_ca_file = %s\n"
                    "mta_sts_check_interval = 0s\n"
                    "mta_sts_fetch_timeout = 30s\n"
                    "domain_tls_policy = stsconf.example.net may\n"
                    "default_retry_min = 60s\n"
                    "smtp_connect_timeout = 5s\n" % (dns.conf_extra(), internal_conf(),
                                                      ca.ca_file))
            d = Daemon(conf_extra=conf)
            with d:
                run(t, d, dns, https, pg, pb)
            # a hostile domain's DNS pointing mta-sts.<domain> inside: no
            # fetch from there unless mx_allow_internal says so
            d2 = Daemon(conf_extra=conf.replace(internal_conf(), ""))
            with d2:
                p = d2.call({"op": "tls.policy", "domain": "stsbad.example.net"})
                log = d2.log_text()
                t.ok(p.get("source") != "mta-sts" and "only internal addresses" in log,
                     "without mx_allow_internal, no policy is fetched from an internal "
                     "address", (p, log[-1500:]))
    t.done()


def run(t, d, dns, https, pg, pb):
    # 1. enforce, listed MX, good certificate
    r = send(d, "bob@sts.example.net", "sts ok")
    t.ok(r.get("ok"), "mail.send to the MTA-STS domain accepted", r)
    try:
        msgs = pg.wait_for(1, 30)
        t.ok("using TLS" in msgs[0].data.decode(errors="replace"),
             "enforce: delivered over TLS")
    except RuntimeError as e:
        t.ok(False, "enforce: delivered over TLS", "%s\n%s" % (e, d.log_text()[-3000:]))
    log = d.log_text()
    t.ok("event=mta_sts_policy domain=sts.example.net" in log and
         "tls_auth=verified" in log, "policy fetched, certificate verified",
         log[-2000:])
    p = d.call({"op": "tls.policy", "domain": "sts.example.net"})
    t.ok(p.get("source") == "mta-sts" and p.get("policy") == "verify" and
         p.get("mta_sts", {}).get("mode") == "enforce" and
         p["mta_sts"].get("mx") == ["mx.sts.example.net"],
         "tls.policy: source mta-sts, enforce, the mx list", p)
    out = d.ctl("tls", "policy", "sts.example.net")
    t.ok(out.returncode == 0 and "source: mta-sts" in out.stdout,
         "otpmailctl tls policy prints the source", out.stdout + out.stderr)

    # 2. enforce, certificate for another name
    r = send(d, "bob@stsbad.example.net", "sts bad cert")
    st, seen = wait_status(d, r.get("id"), lambda x: "MTA-STS" in json.dumps(x), 30)
    t.ok(seen and "certificate" in json.dumps(st),
         "enforce, wrong certificate: deferred, reason names MTA-STS and the certificate", st)

    # 3. enforce, MX not in the policy
    r = send(d, "bob@stsnomatch.example.net", "sts nomatch")
    st, seen = wait_status(d, r.get("id"), lambda x: "does not list" in json.dumps(x), 30)
    t.ok(seen, "enforce, MX not listed: deferred with the reason", st)

    # 4. testing, bad certificate: delivered, reported
    r = send(d, "bob@ststest.example.net", "sts testing")
    st, seen = wait_status(d, r.get("id"), lambda x: "delivered" in json.dumps(x), 30)
    t.ok(seen, "testing, wrong certificate: delivered anyway", st)
    log = d.log_text()
    t.ok("event=mta_sts_violation mode=testing domain=ststest.example.net" in log and
         "certificate-host-mismatch" in log, "testing: the failure is logged", log[-2000:])
    p = d.call({"op": "tls.policy", "domain": "ststest.example.net"})
    t.ok(p.get("tls_sessions", {}).get("failed", 0) >= 1,
         "testing: the failure is counted for TLS-RPT", p)
    # nothing of stsbad reached the wrong server, ststest did
    try:
        rcpts = [m.rcpt for m in pb.wait_for(1, 20)]
    except RuntimeError as e:
        rcpts = [str(e)]
    t.ok("bob@stsbad.example.net" not in rcpts and "bob@ststest.example.net" in rcpts,
         "only the testing-mode message reached the mismatching server", rcpts)

    # 5. TXT record, no policy on the server (404)
    send(d, "bob@stsfail.example.net", "sts fetch fails")
    delivered(t, d, pg, 2, "policy fetch fails (404): delivered as without a policy")
    log = d.log_text()
    t.ok("event=mta_sts_fetch_failed domain=stsfail.example.net" in log and
         "HTTP status 404" in log, "fetch failure logged", log[-2000:])
    m = d.call({"op": "metrics"}).get("text", "")
    t.ok('what="mta_sts_fetch",result="sts-policy-fetch-error"' in m,
         "fetch failure counted in the metrics",
         [x for x in m.splitlines() if "policy_events" in x])

    # 6. configured policy overrides MTA-STS
    p = d.call({"op": "tls.policy", "domain": "stsconf.example.net"})
    t.ok(p.get("source") == "configured" and p.get("policy") == "may",
         "domain_tls_policy overrides MTA-STS: source configured", p)
    p = d.call({"op": "tls.policy", "domain": "nothing.example.net"})
    t.ok(p.get("source") == "default", "no policy anywhere: source default", p)
    p = d.call({"op": "tls.policy", "domain": "bad domain\n"})
    t.ok(p.get("error") == "bad_request", "tls.policy refuses a bad domain", p)

    # 7. a policy is fetched again before it lapses, with no mail to its domain
    p = d.call({"op": "tls.policy", "domain": "stsshort.example.net"})
    t.ok(p.get("mta_sts", {}).get("max_age") == 4, "short-lived policy fetched", p)
    deadline = time.time() + 20
    while time.time() < deadline and d.log_text().count(
            "event=mta_sts_policy domain=stsshort.example.net") < 2:
        time.sleep(0.5)
    t.ok(d.log_text().count("event=mta_sts_policy domain=stsshort.example.net") >= 2,
         "refreshed before it lapses (max_age 4 s), without mail to the domain")

    # 8. persisted; after a restart, a changed id whose fetch fails keeps the cache
    path = os.path.join(d.state, "mta-sts.json")
    try:
        with open(path) as f:
            cache = json.load(f)
        t.ok("sts.example.net" in cache.get("policies", {}) and
             oct(os.stat(path).st_mode & 0o777) == "0o600",
             "policy cache written to the state directory (0600)", cache)
    except (OSError, ValueError) as e:
        t.ok(False, "policy cache written to the state directory (0600)", str(e))
    d.stop()
    https.put("mta-sts.sts.example.net", POLICY, None)
    dns.reload(zones(sts_id="2"))
    d.start()
    p = d.call({"op": "tls.policy", "domain": "sts.example.net"})
    t.ok(p.get("source") == "mta-sts" and p.get("mta_sts", {}).get("from_cache") and
         p["mta_sts"].get("id") == "1",
         "after a restart, new id, fetch fails: the cached policy stays in force", p)
    send(d, "carol@sts.example.net", "sts from cache")
    delivered(t, d, pg, 3, "delivered under the cached policy")

    # 9. the fetch process: parsed there, written canonically here; kill -9
    with open(path) as f:
        text = json.load(f)["policies"]["sts.example.net"]["text"]
    t.ok(text == "version: STSv1\nmode: enforce\nmax_age: 86400\nmx: mx.sts.example.net\n",
         "the cache holds the main process's canonical text of the parsed policy", text)
    def last_pid():
        return re.findall(r"event=fetch_process_started pid=(\d+)", d.log_text())[-1]

    for k in (1, 2):
        pid = last_pid()
        os.kill(int(pid), signal.SIGKILL)
        p = d.call({"op": "tls.policy", "domain": "sts.example.net"})
        t.ok(p.get("source") == "mta-sts" and p.get("mta_sts", {}).get("mode") == "enforce",
             "kill -9 of the fetch process (%d): the policy stays in force" % k, p)
        # the next lookups (a second apart at most) start a new one
        deadline = time.time() + 10 * SCALE
        while time.time() < deadline and last_pid() == pid:
            d.call({"op": "tls.policy", "domain": "sts.example.net"})
            time.sleep(0.2)
    log = d.log_text()
    # exactly two: a process started by a control thread outlives it
    t.ok(log.count("event=fetch_process_lost") == 2 and
         len(re.findall(r"event=fetch_process_started pid=(\d+)", log)) >= 3,
         "each loss logged, a new fetch process started", log[-1500:])


if __name__ == "__main__":
    main()
