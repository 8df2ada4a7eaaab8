// soak.js: the soak and fault test of `dsv32 serve` (`make soak`).
//
// Starts the server on the embedded model (models/tiny) on loopback and runs
// ROUNDS identical rounds of CLIENTS concurrent clients, each doing TASKS
// requests drawn from a seeded generator: complete streams, streams the
// client abandons at a random point, non-streamed answers, a client that
// half-closes after sending, bad requests, and one 64 MB body per round.
// Checks, every round:
//   - every stream that was read to its end ended with a finish reason and
//     "data: [DONE]", and its text equals the non-streamed answer to the same
//     seeded request (greedy and seeded sampling alike);
//   - bad requests got a 4xx error object, the big body its 413;
//   - afterwards /metrics shows no KV page in use, nothing running or
//     queued, and no request body held.
// Then the server's RSS after the second round is compared with the one
// after the first (printed), and in the long run (SOAK_LONG=1), where a slow
// leak has rounds enough to show, the lowest RSS of the later rounds must be
// within 5% of the highest of the first two. SIGTERM must end the
// server with status 0. Every loop is bounded; nothing leaves loopback.
//
//   node tests/server/soak.js BIN MODEL_DIR
// Environment: SOAK_CLIENTS (default 16), SOAK_ROUNDS (2), SOAK_TASKS (8),
// SOAK_SEED (1); SOAK_LONG=1 sets 32 clients, 8 rounds, 16 tasks unless given;
// SOAK_TIMEOUT (seconds, default 600): a run still going then has hung, and
// fails.
"use strict";
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");

const [bin, model] = process.argv.slice(2);
const long = process.env.SOAK_LONG === "1";
const CLIENTS = +(process.env.SOAK_CLIENTS || (long ? 32 : 16));
const ROUNDS = Math.max(2, +(process.env.SOAK_ROUNDS || (long ? 8 : 2)));
const TASKS = +(process.env.SOAK_TASKS || (long ? 16 : 8));
const SEED = +(process.env.SOAK_SEED || 1);

function fail(msg) {
  console.error("soak: FAIL: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

// A small seeded generator (mulberry32), so that rounds are identical.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PROMPTS = [
  "And God said", "In the beginning", "And it came to pass", "The LORD is my shepherd",
  "Blessed are the meek", "And the king of Judah", "Then Moses went up", "Behold, I stand at the door",
];

// The requests clients send: each has a fixed answer (temperature 0, or a
// seed), so a stream can be checked against the non-streamed one.
function request(i) {
  const greedy = i % 2 === 0;
  return {
    prompt: PROMPTS[i % PROMPTS.length],
    max_tokens: 16 + (i * 7) % 24,
    temperature: greedy ? 0 : 0.8,
    ...(greedy ? {} : { seed: 1000 + i }),
  };
}
const N_REQ = 12;

async function start() {
  const srv = spawn(bin, ["serve", "-m", model, "--port", "0", "-t", "1", "--parallel", "8", "--batch", "128",
                          "--max-body", "1M", "--max-conns-per-client", "256"],
                    { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  srv.stderr.on("data", (d) => { err = (err + d).slice(-4000); });
  const exited = new Promise((r) => srv.on("exit", (c, sig) => r(sig ? 128 : c)));
  const port = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("the server did not start: " + err)), 120000);
    srv.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/127\.0\.0\.1:(\d+)\//);
      if (m) { clearTimeout(timer); resolve(+m[1]); }
    });
    srv.on("exit", (code) => reject(new Error(`the server exited (${code}): ${err}`)));
  });
  return { srv, port, exited, log: () => err };
}

const headers = { "Content-Type": "application/json" };

async function whole(base, req) {
  const r = await fetch(base + "/v1/completions", { method: "POST", headers, body: JSON.stringify(req) });
  const j = await r.json();
  if (r.status !== 200) fail(`non-streamed request: ${r.status} ${JSON.stringify(j)}`);
  return { text: j.choices[0].text, finish: j.choices[0].finish_reason };
}

