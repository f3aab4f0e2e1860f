#!/usr/bin/env python3
"""test_sendmail.py - otpmail-sendmail as scripts call /usr/sbin/sendmail.

Starts: otpmaild in sandbox mode.  Runs otpmail-sendmail for real with -t,
-f, -F, -i/-oi and recipients on the command line; checks what reached the
sandbox Maildir (envelope via message.status, headers in the file), that Bcc
is removed, the exit codes of failures, and that a mail from PHP-style
`sendmail -t -i` and cron-style `sendmail -oi user@host` both arrive.
"""

import email
import os
import subprocess

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

t.done()
