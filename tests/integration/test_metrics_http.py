#!/usr/bin/env python3
"""test_metrics_http.py - the Prometheus scrape endpoint (metrics_listen).

Starts: otpmaild in sandbox mode with metrics_listen = 127.0.9.1:9425, and
one without it.  Drives OTP outcomes (issued, rate limited by name, wrong
and right verifications, a lock-out), scrapes GET /metrics over HTTP and
checks the counters and the process_* metrics; validates the exposition
(the HTTP one and the control socket's "metrics" op) with `promtool check
metrics` (Debian package prometheus); checks 404/405/431 answers, that a
silent client does not keep the endpoint from answering afterwards, that
the endpoint is off by default, that a bad value is a config error, and
that every metric the Grafana dashboard (examples/grafana-otpmail.json)
queries is exposed.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

from harness import Daemon, Tap, OTPMAILD, TOP_SRCDIR

t = Tap()
ADDR, PORT = "127.0.9.1", 9425
URL = "http://%s:%d/metrics" % (ADDR, PORT)


def scrape(path="/metrics", method="GET"):
    req = urllib.request.Request("http://%s:%d%s" % (ADDR, PORT, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, "", ""


def value(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


def promtool(text, label):
    if shutil.which("promtool") is None:
        t.skip("promtool check metrics: " + label, "promtool not installed (prometheus)")
        return
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    t.ok(p.returncode == 0, "promtool check metrics: " + label, p.stdout + p.stderr)


conf = ("metrics_listen = %s:%d\notp_lockout_after = 2\notp_max_failures_per_code = 5\n"
        % (ADDR, PORT))
with Daemon(conf_extra=conf) as d:
    to = "m@example.org"
    d.call({"op": "otp.issue", "to": to, "purpose": "login"})
    r = d.call({"op": "otp.issue", "to": to, "purpose": "login"})
    t.is_(r.get("error"), "rate_limited", "a second issue is rate limited")
    limit = r.get("limit", "")
    for _ in range(3):
        d.call({"op": "otp.verify", "to": to, "purpose": "login", "code": "000000"})

    status, ctype, text = scrape()
    t.is_(status, 200, "GET /metrics: 200")
    t.ok(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
         "Content-Type is the Prometheus text format", ctype)
    t.is_(value(text, "otpmail_otp_issued_total"), 1.0, "otp issued counter")
    t.is_(value(text, "otpmail_rate_limited_total",
                '{op="otp.issue",limit="%s"}' % limit), 1.0,
          "rate limited, by op and limit name (%s)" % limit)
    wrong = value(text, "otpmail_otp_verifications_total", '{result="invalid_code"}') or 0
    locked = value(text, "otpmail_otp_verifications_total", '{result="locked"}') or 0
    t.ok(wrong >= 1 and wrong + locked == 3, "verifications by result", text[:3000])
    t.ok(locked == (value(text, "otpmail_otp_locked_total") or 0),
         "locked_total counts the lock-out refusals")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_virtual_memory_bytes", "process_start_time_seconds",
                 "process_open_fds", "process_max_fds"):
        t.ok((value(text, name) or 0) > 0, "%s is exposed" % name)
    t.ok(value(text, "otpmail_queue_messages", '{state="done"}') is not None,
         "queue depth is exposed")
    promtool(text, "the HTTP endpoint")
    op_text = d.call({"op": "metrics"})["text"]
    promtool(op_text, "the control socket's metrics op")

    t.is_(scrape("/")[0], 404, "GET / is 404")
    t.is_(scrape("/metrics", "POST")[0], 405, "POST is 405")
    t.is_(scrape("/metrics", "HEAD")[0], 200, "HEAD is 200")
    got = b""
    try:
        with socket.create_connection((ADDR, PORT), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n")
            got = s.recv(100)
    except ConnectionResetError:
        got = b"reset"      # the unread rest of the request may reset the 431
    t.ok(got.startswith(b"HTTP/1.1 431") or got == b"reset",
         "an oversized request head: 431, never the metrics", got)
    silent = socket.create_connection((ADDR, PORT), timeout=10)
    silent2 = socket.create_connection((ADDR, PORT), timeout=10)
    silent2.sendall(b"GET /metr")
    status, _, _ = scrape()
    t.is_(status, 200, "silent and half-sent clients do not stop the next scrape "
          "(each gets a bounded wait)")
    silent.close()
    silent2.close()
    t.ok(d.call({"op": "ping"})["ok"], "the daemon still answers its socket")

    # every metric the Grafana dashboard queries is in the exposition
    dash = json.load(open(os.path.join(TOP_SRCDIR, "examples", "grafana-otpmail.json")))
    names = set()
    for p in dash["panels"]:
        for tg in p["targets"]:
            names.update(re.findall(r"\b((?:otpmail|process)_[a-z_]+)\{", tg["expr"]))
    exposed = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    exposed |= {n + "_bucket" for n in exposed}
    t.ok(names and names <= exposed, "the Grafana dashboard queries only exposed metrics",
         sorted(names - exposed))
    t.ok({"otpmail_queue_messages", "otpmail_deliveries_total", "otpmail_otp_issued_total",
          "otpmail_delivery_latency_seconds_bucket"} <= names,
         "the dashboard covers queue depth, delivery results, OTP outcomes and latency")

with Daemon() as d:
    try:
        socket.create_connection((ADDR, PORT), timeout=2).close()
        t.ok(False, "without metrics_listen nothing listens")
    except OSError:
        t.ok(True, "without metrics_listen nothing listens (off by default)")

for bad in ("nope", "127.0.0.1:99999", "127.0.0.1"):
    with Daemon(start=False, conf_extra="metrics_listen = %s\n" % bad) as d:
        p = subprocess.run([OTPMAILD, "--check-config", "-c", d.conf], capture_output=True,
                           text=True)
        t.ok(p.returncode != 0 and ("metrics_listen" in p.stderr or "port" in p.stderr),
             "metrics_listen = %s is a config error" % bad, p.stderr)

t.done()
