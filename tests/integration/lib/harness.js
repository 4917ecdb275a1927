// Test harness: the real herald binary on loopback, real clients.
// Every server a test starts is stopped by its PID (SIGTERM, then SIGKILL
// after a bounded wait); nothing else is ever signalled.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const http = require('node:http');
const crypto = require('node:crypto');
const { once } = require('node:events');
const WebSocket = require('ws');
const { Socket, Presence } = require('phoenix');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.HERALD_BIN || path.join(ROOT, 'build', 'herald');

// Starts herald with a config (Lua text; `listen` is added when absent) and
// extra files written beside it. Resolves once it logs its port.
async function startHerald(config = '', files = {}, { expectFail = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-test-'));
  if (!/^\s*listen\s*=/m.test(config)) config = 'listen = { host = "127.0.0.1", port = 0 }\n' + config;
  fs.writeFileSync(path.join(dir, 'herald.lua'), config);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  const proc = spawn(BIN, ['-c', path.join(dir, 'herald.lua')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const waiters = [];
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    log += d;
    if (process.env.HERALD_TEST_LOG) process.stderr.write(d.replace(/^/gm, `[herald ${proc.pid}] `).replace(/\[herald \d+\] $/, ''));
    for (const w of waiters.slice()) if (w.re.test(log.slice(w.from))) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const srv = {
    dir, proc, exited,
    get log() { return log; },
    // Resolves when a log line after position `from` matches re.
    waitLog(re, from = 0, ms = 20000) {
      if (re.test(log.slice(from))) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const w = { re, from, resolve };
        waiters.push(w);
        setTimeout(() => reject(new Error(`timed out waiting for ${re} in log:\n${log}`)), ms).unref();
      });
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
        await exited;
        clearTimeout(t);
      }
      return exited;
    },
    errors() { return log.split('\n').filter((l) => l.includes('[error]')); },
  };
  if (expectFail) { srv.result = await exited; return srv; }
  await Promise.race([
    srv.waitLog(/listening on http:\/\/127\.0\.0\.1:\d+/),
    exited.then((r) => { throw new Error(`herald exited (${JSON.stringify(r)}):\n${log}`); }),
  ]);
  srv.port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log)[1]);
  srv.url = `http://127.0.0.1:${srv.port}`;
  return srv;
}

// One HTTP request on a fresh connection; resolves {status, headers, body, json}.
function request(port, method, p, { body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent: false }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (data += d));
      res.on('end', () => {
        let json;
        try { json = JSON.parse(data); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body: data, json });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.end(typeof body === 'string' ? body : JSON.stringify(body));
    else req.end();
  });
}

function push(port, msg, headers = { 'content-type': 'application/json' }) {
  return request(port, 'POST', '/api/push', { body: msg, headers });
}

// Raw bytes over TCP: resolves with everything read until the server closes
// (or until `until` matches what was read).
function rawExchange(port, bytes, { until, ms = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const done = () => { clearTimeout(t); s.destroy(); resolve(buf); };
    const t = setTimeout(() => { s.destroy(); reject(new Error('raw exchange timed out; got ' + buf)); }, ms);
    s.on('connect', () => s.write(bytes));
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); if (until && until.test(buf.toString('latin1'))) done(); });
    s.on('end', done);
    s.on('close', done);
    s.on('error', (e) => { if (e.code === 'ECONNRESET') done(); else reject(e); });
  });
}

