#!/usr/bin/env python3
"""test_control.py - the daemon's skeleton through its real socket.

Starts: otpmaild (sandbox mode, temp state dir) several times with different
limits.  Checks otpmailctl and raw socket clients: ping, exit codes, bad
input (malformed JSON, overlong lines, pipelining past the limit, too many
connections, idle and silent clients), roles by SO_PEERCRED with a second
real uid, --check-config, the state-dir lock, SIGHUP, SIGTERM, privilege
dropping.
"""

import json
import os
import re
import socket
import subprocess
import time

from harness import Daemon, Tap, OTPMAILD, OTPMAILCTL, wait_for

t = Tap()
NOBODY = 65534
DAEMON_UID = 1  # "daemon" on Debian: the app role below

with Daemon(conf_extra="control_max_line = 4096\ncontrol_max_pipeline = 8\n"
            "control_max_connections = 20\ncontrol_idle_timeout = 2s\n"
            "app_users = daemon\n") as d:
    # --- otpmailctl -----------------------------------------------------
    p = d.ctl("ping")
    t.is_(p.returncode, 0, "otpmailctl ping exits 0")
    t.ok("pong: true" in p.stdout, "otpmailctl ping prints the answer", p.stdout)
    p = d.ctl("--json", "ping")
    t.ok(json.loads(p.stdout).get("pong") is True, "otpmailctl --json prints raw JSON")
    p = d.ctl("no-such-command")
    t.is_(p.returncode, 2, "unknown subcommand: usage exit code 2")
    p = d.ctl("otp", "verify", "a@b.example")
    t.is_(p.returncode, 2, "missing positional argument: exit code 2")
    p = d.ctl("queue", "list", "--help")
    t.ok(p.returncode == 0 and "--domain" in p.stdout, "per-subcommand --help")
    p = subprocess.run([OTPMAILCTL, "-s", "/nonexistent/sock", "ping"],
                       capture_output=True, text=True)
    t.is_(p.returncode, 3, "daemon unreachable: exit code 3")
    p = d.ctl("config", "show")
    t.ok(p.returncode == 0 and "otp_ttl = 300s" in p.stdout,
         "config show prints the effective configuration")
    p = d.ctl("call", '{"op":"ping","req_id":"x1"}')
    t.ok(p.returncode == 0 and json.loads(p.stdout)["req_id"] == "x1", "raw call mode")

    # --- bad input on a raw socket --------------------------------------
    c = d.client()
    for line, field, name in [
            (b'{"op":\n', "", "malformed JSON"),
            (b'[1]\n', "", "a JSON array"),
            (b'{"op":"nope"}\n', "op", "unknown op"),
            (b'{"op":12}\n', "op", "op of the wrong type"),
            (b'{"no_op":1}\n', "op", "missing op"),
            (b'\xff\xfe\x00garbage\n', "", "binary garbage")]:
        c.send(line)
        r = c.recv()
        t.ok(r.get("ok") is False and r.get("error") == "bad_request" and
             r.get("field") == field and r.get("detail"),
             "%s: bad_request naming the field" % name, r)
    t.ok(c.call({"op": "ping"}).get("ok"), "the same connection still serves after bad input")
    c.close()

    # pipelining: answers in order
    reqs = [{"op": "ping", "req_id": i} for i in range(8)]
    rs = d.pipeline(reqs)
    t.is_([r.get("req_id") for r in rs], list(range(8)), "pipelined answers come back in order")
    r = d.call({"op": "mail.send", "req_id": "m1", "from": "a@example.org", "to": "b@example.org",
                "subject": "s", "text": "t"})
    t.ok(r.get("req_id") == "m1" and len(r.get("id", "")) == 24,
         "req_id echoed next to the queue id", r)

    # too many pipelined requests: error, then the connection closes
    c = d.client()
    c.send(b"".join(b'{"op":"ping"}\n' for _ in range(400)))
    answers = []
    try:
        while True:
            answers.append(c.recv())
    except (EOFError, OSError):
        pass
    c.close()
    t.ok(answers and answers[-1].get("error") == "bad_request" and
         "pipelined" in answers[-1].get("detail", ""),
         "pipelining past control_max_pipeline: error then close",
         answers[-2:] if answers else "no answer")
    t.ok(len(answers) < 400, "the connection was cut off, not served forever")

    # overlong line: error, close; others unaffected
    c = d.client()
    c.send(b'{"op":"ping","pad":"' + b"x" * 10000)
    try:
        r = c.recv()
    except EOFError:
        r = {}
    t.ok(r.get("error") == "bad_request" and "control_max_line" in r.get("detail", ""),
         "overlong line: bad_request", r)
    try:
        c.sock.settimeout(5)
        closed = c.sock.recv(10) == b""
    except OSError:
        closed = True
    t.ok(closed, "overlong line: connection closed")
    c.close()
    t.ok(d.call({"op": "ping"}).get("ok"), "daemon still serves after an overlong line")

    # a silent client with half a line never blocks others
    slow = d.client()
    slow.send(b'{"op":"pi')
    # an order, not a speed: answered while the stalled client is still
    # connected (before control_idle_timeout cut it off)
    pong = d.call({"op": "ping"}).get("ok")
    slow.sock.setblocking(False)
    try:
        still = slow.sock.recv(100) != b""
    except BlockingIOError:
        still = True
    except OSError:
        still = False
    t.ok(pong and still, "a client stalled mid-line does not block others")
    # idle timeout closes it
    slow.sock.settimeout(10)
    try:
        got = slow.sock.recv(100)
    except OSError:
        got = b""
    t.ok(got == b"", "idle connection closed after control_idle_timeout")
    slow.close()

    # connection limit
    held = [d.client() for _ in range(20)]
    time.sleep(0.3)
    extra = d.client()
    try:
        r = extra.recv()
    except EOFError:
        r = {}
    t.ok(r.get("error") == "unavailable" and "connections" in r.get("detail", ""),
         "past control_max_connections: an error, not a hang", r)
    extra.close()
    for h in held:
        h.close()
    t.ok(wait_for(lambda: d.call({"op": "ping"}).get("ok"), 5),
         "connections free again after clients leave")

    # --- metrics: requests by op and result, deliveries, latency ---------
    r = d.call({"op": "otp.issue", "to": "metrics@example.org"})
    wait_for(lambda: d.call({"op": "message.status", "id": r.get("id", "")}).get("state")
             == "delivered", 10)
    d.call({"op": "otp.verify", "to": "metrics@example.org", "code": "000000"})
    text = d.call({"op": "metrics"}).get("text", "")
    t.ok('otpmail_requests_total{op="otp.issue",result="ok"} 1' in text,
         "metrics: otp.issue counted by result", text[-2000:])
    t.ok('otpmail_requests_total{op="otp.verify",result="invalid_code"} 1' in text or
         'otpmail_requests_total{op="otp.verify",result="not_found"} 1' in text,
         "metrics: a failed otp.verify counted with its error")
    t.ok('otpmail_delivery_attempts_total{class="otp",result="delivered"' in text,
         "metrics: delivery outcomes by class and result")
    m = re.search(r"^otpmail_delivery_latency_seconds_count (\d+)$", text, re.M)
    t.ok(m and int(m.group(1)) >= 1 and
         "# TYPE otpmail_dkim_sign_seconds histogram" in text,
         "metrics: latency and signing-time histograms")
    t.ok('otpmail_queue_messages{state="done"}' in text, "metrics: queue size by state")

    # --- live events: otpmailctl tail --------------------------------------
    tail = subprocess.Popen([OTPMAILCTL, "-s", d.sock, "tail"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    d.call({"op": "otp.issue", "to": "tail@example.org"})
    line = ""
    t0 = time.time()
    while time.time() - t0 < 10:
        line = tail.stdout.readline()
        if "otp_issue" in line or "event=queued" in line:
            break
    tail.terminate()
    tail.wait(5)
    t.ok("otp_issue" in line or "event=queued" in line, "otpmailctl tail shows events live",
         line)

    # --- roles by SO_PEERCRED -------------------------------------------
    r = d.call_as(NOBODY, {"op": "ping"})
    t.ok(r.get("ok") is True, "ping allowed to a user with no role", r)
    r = d.call_as(NOBODY, {"op": "config.show"})
    t.is_(r.get("error"), "forbidden", "config.show forbidden to a user with no role")
    r = d.call_as(NOBODY, {"op": "otp.issue", "to": "a@example.org"})
    t.is_(r.get("error"), "forbidden", "otp.issue forbidden to a user with no role")
    r = d.call_as(DAEMON_UID, {"op": "help"})
    t.ok(r.get("roles") == {"app": True, "admin": False}, "app_users member has the app role", r)
    r = d.call_as(DAEMON_UID, {"op": "queue.delete", "id": "x"})
    t.is_(r.get("error"), "forbidden", "admin op forbidden to the app role")
    p = d.ctl("config", "show", uid=NOBODY)
    t.is_(p.returncode, 4, "otpmailctl as a forbidden user: exit code 4")
    t.ok("event=forbidden" in d.log_text(), "refusals are logged")

    # --- lock, reload, stop -----------------------------------------------
    p = subprocess.run([OTPMAILD, "-f", "-c", d.conf], capture_output=True, text=True,
                       timeout=20)
    t.ok(p.returncode != 0 and "another otpmaild" in p.stdout + p.stderr,
         "a second daemon on the same state dir refuses to start", p.stderr)
    d.proc.send_signal(1)  # SIGHUP
    t.ok(wait_for(lambda: "event=reloaded" in d.log_text(), 5), "SIGHUP reloads")
    t.ok(d.call({"op": "ping"}).get("ok"), "serving after reload")
    rc = d.stop()
    t.is_(rc, 0, "SIGTERM: clean exit")
    t.ok(not os.path.exists(d.sock), "socket removed on exit")

# --- configuration checks -----------------------------------------------------
with Daemon(start=False, conf_extra="otp_ttl = 2m\n") as d:
    p = subprocess.run([OTPMAILD, "--check-config", "-c", d.conf], capture_output=True,
                       text=True)
    t.ok(p.returncode == 0 and "otp_ttl = 120s" in p.stdout,
         "--check-config prints the effective configuration")
    with open(d.conf, "a") as f:
        f.write("bogus_key = 1\n")
    p = subprocess.run([OTPMAILD, "--check-config", "-c", d.conf], capture_output=True,
                       text=True)
    t.ok(p.returncode == 1 and "unknown key \"bogus_key\"" in p.stderr and
         "otpmail.conf:" in p.stderr, "unknown key: error naming file:line", p.stderr)
    p = subprocess.run([OTPMAILD, "-f", "-c", d.conf], capture_output=True, text=True,
                       timeout=20)
    t.ok(p.returncode == 1, "the daemon does not start on a bad config")
    p = subprocess.run([OTPMAILD, "--check-config", "-c", "/nonexistent.conf"],
                       capture_output=True, text=True)
    t.ok(p.returncode == 1 and "/nonexistent.conf" in p.stderr, "missing config file")

# --- no config at all: sandbox defaults in ./otpmail-state -----------------------
with Daemon(start=False) as d:
    proc = subprocess.Popen([OTPMAILD, "-f"], cwd=d.dir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OTPMAIL_CONFIG=""))
    sock = os.path.join(d.dir, "otpmail-state", "control.sock")
    up = wait_for(lambda: os.path.exists(sock), 10)
    p = subprocess.run([OTPMAILCTL, "--json", "ping"], cwd=d.dir, capture_output=True,
                       text=True)
    t.ok(up and p.returncode == 0 and json.loads(p.stdout).get("sandbox") is True,
         "no config: sandbox mode on ./otpmail-state, found by otpmailctl", p.stderr)
    proc.terminate()
    proc.wait(20)

# --- systemd readiness (Type=notify): READY=1 once the socket answers ------
def notify_recv(ns):
    """The next datagram on the notify socket, or b"" after its timeout."""
    try:
        return ns.recv(4096)
    except socket.timeout:
        return b""


with Daemon(start=False) as d:
    nsock = os.path.join(d.dir, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(nsock)
    ns.settimeout(20)
    d.env["NOTIFY_SOCKET"] = nsock
    d.start()
    t.is_(notify_recv(ns), b"READY=1", "sd_notify: READY=1 sent to $NOTIFY_SOCKET")
    d.stop()
    t.is_(notify_recv(ns), b"STOPPING=1", "sd_notify: STOPPING=1 on SIGTERM")
    ns.close()

# --- started as root: drops to its user -------------------------------------
if os.geteuid() == 0:
    with Daemon(conf_extra="user = nobody\n") as d:
        with open("/proc/%d/status" % d.pid()) as f:
            status = f.read()
        uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0]
        t.ok(uid_line.split()[1:] == [str(NOBODY)] * 4,
             "started as root, runs as its user (all uids dropped)", uid_line)
        t.ok(d.call({"op": "ping"}).get("ok"), "serves after dropping privileges")
        st = os.stat(d.sock)
        t.ok(st.st_uid == NOBODY and (st.st_mode & 0o777) == 0o666,
             "socket owned by the daemon user with the configured mode")
else:
    t.skip("privilege drop", "not root")

t.done()
