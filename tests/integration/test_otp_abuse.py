#!/usr/bin/env python3
"""test_otp_abuse.py - 10^5 guesses from one client across many addresses.

Starts: otpmaild in sandbox mode with the failed-check limits set
(otp_max_failed_verifies_per_client_minute, otp_max_failed_verifies_per_second).
One client issues codes to 100 addresses (each bound to its own context),
then sends 100,000 wrong guesses spread over them, pipelined on 4
connections.  Not one guess may succeed; the per-client and the global
limits must both answer rate_limited by name with retry_after; per-address
lock-outs and the limits are logged; another client (another uid) is not
affected and its real code still verifies.
"""
import json
import random
import re
import threading

from harness import Daemon, Tap, wait_for

t = Tap()
CLIENT_MIN = 2000
GLOBAL_SEC = 300
N = 100000
ADDRS = ["victim%d@example.org" % i for i in range(100)]
DAEMON_UID = 1

BASE = ("otp_resend_cooldown = 0\notp_max_per_address_hour = 1000\n"
        "otp_max_per_client_minute = 1000000\notp_max_failures_per_code = 20\n"
        "app_users = daemon\nlog_level = info\n")


def attack(d, n):
    """n wrong guesses spread over ADDRS from one client, 4 pipelined
    connections; returns the tally of answers."""
    results = {"ok": 0, "limits": {}, "errors": {}, "retry_after_missing": 0}
    lock = threading.Lock()

    def run(seed, count):
        rng = random.Random(seed)
        c = d.client(timeout=60)
        done = 0
        while done < count:
            window = min(64, count - done)
            reqs = []
            for _ in range(window):
                i = rng.randrange(len(ADDRS))
                reqs.append(json.dumps({"op": "otp.verify", "to": ADDRS[i],
                                        "context": "sess-%d" % i,
                                        "code": "%06d" % rng.randrange(10 ** 6)}))
            c.send(("\n".join(reqs) + "\n").encode())
            for _ in range(window):
                r = c.recv()
                with lock:
                    if r.get("ok"):
                        results["ok"] += 1
                    elif r.get("error") == "rate_limited":
                        lim = r.get("limit")
                        results["limits"][lim] = results["limits"].get(lim, 0) + 1
                        if not r.get("retry_after"):
                            results["retry_after_missing"] += 1
                    else:
                        e = r.get("error")
                        results["errors"][e] = results["errors"].get(e, 0) + 1
            done += window
        c.close()

    threads = [threading.Thread(target=run, args=(s, n // 4)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def issue_all(d):
    issued = [d.call({"op": "otp.issue", "to": a, "context": "sess-%d" % i})
              for i, a in enumerate(ADDRS)]
    t.ok(all(r.get("ok") for r in issued), "codes issued to %d addresses" % len(ADDRS),
         [r for r in issued if not r.get("ok")][:3])


# 1. the per-client limit (no global cap)
with Daemon(conf_extra=BASE + "otp_max_failed_verifies_per_client_minute = %d\n"
            "otp_max_failed_verifies_per_second = 0\n" % CLIENT_MIN) as d:
    issue_all(d)
    res = attack(d, N // 2)
    answered = res["ok"] + sum(res["limits"].values()) + sum(res["errors"].values())
    checked = sum(res["errors"].values())
    t.diag("per-client: %d answered; limits %r; checked %r" %
           (answered, res["limits"], res["errors"]))
    t.is_(answered, N // 2, "every guess answered")
    t.is_(res["ok"], 0, "not one guess succeeded")
    t.ok(res["limits"].get("client_verify_failures", 0) >= N // 2 - CLIENT_MIN,
         "the per-client limit stopped all but %d" % CLIENT_MIN, res["limits"])
    t.ok(checked <= CLIENT_MIN, "at most %d guesses reached the store (%d)" %
         (CLIENT_MIN, checked))
    t.is_(res["retry_after_missing"], 0, "every refusal carries retry_after")
    log = d.log_text()
    t.ok("limit=client_verify_failures" in log, "the per-client limit is logged")
    t.ok(re.search(r"event=otp\.lockout", log) is not None,
         "per-address lock-outs happened and are logged")

    # another application is not punished for this one's guesses
    # another application is not punished for this one's guesses
    r = d.call_as(DAEMON_UID, {"op": "otp.issue", "to": "fresh@example.org"})
    t.ok(r.get("ok"), "another client can still issue", r)

    def fresh_code():
        for path in reversed(d.sandbox_messages()):
            text = open(path, errors="replace").read()
            if "fresh@example.org" in text:
                m = re.search(r"^ {4}([0-9]{6})\r?$", text, re.M)
                return m and m.group(1)
        return None
    code = wait_for(fresh_code, 10)
    t.ok(code is not None, "its code arrived")
    r = d.call_as(DAEMON_UID, {"op": "otp.verify", "to": "fresh@example.org",
                               "code": code or "x"})
    t.ok(r.get("ok"), "and verifies: the limit is per client", r)

# 2. the global cap (no per-client limit)
with Daemon(conf_extra=BASE + "otp_max_failed_verifies_per_client_minute = 0\n"
            "otp_max_failed_verifies_per_second = %d\n" % GLOBAL_SEC) as d:
    issue_all(d)
    import time as _time
    t0 = _time.time()
    res = attack(d, N // 2)
    secs = _time.time() - t0
    checked = sum(res["errors"].values())
    t.diag("global: %.1f s; limits %r; checked %r" % (secs, res["limits"], res["errors"]))
    t.is_(res["ok"], 0, "not one guess succeeded")
    t.ok(res["limits"].get("global_verify_failures", 0) > 0, "the global cap answered",
         res["limits"])
    t.ok(checked <= GLOBAL_SEC * (int(secs) + 2),
         "guesses that reached the store stay within %d a second (%d in %.1f s)" %
         (GLOBAL_SEC, checked, secs))
    t.ok("limit=global_verify_failures" in d.log_text(), "the global cap is logged")
t.done()
