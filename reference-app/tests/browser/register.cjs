// Fills the registration form in headless Chromium and waits for the token, which the page
// reads straight from blob storage through the SAS URL. Also checks field errors render.
// Env: PLAYWRIGHT_CORE, CHROMIUM, WEB_URL, EMAIL, SCREENSHOT (optional).
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, headless: true, args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 760 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    await page.goto(process.env.WEB_URL + "/");

    // An invalid form shows the server's per-field errors next to the fields.
    await page.fill("input[name=firstName]", "Ada");
    await page.fill("input[name=email]", "not-an-address");
    await page.click("button[type=submit]");
    await page.waitForFunction(() => document.querySelector('[data-for="email"]').textContent.includes("not a valid"));
    const lastNameError = await page.textContent('[data-for="lastName"]');
    if (!lastNameError.includes("required")) throw new Error("missing lastName error: " + lastNameError);

    await page.fill("input[name=lastName]", "Lovelace");
    await page.fill("input[name=email]", process.env.EMAIL);
    await page.fill("input[name=dateOfBirth]", "1990-12-10");
    await page.click("button[type=submit]");
    const token = await page.waitForSelector("#token", { timeout: 60000 });
    const text = (await token.textContent()).trim();
    if (!/^RT-[0-9A-F-]+$/.test(text)) throw new Error("unexpected token " + text);
    if (pageErrors.length) throw new Error("page errors: " + pageErrors.join("; "));
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(JSON.stringify({ token: text }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
