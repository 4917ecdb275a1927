// Test harness: the real herald binary on loopback, driven by real clients.
//
// Every server a test starts is stopped by its own PID (SIGTERM, then SIGKILL
// after a bounded wait); nothing else is ever signalled. Every wait here is on
// an event (a log line, a frame, a socket event) with a deadline, never a
// sleep.
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
const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)/;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

// A promise that rejects after ms with a message (the timer does not keep
// the process alive).
function deadline(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref());
}
function within(promise, ms, what) { return Promise.race([promise, deadline(ms, what)]); }

// A queue of items that a test awaits one by one.
class Inbox {
  constructor() { this.items = []; this.waiters = []; this.ended = null; }
  push(item) {
    const w = this.waiters.shift();
    if (w) w.resolve(item); else this.items.push(item);
  }
  end(reason) {
    this.ended = reason;
    for (const w of this.waiters.splice(0)) w.reject(new Error(reason));
  }
  next(ms = 10000, what = 'the next item') {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.ended) return Promise.reject(new Error(`${this.ended} while waiting for ${what}`));
    return new Promise((resolve, reject) => {
      const w = { resolve: (v) => { clearTimeout(t); resolve(v); }, reject: (e) => { clearTimeout(t); reject(e); } };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      this.waiters.push(w);
    });
  }
}

// Starts herald with a config (Lua text; `listen` on 127.0.0.1:0 is added
// when absent) and extra files written beside it. Resolves once it logs
// "listening on http://127.0.0.1:<port>".
// prefix: a command that runs herald (e.g. ['prlimit', '--nofile=160:160']).
async function startHerald(config = '', files = {}, { expectFail = false, args, prefix = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-test-'));
  if (!/^\s*listen\s*=/m.test(config)) config = 'listen = { host = "127.0.0.1", port = 0 }\n' + config;
  const file = path.join(dir, 'herald.lua');
  fs.writeFileSync(file, config);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  const argv = [...prefix, BIN, ...(args || ['-c', file])];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const waiters = [];
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    log += d;
    if (process.env.HERALD_TEST_LOG) process.stderr.write(d.replace(/^(?=.)/gm, `[herald ${proc.pid}] `));
    for (const w of waiters.slice()) if (w.re.test(log.slice(w.from))) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
  });
  // A binary that cannot be started (missing, or being rebuilt: ETXTBSY)
  // gives 'error' and maybe no 'exit': either one ends the process here.
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
    proc.on('error', (e) => resolve({ code: null, signal: null, error: e.message }));
  });
  const srv = {
    dir, file, proc, exited,
    get log() { return log; },
    get alive() { return proc.exitCode === null && proc.signalCode === null; },
    // Resolves when the log after position `from` matches re.
    waitLog(re, from = 0, ms = 20000) {
      if (re.test(log.slice(from))) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const w = { re, from, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) { waiters.splice(i, 1); reject(new Error(`timed out waiting for ${re} in log:\n${log}`)); }
        }, ms).unref();
      });
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); }, 15000);
        await exited;
        clearTimeout(t);
      }
      return exited;
    },
    // SIGKILL by PID (a crash, for tests); resolves with the exit.
    kill9() {
      if (proc.exitCode === null && proc.signalCode === null) { srv.killed = true; proc.kill('SIGKILL'); }
      return exited;
    },
    errors() { return log.split('\n').filter((l) => l.includes('[error]') || l.startsWith('{"ts":') && jsonLogLine(l)?.level === 'error'); },
  };
  if (expectFail) { srv.result = await within(exited, 20000, 'herald to exit'); return srv; }
  await Promise.race([
    srv.waitLog(LISTENING),
    exited.then((r) => { throw new Error(`herald exited (${JSON.stringify(r)}) before listening:\n${log}`); }),
  ]);
  srv.port = Number(LISTENING.exec(log)[1]);
  srv.url = `http://127.0.0.1:${srv.port}`;
  return srv;
}

// startHerald for a test: stopped when the test ends, and then the test
// fails if the log has an [error] line (unless allowErrors) or if herald
// did not exit on its own after SIGTERM.
async function serve(t, config = '', files = {}, { allowErrors = false, prefix } = {}) {
  const srv = await startHerald(config, files, { prefix });
  t.after(() => finish(srv, { allowErrors }));
  return srv;
}

