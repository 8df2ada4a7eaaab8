// dsml_client.js: the official `openai` npm client against `dsv32 serve`
// speaking the DeepSeek-V3.2 (DSML) chat format, on the embedded tiny model
// (models/tiny) run by the test build (build/dsv32-test), whose hook makes a
// request with "dsv32_test_completion" get exactly that answer through the
// real generation path. Checked: DSML tool calls non-streamed and streamed
// (identical after joining, no markup in content), reasoning apart,
// malformed markup as content, a tool round trip, and structured output:
// response_format json_schema over 20 seeds (parses, validates, "stop"),
// json_object, tool_choice "required" and named, a refused keyword.
// Run by tests/test_dsml_server.c:
//   NODE_PATH=DIR/node_modules node dsml_client.js BASE_URL MODEL
"use strict";
const assert = require("node:assert/strict");
const OpenAI = require("openai");

const [base, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "none", maxRetries: 0, timeout: 120000 });

const tools = [{
  type: "function",
  function: {
    name: "weather",
    description: "Weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 12 }, days: { type: "integer", minimum: 1, maximum: 7 } },
      required: ["city"],
    },
  },
}, {
  type: "function",
  function: {
    name: "time",
    description: "Time in a zone",
    parameters: { type: "object", properties: { zone: { type: "string", maxLength: 8 } }, required: ["zone"] },
  },
}];

const CALL = "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"weather\">\n" +
  "<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n" +
  "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n" +
  "</｜DSML｜invoke>\n</｜DSML｜function_calls>";

// A streamed answer joined: content, reasoning, calls by index.
async function joined(params, markupIsContent) {
  const stream = await client.chat.completions.create({ ...params, stream: true });
  const out = { content: "", reasoning: "", calls: [], finish: null, pieces: 0 };
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (!c) continue;
    const d = c.delta || {};
    if (d.content) { out.content += d.content; out.pieces++; if (!markupIsContent) assert.ok(!d.content.includes("｜DSML｜"), "markup in content: " + JSON.stringify(d.content)); }
    if (d.reasoning_content) out.reasoning += d.reasoning_content;
    for (const t of d.tool_calls || []) {
      if (!out.calls[t.index]) {
        assert.ok(t.id && t.type === "function" && t.function.name, "a call starts with id, type and name");
        out.calls[t.index] = { id: t.id, name: t.function.name, arguments: "" };
      }
      out.calls[t.index].arguments += t.function.arguments || "";
    }
    if (c.finish_reason) out.finish = c.finish_reason;
  }
  return out;
}

async function whole(params) {
  const r = await client.chat.completions.create(params);
  const m = r.choices[0].message;
  return {
    content: m.content || "", reasoning: m.reasoning_content || "",
    calls: (m.tool_calls || []).map((t) => ({ id: t.id, name: t.function.name, arguments: t.function.arguments })),
    finish: r.choices[0].finish_reason,
  };
}

function sameAnswer(a, b, what) {
  assert.equal(a.content, b.content, what + ": content");
  assert.equal(a.reasoning, b.reasoning, what + ": reasoning");
  assert.equal(a.finish, b.finish, what + ": finish_reason");
  assert.deepEqual(a.calls.map((c) => [c.name, c.arguments]), b.calls.map((c) => [c.name, c.arguments]), what + ": calls");
}

function validate(v, s) {
  if (s.type === "object") {
    assert.equal(typeof v, "object"); assert.ok(v && !Array.isArray(v));
    for (const k of s.required || []) assert.ok(k in v, "required " + k);
    for (const k of Object.keys(v)) { assert.ok(s.properties[k], "unexpected key " + k); validate(v[k], s.properties[k]); }
  } else if (s.type === "string") {
    assert.equal(typeof v, "string");
    if (s.maxLength !== undefined) assert.ok([...v].length <= s.maxLength, "maxLength");
    if (s.minLength !== undefined) assert.ok([...v].length >= s.minLength, "minLength");
  } else if (s.type === "integer") {
    assert.ok(Number.isInteger(v)); assert.ok(v >= s.minimum && v <= s.maximum, "range " + v);
  } else if (s.type === "boolean") {
    assert.equal(typeof v, "boolean");
  } else if (s.enum) {
    assert.ok(s.enum.includes(v));
  }
}

