#!/usr/bin/env python3
"""test_install.py - `make install` and the systemd unit agree.

Starts: nothing; runs `make install DESTDIR=<tmp>` in the build tree.
Checks that the installed unit's -c path is the configuration file make
install wrote, that otpmaild --check-config accepts that file, that the
sendmail/mailq/newaliases links and the bash completion are installed, and
that README.md names that path for a default install.
"""

import os
import pwd
import re
import shutil
import subprocess
import tempfile

from harness import Tap, TOP_BUILDDIR, TOP_SRCDIR, OTPMAILD

t = Tap()
dest = tempfile.mkdtemp(prefix="otpmail-inst-")
p = subprocess.run(["make", "-s", "install", "DESTDIR=" + dest], cwd=TOP_BUILDDIR,
                   capture_output=True, text=True, timeout=600)
t.is_(p.returncode, 0, "make install DESTDIR=...")
units = [os.path.join(r, f) for r, _, fs in os.walk(dest) for f in fs
         if f == "otpmail.service"]
t.is_(len(units), 1, "one systemd unit installed")
unit = open(units[0]).read() if units else ""
m = re.search(r"^ExecStart=(\S+) -f -c (\S+)$", unit, re.M)
t.ok(m, "ExecStart names a configuration file", unit[:800])
if m:
    conf = m.group(2)
    t.ok(os.path.isfile(dest + conf), "the unit's configuration %s is the file make "
         "install wrote" % conf)
    t.ok(os.path.isfile(dest + m.group(1)), "the unit's daemon %s is installed" % m.group(1))
    pre = re.search(r"^ExecStartPre=\S+ --check-config -c (\S+)$", unit, re.M)
    t.ok(pre and pre.group(1) == conf, "ExecStartPre checks the same file")
    check = dest + conf
    try:
        pwd.getpwnam("otpmail")
    except KeyError:
        # The file names user = otpmail, which the admin makes after make
        # install (README) and the package's postinst makes: where neither
        # ran, a copy naming root is checked, the rest of the file as it is.
        text = open(check).read()
        t.ok("\nuser = otpmail\n" in text, "the installed configuration names "
             "user = otpmail")
        check = os.path.join(dest, "otpmail-root.conf")
        with open(check, "w") as f:
            f.write(text.replace("\nuser = otpmail\n", "\nuser = root\n", 1))
        t.diag("no user otpmail here: the installed configuration is checked "
               "with user = root")
    c = subprocess.run([OTPMAILD, "--check-config", "-c", check], capture_output=True,
                       text=True)
    t.ok(c.returncode == 0, "the installed configuration is valid", c.stderr[-600:])
    readme = open(os.path.join(TOP_SRCDIR, "README.md")).read()
    if conf.startswith("/usr/local/"):
        t.ok(conf in readme, "README.md names %s for a default make install" % conf)
    else:
        t.skip("README names the default path", "configured with sysconfdir " + conf)
found = {f: r for r, _, fs in os.walk(dest) for f in fs}
for name in ("sendmail", "mailq", "newaliases"):
    path = os.path.join(found.get(name, ""), name)
    t.ok(name in found and os.path.realpath(path).endswith("otpmail-sendmail") or
         os.readlink(path).endswith("otpmail-sendmail"),
         "%s links to otpmail-sendmail" % name)
t.ok(any(r.endswith("bash-completion/completions") and "otpmailctl" in fs
        for r, _, fs in os.walk(dest)), "bash completion for otpmailctl installed")
shutil.rmtree(dest, ignore_errors=True)
t.done()
