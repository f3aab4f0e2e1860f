#!/usr/bin/env python3
"""test_address_policy.py - one person, one budget; no mail to the inside;
nothing spoofs through a field; the OTP mail says who asked, when, from where.

Starts: otpmaild (harness.Daemon) in sandbox mode for the address, header
and mail checks; then NSD on 127.0.11.53:5353 (peers.DnsServer) serving
example.net, smtp-sinks on 127.0.11.2:2525 and 127.0.11.3:2525, and an
otpmaild delivering through that DNS (sandbox = no, the default
mx_allow_internal = no, a route for routed.example.net).

1. Canonical addresses: "alice"@, ALICE@EXAMPLE.ORG and alice+tag@ share
   alice@'s hourly budget and resend cooldown (per purpose); "alice"@ and
   alice@ are one mailbox (one code); a code mailed to alice+1@ does not verify for alice@;
   IDN domains (U-label, upper case, A-label) are one domain; the mail goes
   to the canonical address.
2. Address literals and IP domains (user@[127.0.0.1], user@[IPv6:::1],
   user@[169.254.169.254], user@127.0.0.1) are refused by otp.issue and
   mail.send (to and from) with bad_address; allow_address_literals lets
   a public literal through.  "q p"@example.org gets bad_address with a
   detail that names the quotes.
3. The app name: markup or a URL in "app" is refused (bad_request, field
   app); a plain name is used; with otp_app_from_request = no any "app" is
   refused and the configured otp_app_name is used.  mail.send refuses
   Sender, Authentication-Results, Received, DKIM-Signature, ARC-Seal,
   Return-Path headers; a raw message has them removed (listed in the
   answer, absent from the mail).
4. The default OTP mail names the site and the time, shows client_info when
   given (plain text; a domain or URL in it is refused), has the "did not
   ask" line, and holds no URL at all.
5. Delivery: an MX (or implicit MX) at 127.0.0.x or 169.254.169.254 fails
   with 5.4.4 and a reason naming the internal address; nothing reaches
   the sink there; otp.issue with otp_check_deliverability refuses it with
   bad_address; a configured route to 127.0.11.3 still delivers.
"""

import email
import email.policy
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, Tap, wait_for  # noqa: E402
from peers import DnsServer, SmtpSink, Zone  # noqa: E402

t = Tap()
PORT = 2525


def mail_for(d, qid, timeout=15):
    def find():
        for p in d.sandbox_messages():
            if qid in os.path.basename(p):
                return p
        return None
    p = wait_for(find, timeout)
    if not p:
        return None
    with open(p, "rb") as f:
        return email.message_from_bytes(f.read(), policy=email.policy.default)


def parts(msg):
    text = html = None
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_content()
        elif part.get_content_type() == "text/html":
            html = part.get_content()
    return text or "", html or ""


def code_of(msg):
    m = re.search(r"^\s{4}(\S+)\s*$", parts(msg)[0], re.M)
    return m.group(1) if m else None


def issue(d, to, **kw):
    req = {"op": "otp.issue", "to": to}
    req.update(kw)
    return d.call(req)


def send(d, to, frm="app@sender.example.com", **kw):
    req = {"op": "mail.send", "from": frm, "to": [to], "subject": "s",
           "text": "hello\n"}
    req.update(kw)
    return d.call(req)


def refused(r, code, field=None):
    return (not r.get("ok") and r.get("error") == code and
            (field is None or r.get("field") == field))


