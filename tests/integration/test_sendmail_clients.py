#!/usr/bin/env python3
"""test_sendmail_clients.py - the programs that call sendmail, for real.

Starts: otpmaild in sandbox mode (origin_domain = example.com).  Runs PHP's
mail() (php-cli, sendmail_path = "otpmail-sendmail -t -i"), git send-email
(--smtp-server=otpmail-sendmail, a patch made by git format-patch) and mutt
in batch mode (set sendmail=otpmail-sendmail) and checks each message in
the sandbox Maildir: envelope, headers, body.  Packages: php-cli, git-email,
mutt (.ci/deps).
"""

import email
import os
import shutil
import subprocess
import tempfile

from harness import Daemon, Tap, TOP_BUILDDIR, wait_for

t = Tap()
SENDMAIL = os.path.join(TOP_BUILDDIR, "otpmail-sendmail")
tmp = tempfile.mkdtemp(prefix="otpmail-smc-")


def newest(d, n):
    """The newest message once there are n (n = count before the step + 1)."""
    wait_for(lambda: len(d.sandbox_messages()) >= n, 15)
    files = d.sandbox_messages()
    return email.message_from_bytes(open(files[-1], "rb").read()) if len(files) >= n else None


def run(cmd, env, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, **kw)


with Daemon(conf_extra="origin_domain = example.com\n") as d:
    env = dict(os.environ, OTPMAIL_SOCKET=d.sock, OTPMAIL_CONFIG=d.conf, HOME=tmp,
               LC_ALL="C.UTF-8")

    # PHP: mail() runs sendmail_path through popen
    php = ('$ok = mail("Alice <alice@example.org>", "Grüße from PHP", "Hällo\\nline 2\\n",'
           ' "From: shop@example.com\\r\\nBcc: audit@example.org\\r\\n'
           'Content-Type: text/plain; charset=UTF-8");'
           ' exit($ok ? 0 : 1);')
    n0 = len(d.sandbox_messages())
    p = run(["php", "-n", "-d", "sendmail_path=%s -t -i" % SENDMAIL, "-r", php], env)
    t.is_(p.returncode, 0, "php mail() returns true")
    m = newest(d, n0 + 1)
    t.ok(m is not None and m["Return-Path"] == "<shop@example.com>",
         "php: envelope sender from the From header", m and m["Return-Path"])
    t.ok(m is not None and m["Bcc"] is None, "php: Bcc header removed")
    t.ok(m is not None and "Hällo" in m.get_payload(decode=True).decode("utf-8"),
         "php: the UTF-8 body arrives")
    log = d.log_text()
    t.ok("rcpts=2" in log, "php: To and Bcc are both envelope recipients")

    # git send-email --smtp-server=/path/to/sendmail
    repo = os.path.join(tmp, "repo")
    genv = dict(env, GIT_AUTHOR_NAME="Dev Eloper", GIT_AUTHOR_EMAIL="dev@example.com",
                GIT_COMMITTER_NAME="Dev Eloper", GIT_COMMITTER_EMAIL="dev@example.com")
    run(["git", "init", "-q", repo], genv)
    with open(os.path.join(repo, "README"), "w") as f:
        f.write("hello\n")
    run(["git", "-C", repo, "add", "README"], genv)
    run(["git", "-C", repo, "commit", "-q", "-m", "Add a README"], genv)
    p = run(["git", "-C", repo, "format-patch", "-1", "-o", tmp], genv)
    patch = p.stdout.strip()
    n0 = len(d.sandbox_messages())
    p = run(["git", "-C", repo, "send-email", "--smtp-server=" + SENDMAIL,
             "--to=maintainer@example.org", "--from=Dev Eloper <dev@example.com>",
             "--confirm=never", "--no-chain-reply-to", "--quiet", patch], genv)
    t.is_(p.returncode, 0, "git send-email exits 0")
    if p.returncode != 0:
        t.diag(p.stdout + p.stderr)
    m = newest(d, n0 + 1)
    t.ok(m is not None and "[PATCH] Add a README" in (m["Subject"] or ""),
         "git: the patch arrived", m and m["Subject"])
    t.ok(m is not None and m["Delivered-To"] == "maintainer@example.org" and
         m["Return-Path"] == "<dev@example.com>", "git: envelope from and to",
         m and (m["Delivered-To"], m["Return-Path"]))
    t.ok(m is not None and "+hello" in m.get_payload(), "git: the diff is in the body")

    # mutt in batch mode, sendmail set to ours
    muttrc = os.path.join(tmp, "muttrc")
    with open(muttrc, "w") as f:
        f.write('set sendmail="%s -oem -oi"\nset from="Ops <ops@example.com>"\n'
                'set use_from=yes\nset envelope_from=yes\nset record=""\n'
                'set charset="utf-8"\nset send_charset="utf-8"\n' % SENDMAIL)
    body = os.path.join(tmp, "body")
    with open(body, "w") as f:
        f.write("Disk usage is fine.\n")
    n0 = len(d.sandbox_messages())
    with open(body) as fin:
        p = run(["mutt", "-n", "-F", muttrc, "-s", "weekly report", "--",
                 "boss@example.org"], env, stdin=fin)
    t.is_(p.returncode, 0, "mutt exits 0")
    if p.returncode != 0:
        t.diag(p.stdout + p.stderr)
    m = newest(d, n0 + 1)
    t.ok(m is not None and m["Subject"] == "weekly report" and
         m["Delivered-To"] == "boss@example.org", "mutt: the message arrived",
         m and (m["Subject"], m["Delivered-To"]))
    t.ok(m is not None and m["Return-Path"] == "<ops@example.com>",
         "mutt: envelope_from is used", m and m["Return-Path"])

shutil.rmtree(tmp, ignore_errors=True)
t.done()
