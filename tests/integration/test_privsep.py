#!/usr/bin/python3
"""test_privsep.py - the delivery process (agent/delivery/privsep.c).

Starts (peers.py): smtp-sink on 127.0.6.40:2525; then otpmaild
(harness.Daemon, sandbox = no, a DKIM key, `route = example.com
[127.0.6.40]:2525`) with OTPMAIL_TEST_DELIVERY_PROBE naming the DKIM key,
the OTP secret, the database files and the control socket.

1. The delivery process runs as another user (the default otpmail-smtp
   where it exists, as after the Debian package test; else nobody), in an
   empty chroot, with no_new_privs and a seccomp filter (/proc/PID/status),
   holds no descriptor of the state directory, and reports from inside
   that it can neither open any probed file nor connect to the control
   socket, nor pass prctl(PR_SET_DUMPABLE) through the filter; its worker
   threads are named dl-worker.
2. A message goes out through it, DKIM-signed by the main process.
3. kill -9 of the delivery process while 300 messages are on their way:
   every message is delivered in the end (none lost, none deferred), the
   main process logs the loss, the spare process takes over and a new
   spare is started.  (How fast delivery resumes is measured in
   tests/bench/privsep_kill.py, not asserted here.)
4. An unknown delivery_user is refused by --check-config, named.
5. Run as root with `user = daemon` (the shipped unit's way; skipped when
   not root): 1-3 again (150 messages) with the delivery process started
   by the spawner (agent/delivery/spawner.c): main runs as daemon, the
   spawner as root with six capabilities and no other descriptor, the
   delivery process (its child) and its replacement after kill -9 as
   nobody in an empty root.  A compromised main process (the spawner's
   socket copied out of it with pidfd_getfd): malformed requests, too many
   workers, kill of pid 1, -1 or a process the spawner did not start are
   refused and logged; valid starts stop at 4 live delivery processes,
   each the spawner's child running otpmaild.  kill -9 of the spawner:
   main logs it and exits 1, no delivery process is left; kill -9 of main:
   the spawner and its delivery processes end.  (The request parser:
   tests/unit/test_spawner.)
6. A delivery process that sends empty frames (the start's ready frame;
   a test hook, OTPMAIL_FAULT=dl_empty_frames_N, sends N before each
   result but a worker's first, which the ready frame is before): one
   before a result is skipped and every message is delivered; two in a
   row are a malformed result, the process is replaced, and each message
   ends delivered or deferred (after its second loss), none lost.
"""
import ctypes
import errno
import glob
import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import SCALE, Daemon, Tap, wait_for  # noqa: E402
from peers import SmtpSink  # noqa: E402

SINK, PORT = "127.0.6.40", 2525
N_LOAD = 300
N_LOAD_USER = 150
MAIN_USER = "daemon"

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


