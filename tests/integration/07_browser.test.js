'use strict';
// A real page in headless Chromium (Debian's, driven by playwright-core)
// loads phoenix.js, joins a topic on herald and shows what is pushed.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const h = require('./lib/harness');
const { PHOENIX_JS, SKIP, webServer, openPage } = require('./lib/browser');

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

test('a page using phoenix.js in headless Chromium receives pushes', { timeout: 60000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, '');
  const url = await webServer(t, { '/': page(srv.port), '/phoenix.js': fs.readFileSync(PHOENIX_JS) });
  const { tab, pageErrors } = await openPage(t, `${url}/`);
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
