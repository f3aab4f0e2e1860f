#!/usr/bin/env python3
"""test_access.py - who may do what, and the modes of the daemon's files.

Starts: otpmaild (sandbox mode, temp state dir) several times; no peer.
Checks:
- every op of the dispatch table (read from agent/control/ops.c, so a new op is
  covered) as a uid with no role (nobody), as the app role (app_users =
  daemon, uid 1), as an admin by configuration (admin_users = bin, uid 2)
  and as root: a refusal is {"ok":false,"error":"forbidden"}, any other
  answer passed the role check; exactly what the table allows passes.
  An app sees only its own messages; sandbox.show cannot be walked out of
  the Maildir.
- modes: the control socket per control_socket_mode (default 0660, and a
  configured 0600 and 0666), the state directory and everything under it
  not world-writable (and the secrets not group/other accessible), the OTP
  secret (otp.secret) 0600, DKIM keys from `otpmailctl dkim keygen` 0600.
- the daemon refuses to start if the OTP secret, the old OTP secret or a
  configured DKIM key is readable by group/other (non-zero exit, a message
  naming the file and the mode), and starts again after chmod 600.
- started as root with user = nobody it runs as nobody (/proc/<pid>/status
  Uid/Gid/Groups/CapEff), owns its files and still serves (ping, otp.issue).
"""

import json
import os
import re
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, OTPMAILD, TOP_SRCDIR, Client, wait_for  # noqa: E402

t = Tap()
NOBODY, DAEMON_UID, BIN_UID = 65534, 1, 2


def ops_table():
    """[(op, roles)] from agent/control/ops.c; roles is a set of 'any', 'app', 'admin'."""
    with open(os.path.join(TOP_SRCDIR, "agent", "control", "ops.c")) as f:
        src = f.read()
    table = src[src.index("ctl_ops[]"):]
    table = table[:table.index("{ NULL")]
    macros = {"ANY": {"any", "app", "admin"}, "APP": {"app", "admin"}, "ADMIN": {"admin"}}
    out = []
    for m in re.finditer(r'\{\s*"([a-z.]+)",\s*([A-Z_ |()]+?),', table):
        roles = set()
        for word in re.findall(r"[A-Z_]+", m.group(2)):
            if word in macros:
                roles |= macros[word]
            else:
                roles.add({"ROLE_ANY": "any", "ROLE_APP": "app",
                           "ROLE_ADMIN": "admin"}[word])
        out.append((m.group(1), roles))
    return out


