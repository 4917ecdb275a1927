// History and recovery under load, shared by 52_cluster_recovery and
// scripts/demo-recovery.sh: phoenix.js clients with examples/recovery.js
// that record what they get, a publisher numbering its messages, the
// stream as Redis holds it, and the counts (lost, duplicated, ...) of
// every client against that stream.
'use strict';
const http = require('node:http');
const h = require('./harness');
const HeraldRecovery = require('../../../examples/recovery.js');

const FAST = { reconnectAfterMs: () => 20, rejoinAfterMs: () => 20 };

// A phoenix.js socket on port with a HeraldRecovery channel on each of
// topics, connected and joined (the caller disconnects it: disconnect()).
// Per topic, in cl.on[topic]: what the helper delivered ({n, offset} in
// got), the first join reply (first), the ok join replies after it
// (replies), the onRecovered and onGap counts, the offsets of the topic's
// "msg" frames as they came off the socket (frames: herald itself sends
// nothing twice), and log (frames' offsets and join replies in the order
// they came, to show what happened around a failure). cl.closes: the
// socket's close codes.
async function recoveringClient(port, topics, opts = {}) {
  const socket = h.phoenixSocket(port, FAST);
  const cl = { socket, closes: [], on: {} };
  socket.onClose((e) => cl.closes.push(e.code));
  for (const topic of topics) {
    const s = { got: [], frames: [], log: [], replies: new h.Inbox(), recovered: 0, gaps: 0, waiters: [] };
    const wake = () => { for (const w of s.waiters.slice()) if (w.done()) { s.waiters.splice(s.waiters.indexOf(w), 1); w.resolve(); } };
    s.ch = HeraldRecovery.channel(socket, topic, {
      ...opts,
      onMessage: (event, data, offset) => { s.got.push({ n: data && data.n, offset }); wake(); },
      onJoin: (reply) => { s.log.push({ reply }); s.replies.push(reply); },
      onRecovered: () => s.recovered++,
      onGap: () => s.gaps++,
    });
    const last = () => (s.got.length ? s.got[s.got.length - 1].offset : 0);
    const until = (done, ms, what) => (done() ? Promise.resolve()
      : h.within(new Promise((resolve) => s.waiters.push({ done, resolve })), ms, what));
    // Resolves once the helper has delivered the message of offset top.
    s.reach = (top, ms = 20000) => until(() => last() >= top, ms, `offset ${top} on ${topic} (at ${last()})`);
    // Resolves once the helper has delivered n messages.
    s.count = (n, ms = 10000) => until(() => s.got.length >= n, ms, `${n} messages on ${topic} (got ${s.got.length})`);
    cl.on[topic] = s;
  }
  socket.onMessage((m) => {
    const s = cl.on[m.topic];
    if (s && m.event === 'msg') { s.frames.push(m.payload.offset); s.log.push(m.payload.offset); }
  });
  socket.connect();
  for (const s of Object.values(cl.on)) s.ch.join();
  for (const [topic, s] of Object.entries(cl.on)) s.first = await s.replies.next(15000, `the join reply on ${topic}`);
  return cl;
}

// Disconnects the clients' sockets, all at once.
function disconnect(clients) {
  return Promise.all(clients.map((cl) =>
    h.within(new Promise((r) => cl.socket.disconnect(r)), 10000, 'the socket to close').catch(() => {})));
}

// The topic's stream as Redis holds it: { entries: [{offset, n}] in
// order, epoch, top } from XRANGE herald:h:{topic} and the meta hash
// herald:hm:{topic}. cli(...args) runs redis-cli and resolves with its
// output. Throws if an entry is not what herald stores.
async function readStream(cli, topic) {
  const entries = [];
  // --raw: each entry as five lines: "<offset>-0", "m", the message, "t", the time.
  const lines = (await cli('--raw', 'XRANGE', `herald:h:{${topic}}`, '-', '+')).split('\n').filter((l) => l !== '');
  if (lines.length % 5) throw new Error(`XRANGE of ${topic}: ${lines.length} lines`);
  for (let i = 0; i < lines.length; i += 5) {
    const id = /^(\d+)-0$/.exec(lines[i]);
    const msg = JSON.parse(lines[i + 2]);
    if (!id || lines[i + 1] !== 'm' || lines[i + 3] !== 't' || msg[4].offset !== Number(id[1]))
      throw new Error(`an entry of ${topic} that is not herald's: ${lines.slice(i, i + 5).join(' ')}`);
    entries.push({ offset: Number(id[1]), n: msg[4].data.n });
  }
  const [epoch, top] = (await cli('--raw', 'HMGET', `herald:hm:{${topic}}`, 'e', 'o')).trim().split('\n');
  return { entries, epoch, top: Number(top) };
}

