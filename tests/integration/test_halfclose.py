#!/usr/bin/env python3
"""test_halfclose.py - clients that write, then shut down their write side,
get every answer, in order, before the daemon closes.

Starts: otpmaild (sandbox mode, temp state dir); clients socat, nc -N (when
netcat-openbsd is installed), Python (shutdown(SHUT_WR)) and Node (end()).
Checks:
- the README's socat lines, extracted from README.md and run exactly as
  printed (in a directory where otpmail-state/control.sock is the daemon's
  socket): each prints its answer; a right code verified the same way
  answers ok (the client learns what its request did);
- pipelined requests then end of input: every answer, in order, matched by
  req_id; a last line without a newline is a request like any other;
- the same with Python shutdown(SHUT_WR) (a code verified this way: ok,
  and it is consumed: the next verify fails), Node end(), and nc -N;
- end of input after a line of junk without a newline: its error answer;
- a client that closes both ways at once does not disturb the daemon.
"""

import email
import email.policy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, TOP_SRCDIR, wait_for  # noqa: E402

t = Tap()


def readme_socat_commands():
    """The README's socat examples: each "$ echo ... | socat ..." command
    (with its continuation lines) and the answer line printed under it."""
    with open(os.path.join(TOP_SRCDIR, "README.md")) as f:
        lines = f.read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("$ echo") and "socat" in "".join(lines[i:i + 3]):
            cmd = line[2:]
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            answer = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if "otpmail-state/control.sock" in cmd:
                out.append((cmd, answer))
        i += 1
    return out


def code_of(d, qid):
    def find():
        for p in d.sandbox_messages():
            if qid in os.path.basename(p):
                return p
        return None
    p = wait_for(find, 15)
    if not p:
        return None
    with open(p, "rb") as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            m = re.search(r"^\s{4}(\S+)\s*$", part.get_content(), re.M)
            return m.group(1) if m else None
    return None


def answers(out):
    res = []
    for line in out.splitlines():
        try:
            res.append(json.loads(line))
        except ValueError:
            res.append({"unparsed": line})
    return res


