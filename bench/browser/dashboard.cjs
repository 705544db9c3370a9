// The dashboard in headless Chromium, measured: first contentful paint of /inventory (SAMPLES
// fresh loads), then live-update latency: from posting an adjustment of an item the page shows
// to its cell changing (SAMPLES times), while scanners post BACKGROUND_RATE adjustments a second
// elsewhere (a shop's steady trickle, so the worker is awake as it would be). Prints JSON.
// Env: PLAYWRIGHT_CORE, CHROMIUM, WEB_URL, SCANNER_KEY, LOCATION, SAMPLES, BACKGROUND_RATE.
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const WEB = process.env.WEB_URL, KEY = process.env.SCANNER_KEY, LOCATION = process.env.LOCATION;
const SAMPLES = Number(process.env.SAMPLES || 5), RATE = Number(process.env.BACKGROUND_RATE || 10);

async function adjust(body) {
  const response = await fetch(WEB + "/api/inventory/adjustments", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + KEY },
    body: JSON.stringify(body),
  });
  if (response.status !== 202) throw new Error("adjustment refused: " + response.status);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, headless: true, args: ARGS });
  const url = `${WEB}/inventory?location=${encodeURIComponent(LOCATION)}`;
  const out = { firstPaintMs: [], liveMs: [], htmlBytes: 0 };
  let trickle = null;
  try {
    for (let i = 0; i < SAMPLES; i++) {
      const page = await browser.newPage();
      const response = await page.goto(url, { waitUntil: "load", timeout: 60000 });
      out.htmlBytes = (await response.body()).length;
      const paint = await page.evaluate(() => new Promise((resolve) => {
        const found = () => performance.getEntriesByName("first-contentful-paint")[0];
        if (found()) return resolve(found().startTime);
        new PerformanceObserver((list, obs) => { obs.disconnect(); resolve(found().startTime); })
          .observe({ type: "paint", buffered: true });
      }));
      out.firstPaintMs.push(paint);
      await page.close();
    }
    const page = await browser.newPage();
    await page.goto(url, { waitUntil: "load", timeout: 60000 });
    await page.waitForFunction(() => document.getElementById("freshness").textContent === "live", null, { timeout: 30000 });
    const item = await page.evaluate(() => document.querySelector("#stock tbody tr").dataset.item);
    // The trickle: adjustments at another location, RATE a second, until the samples are done.
    let n = 0;
    trickle = setInterval(() => {
      adjust({ commandId: `trickle-${process.pid}-${n++}`, location: "trickle-van", item: "pie", delta: 1 }).catch(() => {});
    }, 1000 / RATE);
    await new Promise((r) => setTimeout(r, 2000));
    for (let i = 0; i < SAMPLES; i++) {
      const before = await page.evaluate((it) =>
        document.querySelector(`#stock tr[data-item="${CSS.escape(it)}"] td:last-child`).textContent, item);
      const started = Date.now();
      await adjust({ commandId: `live-${process.pid}-${i}`, location: LOCATION, item, delta: 1 });
      await page.waitForFunction(([it, was]) =>
        document.querySelector(`#stock tr[data-item="${CSS.escape(it)}"] td:last-child`).textContent !== was,
        [item, before], { timeout: 30000, polling: "raf" });
      out.liveMs.push(Date.now() - started);
      await new Promise((r) => setTimeout(r, 300));
    }
    console.log(JSON.stringify(out));
  } finally {
    if (trickle) clearInterval(trickle);
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