// A publisher on port (POST /api/push, one request at a time, over a
// keep-alive connection): number n goes to topics[0], and every third also
// to topics[1]. An answer other than 2xx: the same number again; no answer
// at all (the connection broke): that number is unknown (stored or not)
// and the next one goes. paceMs between publishes (a steady rate, not a
// synchronisation). acked[topic]: the numbers answered 2xx, in order.
function publisher(port, topics, { paceMs = 8 } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const p = { acked: Object.fromEntries(topics.map((t) => [t, []])), retried: [], unknown: [], running: true };
  const post = (body) => new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/api/push', agent,
      headers: { 'content-type': 'application/json' } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve(e.code || e.message));
    req.end(JSON.stringify(body));
  });
  const loop = (async () => {
    let n = 1;
    while (p.running) {
      const channels = topics.length > 1 && n % 3 === 0 ? topics : [topics[0]];
      const status = await post({ channel: channels, event: 'n', data: { n } });
      if (typeof status === 'number' && status >= 200 && status < 300) {
        for (const ch of channels) p.acked[ch].push(n);
        n++;
      } else if (typeof status === 'number') {
        p.retried.push(status);
      } else {
        p.unknown.push({ n, error: status });
        n++;
      }
      await new Promise((r) => setTimeout(r, paceMs));
    }
  })();
  // Resolves once k numbers of topics[0] were acknowledged.
  p.acknowledged = (k, ms = 20000) => h.eventually(() => p.acked[topics[0]].length >= k, ms, `${k} acknowledged publishes`);
  p.stop = async () => { p.running = false; await loop; agent.destroy(); };
  return p;
}

// What a stream should hold: every acknowledged number once, in order, at
// offsets 1..top; a number never answered may be there, once. Returns the
// problems found (empty: none).
function checkStream(s, acked, unknown) {
  const problems = [];
  const offsets = s.entries.map((e) => e.offset);
  if (offsets.length !== s.top || offsets.some((o, i) => o !== i + 1)) problems.push(`offsets are not 1..${s.top}`);
  const maybe = new Set(unknown.map((u) => u.n));
  const ns = s.entries.map((e) => e.n);
  if (JSON.stringify(ns.filter((x) => !maybe.has(x))) !== JSON.stringify(acked))
    problems.push('the acknowledged numbers are not the stream\'s, once each, in order');
  if (ns.some((x, i) => i > 0 && x <= ns[i - 1])) problems.push('a number stored twice or out of order');
  return problems;
}

// Every client's deliveries against the streams (streams[topic] from
// readStream): each should have got exactly the stream after its first
// join's offset. Returns the counts and up to 5 clients that did not
// (with what happened around their first problem).
function tally(clients, streams) {
  const t = { clients: clients.length, deliveries: 0, expected: 0, lost: 0, duplicated: 0, outOfOrder: 0,
    wireDup: 0, recoveries: 0, gaps: 0, bad: [] };
  for (const [i, cl] of clients.entries()) {
    for (const [topic, s] of Object.entries(cl.on)) {
      const expect = streams[topic].entries.filter((e) => e.offset > s.first.offset);
      const seen = new Map();
      for (const g of s.got) seen.set(g.offset, (seen.get(g.offset) || 0) + 1);
      const lost = expect.filter((e) => !seen.has(e.offset)).length;
      const wire = s.frames.filter((o, k) => k > 0 && o <= s.frames[k - 1]).length;
      t.expected += expect.length;
      t.lost += lost;
      t.duplicated += s.got.length - seen.size;
      t.outOfOrder += s.got.filter((g, k) => k > 0 && g.offset <= s.got[k - 1].offset).length;
      t.wireDup += wire;
      t.recoveries += s.recovered;
      t.gaps += s.gaps;
      t.deliveries += s.got.length;
      const same = JSON.stringify(s.got.map((g) => [g.offset, g.n])) === JSON.stringify(expect.map((e) => [e.offset, e.n]));
      if (t.bad.length < 5 && (!same || s.gaps || wire)) {
        let at = s.log.findIndex((e, k) => typeof e === 'number' && s.log.slice(0, k).some((x) => typeof x === 'number' && x >= e));
        if (at < 0) at = s.log.length;
        t.bad.push({ client: i, topic, first: s.first, gaps: s.gaps, got: s.got.length, expected: expect.length, lost,
          around: s.log.slice(Math.max(0, at - 8), at + 3) });
      }
    }
  }
  return t;
}

module.exports = { FAST, recoveringClient, disconnect, readStream, publisher, checkStream, tally };
