// otpmail - a client for otpmaild's control socket (JSON Lines over UNIX).
// No dependencies.  One kept connection, pipelined requests (answers come
// back in order), a typed error per error code, timeouts.
"use strict";
const fs = require("fs");
const net = require("net");

const MAX_LINE = 64 * 1024 * 1024;

class OtpmailError extends Error {
  constructor(reply) {
    super(`${reply.error || "error"}: ${reply.detail || ""}`);
    this.name = this.constructor.name;
    this.reply = reply;
    this.error = reply.error || "error";
    this.detail = reply.detail || "";
    this.retryAfter = reply.retry_after;
    this.limit = reply.limit;
    this.field = reply.field;
  }
}
const kinds = {};
for (const [name, code] of [["Unreachable", "unreachable"], ["Timeout", "timeout"],
  ["BadRequest", "bad_request"], ["BadAddress", "bad_address"], ["Forbidden", "forbidden"],
  ["RateLimited", "rate_limited"], ["InvalidCode", "invalid_code"], ["Expired", "expired"],
  ["Locked", "locked"], ["NotFound", "not_found"], ["Unavailable", "unavailable"],
  ["AlreadyFinished", "already_finished"]]) {
  kinds[code] = { [name]: class extends OtpmailError {} }[name];
  module.exports[name] = kinds[code];
}

function errorFor(reply) {
  return new (kinds[reply.error] || OtpmailError)(reply);
}

function defaultSocket() {
  if (process.env.OTPMAIL_SOCKET) return process.env.OTPMAIL_SOCKET;
  if (fs.existsSync("otpmail-state/control.sock")) return "otpmail-state/control.sock";
  return "/var/lib/otpmail/control.sock";
}

class Client {
  constructor(opts = {}) {
    this.path = opts.path || defaultSocket();
    this.timeout = opts.timeout || 10000;
    this.connections = 0;
    this._sock = null;
    this._pending = []; // {resolve, reject} per request in flight, in order
    this._buf = "";
    this._timer = null;
  }

  _open() {
    const s = net.createConnection(this.path);
    this.connections++;
    this._sock = s;
    this._buf = "";
    s.setEncoding("utf8");
    s.on("data", (d) => this._data(s, d));
    s.on("error", (e) => this._fail(s, new kinds.unreachable(
      { error: "unreachable", detail: `otpmaild at ${this.path}: ${e.message}` })));
    s.on("close", () => this._fail(s, new kinds.unreachable(
      { error: "unreachable", detail: "otpmaild closed the connection" })));
  }

  _data(s, d) {
    if (s !== this._sock) return;
    this._buf += d;
    if (this._buf.length > MAX_LINE) {
      this._fail(s, new OtpmailError({ error: "bad_answer", detail: "answer too long" }));
      return;
    }
    let i;
    while ((i = this._buf.indexOf("\n")) >= 0) {
      const line = this._buf.slice(0, i);
      this._buf = this._buf.slice(i + 1);
      const p = this._pending.shift();
      if (!p) continue;
      try { p.resolve(JSON.parse(line)); } catch (e) { p.reject(e); }
    }
    this._arm();
  }

  // Every request in flight fails; the next call opens a new connection.
  _fail(s, err) {
    if (s !== this._sock) return;
    this._sock = null;
    clearTimeout(this._timer);
    this._timer = null;
    s.destroy();
    const p = this._pending;
    this._pending = [];
    for (const x of p) x.reject(err);
  }

  // One timer: the oldest request in flight must be answered within timeout.
  _arm() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this._pending.length === 0) {
      if (this._sock) this._sock.unref();
      return;
    }
    if (this._sock) this._sock.ref();
    const s = this._sock;
    this._timer = setTimeout(() => this._fail(s, new kinds.timeout(
      { error: "timeout", detail: `no answer within ${this.timeout} ms` })), this.timeout);
  }

  /** Sends one request; resolves to the answer, ok or not. */
  request(req) {
    if (typeof req !== "object" || req === null || !req.op)
      return Promise.reject(new kinds.bad_request(
        { error: "bad_request", detail: "a request is an object with an \"op\"" }));
    if (!this._sock || this._sock.destroyed) this._open();
    const p = new Promise((resolve, reject) => this._pending.push({ resolve, reject }));
    this._sock.write(JSON.stringify(req) + "\n");
    if (this._pending.length === 1) this._arm();
    return p;
  }

  /** Sends one request; resolves to the answer, rejects on ok:false. */
  async call(req) {
    const r = await this.request(req);
    if (!r.ok) throw errorFor(r);
    return r;
  }

  /** Writes every request at once; resolves to the answers in order. */
  pipeline(reqs, { raiseErrors = false } = {}) {
    return Promise.all(reqs.map((r) => (raiseErrors ? this.call(r) : this.request(r))));
  }

  close() {
    if (this._sock) this._fail(this._sock, new kinds.unreachable(
      { error: "unreachable", detail: "client closed" }));
  }

  ping() { return this.call({ op: "ping" }); }
  otpIssue(to, opts = {}) { return this.call({ op: "otp.issue", to, purpose: "login", ...opts }); }
  otpVerify(to, code, opts = {}) {
    return this.call({ op: "otp.verify", to, code, purpose: "login", ...opts });
  }
  otpRevoke(to, opts = {}) { return this.call({ op: "otp.revoke", to, purpose: "login", ...opts }); }
  mailSend(msg) { return this.call({ op: "mail.send", ...msg }); }
  messageStatus(id) { return this.call({ op: "message.status", id }); }
}

module.exports.Client = Client;
module.exports.OtpmailError = OtpmailError;
module.exports.errorFor = errorFor;
module.exports.defaultSocket = defaultSocket;
