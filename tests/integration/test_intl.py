#!/usr/bin/python3
"""test_intl.py - internationalised display names and subjects survive a
real SMTP hop with their DKIM signatures.

Starts: a private Postfix (127.0.4.51:25) delivering example.net to a
Maildir; otpmaild delivering to it (route) with an RSA and an Ed25519 key
for example.org.

- mail.send with UTF-8 display names in From ("Äpp Sender <app@...>", which
  was refused before), To and Reply-To, and a UTF-8 subject: accepted; at
  Postfix the headers decode (Python's email package) to exactly what was
  sent, the addresses untouched (never encoded), and both signatures verify
  with python3-dkim;
- ASCII names with specials are quoted; a name with '<' or an unbalanced
  address is refused with bad_request naming the field.
"""
import email
import email.policy
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# (test_dkim re-runs this script under Debian's python3 if dkim is missing)
from test_dkim import Keys, verify, write_conf_keys  # noqa: E402
from harness import Daemon, Tap  # noqa: E402
from peers import PostfixPeer, _mkdtemp  # noqa: E402

PF_ADDR = "127.0.4.51"
FROM = "Äpp Sender <app@example.org>"
TO = ["Bøb Ünïcödé 日本 <bob@example.net>", "plain@example.net",
      '"Dr. Carol, PhD" <carol@example.net>']
REPLY_TO = '"Support, Inc." <help@example.org>, Zoë 🔑 <zoe@example.org>'
SUBJECT = "Ваш код — ログイン 🔑 (long enough to need more than one encoded word)"


def main():
    t = Tap()
    if os.geteuid() != 0:
        t.skip("test_intl", "needs root")
        t.done()
    kd = _mkdtemp("otpm-intl-keys-", 0o700)
    keys = Keys(kd)
    conf = ("sandbox = no\n" + write_conf_keys(keys) +
            "route = example.net [%s]:25\n"
            "default_retry_min = 60s\n" % PF_ADDR)
    with PostfixPeer(PF_ADDR, 25, domains=["example.net"],
                     hostname="mx.example.net") as pf, Daemon(conf_extra=conf) as d:
        r = d.call({"op": "mail.send", "from": FROM, "to": TO, "subject": SUBJECT,
                    "headers": {"Reply-To": REPLY_TO},
                    "text": "Grüße, 你好 — code 493817\n"})
        t.ok(r.get("ok"), "mail.send with UTF-8 display names and subject accepted", r)
        try:
            msgs = pf.wait_for(3, 30)
        except RuntimeError as e:
            t.ok(False, "delivered through Postfix", "%s\n%s" % (e, d.log_text()[-3000:]))
            t.done()
        data = msgs[0].data
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        t.ok(all(b < 0x80 for b in head), "header section is 7-bit (RFC 2047 words)",
             head.decode(errors="replace"))
        ok, out = verify(keys, data)
        t.ok(ok, "RSA and Ed25519 signatures verify after the Postfix hop", out)
        m = email.message_from_bytes(data, policy=email.policy.default)
        fr = m["From"].addresses
        t.ok(len(fr) == 1 and fr[0].display_name == "Äpp Sender" and
             fr[0].addr_spec == "app@example.org", "From decodes to the name and address",
             str(m["From"]))
        to = [(a.display_name, a.addr_spec) for a in m["To"].addresses]
        t.is_(to, [("Bøb Ünïcödé 日本", "bob@example.net"), ("", "plain@example.net"),
                   ("Dr. Carol, PhD", "carol@example.net")], "To round-trips")
        rt = [(a.display_name, a.addr_spec) for a in m["Reply-To"].addresses]
        t.is_(rt, [("Support, Inc.", "help@example.org"), ("Zoë 🔑", "zoe@example.org")],
              "Reply-To round-trips")
        t.is_(str(m["Subject"]), SUBJECT, "Subject round-trips")
        t.ok(b"<app@example.org>" in head and b"<bob@example.net>" in head,
             "addresses are written as they are, never encoded")
        rcpts = sorted(x.rcpt for x in msgs)
        t.is_(rcpts, ["bob@example.net", "carol@example.net", "plain@example.net"],
              "envelope recipients are the bare addresses")

        for bad, field in (({"from": "Eve <evil> <e@example.org>"}, "from"),
                           ({"from": "Eve <e@example.org"}, "from"),
                           ({"to": ["Bob <b@example.net> trailing"]}, "to"),
                           ({"headers": {"Reply-To": "Nobody"}}, "headers")):
            req = {"op": "mail.send", "from": "a@example.org", "to": ["b@example.net"],
                   "subject": "x", "text": "x\n"}
            req.update(bad)
            r = d.call(req)
            t.ok(r.get("error") == "bad_request" and r.get("field") == field,
                 "refused: %s" % list(bad.values())[0], r)
    shutil.rmtree(kd, ignore_errors=True)
    t.done()


if __name__ == "__main__":
    main()
