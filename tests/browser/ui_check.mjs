// Drives Debian's chromium through the Temporal Web UI: list orders by CustomerId, open one, and
// wait for the decoded shipping address (decrypted by the gateway's /codec endpoint).
// usage: node ui_check.mjs UI_URL CUSTOMER_ID WORKFLOW_ID EXPECTED_TEXT SCREENSHOT_PATH
import { chromium } from 'playwright-core';

const [uiUrl, customerId, workflowId, expected, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
const codecCalls = [];
page.on('response', (r) => { if (r.url().includes('/codec/')) codecCalls.push(`${r.status()} ${r.url()}`); });
try {
  const query = encodeURIComponent(`CustomerId="${customerId}"`);
  await page.goto(`${uiUrl}/namespaces/default/workflows?query=${query}`, { waitUntil: 'domcontentloaded' });
  const link = page.getByRole('link', { name: workflowId });
  await link.first().waitFor({ timeout: 30000 });
  await link.first().click();
  await page.waitForURL(`**/workflows/${workflowId}/**`, { timeout: 30000 });
  await page.getByText(expected).first().waitFor({ timeout: 30000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ok: true, url: page.url(), codecCalls }));
} catch (error) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.log(JSON.stringify({ ok: false, error: String(error).split('\n')[0], url: page.url(), codecCalls }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
