#!/usr/bin/env python3
"""otp_demo.py - issue a one-time code, read it from the sandbox, verify it.

    python3 otp_demo.py [socket] [address]
Standard library only; the daemon must run in sandbox mode (the default).
Run it as often as you like: it reads the mail of the code it just asked
for.  The client library (clients/python) does the socket part for you:
    import otpmail; otpmail.Client().otp_issue(ADDR, purpose="login")
"""
import json, re, socket, sys, time

SOCK = sys.argv[1] if len(sys.argv) > 1 else "otpmail-state/control.sock"
ADDR = sys.argv[2] if len(sys.argv) > 2 else "alice@example.org"


def otpmail(req):
    """One request, one answer, over the control socket (JSON Lines)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(SOCK)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("otpmaild closed the connection")
            buf += chunk
    return json.loads(buf)


issued = otpmail({"op": "otp.issue", "to": ADDR, "purpose": "login"})
if not issued["ok"] and issued["error"] == "rate_limited":
    # a second run within the resend cooldown: wait as the daemon says
    print("rate limited (%s), retrying in %ds" % (issued.get("limit"), issued["retry_after"]))
    time.sleep(issued["retry_after"])
    issued = otpmail({"op": "otp.issue", "to": ADDR, "purpose": "login"})
if not issued["ok"]:
    sys.exit("issue refused: %s (%s)" % (issued["error"], issued["detail"]))
print("code mailed, queue id %s, valid %ds" % (issued["id"], issued["ttl"]))

# The sandbox Maildir stands in for the person's inbox.  The mail to read is
# the one just queued: its file name holds the queue id (an earlier run's
# mail to the same address carries a code that is used up).
code = None
for _ in range(100):
    msgs = otpmail({"op": "sandbox.list", "limit": 1000}).get("messages", [])
    mine = [m for m in msgs if issued["id"] in m["file"]]
    if mine:
        text = otpmail({"op": "sandbox.show", "file": mine[0]["file"]})["text"]
        m = re.search(r"^ {4}([0-9A-Z]{4,12})\r?$", text, re.M)
        code = m and m.group(1)
        break
    time.sleep(0.1)
if not code:
    sys.exit("no mail arrived")
print("code read from the mail:", code)

ok = otpmail({"op": "otp.verify", "to": ADDR, "purpose": "login", "code": code})
print("verify:", "ok" if ok["ok"] else ok["error"])
again = otpmail({"op": "otp.verify", "to": ADDR, "purpose": "login", "code": code})
print("verify again:", "ok" if again["ok"] else again["error"])
sys.exit(0 if ok["ok"] and not again["ok"] else 1)
