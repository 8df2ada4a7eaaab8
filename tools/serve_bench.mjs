// serve_bench.mjs: load test for `dsv32 serve`: C concurrent clients, each
// sending R streamed completions one after another. Node 18+, no packages.
//
//   node tools/serve_bench.mjs http://127.0.0.1:8080 [--clients 1,4,16]
//        [--requests 4] [--prompt-tokens 100] [--max-tokens 64] [--api-key KEY] [--json]
//
// For each concurrency C it prints:
//   gen tok/s    generated tokens of all requests over the wall time of the
//                level (from the first request sent to the last answer read);
//   TTFT p50/p99 time to first token: from sending a request to its first
//                streamed chunk with text, over the C x R requests;
//   ITL p50/p99  inter-token latency: the time between two consecutive
//                streamed chunks with text of one request (each request's
//                first chunk starts its series, so TTFT is not in it), pooled
//                over every gap of the C x R requests. The server sends a chunk
//                per token (fewer where a token ends inside a UTF-8 character),
//                so this is the per-token latency a streaming client sees,
//                scheduler and network included. Chunks that arrive in one
//                read of the socket share a timestamp (a gap of 0).
// Percentiles are nearest rank. --json prints one JSON object per concurrency
// on stdout (the table then goes to stderr), with the same figures: clients,
// requests, tokens, seconds, gen_tok_s, ttft_p50_ms, ttft_p99_ms, itl_p50_ms,
// itl_p99_ms, itl_gaps (how many gaps the ITL figures pool).
//
// Prompts are token ids (distinct per request, so the prefix cache does not
// help), EOS (id 1) is banned so that every answer has max-tokens tokens, and
// the count comes from the server's usage, not from the stream's chunks.
const usage = `usage: node tools/serve_bench.mjs URL [options]

Load test for dsv32 serve: C concurrent clients each send R streamed completions in turn;
per concurrency: generated tok/s, time to first token p50/p99 and inter-token latency
p50/p99 (ms between consecutive streamed chunks of one request, pooled over the requests).

  URL                 the server (default http://127.0.0.1:8080)
  --clients LIST      concurrency levels, comma-separated (default 1,4,16)
  --requests R        requests per client at each level (default 4)
  --prompt-tokens N   prompt length in token ids (default 100)
  --max-tokens N      tokens generated per request (default 64)
  --api-key KEY       sent as a Bearer token
  --json              one JSON object per concurrency on stdout, the table on stderr
  -h, --help          this help
`;
const args = process.argv.slice(2);
if (args.includes("-h") || args.includes("--help")) {
  process.stdout.write(usage);
  process.exit(0);
}
function fail(msg) {
  process.stderr.write(`serve_bench: ${msg}\n`);
  process.exit(1);
}
const known = new Set(["clients", "requests", "prompt-tokens", "max-tokens", "api-key"]);
let base = "http://127.0.0.1:8080";
const opts = {};
let json = false;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--json") json = true;
  else if (a.startsWith("--")) {
    if (!known.has(a.slice(2))) fail(`unknown option '${a}' (see --help)`);
    if (i + 1 >= args.length) fail(`${a} needs a value`);
    opts[a.slice(2)] = args[++i];
  } else base = a;
}
// A positive integer no larger than max, or a one-line error naming the option.
function int(name, def, max) {
  const v = opts[name] ?? def;
  if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > max) fail(`--${name}: expected an integer in [1, ${max}], got '${v}'`);
  return Number(v);
}
const clients = (opts.clients ?? "1,4,16").split(",").map((c) => {
  if (!/^[0-9]+$/.test(c) || Number(c) < 1 || Number(c) > 4096) fail(`--clients: expected integers in [1, 4096], got '${opts.clients}'`);
  return Number(c);
});
const requests = int("requests", "4", 1 << 20);
const promptTokens = int("prompt-tokens", "100", 1 << 20);
const maxTokens = int("max-tokens", "64", 1 << 20);
const key = opts["api-key"] ?? "";
const headers = { "Content-Type": "application/json", ...(key ? { Authorization: "Bearer " + key } : {}) };
const table = json ? process.stderr : process.stdout;

let info;
try {
  const r = await fetch(base + "/v1/models", { headers });
  if (!r.ok) fail(`${base}/v1/models: HTTP ${r.status}`);
  info = await r.json();
} catch (e) {
  fail(`${base}/v1/models: ${e.cause?.message ?? e.message}`);
}
const vocab = 700; // ids 3..702 exist in every model this is pointed at (the test fixtures have 777)
let seed = 12345;
function prompt() {
  const ids = [];
  for (let i = 0; i < promptTokens; i++) {
    seed = (seed * 1664525 + 1013904223) >>> 0;
    ids.push(3 + ((seed >>> 8) % vocab));
  }
  return ids;
}

// One streamed request: its TTFT, the gaps between its text chunks, its token count.
async function one() {
  const t0 = performance.now();
  const r = await fetch(base + "/v1/completions", {
    method: "POST", headers,
    body: JSON.stringify({ model: info.data[0].id, prompt: prompt(), max_tokens: maxTokens, temperature: 0,
                           logit_bias: { 1: -100 }, stream: true, stream_options: { include_usage: true } }),
  });
  if (!r.ok) throw new Error(r.status + " " + (await r.text()));
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", ttft = 0, tokens = 0, last = -1;
  const gaps = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const now = performance.now();
    buf += dec.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!ev.startsWith("data: {")) continue;
      const j = JSON.parse(ev.slice(6));
      if (j.choices.length && j.choices[0].text) {
        if (last < 0) ttft = now - t0;
        else gaps.push(now - last);
        last = now;
      }
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { ttft, tokens, gaps };
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1))];
};
const ms = (x) => x.toFixed(2).padStart(11);

table.write(`model ${info.data[0].id}, prompt ${promptTokens} tokens, ${maxTokens} generated, ${requests} requests per client\n`);
table.write("clients  requests  gen tok/s  TTFT p50 ms  TTFT p99 ms   ITL p50 ms   ITL p99 ms\n");
for (const c of clients) {
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: c }, async () => {
    const out = [];
    for (let i = 0; i < requests; i++) out.push(await one());
    return out;
  }));
  const secs = (performance.now() - t0) / 1000;
  const all = results.flat();
  const tokens = all.reduce((a, r) => a + r.tokens, 0);
  const ttfts = all.map((r) => r.ttft);
  const gaps = all.flatMap((r) => r.gaps);
  const row = {
    clients: c, requests: all.length, tokens, seconds: secs, gen_tok_s: tokens / secs,
    ttft_p50_ms: pct(ttfts, 50), ttft_p99_ms: pct(ttfts, 99),
    itl_p50_ms: pct(gaps, 50), itl_p99_ms: pct(gaps, 99), itl_gaps: gaps.length,
  };
  table.write(`${String(c).padStart(7)}  ${String(all.length).padStart(8)}  ${row.gen_tok_s.toFixed(1).padStart(9)}` +
              `  ${ms(row.ttft_p50_ms)}  ${ms(row.ttft_p99_ms)}  ${ms(row.itl_p50_ms)}  ${ms(row.itl_p99_ms)}\n`);
  // JSON has no NaN: a level with no gaps (max-tokens 1) reports null.
  if (json) console.log(JSON.stringify(row, (k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v)));
}
