'use strict';
// WebSocket at the byte level: the handshake, RFC 6455 framing and close
// codes with a raw client over `net` (our own masked frame encoder), and
// the exact Phoenix v2 frames of the reference (B.4) with a `ws` client.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const F = h.frame;
const HEARTBEAT = (ref) => JSON.stringify([null, ref, 'phoenix', 'heartbeat', {}]);
const HB_REPLY = (ref) => [null, ref, 'phoenix', 'phx_reply', { status: 'ok', response: {} }];
const OK = (jr, ref, topic) => [jr, ref, topic, 'phx_reply', { status: 'ok', response: {} }];

test('handshake: accept key, headers, subprotocol, configured mounts', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');

  await t.test('101 with the RFC 6455 accept key and no subprotocol when none is offered', async () => {
    for (const mount of ['/socket', '/push_socket']) {
      const c = await h.rawWs(srv.port, `${mount}/websocket?vsn=2.0.0&token=x`);
      assert.equal(c.status, 101, c.response.head);
      assert.match(c.response.headers.upgrade, /^websocket$/i);
      assert.match(c.response.headers.connection, /\bupgrade\b/i);
      assert.equal(c.response.headers['sec-websocket-accept'], h.acceptFor(c.key));
      assert.equal(c.response.headers['sec-websocket-protocol'], undefined);
      c.sendText(HEARTBEAT('1'));
      assert.deepEqual(await c.nextJson(), HB_REPLY('1'));
      c.end();
    }
  });

  await t.test('header names and tokens are case-insensitive; Connection may list several tokens', async () => {
    const key = 'AAAAAAAAAAAAAAAAAAAAAA==';
    const req = 'GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: WebSocket\r\n' +
      `connection: keep-alive, Upgrade\r\nsec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n\r\n`;
    const out = await h.rawExchange(srv.port, req, { until: /\r\n\r\n/ });
    const { responses } = h.parseResponses(out);
    assert.equal(responses[0].status, 101, out.toString('latin1'));
    assert.equal(responses[0].headers['sec-websocket-accept'], h.acceptFor(key));
  });

  await t.test('phoenix.js authToken: "phoenix" is selected from the offered subprotocols', async () => {
    const token = Buffer.from('tok-123').toString('base64').replace(/=+$/, '');
    const c = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0',
      `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.${token}\r\n`);
    assert.equal(c.status, 101, c.response.head);
    assert.equal(c.response.headers['sec-websocket-protocol'], 'phoenix');
    c.end();
    const w = await h.wsClient(srv.port, '/push_socket/websocket?vsn=2.0.0', ['phoenix', `base64url.bearer.phx.${token}`]);
    assert.equal(w.ws.protocol, 'phoenix');
    await w.close(1000);
  });

  await t.test('mounts = { "/live" }: only /live/websocket upgrades', async () => {
    const live = await h.serve(t, 'mounts = { "/live" }\n');
    const c = await h.rawWs(live.port, '/live/websocket?vsn=2.0.0');
    assert.equal(c.status, 101);
    c.sendText(HEARTBEAT('2'));
    assert.deepEqual(await c.nextJson(), HB_REPLY('2'));
    c.end();
    for (const p of ['/socket/websocket?vsn=2.0.0', '/push_socket/websocket?vsn=2.0.0']) {
      const r = await h.rawWs(live.port, p);
      assert.equal(r.status, 404, p);
      assert.equal(typeof r.response.json?.error, 'string');
      r.end();
    }
  });
});

