// Opens the dashboard in headless Chromium, posts scanner commands, and waits for the table
// to show them without a reload (server-sent events); then uploads a 3,000-line stock take
// (over the claim-check threshold) through the page's form and waits for its result and the
// new stock.
// Env: PLAYWRIGHT_CORE, CHROMIUM, WEB_URL, SCANNER_KEY, COMMAND_ID, SCREENSHOT (optional).
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function adjust(body) {
  const response = await fetch(process.env.WEB_URL + "/api/inventory/adjustments", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + process.env.SCANNER_KEY },
    body: JSON.stringify(body),
  });
  if (response.status !== 202) throw new Error("adjustment refused: " + response.status);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, headless: true, args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
    await page.goto(process.env.WEB_URL + "/inventory");
    await page.waitForFunction(() => document.getElementById("freshness").textContent === "live", null, { timeout: 30000 });
    await page.evaluate(() => { window.__sameDocument = true; });

    const id = process.env.COMMAND_ID;
    await adjust({ commandId: id + "-1", location: "harbour", item: "apple-pie", delta: 7 });
    await adjust({ commandId: id + "-2", location: "downtown", item: "cherry-pie", delta: 3 });
    await adjust({ commandId: id + "-3", location: "harbour", item: "cherry-pie", delta: 2 });
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll("#stock tfoot td")].map((td) => td.textContent);
      return cells.join("|") === "Total|7|5";
    }, null, { timeout: 60000 });
    // 3,000 counted lines of harbour apple pies (~80 KiB: through the claim check) and one bad line.
    const lines = ["location,item,quantity"];
    for (let i = 0; i < 3000; i++) lines.push(`harbour,apple-pie,1`);
    lines.push("harbour,apple-pie,many");
    await page.fill("#stocktake input[name=key]", process.env.SCANNER_KEY);
    await page.setInputFiles("#stocktake input[name=file]", {
      name: "count.csv", mimeType: "text/csv", buffer: Buffer.from(lines.join("\n") + "\n"),
    });
    await page.click("#stocktake button");
    await page.waitForFunction(() => {
      const text = document.getElementById("stocktake-outcome").textContent;
      return text.includes("Applied 3000 lines, rejected 1.") && text.includes("line 3002:");
    }, null, { timeout: 60000 });
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll("#stock tfoot td")].map((td) => td.textContent);
      return cells.join("|") === "Total|3000|5";
    }, null, { timeout: 60000 });
    const same = await page.evaluate(() => window.__sameDocument === true);
    if (!same) throw new Error("the page reloaded instead of updating in place");
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(JSON.stringify({ ok: true }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
