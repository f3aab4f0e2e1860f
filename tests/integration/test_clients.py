#!/usr/bin/env python3
"""test_clients.py - the client libraries (clients/python, clients/node)
against a real otpmaild.

Starts: otpmaild in sandbox mode, and a UNIX socket that accepts and never
answers (the timeout case).  For each client: connection reuse, 50
pipelined requests answered in order, typed errors carrying error,
retry_after and limit, a mailed code read from the sandbox by its queue id
and verified, a reconnect after the daemon restarts, Timeout on the silent
socket, Unreachable with no socket.  Also `pip install` of the Python
package (--no-build-isolation: the test machine is offline).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from harness import Daemon, Tap, TOP_SRCDIR

t = Tap()
sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(TOP_SRCDIR, "clients", "python"))
import otpmail  # noqa: E402

tmp = tempfile.mkdtemp(prefix="otpmail-cl-")
hang_path = os.path.join(tmp, "hang.sock")
hang = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
hang.bind(hang_path)
hang.listen(8)
held = []


def accept_forever():
    while True:
        try:
            held.append(hang.accept()[0])
        except OSError:
            return


threading.Thread(target=accept_forever, daemon=True).start()


def sandbox_code(c, qid):
    import re
    import time
    for _ in range(100):
        for m in c.call({"op": "sandbox.list", "limit": 1000})["messages"]:
            if qid in m["file"]:
                text = c.call({"op": "sandbox.show", "file": m["file"]})["text"]
                found = re.search(r"^ {4}([0-9A-Z]{4,12})\r?$", text, re.M)
                return found and found.group(1)
        time.sleep(0.1)
    return None


with Daemon() as d:
    # --- Python ---
    c = otpmail.Client(d.sock, timeout=5)
    for _ in range(20):
        c.ping()
    t.is_(c.connections, 1, "python: 20 calls reuse one connection")
    rs = c.pipeline([{"op": "ping", "req_id": i} for i in range(50)])
    t.ok(len(rs) == 50 and all(r["ok"] and r["req_id"] == i for i, r in enumerate(rs)),
         "python: 50 pipelined requests answered in order")
    t.is_(c.connections, 1, "python: still one connection")
    to = "py-%d@example.org" % os.getpid()
    issued = c.otp_issue(to, purpose="login")
    t.ok(issued["ok"] and issued["id"], "python: otp_issue")
    try:
        c.otp_issue(to, purpose="login")
        t.ok(False, "python: a second issue at once is rate limited")
    except otpmail.RateLimited as e:
        t.ok(isinstance(e, otpmail.Error) and e.error == "rate_limited" and
             e.retry_after > 0 and isinstance(e.limit, str),
             "python: RateLimited carries error, retry_after and limit", e.reply)
    try:
        c.call({"op": "otp.issue"})
        t.ok(False, "python: missing to")
    except otpmail.BadRequest as e:
        t.is_(e.field, "to", "python: BadRequest names the field")
    r = c.request({"op": "otp.issue"})
    t.ok(not r["ok"] and r["error"] == "bad_request", "python: request() returns refusals")
    code = sandbox_code(c, issued["id"])
    t.ok(code and c.otp_verify(to, code, purpose="login")["ok"],
         "python: the mailed code verifies")
    try:
        c.otp_verify(to, code, purpose="login")
        t.ok(False, "python: a used code is refused")
    except (otpmail.InvalidCode, otpmail.NotFound) as e:
        t.ok(True, "python: a used code raises %s" % type(e).__name__)
    d.stop()
    d.start()
    t.ok(c.ping()["ok"] and c.connections == 2,
         "python: after a daemon restart the next call reconnects", c.connections)
    c.close()
    try:
        otpmail.Client(hang_path, timeout=0.3).ping()
        t.ok(False, "python: a silent peer times out")
    except otpmail.Timeout as e:
        t.is_(e.error, "timeout", "python: a silent peer: Timeout")
    try:
        otpmail.Client("/nonexistent/otpmail.sock").ping()
        t.ok(False, "python: no socket")
    except otpmail.Unreachable:
        t.ok(True, "python: no socket: Unreachable")

    # pip install of the package (offline: no build isolation)
    target = os.path.join(tmp, "site")
    src = os.path.join(tmp, "python-src")     # pip builds in place: not in the source tree
    shutil.copytree(os.path.join(TOP_SRCDIR, "clients", "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    p = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "-q", "--no-index",
                        "--no-build-isolation", "--target", target, src],
                       capture_output=True, text=True, timeout=120,
                       cwd=tmp, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    t.ok(p.returncode == 0 and os.path.exists(os.path.join(target, "otpmail", "__init__.py")),
         "pip install ./clients/python", p.stdout + p.stderr)

    # --- Node ---
    if shutil.which("node") is None:
        t.skip("node client", "node not installed")
    else:
        p = subprocess.Popen(["node", os.path.join(TOP_SRCDIR, "clients", "node", "test",
                                                   "run.js"), d.sock, hang_path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            line = line.rstrip("\n")
            if line == "# restart":
                d.stop()
                d.start()
                p.stdin.write("go\n")
                p.stdin.flush()
            elif line.startswith("ok ") or line.startswith("not ok "):
                name = line.split(" - ", 1)[-1]
                t.ok(line.startswith("ok "), "node: " + name)
            elif line.startswith("#"):
                t.diag(line)
        t.is_(p.wait(timeout=60), 0, "node: the test script exits 0")
        pk = subprocess.run(["npm", "pack", "--dry-run", "--json",
                             os.path.join(TOP_SRCDIR, "clients", "node")],
                            capture_output=True, text=True, cwd=tmp, timeout=120)
        t.ok(pk.returncode == 0 and "index.js" in pk.stdout,
             "npm can pack the node package", pk.stdout[-500:] + pk.stderr[-500:])

hang.close()
for s in held:
    s.close()
shutil.rmtree(tmp, ignore_errors=True)
t.done()
