#!/usr/bin/python3
"""test_tlsrpt.py - TLS-RPT (RFC 8460) reports against real peers.

Starts: NSD on 127.0.6.53:5353; a test CA; nginx on 127.0.6.80:443 with
the MTA-STS policy of rpt.example.net; Postfix with STARTTLS on
127.0.6.10:25 (MX of rpt.example.net and of reports.example.org, where the
reports go) and Postfix without STARTTLS on 127.0.6.11:25 (MX of
rptplain.example.net); otpmaild with DKIM keys for example.org and
tls_rpt_from = tlsrpt-noreply@example.org.

- a delivery under rpt.example.net's MTA-STS policy (success, policy-type
  sts) and one to rptplain.example.net (starttls-not-supported, no policy);
- tls.report (`otpmailctl tls report`) queues one report per domain; they
  reach tlsrpt@reports.example.org through the queue with the RFC's
  headers (Subject, TLS-Report-Domain, TLS-Report-Submitter,
  multipart/report; report-type="tlsrpt") and an application/tlsrpt+gzip
  part whose JSON validates against the RFC 8460 schema (python3-jsonschema)
  and holds the right counts; both DKIM signatures verify (python3-dkim);
- a second tls.report with nothing new sends nothing.
"""
import email
import email.policy
import gzip
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_dkim import Keys, verify, write_conf_keys  # noqa: E402
from test_mtasts import internal_conf  # noqa: E402
from harness import Daemon, Tap  # noqa: E402
from peers import DnsServer, HttpsServer, PostfixPeer, TestCA, Zone, _mkdtemp  # noqa: E402
import jsonschema  # noqa: E402

DNS_ADDR, WEB, MX_TLS, MX_PLAIN = "127.0.6.53", "127.0.6.80", "127.0.6.10", "127.0.6.11"
RUA = '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example.org"'