def canonical_tests():
    conf = ("otp_resend_cooldown = 30s\notp_max_per_address_hour = 3\n"
            "otp_app_name = Example Shop\n")
    with Daemon(conf_extra=conf) as d:
        r = issue(d, "alice@example.org")
        t.ok(r.get("ok"), "alice@example.org: code issued", r)
        first = mail_for(d, r.get("id", "?"))
        r = issue(d, '"alice"@example.org')
        t.ok(refused(r, "rate_limited") and r.get("limit") == "resend_cooldown",
             '"alice"@ is alice@: the same cooldown', r)
        r = issue(d, "alice@EXAMPLE.ORG")
        t.ok(refused(r, "rate_limited") and r.get("limit") == "resend_cooldown",
             "alice@EXAMPLE.ORG is alice@: the same cooldown", r)
        r = issue(d, "alice+1@example.org")
        t.ok(refused(r, "rate_limited") and r.get("limit") == "resend_cooldown",
             "alice+1@ waits out alice@'s cooldown (one person, one cooldown)", r)
        r = issue(d, "Alice+2@Example.Org", purpose="reset")
        t.ok(r.get("ok"), "another purpose has its own cooldown (second of "
             "alice's hour)", r)
        # the owner's verify ends the cooldown: her next code need not wait
        code0 = code_of(first) if first else None
        r = d.call({"op": "otp.verify", "to": '"alice"@example.org', "code": code0 or "0"})
        t.ok(r.get("ok"), "alice@'s code verifies as \"alice\"@ (one mailbox)", r)
        r1 = issue(d, "alice+1@example.org")
        t.ok(r1.get("ok"), "alice+1@ (its own mailbox) gets its own code after "
             "alice's verify: the third of alice's hour", r1)
        code1 = code_of(mail_for(d, r1.get("id", "?")) or email.message.EmailMessage())
        r = d.call({"op": "otp.verify", "to": "alice@example.org", "code": code1 or "0"})
        t.ok(not r.get("ok"), "a code mailed to alice+1@ does not verify for alice@ "
             "(another person may own alice+1)", r)
        r = d.call({"op": "otp.verify", "to": "alice+1@example.org", "code": code1 or "0"})
        t.ok(r.get("ok"), "it verifies for alice+1@", r)
        r = issue(d, "alice+3@example.org")
        t.ok(refused(r, "rate_limited") and r.get("limit") == "address_hourly",
             "alice+3@: alice's hourly budget of 3 is spent (one person, one "
             "budget)", r)
        r = issue(d, "bob@example.org")
        t.ok(r.get("ok"), "bob@ has his own budget", r)

        m = mail_for(d, r1.get("id", "?"))
        t.ok(m is not None and m["To"] == "alice+1@example.org",
             "the mail goes to the canonical address", m and m["To"])

        # IDN: U-label, upper-case U-label and A-label are one domain
        r = issue(d, "bob@b\u00fccher.example")
        t.ok(r.get("ok"), "U-label domain accepted", r)
        m = mail_for(d, r.get("id", "?"))
        t.ok(m is not None and m["To"] == "bob@xn--bcher-kva.example",
             "sent to the A-label form", m and m["To"])
        for to in ("bob@B\u00dcCHER.example", "bob@xn--bcher-kva.example"):
            r = issue(d, to)
            t.ok(refused(r, "rate_limited") and r.get("limit") == "resend_cooldown",
                 "%s is the same domain: the same cooldown" % to, r)
        r = issue(d, "bob@xn--zz-zzzz.example")
        t.ok(refused(r, "bad_request", "to"), "a malformed A-label: bad_request", r)


def literal_tests():
    inside = ("user@[127.0.0.1]", "user@[IPv6:::1]", "user@[169.254.169.254]",
              "user@127.0.0.1")
    with Daemon() as d:
        for to in inside:
            r = issue(d, to)
            t.ok(refused(r, "bad_address", "to"), "otp.issue %s: bad_address" % to, r)
            r = send(d, to)
            t.ok(refused(r, "bad_address", "to"), "mail.send to %s: bad_address" % to, r)
        r = send(d, "bob@example.org", frm="app@[127.0.0.1]")
        t.ok(refused(r, "bad_address", "from"), "mail.send from a literal: bad_address", r)
        r = issue(d, '"q p"@example.org')
        t.ok(refused(r, "bad_address", "to") and "quotes" in r.get("detail", ""),
             '"q p"@example.org: bad_address naming the quotes', r)
        r = send(d, '"q p"@example.org')
        t.ok(refused(r, "bad_address", "to") and "queue" not in r.get("detail", ""),
             'mail.send to "q p"@: bad_address, not a queue error', r)
        r = send(d, '"bob"@example.org')
        t.ok(r.get("ok"), '"bob"@example.org (needless quotes) is accepted', r)
        n = len(d.sandbox_messages())
        t.ok(n <= 1, "nothing for the refused addresses reached the sandbox", n)
    with Daemon(conf_extra="allow_address_literals = yes\n") as d:
        r = issue(d, "user@[192.0.2.1]")
        t.ok(r.get("ok"), "allow_address_literals: a public literal accepted", r)
        r = issue(d, "user@127.0.0.1")
        t.ok(refused(r, "bad_address"), "allow_address_literals: user@127.0.0.1 "
             "(no brackets) is still not a domain", r)


