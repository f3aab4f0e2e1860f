#!/usr/bin/env node
// otp_demo.js - issue a one-time code, read it from the sandbox, verify it.
//     node otp_demo.js [socket] [address]
// No dependencies; the daemon must run in sandbox mode (the default).
// Run it as often as you like: it reads the mail of the code it just asked
// for.  The client library (clients/node) does the socket part for you:
//     new (require("otpmail").Client)().otpIssue(ADDR, { purpose: "login" })
"use strict";
const net = require("net");
const SOCK = process.argv[2] || "otpmail-state/control.sock";
const ADDR = process.argv[3] || "alice@example.org";

// One request, one answer, over the control socket (JSON Lines).
function otpmail(req) {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(SOCK, () => s.write(JSON.stringify(req) + "\n"));
    let buf = "";
    s.setEncoding("utf8");
    s.on("data", (d) => {
      buf += d;
      const i = buf.indexOf("\n");
      if (i >= 0) { s.end(); resolve(JSON.parse(buf.slice(0, i))); }
    });
    s.on("error", reject);
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  let issued = await otpmail({ op: "otp.issue", to: ADDR, purpose: "login" });
  if (!issued.ok && issued.error === "rate_limited") {
    // a second run within the resend cooldown: wait as the daemon says
    console.log(`rate limited (${issued.limit}), retrying in ${issued.retry_after}s`);
    await sleep(issued.retry_after * 1000);
    issued = await otpmail({ op: "otp.issue", to: ADDR, purpose: "login" });
  }
  if (!issued.ok) throw new Error(`issue refused: ${issued.error} (${issued.detail})`);
  console.log(`code mailed, queue id ${issued.id}, valid ${issued.ttl}s`);

  // The sandbox Maildir stands in for the person's inbox.  The mail to read
  // is the one just queued: its file name holds the queue id (an earlier
  // run's mail to the same address carries a code that is used up).
  let code = null;
  for (let i = 0; i < 100 && !code; i++) {
    const list = await otpmail({ op: "sandbox.list", limit: 1000 });
    const mine = (list.messages || []).filter((m) => m.file.includes(issued.id));
    if (mine.length) {
      const msg = await otpmail({ op: "sandbox.show", file: mine[0].file });
      const m = /^ {4}([0-9A-Z]{4,12})\r?$/m.exec(msg.text);
      code = m && m[1];
    } else await sleep(100);
  }
  if (!code) throw new Error("no mail arrived");
  console.log("code read from the mail:", code);

  const ok = await otpmail({ op: "otp.verify", to: ADDR, purpose: "login", code });
  console.log("verify:", ok.ok ? "ok" : ok.error);
  const again = await otpmail({ op: "otp.verify", to: ADDR, purpose: "login", code });
  console.log("verify again:", again.ok ? "ok" : again.error);
  process.exit(ok.ok && !again.ok ? 0 : 1);
})().catch((e) => { console.error(e.message); process.exit(1); });
