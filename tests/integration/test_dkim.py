#!/usr/bin/python3
"""test_dkim.py - DKIM signatures survive a real SMTP hop; dkim.* ops.

Starts: a private Postfix (127.0.0.51:25) that delivers example.net to a
Maildir and relays everything else to smtp-sink (127.0.0.52:25, dump
files); NSD (127.0.0.53:5353) serving the DKIM TXT records of example.org;
otpmaild (harness.Daemon) in sandbox mode with RSA + Ed25519 keys.

1. Messages signed by the library (tests/dkim/dkimsign: plain, multipart,
   8-bit UTF-8, long folded headers, no final newline, empty body, dot
   lines) are sent through Postfix to the Maildir and to smtp-sink; every
   copy verifies with python3-dkim (tests/dkim/verify.py) for RSA and
   Ed25519.  A tampered copy fails.
2. otpmaild with dkim_key lines: mail.send -> the sandbox Maildir copy
   verifies; with delivery routed to Postfix (route = ...), every copy
   delivered to the Maildir and relayed to smtp-sink verifies, and so does
   an OTP mail from otp.issue; a recipient refused with 5xx (a second
   smtp-sink, -f rcpt) makes a DSN, which reaches the sender's Postfix
   mailbox signed (From: MAILER-DAEMON@mail.example.org, signed for
   example.org by the parent-domain fallback) and verifies.
3. dkim.keygen / dkim.records / dkim.check (match, mismatch, missing), and
   `otpmailctl dkim keygen|records`; bad keys stop start-up naming the file.
"""
import email
import email.policy
import os
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import time

# python3-dkim and nacl live in Debian's python; re-run under it if needed
try:
    import dkim  # noqa: F401
    import nacl.signing  # noqa: F401
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Daemon, Tap, TOP_BUILDDIR, TOP_SRCDIR, wait_for  # noqa: E402
from peers import DnsServer, PostfixPeer, SmtpSink, Zone  # noqa: E402

DKIMSIGN = os.path.join(TOP_BUILDDIR, "tests", "dkim", "dkimsign")
VERIFY = os.path.join(TOP_SRCDIR, "tests", "dkim", "verify.py")
PF_ADDR, SINK_ADDR, DNS_ADDR = "127.0.0.51", "127.0.0.52", "127.0.0.53"
REJECT_ADDR = "127.0.0.54"      # smtp-sink -f rcpt: 5xx to every recipient

MSGS = {
    "plain": (
        "From: Example <noreply@example.org>\r\n"
        "To: user@example.net\r\n"
        "Subject: Your login code\r\n"
        "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <p1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Your code is 493817.\r\n"
        ".\r\n"
        "..two dots\r\n"
        ".one dot\r\n"
        "trailing spaces   \r\n").encode(),
    "multipart": (
        "From: \"Example App\" <noreply@example.org>\r\n"
        "To: user@example.net\r\n"
        "Subject: Your login code\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Your code is 493817.\r\n"
        "--b1\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "PGh0bWw+PGJvZHk+PHA+WW91ciBjb2RlIGlzIDxiPjQ5MzgxNzwvYj48L3A+PC9ib2R5PjwvaHRt\r\n"
        "bD4=\r\n"
        "--b1--\r\n").encode(),
    "utf8": (
        "From: noreply@example.org\r\n"
        "To: user@example.net\r\n"
        "Subject: =?utf-8?q?Votre_code?=\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Votre code est 493817. \u00c9t\u00e9, \u65e5\u672c, \U0001f511\r\n").encode(),
    "folded": (
        "From: noreply@example.org\r\n"
        "To: first@example.net,\r\n"
        "\tsecond@example.net\r\n"
        "Subject: A very long subject line that goes on and on and on and on and\r\n"
        " on and on past the seventy-eight character recommendation\r\n"
        "\r\n"
        "body\r\n").encode(),
    "nonewline": (
        "From: noreply@example.org\r\n"
        "To: user@example.net\r\n"
        "Subject: no final newline\r\n"
        "\r\n"
        "last line without newline").encode(),
    "empty": (
        "From: noreply@example.org\r\n"
        "To: user@example.net\r\n"
        "Subject: empty body\r\n"
        "\r\n").encode(),
}


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, **kw)