// A stream read to its end, or abandoned after `stopAfter` reads.
async function stream(base, req, stopAfter) {
  const ctl = new AbortController();
  const r = await fetch(base + "/v1/completions", {
    method: "POST", headers, body: JSON.stringify({ ...req, stream: true }), signal: ctl.signal,
  });
  if (r.status !== 200) fail(`stream: ${r.status} ${await r.text()}`);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let raw = "";
  for (let reads = 0; ; reads++) {
    if (stopAfter !== undefined && reads >= stopAfter) {
      ctl.abort();
      return null;
    }
    const { done, value } = await reader.read();
    if (done) break;
    raw += dec.decode(value, { stream: true });
  }
  let text = "", finish = null, events = 0;
  const parts = raw.split("\n\n").filter((e) => e.startsWith("data: "));
  for (const e of parts) {
    const data = e.slice(6);
    if (data === "[DONE]") continue;
    const j = JSON.parse(data);
    if (j.error) fail("stream error event: " + data);
    text += j.choices[0].text;
    if (j.choices[0].finish_reason) finish = j.choices[0].finish_reason;
    events++;
  }
  if (!parts.length || parts[parts.length - 1] !== "data: [DONE]") fail("a stream did not end with [DONE]");
  if (!finish) fail("a stream ended without a finish reason");
  return { text, finish, events };
}

