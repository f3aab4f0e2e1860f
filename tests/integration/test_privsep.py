#!/usr/bin/python3
"""test_privsep.py - the delivery process (agent/delivery/privsep.c).

Starts (peers.py): smtp-sink on 127.0.6.40:2525; then otpmaild
(harness.Daemon, sandbox = no, a DKIM key, `route = example.com
[127.0.6.40]:2525`) with OTPMAIL_TEST_DELIVERY_PROBE naming the DKIM key,
the OTP secret, the database files and the control socket.

1. The delivery process runs as another user (nobody: the test machine has
   no otpmail-smtp), in an empty chroot, with no_new_privs and a seccomp
   filter (/proc/PID/status), holds no descriptor of the state directory,
   and reports from inside that it can neither open any probed file nor
   connect to the control socket.
2. A message goes out through it, DKIM-signed by the main process.
3. kill -9 of the delivery process while 300 messages are on their way:
   every message is delivered in the end (none lost, none deferred), the
   main process logs the loss, the spare process takes over and a new
   spare is started.  (How fast delivery resumes is measured in
   tests/bench/privsep_kill.py, not asserted here.)
4. An unknown delivery_user is refused by --check-config, named.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

SINK, PORT = "127.0.6.40", 2525
N_LOAD = 300

t = Tap()


def child_pids(d):
    return [int(p) for p in re.findall(r"event=delivery_process_started pid=(\d+)",
                                       d.log_text())]


def current_pid(d):
    """The delivery process in use (not the spare): the last one named."""
    m = re.findall(r"event=delivery_(?:started|process_lost) .*?(?:mode=\S+ pid|next)=(\d+)",
                   d.log_text())
    return int(m[-1]) if m else -1


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def send(d, to, subject="privsep"):
    r = d.call({"op": "mail.send", "from": "app@example.org", "to": [to],
                "subject": subject, "text": "hello\n"})
    return r.get("id") if r.get("ok") else None


def main():
    keydir = tempfile.mkdtemp(prefix="otpm-privsep-")
    key = os.path.join(keydir, "example.org.k1.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    conf = ("sandbox = no\ntls_policy = none\n"
            "route = example.com [%s]:%d\n"
            "delivery_workers = 4\n"
            "default_retry_min = 600s\n"
            "dkim_key = example.org k1 ed25519-sha256 %s\n" % (SINK, PORT, key))
    # the Daemon's state directory is only known once made: probe by name
    pre = tempfile.mkdtemp(prefix="otpmail-it-")
    state = os.path.join(pre, "state")
    probe = [key, os.path.join(state, "otp.secret"), os.path.join(state, "control.sock"),
             os.path.join(state, "db")] + \
        [os.path.join(state, "db", f) for f in ("otp.db", "expiry.db", "rate.db")]
    with SmtpSink(SINK, PORT) as sink, \
            Daemon(conf_extra=conf, state_dir=pre,
                   env={"OTPMAIL_TEST_DELIVERY_PROBE": ":".join(probe)}) as d:
        dbfiles = sorted(glob.glob(os.path.join(state, "db", "*")))
        t.ok([f for f in probe if f in dbfiles], "the probed database files exist",
             dbfiles)
        ok = wait_for(lambda: child_pids(d), 10)
        t.ok(ok, "the delivery process started", d.log_text()[-2000:])
        pid = child_pids(d)[-1]
        line = [x for x in d.log_text().splitlines() if "delivery_process_started" in x][-1]
        for want in ("user=nobody", "chroot=empty", "no_new_privs=yes", "seccomp=yes"):
            t.ok(want in line, "delivery process: " + want, line)
        t.diag(line)
        st = proc_status(pid)
        t.ok(st.get("Uid", "").split() == ["65534"] * 4, "it runs as nobody", st.get("Uid"))
        t.ok(st.get("Gid", "").split() == ["65534"] * 4, "with nobody's group", st.get("Gid"))
        t.is_(st.get("NoNewPrivs"), "1", "NoNewPrivs is set")
        t.is_(st.get("Seccomp"), "2", "a seccomp filter is loaded")
        t.ok(os.readlink("/proc/%d/root" % pid) != "/", "its root is not /",
             os.readlink("/proc/%d/root" % pid))
        t.ok(os.listdir("/proc/%d/root" % pid) == [], "its root is empty")
        fds = {}
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                fds[fd] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                pass
        t.ok(not [v for v in fds.values() if v.startswith(state) or v.startswith(keydir)],
             "it holds no descriptor of the state directory or the key", fds)
        t.ok(all(v.startswith(("socket:", "pipe:", "anon_inode:"))
                 for f, v in fds.items() if int(f) > 2),
             "beyond stdio (the log) only sockets and pipes", fds)
        t.ok(len([v for v in fds.values() if v.startswith("socket:")]) >= 4,
             "it holds its socket pairs", fds)
        # the hook: what the process itself got trying
        log = d.log_text()
        for p in probe:
            m = re.search(r"event=delivery_probe path=%s open=(\S+) open_errno=\d+ "
                          r"connect=(\S+)" % re.escape(p), log)
            t.ok(m and m.group(1) == "denied" and m.group(2) == "denied",
                 "from inside: cannot open or connect to %s" % os.path.basename(p),
                 m.group(0) if m else log[-1500:])

        # 2. a message through it, signed by the main process
        qid = send(d, "one@example.com")
        t.ok(qid, "mail.send accepted")
        got = []
        try:
            got = sink.wait_for(1, 20)
        except RuntimeError as e:
            t.diag(str(e))
        t.ok(got and b"DKIM-Signature:" in got[0].data and b"d=example.org" in got[0].data,
             "delivered through the delivery process, DKIM-signed",
             got[0].data[:800] if got else d.log_text()[-1500:])

        # 3. kill -9 under load
        ids = []
        killed = None
        for i in range(N_LOAD):
            qid = send(d, "load%d@example.com" % i)
            if qid:
                ids.append(qid)
            if killed is None and len(sink.messages()) >= 40:
                killed = current_pid(d)
                os.kill(killed, signal.SIGKILL)
        if killed is None:
            killed = current_pid(d)
            os.kill(killed, signal.SIGKILL)
        t.is_(len(ids), N_LOAD, "%d messages accepted" % N_LOAD)

        def rcpts():
            return {m.rcpt for m in sink.messages()}
        want = {"load%d@example.com" % i for i in range(N_LOAD)}
        ok = wait_for(lambda: want <= rcpts(), 60, 0.2)
        missing = want - rcpts()
        t.ok(ok, "every message of the load reached the sink (none lost)",
             "%d missing, e.g. %s" % (len(missing), sorted(missing)[:5]))
        states = {}
        for qid in ids:
            r = d.call({"op": "message.status", "id": qid})
            s = r.get("state")
            states[s] = states.get(s, 0) + 1
        t.ok(set(states) <= {"done", "delivered"}, "every message done, none deferred",
             json.dumps(states))
        log = d.log_text()
        m = re.search(r"event=delivery_process_lost pid=%d signal=9 .* next=(\d+)" % killed,
                      log)
        t.ok(m, "the main process saw the loss", log[-1500:])
        nxt = int(m.group(1)) if m else -1
        t.ok(nxt > 0 and nxt != killed and os.path.exists("/proc/%d" % nxt) and
             nxt in child_pids(d), "and another delivery process took over", nxt)
        t.ok(len([p for p in child_pids(d) if os.path.exists("/proc/%d" % p)]) == 2,
             "with a new spare behind it", child_pids(d))
        dups = len(sink.messages()) - len(rcpts())
        t.diag("kill -9 with %d messages on their way: %d delivered twice "
               "(in flight when killed, the sink had them)" % (N_LOAD, dups))
        stats = d.call({"op": "queue.list", "limit": 1})
        t.ok(stats.get("ok"), "the daemon still answers")
    # a delivery_user that does not exist fails at start, named
    bad = os.path.join(keydir, "bad.conf")
    with open(bad, "w") as f:
        f.write("state_dir = %s\ndelivery_user = no-such-user-p20\n" % os.path.join(keydir, "s"))
    p = subprocess.run([os.path.join(os.environ.get("top_builddir", "."), "otpmaild"),
                        "--check-config", "-c", bad], capture_output=True, text=True)
    t.ok(p.returncode != 0 and "delivery_user" in p.stderr and "no-such-user-p20" in p.stderr,
         "an unknown delivery_user is refused at start", p.stderr)
    subprocess.run(["rm", "-rf", keydir, pre])
    t.done()


if __name__ == "__main__":
    main()
