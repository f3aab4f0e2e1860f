#!/usr/bin/env python3
"""test_sendmail.py - otpmail-sendmail as scripts call /usr/sbin/sendmail.

Starts: otpmaild in sandbox mode.  Runs otpmail-sendmail for real with -t,
-f, -F, -i/-oi and recipients on the command line; checks what reached the
sandbox Maildir (envelope via message.status, headers in the file), that Bcc
is removed, the exit codes of failures, and that a mail from PHP-style
`sendmail -t -i` and cron-style `sendmail -oi user@host` both arrive.
Then, on a second daemon with origin_domain and an aliases file: cron's exact
call with a Latin-1 body, the null sender, mailq/-bp and newaliases by name,
and the maildrop: the daemon stopped, sendmail exits 0, the next start
delivers; a dropped file that is not mail.send, or from a user without the
app role, is refused; a full maildrop (a 16 KiB tmpfs in a private mount
namespace) gives EX_TEMPFAIL.
"""

import email
import os
import shutil
import subprocess
import tempfile
import time

from harness import Daemon, Tap, TOP_BUILDDIR, wait_for

t = Tap()
SENDMAIL = os.path.join(TOP_BUILDDIR, "otpmail-sendmail")


def sendmail(d, args, msg):
    env = dict(os.environ, OTPMAIL_SOCKET=d.sock)
    return subprocess.run([SENDMAIL] + args, input=msg, capture_output=True,
                          text=True, env=env, timeout=30)


def arrived(d, n):
    return wait_for(lambda: len(d.sandbox_messages()) >= n, 15)


def status_rcpts(d, qid):
    r = d.call({"op": "message.status", "id": qid})
    return sorted(x.get("to") for x in r.get("recipients", []))


with Daemon() as d:
    # PHP mail(): sendmail -t -i, recipients from the headers, Bcc hidden
    msg = ("To: Alice <alice@example.org>, bob@example.org\n"
           "Cc: \"Carol, C.\" <carol@example.org>\n"
           "Bcc: dave@example.org\n"
           "From: app@example.com\n"
           "Subject: hello from php\n\n"
           "line one\n.\nline after a lone dot\n")
    p = sendmail(d, ["-t", "-i"], msg)
    t.is_(p.returncode, 0, "sendmail -t -i exits 0")
    t.ok(arrived(d, 1), "the message reached the sandbox")
    files = d.sandbox_messages()
    m = email.message_from_bytes(open(files[-1], "rb").read())
    t.ok(m["Bcc"] is None, "Bcc header removed")
    t.is_(m["Subject"], "hello from php", "subject kept")
    t.ok("line after a lone dot" in m.get_payload(), "-i: a lone dot does not end the message")
    t.ok(m["Message-ID"] and m["Date"], "Date and Message-ID added")
    # the envelope: every To/Cc/Bcc address, found by the queue id in the log
    log = d.log_text()
    ids = [l.split("id=")[1].split()[0] for l in log.splitlines() if "event=queued" in l]
    t.ok(ids, "queued with an id")
    if ids:
        got = status_rcpts(d, ids[-1])
        t.is_(got, ["alice@example.org", "bob@example.org", "carol@example.org",
                    "dave@example.org"], "-t: envelope recipients from To, Cc and Bcc")

    # cron: sendmail -oi -f sender rcpt, no From header -> one is added
    p = sendmail(d, ["-oi", "-f", "cron@example.com", "-F", "Cron Daemon",
                     "root@example.org"], "Subject: cron output\n\nok\n")
    t.is_(p.returncode, 0, "sendmail -oi -f rcpt exits 0")
    t.ok(arrived(d, 2), "cron mail arrived")
    m = email.message_from_bytes(open(d.sandbox_messages()[-1], "rb").read())
    t.ok("cron@example.com" in (m["From"] or "") and "Cron Daemon" in (m["From"] or ""),
         "From added from -f and -F", m["From"])

    # without -i a lone dot ends the message
    p = sendmail(d, ["u@example.org"], "From: a@example.com\nSubject: dot\n\nbefore\n.\nafter\n")
    t.is_(p.returncode, 0, "without -i exits 0")
    t.ok(arrived(d, 3), "message arrived")
    body = open(d.sandbox_messages()[-1], "rb").read()
    t.ok(b"before" in body and b"after" not in body, "without -i a lone dot ends the message")

    # failures
    p = sendmail(d, [], "Subject: x\n\nno rcpt\n")
    t.is_(p.returncode, 64, "no recipients: EX_USAGE")
    p = sendmail(d, ["bad address@@x"], "From: a@example.com\n\nx\n")
    t.is_(p.returncode, 65, "bad recipient: EX_DATAERR from the daemon's refusal")
    # mixed line ends (LF, CRLF) make one proper CRLF message
    n = len(d.sandbox_messages())
    p = sendmail(d, ["-t"], "From: a@example.com\r\nTo: x@example.org\nSubject: a\r\n"
                 "\nbody\r\nline2\n")
    t.is_(p.returncode, 0, "mixed LF and CRLF line ends: exits 0")
    t.ok(arrived(d, n + 1), "message arrived")
    body = open(d.sandbox_messages()[-1], "rb").read()
    t.ok(b"\r\nTo: x@example.org\r\nSubject: a\r\n\r\nbody\r\nline2\r\n" in body and
         b"\r\r" not in body and body.count(b"\n") == body.count(b"\r\n"),
         "mixed line ends: every line ends in CRLF", body)
    # a line that is no header in the header: refused, nothing sent
    p = sendmail(d, ["-t"], "From: a@example.com\nTo: x@example.org\nSubject: a\r\nb\n"
                 "\nbody\n")
    t.ok(p.returncode == 65 and "is not \"Name: value\"" in p.stderr,
         "a header line without a colon: EX_DATAERR naming it", (p.returncode, p.stderr))
    t.ok(not wait_for(lambda: len(d.sandbox_messages()) > n + 1, 2),
         "and nothing arrives")
    env = dict(os.environ, OTPMAIL_SOCKET="/nonexistent/sock")
    p = subprocess.run([SENDMAIL, "x@example.org"], input="Subject: a\n\nb\n",
                       capture_output=True, text=True, env=env)
    t.is_(p.returncode, 75, "daemon unreachable: EX_TEMPFAIL (retry later)")

