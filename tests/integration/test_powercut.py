#!/usr/bin/python3
"""test_powercut.py - a power cut loses nothing acknowledged, and every
fsync/fdatasync on the acknowledgement path is needed for that.

Starts: otpmaild (sandbox mode, queue paused so every message stays in the
spool) under tests/powercut/powercut.so (LD_PRELOAD), on a state directory
that a first clean run created.

kill -9 is no power cut: the page cache survives it, so a test that kills
the process passes with every fsync deleted.  Here the daemon runs on a
model of the disk instead:

What the model keeps (tests/powercut/powercut.c): at start, the whole state
directory (made by a clean run, then sync(1)).  Afterwards, only what a
sync made durable: fsync/fdatasync of a regular file keeps the file's whole
content (copied before the real call is made, so a write the daemon issues
after its sync never counts; one lock orders the copies, so a write racing
another thread's sync of the same file may); fsync of a directory keeps
its entries (names, kinds, modes, and which file each name points to, by
inode number and birth time, so a reused inode number is another file).  At the cut (SIGKILL), the test rebuilds the tree
from that image: a directory never fsynced since the start has its entries
from the start (a new one is empty); a name points to the last synced
content of its file, or to an empty file if the file never had its data
synced (ext4 with delayed allocation leaves exactly that).  So a new file,
rename, link or unlink survives only if its directory was fsynced after it;
data survives only if its file was synced after it was written.

What otpmaild does on the acknowledgement path (strace -f, Debian 12,
libdb 5.3): otp.issue - the code's transaction is committed with
DB_TXN_WRITE_NOSYNC (pwrite64 of log records to db/log.NNNNNNNNNN), then
the flusher thread's DB_ENV->log_flush does fdatasync on that log file;
the mail goes to spool/msg/XX as open(O_TMPFILE), pwritev, fsync, and only
after the log flush (the barrier) linkat and fsync of spool/msg/XX.
mail.send: the same spool steps.  queue.hold: pwritev of a state record
appended to the message file, then fdatasync.  queue.pause: creates
spool/paused, then fsync of spool/.  No O_SYNC/O_DSYNC/O_DIRECT
file (the test checks /proc/PID/fdinfo of every file open under the state
directory at the cut), no msync, sync, syncfs or sync_file_range (the shim
logs any call and the test fails on one).  BDB's environment regions
(db/__db.00N) are mmap(MAP_SHARED) files that are never synced; the model
gives them back as they were at the start, and DB_REGISTER + DB_RECOVER
rebuilds them from the log at the next open, which is what BDB requires.

What it does not model: unsynced writes that partly reach the disk (torn
appends, a subset of pages: test_crash_state.py and the spool and BDB
checksums cover those), a disk that lies about its cache flush, metadata
of the state directory's own parent, other processes' writes, directory
renames (otpmaild makes none).  It is stricter than ext4 or XFS, where an
fsync of a new file usually makes its name durable too; POSIX does not
promise that, and the daemon must not rely on it.  Every run puts a
DB_CONFIG with small log files (set_lg_max 64 KiB) in place before BDB
makes the environment: the shim copies little at each sync, and the run
with every sync kept and the bdb-dir run issue codes until BDB starts a
new log file (~30 issues) before the acknowledged work, so that the cut
also tests the name of a log file that has just been made.

The classes (POWERCUT_DROP makes one a no-op, as if the call were deleted):
  spool-file  fsync of a new message file (spool_write_file)
  spool-dir   fsync of a spool directory after linkat/rename
  state       fdatasync of an appended state record (spool_store_state_text)
  bdb-log     fdatasync of BDB's log file (store_commit / the log flusher)
  bdb-dir     fsync of db/ when BDB has started a new log file (env.c's
              store_log_flush; checked with a cut just after a new file)

The test: pause the queue, issue codes and send mails, hold some, verify
some codes; note every acknowledged id, code, hold and verify; cut;
rebuild; start a daemon on the rebuilt state; the queue must be paused,
every acknowledged message must be in the queue (held ones still held),
every code not used must verify, and no used code may verify again (a
success is consumed durably: otp.verify commits with a log flush).

What it caught: every code issued since the daemon started was lost (BDB's
DB_REGISTER saw a clean register file and ran no recovery; store/env.c now
recovers at every open); every code in a log file BDB had just started
(BDB never fsyncs its directory; env.c now syncs it after a flush that
finds a new log file, and after making the environment); and queue.pause
(spool/paused was created without an fsync of its directory; queue.c now
syncs it).  Then once per class with that class dropped: the same
check must see a loss.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, TOP_BUILDDIR, WRAPPER  # noqa: E402

SHIM = os.path.join(TOP_BUILDDIR, "tests", "powercut", "powercut.so")
CLASSES = ("spool-file", "spool-dir", "state", "bdb-log")
CONF = ("otp_resend_cooldown = 0s\n"
        "otp_max_per_address_hour = 1000\n"
        "log_level = info\n")
N_OTP, N_MAIL, N_HOLD, N_USED = 6, 6, 3, 2

t = Tap()


def code_in(body):
    """The code of an OTP mail: the indented line of its text part."""
    m = re.search(r"^\s{4}([0-9A-Z]{4,12})\s*$", body, re.M)
    return m.group(1) if m else None


def rebuild(shadow, dst):
    """The tree the cut leaves: see the header."""
    def listing(rel):
        name = "%root" if rel == "" else rel.replace("/", "%2F")
        try:
            with open(os.path.join(shadow, "dir", name)) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            kind, mode, ident, fname = line.split("\t", 3)
            out.append((kind, int(mode, 8), ident, fname))
        return out

    def walk(rel):
        here = os.path.join(dst, rel)
        os.makedirs(here, exist_ok=True)
        for kind, mode, ident, name in listing(rel):
            sub = os.path.join(rel, name) if rel else name
            if kind == "d":
                walk(sub)
                os.chmod(os.path.join(dst, sub), mode)
            elif kind == "f":
                src = os.path.join(shadow, "ino", ident)
                path = os.path.join(dst, sub)
                if os.path.exists(src):
                    shutil.copyfile(src, path)
                else:
                    open(path, "wb").close()
                os.chmod(path, mode)
    walk("")


def sync_flags(pid, root):
    """Files under root that the process has open with O_SYNC/O_DSYNC/O_DIRECT."""
    bad = []
    for fd in glob.glob("/proc/%d/fd/*" % pid):
        try:
            target = os.readlink(fd)
            with open(fd.replace("/fd/", "/fdinfo/")) as f:
                flags = int(re.search(r"flags:\s+(\d+)", f.read()).group(1), 8)
        except (OSError, AttributeError):
            continue
        if target.startswith(root + "/") and flags & (os.O_SYNC | os.O_DSYNC | os.O_DIRECT):
            bad.append("%s flags=%o" % (target, flags))
    return bad


def fill_log(d):
    """Issues codes until BDB starts a second log file (DB_CONFIG makes
    log files small); returns how many it took."""
    def last_log():
        return max(glob.glob(os.path.join(d.state, "db", "log.*")))
    first = last_log()
    n = 0
    while last_log() == first and n < 1000:
        rs = d.pipeline([{"op": "otp.issue", "to": "fill%d@example.org" % (n + i),
                          "purpose": "login"} for i in range(10)])
        if not all(r.get("ok") for r in rs):
            raise RuntimeError("otp.issue: %r" % [r for r in rs if not r.get("ok")][:1])
        n += 10
    if last_log() == first:
        raise RuntimeError("no new log file after %d issues" % n)
    return n


def run(drop, roll=False, small=False):
    """One cut with `drop` (None = every sync kept); with roll, BDB has
    just started a new log file; with small, log files are small (less
    for the shim to copy at each sync).  Returns a list of losses, or raises on a
    setup failure."""
    base = tempfile.mkdtemp(prefix="otpm-powercut-")
    shadow = os.path.join(base, "shadow")
    os.mkdir(shadow)
    try:
        # 1. a clean first run makes the state directory: the start of
        # the model (everything in it durable)
        os.mkdir(os.path.join(base, "a"))
        if roll or small:
            # small log files (BDB reads DB_CONFIG when it makes the
            # environment): a new one every ~30 issues
            os.makedirs(os.path.join(base, "a", "state", "db"), 0o700)
            with open(os.path.join(base, "a", "state", "db", "DB_CONFIG"), "w") as f:
                f.write("set_lg_bsize 16384\nset_lg_max 65536\n")
        d = Daemon(conf_extra=CONF, state_dir=os.path.join(base, "a"))
        d.stop()
        os.sync()

        # 2. the daemon on the model of the disk
        env = {"LD_PRELOAD": SHIM, "POWERCUT_ROOT": d.state,
               "POWERCUT_SHADOW": shadow, "POWERCUT_DROP": drop or "none",
               # the shim is loaded ahead of the sanitizer runtime
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
               ":verify_asan_link_order=0"}
        d.env.update(env)
        d.start()
        # paused: every message stays in the spool until the cut
        r = d.call({"op": "queue.pause"})
        if not r.get("ok"):
            raise RuntimeError("queue.pause: %r" % r)
        filled = fill_log(d) if roll else 0
        codes, mails = {}, []
        for i in range(N_OTP):
            to = "pc%d@example.org" % i
            r = d.call({"op": "otp.issue", "to": to, "purpose": "login"})
            if not r.get("ok"):
                raise RuntimeError("otp.issue: %r" % r)
            body = d.call({"op": "queue.show", "id": r["id"], "body": True}).get("body", "")
            code = code_in(body)
            if code is None:
                raise RuntimeError("no code in %r" % body[:500])
            codes[r["id"]] = (to, code)
        for i in range(N_MAIL):
            r = d.call({"op": "mail.send", "from": "app@example.com",
                        "to": ["m%d@example.net" % i], "subject": "powercut %d" % i,
                        "text": "body %d\n" % i})
            if not r.get("ok"):
                raise RuntimeError("mail.send: %r" % r)
            mails.append(r["id"])
        held = mails[:N_HOLD]
        for qid in held:
            r = d.call({"op": "queue.hold", "id": qid})
            if not r.get("ok"):
                raise RuntimeError("queue.hold: %r" % r)
        used = list(codes)[-N_USED:]
        for qid in used:
            to, code = codes[qid]
            r = d.call({"op": "otp.verify", "to": to, "purpose": "login", "code": code})
            if not r.get("ok"):
                raise RuntimeError("otp.verify: %r" % r)
        flags = sync_flags(d.pid(), os.path.realpath(d.state))
        d.kill9()                                  # the cut
        try:
            with open(os.path.join(shadow, "unmodelled")) as f:
                unmodelled = f.read()
        except FileNotFoundError:
            unmodelled = ""

        # 3. what the disk holds after the cut, and a daemon on it
        after = os.path.join(base, "b")
        rebuild(shadow, os.path.join(after, "state"))
        os.chmod(os.path.join(after, "state"), 0o750)
        try:
            d2 = Daemon(conf_extra=CONF, state_dir=after)
        except RuntimeError as e:
            why = [l for l in str(e).splitlines() if "start_failed" in l]
            return (["the daemon does not start on it: %s" %
                     (why[0] if why else str(e)[-300:])], flags, unmodelled, "")
        lost = []
        try:
            if not d2.call({"op": "stats"}).get("paused"):
                lost.append("queue.pause")
            for qid in list(codes) + mails:
                r = d2.call({"op": "queue.show", "id": qid})
                if not r.get("ok"):
                    lost.append("message %s: %s" % (qid, r.get("error")))
                elif qid in held and not r.get("held"):
                    lost.append("hold of %s" % qid)
            for qid, (to, code) in codes.items():
                r = d2.call({"op": "otp.verify", "to": to, "purpose": "login",
                             "code": code})
                if qid in used and r.get("ok"):
                    lost.append("code of %s, used before the cut, verifies again" % qid)
                elif qid not in used and not r.get("ok"):
                    lost.append("code of %s: %s" % (qid, r.get("error")))
        finally:
            d2.stop()
            log2 = d2.log_text()
        return lost, flags, unmodelled, log2
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main():
    if not os.path.exists(SHIM):
        t.ok(False, "the shim is built", "%s missing: make check builds it" % SHIM)
        t.done()
    # small log files, filled until BDB starts a new one: the cut also
    # catches the name of a log file that is not yet durable
    lost, flags, unmodelled, log2 = run(None, roll=True)
    t.ok(not flags, "no file under the state directory is open O_SYNC/O_DSYNC/O_DIRECT",
         "\n".join(flags))
    t.ok(unmodelled == "", "no sync call outside the model (msync, sync, syncfs, "
         "sync_file_range)", unmodelled)
    t.ok(not lost, "power cut, every sync kept, just after BDB started a new log "
         "file: the pause, all %d messages, %d holds and %d codes acknowledged "
         "survive, and %d codes used stay used" % (N_OTP + N_MAIL, N_HOLD,
                                                  N_OTP - N_USED, N_USED),
         "\n".join(lost) + "\n" + log2[-2000:])
    classes = CLASSES + ("bdb-dir",)
    if WRAPPER:
        # under valgrind a run takes a minute: the memory check needs one
        # cut with a class removed, the plain and sanitizer passes prove all
        classes = ("spool-dir",)
        t.diag("daemon under %s: only the %s class is removed in this pass"
               % (os.path.basename(WRAPPER[0]), classes[0]))
    for c in classes:
        lost, _, _, _ = run(c, small=True, roll=c == "bdb-dir")
        t.ok(lost, "power cut with the %s sync removed: the check sees the loss" % c)
        t.diag("%s removed: %d lost (%s)" % (c, len(lost), "; ".join(lost[:3])))
    t.done()


if __name__ == "__main__":
    main()
