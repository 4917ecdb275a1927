'use strict';
// examples/page.html opened as a file (as a newcomer does): it loads
// phoenix.js from the herald it talks to (GET /phoenix.js), takes that
// herald's address from ?server= (here a port that is not 4000), joins,
// shows the curl line for that address and what is pushed; with nothing
// listening there it says so instead of failing silently.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const h = require('./lib/harness');
const { SKIP, openPage } = require('./lib/browser');
const { deadPort } = require('./lib/backend');

const PAGE = pathToFileURL(path.join(__dirname, '..', '..', 'examples', 'page.html')).href;

test('examples/page.html as a file: joins the herald of ?server= and shows its pushes', { timeout: 90000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t);
  const server = `http://127.0.0.1:${srv.port}`;
  const { tab, pageErrors } = await openPage(t, `${PAGE}?server=${encodeURIComponent(server)}&topic=room:page`);
  await tab.waitForFunction((s) => document.getElementById('status').textContent === `joined room:page on ${s}`,
    server, { timeout: 15000 });
  assert.match(await tab.textContent('#curl'), new RegExp(`^curl -X POST ${server}/api/push `));
  const r = await h.push(srv.port, { channel: 'room:page', event: 'hello', data: { text: 'hi' } });
  assert.equal(r.status, 200);
  await tab.waitForSelector('#log li', { timeout: 15000 });
  assert.deepEqual(await tab.$$eval('#log li', (lis) => lis.map((li) => li.textContent)), ['hello: {"text":"hi"}']);
  assert.deepEqual(pageErrors, []);
});

test('examples/page.html with no herald at ?server= says so', { timeout: 90000, skip: SKIP }, async (t) => {
  const server = `http://127.0.0.1:${await deadPort()}`;
  const { tab } = await openPage(t, `${PAGE}?server=${encodeURIComponent(server)}`);
  await tab.waitForFunction(() => document.getElementById('status').textContent.startsWith('cannot load'), null,
    { timeout: 15000 });
  assert.equal(await tab.textContent('#status'), `cannot load ${server}/phoenix.js: is herald running at ${server}?`);
});
