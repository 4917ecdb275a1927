// Pages in headless Chromium (Debian's, driven by playwright-core), served
// from a loopback web server of the test's own.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const CHROMIUM = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
const PHOENIX_JS = path.join(__dirname, '..', '..', 'node_modules', 'phoenix', 'priv', 'static', 'phoenix.js');
// For a test's `skip`: on a bare developer machine without Chromium; under
// CI a missing browser fails.
const SKIP = !fs.existsSync(CHROMIUM) && !process.env.CI && `no ${CHROMIUM} (apt-get install chromium)`;

// Serves routes ({ '/path': text }: '/' as HTML, the others as JavaScript)
// on 127.0.0.1 until the test ends. Resolves with the base URL.
async function webServer(t, routes) {
  const web = http.createServer((req, res) => {
    if (!(req.url in routes)) { res.statusCode = 404; res.end(); return; }
    res.setHeader('content-type', req.url === '/' ? 'text/html; charset=utf-8' : 'text/javascript');
    res.end(routes[req.url]);
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { web.closeAllConnections(); web.close(r); }));
  return `http://127.0.0.1:${web.address().port}`;
}

// Launches Chromium (closed when the test ends) and opens url in a tab.
// Resolves with { tab, pageErrors }: the errors the page threw.
async function openPage(t, url) {
  const { chromium } = require('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  t.after(() => browser.close());
  const tab = await browser.newPage();
  const pageErrors = [];
  tab.on('pageerror', (e) => pageErrors.push(String(e)));
  await tab.goto(url);
  return { tab, pageErrors };
}

module.exports = { CHROMIUM, PHOENIX_JS, SKIP, webServer, openPage };