def txt_zone_line(name, value):
    parts = [value[i:i + 255] for i in range(0, len(value), 255)]
    return "%s TXT %s" % (name, " ".join('"%s"' % p for p in parts))


class Keys:
    """An RSA and an Ed25519 key for example.org, made by dkim_keygen."""

    def __init__(self, d):
        self.dir = d
        self.rsa = os.path.join(d, "example.org.rsa1.key")
        self.ed = os.path.join(d, "example.org.ed1.key")
        self.rsa_txt = run([DKIMSIGN, "keygen", "rsa", self.rsa], text=True).stdout.strip()
        self.ed_txt = run([DKIMSIGN, "keygen", "ed25519", self.ed], text=True).stdout.strip()

    def records(self):
        return ["-r", "rsa1._domainkey.example.org=" + self.rsa_txt,
                "-r", "ed1._domainkey.example.org=" + self.ed_txt]

    def specs(self):
        return ["example.org:rsa1:rsa-sha256:" + self.rsa,
                "example.org:ed1:ed25519-sha256:" + self.ed]


def verify(keys, data, nsig=2):
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(data)
        f.flush()
        r = run(["/usr/bin/python3", VERIFY, "-n", str(nsig)] + keys.records() + [f.name],
                text=True)
    return r.returncode == 0, r.stdout + r.stderr


def strip_sink_dump(data):
    """smtp-sink -d puts X-Client-Addr:, X-Helo-Args:, ... lines first."""
    lines = data.split(b"\n")
    while lines and lines[0].split(b":", 1)[0] in (
            b"X-Client-Addr", b"X-Client-Proto", b"X-Helo-Args", b"X-Mail-Args",
            b"X-Rcpt-Args"):
        lines.pop(0)
    return b"\n".join(lines)


def library_through_postfix(t, keys, pf, sink):
    signed = {}
    for name, msg in MSGS.items():
        r = run([DKIMSIGN, "sign"] + keys.specs(), input=msg)
        t.ok(r.returncode == 0 and r.stdout.startswith(b"DKIM-Signature:"),
             "library signs %s (RSA + Ed25519)" % name, r.stderr)
        signed[name] = r.stdout
        ok, out = verify(keys, r.stdout)
        t.ok(ok, "%s: verifies before the hop" % name, out)
    r = run([DKIMSIGN, "sign", "-s"] + keys.specs(), input=MSGS["folded"])
    signed["folded-simple"] = r.stdout
    t.ok(r.returncode == 0, "library signs with simple/simple", r.stderr)

    with smtplib.SMTP(PF_ADDR, 25, timeout=30) as s:
        for name, data in signed.items():
            s.sendmail("bounce@example.org", ["inbox@example.net"], data,
                       mail_options=["BODY=8BITMIME"])
            s.sendmail("bounce@example.org", ["far@remote.example.com"], data,
                       mail_options=["BODY=8BITMIME"])
    n = len(signed)
    try:
        got = pf.wait_for(n, timeout=60)
    except RuntimeError as e:
        t.ok(False, "Postfix delivered %d messages to the Maildir" % n, e)
        got = pf.messages()
    try:
        dumped = sink.wait_for(n, timeout=60)
    except RuntimeError as e:
        t.ok(False, "Postfix relayed %d messages to smtp-sink" % n, e)
        dumped = sink.messages()
    t.is_(len(got), n, "all messages in the Maildir after Postfix")
    t.is_(len(dumped), n, "all messages in smtp-sink's dump after Postfix")
    for m in got:
        subj = [ln for ln in m.data.split(b"\n") if ln.lower().startswith(b"subject:")]
        ok, out = verify(keys, m.data)
        t.ok(ok, "Maildir copy (%s) verifies after Postfix, RSA and Ed25519" %
             (subj[0][:40].decode(errors="replace") if subj else "?"), out)
    for m in dumped:
        data = strip_sink_dump(m.data)
        ok, out = verify(keys, data)
        t.ok(ok, "smtp-sink copy verifies after Postfix relay", out)
    if got:
        bad = got[0].data.replace(b"493817", b"493818") if b"493817" in got[0].data \
            else got[0].data.replace(b"body", b"bodY")
        ok, out = verify(keys, bad)
        t.ok(not ok, "a tampered delivered copy fails verification")