async function main() {
  const messages = [{ role: "user", content: "Weather in Oslo?" }];

  // A DSML tool call, whole and streamed: the same answer.
  let p = { model, messages, tools, temperature: 0, dsv32_test_completion: "Let me check." + CALL };
  const w = await whole(p), s = await joined(p);
  assert.equal(w.content, "Let me check.");
  assert.equal(w.finish, "tool_calls");
  assert.equal(w.calls.length, 1);
  assert.equal(w.calls[0].name, "weather");
  assert.deepEqual(JSON.parse(w.calls[0].arguments), { city: "Oslo", days: 3 });
  sameAnswer(w, s, "tool call");

  // Thinking: reasoning apart, then two calls.
  const two = CALL.replace("\n</｜DSML｜function_calls>",
    "\n<｜DSML｜invoke name=\"time\">\n<｜DSML｜parameter name=\"zone\" string=\"true\">CET</｜DSML｜parameter>\n" +
    "</｜DSML｜invoke>\n</｜DSML｜function_calls>");
  p = { model, messages, tools, temperature: 0, chat_template_kwargs: { thinking: true },
        dsv32_test_completion: "I need the weather and the time.</think>" + two };
  const tw = await whole(p), ts = await joined(p);
  assert.equal(tw.reasoning, "I need the weather and the time.");
  assert.equal(tw.content, "");
  assert.deepEqual(tw.calls.map((c) => c.name), ["weather", "time"]);
  assert.deepEqual(JSON.parse(tw.calls[1].arguments), { zone: "CET" });
  sameAnswer(tw, ts, "thinking, two calls");

  // Malformed markup: all of it is content, the answer ends normally.
  const bad = "Hm\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"weather\">\n" +
    "<｜DSML｜parameter name=\"days\" string=\"false\">{oops</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
  p = { model, messages, tools, temperature: 0, dsv32_test_completion: bad };
  const bw = await whole(p), bs = await joined(p, true);
  assert.equal(bw.content, bad);
  assert.equal(bw.calls.length, 0);
  assert.equal(bw.finish, "stop");
  assert.equal(bs.content, bad);
  assert.equal(bs.finish, "stop");

  // DeepSeek's own "thinking_mode" switch works like chat_template_kwargs.
  const tm = await whole({ model, messages, temperature: 0, thinking_mode: "thinking",
                           dsv32_test_completion: "Hmm.</think>Hi." });
  assert.equal(tm.reasoning, "Hmm.");
  assert.equal(tm.content, "Hi.");

  // The round trip: the call and its result go back, with the reasoning.
  const back = [...messages,
    { role: "assistant", content: tw.content, reasoning_content: tw.reasoning,
      tool_calls: tw.calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) },
    { role: "tool", tool_call_id: tw.calls[0].id, content: "{\"temp\": 3}" },
    { role: "tool", tool_call_id: tw.calls[1].id, content: "12:00" }];
  const rt = await whole({ model, messages: back, tools, temperature: 0, chat_template_kwargs: { thinking: true },
                           dsv32_test_completion: "Cold.</think>3 degrees at noon." });
  assert.equal(rt.reasoning, "Cold.");
  assert.equal(rt.content, "3 degrees at noon.");

  // Structured output: a JSON schema, 20 seeds, streamed or not.
  const schema = {
    type: "object",
    properties: { name: { type: "string", maxLength: 10 }, age: { type: "integer", minimum: 0, maximum: 120 },
                  ok: { type: "boolean" } },
    required: ["name", "age"], additionalProperties: false,
  };
  const rf = { type: "json_schema", json_schema: { name: "person", schema } };
  for (let seed = 1; seed <= 20; seed++) {
    const q = { model, messages: [{ role: "user", content: "A person, as JSON." }], response_format: rf, seed,
                temperature: 1, max_tokens: 300 };
    const a = await whole(q);
    assert.equal(a.finish, "stop", "seed " + seed + ": " + a.content);
    validate(JSON.parse(a.content), schema);
    if (seed <= 3) sameAnswer(a, await joined(q), "json_schema seed " + seed);
  }
  // json_object: any object.
  for (let seed = 1; seed <= 3; seed++) {
    const a = await whole({ model, messages, response_format: { type: "json_object" }, seed, temperature: 1, max_tokens: 1500 });
    assert.equal(a.finish, "stop", "json_object seed " + seed + ": " + a.content);
    const v = JSON.parse(a.content);
    assert.ok(v && typeof v === "object" && !Array.isArray(v));
  }
  // tool_choice "required" always calls; a named function calls that one.
  for (let seed = 1; seed <= 5; seed++) {
    const a = await whole({ model, messages, tools, tool_choice: "required", seed, temperature: 1, max_tokens: 300 });
    assert.equal(a.finish, "tool_calls", "seed " + seed);
    assert.equal(a.calls.length, 1);
    const t = tools.find((x) => x.function.name === a.calls[0].name);
    assert.ok(t, a.calls[0].name);
    validate(JSON.parse(a.calls[0].arguments), t.function.parameters);
  }
  const named = await whole({ model, messages, tools, tool_choice: { type: "function", function: { name: "time" } },
                              seed: 9, temperature: 1, max_tokens: 300 });
  assert.equal(named.finish, "tool_calls");
  assert.equal(named.calls.length, 1);
  assert.equal(named.calls[0].name, "time");

  // A keyword outside the subset: 400 naming it.
  await assert.rejects(
    client.chat.completions.create({ model, messages, response_format: { type: "json_schema",
      json_schema: { name: "x", schema: { type: "string", pattern: "^a" } } } }),
    (err) => err.status === 400 && /pattern/.test(err.message));

  console.log("dsml client: ok");
}

main().catch((err) => { console.error(err); process.exit(1); });
