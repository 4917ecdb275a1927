'use strict';
// Binary pushes across the cluster: POST /api/push with
// application/octet-stream on node A reaches a phoenix.js subscriber on
// node B as an ArrayBuffer of the exact bytes (0x00 and 0xff among them,
// one payload over 64 KiB, an empty one), once and in order, through a
// real redis-server the test starts itself; A's own subscriber gets each
// once (no echo); a V1 subscriber on B skips them and B counts it
// (herald_dropped_total{reason="binary_to_v1"}); the cluster's message
// counters move as for JSON pushes; the PUBLISH on the wire is
// "b1 <origin node> <event length>\n<event><the V2 binary broadcast>".
//
// "Nothing else arrived" is never awaited as a timeout: a JSON marker
// pushed after the binary ones on the same node (the same Redis
// connection, so the same order) is awaited instead.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');
const c = require('./lib/cluster');

const IN = 'herald_cluster_messages_total{direction="in"}';
const OUT = 'herald_cluster_messages_total{direction="out"}';
const LOST = 'herald_cluster_publishes_lost_total';
const BAD = 'herald_cluster_bad_messages_total';
const V1_SKIPPED = 'herald_dropped_total{reason="binary_to_v1"}';

function binaryPush(node, topic, event, body) {
  return h.request(node.port, 'POST', `/api/push?channel=${encodeURIComponent(topic)}&event=${encodeURIComponent(event)}`,
    { body, headers: { 'content-type': 'application/octet-stream' } });
}

const { linkUp, numsubIs } = c;

// Bytes 0..255 (0x00 and 0xff included), then `n` more from a fixed
// sequence, 0x00 and 0xff runs among them.
function bytesOf(n) {
  const b = Buffer.alloc(256 + n);
  for (let i = 0; i < 256; i++) b[i] = i;
  let x = 0x12345678;
  for (let i = 256; i < b.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = i % 1000 < 8 ? 0 : i % 1000 < 16 ? 0xff : x >>> 24;
  }
  return b;
}

