"""otpmail - a client for otpmaild's control socket (JSON Lines over UNIX).

    with otpmail.Client() as c:
        c.otp_issue("alice@example.org", purpose="login")
        c.otp_verify("alice@example.org", "493817", purpose="login")

Standard library only.  One connection, reused; pipelining; a typed
exception per error code; timeouts on connect and on every answer.
"""

import json
import os
import socket
import threading

__all__ = ["Client", "Error", "Unreachable", "Timeout", "BadRequest", "BadAddress",
           "Forbidden", "RateLimited", "InvalidCode", "Expired", "Locked", "NotFound",
           "Unavailable", "AlreadyFinished", "default_socket"]
__version__ = "0.1.0"

MAX_LINE = 64 * 1024 * 1024


class Error(Exception):
    """A refusal by the daemon (or trouble reaching it): the stable code in
    .error, the text in .detail, .retry_after (seconds) and .limit when a
    rate limit was hit, .field when a request field was at fault."""

    def __init__(self, reply):
        self.reply = dict(reply)
        self.error = reply.get("error", "error")
        self.detail = reply.get("detail", "")
        self.retry_after = reply.get("retry_after")
        self.limit = reply.get("limit")
        self.field = reply.get("field")
        super().__init__("%s: %s" % (self.error, self.detail))


class Unreachable(Error):
    """No daemon on the socket, or the connection broke."""


class Timeout(Error):
    """No answer within the timeout (the connection is closed)."""


class BadRequest(Error):
    pass


class BadAddress(Error):
    pass


class Forbidden(Error):
    pass


class RateLimited(Error):
    pass


class InvalidCode(Error):
    pass


class Expired(Error):
    pass


class Locked(Error):
    pass


class NotFound(Error):
    pass


class Unavailable(Error):
    pass


class AlreadyFinished(Error):
    pass


_BY_CODE = {"bad_request": BadRequest, "bad_address": BadAddress, "forbidden": Forbidden,
            "rate_limited": RateLimited, "invalid_code": InvalidCode, "expired": Expired,
            "locked": Locked, "not_found": NotFound, "unavailable": Unavailable,
            "already_finished": AlreadyFinished}


def error_for(reply):
    """The exception for a failed answer (Error for an unknown code)."""
    return _BY_CODE.get(reply.get("error"), Error)(reply)


def default_socket():
    """$OTPMAIL_SOCKET, ./otpmail-state/control.sock if it exists, else
    /var/lib/otpmail/control.sock (as otpmailctl looks)."""
    s = os.environ.get("OTPMAIL_SOCKET")
    if s:
        return s
    if os.path.exists("otpmail-state/control.sock"):
        return "otpmail-state/control.sock"
    return "/var/lib/otpmail/control.sock"


class Client:
    """A connection to otpmaild, opened on first use and kept."""

    def __init__(self, path=None, timeout=10.0):
        self.path = path or default_socket()
        self.timeout = timeout
        self.connections = 0        # how many times a socket was opened
        self._sock = None
        self._buf = b""
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self._lock:
            self._drop()

    def _drop(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = b""

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except socket.timeout:
            s.close()
            raise Timeout({"error": "timeout", "detail": "connecting to %s" % self.path})
        except OSError as e:
            s.close()
            raise Unreachable({"error": "unreachable",
                               "detail": "cannot reach otpmaild at %s: %s" % (self.path, e)})
        self._sock = s
        self._buf = b""
        self.connections += 1

    def _send(self, data):
        """Sends on the kept connection; a connection the daemon closed
        while idle (a restart, the idle timeout) is reopened once."""
        for attempt in (0, 1):
            if self._sock is None:
                self._connect()
            elif attempt == 0 and self._idle_closed():
                self._drop()
                self._connect()
            try:
                self._sock.sendall(data)
                return
            except socket.timeout:
                self._drop()
                raise Timeout({"error": "timeout", "detail": "sending to otpmaild"})
            except OSError as e:
                self._drop()
                if attempt == 1:
                    raise Unreachable({"error": "unreachable", "detail": str(e)})

    def _idle_closed(self):
        """True if the daemon hung up on the idle connection (EOF waiting)."""
        if self._buf:
            return False
        try:
            self._sock.setblocking(False)
            try:
                return self._sock.recv(1, socket.MSG_PEEK) == b""
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
        finally:
            self._sock.settimeout(self.timeout)

    def _recv(self):
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                self._drop()
                raise Timeout({"error": "timeout",
                               "detail": "no answer within %ss" % self.timeout})
            except OSError as e:
                self._drop()
                raise Unreachable({"error": "unreachable", "detail": str(e)})
            if not chunk:
                self._drop()
                raise Unreachable({"error": "unreachable",
                                   "detail": "otpmaild closed the connection"})
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                self._drop()
                raise Error({"error": "bad_answer", "detail": "answer too long"})
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    @staticmethod
    def _line(req):
        if not isinstance(req, dict) or "op" not in req:
            raise BadRequest({"error": "bad_request",
                              "detail": "a request is a dict with an \"op\""})
        return (json.dumps(req, separators=(",", ":")) + "\n").encode()

    def request(self, req):
        """Sends one request; returns the answer dict, ok or not."""
        return self.pipeline([req], raise_errors=False)[0]

    def call(self, req):
        """Sends one request; returns the answer, raises on ok:false."""
        r = self.request(req)
        if not r.get("ok"):
            raise error_for(r)
        return r

    def pipeline(self, reqs, raise_errors=False):
        """Sends every request, then reads the answers (in order).  Returns
        the answer dicts; with raise_errors the first refusal raises."""
        data = b"".join(self._line(r) for r in reqs)
        with self._lock:
            self._send(data)
            out = [self._recv() for _ in reqs]
        if raise_errors:
            for r in out:
                if not r.get("ok"):
                    raise error_for(r)
        return out

    # --- the operations an app uses --------------------------------------

    @staticmethod
    def _req(op, **fields):
        r = {"op": op}
        r.update({k: v for k, v in fields.items() if v is not None})
        return r

    def ping(self):
        return self.call({"op": "ping"})

    def otp_issue(self, to, purpose="login", context=None, **kw):
        return self.call(self._req("otp.issue", to=to, purpose=purpose, context=context, **kw))

    def otp_verify(self, to, code, purpose="login", context=None, **kw):
        return self.call(self._req("otp.verify", to=to, code=code, purpose=purpose,
                                   context=context, **kw))

    def otp_revoke(self, to, purpose="login", **kw):
        return self.call(self._req("otp.revoke", to=to, purpose=purpose, **kw))

    def mail_send(self, sender, to, subject=None, text=None, html=None, raw=None, **kw):
        return self.call(self._req("mail.send", **{"from": sender}, to=to if isinstance(
            to, list) else [to], subject=subject, text=text, html=html, raw=raw, **kw))

    def message_status(self, qid):
        return self.call({"op": "message.status", "id": qid})
