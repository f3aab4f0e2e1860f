#!/usr/bin/env python3
"""test_otpmailctl.py - otpmailctl as a person uses it.

Starts: otpmaild in sandbox mode, then a second one (sandbox = no) routed
to smtp-sink hard-rejecting RCPT (127.0.8.2:2525) and to a closed port
(127.0.8.9:2525, connection refused, so deferred).  Checks --version and
every command's --help (usage, description, options with values, taken
from --list-commands, which the bash completion reads too), local dates
and ages instead of epochs, `queue list` showing only what is queued
unless --all, bulk hold/delete by filter with a count and --yes, `queue
hold` on a delivered message, a flush that neither counts as a try nor
pushes the backoff, and a permanent failure's reply in LAST ERROR.
"""

import json
import os
import re
import subprocess
import time

from harness import Daemon, Tap, OTPMAILCTL, TOP_SRCDIR, wait_for
from peers import SmtpSink

t = Tap()


def send(d, to, subject="s"):
    return d.call({"op": "mail.send", "from": "app@example.com", "to": [to],
                   "subject": subject, "text": "t\n"})


with Daemon() as d:
    p = d.ctl("--version")
    t.ok(p.returncode == 0 and re.match(r"otpmailctl \d+\.\d+", p.stdout), "--version",
         p.stdout + p.stderr)
    p = d.ctl("--list-commands")
    cmds = [l.split("\t")[0] for l in p.stdout.splitlines()]
    t.ok(len(cmds) >= 25 and "queue list" in cmds, "--list-commands lists the commands")
    bad = []
    for c in cmds:
        h = d.ctl(*(c.split() + ["--help"]))
        lines = h.stdout.splitlines()
        if h.returncode != 0 or not lines[0].startswith("usage: otpmailctl " + c) or \
                len(lines) < 3 or not lines[2].strip():
            bad.append(c)
    t.is_(bad, [], "every command's --help prints usage and a description")
    h = d.ctl("queue", "list", "--help").stdout
    t.ok("--state S" in h and "deferred" in h and "--all" in h,
         "queue list --help names each option with its values", h)

    # the completion script sources and completes from --list-commands
    comp = os.path.join(TOP_SRCDIR, "etc", "otpmailctl.bash-completion")
    script = ('PATH=%s:$PATH; source %s; COMP_WORDS=(otpmailctl queue hold --s); '
              'COMP_CWORD=3; _otpmailctl; echo "${COMPREPLY[@]}"' %
              (os.path.dirname(os.path.abspath(OTPMAILCTL)), comp))
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    t.ok("--state" in p.stdout and "--sender" in p.stdout, "bash completion completes "
         "options", p.stdout + p.stderr)

    # a delivered message: not in the default list, in --all; hold says so
    r = send(d, "done@example.org")
    wait_for(lambda: d.call({"op": "message.status", "id": r["id"]})["state"] == "delivered",
             10)
    d.call({"op": "queue.pause"})
    ids = [send(d, "x%d@example.net" % i)["id"] for i in range(3)]
    ids.append(send(d, "y@example.org")["id"])
    out = d.ctl("queue", "list").stdout
    t.ok(r["id"] not in out and all(i in out for i in ids),
         "queue list shows what is queued, not delivered messages", out)
    out = d.ctl("queue", "list", "--all").stdout
    t.ok(r["id"] in out and all(i in out for i in ids), "queue list --all shows both", out)
    t.ok(re.search(r"\b(now|\d+s ago)\b", out) and not re.search(r"\b1[0-9]{9}\b", out),
         "ages are relative (\"3s ago\"), no epoch", out)
    show = d.ctl("queue", "show", r["id"]).stdout
    t.ok(re.search(r"created: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \((now|\S+ ago)\)", show) and
         re.search(r"expires: .*\(in \S+\)", show) and
         not re.search(r"\b1[0-9]{9}\b", show), "show: local dates with ages", show)
    p = d.ctl("queue", "hold", r["id"])
    t.ok(p.returncode == 1 and "already delivered" in p.stderr,
         "hold on a delivered message says it is already delivered", p.stdout + p.stderr)
    j = json.loads(d.ctl("--json", "queue", "hold", r["id"]).stdout)
    t.is_(j.get("error"), "already_finished", "its error code: already_finished")

    # bulk by filter: a count, then --yes
    p = d.ctl("queue", "hold", "--domain", "example.net")
    t.ok(p.returncode == 1 and "3 messages match" in p.stdout and "--yes" in p.stdout,
         "bulk hold of 3 without --yes: the count, nothing done", p.stdout + p.stderr)
    t.is_(d.call({"op": "queue.list", "state": "held"})["messages"], [], "nothing held yet")
    p = d.ctl("queue", "hold", "--domain", "example.net", "--yes")
    t.ok(p.returncode == 0 and "3 of 3" in p.stdout, "--yes holds all 3", p.stdout)
    held = sorted(m["id"] for m in d.call({"op": "queue.list", "state": "held"})["messages"])
    t.is_(held, sorted(ids[:3]), "exactly the example.net messages are held")
    p = d.ctl("queue", "hold", "--domain", "example.org")
    t.ok(p.returncode == 0 and "1 of 1" in p.stdout, "one match needs no --yes", p.stdout)
    p = d.ctl("queue", "delete", "--state", "held", "--class", "default", "--yes")
    t.ok(p.returncode == 0 and "4 of 4" in p.stdout, "delete --state held --yes", p.stdout)
    p = d.ctl("queue", "delete")
    t.is_(p.returncode, 2, "delete with no ids and no filter is a usage error")
    t.ok(d.call({"op": "message.status", "id": r["id"]}).get("ok"),
         "the delivered message was never touched")

REJ, DEAD, PORT = "127.0.8.2", "127.0.8.9", 2525
conf = ("sandbox = no\nroute = rej.example.net [%s]:%d\nroute = dead.example.net [%s]:%d\n"
        "smtp_connect_timeout = 2s\ndefault_retry_min = 600s\n"
        "bounce_from = MAILER-DAEMON@example.com\n") % (REJ, PORT, DEAD, PORT)
with SmtpSink(REJ, PORT, extra_args=["-f", "RCPT"]), Daemon(conf_extra=conf) as d:
    rej = send(d, "u@rej.example.net")["id"]
    dead = send(d, "u@dead.example.net")["id"]

    def state(i):
        return d.call({"op": "queue.show", "id": i})

    t.ok(wait_for(lambda: state(rej).get("status") == "failed", 20), "5xx: failed")
    out = d.ctl("queue", "list", "--all").stdout
    line = [l for l in out.splitlines() if rej in l]
    t.ok(line and re.search(r"5\.\d\.\d|550|5\d\d", line[0]),
         "a permanent failure shows its reply in LAST ERROR", out)
    t.ok(wait_for(lambda: state(dead).get("state") == "deferred", 20), "refused: deferred")
    before = state(dead)

    def tries():
        return len([l for l in d.log_text().splitlines()
                    if "event=delivery id=%s" % dead in l])
    n = tries()
    p = d.ctl("queue", "flush", dead)
    t.is_(p.returncode, 0, "flush the deferred message")
    t.ok(wait_for(lambda: tries() > n and state(dead).get("state") == "deferred", 20),
         "the flushed try happened and deferred again", d.log_text()[-1500:])
    after = state(dead)
    t.is_(after["attempts"], before["attempts"], "the flush did not count as a failed try")
    t.is_(after["next_attempt"], before["next_attempt"], "nor pushed the backoff")
    t.is_(after["recipients"][0]["attempts"], before["recipients"][0]["attempts"],
          "nor the recipient's attempts")

t.done()
