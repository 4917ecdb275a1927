'use strict';
// How much a poll forwarded across nodes adds: two herald nodes on a
// redis-server of this script's own (a free 127.0.0.1 port, stopped by its
// PID at the end), one LongPoll session opened on node A and joined to a
// topic; then ROUNDS times: a poll held through node X, a push published
// on A, the time from the push's request to the poll's answer. X is A
// (direct) and B (forwarded through Redis to A and back), alternating
// round by round. Prints one JSON line with the medians and p99s.
//
//   node tests/load/lp-forward-bench.js [ROUNDS]     (default 400; HERALD_BIN as the tests)
//
// Bounded: ROUNDS at most 5000, every request has a deadline, the whole
// run at most 120 s.
const h = require('../integration/lib/harness');
const c = require('../integration/lib/cluster');

const ROUNDS = Math.min(Number(process.argv[2]) || 400, 5000);
const LP = '/socket/longpoll?vsn=2.0.0';
const NDJSON = { 'content-type': 'application/x-ndjson' };

const cleanups = [];
const t = { after: (fn) => cleanups.push(fn) }; // (what lib/cluster registers, run at the end, last first)

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return Number(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))].toFixed(3));
};

async function main() {
  const deadline = setTimeout(() => { console.error('lp-forward-bench: over 120 s'); process.exit(2); }, 120000);
  const redis = await c.startRedis(t);
  const [a, b] = await c.startNodes(t, 2, { redis, config: 'longpoll = { poll_ms = 10000 }\n' });
  await c.linkUp([a, b]);
  const token = (await h.request(a.port, 'GET', LP)).json.token;
  const q = `${LP}&token=${encodeURIComponent(token)}`;
  await h.request(a.port, 'POST', q, { body: JSON.stringify(['1', '1', 'bench:lp', 'phx_join', {}]), headers: NDJSON });
  await h.request(a.port, 'GET', q); // the join's reply
  const times = { direct: [], forwarded: [] };
  for (let i = 0; i < ROUNDS; i++) {
    const via = i % 2 ? b : a;
    const heldBefore = h.metricSum(await a.metrics(), 'herald_longpoll_polls_total');
    const poll = h.request(via.port, 'GET', q, { ms: 15000 });
    // (the poll is held on A once A has counted it)
    await c.waitFor(async () => h.metricSum(await a.metrics(), 'herald_longpoll_polls_total') > heldBefore, 'the poll held', 5000);
    const t0 = process.hrtime.bigint();
    const pushed = h.push(a.port, { channel: 'bench:lp', event: 'n', data: i });
    const r = await poll;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    await pushed;
    if (r.json.status !== 200 || r.json.messages.length !== 1) throw new Error(`round ${i}: ${r.body}`);
    times[i % 2 ? 'forwarded' : 'direct'].push(ms);
  }
  const out = { scenario: 'lp-forward', rounds: ROUNDS };
  for (const [k, xs] of Object.entries(times)) {
    out[`${k}_p50_ms`] = pct(xs, 50);
    out[`${k}_p99_ms`] = pct(xs, 99);
  }
  const [ma, mb] = [await a.metrics(), await b.metrics()];
  out.forwarded_out = h.metricSum(mb, 'herald_longpoll_forwarded_total{direction="out"}');
  out.sessions_opened = h.metricSum(ma, 'herald_longpoll_sessions_opened_total') + h.metricSum(mb, 'herald_longpoll_sessions_opened_total');
  console.log(JSON.stringify(out));
  clearTimeout(deadline);
}

main().then(async () => {
  while (cleanups.length) await cleanups.pop()();
}, async (e) => {
  console.error('lp-forward-bench:', e.message);
  while (cleanups.length) await cleanups.pop()().catch(() => {});
  process.exit(1);
});
