#!/usr/bin/env node
// test/run.js SOCKET HANG_SOCKET - the Node client against a real otpmaild.
// Prints TAP lines; tests/integration/test_clients.py runs it, restarts the
// daemon when it reads "# restart" and answers on stdin.
"use strict";
const otpmail = require("..");
const readline = require("readline");
const [sock, hang] = process.argv.slice(2);
let n = 0, failed = 0;
function ok(cond, name, diag) {
  n++;
  console.log(`${cond ? "" : "not "}ok ${n} - ${name}`);
  if (!cond) { failed++; if (diag !== undefined) console.log("#   " + JSON.stringify(diag)); }
}
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

(async () => {
  const c = new otpmail.Client({ path: sock, timeout: 5000 });
  for (let i = 0; i < 20; i++) await c.ping();
  ok(c.connections === 1, "20 calls reuse one connection", c.connections);

  const reqs = [];
  for (let i = 0; i < 50; i++) reqs.push({ op: "ping", req_id: i });
  const rs = await c.pipeline(reqs);
  ok(rs.length === 50 && rs.every((r, i) => r.ok && r.req_id === i),
    "50 pipelined requests answered in order");
  ok(c.connections === 1, "still one connection");

  const to = `node-${process.pid}@example.org`;
  const issued = await c.otpIssue(to, { purpose: "login" });
  ok(issued.ok && issued.id, "otpIssue", issued);
  try {
    await c.otpIssue(to, { purpose: "login" });
    ok(false, "a second issue at once is rate limited");
  } catch (e) {
    ok(e instanceof otpmail.RateLimited && e instanceof otpmail.OtpmailError &&
      e.error === "rate_limited" && e.retryAfter > 0 && typeof e.limit === "string",
      "RateLimited carries error, retryAfter and limit", e.reply);
  }
  try {
    await c.otpVerify(to, "000000", { purpose: "nope" });
    ok(false, "verify for another purpose fails");
  } catch (e) {
    ok(e instanceof otpmail.NotFound || e instanceof otpmail.InvalidCode,
      "a wrong verify rejects with its typed error", e.reply);
  }
  try {
    await c.call({ op: "otp.issue" });
    ok(false, "missing to");
  } catch (e) {
    ok(e instanceof otpmail.BadRequest && e.field === "to", "BadRequest names the field",
      e.reply);
  }
  const r = await c.request({ op: "otp.issue" });
  ok(r.ok === false && r.error === "bad_request", "request() resolves refusals as answers");

  // the code from the sandbox mail whose name holds the issued id
  let code = null;
  for (let i = 0; i < 100 && !code; i++) {
    const list = await c.call({ op: "sandbox.list", limit: 1000 });
    const mine = list.messages.find((m) => m.file.includes(issued.id));
    if (mine) {
      const text = (await c.call({ op: "sandbox.show", file: mine.file })).text;
      const m = /^ {4}([0-9A-Z]{4,12})\r?$/m.exec(text);
      code = m && m[1];
    } else await new Promise((res) => setTimeout(res, 100));
  }
  const v = await c.otpVerify(to, code, { purpose: "login" });
  ok(v.ok, "the mailed code verifies", v);

  console.log("# restart");
  await lines.next();
  const p = await c.ping();
  ok(p.ok && c.connections === 2, "after a daemon restart the next call reconnects",
    c.connections);
  c.close();

  const h = new otpmail.Client({ path: hang, timeout: 300 });
  try {
    await h.ping();
    ok(false, "a silent daemon times out");
  } catch (e) {
    ok(e instanceof otpmail.Timeout && e.error === "timeout", "a silent peer: Timeout",
      e.message);
  }
  const u = new otpmail.Client({ path: "/nonexistent/otpmail.sock" });
  try {
    await u.ping();
    ok(false, "no daemon");
  } catch (e) {
    ok(e instanceof otpmail.Unreachable, "no socket: Unreachable", e.message);
  }
  console.log(`1..${n}`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.log(`not ok - crashed: ${e.stack}`); process.exit(1); });