# --- as the system's sendmail: origin domain, aliases, maildrop ----------
tmp = tempfile.mkdtemp(prefix="otpmail-sm-")
aliases = os.path.join(tmp, "aliases")
with open(aliases, "w") as f:
    f.write("# test aliases\nroot: admin@example.org\npostmaster: root\n"
            "ops: root,\n  oncall@example.net\nweird: |/bin/true\n")
for name in ("mailq", "newaliases", "sendmail"):
    os.symlink(SENDMAIL, os.path.join(tmp, name))


def run(d, argv0, args, msg=b""):
    env = dict(os.environ, OTPMAIL_SOCKET=d.sock, OTPMAIL_CONFIG=d.conf)
    return subprocess.run([os.path.join(tmp, argv0)] + args, input=msg,
                          capture_output=True, env=env, timeout=30)


def newest(d, n):
    arrived(d, n)
    files = d.sandbox_messages()
    return open(files[-1], "rb").read() if files else b""


CRON_MSG = (b"From: root (Cron Daemon)\nTo: root\n"
            b"Subject: Cron <root@vm> /usr/local/bin/backup\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=ISO-8859-1\n"
            b"Content-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n"
            b"X-Cron-Env: <HOME=/root>\n\nsauvegarde termin\xe9e, 3 fichiers \xe0 "
            b"r\xe9viser\n")