def run_case(keydir, key, pre, main_user=None, n_load=N_LOAD):
    """One daemon: the delivery process's identity, the probes, one message,
    kill -9 under load.  main_user: otpmaild started as root with `user =`
    (the shipped unit's way): the spawner starts the delivery process."""
    tag = "user=%s: " % main_user if main_user else ""
    conf = ("sandbox = no\ntls_policy = none\n"
            "route = example.com [%s]:%d\n"
            "delivery_workers = 4\n"
            "default_retry_min = 600s\n"
            "dkim_key = example.org k1 ed25519-sha256 %s\n" % (SINK, PORT, key))
    if main_user:
        conf += "user = %s\ndelivery_user = nobody\n" % main_user
    # the default delivery_user, otpmail-smtp, falls back to nobody
    du = "nobody" if main_user else default_delivery_user()
    pw = pwd.getpwnam(du)
    # the Daemon's state directory is only known once made: probe by name
    state = os.path.join(pre, "state")
    probe = [key, os.path.join(state, "otp.secret"), os.path.join(state, "control.sock"),
             os.path.join(state, "db")] + \
        [os.path.join(state, "db", f) for f in ("otp.db", "expiry.db", "rate.db")]
    with SmtpSink(SINK, PORT) as sink, \
            Daemon(conf_extra=conf, state_dir=pre,
                   env={"OTPMAIL_TEST_DELIVERY_PROBE": ":".join(probe)}) as d:
        dbfiles = sorted(glob.glob(os.path.join(state, "db", "*")))
        t.ok([f for f in probe if f in dbfiles], tag + "the probed database files exist",
             dbfiles)
        ok = wait_for(lambda: child_pids(d), 10)
        t.ok(ok, tag + "the delivery process started", d.log_text()[-2000:])
        pid = child_pids(d)[-1]
        # the daemon answers once the delivery process and its spare have
        # started: their start-up is not paid by the first requests
        lines = d.log_text().splitlines()
        started = [i for i, x in enumerate(lines) if "event=started " in x]
        before = [x for x in lines[:started[0]] if "delivery_process_started" in x] \
            if started else []
        t.ok(len(before) >= 2, tag + "both delivery processes started before the daemon "
             "said it was ready", "\n".join(lines[:40]))
        if main_user:
            check_spawner(d, main_user, pid)
        line = [x for x in d.log_text().splitlines() if "delivery_process_started" in x][-1]
        for want in ("user=" + du, "chroot=empty", "no_new_privs=yes", "seccomp=yes"):
            t.ok(want in line, tag + "delivery process: " + want, line)
        t.diag(line)
        st = proc_status(pid)
        t.ok(st.get("Uid", "").split() == [str(pw.pw_uid)] * 4, tag + "it runs as " + du,
             st.get("Uid"))
        t.ok(st.get("Gid", "").split() == [str(pw.pw_gid)] * 4, tag + "with its group",
             st.get("Gid"))
        t.is_(st.get("NoNewPrivs"), "1", tag + "NoNewPrivs is set")
        t.is_(st.get("Seccomp"), "2", tag + "a seccomp filter is loaded")
        t.ok(os.readlink("/proc/%d/root" % pid) != "/", tag + "its root is not /",
             os.readlink("/proc/%d/root" % pid))
        t.ok(os.listdir("/proc/%d/root" % pid) == [], tag + "its root is empty")
        fds = {}
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                fds[fd] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                pass
        t.ok(not [v for v in fds.values() if v.startswith(state) or v.startswith(keydir)],
             tag + "it holds no descriptor of the state directory or the key", fds)
        t.ok(all(v.startswith(("socket:", "pipe:", "anon_inode:"))
                 for f, v in fds.items() if int(f) > 2),
             tag + "beyond stdio (the log) only sockets and pipes", fds)
        t.ok(len([v for v in fds.values() if v.startswith("socket:")]) >= 4,
             tag + "it holds its socket pairs", fds)
        # the hook: what the process itself got trying
        log = d.log_text()
        for p in probe:
            m = re.search(r"event=delivery_probe path=%s open=(\S+) open_errno=\d+ "
                          r"connect=(\S+)" % re.escape(p), log)
            t.ok(m and m.group(1) == "denied" and m.group(2) == "denied",
                 tag + "from inside: cannot open or connect to %s" % os.path.basename(p),
                 m.group(0) if m else log[-1500:])
        t.ok("event=delivery_probe prctl=set_dumpable result=denied" in log,
             tag + "from inside: prctl(PR_SET_DUMPABLE) refused by the filter")
        names = wait_for(lambda: [n for n in thread_names(pid) if n == "dl-worker"], 5)
        t.ok(names, tag + "its workers are named dl-worker (PR_SET_NAME from the thread)",
             thread_names(pid))

        # 2. a message through it, signed by the main process
        qid = send(d, "one@example.com")
        t.ok(qid, tag + "mail.send accepted")
        got = []
        try:
            got = sink.wait_for(1, 20)
        except RuntimeError as e:
            t.diag(str(e))
        t.ok(got and b"DKIM-Signature:" in got[0].data and b"d=example.org" in got[0].data,
             tag + "delivered through the delivery process, DKIM-signed",
             got[0].data[:800] if got else d.log_text()[-1500:])

        # 3. kill -9 under load
        ids = []
        killed = None
        for i in range(n_load):
            qid = send(d, "load%d@example.com" % i)
            if qid:
                ids.append(qid)
            if killed is None and len(sink.messages()) >= 40:
                killed = current_pid(d)
                os.kill(killed, signal.SIGKILL)
        if killed is None:
            killed = current_pid(d)
            os.kill(killed, signal.SIGKILL)
        t.is_(len(ids), n_load, tag + "%d messages accepted" % n_load)

        def rcpts():
            return {m.rcpt for m in sink.messages()}
        want = {"load%d@example.com" % i for i in range(n_load)}
        ok = wait_for(lambda: want <= rcpts(), 60, 0.2)
        missing = want - rcpts()
        t.ok(ok, tag + "every message of the load reached the sink (none lost)",
             "%d missing, e.g. %s" % (len(missing), sorted(missing)[:5]))
        states = {}
        for qid in ids:
            r = d.call({"op": "message.status", "id": qid})
            s = r.get("state")
            states[s] = states.get(s, 0) + 1
        t.ok(set(states) <= {"done", "delivered"}, tag + "every message done, none deferred",
             json.dumps(states))
        log = d.log_text()
        m = re.search(r"event=delivery_process_lost pid=%d signal=9 .* next=(\d+)" % killed,
                      log)
        t.ok(m, tag + "the main process saw the loss", log[-1500:])
        nxt = int(m.group(1)) if m else -1
        t.ok(nxt > 0 and nxt != killed and os.path.exists("/proc/%d" % nxt) and
             nxt in child_pids(d), tag + "and another delivery process took over", nxt)
        t.ok(len([p for p in child_pids(d) if os.path.exists("/proc/%d" % p)]) == 2,
             tag + "with a new spare behind it", child_pids(d))
        dups = len(sink.messages()) - len(rcpts())
        t.diag("kill -9 with %d messages on their way: %d delivered twice "
               "(in flight when killed, the sink had them)" % (n_load, dups))
        stats = d.call({"op": "queue.list", "limit": 1})
        t.ok(stats.get("ok"), tag + "the daemon still answers")
        if main_user:
            st = proc_status(nxt) if nxt > 0 else {}
            t.ok(st.get("Uid", "").split() == ["65534"] * 4 and
                 st.get("NoNewPrivs") == "1" and st.get("Seccomp") == "2" and
                 os.listdir("/proc/%d/root" % nxt) == [],
                 tag + "the replacement runs as nobody in an empty root, NoNewPrivs, "
                 "seccomp", st)
            attack_spawner(d, tag)
            t.ok(d.call({"op": "ping"}).get("ok"), tag + "the daemon still answers")
            lose_spawner(d, tag)