// Stops srv (SIGTERM) and removes its dir, then throws if the log has an
// [error] line (unless allowErrors) or a malformed line, or if herald did
// not exit 0 on its own after SIGTERM (not asked of a server the test
// killed with srv.kill9()).
async function finish(srv, { allowErrors = false } = {}) {
  const r = await srv.stop();
  fs.rmSync(srv.dir, { recursive: true, force: true });
  if (!allowErrors) {
    const errs = srv.errors();
    if (errs.length) throw new Error(`herald logged errors:\n${errs.join('\n')}`);
  }
  if (!srv.killed) {
    if (r.signal === 'SIGKILL') throw new Error(`herald needed SIGKILL after SIGTERM; log:\n${srv.log}`);
    if (r.code !== 0) throw new Error(`herald exited with ${JSON.stringify(r)} after SIGTERM; log:\n${srv.log}`);
  }
  const bad = badLogLines(srv.log);
  if (bad.length) throw new Error(`log lines not in the form "<ISO8601 time> [<level>] <message>":\n${bad.join('\n')}`);
}

// Log lines that are neither `<ISO8601 time> [debug|info|warn|error] <message>`
// nor (log.format = "json") one JSON object with ts, level and msg.
const LOG_LINE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2}) \[(debug|info|warn|error)\] \S/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
// The object of a json log line, or null.
function jsonLogLine(l) {
  let o;
  try { o = JSON.parse(l); } catch { return null; }
  const ok = o && typeof o === 'object' && ISO_TIME.test(o.ts) && ['debug', 'info', 'warn', 'error'].includes(o.level) &&
    typeof o.msg === 'string' && (o.conn === undefined || Number.isInteger(o.conn));
  return ok ? o : null;
}
function badLogLines(log) {
  return log.split('\n').filter((l, i, all) => !(l === '' && i === all.length - 1) && !LOG_LINE.test(l) && !jsonLogLine(l));
}

// One HTTP request on a fresh connection (localAddress: the client
// address, any 127.x.y.z; ms: the deadline); resolves {status, headers,
// body, json}.
function request(port, method, p, { body, headers = {}, localAddress, ms = 15000 } = {}) {
  return within(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent: false, localAddress }, (res) => {
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
    if (body !== undefined) req.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
    else req.end();
  }), ms, `${method} ${p}`);
}

function push(port, msg, headers = { 'content-type': 'application/json' }) {
  return request(port, 'POST', '/api/push', { body: msg, headers });
}

// Parses complete HTTP/1.1 responses at the start of buf (Content-Length or
// chunked bodies; a response without either runs to the end of the stream
// and is only complete once `eof`). Returns { responses, rest }.
function parseResponses(buf, eof = false) {
  const responses = [];
  for (;;) {
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) break;
    const head = buf.slice(0, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(head[0]);
    if (!m) throw new Error('not an HTTP response: ' + JSON.stringify(buf.slice(0, 200).toString('latin1')));
    const headers = {};
    const rawHeaders = [];
    for (const line of head.slice(1)) {
      const i = line.indexOf(':');
      const k = line.slice(0, i).trim().toLowerCase();
      const v = line.slice(i + 1).trim();
      rawHeaders.push([k, v]);
      headers[k] = k in headers ? `${headers[k]}, ${v}` : v;
    }
    let pos = end + 4;
    let body;
    const status = Number(m[1]);
    if (status === 101 || status === 204 || status === 304) body = Buffer.alloc(0);
    else if (/chunked/i.test(headers['transfer-encoding'] || '')) {
      const parts = [];
      let complete = false;
      for (;;) {
        const le = buf.indexOf('\r\n', pos);
        if (le < 0) break;
        const n = parseInt(buf.slice(pos, le).toString('latin1'), 16);
        if (n === 0) {
          const te = buf.indexOf('\r\n\r\n', le);
          if (te < 0 && buf.indexOf('\r\n', le + 2) !== le + 2) break;
          pos = te >= 0 ? te + 4 : le + 4;
          complete = true;
          break;
        }
        if (buf.length < le + 2 + n + 2) break;
        parts.push(buf.slice(le + 2, le + 2 + n));
        pos = le + 2 + n + 2;
      }
      if (!complete) break;
      body = Buffer.concat(parts);
    } else if ('content-length' in headers) {
      const n = Number(headers['content-length']);
      if (buf.length < pos + n) break;
      body = buf.slice(pos, pos + n);
      pos += n;
    } else {
      if (!eof) break;
      body = buf.slice(pos);
      pos = buf.length;
    }
    let json;
    try { json = JSON.parse(body.toString('utf8')); } catch { json = undefined; }
    responses.push({ status, reason: m[2], headers, rawHeaders, body: body.toString('utf8'), json, head: head.join('\r\n') });
    if (status === 101) { pos = end + 4; buf = buf.slice(pos); break; }
    buf = buf.slice(pos);
  }
  return { responses, rest: buf };
}