def field_tests():
    evil = "<a href='http://evil.test'>click</a> Evil Bank"
    with Daemon(conf_extra="otp_app_name = Example Shop\n") as d:
        r = issue(d, "carol@example.org", app=evil)
        t.ok(refused(r, "bad_request", "app"), "markup and a URL in app: refused", r)
        for bad in ("evil.test", "Evil\u3002test Bank", "Bank\u202e"):
            r = issue(d, "carol@example.org", app=bad)
            t.ok(refused(r, "bad_request", "app"), "app %r refused" % bad, r)
        r = issue(d, "carol@example.org", app="Evil Bank")
        t.ok(r.get("ok"), "a plain app name accepted", r)
        m = mail_for(d, r.get("id", "?"))
        t.ok(m is not None and "Evil Bank" in m["Subject"], "plain name in the subject",
             m and m["Subject"])

        hdrs = ("Sender", "Authentication-Results", "Received", "DKIM-Signature",
                "ARC-Seal", "Return-Path", "Resent-From")
        for h in hdrs:
            r = send(d, "bob@example.org", headers={h: "x"})
            t.ok(refused(r, "bad_request", "headers"), "mail.send header %s refused" % h, r)
        raw = ("From: app@sender.example.com\r\nTo: bob@example.org\r\n"
               "Subject: raw\r\nSender: ceo@bank.example\r\n"
               "Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n"
               "Received: from trusted.example by mx.example.org\r\n"
               "DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=x; b=AAAA\r\n"
               "ARC-Seal: i=1; cv=none\r\n\tb=folded\r\nX-Keep: yes\r\n\r\nbody\r\n")
        r = d.call({"op": "mail.send", "from": "app@sender.example.com",
                    "to": ["bob@example.org"], "raw": raw})
        t.ok(r.get("ok") and sorted(r.get("removed_headers", [])) ==
             sorted(["Sender", "Authentication-Results", "Received", "DKIM-Signature",
                     "ARC-Seal"]), "raw: trace headers removed and listed", r)
        m = mail_for(d, r.get("id", "?"))
        left = [h for h in ("Sender", "Authentication-Results", "Received",
                            "ARC-Seal") if m is not None and m[h] is not None]
        t.ok(m is not None and not left and m["X-Keep"] == "yes" and
             "b=folded" not in m.as_string() and "bank.example" not in m.as_string(),
             "raw: the mail has none of them, other headers kept", left)

        # the default mail: site, time, client, the "did not ask" line, no URL
        before = time.gmtime()
        r = issue(d, "dave@example.org", client_info="Firefox on Linux (203.0.113.7)")
        t.ok(r.get("ok"), "client_info accepted", r)
        m = mail_for(d, r.get("id", "?"))
        text, html = parts(m) if m else ("", "")
        stamp = time.strftime("%Y-%m-%d %H:", before)
        t.ok("Example Shop was asked for a code (login)" in text and stamp in text and
             "UTC" in text, "the mail says which site asked and when", text[:300])
        t.ok("from Firefox on Linux (203.0.113.7)" in text and
             "Firefox on Linux (203.0.113.7)" in html, "the mail says from which client")
        t.ok("did not ask for this code" in text and "did not ask for this code" in html,
             "the \"you did not ask for this\" line")
        whole = m.as_string() if m else ""
        body = whole.split("\n\n", 1)[-1] if whole else ""
        urls = re.findall(r"(?i)https?:|ftp:|mailto:|www\.|href|<a[\s>]|"
                          r"\b[a-z0-9-]+\.(?:com|org|net|test|example)\b", text + html)
        t.ok(m is not None and not urls and "://" not in body,
             "the OTP mail holds no URL or link at all", urls)
        r = issue(d, "erin@example.org")
        m = mail_for(d, r.get("id", "?"))
        t.ok(m is not None and ", from" not in parts(m)[0],
             "no client line without client_info")
        for bad in ("Chrome, see evil.test", "https://203.0.113.7/x", "a@b.example",
                    "x" * 101):
            r = issue(d, "frank@example.org", client_info=bad)
            t.ok(refused(r, "bad_request", "client_info"),
                 "client_info %r refused" % bad[:30], r)
    with Daemon(conf_extra="otp_app_name = Example Shop\notp_app_from_request = no\n") as d:
        r = issue(d, "carol@example.org", app="Evil Bank")
        t.ok(refused(r, "bad_request", "app"), "otp_app_from_request = no: app refused", r)
        r = issue(d, "carol@example.org")
        m = mail_for(d, r.get("id", "?"))
        t.ok(m is not None and "Example Shop" in m["Subject"],
             "the configured name is used", m and m["Subject"])


