'use strict';
// The demo page: GET / on the embedded default config (no -c) joins room:1
// over the node's own WebSocket, prints the curl line to try with the
// page's own host and port, and shows what is pushed. Here the port is
// HERALD_PORT=0 (not 4000), so a page that hard-coded the port would fail.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const h = require('./lib/harness');
const { SKIP, openPage } = require('./lib/browser');

// herald with no config file (the embedded default binds 0.0.0.0; this
// test talks to 127.0.0.1 only). Stopped by its PID when the test ends.
async function startDefault(t) {
  const env = { ...process.env, HERALD_PORT: '0' };
  delete env.HERALD_API_TOKEN;
  const proc = spawn(h.BIN, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  t.after(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    assert.deepEqual(await h.within(exited, 20000, 'herald to exit'), { code: 0, signal: null });
  });
  let log = '';
  proc.stderr.setEncoding('utf8');
  const port = await h.within(new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /listening on http:\/\/0\.0\.0\.0:(\d+)/.exec(log);
      if (m) resolve(Number(m[1]));
    });
    exited.then((r) => reject(new Error(`herald exited (${JSON.stringify(r)}):\n${log}`)));
  }), 20000, 'herald to listen');
  return { port, get log() { return log; } };
}

// The URL and the body of the page's curl line.
function parseCurl(line) {
  const m = /^curl -X POST (\S+) -H 'content-type: application\/json' -d '(.*)'$/.exec(line);
  assert.ok(m, `not the expected curl line: ${line}`);
  return { url: m[1], body: m[2] };
}

test('the demo page at / shows a push made with its curl line', { timeout: 90000, skip: SKIP }, async (t) => {
  const srv = await startDefault(t);
  const { tab, pageErrors } = await openPage(t, `http://127.0.0.1:${srv.port}/`);
  await tab.waitForFunction(() => document.getElementById('state').textContent === 'joined room:1', null, { timeout: 15000 });
  const { url, body } = parseCurl(await tab.textContent('#curl'));
  assert.equal(url, `http://127.0.0.1:${srv.port}/api/push`);

  // What the curl line does, from here.
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  assert.equal(r.status, 200);
  await tab.waitForSelector('#log li', { timeout: 15000 });
  assert.deepEqual(await tab.$$eval('#log li', (lis) => lis.map((li) => li.textContent)), ['hello: {"text":"hi"}']);

  // The page's own button does the same.
  await tab.click('#send');
  await tab.waitForFunction(() => document.querySelectorAll('#log li').length === 2, null, { timeout: 15000 });
  assert.equal(await tab.textContent('#send-result'), 'sent');
  assert.deepEqual(pageErrors, []);

  // The status page is there too, without a token on loopback.
  const admin = await h.request(srv.port, 'GET', '/admin');
  assert.equal(admin.status, 200);
  assert.ok(!srv.log.includes('[error]'), srv.log);
});
