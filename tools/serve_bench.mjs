// serve_bench.mjs: load test for `dsv32 serve`: C concurrent clients, each
// sending R streamed completions one after another; prints the aggregate
// generated tokens per second and the time to first token (p50, p99) for
// each concurrency. Node 18+, no packages.
//
//   node tools/serve_bench.mjs http://127.0.0.1:8080 [--clients 1,4,16]
//        [--requests 4] [--prompt-tokens 100] [--max-tokens 64] [--api-key KEY]
//
// Prompts are token ids (distinct per request, so the prefix cache does not
// help), EOS is banned so that every answer has max-tokens tokens, and the
// count comes from the server's usage, not from the stream's chunks.
const args = process.argv.slice(2);
const base = args[0] || "http://127.0.0.1:8080";
const opt = (name, def) => {
  const i = args.indexOf("--" + name);
  return i >= 0 ? args[i + 1] : def;
};
const clients = opt("clients", "1,4,16").split(",").map(Number);
const requests = Number(opt("requests", "4"));
const promptTokens = Number(opt("prompt-tokens", "100"));
const maxTokens = Number(opt("max-tokens", "64"));
const key = opt("api-key", "");
const headers = { "Content-Type": "application/json", ...(key ? { Authorization: "Bearer " + key } : {}) };

const info = await (await fetch(base + "/v1/models", { headers })).json();
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
  let buf = "", ttft = 0, tokens = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!ev.startsWith("data: {")) continue;
      const j = JSON.parse(ev.slice(6));
      if (!ttft && j.choices.length && j.choices[0].text) ttft = performance.now() - t0;
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { ttft, tokens };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

console.log(`model ${info.data[0].id}, prompt ${promptTokens} tokens, ${maxTokens} generated, ${requests} requests per client`);
console.log("clients  requests  gen tok/s  TTFT p50 ms  TTFT p99 ms");
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
  console.log(`${String(c).padStart(7)}  ${String(all.length).padStart(8)}  ${(tokens / secs).toFixed(1).padStart(9)}` +
              `  ${pct(ttfts, 50).toFixed(1).padStart(11)}  ${pct(ttfts, 99).toFixed(1).padStart(11)}`);
}
