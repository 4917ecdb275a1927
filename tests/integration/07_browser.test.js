'use strict';
// A real page in headless Chromium (Debian's, driven by playwright-core)
// loads phoenix.js, joins a topic on herald and shows what is pushed.
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');

const CHROMIUM = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
const PHOENIX_JS = path.join(h.ROOT, 'tests', 'node_modules', 'phoenix', 'priv', 'static', 'phoenix.js');

function page(port) {
  return `<!doctype html><meta charset="utf-8"><title>herald test</title>
<p id="state">connecting</p><ul id="log"></ul>
<script src="/phoenix.js"></script>
<script>
  const socket = new Phoenix.Socket("ws://127.0.0.1:${port}/socket", { params: { token: "page" } });
  socket.connect();
  const ch = socket.channel("room:browser", {});
  ch.on("msg", ({ event, data }) => {
    const li = document.createElement("li");
    li.textContent = event + ": " + data.text;
    document.getElementById("log").appendChild(li);
  });
  ch.join()
    .receive("ok", () => { document.getElementById("state").textContent = "joined"; })
    .receive("error", (r) => { document.getElementById("state").textContent = "error " + JSON.stringify(r); });
</script>`;
}

test('a page using phoenix.js in headless Chromium receives pushes', {
  timeout: 60000,
  // Skipped on a bare developer machine; under CI a missing browser fails.
  skip: !fs.existsSync(CHROMIUM) && !process.env.CI && `no ${CHROMIUM} (apt-get install chromium)`,
}, async (t) => {
  const { chromium } = require('playwright-core');
  const srv = await h.serve(t, '');
  const phoenixJs = fs.readFileSync(PHOENIX_JS);
  const web = http.createServer((req, res) => {
    if (req.url === '/phoenix.js') { res.setHeader('content-type', 'text/javascript'); res.end(phoenixJs); }
    else if (req.url === '/') { res.setHeader('content-type', 'text/html; charset=utf-8'); res.end(page(srv.port)); }
    else { res.statusCode = 404; res.end(); }
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { web.closeAllConnections(); web.close(r); }));

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  t.after(() => browser.close());
  const tab = await browser.newPage();
  const pageErrors = [];
  tab.on('pageerror', (e) => pageErrors.push(String(e)));
  await tab.goto(`http://127.0.0.1:${web.address().port}/`);
  await tab.waitForFunction(() => document.getElementById('state').textContent !== 'connecting', null, { timeout: 15000 });
  assert.equal(await tab.textContent('#state'), 'joined');
  const topic = await h.request(srv.port, 'GET', '/api/topics/room:browser');
  assert.equal(topic.json.subscribers, 1);

  for (const text of ['from the API', 'ünïcödé ✓']) {
    const r = await h.push(srv.port, { channel: 'room:browser', event: 'hello', data: { text } });
    assert.equal(r.status, 200);
  }
  await tab.waitForFunction(() => document.querySelectorAll('#log li').length >= 2, null, { timeout: 15000 });
  const items = await tab.$$eval('#log li', (lis) => lis.map((li) => li.textContent));
  assert.deepEqual(items, ['hello: from the API', 'hello: ünïcödé ✓']);
  assert.deepEqual(pageErrors, []);
});