test('RFC 6455 framing', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_message_bytes = 70000 }\n');

  await t.test('ping gets a pong with the same payload; server frames are unmasked', async () => {
    const c = await h.rawWs(srv.port);
    for (const payload of [Buffer.alloc(0), Buffer.from('hello'), Buffer.from([0xff, 0x00, 0xfe, 0x80]), Buffer.alloc(125, 7)]) {
      c.send(9, payload);
      const f = await c.next();
      assert.equal(f.opcode, 10);
      assert.equal(f.fin, true);
      assert.equal(f.masked, false);
      assert.deepEqual(f.payload, payload);
    }
    // An unsolicited pong is ignored: the next heartbeat is answered.
    c.send(10, 'unsolicited');
    c.sendText(HEARTBEAT('3'));
    assert.deepEqual(await c.nextJson(), HB_REPLY('3'));
    c.end();
  });

  await t.test('fragmented text is reassembled, with a ping between fragments', async () => {
    const c = await h.rawWs(srv.port);
    const msg = HEARTBEAT('4');
    c.send(1, msg.slice(0, 5), { fin: false });
    c.send(9, 'mid');
    c.send(0, msg.slice(5, 12), { fin: false });
    c.send(0, msg.slice(12), { fin: true });
    const pong = await c.next();
    assert.equal(pong.opcode, 10);
    assert.equal(pong.payload.toString(), 'mid');
    assert.deepEqual(await c.nextJson(), HB_REPLY('4'));
    // A fragment boundary inside a multi-byte UTF-8 character is fine.
    const bytes = Buffer.from(JSON.stringify([null, '5', 'phoenix', 'heartbeat', { s: 'é€😀' }]));
    const cut = bytes.indexOf(Buffer.from('€')) + 1;
    c.send(1, bytes.slice(0, cut), { fin: false });
    c.send(0, bytes.slice(cut, cut + 2), { fin: false });
    c.send(0, bytes.slice(cut + 2));
    assert.deepEqual(await c.nextJson(), HB_REPLY('5'));
    // An empty final fragment closes a message too.
    c.send(1, HEARTBEAT('6'), { fin: false });
    c.send(0, '', { fin: true });
    assert.deepEqual(await c.nextJson(), HB_REPLY('6'));
    c.end();
  });

  await t.test('16- and 64-bit length forms; frames split across and packed into TCP writes', async () => {
    const c = await h.rawWs(srv.port);
    const big = (ref, n) => JSON.stringify([null, ref, 'phoenix', 'heartbeat', { pad: 'x'.repeat(n) }]);
    c.sendText(big('7', 1000)); // 16-bit length
    assert.deepEqual(await c.nextJson(), HB_REPLY('7'));
    c.sendText(big('8', 66000)); // 64-bit length, under max_message_bytes
    assert.deepEqual(await c.nextJson(), HB_REPLY('8'));
    // One frame in pieces: header, mask+part of payload, rest.
    const f = F(1, HEARTBEAT('9'));
    c.socket.setNoDelay(true);
    c.write(f.slice(0, 1));
    c.write(f.slice(1, 4));
    c.write(f.slice(4, 10));
    c.write(f.slice(10));
    assert.deepEqual(await c.nextJson(), HB_REPLY('9'));
    // Several frames in one write, answered in order.
    c.write(Buffer.concat([F(1, HEARTBEAT('10')), F(9, 'p'), F(1, HEARTBEAT('11'))]));
    assert.deepEqual(await c.nextJson(), HB_REPLY('10'));
    assert.equal((await c.next()).opcode, 10);
    assert.deepEqual(await c.nextJson(), HB_REPLY('11'));
    c.end();
  });

  // [name, bytes sent after the handshake, expected close code]
  const CLOSES = [
    ['unmasked client frame', () => F(1, HEARTBEAT('1'), { mask: false }), 1002],
    ['RSV1 set', () => F(1, HEARTBEAT('1'), { rsv: 4 }), 1002],
    ['RSV3 set on a ping', () => F(9, 'x', { rsv: 1 }), 1002],
    ['unknown data opcode 3', () => F(3, 'x'), 1002],
    ['unknown control opcode 0xB', () => F(0xb, 'x'), 1002],
    ['fragmented ping', () => F(9, 'x', { fin: false }), 1002],
    ['ping over 125 bytes', () => F(9, 'x'.repeat(126)), 1002],
    ['close frame over 125 bytes', () => F(8, h.closePayload(1000, 'x'.repeat(124))), 1002],
    ['continuation without a start', () => F(0, 'x'), 1002],
    ['new text frame inside a fragmented message', () => Buffer.concat([F(1, '[', { fin: false }), F(1, ']')]), 1002],
    ['invalid UTF-8', () => F(1, Buffer.from([0x5b, 0xc3, 0x28, 0x5d])), 1007],
    ['overlong UTF-8', () => F(1, Buffer.from([0x22, 0xc0, 0xaf, 0x22])), 1007],
    ['UTF-16 surrogate in UTF-8', () => F(1, Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22])), 1007],
    ['invalid UTF-8 in a later fragment', () => Buffer.concat([F(1, '["', { fin: false }), F(0, Buffer.from([0xff, 0x22, 0x5d]))]), 1007],
    ['message over max_message_bytes', () => F(1, 'x'.repeat(70001)), 1009],
    ['fragments adding up over max_message_bytes', () => Buffer.concat([F(1, 'x'.repeat(40000), { fin: false }), F(0, 'x'.repeat(40000))]), 1009],
    ['binary message with a truncated header', () => F(2, Buffer.from([0, 1, 2])), 1007],
    ['text that is not JSON', () => F(1, 'hello'), 1007],
    ['JSON object, not an array', () => F(1, '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}'), 1007],
    ['array of 4', () => F(1, '[null,"1","phoenix","heartbeat"]'), 1007],
    ['topic not a string', () => F(1, '[null,"1",5,"heartbeat",{}]'), 1007],
    ['event not a string', () => F(1, '[null,"1","phoenix",null,{}]'), 1007],
    ['payload not an object', () => F(1, '[null,"1","phoenix","heartbeat",[]]'), 1007],
    ['ref a number', () => F(1, '[null,1,"phoenix","heartbeat",{}]'), 1007],
    ['join_ref an object', () => F(1, '[{},"1","room","phx_join",{}]'), 1007],
  ];
  for (const [name, make, code] of CLOSES) {
    await t.test(`${name} -> close ${code}, then the close handshake completes`, async () => {
      const c = await h.rawWs(srv.port);
      assert.equal(c.status, 101);
      c.write(make());
      const cf = await c.closeFrame();
      assert.equal(cf.code, code, `close reason: ${cf.reason}`);
      assert.equal(cf.frame.masked, false);
      // Our half of the handshake; the server then closes TCP.
      c.write(F(8, h.closePayload(code)));
      await c.waitClosed();
    });
  }

  await t.test('client close: the code is echoed, then the server closes TCP cleanly', async () => {
    for (const [payload, echo] of [[h.closePayload(1000), [1000]], [h.closePayload(4001, 'bye'), [4001]],
      [h.closePayload(1001, 'going'), [1001]], [Buffer.alloc(0), [null, 1000]]]) {
      const c = await h.rawWs(srv.port);
      c.sendText(HEARTBEAT('1'));
      assert.deepEqual(await c.nextJson(), HB_REPLY('1'));
      c.send(8, payload);
      const cf = await c.closeFrame();
      assert.ok(echo.includes(cf.code), `sent ${payload.length ? payload.readUInt16BE(0) : 'no code'}, got ${cf.code}`);
      await c.waitClosed();
      assert.equal(c.reset, false, 'TCP reset instead of a clean close');
      assert.equal(c.frames.length, 0, 'frames after the close frame');
    }
  });

  await t.test('nothing is processed after the client close frame', async () => {
    const c = await h.rawWs(srv.port);
    c.write(Buffer.concat([F(8, h.closePayload(1000)), F(1, HEARTBEAT('2'))]));
    const first = await c.next();
    assert.equal(first.opcode, 8);
    await c.waitClosed();
    assert.equal(c.frames.length, 0, 'a frame after the close frame');
  });
});

