#!/usr/bin/env python3
"""test_examples.py - the client examples in examples/ against a real daemon.

Starts: otpmaild in sandbox mode (otp_resend_cooldown = 0s, so a second
run needs no wait).  Runs examples/otp_demo.py (Python) and
examples/otp_demo.js (Node) twice each: each run issues a code, reads its
own mail (by queue id) from the sandbox Maildir, verifies it once (ok) and
again (refused); the second run must not read the first run's mail.
"""
import os
import shutil
import subprocess

from harness import Daemon, Tap, TOP_SRCDIR

t = Tap()
with Daemon(conf_extra="otp_resend_cooldown = 0s\n") as d:
    for name, interp, addr in (("otp_demo.py", "python3", "py@example.org"),
                               ("otp_demo.js", "node", "js@example.org"),
                               ("otp_demo.py", "python3", "py@example.org"),
                               ("otp_demo.js", "node", "js@example.org")):
        if shutil.which(interp) is None:
            t.skip(name, interp + " not installed")
            continue
        p = subprocess.run([interp, os.path.join(TOP_SRCDIR, "examples", name), d.sock, addr],
                           capture_output=True, text=True, timeout=60)
        t.is_(p.returncode, 0, "%s runs to the end" % name)
        t.ok("verify: ok" in p.stdout, "%s: the code from the mail verifies" % name,
             p.stdout + p.stderr)
        t.ok("verify again: invalid_code" in p.stdout or "verify again: not_found" in p.stdout,
             "%s: the second verify is refused" % name, p.stdout)
t.done()
