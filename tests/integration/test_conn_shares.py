#!/usr/bin/env python3
"""test_conn_shares.py - the control socket's connections are no shared pool
that one local user can drain.

Starts: otpmaild (sandbox mode, temp state dir) twice; clients run as real
uids: nobody (65534) and uids 4-7 with no role, apps daemon (1) and sys (3),
admin bin (2), and root.
Checks, at the defaults (control_max_connections 256):
- nobody opening 300 connections keeps control_anon_max_connections_per_uid
  (4); the rest are refused with limit control_anon_max_connections_per_uid;
  an app and an admin still get in;
- five no-role uids together keep at most control_anon_max_connections (16);
- an app opening 100 keeps control_max_connections_per_uid (64); a second
  app and an admin still get in;
- no-role connections are closed when idle (control_anon_idle_timeout, 5 s),
  also one that dribbles half a line; an app's idle connection stays;
- the refusals are logged, at most one line a second (not one per refusal).
With control_max_connections = 40, control_admin_reserve = 4 and a share of
30 per app uid: two apps fill the 36 shared slots, a third connection of an
app is refused, and an admin (bin, root) still gets in.
"""

import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap  # noqa: E402

t = Tap()
NOBODY, DAEMON_UID, BIN_UID, SYS_UID = 65534, 1, 2, 3
ACCESS = "app_users = daemon, sys\nadmin_users = bin\n"


class Holder:
    """A child process running as uid that opens n connections, pings on
    each, and holds the ones that were accepted until stopped."""

    def __init__(self, d, uid, n, dribble=False, watch=25):
        self.r, w = os.pipe()
        cr, self.w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.r)
                os.close(self.w)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                self._child(d.sock, n, dribble, watch, w, cr)
            finally:
                os._exit(0)
        os.close(w)
        os.close(cr)
        self.f = os.fdopen(self.r)
        self.result = json.loads(self.f.readline() or "{}")

    @staticmethod
    def _child(path, n, dribble, watch, w, cr):
        held, refused, errors = [], {}, []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
                try:
                    s.sendall(b'{"op":"ping"}\n')
                except OSError:
                    pass    # refused and closed already: its answer is queued
                buf = b""
                while b"\n" not in buf:
                    c = s.recv(4096)
                    if not c:
                        break
                    buf += c
                ans = json.loads(buf.split(b"\n")[0]) if buf else {}
            except (OSError, ValueError) as e:
                errors.append(repr(e))
                s.close()
                continue
            if ans.get("ok"):
                held.append(s)
            else:
                key = ans.get("limit") or ans.get("error") or "?"
                refused[key] = refused.get(key, 0) + 1
                s.close()
        if dribble:
            for s in held:
                s.sendall(b'{"op":')
        os.write(w, (json.dumps({"held": len(held), "refused": refused,
                                 "errors": errors[:3]}) + "\n").encode())
        # then: report when the daemon closes each held connection
        t0 = time.time()
        live, closed = list(held), []
        while live and time.time() - t0 < watch:
            if dribble:
                for s in live:
                    try:
                        s.sendall(b" ")  # a byte now and then, never a request
                    except OSError:
                        pass
            rl, _, _ = select.select(live, [], [], 0.5)
            for s in rl:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data == b"":
                    closed.append(round(time.time() - t0, 1))
                    live.remove(s)
        os.write(w, (json.dumps({"closed_after": closed, "open": len(live)}) +
                     "\n").encode())
        os.read(cr, 1)

    def closed_after(self):
        """When the daemon closed each held connection (s after the report),
        watching up to `watch` s; self.still_open: how many it did not."""
        r = json.loads(self.f.readline() or "{}")
        self.still_open = r.get("open")
        return r.get("closed_after")

    def stop(self):
        try:
            os.write(self.w, b"x")
        except OSError:
            pass
        os.close(self.w)
        self.f.close()
        os.waitpid(self.pid, 0)


def ping_as(d, uid):
    r = d.call_as(uid, {"op": "ping"}) if uid else d.call({"op": "ping"})
    return r.get("ok") is True


