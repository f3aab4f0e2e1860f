#!/usr/bin/python3
"""tests/bench/privsep_kill.py - how fast delivery resumes after kill -9 of
the delivery process (issue 20; test_privsep.py asserts the behaviour,
this measures the time).

    top_builddir=BUILD top_srcdir=SRC python3 tests/bench/privsep_kill.py [ROUNDS]

Run as root in a private network namespace (`unshare -n`, lo up).  Starts
smtp-sink on 127.0.6.41:2525 and otpmaild (sandbox = no, route to the sink,
4 delivery workers) through tests/integration's harness, keeps mail.send
calls flowing, and ROUNDS times (default 5) kills the delivery process with
SIGKILL (the current one: the spare that took over last time).  For each
kill it reads from the daemon's log (millisecond timestamps): the loss seen
by the main process and the first delivery after the kill; it prints each round and the median and
maximum kill -> next delivery.  Messages lost: those of the load that never
reached the sink (should be 0).
"""
import os
import re
import signal
import statistics
import sys
import threading
import time
from datetime import datetime

SRC = os.environ.get("top_srcdir") or os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
from harness import Daemon, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

SINK, PORT = "127.0.6.41", 2525


def ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp() if m else None


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    conf = ("sandbox = no\ntls_policy = none\nroute = example.com [%s]:%d\n"
            "delivery_workers = 4\ndefault_retry_min = 600s\nlog_level = info\n"
            % (SINK, PORT))
    sent = []
    stop = threading.Event()
    with SmtpSink(SINK, PORT, dump=True) as sink, Daemon(conf_extra=conf) as d:
        def load():
            i = 0
            while not stop.is_set():
                try:
                    r = d.call({"op": "mail.send", "from": "app@example.org",
                                "to": ["k%d@example.com" % i], "subject": "k",
                                "text": "x\n"})
                except OSError:
                    print("\n".join(x for x in d.log_text().splitlines() if "event=queued" not in x and "result=delivered" not in x)[-4000:])
                    raise
                if r.get("ok"):
                    sent.append("k%d@example.com" % i)
                i += 1
                time.sleep(0.002)
        th = threading.Thread(target=load)
        th.start()
        kills = []
        for _ in range(rounds):
            time.sleep(1.0)
            pid = int(re.findall(r"event=delivery_(?:started|process_lost) "
                                 r".*?(?:mode=\S+ pid|next)=(\d+)", d.log_text())[-1])
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)
            kills.append((pid, t0))
        time.sleep(1.0)
        stop.set()
        th.join()
        want = set(sent)
        wait_for(lambda: want <= {m.rcpt for m in sink.messages()}, 60, 0.2)
        lost = len(want - {m.rcpt for m in sink.messages()})
        lines = d.log_text().splitlines()
        res = []
        for pid, t0 in kills:
            seen = first = None
            for ln in lines:
                t = ts(ln)
                if t is None or t < t0 - 0.5:
                    continue
                if seen is None and "event=delivery_process_lost pid=%d " % pid in ln:
                    seen = t
                    continue
                if seen is not None and "event=delivery " in ln and "result=delivered" in ln:
                    first = t
                    break
            if seen and first:
                res.append((seen - t0, first - t0))
                print("kill pid %d: loss seen %+.3f s, next delivery %+.3f s"
                      % (pid, seen - t0, first - t0))
            else:
                print("kill pid %d: events not found" % pid)
        firsts = [r[1] for r in res]
        if firsts:
            print("kill -9 -> next delivery: median %.3f s, max %.3f s over %d kills; "
                  "%d messages sent, %d lost, %d delivered twice"
                  % (statistics.median(firsts), max(firsts), len(firsts), len(sent), lost,
                     len(sink.messages()) - len({m.rcpt for m in sink.messages()})))


if __name__ == "__main__":
    main()