# RFC 8460 section 4.4 (report JSON), as a JSON schema
SCHEMA = {
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id",
                 "policies"],
    "properties": {
        "organization-name": {"type": "string"},
        "contact-info": {"type": "string"},
        "report-id": {"type": "string"},
        "date-range": {
            "type": "object", "required": ["start-datetime", "end-datetime"],
            "properties": {
                "start-datetime": {"type": "string", "pattern":
                                   r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
                "end-datetime": {"type": "string", "pattern":
                                 r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"}}},
        "policies": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["policy", "summary"],
            "properties": {
                "policy": {
                    "type": "object", "required": ["policy-type", "policy-domain"],
                    "properties": {
                        "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                        "policy-string": {"type": "array", "items": {"type": "string"}},
                        "policy-domain": {"type": "string"},
                        "mx-host": {"type": "array", "items": {"type": "string"}}}},
                "summary": {
                    "type": "object",
                    "required": ["total-successful-session-count",
                                 "total-failure-session-count"],
                    "properties": {
                        "total-successful-session-count": {"type": "integer",
                                                           "minimum": 0},
                        "total-failure-session-count": {"type": "integer",
                                                        "minimum": 0}}},
                "failure-details": {"type": "array", "items": {
                    "type": "object", "required": ["result-type",
                                                   "failed-session-count"],
                    "properties": {
                        "result-type": {"enum": [
                            "starttls-not-supported", "certificate-host-mismatch",
                            "certificate-expired", "certificate-not-trusted",
                            "validation-failure", "tlsa-invalid", "dnssec-invalid",
                            "dane-required", "sts-policy-fetch-error",
                            "sts-policy-invalid", "sts-webpki-invalid"]},
                        "sending-mta-ip": {"type": "string"},
                        "receiving-mx-hostname": {"type": "string"},
                        "receiving-mx-helo": {"type": "string"},
                        "receiving-ip": {"type": "string"},
                        "failed-session-count": {"type": "integer", "minimum": 1},
                        "additional-information": {"type": "string"},
                        "failure-reason-code": {"type": "string"}}}}}}},
    },
}


def zones():
    return [
        Zone("rpt.example.net", ["@ MX 10 mx", "mx A %s" % MX_TLS,
                                 "mta-sts A %s" % WEB,
                                 '_mta-sts TXT "v=STSv1; id=1"', RUA]),
        Zone("rptplain.example.net", ["@ MX 10 mx", "mx A %s" % MX_PLAIN, RUA]),
        Zone("reports.example.org", ["@ MX 10 mx", "mx A %s" % MX_TLS]),
    ]


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_tlsrpt", "needs root")
        t.done()
    kd = _mkdtemp("otpm-rpt-keys-", 0o700)
    keys = Keys(kd)
    with TestCA() as ca, DnsServer(zones(), addr=DNS_ADDR, port=5353) as dns:
        mx = ca.issue("mx.rpt.example.net", alt=("mx.reports.example.org",))
        web = ca.issue("mta-sts.rpt.example.net")
        with HttpsServer(web, addr=WEB) as https, \
                PostfixPeer(MX_TLS, 25, domains=["rpt.example.net", "reports.example.org"],
                            hostname="mx.rpt.example.net", cert=mx) as pf, \
                PostfixPeer(MX_PLAIN, 25, domains=["rptplain.example.net"],
                            hostname="mx.rptplain.example.net", tls=False) as plain:
            https.put("mta-sts.rpt.example.net", "/.well-known/mta-sts.txt",
                      "version: STSv1\nmode: enforce\nmx: mx.rpt.example.net\n"
                      "max_age: 86400\n")
            conf = ("sandbox = no\n%s" % dns.conf_extra() + internal_conf() +
                    write_conf_keys(keys) +
                    "hostname = otpmail.example.org\n"
                    "tls_ca_file = %s\n"
                    "tls_rpt_from = tlsrpt-noreply@example.org\n"
                    "default_retry_min = 60s\n" % ca.ca_file)
            with Daemon(conf_extra=conf) as d:
                run(t, d, keys, pf, plain)
    shutil.rmtree(kd, ignore_errors=True)
    t.done()


def report_of(m):
    for part in m.walk():
        if part.get_content_type() == "application/tlsrpt+gzip":
            return json.loads(gzip.decompress(part.get_payload(decode=True))), part
    return None, None


def run(t, d, keys, pf, plain):
    for to in ("bob@rpt.example.net", "carol@rptplain.example.net"):
        r = d.call({"op": "mail.send", "from": "app@example.org", "to": [to],
                    "subject": "hello", "text": "hi\n"})
        t.ok(r.get("ok"), "mail.send to %s" % to, r)
    try:
        pf.wait_for(1, 30)
        plain.wait_for(1, 30)
    except RuntimeError as e:
        t.ok(False, "both delivered", "%s\n%s" % (e, d.log_text()[-3000:]))
        return
    out = d.ctl("tls", "report")
    t.ok(out.returncode == 0 and "reports_queued: 2" in out.stdout,
         "otpmailctl tls report queues one report per domain",
         out.stdout + out.stderr + d.log_text()[-1500:])
    try:
        msgs = [m for m in pf.wait_for(3, 30) if m.rcpt == "tlsrpt@reports.example.org"]
    except RuntimeError as e:
        t.ok(False, "reports delivered through the queue", str(e))
        return
    t.is_(len(msgs), 2, "two reports delivered to the rua address")
    seen = {}
    for msg in msgs:
        m = email.message_from_bytes(msg.data, policy=email.policy.default)
        dom = m["TLS-Report-Domain"]
        ok, vout = verify(keys, msg.data)
        t.ok(ok, "report for %s: both DKIM signatures verify" % dom, vout)
        t.ok(m.get_content_type() == "multipart/report" and
             m.get_param("report-type") == "tlsrpt" and
             m["TLS-Report-Submitter"] == "otpmail.example.org" and
             str(m["Subject"]).startswith("Report Domain: %s Submitter: "
                                          "otpmail.example.org Report-ID: <" % dom),
             "report for %s: RFC 8460 headers" % dom, str(m)[:800])
        rep, part = report_of(m)
        t.ok(rep is not None and part.get_filename().startswith(
            "otpmail.example.org!%s!" % dom) and part.get_filename().endswith(".json.gz"),
             "report for %s: application/tlsrpt+gzip part, RFC file name" % dom,
             part and part.get_filename())
        try:
            jsonschema.validate(rep, SCHEMA)
            t.ok(True, "report for %s: JSON validates against the RFC 8460 schema" % dom)
        except jsonschema.ValidationError as e:
            t.ok(False, "report for %s: JSON validates against the RFC 8460 schema" % dom,
                 "%s\n%s" % (e.message, rep))
        seen[dom] = rep
    sts = seen.get("rpt.example.net", {}).get("policies", [{}])[0]
    t.ok(sts.get("policy", {}).get("policy-type") == "sts" and
         sts["policy"].get("mx-host") == ["mx.rpt.example.net"] and
         "mode: enforce" in sts["policy"].get("policy-string", []) and
         sts.get("summary", {}).get("total-successful-session-count") == 1,
         "rpt.example.net: sts policy, 1 successful session", sts)
    pl = seen.get("rptplain.example.net", {}).get("policies", [{}])[0]
    fd = pl.get("failure-details", [{}])[0]
    t.ok(pl.get("policy", {}).get("policy-type") == "no-policy-found" and
         pl.get("summary", {}).get("total-failure-session-count") == 1 and
         fd.get("result-type") == "starttls-not-supported" and
         fd.get("receiving-mx-hostname") == "mx.rptplain.example.net",
         "rptplain.example.net: starttls-not-supported counted", pl)
    log = d.log_text()
    t.ok(log.count("event=tlsrpt_report id=") == 2, "each report leaves a log line")
    # the reports' own delivery is counted again; the rest is empty
    r = d.call({"op": "tls.report"})
    t.ok(r.get("ok") and r.get("reports_failed") == 0 and
         r.get("reports_queued", 9) <= 1,
         "a second tls.report only covers the reports' own deliveries", r)
    m = d.call({"op": "metrics"}).get("text", "")
    t.ok('what="tlsrpt_report",result="queued"' in m, "reports counted in the metrics")


if __name__ == "__main__":
    main()