with Daemon(conf_extra=ACCESS) as d:
    # --- one user with no role tries to drain the pool --------------------
    h = Holder(d, NOBODY, 300)
    r = h.result
    t.diag("nobody asked for 300 connections: held %d, refused %s" %
           (r.get("held"), r.get("refused")))
    t.is_(r.get("held"), 4, "nobody (no role) holds 4 of 300 connections "
          "(control_anon_max_connections_per_uid)")
    t.is_(r.get("refused"), {"control_anon_max_connections_per_uid": 296},
          "the other 296 are refused, naming the limit")
    t.ok(ping_as(d, DAEMON_UID), "an app (daemon) still gets in")
    t.ok(ping_as(d, BIN_UID), "an admin (bin) still gets in")
    # the held ones are closed when idle
    closed = h.closed_after()
    t.diag("nobody's idle connections closed after %s s" % closed)
    t.ok(closed and len(closed) == 4 and max(closed) < 20,
         "nobody's 4 idle connections are closed by the daemon "
         "(control_anon_idle_timeout 5 s)", closed)
    h.stop()

    # --- several users with no role together -------------------------------
    hs = [Holder(d, uid, 10) for uid in (NOBODY, 4, 5, 6, 7)]
    held = sum(x.result.get("held", 0) for x in hs)
    t.diag("5 no-role uids asked for 10 each: held %s" % [x.result.get("held") for x in hs])
    t.is_(held, 16, "5 no-role uids together hold 16 (control_anon_max_connections)")
    t.ok(all(x.result.get("held", 0) <= 4 for x in hs), "none more than 4")
    t.ok(ping_as(d, DAEMON_UID) and ping_as(d, SYS_UID) and ping_as(d, 0),
         "apps and root still get in")
    for x in hs:
        x.closed_after()
        x.stop()

    # --- a slow dribbler is not busy ----------------------------------------
    h = Holder(d, NOBODY, 4, dribble=True)
    closed = h.closed_after()
    t.diag("no-role connections dribbling a byte every 0.5 s closed after %s s" % closed)
    t.ok(h.result.get("held") == 4 and closed and len(closed) == 4 and max(closed) < 25,
         "no-role connections sending half a line byte by byte are still closed", closed)
    h.stop()

    # --- one app cannot take every slot ---------------------------------------
    app = Holder(d, DAEMON_UID, 100, watch=8)
    t.diag("app daemon asked for 100: held %d, refused %s" %
           (app.result.get("held"), app.result.get("refused")))
    t.is_(app.result.get("held"), 64, "an app holds 64 of 100 (control_max_connections_per_uid)")
    t.is_(app.result.get("refused"), {"control_max_connections_per_uid": 36},
          "the other 36 are refused, naming the limit")
    t.ok(ping_as(d, SYS_UID), "a second app (sys) still gets in")
    t.ok(ping_as(d, BIN_UID), "an admin (bin) still gets in")
    closed = app.closed_after()
    t.is_((closed, app.still_open), ([], 64), "the app's 64 idle connections stay "
          "open past the no-role idle timeout (watched 8 s)")
    app.stop()

    log = d.log_text()
    lines = [x for x in log.splitlines() if "event=control_refused" in x]
    t.diag("%d refusals, %d control_refused log lines" % (296 + 34 + 36, len(lines)))
    t.ok(0 < len(lines) < 40 and all("reason=control_" in x and "uid=" in x
                                     for x in lines),
         "refusals logged with reason and uid, at most one line a second",
         "\n".join(lines[:5]))

# --- the admin reserve ---------------------------------------------------------
conf = ACCESS + ("control_max_connections = 40\ncontrol_admin_reserve = 4\n"
                 "control_max_connections_per_uid = 30\n")
with Daemon(conf_extra=conf) as d:
    a1 = Holder(d, DAEMON_UID, 30, watch=0)
    a2 = Holder(d, SYS_UID, 30, watch=0)
    t.is_((a1.result.get("held"), a2.result.get("held")), (30, 6),
          "two apps fill the 36 shared slots (30 + 6)")
    t.is_(a2.result.get("refused"), {"control_max_connections": 24},
          "the second app's others: refused at control_max_connections")
    t.ok(ping_as(d, BIN_UID) and ping_as(d, 0), "admins (bin, root) still get in "
         "through control_admin_reserve")
    t.ok(not ping_as(d, NOBODY), "a no-role user does not")
    a1.stop()
    a2.stop()

t.done()