def start_plain(d, timeout=20):
    """Starts d without the harness's chmod of the state dir; root pings."""
    log = open(d.logfile, "a")
    d.proc = subprocess.Popen([OTPMAILD, "-f", "-c", d.conf], stdout=log,
                              stderr=subprocess.STDOUT, env=d.env)
    log.close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError("otpmaild exited: " + d.log_text()[-2000:])
        try:
            c = Client(d.sock, 5)
            ok = c.call({"op": "ping"}).get("ok")
            c.close()
            if ok:
                return
        except (OSError, EOFError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("otpmaild did not answer: " + d.log_text()[-2000:])


def start_fails(d, timeout=20):
    """Runs otpmaild -f on d's config; (exit code, output) of a refused start."""
    try:
        p = subprocess.run([OTPMAILD, "-f", "-c", d.conf], capture_output=True, text=True,
                           timeout=timeout, env=d.env)
    except subprocess.TimeoutExpired:
        return None, "still running after %ss" % timeout
    return p.returncode, p.stdout + p.stderr


def write_conf(d, extra, socket_mode=None):
    with open(d.conf, "w") as f:
        f.write("state_dir = %s\n" % d.state)
        if socket_mode is not None:
            f.write("control_socket_mode = %s\n" % socket_mode)
        f.write("log_level = debug\notp_check_deliverability = no\n")
        f.write(extra)


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


# --- roles -------------------------------------------------------------------
table = ops_table()
t.ok(len(table) >= 20 and ("ping", {"any", "app", "admin"}) in table and
     ("queue.delete", {"admin"}) in table, "read %d ops from agent/control/ops.c" % len(table),
     table)

SYS = 3  # "sys", primary group sys: the app role through app_groups
who = [("nobody (no role)", NOBODY, "any"), ("daemon (app_users)", DAEMON_UID, "app"),
       ("sys (app_groups)", SYS, "app"),
       ("bin (admin_users)", BIN_UID, "admin"), ("root", 0, "admin")]
with Daemon(conf_extra="app_users = daemon\napp_groups = sys\nadmin_users = bin\n") as d:
    # a message of root's, for message.status below
    own = d.call({"op": "mail.send", "from": "app@example.org", "to": "r@example.com",
                  "subject": "s", "text": "t"})
    unknown = set()
    for label, uid, role in who:
        wrong = []
        passed = refused = 0
        for op, roles in table:
            req = {"op": op, "req_id": "acl-%s" % op}
            r = d.call_as(uid, req) if uid else d.call(req)
            if "harness_error" in r:
                wrong.append((op, r))
                continue
            if r.get("error") == "bad_request" and "unknown op" in r.get("detail", ""):
                unknown.add(op)
                continue
            forbidden = r.get("ok") is False and r.get("error") == "forbidden"
            if forbidden:
                refused += 1
            else:
                passed += 1
            if forbidden == (role in roles):
                wrong.append((op, "allowed" if role in roles else "not allowed", r))
            if forbidden and (r.get("req_id") != req["req_id"] or
                              set(r) - {"ok", "error", "detail", "req_id"}):
                wrong.append((op, "odd refusal", r))
        t.ok(not wrong, "%s: exactly the ops its role allows pass (%d passed, %d forbidden)"
             % (label, passed, refused), "\n".join(map(repr, wrong)))
    t.ok(not unknown, "every op of agent/control/ops.c is known to the daemon (rebuild?)",
         sorted(unknown))
    helpops = {o["op"] for o in d.call({"op": "help"}).get("ops", [])}
    t.is_(sorted(helpops - {op for op, _ in table}), [],
          "help lists no op that agent/control/ops.c's table lacks")
    # the same through otpmailctl: exit code 4 on forbidden
    p = d.ctl("queue", "list", uid=DAEMON_UID)
    t.is_(p.returncode, 4, "otpmailctl queue list as the app role: exit code 4 (forbidden)")
    p = d.ctl("--json", "queue", "list", uid=BIN_UID)
    t.is_(p.returncode, 0, "otpmailctl queue list as an admin_users member: exit 0")
    # an app sees its own messages only
    r = d.call_as(DAEMON_UID, {"op": "message.status", "id": own.get("id", "x")})
    t.is_(r.get("error"), "not_found", "the app role cannot see another uid's message")
    mine = d.call_as(DAEMON_UID, {"op": "mail.send", "from": "app@example.org",
                                  "to": "r@example.com", "subject": "s", "text": "t"})
    r = d.call_as(DAEMON_UID, {"op": "message.status", "id": mine.get("id", "x")})
    t.ok(mine.get("ok") and r.get("ok") and r.get("id") == mine.get("id"),
         "the app role sees its own message", r)
    r = d.call({"op": "message.status", "id": mine.get("id", "x")})
    t.ok(r.get("ok"), "root sees the app's message", r)
    # the sandbox reader stays in the Maildir
    for name in ("../../otp.secret", "../otp.secret", "/etc/shadow", "..", ".",
                 "../new/../../otp.secret", "x/../../otp.secret"):
        r = d.call_as(DAEMON_UID, {"op": "sandbox.show", "file": name})
        t.ok(r.get("ok") is False and r.get("error") in ("bad_request", "not_found"),
             "sandbox.show %r refused to the app role" % name, r)
    t.ok("event=forbidden" in d.log_text() and "uid=65534" in d.log_text(),
         "refusals are logged with the uid")
    # a flood of forbidden requests does not flood the log
    before = d.log_text().count("event=forbidden")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            c, n = d.client(60), 0
            # reading as it goes (a no-role peer that does not read is
            # closed), within control_max_pipeline
            for _ in range(300):
                c.send(b'{"op":"queue.list"}\n' * 10)
                n += sum(c.recv().get("error") == "forbidden" for _ in range(10))
            os.write(w, str(n).encode())
        except BaseException as e:  # report, never return into the test
            os.write(w, repr(e).encode()[:200])
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 256).decode() or "0"
    os.close(r)
    os.waitpid(pid, 0)
    t.is_(got, "3000", "3000 forbidden requests from nobody, 3000 forbidden answers")
    lines = [ln for ln in d.log_text().splitlines() if "event=forbidden" in ln][before:]
    t.ok(len(lines) <= 20, "they are logged at most once a second (%d lines)" %
         len(lines), lines[:3])
    time.sleep(1.1)
    d.call_as(65534, {"op": "queue.list"})
    lines = [ln for ln in d.log_text().splitlines() if "event=forbidden" in ln][before:]
    counted = len(lines) + sum(int(x) for ln in lines
                               for x in re.findall(r"not_logged=(\d+)", ln))
    t.ok(counted >= 3001, "the logged lines and their not_logged counts add up to "
         "every refusal (%d of at least 3001)" % counted, lines[-3:])

