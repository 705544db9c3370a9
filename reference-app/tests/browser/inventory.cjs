// Opens the (empty) dashboard in headless Chromium, posts scanner commands, and waits for the
// location totals and the first location's items to show them without a reload (server-sent
// events); then uploads a 3,000-line stock take (over the claim-check threshold) through the
// page's form and waits for its result and the new stock; then opens another location, finds
// an item with the search box, and sees a new adjustment of it in place.
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
    const rows = (table) => page.evaluate((t) =>
      [...document.querySelectorAll(`#${t} tbody tr`)].map((tr) =>
        [...tr.cells].slice(0, 3).map((td) => td.textContent).join("|")).join(" / "), table);
    const waitFor = async (what, check) => {
      try {
        await page.waitForFunction(check, null, { timeout: 60000 });
      } catch (e) {
        throw new Error(`${what}: locations ${await rows("locations")}; stock ${await rows("stock")}`);
      }
    };
    await waitFor("three adjustments", () => {
      const locations = [...document.querySelectorAll("#locations tbody tr")].map((tr) =>
        [...tr.cells].slice(0, 3).map((td) => td.textContent).join("|"));
      const stock = [...document.querySelectorAll("#stock tbody tr")].map((tr) =>
        [...tr.cells].map((td) => td.textContent).join("|"));
      return locations.join(" / ") === "downtown|1|3 / harbour|2|9"
        && stock.join(" / ") === "cherry-pie|3"
        && document.getElementById("total-quantity").textContent === "12";
    });
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
    await waitFor("the stock take", () => {
      const row = document.querySelector('#locations tr[data-location="harbour"]');
      return row && [...row.cells].slice(0, 3).map((td) => td.textContent).join("|") === "harbour|2|3002";
    });
    const same = await page.evaluate(() => window.__sameDocument === true);
    if (!same) throw new Error("the page reloaded instead of updating in place");
    // Another location, an item found by searching, and a live change of it.
    await page.click('#locations a:text-is("harbour")');
    await page.waitForSelector('#stock tr[data-item="apple-pie"]');
    await page.fill('#location input[name=q]', "cherry");
    await page.press('#location input[name=q]', "Enter");
    await page.waitForFunction(() => document.getElementById("freshness").textContent === "live"
      && [...document.querySelectorAll("#stock tbody tr")].map((tr) => tr.dataset.item).join() === "cherry-pie",
      null, { timeout: 30000 });
    await page.evaluate(() => { window.__sameDocument = true; });
    await adjust({ commandId: id + "-4", location: "harbour", item: "cherry-pie", delta: 5 });
    await waitFor("the adjustment of the item searched", () =>
      document.querySelector('#stock tr[data-item="cherry-pie"] td:last-child').textContent === "7");
    if (!(await page.evaluate(() => window.__sameDocument === true))) {
      throw new Error("the page reloaded instead of updating in place");
    }
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(JSON.stringify({ ok: true }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