def states(d, ids):
    """message.status's state of each id (None for an id not accepted)."""
    return [d.call({"op": "message.status", "id": q}).get("state") if q else None
            for q in ids]


def empty_frames(key):
    """6. A delivery process that sends empty frames, the start's ready
    frame (OTPMAIL_FAULT=dl_empty_frames_N, N before each result): one is
    skipped; a second in a row is a malformed result, so a compromised
    process cannot hold a worker with them."""
    conf = ("sandbox = no\ntls_policy = none\n"
            "route = example.com [%s]:%d\n"
            "delivery_workers = 1\n"
            "default_retry_min = 600s\n"
            "dkim_key = example.org k1 ed25519-sha256 %s\n" % (SINK, PORT, key))
    pre = tempfile.mkdtemp(prefix="otpmail-it-")
    with SmtpSink(SINK, PORT) as sink, \
            Daemon(conf_extra=conf, state_dir=pre,
                   env={"OTPMAIL_FAULT": "dl_empty_frames_1"}) as d:
        want = {"empty1-%d@example.com" % i for i in range(3)}
        ids = [send(d, to) for to in sorted(want)]
        ok = wait_for(lambda: want <= {m.rcpt for m in sink.messages()}, 20)
        ok = ok and wait_for(lambda: states(d, ids) == ["delivered"] * 3, 10)
        t.ok(all(ids) and ok,
             "one empty frame before each result: skipped, every message delivered",
             (ids, states(d, ids), d.log_text()[-1500:]))
        log = d.log_text()
        t.ok("delivery_process_lost" not in log and "malformed" not in log,
             "and no delivery process was given up", log[-1500:])
    pre2 = tempfile.mkdtemp(prefix="otpmail-it-")
    with SmtpSink(SINK, PORT) as sink, \
            Daemon(conf_extra=conf, state_dir=pre2,
                   env={"OTPMAIL_FAULT": "dl_empty_frames_2"}) as d:
        ids = [send(d, "empty2-%d@example.com" % i) for i in range(4)]
        lost = wait_for(lambda: re.findall(r"event=delivery_process_lost pid=\d+ \S+ "
                                           r"detail=\"malformed result\"", d.log_text()), 20)
        t.ok(all(ids) and lost, "two empty frames in a row: a malformed result, the "
             "process is replaced", d.log_text()[-1500:])
        # each message ends delivered, or deferred once lost twice in a
        # row at its worker (the sink may have it: at worst a repeat)
        st = wait_for(lambda: set(states(d, ids)) <= {"delivered", "deferred"}, 30)
        t.ok(st, "every message kept: delivered or deferred, none lost or held (%s)"
             % states(d, ids), d.log_text()[-1500:])
        t.ok(d.call({"op": "ping"}).get("ok") and
             d.call({"op": "queue.list", "limit": 5}).get("ok"),
             "the daemon still answers")
    subprocess.run(["rm", "-rf", pre, pre2])


