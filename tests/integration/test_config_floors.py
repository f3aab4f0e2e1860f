#!/usr/bin/env python3
"""test_config_floors.py - otpmaild refuses settings below NIST SP 800-63B and
a control socket every local user may connect to, unless an override key
says the admin accepts the risk; then it warns.

Starts: otpmaild --check-config and otpmaild -f (sandbox mode, temp state
dir) for each case; no peer.
Checks, each with --check-config and with a real start:
- otp_length = 4 and 5 (digits: 10^4, 10^5 codes) and a 4-character alnum code
  (31^4 = 923521) are refused, naming NIST SP 800-63B and the override;
  6 digits and 5 alnum characters (28629151) start;
- otp_ttl = 24h (and otp_max_ttl = 1h alone) are refused; 10m starts;
- control_socket_mode 0777 and 0666 are refused, 0660 starts;
- each override (otp_allow_small_code_space, otp_allow_long_ttl,
  control_socket_allow_world_writable) lets it start with a warning on
  stderr (--check-config) and an event=config_warning log line; the setting
  is in force (4-digit codes, ttl 86400, socket mode 0777);
- the defaults start without any warning.
"""

import os
import re
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, OTPMAILD, wait_for  # noqa: E402

t = Tap()


def check_config(d):
    p = subprocess.run([OTPMAILD, "--check-config", "-c", d.conf], capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def start_fails(d):
    try:
        p = subprocess.run([OTPMAILD, "-f", "-c", d.conf], capture_output=True,
                           text=True, timeout=30, env=d.env)
    except subprocess.TimeoutExpired:
        return None, "still running after 30 s"
    return p.returncode, p.stdout + p.stderr


REFUSED = [
    ("otp_length = 4\n", r"10000 possible codes.*NIST SP 800-63B.*otp_allow_small_code_space"),
    ("otp_length = 5\n", r"100000 possible codes.*otp_allow_small_code_space"),
    ("otp_alphabet = alnum\notp_length = 4\n", r"923521 possible codes"),
    ("otp_ttl = 24h\n", r"otp_ttl = 86400s .*NIST SP 800-63B.*otp_allow_long_ttl"),
    ("otp_max_ttl = 1h\n", r"otp_max_ttl = 3600s .*otp_allow_long_ttl"),
    ("control_socket_mode = 0777\n", r"control_socket_mode = 0777 lets every local user"),
    ("control_socket_mode = 0666\n", r"control_socket_mode = 0666 .*"
     "control_socket_allow_world_writable"),
]
for extra, want in REFUSED:
    name = extra.strip().replace("\n", ", ")
    d = Daemon(start=False, socket_mode="0660", conf_extra=extra)
    try:
        rc, out, err = check_config(d)
        t.ok(rc != 0 and re.search(want, err), "--check-config refuses %s" % name,
             (rc, err))
        rc, out = start_fails(d)
        t.ok(rc not in (0, None) and re.search(want, out) and not os.path.exists(d.sock),
             "otpmaild refuses to start with %s (exit %s)" % (name, rc), out[-500:])
    finally:
        d.cleanup()

ACCEPTED = ["otp_length = 6\n", "otp_alphabet = alnum\notp_length = 5\n",
            "otp_ttl = 10m\n", "control_socket_mode = 0660\n", ""]
for extra in ACCEPTED:
    name = extra.strip().replace("\n", ", ") or "the defaults"
    with Daemon(socket_mode="0660", conf_extra=extra) as d:
        rc, out, err = check_config(d)
        t.ok(rc == 0 and "warning" not in err, "--check-config accepts %s, no warning"
             % name, (rc, err))
        t.ok(d.call({"op": "ping"}).get("ok") and "config_warning" not in d.log_text(),
             "otpmaild starts with %s, no warning" % name)

# --- overrides: start, warn, and the setting is in force -----------------------
OVERRIDES = [
    ("otp_length = 4\notp_allow_small_code_space = yes\n", "10000 possible codes"),
    ("otp_ttl = 24h\notp_max_ttl = 24h\notp_allow_long_ttl = yes\n", "otp_ttl = 86400s"),
    ("control_socket_mode = 0777\ncontrol_socket_allow_world_writable = yes\n",
     "control_socket_mode = 0777"),
]
for extra, want in OVERRIDES:
    name = extra.strip().replace("\n", ", ")
    with Daemon(socket_mode="0660", conf_extra=extra) as d:
        rc, out, err = check_config(d)
        t.ok(rc == 0 and re.search(r"otpmaild: warning: .*" + want, err),
             "--check-config accepts %s with a warning" % name, (rc, err))
        line = [x for x in d.log_text().splitlines() if "event=config_warning" in x]
        t.ok(len(line) == 1 and want in line[0] and "level=warning" in line[0],
             "a real start with %s logs event=config_warning" % name, line)
        if "otp_length" in extra:
            r = d.call({"op": "otp.issue", "to": "four@example.org"})
            t.ok(r.get("ok") and wait_for(d.sandbox_messages, 15),
                 "4-digit code issued", r)
            body = open(d.sandbox_messages()[0], "rb").read().decode(errors="replace")
            t.ok(re.search(r"^\s{4}\d{4}\s*$", body, re.M), "the code has 4 digits")
        elif "otp_ttl" in extra:
            r = d.call({"op": "otp.issue", "to": "day@example.org"})
            t.is_(r.get("ttl"), 86400, "the code lives 24 h, as configured")
        else:
            t.is_(stat.S_IMODE(os.stat(d.sock).st_mode), 0o777,
                  "the socket has mode 0777, as configured")

t.done()
