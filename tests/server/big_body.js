// big_body.js: node's fetch (undici) posts a 64 MB body with a
// Content-Length to a server whose limit is smaller, five times; each must
// end in the 413 answer, not a connection error (EPIPE, reset) while the
// body is still going out. Run by tests/test_server_exposed.c and the soak
// test:  node big_body.js BASE_URL [API_KEY]
"use strict";

async function main() {
  const [base, key] = process.argv.slice(2);
  const body = Buffer.alloc(64 << 20, 0x20);
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  let ok = 0;
  for (let i = 0; i < 5; i++) {
    const r = await fetch(base + "/v1/completions", { method: "POST", headers, body });
    const text = await r.text();
    if (r.status !== 413 || !text.includes("request_too_large"))
      throw new Error(`try ${i}: ${r.status} ${text.slice(0, 200)}`);
    ok++;
  }
  console.log(`big body: ${ok} x 413`);
}

main().catch((e) => {
  console.error("big body:", e.cause || e);
  process.exit(1);
});