def default_delivery_user():
    try:
        pwd.getpwnam("otpmail-smtp")
        return "otpmail-smtp"
    except KeyError:
        return "nobody"


def spawner_pid(d):
    m = re.findall(r"event=spawner_ready pid=(\d+)", d.log_text())
    return int(m[-1]) if m else -1


def check_spawner(d, main_user, child):
    """The main process runs as main_user; the spawner (its child) as root
    with a few capabilities; the delivery process is the spawner's child."""
    tag = "user=%s: " % main_user
    uid = str(pwd.getpwnam(main_user).pw_uid)
    st = proc_status(d.pid())
    t.ok(st.get("Uid", "").split() == [uid] * 4, tag + "the main process runs as " +
         main_user, st.get("Uid"))
    sp = spawner_pid(d)
    t.ok(sp > 0, tag + "the spawner started", d.log_text()[-1500:])
    sst = proc_status(sp) if sp > 0 else {}
    t.ok(sst.get("Uid", "").split() == ["0"] * 4 and sst.get("PPid") == str(d.pid()),
         tag + "the spawner is root, a child of the main process", sst)
    # setuid, setgid, sys_chroot, kill, dac_override, dac_read_search
    t.is_(sst.get("CapEff"), "00000000000400e6", tag + "the spawner keeps only the "
          "capabilities it needs")
    t.is_(sst.get("NoNewPrivs"), "1", tag + "the spawner has no_new_privs (its exec'd "
          "children get no capability it lacks)")
    t.is_(proc_status(child).get("PPid"), str(sp), tag + "the delivery process is the "
          "spawner's child")
    t.ok(not [f for f in os.listdir("/proc/%d/fd" % sp) if int(f) > 3],
         tag + "the spawner holds no descriptor beyond stdio and its socket",
         os.listdir("/proc/%d/fd" % sp))
    # the fetch process (MTA-STS, TLS-RPT lookups, webhooks) goes the same way
    ok = wait_for(lambda: re.findall(r"event=fetch_process_started pid=(\d+)",
                                     d.log_text()), 10)
    fp = int(ok[-1]) if ok else -1
    fst = proc_status(fp) if fp > 0 else {}
    t.ok(fst.get("PPid") == str(sp) and fst.get("Uid", "").split() ==
         [str(pwd.getpwnam("nobody").pw_uid)] * 4,
         tag + "the fetch process is the spawner's child, running as nobody", fst)
    t.ok(fst.get("NoNewPrivs") == "1" and fst.get("Seccomp") == "2",
         tag + "the fetch process: no_new_privs, seccomp", fst)


