#!/usr/bin/env python3
"""verify_timing.py - does otp.verify's time say whether an address has a code?

Starts a private otpmaild (sandbox mode) from a build directory, issues one
code to each of N/PER addresses, then times, interleaved on one connection,
N (default 1,000) wrong verifies against a live code (PER per address,
--per, 1 to 4, default 1: an attacker's probe whether an address has a
code) and N verifies for N/PER addresses that never had a code (PER each).  Prints the
round-trip medians and 90th percentiles of both and their differences, and
checks the answers were identical.  Usage (from the source tree):

    python3 tests/bench/verify_timing.py [--build build] [-n 1000] [--conf 'k = v']

No timing assertion anywhere: the numbers are for the README and reviews.
"""
import argparse
import json
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("-n", type=int, default=1000)
ap.add_argument("--conf", action="append", default=[])
ap.add_argument("--per", type=int, default=1, choices=(1, 2, 3, 4))
args = ap.parse_args()
build = os.path.abspath(args.build)
src = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.setdefault("top_builddir", build)
os.environ.setdefault("top_srcdir", src)
sys.path.insert(0, os.path.join(src, "tests", "integration"))
from harness import Daemon  # noqa: E402

per = args.per
naddr = (args.n + per - 1) // per
conf = "otp_resend_cooldown = 0\notp_max_per_client_minute = 100000000\n" + \
    "".join(c + "\n" for c in args.conf)
with Daemon(conf_extra=conf) as d:
    c = d.client(60)
    for i in range(naddr):
        r = c.call({"op": "otp.issue", "to": "live%d@example.org" % i, "context": "s"})
        assert r.get("ok"), r
    # the mails' delivery must not run under the measurement
    deadline = time.time() + 120
    while len(d.sandbox_messages()) < naddr and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    # warm up
    for i in range(50):
        c.call({"op": "otp.verify", "to": "warm%d@example.org" % i, "code": "123456"})
    live, none, answers = [], [], set()
    for i in range(args.n):
        pairs = [("live", {"op": "otp.verify", "to": "live%d@example.org" % (i // per),
                           "context": "s", "code": "%06d" % (i % 1000000)}),
                 ("none", {"op": "otp.verify", "to": "none%d@example.org" % (i // per),
                           "context": "s", "code": "%06d" % (i % 1000000)})]
        if i % 2:
            pairs.reverse()
        for kind, req in pairs:
            line = (json.dumps(req) + "\n").encode()
            t0 = time.perf_counter_ns()
            c.send(line)
            r = c.recv()
            dt = (time.perf_counter_ns() - t0) / 1000.0
            if r.get("ok"):
                continue        # a lucky guess: not a wrong-code sample
            answers.add(json.dumps(r, sort_keys=True))
            (live if kind == "live" else none).append(dt)
    c.close()


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


lm, nm = statistics.median(live), statistics.median(none)
l9, n9 = q(live, 0.9), q(none, 0.9)
print("otp.verify round trip over %d tries each (us):" % len(live))
print("  wrong code, live code:   median %7.1f  p90 %7.1f" % (lm, l9))
print("  no code for the address: median %7.1f  p90 %7.1f" % (nm, n9))
print("  difference:              median %7.1f  p90 %7.1f" % (lm - nm, l9 - n9))
print("  distinct answers: %d %s" % (len(answers), sorted(answers)[:3]))
