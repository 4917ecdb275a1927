// The clients' side of scripts/demo-recovery.sh (which starts Redis and
// the nodes, and restarts them): the test balancer in front of the nodes,
// N phoenix.js clients with examples/recovery.js on one topic, and a
// publisher numbering messages through the balancer
// (tests/integration/lib/recovery.js). Talks to the script by lines:
//
//   out: "joined <n>"              every client joined
//   in:  "away <port>"             the node on port is about to restart:
//                                  the balancer stops using it
//   in:  "up <port>"               it is back: used again once /readyz is 200
//   out: "back <n>"                every client is subscribed again
//   in:  "finish"                  stop publishing, count, print, exit
//
// Exit status 0 when no client lost or got twice a message, else 1.
'use strict';
const readline = require('node:readline');
const { execFile } = require('node:child_process');
const h = require('../tests/integration/lib/harness');
const { balancer } = require('../tests/integration/lib/balancer');
const r = require('../tests/integration/lib/recovery');

const [ports, redisPort, n] = [process.argv[2].split(',').map(Number), Number(process.argv[3]), Number(process.argv[4])];
const TOPIC = 'room:demo';

const cli = (...args) => new Promise((resolve, reject) => execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(redisPort), ...args],
  { timeout: 10000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))));
const subscribers = async (port) => {
  try { return (await h.request(port, 'GET', `/api/topics/${encodeURIComponent(TOPIC)}`)).json.subscribers; } catch { return 0; }
};
const everyone = async () => (await Promise.all(ports.map(subscribers))).reduce((a, b) => a + b, 0) === n;
const say = (line) => process.stdout.write(line + '\n');
const log = (line) => process.stderr.write(`demo: ${line}\n`);

async function main() {
  const lb = await balancer(ports.slice(), { rotate: true });
  const clients = [];
  for (let i = 0; i < n; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 50); j++) batch.push(r.recoveringClient(lb.port, [TOPIC]));
    clients.push(...await Promise.all(batch));
  }
  await h.eventually(everyone, 20000, `${n} subscribers`);
  log(`${n} clients joined ${TOPIC} through the balancer on port ${lb.port} (${(await Promise.all(ports.map(subscribers))).join(' + ')})`);
  const pub = r.publisher(lb.port, [TOPIC]);
  await pub.acknowledged(50);
  say(`joined ${n}`);

  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [cmd, arg] = line.trim().split(/\s+/);
    if (cmd === 'away') {
      const i = lb.backends.indexOf(Number(arg));
      if (i >= 0) lb.backends.splice(i, 1);
    } else if (cmd === 'up') {
      const port = Number(arg);
      await h.eventually(async () => (await h.request(port, 'GET', '/readyz').catch(() => ({}))).status === 200, 20000, `node ${port} ready`);
      lb.backends.push(port);
      lb.backends.sort((a, b) => ports.indexOf(a) - ports.indexOf(b));
      await h.eventually(everyone, 30000, `all ${n} clients back`);
      await pub.acknowledged(pub.acked[TOPIC].length + 50);
      log(`all ${n} clients back (${(await Promise.all(ports.map(subscribers))).join(' + ')}); ${pub.acked[TOPIC].length} messages acknowledged so far`);
      say(`back ${n}`);
    } else if (cmd === 'finish') {
      await pub.stop();
      const s = await r.readStream(cli, TOPIC);
      const problems = r.checkStream(s, pub.acked[TOPIC], pub.unknown);
      await Promise.all(clients.map((cl) => cl.on[TOPIC].reach(s.top).catch(() => {})));
      const k = r.tally(clients, { [TOPIC]: s });
      console.log(`clients:    ${n}`);
      console.log(`published:  ${pub.acked[TOPIC].length} acknowledged (${pub.retried.length} answered non-2xx and sent again, ${pub.unknown.length} unanswered); the stream in Redis holds ${s.entries.length}${problems.length ? ': ' + problems.join('; ') : ', each acknowledged one once, in order'}`);
      console.log(`received:   ${k.deliveries} of ${k.expected} expected (each client: every message after its first join)`);
      console.log(`lost:       ${k.lost}`);
      console.log(`duplicated: ${k.duplicated} (offsets sent twice on the wire: ${k.wireDup}; out of order: ${k.outOfOrder})`);
      console.log(`recovered:  ${k.recoveries} rejoins answered recovered: true; ${k.gaps} recovered: false`);
      for (const b of k.bad) console.log(`  client ${b.client}: ${JSON.stringify(b)}`);
      await r.disconnect(clients);
      await lb.close();
      const ok = !problems.length && !k.lost && !k.duplicated && !k.wireDup && !k.outOfOrder && k.deliveries === k.expected;
      process.exit(ok ? 0 : 1);
    }
  }
}

main().catch((e) => { log(e.stack || String(e)); process.exit(2); });