def thread_names(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                out.append(f.read().strip())
    except OSError:
        pass
    return out


def steal_spawner_socket(d):
    """A copy of the main process's end of its socket to the spawner (the
    only SOCK_SEQPACKET it holds), by pidfd_getfd: what a compromised main
    process would hold."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(d.pid())
    try:
        for fd in sorted(int(f) for f in os.listdir("/proc/%d/fd" % d.pid())):
            try:
                if not os.readlink("/proc/%d/fd/%d" % (d.pid(), fd)).startswith("socket:"):
                    continue
            except OSError:
                continue
            got = libc.syscall(438, pidfd, fd, 0)     # pidfd_getfd
            if got < 0:
                continue
            s = socket.socket(fileno=got)
            if s.type == socket.SOCK_SEQPACKET:
                return s
            s.detach()
            os.close(got)
    finally:
        os.close(pidfd)
    return None


SPW_MAGIC, SPW_SPAWN, SPW_KILL, SPW_WAIT = 0x4f545350, 2, 3, 4


def spw_request(s, raw):
    """Sends raw bytes; the reply (magic, op, rc, pid, status, nfds) and the
    descriptors that came with it."""
    s.send(raw)
    msg, fds, _, _ = socket.recv_fds(s, 64, 16)
    return struct.unpack("<IIiiii", msg) if len(msg) == 24 else None, fds


def attack_spawner(d, tag):
    """A compromised main process talks to the spawner: what is not one of
    its fixed requests is refused (and logged), it kills only what it
    started, starts only delivery processes and no more than 4."""
    s = steal_spawner_socket(d)
    t.ok(s is not None, tag + "the spawner's socket, seen from the main process")
    if s is None:
        return
    s.settimeout(10 * SCALE)
    req = lambda op, n, pid: struct.pack("<IIii", SPW_MAGIC, op, n, pid)  # noqa: E731
    bad = {"a request one byte longer": req(SPW_SPAWN, 1, 0) + b"x",
           "a short request": req(SPW_SPAWN, 1, 0)[:10],
           "a bad magic": struct.pack("<IIii", 0x41414141, SPW_SPAWN, 1, 0),
           "an unknown op": req(77, 0, 0),
           "more workers than configured": req(SPW_SPAWN, 5, 0),
           "a kill of pid 1": req(SPW_KILL, 0, 1),
           "a kill of -1 (every process)": req(SPW_KILL, 0, -1)}
    for what, raw in bad.items():
        rep, fds = spw_request(s, raw)
        t.ok(rep and rep[2] == errno.EINVAL and not fds, tag + "spawner refuses " + what,
             rep)
    victim = subprocess.Popen(["sleep", "60"])
    rep, _ = spw_request(s, req(SPW_KILL, 0, victim.pid))
    t.ok(rep and rep[2] == errno.ESRCH and victim.poll() is None,
         tag + "spawner refuses to kill a process it did not start", rep)
    victim.kill()
    victim.wait()
    t.ok(wait_for(lambda: "event=spawner_refused why=" in d.log_text(), 5),
         tag + "and logs the refusals", d.log_text()[-800:])
    # valid starts: delivery processes (current and spare are two), no more than 4
    started, held, last = [], [], None
    for i in range(3):
        last, fds = spw_request(s, req(SPW_SPAWN, 1, 0))
        held += fds
        if last and last[2] == 0:
            started.append(last[3])
    t.ok(len(started) == 2 and last and last[2] == errno.EMFILE,
         tag + "a fifth delivery process alive at once is refused", (started, last))
    kids = [(proc_status(p).get("PPid"), open("/proc/%d/comm" % p).read().strip())
            for p in started]
    t.ok(kids and all(k == (str(spawner_pid(d)), "otpmaild") for k in kids),
         tag + "what it started is the spawner's child, otpmaild's binary", kids)
    for fd in held:
        os.close(fd)

    def ended(p):
        rep = spw_request(s, req(SPW_WAIT, 0, p))[0]
        return rep is None or rep[2] != errno.EAGAIN
    for p in started:
        spw_request(s, req(SPW_KILL, 0, p))
        wait_for(lambda: ended(p), 5)
    s.close()


def lose_spawner(d, tag):
    """kill -9 of the spawner: the main process logs it and exits 1; its
    delivery processes go with it."""
    sp = spawner_pid(d)
    kids = [p for p in child_pids(d) if os.path.exists("/proc/%d" % p)]
    os.kill(sp, signal.SIGKILL)
    ok = wait_for(lambda: not d.alive(), 15)
    t.ok(ok and d.proc.returncode == 1 and "event=spawner_lost" in d.log_text(),
         tag + "spawner killed: the main process logs it and exits 1",
         (d.proc.returncode, d.log_text()[-1000:]))
    t.ok(wait_for(lambda: not [p for p in kids if os.path.exists("/proc/%d" % p)], 5),
         tag + "and no delivery process is left", kids)


def main_dies(key, pre, main_user):
    """kill -9 of the main process: the spawner and the delivery processes end."""
    tag = "user=%s: " % main_user
    conf = ("sandbox = no\ntls_policy = none\ndelivery_workers = 2\n"
            "user = %s\ndelivery_user = nobody\n" % main_user)
    d = Daemon(conf_extra=conf, state_dir=pre)
    try:
        wait_for(lambda: len(child_pids(d)) >= 2, 10)
        procs = [spawner_pid(d)] + child_pids(d)
        d.kill9()
        t.ok(wait_for(lambda: not [p for p in procs if p > 0 and
                                   os.path.exists("/proc/%d" % p)], 5),
             tag + "main process killed: the spawner and the delivery processes end",
             procs)
    finally:
        d.stop()


def main():
    keydir = tempfile.mkdtemp(prefix="otpm-privsep-")
    key = os.path.join(keydir, "example.org.k1.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    pre = tempfile.mkdtemp(prefix="otpmail-it-")
    run_case(keydir, key, pre)
    # root with `user =` (the shipped unit): main drops, the spawner stays root
    if os.geteuid() == 0:
        pre2 = tempfile.mkdtemp(prefix="otpmail-it-")
        run_case(keydir, key, pre2, main_user=MAIN_USER, n_load=N_LOAD_USER)
        pre3 = tempfile.mkdtemp(prefix="otpmail-it-")
        main_dies(key, pre3, MAIN_USER)
        subprocess.run(["rm", "-rf", pre2, pre3])
    else:
        t.skip("otpmaild as root with user =", "not root")
    empty_frames(key)
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