test('a binary push on node A reaches phoenix.js on node B byte for byte; V1 on B skips it', { timeout: 60000 }, async (t) => {
  const redis = await c.startRedis(t);
  const [a, b] = await c.startNodes(t, 2, { redis });
  await linkUp([a, b]);
  const topic = 'bin:cluster';
  const events = ['blob', 'msg'];
  const sb = await c.subscribe(t, b.port, topic, { events });
  const sa = await c.subscribe(t, a.port, topic, { events });
  const v1 = await h.rawWs(b.port, '/socket/websocket'); // (no vsn: V1)
  c.defer(t, () => v1.end());
  v1.sendText({ topic, event: 'phx_join', payload: {}, ref: '1' });
  assert.equal((await v1.nextJson()).payload.status, 'ok');
  const tap = await redis.subscriber(t, c.topicChannel(topic));
  await numsubIs(redis, topic, 3); // A, B and the tap

  const pushes = [bytesOf(0), bytesOf(100 * 1024), Buffer.alloc(0), Buffer.from([0xff, 0, 0x82, 0x0a, 0])];
  assert.ok(pushes[1].length > 65536);
  const before = { a: await a.metrics(), b: await b.metrics() };
  for (const body of pushes) {
    const r = await binaryPush(a, topic, 'blob', body);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: [topic], bytes: body.length, event: 'blob' });
  }
  const marker = await h.push(a.port, { channel: topic, event: 'marker', data: 1 });
  assert.equal(marker.status, 200, marker.body);
  const isMarker = (m) => m.event === 'msg' && m.payload.event === 'marker';
  await Promise.all([sb, sa].map((s) => s.until(isMarker, 'the marker after the binary pushes')));

  for (const [name, s] of [['B', sb], ['A', sa]]) {
    const got = s.got.filter((m) => m.event === 'blob').map((m) => m.payload);
    assert.equal(got.length, pushes.length, `node ${name}'s subscriber got each binary push once`);
    for (const [i, p] of got.entries()) {
      assert.ok(p instanceof ArrayBuffer, `push ${i} on ${name}: not an ArrayBuffer: ${Object.prototype.toString.call(p)}`);
      assert.ok(Buffer.from(p).equals(pushes[i]), `push ${i} on ${name}: ${p.byteLength} bytes, want the ${pushes[i].length} sent`);
    }
    assert.equal(s.got.length, pushes.length + 1, `nothing else on ${name}`);
    assert.ok(isMarker(s.got[pushes.length]), `the marker came last on ${name}`);
  }

  // The V1 socket on B got none of them: its next frame is the marker.
  const next = await v1.next();
  assert.equal(next.opcode, 1);
  assert.equal(JSON.parse(next.payload).payload.event, 'marker');

  // What went through Redis: one b1 message per binary push, then the h1 marker.
  const id = (await a.status()).cluster.node;
  for (const body of pushes) {
    const head = Buffer.from(`b1 ${id} 4\nblob`);
    const bcast = Buffer.concat([Buffer.from([2, Buffer.byteLength(topic), 4]), Buffer.from(topic + 'blob'), body]);
    const wire = await tap.next();
    assert.ok(wire.equals(Buffer.concat([head, bcast])),
      `the b1 message: ${JSON.stringify(wire.slice(0, 60).toString('latin1'))}... (${wire.length} bytes)`);
  }
  assert.match((await tap.next()).toString('utf8'), new RegExp(`^h1 ${id} 6\nmarker\\[`));

  const after = { a: await a.metrics(), b: await b.metrics() };
  const d = (n, k) => after[n][k] - before[n][k];
  assert.equal(d('a', OUT), pushes.length + 1, 'A sent one PUBLISH per push');
  assert.equal(d('b', IN), pushes.length + 1, 'B took in each push once');
  assert.equal(d('a', IN), 0, 'A dropped its own');
  assert.equal(d('b', OUT), 0);
  assert.equal(d('a', LOST), 0);
  assert.equal(d('b', BAD), 0);
  assert.equal(d('b', V1_SKIPPED), pushes.length, 'B counted the binary pushes its V1 subscriber skipped');
  assert.equal(d('a', V1_SKIPPED), 0);
});

test('a binary push on a node with no subscriber of the topic still reaches the other node', { timeout: 60000 }, async (t) => {
  const redis = await c.startRedis(t);
  const [a, b] = await c.startNodes(t, 2, { redis });
  await linkUp([a, b]);
  const topic = 'bin:elsewhere';
  const sb = await c.subscribe(t, b.port, topic, { events: ['blob'] });
  await numsubIs(redis, topic, 1); // B only
  const body = Buffer.from([0, 1, 0xfe, 0xff, 0]);
  const r = await binaryPush(a, topic, 'blob', body);
  assert.equal(r.status, 200, r.body);
  const m = await sb.until((x) => x.event === 'blob', 'the binary push from A');
  assert.ok(Buffer.from(m.payload).equals(body));
  // And a malformed b1 of another publisher on the channel is counted bad,
  // not delivered: the next good one is.
  const before = await b.metrics();
  await redis.cli('PUBLISH', c.topicChannel(topic), 'b1 elsewhere 4\nblobnot a broadcast');
  const good = Buffer.concat([Buffer.from('b1 elsewhere 4\nblob'), Buffer.from([2, topic.length, 4]), Buffer.from(topic + 'blob!')]);
  await redis.cli('PUBLISH', c.topicChannel(topic), good.toString('latin1'));
  const m2 = await sb.until((x) => x.event === 'blob' && x !== m, 'the good foreign b1 message');
  assert.deepEqual([...Buffer.from(m2.payload)], [...Buffer.from('!')]);
  assert.equal(sb.got.length, 2);
  assert.equal((await b.metrics())[BAD] - before[BAD], 1);
});