// A raw HTTP/1.1 client connection: write bytes, await parsed responses one
// by one, await the server closing the connection.
async function httpConn(port) {
  const s = net.connect(port, '127.0.0.1');
  await within(once(s, 'connect'), 10000, 'TCP connect');
  let buf = Buffer.alloc(0);
  const inbox = new Inbox();
  let ended = false;
  let resolveClosed;
  const closed = new Promise((r) => (resolveClosed = r));
  const c = {
    socket: s,
    reset: false,
    get ended() { return ended; },
    write(bytes) { s.write(bytes); },
    // Resolves with the next complete response.
    response(ms = 10000) { return inbox.next(ms, 'an HTTP response'); },
    // Resolves when the server has closed the connection ({reset}).
    closed(ms = 10000) { return within(closed, ms, 'the server to close the connection'); },
    end() { s.destroy(); },
  };
  const drain = (eof) => {
    const { responses, rest } = parseResponses(buf, eof);
    buf = rest;
    for (const r of responses) inbox.push(r);
  };
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); drain(false); });
  s.on('end', () => { ended = true; drain(true); });
  s.on('error', (e) => { if (e.code === 'ECONNRESET') c.reset = true; });
  s.on('close', () => { ended = true; drain(true); inbox.end('connection closed'); resolveClosed({ reset: c.reset, leftover: buf }); });
  return c;
}

// Raw bytes over TCP: resolves with everything read until the server closes
// (or until `until` matches what was read).
function rawExchange(port, bytes, { until, ms = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let settled = false;
    const done = () => { if (settled) return; settled = true; clearTimeout(t); s.destroy(); resolve(buf); };
    const t = setTimeout(() => { settled = true; s.destroy(); reject(new Error('raw exchange timed out; got ' + buf.toString('latin1').slice(0, 500))); }, ms);
    s.on('connect', () => s.write(bytes));
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); if (until && until.test(buf.toString('latin1'))) done(); });
    s.on('end', done);
    s.on('close', done);
    s.on('error', (e) => { if (e.code === 'ECONNRESET' || e.code === 'EPIPE') done(); else if (!settled) { settled = true; clearTimeout(t); reject(e); } });
  });
}

// A client frame, masked unless told otherwise. `len` forces the length
// encoding (7, 16 or 64 bits) for tests of the length forms.
function frame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, rsv = 0, len } = {}) {
  payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const n = payload.length;
  const form = len || (n < 126 ? 7 : n < 65536 ? 16 : 64);
  let head;
  if (form === 7) head = Buffer.from([0, n]);
  else if (form === 16) { head = Buffer.alloc(4); head[1] = 126; head.writeUInt16BE(n, 2); }
  else { head = Buffer.alloc(10); head[1] = 127; head.writeBigUInt64BE(BigInt(n), 2); }
  head[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  if (!mask) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < n; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}

function closePayload(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason));
  b.writeUInt16BE(code, 0);
  b.write(reason, 2);
  return b;
}

function acceptFor(key) { return crypto.createHash('sha1').update(key + WS_GUID).digest('base64'); }

function upgradeRequest(pathq, key, extraHeaders = '') {
  return `GET ${pathq} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`;
}

