// openai_client.js: the official `openai` npm client against `dsv32 serve`
// on the scripted fixture model (tests/server_util.h): a chat, a streamed
// chat with reasoning and usage, and a tool-call round (call, result,
// answer), streamed and not. Run by tests/test_server_clients.c:
//   NODE_PATH=DIR/node_modules node openai_client.js BASE_URL MODEL API_KEY
"use strict";
const assert = require("node:assert/strict");
const OpenAI = require("openai");

const [base, model, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey, maxRetries: 0, timeout: 120000 });
// With this bias towards <｜tool▁calls▁begin｜> the scripted model calls its tool.
const CALL_BIAS = { 768: 20 };
const tools = [{
  type: "function",
  function: {
    name: "weather",
    description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];

async function main() {
  const models = await client.models.list();
  assert.equal(models.data[0].id, model);

  // A chat.
  const messages = [{ role: "user", content: "Hi" }];
  const r = await client.chat.completions.create({ model, messages, temperature: 0 });
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(r.choices[0].message.content, "Hello world!");
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.equal(r.usage.completion_tokens, 4); // Hello, " world", "!", EOS
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 4);

  // A streamed chat, thinking: reasoning apart from the answer, usage last.
  const stream = await client.chat.completions.create({
    model, messages, temperature: 0, stream: true, stream_options: { include_usage: true },
    chat_template_kwargs: { thinking: true },
  });
  let content = "", reasoning = "", finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    content += c.delta.content || "";
    reasoning += c.delta.reasoning_content || "";
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(reasoning, "Greeting detected");
  assert.equal(content, "Hello world!");
  assert.equal(finish, "stop");
  assert.equal(usage.completion_tokens, 7);
  assert.ok(chunks >= 7);

  // A tool-call round: the model calls weather, gets its result, answers.
  const call = await client.chat.completions.create({ model, messages, tools, temperature: 0, logit_bias: CALL_BIAS });
  const msg = call.choices[0].message;
  assert.equal(call.choices[0].finish_reason, "tool_calls");
  assert.equal(msg.tool_calls.length, 1);
  assert.equal(msg.tool_calls[0].type, "function");
  assert.equal(msg.tool_calls[0].function.name, "weather");
  assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), { city: "Paris" });
  const round = [...messages, msg, { role: "tool", tool_call_id: msg.tool_calls[0].id, content: "{\"temp\": 22}" }];
  const answer = await client.chat.completions.create({ model, messages: round, tools, temperature: 0 });
  assert.equal(answer.choices[0].message.content, "Sunny and warm.");
  assert.equal(answer.choices[0].finish_reason, "stop");

  // The same call streamed: the client's own helper assembles the deltas.
  const runner = client.beta.chat.completions.stream({ model, messages, tools, temperature: 0, logit_bias: CALL_BIAS });
  const final = await runner.finalChatCompletion();
  const streamed = final.choices[0].message.tool_calls[0];
  assert.equal(streamed.function.name, "weather");
  assert.deepEqual(JSON.parse(streamed.function.arguments), { city: "Paris" });

  // Errors come back as the client's error classes.
  await assert.rejects(client.chat.completions.create({ model: "nope", messages }),
                       (e) => e instanceof OpenAI.BadRequestError && e.code === "model_not_found");
  const anonymous = new OpenAI({ baseURL: base + "/v1", apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(anonymous.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  console.log("openai client: ok");
}

main().catch((e) => { console.error(e); process.exit(1); });