// A masked client frame.
function frame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, rsv = 0 } = {}) {
  payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const n = payload.length;
  let head;
  if (n < 126) head = Buffer.from([0, n]);
  else if (n < 65536) { head = Buffer.alloc(4); head[1] = 126; head.writeUInt16BE(n, 2); }
  else { head = Buffer.alloc(10); head[1] = 127; head.writeBigUInt64BE(BigInt(n), 2); }
  head[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  if (!mask) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < n; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}

// A raw WebSocket client over net: handshake, then frames in and out.
async function rawWs(port, pathq = '/socket/websocket?vsn=2.0.0', extraHeaders = '') {
  const s = net.connect(port, '127.0.0.1');
  await once(s, 'connect');
  const key = crypto.randomBytes(16).toString('base64');
  s.write(`GET ${pathq} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`);
  let buf = Buffer.alloc(0);
  const frames = [];
  const waiters = [];
  let closed = false;
  const wake = () => { for (const w of waiters.splice(0)) w(); };
  let headerDone = false, status = 0;
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (!headerDone) {
      const i = buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      status = Number(buf.slice(9, 12).toString());
      headerDone = true;
      buf = buf.slice(i + 4);
    }
    for (;;) {
      if (buf.length < 2) break;
      let n = buf[1] & 127, off = 2;
      if (n === 126) { if (buf.length < 4) break; n = buf.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (buf.length < 10) break; n = Number(buf.readBigUInt64BE(2)); off = 10; }
      if (buf.length < off + n) break;
      frames.push({ opcode: buf[0] & 15, fin: !!(buf[0] & 0x80), payload: buf.slice(off, off + n) });
      buf = buf.slice(off + n);
    }
    wake();
  });
  s.on('close', () => { closed = true; wake(); });
  s.on('error', () => {});
  const c = {
    socket: s, frames,
    get status() { return status; },
    get closed() { return closed; },
    send(opcode, payload, opts) { s.write(frame(opcode, payload, opts)); },
    sendText(v) { s.write(frame(1, typeof v === 'string' ? v : JSON.stringify(v))); },
    // Resolves with the next frame (removed from the queue).
    async next(ms = 10000) {
      const deadline = Date.now() + ms;
      while (!frames.length) {
        if (closed) throw new Error('connection closed while waiting for a frame');
        if (Date.now() > deadline) throw new Error('timed out waiting for a frame');
        await new Promise((r) => { waiters.push(r); setTimeout(r, 100).unref(); });
      }
      return frames.shift();
    },
    async nextJson(ms) { const f = await c.next(ms); return JSON.parse(f.payload.toString()); },
    // Resolves with the close frame's code (skipping other frames).
    async closeCode(ms) {
      for (;;) { const f = await c.next(ms); if (f.opcode === 8) return f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null; }
    },
    async waitClosed(ms = 10000) {
      const deadline = Date.now() + ms;
      while (!closed) {
        if (Date.now() > deadline) throw new Error('server did not close the TCP connection');
        await new Promise((r) => { waiters.push(r); setTimeout(r, 100).unref(); });
      }
    },
    end() { s.destroy(); },
  };
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no handshake answer')), 10000);
    const check = () => { if (headerDone || closed) { clearTimeout(t); resolve(); } else waiters.push(check); };
    check();
  });
  return c;
}

// A phoenix.js Socket (the npm package) with ws as its transport.
function phoenixSocket(port, opts = {}, mount = '/socket') {
  const socket = new Socket(`ws://127.0.0.1:${port}${mount}`, { transport: WebSocket, ...opts });
  return socket;
}

function connect(socket) {
  return new Promise((resolve, reject) => {
    const a = socket.onOpen(() => { socket.off([a, b]); resolve(); });
    const b = socket.onError((e) => { socket.off([a, b]); reject(new Error('socket error: ' + (e && e.message))); });
    socket.connect();
  });
}

function join(channel) {
  return new Promise((resolve, reject) => {
    channel.join()
      .receive('ok', resolve)
      .receive('error', (r) => reject(Object.assign(new Error('join refused: ' + JSON.stringify(r)), { response: r })))
      .receive('timeout', () => reject(new Error('join timed out')));
  });
}

// Resolves with the payload of the next `event` on channel.
function nextEvent(channel, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { channel.off(event, ref); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const ref = channel.on(event, (p) => { clearTimeout(t); channel.off(event, ref); resolve(p); });
  });
}

async function metrics(port) {
  const r = await request(port, 'GET', '/metrics');
  const m = {};
  for (const line of r.body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

async function eventually(fn, ms = 10000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

module.exports = {
  ROOT, BIN, startHerald, request, push, rawExchange, frame, rawWs, phoenixSocket, connect, join,
  nextEvent, metrics, eventually, Socket, Presence, WebSocket,
};
