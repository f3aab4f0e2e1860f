"""harness.py - start a real otpmaild for integration tests and talk to it.

    from harness import Daemon, Tap
    t = Tap()
    with Daemon(conf_extra="otp_ttl = 60s\n") as d:      # temp state dir, -f
        r = d.call({"op": "ping"})                     # one request, one answer
        rs = d.pipeline([{...}, {...}])                # pipelined on one connection
        r = d.call_as(65534, {"op": "queue.list"})     # as another uid (nobody)
        p = d.ctl("queue", "list", "--json")           # otpmailctl, CompletedProcess
        d.kill9(); d.start()                           # crash and restart, same state
        d.stop()                                       # SIGTERM, wait
    t.ok(cond, "name"); t.is_(got, want, "name"); t.done()

Binaries come from $top_builddir (set by `make check`), else the source tree.
Everything runs on loopback / a UNIX socket in a private temp directory.

Every script that imports this module has a deadline: SCRIPT_TIMEOUT
seconds ($OTPMAIL_TEST_TIMEOUT, default 300, 900 under OTPMAIL_WRAPPER;
the slowest script takes under 100 s plain, about 200 s under valgrind
memcheck).  At the deadline
a blocked read or a wait that never ends fails the script ("not ok ...
script timeout", exit 1) instead of hanging CI.  SCALE ($OTPMAIL_TIMEOUT_SCALE,
default 10 under OTPMAIL_WRAPPER, else 1) multiplies every timeout of this
module: daemon start and stop, socket reads, otpmailctl, wait_for.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP_BUILDDIR = os.environ.get("top_builddir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
OTPMAILD = os.path.join(TOP_BUILDDIR, "otpmaild")
OTPMAILCTL = os.path.join(TOP_BUILDDIR, "otpmailctl")
# OTPMAIL_WRAPPER="valgrind ..." runs every daemon under a tool
# (tests/VALGRIND.md), which makes it many times slower: Tap.timing checks
# (a deadline or a latency bound, nothing else) are then skipped.
WRAPPER = os.environ.get("OTPMAIL_WRAPPER", "").split()
SCALE = float(os.environ.get("OTPMAIL_TIMEOUT_SCALE") or (10 if WRAPPER else 1))
SCRIPT_TIMEOUT = float(os.environ.get("OTPMAIL_TEST_TIMEOUT") or
                       (900 if WRAPPER else 300))
# OTPMAIL_RUNLOG (tests/valgrind.sh): one line per daemon process the
# harness starts ("start PID"), and per one it kills on purpose ("kill PID"),
# so that every wrapped daemon run is accounted for.
RUNLOG = os.environ.get("OTPMAIL_RUNLOG")


def runlog(what, pid):
    if RUNLOG and pid:
        with open(RUNLOG, "a") as f:
            f.write("%s %d\n" % (what, pid))


class ScriptTimeout(BaseException):
    """Raised at the script's deadline; a BaseException so that no
    `except Exception` in a test swallows it."""


_running = set()    # Daemons started and not yet stopped


def _kill_running():
    for d in list(_running):
        d.kill9()


def _on_alarm(signum, frame):
    print("not ok - script timeout: not finished after %d s "
          "(OTPMAIL_TEST_TIMEOUT)" % SCRIPT_TIMEOUT, flush=True)
    # a second alarm, should the unwinding itself block
    signal.signal(signal.SIGALRM, _on_second_alarm)
    signal.alarm(30)
    raise ScriptTimeout("script timeout")


def _on_second_alarm(signum, frame):
    print("Bail out! script timeout: cleanup blocked too", flush=True)
    _kill_running()
    os._exit(1)


signal.signal(signal.SIGALRM, _on_alarm)
signal.alarm(int(SCRIPT_TIMEOUT))
atexit.register(_kill_running)

# A private, traversable copy of what another uid must run: the checkout
# itself may not be (clone at /root/otpmail, /root mode 0700).
_exec_dir = None


def runnable(path):
    """A copy of the program at path that every uid can run."""
    global _exec_dir
    if _exec_dir is None:
        _exec_dir = tempfile.mkdtemp(prefix="otpmail-bin-")
        os.chmod(_exec_dir, 0o755)
        atexit.register(shutil.rmtree, _exec_dir, True)
    dst = os.path.join(_exec_dir, os.path.basename(path))
    if not os.path.exists(dst):
        shutil.copy(path, dst + ".tmp")
        os.chmod(dst + ".tmp", 0o755)
        os.rename(dst + ".tmp", dst)
    return dst


class Tap:
    """TAP output: ok/not ok lines, a plan at the end, exit status."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, diag=None):
        self.n += 1
        print("%sok %d - %s" % ("" if cond else "not ", self.n, name), flush=True)
        if not cond:
            self.failed += 1
            if diag is not None:
                for line in str(diag).splitlines()[:40]:
                    print("#   " + line)
        return bool(cond)

    def is_(self, got, want, name):
        return self.ok(got == want, name, "got %r, want %r" % (got, want))

    def timing(self, cond, name, diag=None):
        """A measure of speed alone: reported as a comment, never a test
        point (speed depends on the machine's load; numbers belong in
        tests/bench)."""
        self.diag("timing (reported, not checked): %s: %s" %
                  (name, "held" if cond else "NOT held"))
        return True

    def diag(self, msg):
        for line in str(msg).splitlines():
            print("# " + line, flush=True)

    def skip(self, name, why):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, why), flush=True)

    def done(self):
        print("1..%d" % self.n, flush=True)
        sys.exit(1 if self.failed else 0)


