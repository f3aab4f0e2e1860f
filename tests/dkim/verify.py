#!/usr/bin/python3
# verify.py - independent DKIM check with python3-dkim, no DNS: the TXT
# records come from the command line.
#   verify.py [-r NAME=VALUE]... [-n EXPECTED_SIGNATURES] MESSAGE_FILE
# Prints one line per DKIM-Signature ("sig N d=... s=... a=... pass|fail")
# and exits 0 if every signature verifies (and their number is as expected),
# 1 if one fails, 2 on a usage or input error.
import re
import sys

try:
    import dkim
except ImportError:
    print("verify.py: python3-dkim is not installed", file=sys.stderr)
    sys.exit(2)


def main(argv):
    records = {}
    expect = None
    args = list(argv)
    path = None
    while args:
        a = args.pop(0)
        if a == "-r" and args:
            name, _, value = args.pop(0).partition("=")
            records[name.lower().rstrip(".")] = value.encode()
        elif a == "-n" and args:
            expect = int(args.pop(0))
        elif path is None:
            path = a
        else:
            print("usage: verify.py [-r NAME=VALUE]... [-n N] FILE", file=sys.stderr)
            return 2
    if path is None:
        print("usage: verify.py [-r NAME=VALUE]... [-n N] FILE", file=sys.stderr)
        return 2
    with open(path, "rb") as f:
        msg = f.read()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.lower().rstrip("."))

    head = msg.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    nsig = len(re.findall(rb"(?im)^dkim-signature\s*:", head))
    if expect is not None and nsig != expect:
        print("expected %d signatures, found %d" % (expect, nsig))
        return 1
    if nsig == 0:
        print("no DKIM-Signature")
        return 1
    d = dkim.DKIM(msg, minkey=1024)
    allok = True
    for i in range(nsig):
        try:
            res = d.verify(idx=i, dnsfunc=dnsfunc)
        except Exception as e:  # a verifier error is a failure, with its reason
            print("sig %d error %s" % (i, e))
            res = False
        sig = dict(d.signature_fields) if getattr(d, "signature_fields", None) else {}
        desc = " ".join("%s=%s" % (k, sig.get(k.encode(), b"?").decode(errors="replace"))
                        for k in ("d", "s", "a"))
        print("sig %d %s %s" % (i, desc, "pass" if res else "fail"))
        allok = allok and bool(res)
    return 0 if allok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
