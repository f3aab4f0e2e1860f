#!/usr/bin/python3
"""test_config_errors.py - every error of the configuration parser
(agent/core/config.c) names the file and the line at fault.

Starts: `otpmaild --check-config -c FILE` once per case, no daemon, no peers.
Each case is a file of a few good lines with one bad line (or a pair of
keys that disagree); the answer must be a failure (exit status not 0) whose
message starts "otpmaild: FILE:LINE: " with the line of the bad key and
says what is wrong.  Covered: unknown key, a line without "=", each value
type (bool, int, duration, size, u64, number, mode, enum, tls policy), a
control character, an overlong line, a NUL byte, each special key
(dkim_key, route, domain_tls_policy, smarthost, fallback_relay) with each
of its errors and a second entry for the same domain, and the checks of
several keys together (otp_ttl > otp_max_ttl, retry max < min, a display
name in otp_from, no fully-qualified sender outside sandbox mode, unknown
users and groups), and a DKIM key file that cannot be used (missing,
readable by others, no key, a directory: --check-config loads the keys).
A good file passes.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Tap, OTPMAILD  # noqa: E402

t = Tap()
GOOD = ["# a comment", "log_level = info", "state_dir = /var/lib/otpmail-test"]

# (name, bad lines (the last one is the line named), what the message says)
CASES = [
    ("unknown key", ["no_such_key = 1"], r'unknown key "no_such_key"'),
    ("a line without =", ["sandbox yes"], r'expected "key = value"'),
    ("bool", ["sandbox = maybe"], r"sandbox must be yes or no"),
    ("int: not a number", ["otp_length = six"], r"otp_length must be a whole number"),
    ("int: out of range", ["otp_length = 13"], r"otp_length must be a whole number from 4 to 12"),
    ("duration: bad unit", ["otp_ttl = 5x"], r"otp_ttl must be a duration"),
    ("duration: below its minimum", ["otp_ttl = 10s"], r"otp_ttl must be a duration.*from 30"),
    ("size: bad suffix", ["message_size_limit = 12Q"], r"message_size_limit must be a size"),
    ("size: below its minimum", ["message_size_limit = 10"], r"message_size_limit must be a size"),
    ("u64", ["queue_min_free_space = lots"], r"queue_min_free_space must be a size"),
    ("number", ["retry_jitter = 2"], r"retry_jitter must be a number from 0 to 1"),
    ("number: junk", ["retry_jitter = 0.2x"], r"retry_jitter must be a number"),
    ("file mode", ["control_socket_mode = 0999"], r"control_socket_mode must be an octal file mode"),
    ("enum", ["log_level = loud"], r"log_level must be one of debug\|info"),
    ("tls policy", ["tls_policy = sometimes"], r"tls_policy must be none, may, encrypt"),
    ("control character", ["otp_app_name = My\x01App"], r"control character 0x01"),
    ("overlong line", ["otp_app_name = " + "x" * 5000], r"line longer than 4096 bytes"),
    ("dkim_key: words", ["dkim_key = example.com s1 ed25519-sha256"],
     r'dkim_key takes "domain selector algorithm keyfile"'),
    ("dkim_key: bad domain", ["dkim_key = exa_mple.com s1 ed25519-sha256 /k"],
     r"bad domain or selector in dkim_key"),
    ("dkim_key: algorithm", ["dkim_key = example.com s1 rsa-sha1 /k"],
     r"dkim_key algorithm must be rsa-sha256 or ed25519-sha256"),
    ("dkim_key: a second key for one selector",
     ["dkim_key = example.com s1 ed25519-sha256 /k1",
      "dkim_key = EXAMPLE.com s1 rsa-sha256 /k2"],
     r"a second dkim_key for selector s1 of EXAMPLE.com"),
    ("route: words", ["route = example.org"], r'route takes "domain host\[:port\]"'),
    ("route: bad domain", ["route = exa/mple.org mx.example.org"], r'bad domain "exa/mple.org" in route'),
    ("route: bad host", ["route = example.org mx_1.example.org"], r'bad host name "mx_1.example.org"'),
    ("route: bad port", ["route = example.org mx.example.org:70000"], r'bad port in "mx.example.org:70000"'),
    ("route: port not a number", ["route = example.org [127.0.0.1]:smtp"], r"bad port in"),
    ("route: missing ]", ["route = example.org [127.0.0.1:25"], r"missing '\]'"),
    ("route: junk after ]", ["route = example.org [127.0.0.1]x"], r"junk after '\]'"),
    ("route: empty host", ["route = example.org :25"], r'bad host in ":25"'),
    ("route: a second route for one domain",
     ["route = example.org [127.0.0.2]:25", "route = Example.ORG [127.0.0.3]:25"],
     r"a second route for Example.ORG"),
    ("domain_tls_policy: words", ["domain_tls_policy = example.org"],
     r'domain_tls_policy takes "domain policy"'),
    ("domain_tls_policy: policy", ["domain_tls_policy = example.org strict"],
     r"TLS policy must be none, may, encrypt, verify or dane"),
    ("domain_tls_policy: a second one for one domain",
     ["domain_tls_policy = example.org verify", "domain_tls_policy = example.org may"],
     r"a second domain_tls_policy for example.org"),
    ("smarthost", ["smarthost = relay.example.org:0"], r'bad port in "relay.example.org:0"'),
    ("fallback_relay", ["fallback_relay = [10.0.0.1"], r"missing '\]'"),
    # checks of several keys together: the line of the last key involved
    ("otp_ttl above otp_max_ttl", ["otp_max_ttl = 60s", "otp_ttl = 120s"],
     r"otp_ttl is larger than otp_max_ttl"),
    ("otp_max_ttl below otp_ttl", ["otp_ttl = 120s", "otp_max_ttl = 60s"],
     r"otp_ttl is larger than otp_max_ttl"),
    ("retry max below min", ["otp_retry_max = 2s"], r"retry_max is smaller than its \*_retry_min"),
    ("default retry max below min", ["default_retry_min = 1h", "default_retry_max = 10m"],
     r"retry_max is smaller than its \*_retry_min"),
    ("otp_from with a display name", ["otp_from = App <app@example.com>"],
     r"otp_from and bounce_from take a bare address"),
    ("no fully-qualified sender outside sandbox",
     ["hostname = localhost", "sandbox = no"], r"has no fully-qualified domain"),
    ("app_users: no such user", ["app_users = www-data, no-such-user-x"],
     r'app_users: no such user "no-such-user-x"'),
    ("admin_groups: no such group", ["admin_groups = no-such-group-x"],
     r'admin_groups: no such group "no-such-group-x"'),
    ("user: no such user", ["user = no-such-user-x"], r'user: no such user "no-such-user-x"'),
    ("control_socket_group: no such group", ["control_socket_group = no-such-group-x"],
     r'control_socket_group: no such group "no-such-group-x"'),
]


def check(path):
    r = subprocess.run([OTPMAILD, "--check-config", "-c", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def put(d, name, data, mode):
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    return p


def main():
    d = tempfile.mkdtemp(prefix="otpm-conferr-")
    try:
        path = os.path.join(d, "otpmail.conf")
        with open(path, "w") as f:
            f.write("\n".join(GOOD) + "\n")
        rc, out, err = check(path)
        t.ok(rc == 0 and "log_level = info" in out, "the good lines pass", err)

        for name, bad, want in CASES:
            lines = GOOD + bad + ["otp_app_name = after the bad line"]
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            line = len(GOOD) + len(bad)
            rc, out, err = check(path)
            first = err.strip().splitlines()[0] if err.strip() else ""
            t.ok(rc != 0 and first.startswith("otpmaild: %s:%d: " % (path, line))
                 and re.search(want, first) is not None,
                 "%s: fails naming %s:%d" % (name, os.path.basename(path), line),
                 "exit %d, stderr %r" % (rc, err[:600]))

        # a NUL byte cannot go through the list above (text lines)
        with open(path, "wb") as f:
            f.write(("\n".join(GOOD) + "\n").encode() + b"otp_app_name = a\0b\n")
        rc, out, err = check(path)
        t.ok(rc != 0 and "%s:%d: NUL byte in line" % (path, len(GOOD) + 1) in err,
             "NUL byte: fails naming the line", err)

        # key files are part of the configuration: --check-config loads
        # them, and one that fails names the dkim_key line
        good = os.path.join(d, "good.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", good],
                       check=True, capture_output=True)
        os.chmod(good, 0o600)
        with open(good, "rb") as f:
            pem = f.read()
        opened = put(d, "open.pem", pem, 0o644)
        garbage = put(d, "garbage.pem", b"not a key\n", 0o600)
        keys = [("a good key", good, None),
                ("a missing key file", os.path.join(d, "missing.pem"), r"cannot open"),
                ("a key file readable by others", opened, r"mode 0644"),
                ("a key file that is no key", garbage, r"not a PEM private key"),
                ("a key file that is a directory", d, r"not a regular file")]
        for name, kf, want in keys:
            lines = GOOD + ["dkim_key = example.com s0 ed25519-sha256 " + good,
                            "dkim_key = example.com s1 ed25519-sha256 " + kf]
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            rc, out, err = check(path)
            if want is None:
                t.ok(rc == 0, "%s: passes" % name, err)
                continue
            first = err.strip().splitlines()[0] if err.strip() else ""
            t.ok(rc != 0 and first.startswith("otpmaild: %s:%d: dkim key " % (path, len(lines)))
                 and re.search(want, first) is not None,
                 "%s: fails naming %s:%d" % (name, os.path.basename(path), len(lines)),
                 "exit %d, stderr %r" % (rc, err[:600]))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    t.done()


if __name__ == "__main__":
    main()