// A raw WebSocket client over net: handshake, then frames in and out.
// `frames` holds the server's frames not yet taken with next().
// localAddress: the source address (any 127.x.y.z on a Linux loopback).
async function rawWs(port, pathq = '/socket/websocket?vsn=2.0.0', extraHeaders = '', { localAddress } = {}) {
  const s = net.connect({ port, host: '127.0.0.1', localAddress });
  await within(once(s, 'connect'), 10000, 'TCP connect');
  const key = crypto.randomBytes(16).toString('base64');
  s.write(upgradeRequest(pathq, key, extraHeaders));
  let buf = Buffer.alloc(0);
  const inbox = new Inbox();
  let closed = false, reset = false, gotFin = false;
  let response = null;
  let resolveHandshake;
  const handshake = new Promise((r) => (resolveHandshake = r));
  let resolveClosed;
  const closedP = new Promise((r) => (resolveClosed = r));
  const parse = () => {
    if (!response) {
      const { responses, rest } = parseResponses(buf, closed);
      if (!responses.length) return;
      response = responses[0];
      buf = rest;
      resolveHandshake();
      if (response.status !== 101) return;
    }
    if (response.status !== 101) return;
    for (;;) {
      if (buf.length < 2) break;
      let n = buf[1] & 127, off = 2;
      if (n === 126) { if (buf.length < 4) break; n = buf.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (buf.length < 10) break; n = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = !!(buf[1] & 0x80);
      if (masked) off += 4;
      if (buf.length < off + n) break;
      inbox.push({ opcode: buf[0] & 15, fin: !!(buf[0] & 0x80), rsv: (buf[0] >> 4) & 7, masked, payload: buf.slice(off, off + n) });
      buf = buf.slice(off + n);
    }
  };
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); parse(); });
  s.on('end', () => { gotFin = true; });
  s.on('error', (e) => { if (e.code === 'ECONNRESET') reset = true; });
  s.on('close', () => {
    closed = true;
    parse();
    resolveHandshake();
    inbox.end('connection closed');
    resolveClosed();
  });
  const c = {
    socket: s,
    key,
    get frames() { return inbox.items; },
    get status() { return response ? response.status : 0; },
    get response() { return response; },
    get closed() { return closed; },
    get reset() { return reset; },
    get gotFin() { return gotFin; },
    send(opcode, payload, opts) { if (!closed) s.write(frame(opcode, payload, opts)); },
    write(bytes) { if (!closed) s.write(bytes); },
    sendText(v) { c.send(1, typeof v === 'string' ? v : JSON.stringify(v)); },
    // Resolves with the next frame (removed from the queue).
    next(ms = 10000) { return inbox.next(ms, 'a WebSocket frame'); },
    async nextText(ms) {
      const f = await c.next(ms);
      if (f.opcode !== 1) throw new Error(`expected a text frame, got opcode ${f.opcode} (${f.payload.toString('latin1').slice(0, 100)})`);
      return f.payload.toString('utf8');
    },
    async nextJson(ms) { return JSON.parse(await c.nextText(ms)); },
    // Resolves with the close frame's {code, reason}, skipping other frames.
    async closeFrame(ms = 10000) {
      for (;;) {
        const f = await c.next(ms);
        if (f.opcode === 8) {
          return f.payload.length >= 2
            ? { code: f.payload.readUInt16BE(0), reason: f.payload.slice(2).toString('utf8'), frame: f }
            : { code: null, reason: '', frame: f };
        }
      }
    },
    async closeCode(ms) { return (await c.closeFrame(ms)).code; },
    // The client half of a server-initiated close: await the server's close
    // frame, answer it with the same code, await the TCP close.
    async closeHandshake(ms = 10000) {
      const cf = await c.closeFrame(ms);
      if (!closed) s.write(frame(8, cf.code === null ? Buffer.alloc(0) : closePayload(cf.code)));
      await c.waitClosed(ms);
      return cf.code;
    },
    waitClosed(ms = 10000) { return within(closedP, ms, 'the server to close the TCP connection'); },
    end() { s.destroy(); },
  };
  await within(handshake, 10000, 'the handshake answer');
  return c;
}

