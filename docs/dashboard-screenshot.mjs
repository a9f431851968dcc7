// Makes docs/dashboard.png: `sluice demo` under a scripted load, its dashboard open in headless
// chromium for about two minutes of real time, then a screenshot. Unlike the screenshot
// tests/it/dashboard.rs takes (a few seconds of virtual time), the charts here hold real history:
// calm traffic, then a batch flood that fills the upstream's queue and is shed, then a client
// beyond its rate limit as well.
//
//   cargo build && node docs/dashboard-screenshot.mjs
//
// Needs node (18 or later), chromium and wrk. Ports 28080, 29000 and 29901 on 127.0.0.1 (not the
// demo's own, so that a running demo is not disturbed). Talks to chromium over
// --remote-debugging-pipe (the DevTools protocol on file descriptors 3 and 4): no network.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "docs", "dashboard.png");
const dir = mkdtempSync(join(tmpdir(), "sluice-shot-"));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
function run(cmd, args) {
  const child = spawn(cmd, args, { stdio: "ignore" });
  children.push(child);
  return child;
}

const config = readFileSync(join(root, "config", "demo.yaml"), "utf8")
  .replaceAll("127.0.0.1:8080", "127.0.0.1:28080")
  .replaceAll("127.0.0.1:9000", "127.0.0.1:29000")
  .replaceAll("127.0.0.1:9901", "127.0.0.1:29901");
writeFileSync(join(dir, "demo.yaml"), config);
const sluice = spawn(join(root, "target", "debug", "sluice"), ["demo", "-c", join(dir, "demo.yaml")], {
  stdio: ["ignore", "ignore", "pipe"],
});
children.push(sluice);
let log = "";
sluice.stderr.on("data", (d) => (log += d));
sluice.on("exit", (code) => console.error("sluice exited (" + code + "):\n" + log));
for (let i = 0; !log.includes("admin listener up"); i++) {
  if (i > 100) throw new Error("sluice did not start:\n" + log);
  await sleep(100);
}

const proxy = "http://127.0.0.1:28080";
// Calm traffic all along: a few checkouts and API calls a second.
const curl = (path) => spawn("curl", ["-s", "-o", "/dev/null", proxy + path], { stdio: "ignore" });
const calm = setInterval(() => {
  curl("/checkout");
  curl("/api/hello");
}, 250);

// The browser, on the dashboard from the start.
const browser = spawn("chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--hide-scrollbars", "--window-size=1400,1000", "--remote-debugging-pipe",
  "--user-data-dir=" + join(dir, "profile"),
], { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"] });
children.push(browser);
let nextId = 1;
const pending = new Map();
let buffered = "";
browser.stdio[4].on("data", (chunk) => {
  buffered += chunk.toString();
  let end;
  while ((end = buffered.indexOf("\0")) >= 0) {
    const message = JSON.parse(buffered.slice(0, end));
    buffered = buffered.slice(end + 1);
    if (message.id && pending.has(message.id)) {
      pending.get(message.id)(message);
      pending.delete(message.id);
    }
  }
});
function cdp(method, params = {}, sessionId) {
  const id = nextId++;
  browser.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + "\0");
  return new Promise((resolve, reject) => pending.set(id, (m) => (m.error ? reject(new Error(JSON.stringify(m.error))) : resolve(m.result))));
}
const { targetId } = await cdp("Target.createTarget", { url: "http://127.0.0.1:29901/" });
const { sessionId } = await cdp("Target.attachToTarget", { targetId, flatten: true });
await cdp("Emulation.setDeviceMetricsOverride", { width: 1400, height: 1000, deviceScaleFactor: 1, mobile: false }, sessionId);

// The story, in real time: the screenshot is taken while batch is shed and the API client is
// rate-limited, with a minute and a half of history on the charts.
await sleep(20000);
const flood = run("wrk", ["-t1", "-c48", "-d90s", proxy + "/batch/report"]); // queue full, shed
await sleep(30000);
const burst = run("wrk", ["-t1", "-c4", "-d60s", proxy + "/api/hello"]); // beyond the rate limit
await sleep(40000);
const shot = await cdp("Page.captureScreenshot", { format: "png" }, sessionId);
writeFileSync(out, Buffer.from(shot.data, "base64"));
console.log("wrote " + out);

clearInterval(calm);
for (const child of [flood, burst, ...children]) child.kill("SIGTERM");
rmSync(dir, { recursive: true, force: true });
process.exit(0);
