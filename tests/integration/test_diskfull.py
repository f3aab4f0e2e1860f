#!/usr/bin/env python3
"""test_diskfull.py - the spool on a full disk.

Starts: otpmaild (sandbox mode, delivery paused) whose <state_dir>/spool is
a 2 MiB tmpfs (mount -t tmpfs -o size=2m; needs root), no peer.

Twice: once with the free-space floor (queue_min_free_space = 1M), once
with queue_min_free_space = 0 and queue_min_free_inodes = 0, so a write
really fails with ENOSPC half-way through a message.  A filler file takes
most of the space, then ~100 KB messages are sent until the spool refuses:
mail.send and otp.issue answer {"ok": false, "error": "unavailable"} with
a detail naming the space (and, on a real ENOSPC, not blaming the floor); spool/tmp holds no leftover; after a restart
(still full) queue.list holds exactly the acknowledged messages and each
body is whole; nothing is quarantined; once the filler is deleted,
mail.send and otp.issue work again without a restart, and the OTP limits
were given back (no cooldown from the refused issue).  The tmpfs is
unmounted at the end, whatever happens.  Then the inode floor
(queue_min_free_inodes = 20) on a tmpfs with nr_inodes=400 filled with
empty files: refused with unavailable, and back once the files go.
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402

t = Tap()
BODY_LINES = 1400           # ~100 KB per message


def body_of(tag):
    return "".join("%s %05d %s\n" % (tag, i, "x" * 60) for i in range(BODY_LINES)) + \
        "END %s\n" % tag


def whole(text, tag):
    text = text.replace("\r\n", "\n")
    return text.count("%s " % tag) >= BODY_LINES and ("END %s\n" % tag) in text


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave):
    """Writes spool/filler until only `leave` bytes are free."""
    size = max(0, free_bytes(path) - leave)
    with open(os.path.join(path, "filler"), "wb") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    return size


def list_ids(d):
    r = d.call({"op": "queue.list", "limit": 1000})
    return [m["id"] for m in r.get("messages", [])] if r.get("ok") else None


def run(label, conf, leave):
    d = Daemon(conf_extra=conf, start=False)
    spool = os.path.join(d.state, "spool")
    os.makedirs(spool, mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700",
                              "tmpfs", spool], capture_output=True, text=True)
    if mounted.returncode != 0:
        t.ok(False, "%s: mount a 2 MiB tmpfs on the spool" % label, mounted.stderr)
        d.cleanup()
        return
    try:
        d.start()
        d.ctl("queue", "pause")
        fill(spool, leave)
        t.diag("%s: %d bytes free after the filler" % (label, free_bytes(spool)))
        acked, refusal = {}, None
        for i in range(40):
            tag = "M%02d" % i
            r = d.call({"op": "mail.send", "from": "app@example.org",
                        "to": ["full%d@example.com" % i], "subject": "full " + tag,
                        "text": body_of(tag)})
            if r.get("ok"):
                acked[r["id"]] = tag
            else:
                refusal = r
                break
        t.ok(acked, "%s: messages accepted while there is space (%d)" %
             (label, len(acked)))
        t.ok(refusal is not None and refusal.get("error") == "unavailable",
             "%s: a full spool refuses mail.send with unavailable" % label, refusal)
        detail = (refusal or {}).get("detail", "") or (refusal or {}).get("message", "")
        t.ok("space" in str(refusal) or "full" in str(refusal),
             "%s: the refusal says why (space): %s" % (label, detail), refusal)
        if label == "ENOSPC":
            # a ~100 KB message failed, a small OTP mail could still fit:
            # take the last bytes too
            fd = os.open(os.path.join(spool, "filler2"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while os.write(fd, b"\0" * 4096) > 0:
                    pass
            except OSError:
                pass
            os.close(fd)
            # the write failed for real: the floor (0) is not the reason
            t.ok("queue_min_free_space" not in detail,
                 "%s: the detail does not blame the free-space floor, which is 0" %
                 label, detail)
        r = d.call({"op": "otp.issue", "to": "otp-full@example.org", "purpose": "login"})
        t.ok(r.get("error") == "unavailable",
             "%s: otp.issue refused with unavailable too" % label, r)
        if r.get("ok"):
            acked[r["id"]] = None
        t.ok(d.call({"op": "ping"}).get("ok"), "%s: the daemon keeps serving" % label)
        t.is_(os.listdir(os.path.join(spool, "tmp")), [],
              "%s: no temporary file left in spool/tmp" % label)

        d.stop()
        try:
            d.start()
            started = True
        except RuntimeError as e:
            started = False
            t.diag(str(e)[-1500:])
        t.ok(started, "%s: the daemon restarts on the full spool" % label)
        if started:
            ids = list_ids(d)
            t.is_(sorted(ids or []), sorted(acked),
                  "%s: after the restart exactly the acknowledged messages are queued" %
                  label)
            bad = []
            for qid, tag in acked.items():
                if tag is None:
                    continue
                r = d.call({"op": "queue.show", "id": qid, "body": True})
                if not (r.get("ok") and whole(r.get("body", ""), tag)):
                    bad.append(qid)
            t.is_(bad, [], "%s: every queued message parses and is whole" % label)
            t.is_(os.listdir(os.path.join(spool, "corrupt")), [],
                  "%s: nothing quarantined" % label)

        for name in ("filler", "filler2"):
            if os.path.exists(os.path.join(spool, name)):
                os.unlink(os.path.join(spool, name))
        r = d.call({"op": "mail.send", "from": "app@example.org",
                    "to": ["after@example.com"], "subject": "full AFTER",
                    "text": body_of("AFTER")})
        t.ok(r.get("ok"), "%s: space back: mail.send works again by itself" % label, r)
        r = d.call({"op": "otp.issue", "to": "otp-full@example.org", "purpose": "login"})
        t.ok(r.get("ok"), "%s: space back: otp.issue works, no cooldown left by the "
             "refused issue" % label, r)
        d.ctl("queue", "resume")
        n = len(acked) + 2
        got = wait_for(lambda: len(d.sandbox_messages()) >= n, 30)
        t.ok(got, "%s: all %d delivered after resume" % (label, n),
             "%d in the sandbox" % len(d.sandbox_messages()))
    except RuntimeError as e:
        t.ok(False, "%s: daemon runs" % label, str(e)[-2000:])
    finally:
        teardown(d, spool, label)


def teardown(d, spool, label):
    """Stops the daemon, unmounts the spool's tmpfs (lazily if busy), and
    removes the daemon's directory."""
    d.stop()
    u = subprocess.run(["umount", spool], capture_output=True, text=True)
    if u.returncode != 0:
        subprocess.run(["umount", "-l", spool])
    t.ok(not os.path.ismount(spool), "%s: tmpfs unmounted" % label, u.stderr)
    d.cleanup()


