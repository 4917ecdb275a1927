'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');

const CHROMIUM = '/usr/bin/chromium';

test('a page using phoenix.js in headless Chromium receives a push', { skip: !fs.existsSync(CHROMIUM) && 'no /usr/bin/chromium' }, async (t) => {
  const { chromium } = require('playwright-core');
  const srv = await h.startHerald('');
  t.after(() => srv.stop());
  const phoenixJs = fs.readFileSync(path.join(h.ROOT, 'tests/node_modules/phoenix/priv/static/phoenix.js'));
  const page = `<!doctype html><meta charset="utf-8"><ul id="log"></ul>
<script src="/phoenix.js"></script>
<script>
  const socket = new Phoenix.Socket("ws://127.0.0.1:${srv.port}/socket");
  socket.connect();
  const ch = socket.channel("room:browser");
  ch.on("msg", ({event, data}) => {
    const li = document.createElement("li"); li.textContent = event + ":" + data.text;
    document.getElementById("log").appendChild(li);
  });
  ch.join().receive("ok", () => { window.joined = true; });
</script>`;
  const web = http.createServer((req, res) => {
    if (req.url === '/phoenix.js') { res.setHeader('content-type', 'text/javascript'); res.end(phoenixJs); }
    else { res.setHeader('content-type', 'text/html'); res.end(page); }
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  t.after(() => web.close());
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  t.after(() => browser.close());
  const tab = await browser.newPage();
  await tab.goto(`http://127.0.0.1:${web.address().port}/`);
  await tab.waitForFunction(() => window.joined === true, null, { timeout: 15000 });
  await h.push(srv.port, { channel: 'room:browser', event: 'hello', data: { text: 'from curl' } });
  await tab.waitForFunction(() => document.querySelector('#log li')?.textContent === 'hello:from curl', null, { timeout: 15000 });
  assert.equal(await tab.textContent('#log li'), 'hello:from curl');
});
