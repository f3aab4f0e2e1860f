#!/usr/bin/python3
"""test_rate_limits.py - the otp.issue limits through the control socket of
a real daemon, with the real config keys: otp_resend_cooldown,
otp_max_per_client_minute (per client uid), otp_max_per_address_hour,
otp_max_per_client_id_hour (per app and client_id, across addresses) and
otp_max_global_per_second.

Starts: otpmaild (sandbox mode) twice, on fresh state directories, with
app_users = nobody so a second client uid exists.  Checks that each limit
refuses exactly past its number, names itself ("limit") with a retry_after
within its window, touches only what it limits (another uid, another
address), and that the per-uid and per-address counters (kept in Berkeley
DB) hold across a restart of the daemon.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap  # noqa: E402

NOBODY = 65534
t = Tap()


def issue(d, to, uid=None, purpose="login"):
    req = {"op": "otp.issue", "to": to, "purpose": purpose}
    return d.call_as(uid, req) if uid is not None else d.call(req)


def refused(r, limit, lo, hi):
    return (not r.get("ok") and r.get("error") == "rate_limited" and
            r.get("limit") == limit and lo <= (r.get("retry_after") or -1) <= hi)


def per_client_and_address():
    conf = ("app_users = nobody\n"
            "otp_resend_cooldown = 20s\n"
            "otp_max_per_client_minute = 4\n"
            "otp_max_per_address_hour = 1000\n")
    with Daemon(conf_extra=conf) as d:
        # resend cooldown: one address and purpose
        r1 = issue(d, "cool@example.org")
        r2 = issue(d, "cool@example.org")
        t.ok(r1.get("ok") and refused(r2, "resend_cooldown", 1, 20),
             "otp_resend_cooldown = 20s: the second issue within 20 s is refused "
             "as resend_cooldown, retry_after <= 20", r2)
        r3 = issue(d, "cool@example.org", purpose="reset")
        t.ok(r3.get("ok"), "the cooldown is per purpose: reset is issued", r3)

        # per client uid per minute: root has used 2 of 4 (a refused issue
        # does not count)
        rs = [issue(d, "c%d@example.org" % i) for i in range(3)]
        t.ok(rs[0].get("ok") and rs[1].get("ok") and
             refused(rs[2], "client_minute", 1, 60),
             "otp_max_per_client_minute = 4: the 5th issue of one uid is refused "
             "as client_minute, retry_after <= 60", rs)
        n = [issue(d, "n%d@example.org" % i, uid=NOBODY) for i in range(5)]
        t.ok(all(r.get("ok") for r in n[:4]),
             "another uid (nobody) has its own window: 4 issued", n[:4])
        t.ok(refused(n[4], "client_minute", 1, 60), "and its 5th is refused", n[4])
        log = d.log_text()
        t.ok("limit=client_minute" in log or "client_minute" in log,
             "the refusal is logged by name", log[-1500:])
        d.stop()
        d.start()
        r = issue(d, "after-restart@example.org")
        t.ok(refused(r, "client_minute", 1, 60),
             "the uid's window holds across a restart of the daemon", r)

    conf = ("otp_resend_cooldown = 0s\n"
            "otp_max_per_address_hour = 2\n"
            "otp_max_per_client_minute = 1000\n")
    with Daemon(conf_extra=conf) as d:
        rs = [issue(d, "hourly@example.org") for _ in range(3)]
        t.ok(rs[0].get("ok") and rs[1].get("ok") and
             refused(rs[2], "address_hourly", 3000, 3600),
             "otp_max_per_address_hour = 2: the 3rd issue for one address is "
             "refused as address_hourly, retry_after within the hour", rs)
        r = issue(d, "hourly@example.org", purpose="reset")
        t.ok(refused(r, "address_hourly", 3000, 3600),
             "the hourly limit is per address, whatever the purpose", r)
        r = issue(d, "HOURLY@Example.ORG")
        t.ok(refused(r, "address_hourly", 3000, 3600),
             "the same address in other case is the same address", r)
        r = issue(d, "other@example.org")
        t.ok(r.get("ok"), "another address is issued", r)
        d.kill9()
        d.start()
        r = issue(d, "hourly@example.org")
        t.ok(refused(r, "address_hourly", 3000, 3600),
             "the address's count holds across kill -9 and restart", r)


def global_cap():
    cap, n = 3, 30
    conf = ("app_users = nobody\n"
            "otp_resend_cooldown = 0s\n"
            "otp_max_global_per_second = %d\n"
            "otp_max_per_client_minute = 100000\n" % cap)
    with Daemon(conf_extra=conf) as d:
        reqs = [{"op": "otp.issue", "to": "g%d@example.org" % i, "purpose": "login"}
                for i in range(n)]
        t0 = int(time.time())
        rs = d.pipeline(reqs[:n // 2])
        rs += [d.call_as(NOBODY, q) for q in reqs[n // 2:n // 2 + 3]]
        rs += d.pipeline(reqs[n // 2 + 3:])
        t1 = int(time.time())
        ok = sum(1 for r in rs if r.get("ok"))
        bad = [r for r in rs if not r.get("ok")]
        span = t1 - t0 + 1
        t.ok(ok <= cap * span,
             "otp_max_global_per_second = %d: %d issued in %d calendar second(s)"
             % (cap, ok, span), rs)
        t.ok(bad and all(refused(r, "global_rate", 1, 1) for r in bad),
             "the rest (%d) refused as global_rate, retry_after 1" % len(bad), bad[:3])
        t.ok(any(not r.get("ok") for r in rs[n // 2:n // 2 + 3]) or span > 1,
             "the cap is global: another uid is refused within the same second",
             rs[n // 2:n // 2 + 3])
        time.sleep(1.1)
        r = issue(d, "later@example.org")
        t.ok(r.get("ok"), "a second later an issue goes through", r)


def per_client_id():
    conf = "otp_max_per_client_id_hour = 5\notp_resend_cooldown = 0\n"
    with Daemon(conf_extra=conf) as d:
        def iss(to, cid):
            return d.call({"op": "otp.issue", "to": to, "client_id": cid})
        rs = [iss("victim%d@example.org" % i, "203.0.113.7") for i in range(5)]
        t.ok(all(r.get("ok") for r in rs), "client 203.0.113.7: 5 issues to 5 "
             "addresses", rs)
        r = iss("victim5@example.org", "203.0.113.7")
        t.ok(refused(r, "client_id_hourly", 1, 3600),
             "the 6th address from that client: client_id_hourly", r)
        r = iss("victim5@example.org", "198.51.100.9")
        t.ok(r.get("ok"), "the same address from another client goes through", r)
        r = d.call({"op": "otp.issue", "to": "victim6@example.org"})
        t.ok(r.get("ok"), "an issue without client_id is not counted with it", r)
        r = d.call({"op": "otp.verify", "to": "victim0@example.org", "code": "000000",
                    "client_id": "203.0.113.7"})
        t.ok(r.get("error") == "invalid_code", "verifies are not issues: the client "
             "still checks codes", r)
        d.stop()
        d.start()
        r = iss("victim7@example.org", "203.0.113.7")
        t.ok(refused(r, "client_id_hourly", 1, 3600),
             "the client's count holds across a restart", r)


def main():
    for fn in (per_client_and_address, per_client_id, global_cap):
        try:
            fn()
        except Exception:  # report and go on with the next part
            import traceback
            t.ok(False, "%s ran" % fn.__name__, traceback.format_exc())
    t.done()


if __name__ == "__main__":
    main()