def run_inodes():
    """The inode floor: a tmpfs with few inodes, filled with empty files."""
    label = "inodes"
    d = Daemon(conf_extra="queue_min_free_space = 0\nqueue_min_free_inodes = 20\n",
               start=False)
    spool = os.path.join(d.state, "spool")
    os.makedirs(spool, mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o",
                              "size=2m,nr_inodes=400,mode=0700", "tmpfs", spool],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        t.ok(False, "%s: mount a tmpfs with 400 inodes on the spool" % label,
             mounted.stderr)
        d.cleanup()
        return
    fillers = os.path.join(spool, "fillers")
    try:
        d.start()
        d.ctl("queue", "pause")
        os.mkdir(fillers)
        n = 0
        while os.statvfs(spool).f_favail > 20 + 3:
            open(os.path.join(fillers, "f%d" % n), "w").close()
            n += 1
        acked, refusal = [], None
        for i in range(10):
            r = d.call({"op": "mail.send", "from": "app@example.org",
                        "to": ["ino%d@example.com" % i], "subject": "inode",
                        "text": "small\n"})
            if not r.get("ok"):
                refusal = r
                break
            acked.append(r["id"])
        # 23 free: accepted while 20 or more are free, so at most 4
        t.ok(0 < len(acked) <= 4 and refusal and refusal.get("error") == "unavailable",
             "%s: below queue_min_free_inodes mail.send is refused with unavailable "
             "(%d accepted first)" % (label, len(acked)), refusal)
        t.ok("inode" in str((refusal or {}).get("detail", "")),
             "%s: the detail names the inode floor, not the free-space one" % label,
             refusal)
        t.is_(sorted(list_ids(d) or []), sorted(acked),
              "%s: exactly the acknowledged messages are queued" % label)
        shutil.rmtree(fillers)
        r = d.call({"op": "mail.send", "from": "app@example.org",
                    "to": ["ino-after@example.com"], "subject": "inode",
                    "text": "small\n"})
        t.ok(r.get("ok"), "%s: inodes back: mail.send works again" % label, r)
    except RuntimeError as e:
        t.ok(False, "%s: daemon runs" % label, str(e)[-2000:])
    finally:
        teardown(d, spool, label)


def main():
    if os.geteuid() != 0:
        t.skip("test_diskfull", "needs root (mount)")
        t.done()
    run("floor", "queue_min_free_space = 1M\nqueue_min_free_inodes = 10\n",
        1024 * 1024 + 450 * 1024)
    run("ENOSPC", "queue_min_free_space = 0\nqueue_min_free_inodes = 0\n",
        450 * 1024)
    run_inodes()
    t.done()


if __name__ == "__main__":
    main()
