'use strict';
// Bad input, as a table: malformed HTTP requests, WebSocket handshakes,
// frames, Phoenix messages and JSON bodies, each with its documented answer.
// After the whole table the same server must still serve a normal phoenix
// client, and must not have crashed.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { once } = require('node:events');
const h = require('./lib/harness');

const CONFIG = 'limits = { max_header_bytes = 1024, max_url_bytes = 256, max_body_bytes = 1024, max_message_bytes = 1024 }\n';
const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const req = (method, path, extra = '', body = '') => `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n${body}`;
const UP = (key = KEY, version = '13') =>
  `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: ${version}\r\n`;
const WS = '/socket/websocket?vsn=2.0.0';
const json = (body, ct = 'application/json') =>
  `Content-Type: ${ct}\r\nContent-Length: ${Buffer.byteLength(body, 'latin1')}\r\n`;
const INVALID = { error: 'Invalid push arguments: channel, data, event are required.' };

// [name, raw request, expected status (or list), body check, connection]
//   body check: an object (deepEqual), a RegExp (on .error), or null (any {"error": string})
//   connection: 'close' (must carry Connection: close and be closed),
//               'open' (a following request on it is answered), null (either)
const HTTP_CASES = [
  // Malformed requests.
  ['garbage request line', 'GARBAGE\r\n\r\n', 400, null, 'close'],
  ['request line with a bad version', 'GET /healthz HTTP/x.y\r\nHost: x\r\n\r\n', 400, null, 'close'],
  ['header line without a colon', 'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n', 400, null, 'close'],
  // RFC 9112 5.1: a server MUST reject whitespace between name and colon.
  ['space before the header colon', 'GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n', 400, null, 'close'],
  ['NUL in a header value', 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n', 400, null, 'close'],
  ['non-numeric Content-Length', req('POST', '/api/push', 'Content-Type: application/json\r\nContent-Length: abc\r\n'), 400, null, 'close'],
  ['both Content-Length and chunked', req('POST', '/api/push', 'Content-Length: 2\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n'), 400, null, 'close'],
  ['bad chunk size', req('POST', '/api/push', 'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n', 'zz\r\n{}\r\n0\r\n\r\n'), 400, null, 'close'],
  // Limits.
  ['headers over max_header_bytes', req('GET', '/healthz', `X-Big: ${'a'.repeat(2000)}\r\n`), 431, null, 'close'],
  ['many headers over max_header_bytes', req('GET', '/healthz', 'X-H: 0123456789\r\n'.repeat(100)), 431, null, 'close'],
  ['URL over max_url_bytes', req('GET', `/${'a'.repeat(400)}`), 414, null, 'close'],
  ['query over max_url_bytes', req('GET', `/healthz?${'q'.repeat(400)}`), 414, null, 'close'],
  // Content-Length over the limit: refused before any body byte is sent.
  ['Content-Length over max_body_bytes', req('POST', '/api/push', 'Content-Type: application/json\r\nContent-Length: 5000\r\n'), 413, null, 'close'],
  ['chunked body over max_body_bytes', req('POST', '/api/push', 'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n',
    '800\r\n' + 'x'.repeat(2048) + '\r\n0\r\n\r\n'), 413, null, 'close'],
  // Routing.
  ['unknown path', req('GET', '/nope'), 404, { error: 'not found' }, 'open'],
  ['wrong method on /api/push', req('GET', '/api/push'), 405, null, null],
  ['wrong method on /healthz', req('PUT', '/healthz', 'Content-Length: 0\r\n'), 405, null, null],
  // JSON and form bodies.
  ['truncated JSON', req('POST', '/api/push', json('{"channel'), '{"channel'), 400, /^invalid JSON: /, 'open'],
  ['JSON with a trailing comma', req('POST', '/api/push', json('{"channel":"a","event":"e","data":1,}'), '{"channel":"a","event":"e","data":1,}'), 400, /^invalid JSON: /, 'open'],
  ['JSON with invalid UTF-8', req('POST', '/api/push', json('{"channel":"\xff","event":"e","data":1}')) + '{"channel":"\xff","event":"e","data":1}', 400, /^invalid JSON: /, 'open'],
  ['empty JSON body', req('POST', '/api/push', json('')), 400, /^invalid JSON: /, 'open'],
  ['deeply nested JSON', req('POST', '/api/push', json('['.repeat(1000)), '['.repeat(1000)), 400, /^invalid JSON: /, 'open'],
  ['JSON without data', req('POST', '/api/push', json('{"channel":"a","event":"e"}'), '{"channel":"a","event":"e"}'), 422, INVALID, 'open'],
  ['JSON with a numeric event', req('POST', '/api/push', json('{"channel":"a","event":1,"data":1}'), '{"channel":"a","event":1,"data":1}'), 422, INVALID, 'open'],
  ['JSON with a non-string channel entry', req('POST', '/api/push', json('{"channel":["a",{}],"event":"e","data":1}'), '{"channel":["a",{}],"event":"e","data":1}'), 422, INVALID, 'open'],
  ['form without event', req('POST', '/api/push', json('channel=a&data=1', 'application/x-www-form-urlencoded'), 'channel=a&data=1'), 422, INVALID, 'open'],
  ['text/plain body', req('POST', '/api/push', json('{}', 'text/plain'), '{}'), 415, null, 'open'],
  ['multipart body without fields', req('POST', '/api/push', json('--b--', 'multipart/form-data; boundary=b'), '--b--'), 422, INVALID, 'open'],
  ['multipart body without its closing boundary', req('POST', '/api/push', json('--b\r\n\r\nx', 'multipart/form-data; boundary=b'), '--b\r\n\r\nx'), 400, /^malformed multipart body: /, 'open'],
  ['multipart without a boundary', req('POST', '/api/push', json('--b--', 'multipart/form-data'), '--b--'), 400, /boundary/, 'open'],
  // WebSocket handshakes.
  ['no Upgrade header', req('GET', WS), 426, null, null],
  ['Upgrade without Connection: upgrade', req('GET', WS, UP().replace('Connection: Upgrade', 'Connection: keep-alive')), 400, null, null],
  ['Upgrade to something else', req('GET', WS, UP().replace('Upgrade: websocket', 'Upgrade: h2c')), [400, 426], null, null],
  ['missing Sec-WebSocket-Key', req('GET', WS, UP().replace(`Sec-WebSocket-Key: ${KEY}\r\n`, '')), 400, null, null],
  ['Sec-WebSocket-Key not base64', req('GET', WS, UP('not*base64*at*all!!')), 400, null, null],
  ['Sec-WebSocket-Key of 15 bytes', req('GET', WS, UP(Buffer.alloc(15, 1).toString('base64'))), 400, null, null],
  ['Sec-WebSocket-Key of 17 bytes', req('GET', WS, UP(Buffer.alloc(17, 1).toString('base64'))), 400, null, null],
  ['Sec-WebSocket-Version 8', req('GET', WS, UP(KEY, '8')), 400, null, null],
  ['missing Sec-WebSocket-Version', req('GET', WS, UP().replace('Sec-WebSocket-Version: 13\r\n', '')), 400, null, null],
  ['POST to the socket', req('POST', WS, UP() + 'Content-Length: 0\r\n'), 405, null, null],
  ['vsn 0.9.0', req('GET', '/socket/websocket?vsn=0.9.0', UP()), 403, { error: 'unsupported vsn' }, null],
  ['vsn 12.0.0', req('GET', '/socket/websocket?vsn=12.0.0', UP()), 403, { error: 'unsupported vsn' }, null],
  ['vsn 3.0.0', req('GET', '/socket/websocket?vsn=3.0.0', UP()), 403, { error: 'unsupported vsn' }, null],
  ['empty vsn', req('GET', '/socket/websocket?vsn=', UP()), 403, { error: 'unsupported vsn' }, null],
];

async function checkHttp(port, [name, raw, status, body, connection]) {
  const c = await h.httpConn(port);
  c.write(Buffer.from(raw, 'latin1'));
  const r = await c.response();
  const statuses = [].concat(status);
  assert.ok(statuses.includes(r.status), `${name}: expected ${statuses.join(' or ')}, got ${r.status}\n${r.head}\n${r.body}`);
  assert.match(r.headers['content-type'] || '', /^application\/json/, `${name}: content-type`);
  assert.equal(typeof r.json?.error, 'string', `${name}: body ${r.body}`);
  if (body instanceof RegExp) assert.match(r.json.error, body);
  else if (body) assert.deepEqual(r.json, body);
  if (r.status === 426) assert.match(r.headers.upgrade || '', /^websocket$/i, `${name}: 426 needs Upgrade: websocket`);
  if (r.status === 405) assert.ok(r.headers.allow, `${name}: 405 needs Allow`);
  if (connection === 'close') {
    assert.match(r.headers.connection || '', /close/i, `${name}: Connection: close`);
    await c.closed();
  } else if (connection === 'open') {
    assert.doesNotMatch(r.headers.connection || '', /close/i, `${name}: closed a connection that can go on`);
    c.write(req('GET', '/healthz'));
    assert.equal((await c.response()).status, 200, `${name}: the connection was not usable afterwards`);
    c.end();
  } else {
    c.end();
  }
}

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
  ['close code 1005 (reserved)', () => F(8, Buffer.from([0x03, 0xed])), 1002],
  ['close code 999 (out of range)', () => F(8, Buffer.from([0x03, 0xe7])), 1002],
  ['one-byte close payload', () => F(8, Buffer.from([0x03])), 1002],
  ['close reason not UTF-8', () => F(8, Buffer.from([0x03, 0xe8, 0xff])), 1007],
  ['invalid UTF-8', () => F(1, Buffer.from([0xc3, 0x28])), 1007],
  ['message over max_message_bytes', () => F(1, 'x'.repeat(2000)), 1009],
  ['declared length of 2^62', () => Buffer.concat([Buffer.from([0x81, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(4)]), 1009],
  ['fragments over max_message_bytes', () => Buffer.concat([F(1, 'x'.repeat(800), { fin: false }), F(0, 'x'.repeat(800))]), 1009],
  ['binary message with a truncated header', () => F(2, Buffer.from([0, 1, 2])), 1007],
  ['binary message of an unknown kind', () => F(2, Buffer.from([1, 0, 0, 1, 1, 0x74, 0x65])), 1007],
  // Phoenix messages.
  ['not JSON', () => F(1, 'hello'), 1007],
  ['empty text message', () => F(1, ''), 1007],
  ['JSON but not an array', () => F(1, '{"topic":"x"}'), 1007],
  ['JSON string', () => F(1, '"phx_join"'), 1007],
  ['array too short', () => F(1, '[null,"1","t","phx_join"]'), 1007],
  ['empty array', () => F(1, '[]'), 1007],
  ['topic not a string', () => F(1, '[null,"1",5,"phx_join",{}]'), 1007],
  ['event not a string', () => F(1, '[null,"1","t",["phx_join"],{}]'), 1007],
  ['payload not an object', () => F(1, '[null,"1","t","phx_join",[]]'), 1007],
  ['payload a string', () => F(1, '[null,"1","t","phx_join","{}"]'), 1007],
  ['ref a number', () => F(1, '[null,1,"t","phx_join",{}]'), 1007],
  ['join_ref a boolean', () => F(1, '[true,"1","t","phx_join",{}]'), 1007],
  ['truncated JSON', () => F(1, '[null,"1","t","phx_join",{'), 1007],
];

test('bad input: every malformed request, handshake, frame and message gets its documented answer', { timeout: 90000 }, async (t) => {
  const srv = await h.serve(t, CONFIG);

  for (const row of HTTP_CASES) {
    const [name, , status] = row;
    await t.test(`HTTP: ${name} -> ${[].concat(status).join('/')}`, () => checkHttp(srv.port, row));
  }

  for (const [name, make, code] of WS_CASES) {
    await t.test(`WebSocket: ${name} -> close ${code}`, async () => {
      const c = await h.rawWs(srv.port);
      assert.equal(c.status, 101);
      c.write(make());
      const cf = await c.closeFrame();
      assert.equal(cf.code, code, `reason: ${cf.reason}`);
      c.end(); // and vanish without answering the close
    });
  }

  await t.test('clients that vanish mid-request, mid-handshake and mid-frame', async () => {
    const partials = [
      'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"chan',
      'GET /healthz HTTP/1.1\r\nHo',
      req('GET', WS, UP()).slice(0, 60),
      Buffer.concat([Buffer.from(req('GET', WS, UP())), F(1, 'x'.repeat(500)).slice(0, 100)]),
    ];
    for (const bytes of partials) {
      const s = net.connect(srv.port, '127.0.0.1');
      await once(s, 'connect');
      s.write(bytes);
      s.resetAndDestroy();
    }
    assert.equal((await h.request(srv.port, 'GET', '/healthz')).status, 200);
  });

  await t.test('after the whole table the same server serves a phoenix client join and push', async () => {
    assert.equal(srv.alive, true, 'herald exited');
    const socket = h.phoenixSocket(srv.port, { reconnectAfterMs: () => 600000 });
    await h.connect(socket);
    const ch = socket.channel('after:table');
    await h.join(ch);
    const got = h.nextEvent(ch, 'msg');
    const r = await h.push(srv.port, { channel: 'after:table', event: 'ok', data: { fine: true } });
    assert.equal(r.status, 200);
    assert.deepEqual(await got, { data: { fine: true }, event: 'ok' });
    socket.disconnect();
    assert.equal(srv.alive, true, 'herald exited');
    const m = await h.metrics(srv.port);
    assert.equal(typeof m.herald_connections, 'number');
  });
});

test('over limits.max_connections the handshake gets 503', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_connections = 2 }\n');
  const a = await h.rawWs(srv.port);
  const b = await h.rawWs(srv.port);
  assert.equal(a.status, 101);
  assert.equal(b.status, 101);
  const c = await h.rawWs(srv.port);
  assert.equal(c.status, 503, c.response.head);
  assert.match(c.response.headers['content-type'] || '', /^application\/json/);
  assert.equal(typeof c.response.json?.error, 'string');
  c.end();
  // HTTP requests are still served, and a slot frees up when a socket goes.
  assert.equal((await h.request(srv.port, 'GET', '/healthz')).status, 200);
  a.send(8, h.closePayload(1000));
  assert.equal(await a.closeCode(), 1000);
  await a.waitClosed();
  const d = await h.eventually(async () => {
    const x = await h.rawWs(srv.port);
    if (x.status === 101) return x;
    x.end();
    return null;
  }, 10000, 'a free connection slot');
  d.sendText([null, '1', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await d.nextJson(), [null, '1', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  d.end();
  b.end();
});
