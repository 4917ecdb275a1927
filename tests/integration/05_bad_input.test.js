'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const CONFIG = 'limits = { max_header_bytes = 1024, max_url_bytes = 256, max_body_bytes = 1024, max_message_bytes = 1024 }\n';
const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const hs = (extra, path = '/socket/websocket?vsn=2.0.0', method = 'GET') =>
  `${method} ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`;
const UP = `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n`;

// [name, raw request, expected status, whether the server must close]
const HTTP_CASES = [
  ['garbage request line', 'GARBAGE\r\n\r\n', 400, true],
  ['bad header syntax', 'GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n', 400, true],
  ['headers over the limit', `GET /healthz HTTP/1.1\r\nX-Big: ${'a'.repeat(2000)}\r\n\r\n`, 431, true],
  ['URL over the limit', `GET /${'a'.repeat(400)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414, true],
  ['body over the limit', 'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n', 413, true],
  ['chunked body over the limit', 'POST /api/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n' + 'x'.repeat(2048) + '\r\n0\r\n\r\n', 413, true],
  ['both lengths', 'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, true],
  ['invalid JSON body', 'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{"channel', 400, false],
  ['JSON nested too deep', 'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n' + '['.repeat(1000), 400, false],
  ['no Upgrade header', hs(''), 426, false],
  ['Connection without upgrade', hs(`Upgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n`), 400, true],
  ['bad key', hs(UP.replace(KEY, 'short')), 400, true],
  ['bad version', hs(UP.replace('Version: 13', 'Version: 8')), 400, true],
  ['no vsn', hs(UP, '/socket/websocket'), 403, true],
  ['vsn 1', hs(UP, '/socket/websocket?vsn=1.0.0'), 403, true],
  ['POST to the socket', hs(UP, '/socket/websocket?vsn=2.0.0', 'POST'), 405, true],
];

// [name, bytes after a valid handshake, expected close code]
const F = h.frame;
const WS_CASES = [
  ['unmasked frame', () => F(1, '[]', { mask: false }), 1002],
  ['RSV bits', () => F(1, '[]', { rsv: 4 }), 1002],
  ['unknown opcode', () => F(3, ''), 1002],
  ['fragmented ping', () => F(9, 'x', { fin: false }), 1002],
  ['ping over 125 bytes', () => F(9, 'x'.repeat(126)), 1002],
  ['continuation without a start', () => F(0, 'x'), 1002],
  ['new message inside a fragmented one', () => Buffer.concat([F(1, '[', { fin: false }), F(1, ']')]), 1002],
  ['invalid UTF-8', () => F(1, Buffer.from([0xc3, 0x28])), 1007],
  ['message over the limit', () => F(1, 'x'.repeat(2000)), 1009],
  ['fragments over the limit', () => Buffer.concat([F(1, 'x'.repeat(800), { fin: false }), F(0, 'x'.repeat(800))]), 1009],
  ['binary message', () => F(2, Buffer.from([0, 1, 2])), 1003],
  ['not JSON', () => F(1, 'hello'), 1007],
  ['JSON but not an array', () => F(1, '{"topic":"x"}'), 1007],
  ['array too short', () => F(1, '[null,"1","t","phx_join"]'), 1007],
  ['topic not a string', () => F(1, '[null,"1",5,"phx_join",{}]'), 1007],
  ['payload not an object', () => F(1, '[null,"1","t","phx_join",[]]'), 1007],
  ['ref a number', () => F(1, '[null,1,"t","phx_join",{}]'), 1007],
  ['close code 1005', () => F(8, Buffer.from([0x03, 0xed])), 1002],
  ['one-byte close payload', () => F(8, Buffer.from([0x03])), 1002],
  ['close reason not UTF-8', () => F(8, Buffer.from([0x03, 0xe8, 0xff])), 1007],
];

function closeCodeIn(buf) {
  // Skip the 101 response, then scan server frames for the close frame.
  let i = buf.indexOf('\r\n\r\n') + 4;
  while (i + 2 <= buf.length) {
    const op = buf[i] & 15;
    let n = buf[i + 1] & 127, off = 2;
    if (n === 126) { n = buf.readUInt16BE(i + 2); off = 4; }
    if (op === 8) return n >= 2 ? buf.readUInt16BE(i + off) : null;
    i += off + n;
  }
  return undefined;
}

test('bad input: every malformed request, handshake, frame and message gets its documented answer', async (t) => {
  const srv = await h.startHerald(CONFIG);
  t.after(() => srv.stop());
  for (const [name, raw, status, closes] of HTTP_CASES) {
    await t.test(`HTTP: ${name} -> ${status}`, async () => {
      const out = await h.rawExchange(srv.port, raw, closes ? {} : { until: /\r\n\r\n\{.*\}$/s });
      const text = out.toString('latin1');
      assert.match(text, new RegExp(`^HTTP/1\\.1 ${status} `), text.slice(0, 200));
      const body = text.slice(text.indexOf('\r\n\r\n') + 4);
      assert.ok(typeof JSON.parse(body).error === 'string', body);
      if (closes) assert.match(text, /Connection: close/);
      if (status === 426) assert.match(text, /Upgrade: websocket/);
    });
  }
  for (const [name, make, code] of WS_CASES) {
    await t.test(`WebSocket: ${name} -> close ${code}`, async () => {
      const out = await h.rawExchange(srv.port, Buffer.concat([Buffer.from(hs(UP)), make()]));
      assert.match(out.toString('latin1'), /^HTTP\/1\.1 101 /);
      assert.equal(closeCodeIn(out), code);
    });
  }
  await t.test('after the whole table the server still serves a phoenix client', async () => {
    assert.equal(srv.proc.exitCode, null);
    const socket = h.phoenixSocket(srv.port);
    await h.connect(socket);
    const ch = socket.channel('after:table');
    await h.join(ch);
    const got = h.nextEvent(ch, 'msg');
    await h.push(srv.port, { channel: 'after:table', event: 'ok', data: 1 });
    assert.deepEqual(await got, { data: 1, event: 'ok' });
    socket.disconnect();
  });
  const m = await h.metrics(srv.port);
  assert.ok(m.herald_ws_bad_messages_total >= WS_CASES.length - 3);
  assert.deepEqual(srv.errors(), []);
});