class Client:
    """A connection to the control socket: send lines, read answers."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout * SCALE)
        self.sock.connect(path)
        self.buf = b""

    def send(self, req):
        data = req if isinstance(req, (bytes, bytearray)) else \
            (json.dumps(req) + "\n").encode()
        self.sock.sendall(data)

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, req):
        self.send(req)
        return self.recv()

    def close(self):
        self.sock.close()


class Daemon:
    """A real otpmaild on a private state directory."""

    def __init__(self, conf_extra="", state_dir=None, start=True, env=None,
                 socket_mode="0666"):
        self.own_dir = state_dir is None
        self.dir = state_dir or tempfile.mkdtemp(prefix="otpmail-it-")
        os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "state")
        self.conf = os.path.join(self.dir, "otpmail.conf")
        self.sock = os.path.join(self.state, "control.sock")
        self.logfile = os.path.join(self.dir, "otpmaild.log")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        with open(self.conf, "w") as f:
            f.write("state_dir = %s\n" % self.state)
            f.write("control_socket_mode = %s\n" % socket_mode)
            if int(socket_mode, 8) & 0o002:
                # tests reach the socket as other uids (call_as)
                f.write("control_socket_allow_world_writable = yes\n")
            f.write("log_level = debug\n")
            f.write("otp_check_deliverability = no\n")
            # a fully-qualified name: test machines are often called "vm"
            f.write("hostname = otpmail-test.example.net\n")
            f.write(conf_extra)
        if start:
            self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()

    def start(self, timeout=20):
        log = open(self.logfile, "a")
        # OTPMAIL_WRAPPER="valgrind --leak-check=full ..." runs the daemon
        # under a tool (tests/VALGRIND.md); it gets SCALE times the start time.
        timeout *= SCALE
        # exec_prefix: e.g. nsenter into a network namespace (test_cluster)
        self.proc = subprocess.Popen(getattr(self, "exec_prefix", []) + WRAPPER +
                                     [OTPMAILD, "-f", "-c", self.conf],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env)
        log.close()
        _running.add(self)
        runlog("start", self.proc.pid)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("otpmaild exited with %s:\n%s" %
                                   (self.proc.returncode, self.log_text()[-3000:]))
            try:
                if self.call({"op": "ping"}).get("ok"):
                    if os.path.isdir(self.state):
                        os.chmod(self.state, 0o755)
                    return
            except (OSError, EOFError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("otpmaild did not answer within %ss:\n%s" %
                           (timeout, self.log_text()[-3000:]))

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:
            # not counted as a kill on purpose: valgrind.sh fails the run
            self.proc.kill()
            self.proc.wait()
        _running.discard(self)
        return self.proc.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            runlog("kill", self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        _running.discard(self)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pid(self):
        return self.proc.pid if self.proc else None

    def cleanup(self):
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def client(self, timeout=30):
        return Client(self.sock, timeout)

    def call(self, req, timeout=30):
        c = Client(self.sock, timeout)
        try:
            return c.call(req)
        finally:
            c.close()

    def pipeline(self, reqs, timeout=30):
        c = Client(self.sock, timeout)
        try:
            c.send(b"".join((json.dumps(r) + "\n").encode() for r in reqs))
            return [c.recv() for _ in reqs]
        finally:
            c.close()

    def call_as(self, uid, req, gid=None, timeout=30):
        """Sends one request from a child process running as uid."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(gid if gid is not None else uid)
                os.setuid(uid)
                ans = self.call(req, timeout)
                os.write(w, json.dumps(ans).encode())
            except BaseException as e:  # report, never return into the test
                os.write(w, json.dumps({"harness_error": repr(e)}).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        return json.loads(data)

    def ctl(self, *args, input=None, timeout=60, uid=None):
        env = dict(self.env, OTPMAIL_SOCKET=self.sock)
        kw = {}
        prog = OTPMAILCTL
        if uid is not None:
            kw["user"] = uid
            kw["group"] = uid
            kw["extra_groups"] = []
            prog = runnable(OTPMAILCTL)
        return subprocess.run([prog] + list(args), input=input,
                              capture_output=True, text=True, env=env,
                              timeout=timeout * SCALE, **kw)

    def sandbox_messages(self):
        """Paths of the messages delivered to the sandbox Maildir, oldest first."""
        new = os.path.join(self.state, "sandbox", "new")
        try:
            names = os.listdir(new)
        except OSError:
            return []
        paths = [os.path.join(new, n) for n in names]
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime, p))


def wait_for(pred, timeout=10.0, step=0.05):
    """Polls pred() until it returns a true value or timeout (times SCALE);
    returns it."""
    deadline = time.time() + timeout * SCALE
    while True:
        v = pred()
        if v or time.time() >= deadline:
            return v
        time.sleep(step)