test('idle WebSocket: closed with 1001 and a completed close handshake', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'timeouts = { ws_idle_ms = 300, ws_close_ms = 300 }\n');

  await t.test('the client answers the close: TCP closes cleanly', async () => {
    const c = await h.rawWs(srv.port);
    assert.equal(c.status, 101);
    const cf = await c.closeFrame();
    assert.equal(cf.code, 1001);
    c.write(F(8, h.closePayload(1001)));
    await c.waitClosed();
    assert.equal(c.reset, false, 'TCP reset instead of a clean close');
  });

  await t.test('the client never answers: the server closes TCP after ws_close_ms', async () => {
    const c = await h.rawWs(srv.port);
    const cf = await c.closeFrame();
    assert.equal(cf.code, 1001);
    await c.waitClosed(10000);
  });

  await t.test('a ws client sees close code 1001 (a close frame, not an abnormal 1006)', async () => {
    const w = await h.wsClient(srv.port);
    const info = await w.closed();
    assert.equal(info.code, 1001);
  });
});

test('Phoenix v2 frames, exactly (reference B.4), with a ws client', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_topics_per_socket = 3 }\n');
  const c = await h.wsClient(srv.port);

  // Heartbeat.
  c.send([null, '9', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), HB_REPLY('9'));
  // Join, and a push delivered as the exact pre-encoded frame.
  c.send(['3', '3', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), OK('3', '3', 'room:1'));
  await h.push(srv.port, { channel: 'room:1', event: 'e', data: { a: [1, 'x'], b: null } });
  assert.equal(await c.next(), '[null,null,"room:1","msg",{"data":{"a":[1,"x"],"b":null},"event":"e"}]');
  // Join params are accepted.
  c.send(['4', '4', 'room:p', 'phx_join', { since: 5, user: { id: 1 } }]);
  assert.deepEqual(await c.nextJson(), OK('4', '4', 'room:p'));
  // Duplicate join: phx_close for the old join_ref, then the new join's ok.
  c.send(['5', '5', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['3', '3', 'room:1', 'phx_close', {}]);
  assert.deepEqual(await c.nextJson(), OK('5', '5', 'room:1'));
  // Deliveries continue on the new join.
  await h.push(srv.port, { channel: 'room:1', event: 'again', data: 2 });
  assert.deepEqual(await c.nextJson(), [null, null, 'room:1', 'msg', { data: 2, event: 'again' }]);
  // A non-join message to a topic not joined.
  c.send(['1', '6', 'other', 'custom', {}]);
  assert.deepEqual(await c.nextJson(), [null, '6', 'other', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
  c.send([null, '7', 'other', 'custom', {}]);
  assert.deepEqual(await c.nextJson(), [null, '7', 'other', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
  // A stale join_ref on a joined topic is dropped: the heartbeat sent after
  // it is the next thing answered.
  c.send(['3', '8', 'room:1', 'custom', {}]);
  c.send([null, '10', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), HB_REPLY('10'));
  await h.push(srv.port, { channel: 'room:1', event: 'still', data: 3 });
  assert.deepEqual(await c.nextJson(), [null, null, 'room:1', 'msg', { data: 3, event: 'still' }]);
  // Topic limits: room:1, room:p, room:2 joined = 3; a fourth is refused.
  c.send(['11', '11', 'room:2', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), OK('11', '11', 'room:2'));
  c.send(['12', '12', 'room:3', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['12', '12', 'room:3', 'phx_reply', { status: 'error', response: { reason: 'too many channels joined' } }]);
  // Leave room:2; then room:3 fits.
  c.send(['11', '13', 'room:2', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), OK('11', '13', 'room:2'));
  assert.deepEqual(await c.nextJson(), ['11', '11', 'room:2', 'phx_close', {}]);
  // Invalid topics: empty, and over 255 bytes; exactly 255 is fine.
  c.send(['14', '14', '', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['14', '14', '', 'phx_reply', { status: 'error', response: { reason: 'invalid topic' } }]);
  const t256 = 't'.repeat(256);
  c.send(['15', '15', t256, 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['15', '15', t256, 'phx_reply', { status: 'error', response: { reason: 'invalid topic' } }]);
  const t255 = 't'.repeat(255);
  c.send(['16', '16', t255, 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), OK('16', '16', t255));
  // Leave: ok reply with the leave's ref, then phx_close with the join_ref in both slots.
  c.send(['5', '17', 'room:1', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), OK('5', '17', 'room:1'));
  assert.deepEqual(await c.nextJson(), ['5', '5', 'room:1', 'phx_close', {}]);
  // Leave of a topic not joined: ok.
  c.send(['5', '18', 'room:1', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), OK('5', '18', 'room:1'));
  c.send([null, '19', 'never', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), OK(null, '19', 'never'));
  // Nothing arrives for room:1 any more; the heartbeat is the next frame.
  await h.push(srv.port, { channel: 'room:1', event: 'gone', data: 4 });
  c.send([null, '20', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), HB_REPLY('20'));
  assert.deepEqual(c.pending, []);
  await c.close(1000);
});

test('a phx_leave with a stale join_ref is dropped and does not leave the current join', { timeout: 30000 }, async (t) => {
  // Phoenix (socket.ex handle_in phx_leave): "the client has raced a server
  // close"; no reply, the current channel stays.
  const srv = await h.serve(t, '');
  const c = await h.wsClient(srv.port);
  c.send(['3', '3', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), OK('3', '3', 'room:1'));
  c.send(['5', '5', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['3', '3', 'room:1', 'phx_close', {}]);
  assert.deepEqual(await c.nextJson(), OK('5', '5', 'room:1'));
  c.send(['3', '8', 'room:1', 'phx_leave', {}]);
  c.send([null, '10', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), HB_REPLY('10'));
  await h.push(srv.port, { channel: 'room:1', event: 'still', data: 3 });
  assert.deepEqual(await c.nextJson(), [null, null, 'room:1', 'msg', { data: 3, event: 'still' }]);
  await c.close(1000);
});