// Sends a request, shuts the sending side (a half-close) and reads the answer.
function halfClose(port, req) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify(req);
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => {
      s.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
              `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      s.end();
    });
    let got = "";
    s.on("data", (d) => { got += d; });
    s.on("error", reject);
    s.on("close", () => {
      // 1xx answers (102 Processing) come first; then the answer.
      while (/^HTTP\/1\.1 1\d\d/.test(got) && got.includes("\r\n\r\n")) got = got.slice(got.indexOf("\r\n\r\n") + 4);
      const status = +(got.match(/^HTTP\/1\.1 (\d+)/) || [])[1];
      const j = JSON.parse(got.slice(got.indexOf("\r\n\r\n") + 4) || "null");
      resolve({ status, text: j && j.choices ? j.choices[0].text : null });
    });
  });
}

const BAD = [
  ["/v1/completions", "{", "application/json"],
  ["/v1/completions", '{"prompt":"x","max_tokens":1e400}', "application/json"],
  ["/detokenize", '{"tokens":[1e20]}', "application/json"],
  ["/v1/chat/completions", '{"messages":[{"role":"user\\u0000x","content":"hi"}]}', "application/json"],
  ["/v1/completions", '{"prompt":"x","logit_bias":{"+5":1}}', "application/json"],
  ["/tokenize", '{"content":"x"}', "text/plain"],
];

async function bad(base, k) {
  const [path, body, type] = BAD[k % BAD.length];
  const r = await fetch(base + path, { method: "POST", headers: { "Content-Type": type }, body });
  const j = await r.json();
  if (r.status < 400 || r.status >= 500 || !j.error) fail(`bad request ${path} ${body}: ${r.status}`);
}

async function bigBody(base) {
  const r = await fetch(base + "/v1/completions", { method: "POST", headers, body: Buffer.alloc(64 << 20, 0x20) });
  const t = await r.text();
  if (r.status !== 413) fail(`64 MB body: ${r.status} ${t.slice(0, 100)}`);
}

async function metric(base, name) {
  const t = await (await fetch(base + "/metrics")).text();
  const m = t.match(new RegExp("^" + name + " ([0-9.e+-]+)$", "m"));
  return m ? +m[1] : NaN;
}

async function settled(base) {
  for (let i = 0; i < 300; i++) {
    const [used, running, waiting, bodies] = await Promise.all(
      ["dsv32_kv_pages_used", "dsv32_requests_running", "dsv32_requests_waiting", "dsv32_request_body_bytes"]
        .map((n) => metric(base, n)));
    if (used === 0 && running === 0 && waiting === 0 && bodies === 0) return { used, running, waiting };
    await new Promise((r) => setTimeout(r, 100));
  }
  const [used, running, waiting, bodies] = await Promise.all(
    ["dsv32_kv_pages_used", "dsv32_requests_running", "dsv32_requests_waiting", "dsv32_request_body_bytes"]
      .map((n) => metric(base, n)));
  fail(`after the round: ${used} KV pages in use, ${running} running, ${waiting} waiting, ${bodies} body bytes held`);
}

function rss(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return m ? +m[1] : NaN;
}

async function main() {
  const { srv, port, exited, log } = await start();
  const limit = +(process.env.SOAK_TIMEOUT || 600);
  setTimeout(() => {
    console.error(`soak: FAIL: still running after ${limit} s (a request hung)\nserver log:\n${log()}`);
    srv.kill("SIGKILL");
    process.exit(1);
  }, limit * 1000).unref();
  const base = `http://127.0.0.1:${port}`;
  try {
    const expect = [];
    for (let i = 0; i < N_REQ; i++) expect.push(await whole(base, request(i)));
    const stats = { streams: 0, abandoned: 0, whole: 0, halfClosed: 0, bad: 0, big: 0 };
    const rssAfter = [];
    for (let round = 0; round < ROUNDS; round++) {
      const clients = [];
      for (let c = 0; c < CLIENTS; c++) {
        const rand = rng(SEED * 7919 + c); // the same in every round
        clients.push((async () => {
          if (c === 0) { await bigBody(base); stats.big++; }
          for (let t = 0; t < TASKS; t++) {
            const i = Math.floor(rand() * N_REQ), what = rand();
            if (what < 0.45) {
              const got = await stream(base, request(i));
              if (got.text !== expect[i].text || got.finish !== expect[i].finish)
                fail(`stream of request ${i}: "${got.text}" (${got.finish}), not "${expect[i].text}" (${expect[i].finish})`);
              stats.streams++;
            } else if (what < 0.7) {
              await stream(base, request(i), Math.floor(rand() * 6));
              stats.abandoned++;
            } else if (what < 0.8) {
              const got = await whole(base, request(i));
              if (got.text !== expect[i].text) fail(`request ${i}: "${got.text}", not "${expect[i].text}"`);
              stats.whole++;
            } else if (what < 0.87) {
              const got = await halfClose(port, request(i));
              if (got.status !== 200 || got.text !== expect[i].text)
                fail(`half-closed request ${i}: ${got.status} "${got.text}"`);
              stats.halfClosed++;
            } else {
              await bad(base, Math.floor(rand() * 1000));
              stats.bad++;
            }
          }
        })());
      }
      await Promise.all(clients);
      const g = await settled(base);
      rssAfter.push(rss(srv.pid));
      console.log(`soak: round ${round + 1}: ${g.used} KV pages in use, ${g.running} running, ${g.waiting} waiting, ` +
                  `RSS ${(rssAfter[round] / 1024).toFixed(1)} MiB`);
    }
    const growth = rssAfter[1] / rssAfter[0] - 1, last = rssAfter[ROUNDS - 1] / rssAfter[1] - 1;
    console.log(`soak: ${CLIENTS} clients x ${ROUNDS} rounds x ${TASKS} tasks: ${stats.streams} complete streams, ` +
                `${stats.abandoned} disconnects, ${stats.whole} whole, ${stats.halfClosed} half-closed, ` +
                `${stats.bad} bad requests, ${stats.big} bodies of 64 MB`);
    console.log(`soak: RSS after round 1 ${(rssAfter[0] / 1024).toFixed(1)} MiB, after round 2 ` +
                `${(rssAfter[1] / 1024).toFixed(1)} MiB (${(growth * 100).toFixed(2)}%)` +
                (ROUNDS > 2 ? `, after round ${ROUNDS} ${(rssAfter[ROUNDS - 1] / 1024).toFixed(1)} MiB ` +
                              `(${(last * 100).toFixed(2)}% over round 2)` : ""));
    // A leak grows every round; with a thread per connection RSS also swings
    // by several percent between identical rounds (malloc arenas, cached
    // thread stacks), so the long run asserts the trend: the lowest RSS of
    // the later half of the rounds within 5% of the highest of the first two.
    const early = Math.max(rssAfter[0], rssAfter[1]);
    const late = Math.min(...rssAfter.slice(Math.floor(ROUNDS / 2)));
    if (ROUNDS >= 4)
      console.log(`soak: lowest RSS of rounds ${Math.floor(ROUNDS / 2) + 1}-${ROUNDS} ${(late / 1024).toFixed(1)} MiB, ` +
                  `highest of rounds 1-2 ${(early / 1024).toFixed(1)} MiB (${((late / early - 1) * 100).toFixed(2)}%)`);
    if (long && late > early * 1.05) fail("the server's RSS kept growing from round to round (a leak)");
  } catch (e) {
    if (!process.exitCode) console.error("soak: FAIL:", e.cause || e);
    process.exitCode = 1;
    console.error("server log:\n" + log());
  } finally {
    srv.kill("SIGTERM");
    const code = await exited;
    if (code !== 0) {
      console.error(`soak: FAIL: the server exited with ${code} after SIGTERM`);
      process.exitCode = 1;
    }
  }
  console.log(process.exitCode ? "soak: failed" : "soak: ok");
}

main();
