#!/usr/bin/env python3
"""test_apps.py - apps are isolated, nobody but the owner can lock an address
out, concurrency buys no extra mail, answers leak nothing, retries are safe.

Starts: otpmaild (sandbox mode) with two apps on two real uids (app "shop" =
uid 1 daemon, senders shop.example; app "bank" = uid 2 bin, senders
bank.example and noreply@example.org), an implicit app (uid 3 sys through
app_users) and root as admin; a second daemon with otp_verify_detail = yes.
No peer: the sandbox transport.
Checks (issue #16 items 2, 3, 4, 5, 11):
- app B cannot observe (sandbox.list/show, message.status), verify, revoke,
  kill (wrong guesses), lock (client or context lock-outs) or rate-limit
  (cooldown, hourly budget) anything of app A's; an app cannot act as
  another (as_app); an admin sees all and may act as an app.
- mail.send's from and a raw message's From stay within the app's senders;
  an implicit app may use any sender; bad app lines are config errors.
- 1,000 wrong verifies for alice from client X across purposes and
  contexts: X is locked out after otp_lockout_after; alice as client Y
  gets a fresh code in her own context and verifies it: ok.  The lock-out
  always has a true retry_after (no permanent lock by default).
- 12 simultaneous otp.issue for one address: exactly one mail; the other 11
  answer rate_limited/resend_cooldown with its retry_after (three rounds).
- a verify for an address with no code and a wrong code get the same answer
  (same fields); otp_verify_detail = yes restores not_found/attempts_left.
- idempotency_key: the same key and body give the first answer (same id, no
  second mail), also after a restart; another body under the key is
  idempotency_mismatch; another app's same key is its own.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, OTPMAILD, wait_for  # noqa: E402

t = Tap()
SHOP, BANK, SYS = 1, 2, 3      # daemon, bin, sys
CONF = ("app = shop users=daemon senders=shop.example\n"
        "app = bank users=bin senders=bank.example,noreply@example.org\n"
        "app_users = sys\n"
        "otp_max_per_address_hour = 4\n")


def as_uid(uid, fn):
    """Runs fn() in a child as uid (no groups); returns its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = fn()
        except BaseException as e:  # report, never return into the test
            out = {"harness_error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def pipeline_as(d, uid, reqs):
    """reqs pipelined on one connection, 50 at a time (control_max_pipeline)."""
    def run():
        c = d.client(120)
        out = []
        for i in range(0, len(reqs), 50):
            chunk = reqs[i:i + 50]
            c.send(b"".join((json.dumps(r) + "\n").encode() for r in chunk))
            out += [c.recv() for _ in chunk]
        c.close()
        return out
    return as_uid(uid, run)


def simultaneous_as(d, uid, reqs):
    """Each request on its own connection, all sent before any answer is read."""
    def run():
        socks = []
        for req in reqs:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(d.sock)
            socks.append(s)
        for s, req in zip(socks, reqs):
            s.sendall((json.dumps(req) + "\n").encode())
        out = []
        for s in socks:
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            out.append(json.loads(buf.split(b"\n")[0]))
            s.close()
        return out
    return as_uid(uid, run)


def code_in(text):
    m = re.search(r"\b(\d{6})\b is your", text) or re.search(r"\b(\d{6})\b", text)
    return m.group(1) if m else None


def mails_to(d, addr):
    n = 0
    for p in d.sandbox_messages():
        with open(p, errors="replace") as f:
            if "Delivered-To: %s" % addr in f.read(4096):
                n += 1
    return n


def strip(r):
    return {k: v for k, v in r.items() if k != "req_id"}


with Daemon(conf_extra=CONF) as d:
    # --- item 3: nobody but the owner can lock an address out --------------------
    reqs = []
    for i in range(1000):
        reqs.append({"op": "otp.verify", "to": "alice@example.org",
                     "purpose": ("login", "reset", "x")[i % 3],
                     "context": "ctx-%d" % (i % 7) if i % 5 else None,
                     "code": "%06d" % i, "client_id": "203.0.113.9"})
        if reqs[-1]["context"] is None:
            del reqs[-1]["context"]
    ans = pipeline_as(d, SHOP, reqs)
    checked = sum(1 for a in ans if a.get("error") == "invalid_code")
    locked = [a for a in ans if a.get("error") == "locked"]
    t.ok(len(ans) == 1000 and not any(a.get("ok") for a in ans),
         "1,000 wrong verifies from client X: none succeeds", ans[-1:])
    t.ok(checked == 10 and len(locked) == 990,
         "client X is held to otp_lockout_after = 10 checked guesses (%d checked, %d "
         "refused)" % (checked, len(locked)))
    t.ok(all(a.get("limit") == "client_lockout" and 0 < a.get("retry_after", 0) <= 3600
             for a in locked), "every refusal names client_lockout with a true retry_after",
         locked[:1])
    r = d.call_as(SHOP, {"op": "otp.issue", "to": "alice@example.org", "context": "alice-own",
                         "client_id": "198.51.100.7"})
    t.ok(r.get("ok"), "alice (client Y) gets a fresh code in her own context", r)
    wait_for(lambda: code_in(d.call_as(SHOP, {"op": "sandbox.show", "latest": True})
                             .get("text", "")), 15)
    code = code_in(d.call_as(SHOP, {"op": "sandbox.show", "latest": True}).get("text", ""))
    r = d.call_as(SHOP, {"op": "otp.verify", "to": "alice@example.org", "context": "alice-own",
                         "client_id": "198.51.100.7", "code": code})
    t.ok(r.get("ok"), "... and verifies it: ok", r)

    # --- item 2: apps are isolated ----------------------------------------------
    who = {u: d.call_as(u, {"op": "help"}) for u in (SHOP, BANK, SYS)}
    t.ok(all(w.get("roles", {}).get("app") for w in who.values()),
         "uids named by app lines and app_users have the app role",
         who)
    # B asks first: A's cooldown and budget are A's own
    rb = d.call_as(BANK, {"op": "otp.issue", "to": "amy@example.org", "purpose": "pay", "context": "s1"})
    ra = d.call_as(SHOP, {"op": "otp.issue", "to": "amy@example.org", "purpose": "pay", "context": "s1"})
    t.ok(rb.get("ok") and ra.get("ok"),
         "app B's issue for amy spends no cooldown of app A's", [rb, ra])
    wait_for(lambda: mails_to(d, "amy@example.org") >= 2, 15)
    la = d.call_as(SHOP, {"op": "sandbox.list"})
    lb = d.call_as(BANK, {"op": "sandbox.list"})
    fa = [m["file"] for m in la.get("messages", [])]
    fb = [m["file"] for m in lb.get("messages", [])]
    t.ok(len(fa) == 2 and len(fb) == 1 and not set(fa) & set(fb),
         "sandbox.list: each app sees its own mail only (2 and 1)", [la, lb])
    fa = [f for f in fa if ra.get("id", "?") in f]
    t.ok(len(fa) == 1, "A's list names A's queued message", fa)
    sa = d.call_as(SHOP, {"op": "sandbox.show", "latest": True})
    code_a = code_in(sa.get("text", ""))
    t.ok(sa.get("ok") and code_a, "A reads its own code with sandbox.show", sa)
    r = d.call_as(BANK, {"op": "sandbox.show", "file": fa[0] if fa else "x"})
    t.is_(r.get("error"), "not_found", "B cannot read A's mail with sandbox.show file=")
    r = d.call_as(BANK, {"op": "sandbox.show", "latest": True})
    t.ok(r.get("ok") and code_a not in r.get("text", ""),
         "B's sandbox.show latest is B's own mail, not A's", r.get("file"))
    r = d.call_as(BANK, {"op": "message.status", "id": ra.get("id", "x")})
    t.is_(r.get("error"), "not_found", "B cannot see A's message.status")
    r = d.call_as(BANK, {"op": "otp.verify", "to": "amy@example.org", "purpose": "pay",
                         "context": "s1", "code": code_a})
    t.ok(r.get("ok") is False, "B cannot verify A's code", r)
    r = d.call_as(BANK, {"op": "otp.revoke", "to": "amy@example.org", "purpose": "pay", "context": "s1"})
    t.ok(r.get("ok") and r.get("revoked") == 1, "B's revoke revokes B's own code only", r)
    wrong = [{"op": "otp.verify", "to": "amy@example.org", "purpose": "pay", "context": "s1",
              "code": "%06d" % ((int(code_a) + i + 1) % 1000000), "client_id": "evil"}
             for i in range(30)]
    pipeline_as(d, BANK, wrong)
    r = d.call_as(BANK, {"op": "otp.verify", "to": "amy@example.org", "purpose": "pay", "context": "s1",
                         "code": "000000", "client_id": "evil"})
    t.is_(r.get("error"), "locked", "B locked itself out (its own client and context)")
    r = d.call_as(SHOP, {"op": "otp.verify", "to": "amy@example.org", "purpose": "pay", "context": "s1",
                         "code": code_a, "client_id": "evil"})
    t.ok(r.get("ok"), "after B's 31 wrong guesses (same address, context, client id) "
         "A's code verifies: B killed, locked and rate-limited nothing of A's", r)
    r = d.call_as(BANK, {"op": "otp.verify", "to": "amy@example.org", "purpose": "pay", "context": "s1",
                         "code": "000000", "as_app": "shop"})
    t.is_(r.get("error"), "forbidden", "an app cannot act as another (as_app)")
    r = d.call({"op": "message.status", "id": ra.get("id", "x")})
    t.ok(r.get("ok"), "an admin sees A's message", r)
    r = d.call({"op": "sandbox.list"})
    t.ok(len(r.get("messages", [])) >= 2, "an admin sees every app's sandbox mail")
    # hourly budget: B spends alice2's, A still has its own
    for p in ("a", "b", "c", "d"):
        d.call_as(BANK, {"op": "otp.issue", "to": "carol@example.org", "purpose": p})
    rb = d.call_as(BANK, {"op": "otp.issue", "to": "carol@example.org", "purpose": "e"})
    ra = d.call_as(SHOP, {"op": "otp.issue", "to": "carol@example.org", "purpose": "e"})
    t.ok(rb.get("limit") == "address_hourly" and ra.get("ok"),
         "B's hourly budget for carol is spent; A's is untouched", [rb, ra])
    # senders
    ms = lambda frm, **kw: dict({"op": "mail.send", "from": frm, "to": "x@example.com",
                                 "subject": "s", "text": "t"}, **kw)
    r = d.call_as(SHOP, ms("news@shop.example"))
    t.ok(r.get("ok"), "A sends from its domain", r)
    r = d.call_as(SHOP, ms("Bank <news@bank.example>"))
    t.ok(r.get("error") == "forbidden" and r.get("field") == "from",
         "A may not send from B's domain", r)
    r = d.call_as(BANK, ms("noreply@example.org"))
    t.ok(r.get("ok"), "B sends from its one listed address", r)
    r = d.call_as(BANK, ms("other@example.org"))
    t.is_(r.get("error"), "forbidden", "B may not send from another address of that domain")
    raw = ("From: Bank <news@bank.example>\r\nTo: x@example.com\r\nSubject: s\r\n\r\nt\r\n")
    r = d.call_as(SHOP, {"op": "mail.send", "from": "news@shop.example",
                         "to": "x@example.com", "raw": raw})
    t.ok(r.get("error") == "forbidden" and r.get("field") == "raw",
         "a raw message's From must be within the app's senders", r)
    raw2 = "From: \"a@shop.example\" <x@bank.example>\r\nSubject: s\r\n\r\nt\r\n"
    r = d.call_as(SHOP, {"op": "mail.send", "from": "news@shop.example",
                         "to": "x@example.com", "raw": raw2})
    t.is_(r.get("error"), "forbidden", "every address of the From field is checked")
    r = d.call_as(SHOP, {"op": "mail.send", "from": "news@shop.example",
                         "to": "x@example.com", "raw": raw.replace("bank", "shop")})
    t.ok(r.get("ok"), "a raw From within the senders passes", r)
    r = d.call_as(SYS, ms("anyone@anywhere.example"))
    t.ok(r.get("ok"), "an implicit app (app_users, no app line) keeps any sender", r)

    # --- item 4: concurrency buys no extra mail ------------------------------------
    for rnd in range(3):
        addr = "conc%d@example.org" % rnd
        ans = simultaneous_as(d, SHOP, [{"op": "otp.issue", "to": addr}] * 12)
        oks = [a for a in ans if a.get("ok")]
        lim = [a for a in ans if a.get("limit") == "resend_cooldown"]
        t.ok(len(oks) == 1 and len(lim) == 11 and
             all(a.get("error") == "rate_limited" and 0 < a.get("retry_after", 0) <= 30
                 for a in lim),
             "12 simultaneous otp.issue for %s: 1 passes, 11 rate_limited with the "
             "cooldown's retry_after" % addr, ans)
        wait_for(lambda: mails_to(d, addr) >= 1, 15)
        time.sleep(0.3)
        t.is_(mails_to(d, addr), 1, "round %d: exactly one mail sent" % (rnd + 1))

    # --- item 5: the same answer whether a code exists or not -----------------------
    d.call_as(SHOP, {"op": "otp.issue", "to": "dave@example.org"})
    none = d.call_as(SHOP, {"op": "otp.verify", "to": "nobody-here@example.org",
                            "code": "123456"})
    bad = d.call_as(SHOP, {"op": "otp.verify", "to": "dave@example.org", "code": "123456"})
    t.ok(strip(none) == strip(bad) and none.get("error") == "invalid_code",
         "no code and a wrong code: one answer, same fields", [none, bad])
    t.ok("attempts_left" not in bad, "no attempts_left by default", bad)

    # --- item 11: retries are safe ------------------------------------------------
    iss = {"op": "otp.issue", "to": "erin@example.org", "idempotency_key": "k-1"}
    r1 = d.call_as(SHOP, iss)
    r2 = d.call_as(SHOP, dict(iss, req_id="again"))
    t.ok(r1.get("ok") and r2.get("id") == r1.get("id") and r2.get("replayed"),
         "otp.issue retried with the same key: the first answer, same id", [r1, r2])
    r3 = d.call_as(SHOP, dict(iss, purpose="reset"))
    t.ok(r3.get("error") == "idempotency_mismatch" and r3.get("field") == "idempotency_key",
         "another body under a used key: idempotency_mismatch", r3)
    r4 = d.call_as(BANK, iss)
    t.ok(r4.get("ok") and r4.get("id") != r1.get("id") and not r4.get("replayed"),
         "another app's same key is its own", r4)
    snd = ms("news@shop.example", idempotency_key="m-1")
    m1 = d.call_as(SHOP, snd)
    m2 = d.call_as(SHOP, snd)
    t.ok(m1.get("ok") and m2.get("id") == m1.get("id"),
         "mail.send retried with the same key: same id", [m1, m2])
    r = d.call_as(SHOP, dict(iss, idempotency_key=""))
    t.is_(r.get("error"), "bad_request", "an empty idempotency_key is a bad_request")
    r = d.call_as(SHOP, dict(iss, idempotency_key="x" * 129))
    t.is_(r.get("field"), "idempotency_key", "an overlong idempotency_key is refused")
    wait_for(lambda: mails_to(d, "erin@example.org") >= 2, 15)
    d.stop()
    d.start()
    r5 = d.call_as(SHOP, iss)
    m3 = d.call_as(SHOP, snd)
    t.ok(r5.get("id") == r1.get("id") and m3.get("id") == m1.get("id"),
         "after a restart: the same answers", [r5, m3])
    time.sleep(0.5)
    t.is_(mails_to(d, "erin@example.org"), 2, "erin got one mail per app, no more")
    t.ok(d.alive(), "the daemon is alive")

with Daemon(conf_extra=CONF + "otp_verify_detail = yes\n") as d:
    d.call_as(SHOP, {"op": "otp.issue", "to": "dave@example.org"})
    none = d.call_as(SHOP, {"op": "otp.verify", "to": "nobody-here@example.org",
                            "code": "123456"})
    bad = d.call_as(SHOP, {"op": "otp.verify", "to": "dave@example.org", "code": "123456"})
    t.ok(none.get("error") == "not_found" and bad.get("error") == "invalid_code" and
         bad.get("attempts_left") == 4,
         "otp_verify_detail = yes: not_found, and invalid_code with attempts_left", [none, bad])

# --- bad app lines are config errors -------------------------------------------------
d = Daemon(start=False)
try:
    for line, why in (("app = Bad! users=daemon", "NAME"),
                      ("app = x users=daemon colour=red", "unknown attribute"),
                      ("app = x", "no users"),
                      ("app = x users=no-such-user-here", "no such user"),
                      ("app = x users=daemon senders=a@@b", "bad sender"),
                      ("app = x users=daemon\napp = x users=bin", "twice")):
        with open(d.conf, "a") as f:
            pass
        conf = d.conf + ".bad"
        with open(conf, "w") as f:
            f.write("state_dir = %s\n%s\n" % (d.state, line))
        p = subprocess.run([OTPMAILD, "--check-config", "-c", conf], capture_output=True,
                           text=True, timeout=20)
        t.ok(p.returncode != 0 and why in p.stdout + p.stderr,
             "config %r refused (%s)" % (line, why), p.stdout + p.stderr)
finally:
    d.cleanup()

t.done()
