// Drives the conversation page in headless Chromium for tests/broker/page.rs:
//   node drive.cjs URL SCREENSHOT CONTACT
// Loads the page, reads every count it shows, searches CONTACT with the
// search box, keeps a full-page screenshot and prints one JSON object.
// WINBACK_PLAYWRIGHT is the playwright-core module (tests/page/setup.sh
// prints it); WINBACK_CHROMIUM the browser (default /usr/bin/chromium).
"use strict";

const { chromium } = require(process.env.WINBACK_PLAYWRIGHT || "playwright-core");

async function main() {
  const [url, screenshot, contact] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.WINBACK_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url);
    await page.waitForSelector("body[data-loads]", { timeout: 30000 });
    // One evaluation, so a refresh cannot land between two reads.
    const counts = await page.$$eval(".conversation", (sections) => sections.map((s) => ({
      conversation: s.dataset.conversation,
      threads: [...s.querySelectorAll(".thread")].map((t) => ({
        thread: t.dataset.thread,
        nodes: [...t.querySelectorAll(".node")].map((n) => ({
          step: n.dataset.step,
          counts: Object.fromEntries([...n.querySelectorAll("[data-count]")]
            .map((c) => [c.dataset.count, Number(c.textContent)])),
        })),
      })),
      jumps: s.querySelectorAll("svg.jumps path:not(.tip)").length,
    })));
    await page.fill("#contact", contact);
    await page.click("#search button");
    await page.waitForSelector(`#contact-view[data-shown="${contact}"]`, { timeout: 30000 });
    const shown = await page.$$eval("[data-contact-step]", (els) =>
      els.map((e) => [e.dataset.contactStep, e.textContent]));
    const marked = await page.$$eval(".node.here", (els) =>
      els.map((e) => [e.closest(".conversation").dataset.conversation, e.dataset.step]));
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ counts, contact: { shown, marked }, errors }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
