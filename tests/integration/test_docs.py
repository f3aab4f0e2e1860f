#!/usr/bin/env python3
"""test_docs.py - the manuals and the sample configuration keep up with the code.

Starts nothing but `otpmaild --check-config`, whose output lists every key
the code knows.  Each key must be documented in etc/otpmail.conf and in the
generated otpmail.conf(5); every manual page must render without warnings.
"""
import os
import re
import shutil
import subprocess

from harness import Tap, OTPMAILD, TOP_BUILDDIR, TOP_SRCDIR

t = Tap()
p = subprocess.run([OTPMAILD, "--check-config"], capture_output=True, text=True,
                   env=dict(os.environ, OTPMAIL_CONFIG=""), cwd="/tmp")
keys = sorted(set(re.findall(r"^([a-z_0-9]+) =", p.stdout, re.M)))
t.ok(p.returncode == 0 and len(keys) > 60, "the code lists its keys (%d)" % len(keys))
sample = open(os.path.join(TOP_SRCDIR, "etc", "otpmail.conf")).read()
man5 = os.path.join(TOP_BUILDDIR, "man", "otpmail.conf.5")
if not os.path.exists(man5):
    subprocess.run(["make", "-C", TOP_BUILDDIR, "man/otpmail.conf.5"], capture_output=True)
page = open(man5).read()
missing_sample = [k for k in keys if "# %s =" % k not in sample]
missing_man = [k for k in keys if "\\fB%s\\fR" % k not in page]
t.ok(not missing_sample, "every key in etc/otpmail.conf", missing_sample)
t.ok(not missing_man, "every key in otpmail.conf(5)", missing_man)
for page_path in [man5] + [os.path.join(TOP_SRCDIR, "man", n) for n in
                           ("otpmaild.8", "otpmailctl.8", "otpmail-sendmail.8",
                            "otpmail-events.7")]:
    r = subprocess.run(["man", "--warnings", "-l", page_path], capture_output=True,
                       text=True, env=dict(os.environ, MANWIDTH="80", MAN_KEEP_STDERR="1"))
    t.ok(r.returncode == 0 and "NAME" in r.stdout and not r.stderr.strip(),
         "%s renders without warnings" % os.path.basename(page_path), r.stderr[:500])
# the systemd unit as make generates it: every setting understood
unit = os.path.join(TOP_BUILDDIR, "etc", "otpmail.service")
subprocess.run(["make", "-C", TOP_BUILDDIR, "etc/otpmail.service"], capture_output=True)
if shutil.which("systemd-analyze"):
    r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
    bad = [l for l in (r.stdout + r.stderr).splitlines()
           if "not executable" not in l and "man " not in l and l.strip()]
    text = open(unit).read()
    t.ok(not bad and "@" not in text.split("[Service]")[1].split("\n\n")[0].replace(
        "$MAINPID", ""), "systemd-analyze verify accepts the unit (paths substituted)", bad)
else:
    t.skip("systemd unit", "systemd-analyze not installed")
# every otpmailctl subcommand is in its manual
ctl = subprocess.run([os.path.join(TOP_BUILDDIR, "otpmailctl"), "--help"],
                     capture_output=True, text=True).stdout
cmds = re.findall(r"^  ([a-z]+(?: [a-z]+)?)\s{2,}", ctl, re.M)
man8 = open(os.path.join(TOP_SRCDIR, "man", "otpmailctl.8")).read().replace("\\fB", "").replace("\\fR", "")
missing = [c for c in cmds if c.split()[0] not in man8]
t.ok(cmds and not missing, "every otpmailctl command in otpmailctl(8)", missing)
t.done()