def write_conf_keys(keys):
    return ("dkim_key = example.org rsa1 rsa-sha256 %s\n"
            "dkim_key = example.org ed1 ed25519-sha256 %s\n" % (keys.rsa, keys.ed))


def daemon_tests(t, keys, pf, dns):
    conf = ("sandbox = yes\n" + write_conf_keys(keys) + "resolver = %s\n" % dns.resolver
            + "hostname = mail.example.org\n")
    try:
        d = Daemon(conf_extra=conf)
    except RuntimeError as e:
        t.ok(False, "otpmaild starts with RSA + Ed25519 dkim_key lines", e)
        return
    with d:
        t.ok(True, "otpmaild starts with RSA + Ed25519 dkim_key lines")
        # mail.send in sandbox mode: the Maildir copy verifies
        raw = MSGS["multipart"].decode()
        r = d.call({"op": "mail.send", "to": ["user@example.net"],
                    "from": "noreply@example.org", "raw": raw})
        files = []
        if t.ok(r.get("ok"), "mail.send in sandbox mode accepted", r):
            files = wait_for(lambda: d.sandbox_messages(), 20)
            t.ok(files, "message arrived in the sandbox Maildir", d.log_text()[-2000:])
            if files:
                with open(files[-1], "rb") as f:
                    data = f.read()
                ok, out = verify(keys, data)
                t.ok(ok, "sandbox copy signed by otpmaild verifies (RSA + Ed25519)", out)
        # reload (SIGHUP) builds a new signer; mail is still signed right
        if files:
            before = len(d.sandbox_messages())
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "event=reloaded" in d.log_text(), 10)
            r = d.call({"op": "mail.send", "to": ["user@example.net"],
                        "from": "noreply@example.org", "raw": MSGS["plain"].decode()})
            after = wait_for(lambda: len(d.sandbox_messages()) > before and
                             d.sandbox_messages(), 20)
            ok = False
            out = "%s\n%s" % (r, d.log_text()[-1500:])
            if after:
                with open(after[-1], "rb") as f:
                    ok, out = verify(keys, f.read())
            t.ok(ok, "after a reload, mail is signed and verifies", out)
        # dkim.records
        r = d.call({"op": "dkim.records"})
        t.ok(r.get("ok"), "dkim.records answers", r)
        recs = r.get("records", [])
        dk = {x["name"]: x["value"] for x in recs if x.get("kind") == "dkim"}
        t.is_(dk.get("rsa1._domainkey.example.org."), keys.rsa_txt,
              "dkim.records: RSA record matches the key")
        t.is_(dk.get("ed1._domainkey.example.org."), keys.ed_txt,
              "dkim.records: Ed25519 record matches the key")
        kinds = sorted(x.get("kind") for x in recs)
        t.is_(kinds, ["dkim", "dkim", "dmarc", "spf"], "one SPF and one DMARC suggestion")
        zone = r.get("zone", "")
        t.ok('rsa1._domainkey.example.org.\tIN\tTXT\t"v=DKIM1; k=rsa; p=' in zone and
             all(len(p) <= 255 for p in zone.split('"')[1::2]),
             "zone text: TXT split in strings of at most 255", zone)
        t.ok("_dmarc.example.org." in zone and "v=spf1" in zone, "zone has SPF and DMARC")
        out = d.ctl("dkim", "records")
        t.ok(out.returncode == 0 and "ed1._domainkey.example.org." in out.stdout,
             "otpmailctl dkim records prints the zone", out.stdout + out.stderr)
        t.ok("PRIVATE" not in out.stdout and "PRIVATE" not in d.log_text(),
             "no private key in output or log")
        r = d.call({"op": "config.show"})
        t.ok("PRIVATE" not in str(r), "no private key in config.show")

        # dkim.check: RSA published right, Ed25519 published wrong -> match, mismatch
        r = d.call({"op": "dkim.check"}, timeout=60)
        st = {x["selector"]: x["status"] for x in r.get("keys", [])}
        t.is_(st, {"rsa1": "match", "ed1": "mismatch"},
              "dkim.check: match for the RSA key, mismatch for the Ed25519 key")
        r = d.call({"op": "dkim.check", "domain": "other.example.org"}, timeout=60)
        t.ok(r.get("ok") and r.get("keys") == [], "dkim.check for a domain without keys")

        # dkim.keygen through the daemon
        r = d.call({"op": "dkim.keygen", "domain": "example.com", "selector": "s2026",
                    "algorithm": "ed25519"})
        t.ok(r.get("ok"), "dkim.keygen ed25519", r)
        f = r.get("file", "")
        t.ok(f.startswith(d.state) and os.path.exists(f) and
             (os.stat(f).st_mode & 0o777) == 0o600, "key written 0600 under state_dir", f)
        t.is_(r.get("config_line"), "dkim_key = example.com s2026 ed25519-sha256 %s" % f,
              "keygen replies the config line")
        rec = r.get("record", {})
        t.is_(rec.get("name"), "s2026._domainkey.example.com.", "keygen record name")
        rr = run([DKIMSIGN, "sign", "example.com:s2026:ed25519:" + f],
                 input=b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n")
        with tempfile.NamedTemporaryFile() as tf:
            tf.write(rr.stdout)
            tf.flush()
            v = run(["/usr/bin/python3", VERIFY, "-n", "1", "-r",
                     "s2026._domainkey.example.com=" + rec.get("value", ""), tf.name],
                    text=True)
        t.ok(v.returncode == 0, "key from dkim.keygen signs; its record verifies",
             v.stdout + v.stderr)
        r = d.call({"op": "dkim.keygen", "domain": "example.com", "selector": "s2026"})
        t.ok(not r.get("ok"), "dkim.keygen refuses to overwrite a key", r)
        r = d.call({"op": "dkim.keygen", "domain": "bad domain", "selector": "x"})
        t.is_(r.get("field"), "domain", "dkim.keygen: bad domain is a bad field")
        r = d.call({"op": "dkim.keygen", "domain": "example.com", "selector": "r1",
                    "bits": 512})
        t.is_(r.get("field"), "bits", "dkim.keygen: 512 bits refused")
        out = d.ctl("dkim", "keygen", "--domain", "example.com", "--selector", "r2048",
                    "--bits", "2048")
        t.ok(out.returncode == 0 and "r2048._domainkey.example.com." in out.stdout and
             "dkim_key = example.com r2048 rsa-sha256" in out.stdout,
             "otpmailctl dkim keygen prints the record and the config line",
             out.stdout + out.stderr)
        r = d.call_as(65534, {"op": "dkim.keygen", "domain": "example.com",
                              "selector": "x"})
        t.ok(not r.get("ok"), "dkim.keygen is refused to a non-admin user", r)


def daemon_delivery_tests(t, keys, pf, sink):
    """otpmaild delivers (no sandbox) through Postfix; copies still verify."""
    n_pf, n_sink = len(pf.messages()), len(sink.messages())
    conf = ("sandbox = no\nhostname = mail.example.org\ntls_policy = none\n"
            "route = example.net [%s]:25\nroute = remote.example.com [%s]:25\n"
            "route = reject.example.com [%s]:25\n"
            "otp_from = noreply@example.org\n"
            "default_retry_min = 600s\n" % (PF_ADDR, PF_ADDR, REJECT_ADDR) +
            write_conf_keys(keys))
    try:
        d = Daemon(conf_extra=conf)
    except RuntimeError as e:
        t.ok(False, "otpmaild starts for delivery", e)
        return
    with d:
        sent = 0
        for name in ("plain", "multipart", "utf8", "folded", "nonewline", "empty"):
            raw = MSGS[name].decode().replace("To: user@example.net",
                                              "To: inbox@example.net")
            for rcpt in ("inbox@example.net", "far@remote.example.com"):
                r = d.call({"op": "mail.send", "to": [rcpt],
                            "from": "noreply@example.org", "raw": raw})
                t.ok(r.get("ok"), "mail.send %s to %s" % (name, rcpt), r)
                sent += 1 if r.get("ok") else 0
        r = d.call({"op": "otp.issue", "to": "inbox@example.net"})
        otp = bool(r.get("ok"))
        t.ok(otp, "otp.issue to a Postfix-hosted mailbox",
             "%s\n%s" % (r, d.log_text()[-1500:]))
        want_pf = n_pf + sent // 2 + (1 if otp else 0)
        want_sink = n_sink + sent // 2
        try:
            pf.wait_for(want_pf, timeout=60)
            sink.wait_for(want_sink, timeout=60)
        except RuntimeError as e:
            t.diag(str(e)[-1500:])
            t.diag(d.log_text()[-2000:])
        got = pf.messages()[n_pf:]
        dumped = sink.messages()[n_sink:]
        t.is_(len(got), want_pf - n_pf, "otpmaild -> Postfix -> Maildir: all arrived")
        t.is_(len(dumped), want_sink - n_sink,
              "otpmaild -> Postfix -> smtp-sink: all arrived")
        for m in got:
            ok, out = verify(keys, m.data)
            t.ok(ok, "otpmaild-signed copy verifies after Postfix (Maildir)", out)
        for m in dumped:
            ok, out = verify(keys, strip_sink_dump(m.data))
            t.ok(ok, "otpmaild-signed copy verifies after Postfix relay (smtp-sink)", out)
        if otp:
            # the one: an OTP mail to the address, whose code verifies
            mails = [email.message_from_bytes(m.data, policy=email.policy.default)
                     for m in got if b"Auto-Submitted: auto-generated" in m.data]
            codes = []
            for msg in mails:
                for part in msg.walk():
                    if part.get_content_type() == "text/plain":
                        codes += re.findall(r"^\s{4}(\d{6})\s*$", part.get_content(), re.M)
            t.ok(len(mails) == 1 and len(codes) == 1 and
                 "inbox@example.net" in str(mails[0]["To"]),
                 "the OTP mail arrived, one, with one code", [m.as_string()[:600] for m in mails])
            v = d.call({"op": "otp.verify", "to": "inbox@example.net",
                        "code": codes[0] if codes else "000000"})
            t.ok(v.get("ok"), "the code in the mail that arrived verifies", v)
        # a permanent failure: the DSN is DKIM-signed like any mail
        n_pf = len(pf.messages())
        r = d.call({"op": "mail.send", "to": ["nobody@reject.example.com"],
                    "from": "app@example.net", "subject": "will bounce",
                    "text": "this recipient is refused\n"})
        t.ok(r.get("ok"), "mail.send to a recipient the peer refuses", r)
        try:
            pf.wait_for(n_pf + 1, timeout=60)
        except RuntimeError as e:
            t.diag(str(e)[-1000:])
            t.diag(d.log_text()[-2000:])
        dsns = [m.data for m in pf.messages()[n_pf:] if b"multipart/report" in m.data]
        t.is_(len(dsns), 1, "the DSN reached the sender's mailbox")
        if dsns:
            t.ok(b"DKIM-Signature:" in dsns[0] and
                 re.search(rb"^From: .*MAILER-DAEMON@mail\.example\.org", dsns[0], re.M),
                 "the DSN from MAILER-DAEMON@mail.example.org carries DKIM signatures",
                 dsns[0][:600])
            ok, out = verify(keys, dsns[0])
            t.ok(ok, "the DSN's signatures verify (d=example.org) after Postfix", out)


def bad_key_tests(t, keys, tmp):
    world = os.path.join(tmp, "world.key")
    with open(keys.rsa, "rb") as f, open(world, "wb") as g:
        g.write(f.read())
    os.chmod(world, 0o644)
    garbage = os.path.join(tmp, "garbage.key")
    with open(garbage, "w") as g:
        g.write("this is no key\n")
    os.chmod(garbage, 0o600)
    cases = [
        ("mode 0644", "dkim_key = example.org s rsa-sha256 %s\n" % world, world),
        ("garbage", "dkim_key = example.org s rsa-sha256 %s\n" % garbage, garbage),
        ("RSA key declared ed25519",
         "dkim_key = example.org s ed25519-sha256 %s\n" % keys.rsa, keys.rsa),
        ("missing", "dkim_key = example.org s rsa-sha256 %s/none.key\n" % tmp,
         "%s/none.key" % tmp),
    ]
    for name, line, path in cases:
        d = Daemon(conf_extra="sandbox = yes\n" + line, start=False)
        try:
            d.start(timeout=10)
            started = True
        except RuntimeError:
            started = False
        log = d.log_text()
        d.stop()
        d.cleanup()
        t.ok(not started and path in log and "PRIVATE" not in log,
             "bad key (%s) stops start-up naming the file" % name, log[-1500:])


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_dkim", "needs root (Postfix, smtp-sink)")
        t.done()
    if not os.access(DKIMSIGN, os.X_OK):
        t.ok(False, "tests/dkim/dkimsign is built (make check builds it)")
        t.done()
    if not os.access(os.path.join(TOP_BUILDDIR, "otpmaild"), os.X_OK):
        t.ok(False, "otpmaild is built")
        t.done()
    tmp = tempfile.mkdtemp(prefix="otpm-dkim-")
    os.chmod(tmp, 0o755)
    keys = Keys(tmp)
    t.ok(keys.rsa_txt.startswith("v=DKIM1; k=rsa; p=") and
         keys.ed_txt.startswith("v=DKIM1; k=ed25519; p="), "keys made by dkim_keygen")
    # the published Ed25519 record is deliberately another key (dkim.check mismatch)
    other = os.path.join(tmp, "other.key")
    other_txt = run([DKIMSIGN, "keygen", "ed25519", other], text=True).stdout.strip()
    zone = Zone("example.org", [txt_zone_line("rsa1._domainkey", keys.rsa_txt),
                                txt_zone_line("ed1._domainkey", other_txt)])
    sink = SmtpSink(addr=SINK_ADDR, port=25)
    reject = SmtpSink(addr=REJECT_ADDR, port=25, dump=False, extra_args=["-f", "rcpt"])
    pf = PostfixPeer(addr=PF_ADDR, port=25, domains=("example.net",), tls=False,
                     extra_main={"relayhost": "[%s]:25" % SINK_ADDR,
                                 "default_transport": "smtp",
                                 "relay_transport": "smtp"})
    dns = DnsServer([zone], addr=DNS_ADDR, port=5353)
    try:
        sink.start()
        reject.start()
        pf.start()
        dns.start()
        library_through_postfix(t, keys, pf, sink)
        daemon_tests(t, keys, pf, dns)
        daemon_delivery_tests(t, keys, pf, sink)
        bad_key_tests(t, keys, tmp)
    finally:
        for p in (pf, sink, reject, dns):
            try:
                p.stop()
            except Exception as e:  # cleanup must go on
                t.diag("stop %r: %s" % (p, e))
        subprocess.run(["rm", "-rf", tmp])
    t.done()


if __name__ == "__main__":
    main()