def py_halfclose(path, data, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.decode()


def pipelined(n, last_newline=True):
    reqs = [{"op": "ping" if i % 2 else "version", "req_id": "r%d" % i} for i in range(n)]
    data = "\n".join(json.dumps(r) for r in reqs) + ("\n" if last_newline else "")
    return data.encode(), [r["req_id"] for r in reqs]


NODE = r"""
const net = require("net");
const s = net.createConnection(process.argv[2], () => {
  s.write(process.argv[3]);
  s.end();                       // half-close: we still read
});
let buf = "";
s.on("data", (d) => { buf += d; });
s.on("end", () => { process.stdout.write(buf); });
s.on("error", (e) => { console.error(String(e)); process.exit(1); });
"""

with Daemon() as d:
    work = tempfile.mkdtemp(prefix="otpmail-hc-")
    try:
        os.symlink(d.state, os.path.join(work, "otpmail-state"))

        def sh(cmd, timeout=20):
            p = subprocess.run(["sh", "-c", cmd], cwd=work, capture_output=True,
                               text=True, timeout=timeout)
            return p.returncode, p.stdout, p.stderr

        # --- the README's socat lines, as printed ------------------------------
        cmds = readme_socat_commands()
        t.ok(len(cmds) >= 2 and any("otp.issue" in c for c, _ in cmds) and
             any("otp.verify" in c for c, _ in cmds),
             "README.md holds %d socat examples (otp.issue, otp.verify)" % len(cmds), cmds)
        issued = None
        for cmd, printed in cmds:
            rc, out, err = sh(cmd)
            got = answers(out)
            want = json.loads(printed) if printed.startswith("{") else {}
            t.ok(rc == 0 and len(got) == 1 and "ok" in got[0],
                 "README line prints one answer: %s" % cmd[:60], (rc, out, err))
            if got and "otp.issue" in cmd:
                t.ok(got[0].get("ok") is True and set(want) <= set(got[0]),
                     "socat otp.issue: ok, with the fields the README shows", got)
                issued = got[0]
            elif got and "otp.verify" in cmd and got[0].get("ok") is False:
                t.is_(got[0].get("error"), want.get("error"),
                      "socat otp.verify (a wrong code): the README's error")
        # the README's verify line with the right code: the client learns ok
        verify_cmd = [c for c, _ in cmds if "otp.verify" in c][0]
        code = code_of(d, issued["id"]) if issued else None
        t.ok(code is not None, "the code mailed to the sandbox", issued)
        rc, out, err = sh(re.sub(r'"code":"[^"]*"', '"code":"%s"' % code, verify_cmd))
        t.is_(answers(out), [{"ok": True}],
              "socat otp.verify with the right code prints {\"ok\":true}")

        # --- pipelined through socat, last line without a newline -------------
        data, ids = pipelined(20, last_newline=False)
        path = os.path.join(work, "req.txt")
        with open(path, "wb") as f:
            f.write(data)
        rc, out, err = sh("socat -t 10 - UNIX-CONNECT:otpmail-state/control.sock < req.txt")
        got = [a.get("req_id") for a in answers(out)]
        t.is_(got, ids, "socat: 20 pipelined requests, the last without newline: "
              "20 answers in order")

        # --- Python shutdown(SHUT_WR) ----------------------------------------
        for n in (1, 64):
            data, ids = pipelined(n, last_newline=(n == 1))
            got = [a.get("req_id") for a in answers(py_halfclose(d.sock, data))]
            t.is_(got, ids, "python SHUT_WR: %d request(s), %d answer(s) in order" % (n, n))
        r = d.call({"op": "otp.issue", "to": "bob@example.org", "purpose": "login"})
        code = code_of(d, r.get("id", "?"))
        req = {"op": "otp.verify", "to": "bob@example.org", "purpose": "login",
               "code": code or "000000"}
        out = py_halfclose(d.sock, json.dumps(req).encode())  # no newline at all
        t.is_(answers(out), [{"ok": True}],
              "python SHUT_WR, otp.verify without a newline: the client gets ok")
        again = d.call(req)
        t.ok(again.get("ok") is False, "... and the code was consumed (once)", again)
        # a line over the limit then EOF: an error, not a hang
        out = py_halfclose(d.sock, b'{"op":"ping"}\n' + b"x" * 20000)
        got = answers(out)
        t.ok(len(got) == 2 and got[0].get("ok") is True and
             got[1].get("error") == "bad_request",
             "python SHUT_WR, a last line of 20000 bytes of junk: the answer, then "
             "an error", out[:300])

        # --- Node end() --------------------------------------------------------
        data, ids = pipelined(10, last_newline=False)
        js = os.path.join(work, "halfclose.js")
        with open(js, "w") as f:
            f.write(NODE)
        p = subprocess.run(["node", js, d.sock, data.decode()], capture_output=True,
                           text=True, timeout=20)
        got = [a.get("req_id") for a in answers(p.stdout)]
        t.is_(got, ids, "node end(): 10 pipelined requests, 10 answers in order")

        # --- nc -N (netcat-openbsd) ---------------------------------------------
        nc = shutil.which("nc")
        if nc and "-N" in subprocess.run([nc, "-h"], capture_output=True,
                                         text=True).stderr:
            rc, out, err = sh("nc -N -U otpmail-state/control.sock < req.txt")
            data, ids = pipelined(20, last_newline=False)
            t.is_([a.get("req_id") for a in answers(out)], ids,
                  "nc -N: 20 pipelined requests, 20 answers in order")
        else:
            t.skip("nc -N", "netcat-openbsd not installed")

        # --- a client that goes away entirely ----------------------------------
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            s.sendall(b'{"op":"ping"}\n{"op":"version"}\n')
            s.close()
        t.ok(d.call({"op": "ping"}).get("ok") and d.alive(),
             "20 clients that close both ways at once: the daemon still serves")
    finally:
        shutil.rmtree(work, ignore_errors=True)

t.done()
