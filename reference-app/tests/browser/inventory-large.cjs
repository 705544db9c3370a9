// The dashboard of a shop with 100,000 items across 50 locations, in headless Chromium: it
// shows the totals and one page of each table, pages and searches server side, and patches a
// live adjustment of the item searched in place.
// Env: PLAYWRIGHT_CORE, CHROMIUM, WEB_URL, SCANNER_KEY, COMMAND_ID, SCREENSHOT (optional).
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

function check(what, actual, expected) {
  if (actual !== expected) throw new Error(`${what}: ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, headless: true, args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
    await page.goto(process.env.WEB_URL + "/inventory");
    const text = (selector) => page.$eval(selector, (e) => e.textContent.trim());
    const count = (selector) => page.$$eval(selector, (rows) => rows.length);
    check("items", await text("#total-items"), "100000");
    check("locations", await text("#total-locations"), "50");
    check("location rows", await count("#locations tbody tr"), 50);
    check("first location", await text("#location-title"), "shop-0");
    check("item rows", await count("#stock tbody tr"), 50);
    check("item pager", (await text("#stock-pager")).split(" · ")[0], "1–50 of 2000");

    await page.click("#stock-pager a[rel=next]");
    await page.waitForSelector("#stock tbody tr");
    check("second page", (await text("#stock-pager")).split(" · ")[0], "51–100 of 2000");

    await page.fill("form.search input[name=lq]", "shop-4");
    await page.press("form.search input[name=lq]", "Enter");
    await page.waitForFunction(() => document.querySelectorAll("#locations tbody tr").length === 11);

    await page.fill("#location input[name=q]", "pie-1999");
    await page.press("#location input[name=q]", "Enter");
    await page.waitForFunction(() => document.getElementById("freshness").textContent === "live"
      && [...document.querySelectorAll("#stock tbody tr")].map((tr) => tr.dataset.item).join() === "pie-1999",
      null, { timeout: 30000 });
    check("search keeps the location filter", await count("#locations tbody tr"), 11);
    const before = Number(await text('#stock tr[data-item="pie-1999"] td:last-child'));
    await page.evaluate(() => { window.__sameDocument = true; });
    const response = await fetch(process.env.WEB_URL + "/api/inventory/adjustments", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer " + process.env.SCANNER_KEY },
      body: JSON.stringify({ commandId: process.env.COMMAND_ID, location: "shop-0", item: "pie-1999", delta: 3 }),
    });
    check("adjustment", response.status, 202);
    await page.waitForFunction((want) =>
      document.querySelector('#stock tr[data-item="pie-1999"] td:last-child').textContent === want,
      String(before + 3), { timeout: 60000 });
    check("updated in place", await page.evaluate(() => window.__sameDocument === true), true);
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(JSON.stringify({ ok: true }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