def wait_state(d, qid, states, timeout=30):
    deadline = time.time() + timeout
    r = None
    while time.time() < deadline:
        r = d.call({"op": "message.status", "id": qid})
        if r.get("ok") and r.get("state") in states:
            return r
        time.sleep(0.2)
    return r


def delivery_tests():
    zone = Zone("example.net", [
        "inside MX 10 mx.inside",
        "mx.inside A 127.0.11.2",
        "meta MX 10 mx.meta",
        "mx.meta A 169.254.169.254",
        "implicit A 127.0.11.2",
        "v6 MX 10 mx.v6",
        "mx.v6 AAAA ::1",
        "routed MX 10 mx.inside",
    ])
    with DnsServer([zone], "127.0.11.53", 5353) as dns, \
            SmtpSink("127.0.11.2", PORT) as inner, SmtpSink("127.0.11.3", PORT) as routed:
        conf = ("sandbox = no\nhostname = otpmail.example.com\ntls_policy = none\n"
                "resolver = %s\nsmtp_port = %d\nsmtp_connect_timeout = 3s\n"
                "route = routed.example.net [127.0.11.3]:%d\n" % (dns.resolver, PORT, PORT))
        with Daemon(conf_extra=conf) as d:
            for to, addr in (("u@inside.example.net", "127.0.11.2"),
                             ("u@meta.example.net", "169.254.169.254"),
                             ("u@implicit.example.net", "127.0.11.2"),
                             ("u@v6.example.net", "::1")):
                r = send(d, to)
                st = wait_state(d, r.get("id", "?"), ("failed", "bounced"), 20)
                err = str(st) if st else ""
                t.ok(st and st.get("state") in ("failed", "bounced") and "5.4.4" in err
                     and "internal address" in err and addr in err,
                     "%s (MX at %s): fails with 5.4.4 naming it" % (to, addr), st)
            r = send(d, "u@routed.example.net")
            try:
                got = routed.wait_for(1, 20)
                t.ok(got[0].rcpt == "u@routed.example.net",
                     "a configured route to 127.0.11.3 still delivers")
            except RuntimeError as e:
                t.ok(False, "a configured route to 127.0.11.3 still delivers", e)
            t.ok(not inner.messages(), "nothing reached the internal MX host")
            lines = [l for l in d.log_text().splitlines()
                     if "event=delivery_internal_refused" in l]
            t.ok(len(lines) >= 4, "each refusal logged", len(lines))
        with Daemon(conf_extra=conf + "otp_check_deliverability = yes\n") as d:
            r = issue(d, "u@inside.example.net")
            t.ok(refused(r, "bad_address") and "internal" in r.get("detail", ""),
                 "otp.issue to a domain whose MX is internal: bad_address", r)
            r = issue(d, "u@routed.example.net")
            t.ok(r.get("ok"), "otp.issue to the routed domain accepted", r)
        with Daemon(conf_extra=conf + "allow_address_literals = yes\n") as d:
            r = send(d, "u@[127.0.11.2]")
            st = wait_state(d, r.get("id", "?"), ("failed", "bounced"), 20)
            t.ok(st and "5.4.4" in str(st),
                 "an allowed literal at an internal address still does not deliver", st)


canonical_tests()
literal_tests()
field_tests()
delivery_tests()
t.done()