# --- file modes ----------------------------------------------------------------
# default control_socket_mode: 0660
d = Daemon(start=False)
try:
    write_conf(d, "")
    start_plain(d)
    t.is_(oct(mode(d.sock)), oct(0o660), "control socket: default mode 0660")
    t.ok(stat.S_ISSOCK(os.lstat(d.sock).st_mode), "it is a socket")
    r = d.call_as(NOBODY, {"op": "ping"})
    t.ok("harness_error" in r and "Permission" in r["harness_error"],
         "mode 0660 root:root: nobody cannot even connect", r)
    st = os.stat(d.state)
    t.ok(not (st.st_mode & stat.S_IWOTH), "state dir not world-writable (%o)" %
         stat.S_IMODE(st.st_mode))
    secret = os.path.join(d.state, "otp.secret")
    t.ok(os.path.exists(secret), "the OTP secret is <state>/otp.secret (store/secret.c)")
    t.is_(oct(mode(secret)), oct(0o600), "otp.secret mode 0600")
    t.is_(os.path.getsize(secret), 32, "otp.secret holds 32 bytes")
    # dkim keys
    p = d.ctl("--json", "dkim", "keygen", "--domain", "example.org", "--selector", "s1")
    kg = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
    t.ok(p.returncode == 0 and kg.get("file"), "otpmailctl dkim keygen (rsa)", p.stdout +
         p.stderr)
    p2 = d.ctl("--json", "dkim", "keygen", "--domain", "example.org", "--selector", "s2",
               "--algorithm", "ed25519")
    kg2 = json.loads(p2.stdout) if p2.stdout.strip().startswith("{") else {}
    t.ok(p2.returncode == 0 and kg2.get("file"), "otpmailctl dkim keygen --algorithm ed25519")
    for k in (kg, kg2):
        if k.get("file"):
            t.is_(oct(mode(k["file"])), oct(0o600), "DKIM key %s mode 0600" %
                  os.path.basename(k["file"]))
            dd = os.path.dirname(k["file"])
            t.ok(not (mode(dd) & 0o007), "DKIM key directory closed to others (%o)" % mode(dd))
    # nothing under the state dir is world-writable; secrets closed to others
    bad = []
    for root, dirs, files in os.walk(d.state):
        for n in dirs + files:
            p_ = os.path.join(root, n)
            if p_ == d.sock:
                continue
            m = mode(p_)
            if m & stat.S_IWOTH:
                bad.append((p_, oct(m), "world-writable"))
            if (p_.startswith(os.path.join(d.state, "db")) or
                    p_.startswith(os.path.join(d.state, "dkim")) or
                    p_.startswith(os.path.join(d.state, "spool")) or p_ == secret) \
                    and m & 0o007:
                bad.append((p_, oct(m), "open to others"))
    t.ok(not bad, "nothing under the state dir is world-writable; db, spool, dkim and "
         "the secret are closed to others", bad)
    # the daemon refuses a group/other-readable secret
    d.stop()
    os.chmod(secret, 0o644)
    rc, out = start_fails(d)
    t.ok(rc not in (None, 0) and "otp.secret" in out and "644" in out,
         "otp.secret mode 0644: the daemon refuses to start, naming file and mode "
         "(exit %s)" % rc, out[-800:])
    os.chmod(secret, 0o640)
    rc, out = start_fails(d)
    t.ok(rc not in (None, 0) and "otp.secret" in out, "otp.secret mode 0640 refused too",
         out[-500:])
    os.chmod(secret, 0o600)
    # a configured DKIM key readable by others
    if kg.get("config_line"):
        with open(d.conf, "a") as f:
            f.write(kg["config_line"] + "\n")
        start_plain(d)
        t.ok(d.alive(), "starts with the 0600 key configured")
        d.stop()
        os.chmod(kg["file"], 0o644)
        rc, out = start_fails(d)
        t.ok(rc not in (None, 0) and os.path.basename(kg["file"]) in out and "644" in out,
             "DKIM key mode 0644: refuses to start, naming the key and the mode (exit %s)"
             % rc, out[-800:])
        os.chmod(kg["file"], 0o604)
        rc, out = start_fails(d)
        t.ok(rc not in (None, 0), "DKIM key mode 0604 refused too", out[-300:])
        os.chmod(kg["file"], 0o600)
    # an old OTP secret readable by others
    old = os.path.join(d.dir, "old.secret")
    with open(old, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(old, 0o644)
    with open(d.conf, "a") as f:
        f.write("otp_old_secret_file = %s\n" % old)
    rc, out = start_fails(d)
    t.ok(rc not in (None, 0) and "old.secret" in out,
         "otp_old_secret_file mode 0644: refuses to start (exit %s)" % rc, out[-500:])
    os.chmod(old, 0o600)
    start_plain(d)
    t.ok(d.alive() and d.call({"op": "ping"}).get("ok"),
         "after chmod 600 of every secret it starts again, no manual step")
finally:
    d.stop()
    d.cleanup()

# configured control_socket_mode
for want in (0o600, 0o666):
    d = Daemon(start=False)
    try:
        write_conf(d, "control_socket_allow_world_writable = yes\n" if want & 0o002
                   else "", socket_mode="%04o" % want)
        start_plain(d)
        t.is_(oct(mode(d.sock)), oct(want), "control_socket_mode = %04o honoured" % want)
        os.chmod(d.state, 0o755)  # let nobody reach the socket: only its mode decides
        r = d.call_as(NOBODY, {"op": "ping"})
        if want & 0o002:
            t.ok(r.get("ok") is True, "mode %04o: nobody connects (and has no role)" % want,
                 r)
        else:
            t.ok("harness_error" in r, "mode %04o: nobody cannot connect" % want, r)
    finally:
        d.stop()
        d.cleanup()

# control_socket_group: members of the group connect with mode 0660
d = Daemon(start=False)
try:
    write_conf(d, "control_socket_group = sys\n", socket_mode="0660")
    start_plain(d)
    os.chmod(d.state, 0o755)
    st = os.stat(d.sock)
    t.ok(st.st_gid == SYS and stat.S_IMODE(st.st_mode) == 0o660,
         "control_socket_group = sys: socket group sys, mode 0660")
    r = d.call_as(SYS, {"op": "ping"})
    t.ok(r.get("ok") is True, "a member of the socket group connects", r)
    r = d.call_as(NOBODY, {"op": "ping"})
    t.ok("harness_error" in r, "a stranger cannot", r)
finally:
    d.stop()
    d.cleanup()

# a state directory that already exists world-writable: anyone could swap the
# socket, the spool or plant files; the daemon must refuse it or close it
d = Daemon(start=False)
try:
    write_conf(d, "")
    os.mkdir(d.state)
    os.chmod(d.state, 0o777)
    p = subprocess.Popen([OTPMAILD, "-f", "-c", d.conf], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    up = wait_for(lambda: p.poll() is not None or os.path.exists(d.sock), 10)
    refused = p.poll() not in (None, 0)
    m = mode(d.state)
    t.ok(refused or not (m & 0o002), "a pre-existing world-writable state dir (0777): "
         "refuses to start or closes it (running=%s, mode now %o)" % (p.poll() is None, m))
    if p.poll() is None:
        p.terminate()
    p.communicate(timeout=20)
finally:
    d.cleanup()

# --- privilege drop ----------------------------------------------------------------
if os.geteuid() == 0:
    with Daemon(conf_extra="user = nobody\notp_resend_cooldown = 0\n") as d:
        with open("/proc/%d/status" % d.pid()) as f:
            status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        t.is_(status["Uid"].split(), [str(NOBODY)] * 4,
              "started as root with user = nobody: every uid is nobody")
        t.is_(status["Gid"].split(), [str(NOBODY)] * 4, "every gid is nogroup")
        t.is_(status["Groups"].split(), [], "no supplementary groups")
        t.is_(int(status["CapEff"].strip(), 16), 0, "no effective capabilities")
        t.ok(d.call({"op": "ping"}).get("ok"), "serves ping after dropping privileges")
        r = d.call({"op": "otp.issue", "to": "drop@example.org"})
        t.ok(r.get("ok"), "otp.issue works as nobody (store and spool writable)", r)
        t.ok(wait_for(lambda: d.sandbox_messages(), 10), "and the mail is delivered")
        secret = os.path.join(d.state, "otp.secret")
        st = os.stat(secret)
        t.ok(st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o600,
             "otp.secret owned by nobody, 0600")
        owned = [p for p in (d.state, os.path.join(d.state, "db"),
                             os.path.join(d.state, "spool")) if os.stat(p).st_uid != NOBODY]
        t.ok(not owned, "state, db and spool owned by nobody", owned)
        bad = []
        for root, dirs, files in os.walk(d.state):
            for n in dirs + files:
                p_ = os.path.join(root, n)
                if p_ != d.sock and mode(p_) & stat.S_IWOTH:
                    bad.append(p_)
        t.ok(not bad, "running as nobody: nothing under the state dir world-writable", bad)
        # its own uid is admin; root still is
        r = d.call({"op": "queue.list"})
        t.ok(r.get("ok"), "root is still admin", r)
        # a hard link planted in the state dir (possible for nobody where
        # fs.protected_hardlinks = 0) to a root file outside it, and a symlink:
        # the start as root must not hand those files to nobody
        victim = os.path.join(d.dir, "victim-root-file")
        with open(victim, "w") as f:
            f.write("root's\n")
        os.chmod(victim, 0o600)
        victim2 = os.path.join(d.dir, "victim-root-file2")
        with open(victim2, "w") as f:
            f.write("root's\n")
        os.link(victim, os.path.join(d.state, "spool", "planted-hardlink"))
        os.symlink(victim2, os.path.join(d.state, "planted-symlink"))
        # the crash-restart path as nobody: kill -9 and start again
        d.kill9()
        d.start()
        t.ok(os.stat(victim).st_uid == 0, "the start as root does not chown a hard-linked "
             "file outside the state dir to nobody (owner now %d)" % os.stat(victim).st_uid)
        t.ok(os.stat(victim2).st_uid == 0, "nor the target of a symlink in the state dir")
        with open("/proc/%d/status" % d.pid()) as f:
            uid_line = [l for l in f.read().splitlines() if l.startswith("Uid:")][0]
        t.ok(uid_line.split()[1:] == [str(NOBODY)] * 4 and d.call({"op": "ping"}).get("ok"),
             "after kill -9 and restart it runs as nobody again", uid_line)
else:
    t.skip("privilege drop", "not root")

t.done()
