// A backend for hooks that call herald.http.request: Node's http server on
// 127.0.0.1, port 0. It records every request (method, path, headers, the
// body and the body's JSON) and answers it with what the test's handler
// returns, or resolves to: a handler that returns a promise holds the
// answer until the test settles it (hold()). Waits are on events with
// deadlines (the harness's Inbox style), never sleeps.
'use strict';
const http = require('node:http');
const { once } = require('node:events');

// A promise with its resolve, for an answer the test holds.
function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

class Backend {
  // handler(req) -> answer | Promise<answer>, where req is { method, path,
  // headers, body, json } and an answer is { status = 200, headers, body }
  // with body a string, or { json } (sent as application/json), or
  // { raw: bytes } (written to the socket as they are, then closed).
  // record: false keeps no requests (a benchmark's backend; waitFor then
  // never resolves).
  constructor(handler, { record = true } = {}) {
    this.handler = handler;
    this.record = record;
    this.requests = [];
    this.waiters = [];
    this.sockets = new Set();
    this.server = http.createServer((req, res) => this.serve(req, res));
    this.server.keepAliveTimeout = 60000;
    this.server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
  }

  static async start(t, handler, options) {
    const b = new Backend(handler, options);
    b.server.listen(0, '127.0.0.1');
    await once(b.server, 'listening');
    b.port = b.server.address().port;
    if (t) t.after(() => b.close());
    return b;
  }

  url(p = '/') { return `http://127.0.0.1:${this.port}${p}`; }

  serve(req, res) {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', async () => {
      let json;
      try { json = JSON.parse(body); } catch { json = undefined; }
      const r = { method: req.method, path: req.url, headers: req.headers, body, json, answered: false };
      if (this.record) this.requests.push(r);
      for (const w of this.waiters.slice()) w.check();
      let a;
      try { a = (await this.handler(r)) || {}; } catch (e) { a = { status: 500, body: String(e) }; }
      if (res.destroyed) return;
      r.answered = true;
      if (a.raw !== undefined) { req.socket.end(a.raw); return; }
      const text = a.json !== undefined ? JSON.stringify(a.json) : (a.body || '');
      const headers = { 'content-type': a.json !== undefined ? 'application/json' : 'text/plain', ...(a.headers || {}) };
      res.writeHead(a.status || 200, headers);
      res.end(text);
    });
  }

  // The requests so far that match pred.
  matching(pred = () => true) { return this.requests.filter(pred); }

  // Resolves with the matching requests once there are at least n.
  waitFor(n, pred = () => true, ms = 20000, what = `${n} backend request(s)`) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const got = this.matching(pred);
          if (got.length < n) return;
          this.waiters.splice(this.waiters.indexOf(w), 1);
          clearTimeout(timer);
          resolve(got);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what} (got ${this.matching(pred).length})`));
      }, ms);
      this.waiters.push(w);
      w.check();
    });
  }

  // Stops listening and drops every connection (held answers included).
  async close() {
    const closed = new Promise((r) => this.server.close(r));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

// A port on 127.0.0.1 that refuses connections: one the kernel gave a
// server that is closed again.
async function deadPort() {
  const s = http.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

module.exports = { Backend, deferred, deadPort };