// A `ws` client that queues every message as text. Resolves once open
// (rejects with the HTTP status on a refused upgrade).
function wsClient(port, pathq = '/socket/websocket?vsn=2.0.0', protocols, options = {}) {
  return within(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${pathq}`, protocols, options);
    const inbox = new Inbox();
    let closeInfo = null;
    let resolveClose;
    const closedP = new Promise((r) => (resolveClose = r));
    ws.on('message', (data, isBinary) => inbox.push(isBinary ? data : data.toString('utf8')));
    ws.on('close', (code, reason) => { closeInfo = { code, reason: reason.toString() }; inbox.end(`socket closed (${code})`); resolveClose(closeInfo); });
    ws.on('unexpected-response', (req, res) => { reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode })); req.destroy(); });
    ws.on('error', (e) => reject(e));
    const c = {
      ws,
      send(v) { ws.send(typeof v === 'string' ? v : JSON.stringify(v)); },
      next(ms = 10000) { return inbox.next(ms, 'a WebSocket message'); },
      async nextJson(ms) { return JSON.parse(await c.next(ms)); },
      closed(ms = 10000) { return within(closedP, ms, 'the WebSocket to close'); },
      get closeInfo() { return closeInfo; },
      get pending() { return inbox.items; },
      close(code, reason) { ws.close(code, reason); return c.closed(); },
    };
    ws.on('open', () => resolve(c));
  }), 15000, 'the WebSocket to open');
}

// A phoenix.js Socket (the npm package) with ws as its transport.
function phoenixSocket(port, opts = {}, mount = '/socket') {
  return new Socket(`ws://127.0.0.1:${port}${mount}`, { transport: WebSocket, ...opts });
}

// Connects a phoenix.js socket. When it fails (an error, or no open in
// ms) the socket is disconnected before the promise rejects: phoenix.js
// would otherwise retry for ever, and its timers keep the test process
// from exiting after the failure.
function connect(socket, ms = 10000) {
  let a, b;
  return within(new Promise((resolve, reject) => {
    a = socket.onOpen(() => { socket.off([a, b]); resolve(); });
    b = socket.onError((e) => { socket.off([a, b]); reject(new Error('socket error: ' + (e && e.message))); });
    socket.connect();
  }), ms, 'the phoenix socket to open').catch((e) => {
    socket.off([a, b]);
    socket.disconnect();
    throw e;
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

// A phoenix.js socket on port (opts as phoenixSocket's), connected and
// joined to topic; disconnected when the test ends. Resolves with
// { socket, ch, reply }.
async function joined(t, port, topic, opts = {}, params = {}) {
  const socket = phoenixSocket(port, opts);
  t.after(() => socket.disconnect());
  await connect(socket);
  const ch = socket.channel(topic, params);
  const reply = await join(ch);
  return { socket, ch, reply };
}

function leave(channel) {
  return new Promise((resolve, reject) => {
    channel.leave().receive('ok', resolve).receive('timeout', () => reject(new Error('leave timed out')));
  });
}

// Resolves with the payload of the next `event` on channel.
function nextEvent(channel, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { channel.off(event, ref); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const ref = channel.on(event, (p) => { clearTimeout(t); channel.off(event, ref); resolve(p); });
  });
}

// Resolves with the next socket-level message matching pred.
function nextSocketMessage(socket, pred, ms = 10000, what = 'a matching message') {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { socket.off([id]); reject(new Error(`no ${what} within ${ms} ms`)); }, ms);
    const id = socket.onMessage((m) => { if (pred(m)) { clearTimeout(t); socket.off([id]); resolve(m); } });
  });
}

// Parses /metrics into { 'name{labels}': value }.
function parseMetrics(text) {
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

// The sum of a metric over its labels (name{a="x"} and name{a="y"}).
function metricSum(m, name) {
  let sum = 0;
  for (const [k, v] of Object.entries(m)) if (k === name || k.startsWith(`${name}{`)) sum += v;
  return sum;
}

async function metrics(port, headers) {
  const r = await request(port, 'GET', '/metrics', { headers });
  return parseMetrics(r.body);
}

// An HS256 JSON Web Token of claims signed with secret (what the jwt
// plugin accepts).
function jwt(claims, secret) {
  const b64url = (b) => Buffer.from(b).toString('base64url');
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// Bounded polling, for state that has no event of its own. Prefer events.
async function eventually(fn, ms = 10000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 20));
  }
}

module.exports = {
  ROOT, BIN, WS_GUID, startHerald, serve, finish, badLogLines, jsonLogLine, request, push, parseResponses, httpConn, rawExchange, frame,
  closePayload, acceptFor, upgradeRequest, rawWs, wsClient, phoenixSocket, connect, join, joined, leave, nextEvent,
  nextSocketMessage, parseMetrics, metricSum, metrics, eventually, within, deadline, Inbox, Socket, Presence, WebSocket, jwt,
};
