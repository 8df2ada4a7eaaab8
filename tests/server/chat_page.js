// chat_page.js: the chat page of `dsv32 serve` in headless Chromium, driven
// by puppeteer-core: type a message with thinking on, send it, wait for the
// streamed answer, check that the reasoning shows apart from the answer, and
// save a screenshot. Run by tests/test_server_clients.c:
//   NODE_PATH=DIR/node_modules node chat_page.js BASE_URL CHROMIUM SCREENSHOT
"use strict";
const assert = require("node:assert/strict");
const puppeteer = require("puppeteer-core");

const [base, chromium, screenshot] = process.argv.slice(2);

async function main() {
  const browser = await puppeteer.launch({
    executablePath: chromium, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 900, height: 560 });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(base + "/", { waitUntil: "networkidle0" });
    await page.waitForFunction(() => document.getElementById("model").textContent.includes("context"));
    await page.click("#thinking");
    await page.$eval("#temperature", (el) => { el.value = "0"; });
    await page.type("#input", "Hi there!");
    await page.click("#send");
    await page.waitForSelector(".msg.assistant[data-done='1']", { timeout: 120000 });
    const got = await page.$eval(".msg.assistant", (el) => ({
      reasoning: el.querySelector(".reasoning-text").textContent,
      reasoningShown: !el.querySelector("details.reasoning").hidden,
      content: el.querySelector(".content").textContent,
      stats: el.querySelector(".stats").textContent,
      error: el.querySelector(".error") ? el.querySelector(".error").textContent : "",
    }));
    assert.equal(got.error, "");
    assert.equal(got.reasoning, "Greeting detected");
    assert.ok(got.reasoningShown);
    assert.equal(got.content, "Hello world!");
    assert.match(got.stats, /7 tokens/);
    assert.equal(await page.$eval(".msg.user", (el) => el.textContent.includes("Hi there!")), true);
    // Open the folded reasoning for the picture.
    await page.$eval("details.reasoning", (el) => { el.open = true; });
    await page.screenshot({ path: screenshot });
    assert.deepEqual(errors, []);
    console.log("chat page: ok");
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