with Daemon(conf_extra="origin_domain = example.com\naliases_file = %s\n" % aliases) as d:
    # cron(8): popen("/usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root")
    p = run(d, "sendmail", ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], CRON_MSG)
    t.is_(p.returncode, 0, "cron's exact call exits 0")
    raw = newest(d, 1)
    m = email.message_from_bytes(raw)
    t.is_(m["Return-Path"], "<root@example.com>", "cron: envelope sender qualified with "
          "origin_domain")
    t.is_(m["Delivered-To"], "admin@example.org", "cron: root goes through the alias")
    t.is_(m["From"], "root@example.com (Cron Daemon)", "cron: From header qualified, "
          "comment kept")
    t.is_(m["To"], "root@example.com", "cron: To header qualified")
    t.is_(m["Content-Transfer-Encoding"], "quoted-printable",
          "cron: the Latin-1 body is re-encoded as quoted-printable")
    t.is_(m.get_payload(decode=True).decode("latin-1").replace("\r\n", "\n"),
          "sauvegarde termin\xe9e, 3 fichiers \xe0 r\xe9viser\n",
          "cron: the Latin-1 text arrives intact, charset label kept")
    t.is_(m.get_content_charset(), "iso-8859-1", "cron: charset unchanged")

    # a nested alias (ops -> root -> admin, plus a remote one); |cmd is skipped
    p = run(d, "sendmail", ["-i", "ops", "weird"], b"Subject: aliases\n\nx\n")
    t.is_(p.returncode, 0, "aliases with nesting and a |command entry: exit 0")
    ids = [l.split("id=")[1].split()[0] for l in d.log_text().splitlines()
           if "event=queued" in l]
    t.is_(status_rcpts(d, ids[-1]), ["admin@example.org", "oncall@example.net",
                                     "weird@example.com"],
          "ops expands through root; weird's |command is not run, weird@origin gets it")

    # the null sender
    p = run(d, "sendmail", ["-f", "<>", "-i", "postmaster"],
            b"From: MAILER-DAEMON@example.com\nSubject: null\n\nbounce-ish\n")
    t.is_(p.returncode, 0, "-f '<>' exits 0")
    m = email.message_from_bytes(newest(d, 3))
    t.is_(m["Return-Path"], "<>", "-f '<>' gives the null envelope sender")

    # mailq / sendmail -bp: what is waiting (paused, so it stays queued)
    t.ok(d.call({"op": "queue.pause"})["ok"], "queue paused")
    p = run(d, "sendmail", ["-i", "-f", "app@example.com", "user@example.org"],
            b"Subject: waits\n\nx\n")
    p = run(d, "mailq", [])
    out = p.stdout.decode()
    t.ok(p.returncode == 0 and "user@example.org" in out and "app@example.com" in out and
         "1 Request." in out, "mailq lists the queued message", out)
    t.ok("admin@example.org" not in out, "mailq does not list delivered mail", out)
    p2 = run(d, "sendmail", ["-bp"])
    t.is_(p2.stdout, p.stdout, "sendmail -bp prints the same as mailq")
    p = run(d, "sendmail", ["-q"])
    t.is_(p.returncode, 0, "sendmail -q (flush) exits 0")
    d.call({"op": "queue.resume"})
    t.ok(wait_for(lambda: "Mail queue is empty" in run(d, "mailq", []).stdout.decode(), 15),
         "after resume mailq says the queue is empty")
    p = run(d, "newaliases", [])
    t.ok(p.returncode == 0 and b"4 aliases" in p.stdout, "newaliases succeeds and counts",
         p.stdout + p.stderr)
    t.ok(b"|/bin/true" in p.stderr, "newaliases names the unsupported |command entry",
         p.stderr)

    # the daemon down: the message waits in the maildrop, exit 0
    n = len(d.sandbox_messages())
    d.stop()
    drop = os.path.join(d.state, "maildrop")
    t.is_(os.stat(drop).st_mode & 0o7777, 0o3730, "maildrop mode 3730")
    p = run(d, "sendmail", ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], CRON_MSG)
    t.ok(p.returncode == 0, "daemon down: cron's call still exits 0", p.stderr)
    t.ok(b"maildrop" in p.stderr, "and says where the message waits", p.stderr)
    p = run(d, "mailq", [])
    t.ok(p.returncode == 69 and b"1 message in the maildrop" in p.stdout,
         "mailq with the daemon down: EX_UNAVAILABLE, names the maildrop", p.stdout + p.stderr)
    # attacks: a dropped queue.delete as root, and a mail from a user with no app role
    with open(os.path.join(drop, "1.1.evil"), "w") as f:
        f.write('{"op":"queue.delete","ids":["x"]}\n')
    with open(os.path.join(drop, "1.2.nobody"), "w") as f:
        f.write('{"op":"mail.send","from":"n@example.com","to":["v@example.org"],'
                '"raw":"From: n@example.com\\nSubject: s\\n\\nx\\n"}\n')
    os.chown(os.path.join(drop, "1.2.nobody"), 65534, 65534)
    d.start()
    raw = newest(d, n + 1)
    t.ok(wait_for(lambda: not [f for f in os.listdir(drop) if not f.startswith(".")], 15),
         "the next start takes every file from the maildrop", os.listdir(drop))
    t.ok(b"Cron Daemon" in raw and b"Delivered-To: admin@example.org" in raw,
         "the kept cron mail is delivered after the start")
    log = d.log_text()
    t.ok("event=maildrop_refused file=1.1.evil" in log and
         os.path.exists(os.path.join(drop, ".refused-1.1.evil")),
         "a dropped request that is not mail.send is refused, set aside")
    t.ok("file=1.2.nobody uid=65534 error=forbidden" in log,
         "a dropped mail from a user without the app role is refused", log[-2000:])
    time.sleep(0.5)
    t.is_(len(d.sandbox_messages()), n + 1, "only the cron mail was delivered")

    # a full disk under the maildrop: EX_TEMPFAIL (mount in a private namespace)
    d.stop()
    script = ('mount -t tmpfs -o size=16k tmpfs "$1" && '
              'dd if=/dev/zero of="$1/.fill" bs=4k count=8 2>/dev/null; '
              'printf "Subject: full\\n\\nx\\n" | "$2" -i root; echo "rc=$?"')
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", drop,
                        os.path.join(tmp, "sendmail")], capture_output=True, text=True,
                       env=dict(os.environ, OTPMAIL_SOCKET=d.sock, OTPMAIL_CONFIG=d.conf))
    t.ok("rc=75" in p.stdout, "a full maildrop disk: EX_TEMPFAIL", p.stdout + p.stderr)

shutil.rmtree(tmp, ignore_errors=True)
t.done()
