#!/usr/bin/env python3
"""cluster_bench.py - the cluster row (issue #23): three otpmaild sites on
Berkeley DB replication, each in its own network namespace joined by the
TLS relay (the set-up of tests/integration/test_cluster.py), next to one
otpmaild alone.  Prints otp.issue and otp.verify rates and p99 on the
master, on a replica and alone, and the time from a master's kill -9 to the
first accepted write.  Run as root from a build dir:

    top_builddir=$PWD top_srcdir=$PWD/.. unshare -n sh -c 'ip link set lo up;
        python3 ../tests/bench/cluster_bench.py [threads] [codes]'
"""

import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import test_cluster as tc  # noqa: E402
from harness import Daemon  # noqa: E402

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
CODES = int(sys.argv[2]) if len(sys.argv) > 2 else 400


def timed(calls):
    """Runs the callables on THREADS threads: (rate per s, p99 ms, failures)."""
    lat, bad = [], [0]
    lock = threading.Lock()
    it = iter(calls)

    def worker():
        while True:
            with lock:
                f = next(it, None)
            if f is None:
                return
            t0 = time.monotonic()
            ok = f()
            dt = time.monotonic() - t0
            with lock:
                lat.append(dt)
                if not ok:
                    bad[0] += 1
    t0 = time.monotonic()
    ths = [threading.Thread(target=worker) for _ in range(THREADS)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    wall = time.monotonic() - t0
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0
    return len(lat) / wall, p99, bad[0]


def row(name, s, tag):
    addrs = ["b%s%d@example.org" % (tag, i) for i in range(CODES)]
    ids = {}

    def issue(a):
        def f():
            r = s.call({"op": "otp.issue", "to": a}, timeout=30)
            if r.get("ok"):
                ids[a] = r["id"]
            return r.get("ok")
        return f
    ir, ip99, ibad = timed([issue(a) for a in addrs])
    codes = {a: tc.mail_code(s, ids[a], 30) for a in addrs if a in ids}

    def verify(a):
        return lambda: s.call({"op": "otp.verify", "to": a, "code": codes[a]},
                              timeout=30).get("ok")
    vr, vp99, vbad = timed([verify(a) for a in codes if codes[a]])
    print("| %-22s | %8.0f | %7.1f | %8.0f | %7.1f | %d |" %
          (name, ir, ip99, vr, vp99, ibad + vbad), flush=True)


def main():
    print("threads %d, %d codes a row" % (THREADS, CODES))
    print("| where                  | issue/s  | p99 ms  | verify/s | p99 ms  | failed |")
    print("|------------------------|----------|---------|----------|---------|--------|")
    with Daemon(conf_extra="otp_resend_cooldown = 0s\n"
                "otp_max_per_address_hour = 1000000\n") as d:
        row("one host (alone)", d, "a")
    tc.netns_setup()
    secret = os.urandom(32)
    sites = [tc.Site(i, secret) for i in range(tc.NS)]
    try:
        for s in sites:
            s.start(timeout=40)
        m = tc.wait_master(sites, 20)
        rep = sites[(m + 1) % tc.NS]
        row("cluster, on the master", sites[m], "m")
        row("cluster, on a replica", rep, "r")
        t0 = time.monotonic()
        sites[m].kill9()
        first = None
        while time.monotonic() - t0 < 30:
            if rep.call({"op": "otp.issue", "to": "probe@example.org"},
                        timeout=10).get("ok"):
                first = time.monotonic() - t0
                break
            time.sleep(0.02)
        print("kill -9 of the master -> first accepted write on a replica: %s s" %
              ("%.2f" % first if first is not None else "none in 30"))
    finally:
        for s in sites:
            s.stop()
            s.cleanup()
        for h in tc.holders:
            h.kill()
            h.wait()
        tc.sh("ip", "link", "del", "otpbr0", check=False)


main()
