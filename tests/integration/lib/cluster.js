// Cluster test helpers: a real redis-server (Debian's /usr/bin/redis-server)
// that the test starts itself on a free 127.0.0.1 port, herald nodes joined
// to it through the `cluster` config key, and phoenix.js subscribers that
// record what they receive.
//
// Everything started here is stopped by its own PID when the test ends, in
// the reverse order of starting (subscribers, then nodes, then Redis: a node
// drains while its Redis is still there). Nothing else is ever signalled.
// Waits are on events (a log line, an expected message) or bounded polls of
// /metrics, /admin/status or redis-cli; never sleeps.
'use strict';
const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const h = require('./harness');

const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server';
const REDIS_CLI = process.env.REDIS_CLI || '/usr/bin/redis-cli';
const REDIS_READY = /Ready to accept connections/;

// Cleanup per test, run last-in first-out by one t.after hook (node:test
// runs t.after hooks first-in first-out, which would stop Redis before the
// nodes that use it). Every step runs even if an earlier one threw; the
// first error fails the test.
const stacks = new WeakMap();
function defer(t, fn) {
  let stack = stacks.get(t);
  if (!stack) {
    stack = [];
    stacks.set(t, stack);
    t.after(async () => {
      let first = null;
      while (stack.length) {
        try { await stack.pop()(); } catch (e) { first = first || e; }
      }
      if (first) throw first;
    });
  }
  stack.push(fn);
}

// Polls fn (sync or async) until it returns a truthy value, which it
// resolves with; rejects after timeoutMs naming `what` and the last value
// fn returned (or threw).
async function waitFor(fn, what = 'condition', timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) { last = e; }
    if (Date.now() > end) {
      const shown = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${shown})`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

// A TCP port on 127.0.0.1 that nothing listens on (the kernel's pick; freed
// at once, so the caller should bind it soon or use it as "unreachable").
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// redis-server on 127.0.0.1:port (a free port unless given), no
// persistence, in the foreground. Resolves with
//   { port, url, pid, log, start(), stop(), kill9(), restart(args), cli(...args), numsub(channel),
//     subscriber(t, channel) }
// stop() is SIGTERM (SIGKILL after a bounded wait), kill9() is SIGKILL, both
// by PID and both resolve once it has exited; restart() starts a new
// redis-server on the same port (after stop or kill9). cli() runs
// `redis-cli -h 127.0.0.1 -p port args...` and resolves with its stdout.
// With t, the server is stopped when the test ends. start: false returns
// the handle without starting it (for "Redis comes up later": call
// start(); the cleanup order is still that of this call). args: more
// redis-server arguments (config lines, e.g. ['--user', 'a', 'on', '>pw',
// '~*', '&*', '+@all']); restart(args) replaces them.
async function startRedis(t, { port, start = true, args = [] } = {}) {
  if (port === undefined) port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-redis-'));
  let proc = null;
  let exited = null;
  let log = '';
  const r = {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() { return proc && proc.pid; },
    get log() { return log; },
    get alive() { return !!proc && proc.exitCode === null && proc.signalCode === null; },
    args,
    async start() {
      if (r.alive) throw new Error('redis-server is already running');
      const from = log.length;
      proc = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--daemonize', 'no', '--dir', dir, ...r.args.map(String)], { stdio: ['ignore', 'pipe', 'pipe'] });
      const me = proc;
      exited = new Promise((resolve) => me.on('exit', (code, signal) => resolve({ code, signal })));
      me.on('error', () => {}); // a missing binary shows up as an exit
      let ready;
      const readyP = new Promise((resolve) => (ready = resolve));
      const onData = (d) => {
        log += d;
        if (process.env.HERALD_TEST_LOG) process.stderr.write(String(d).replace(/^(?=.)/gm, `[redis ${me.pid}] `));
        if (REDIS_READY.test(log.slice(from))) ready();
      };
      me.stdout.setEncoding('utf8');
      me.stderr.setEncoding('utf8');
      me.stdout.on('data', onData);
      me.stderr.on('data', onData);
      await h.within(Promise.race([
        readyP,
        exited.then((e) => { throw new Error(`redis-server exited (${JSON.stringify(e)}) before ready:\n${log.slice(from)}`); }),
      ]), 15000, `redis-server on port ${port} to be ready`);
      return r;
    },
    async stop() {
      if (!r.alive) return exited;
      const me = proc;
      me.kill('SIGTERM');
      const k = setTimeout(() => { if (me.exitCode === null && me.signalCode === null) me.kill('SIGKILL'); }, 10000);
      const e = await exited;
      clearTimeout(k);
      return e;
    },
    async kill9() {
      if (!r.alive) return exited;
      proc.kill('SIGKILL');
      return exited;
    },
    restart(newArgs) { if (newArgs) r.args = newArgs; return r.start(); },
    cli(...args) {
      return new Promise((resolve, reject) => {
        execFile(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(port), ...args.map(String)], { timeout: 10000 },
          (err, stdout, stderr) => (err ? reject(new Error(`redis-cli ${args.join(' ')}: ${err.message} ${stderr}`)) : resolve(stdout)));
      });
    },
    // A RESP connection of the test's own SUBSCRIBEd to channel (see
    // redisSubscriber); closed when the test ends (with t).
    async subscriber(t2, channel) {
      const sub = await redisSubscriber(port, channel);
      if (t2) defer(t2, () => sub.close());
      return sub;
    },
    // PUBSUB NUMSUB channel: the number of connections subscribed to it.
    async numsub(channel) {
      const lines = (await r.cli('PUBSUB', 'NUMSUB', channel)).trim().split('\n');
      if (lines.length !== 2 || lines[0] !== channel) throw new Error(`unexpected NUMSUB answer: ${JSON.stringify(lines)}`);
      return Number(lines[1]);
    },
  };
  if (t) defer(t, async () => { await r.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
  return start ? r.start() : r;
}

// Parses one RESP value at buf[pos]: returns [value, next pos] or null when
// incomplete. Simple strings and errors as strings, integers as numbers,
// bulk strings as Buffers, arrays as arrays.
function parseResp(buf, pos = 0) {
  if (pos >= buf.length) return null;
  const le = buf.indexOf('\r\n', pos);
  if (le < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.slice(pos + 1, le).toString('latin1');
  const next = le + 2;
  if (type === '+' || type === '-') return [type === '-' ? new Error(line) : line, next];
  if (type === ':') return [Number(line), next];
  if (type === '$') {
    const n = Number(line);
    if (n < 0) return [null, next];
    if (buf.length < next + n + 2) return null;
    return [buf.slice(next, next + n), next + n + 2];
  }
  if (type === '*') {
    const n = Number(line);
    const out = [];
    let p = next;
    for (let i = 0; i < n; i++) {
      const v = parseResp(buf, p);
      if (!v) return null;
      out.push(v[0]);
      p = v[1];
    }
    return [out, p];
  }
  throw new Error(`not RESP: ${JSON.stringify(buf.slice(pos, pos + 40).toString('latin1'))}`);
}

// A plain RESP connection to Redis on 127.0.0.1:port SUBSCRIBEd to
// channel; resolves once Redis confirmed the subscription with
// { next(ms) -> the next message's payload (a Buffer), close() }.
async function redisSubscriber(port, channel) {
  const s = net.connect(port, '127.0.0.1');
  const inbox = new h.Inbox();
  let buf = Buffer.alloc(0);
  let confirmed;
  const subscribed = new Promise((resolve) => (confirmed = resolve));
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const v = parseResp(buf);
      if (!v) break;
      buf = buf.slice(v[1]);
      const [kind, , payload] = v[0];
      if (String(kind) === 'subscribe') confirmed();
      else if (String(kind) === 'message') inbox.push(payload);
    }
  });
  s.on('error', () => {});
  s.on('close', () => inbox.end('the Redis connection closed'));
  const ch = Buffer.from(channel);
  s.write(Buffer.concat([Buffer.from(`*2\r\n$9\r\nSUBSCRIBE\r\n$${ch.length}\r\n`), ch, Buffer.from('\r\n')]));
  await h.within(subscribed, 10000, `SUBSCRIBE ${channel}`);
  return {
    next: (ms = 10000) => inbox.next(ms, `a message on ${channel}`),
    close: () => new Promise((resolve) => { if (s.destroyed) resolve(); else { s.once('close', resolve); s.destroy(); } }),
  };
}

// The Redis channel of a topic (the cluster contract).
function topicChannel(topic) { return `herald:t:{${topic}}`; }

// Waits until herald_cluster_link_up{shard="0"} is `want` on every node.
async function linkUp(nodes, want = 1, ms = 15000) {
  const UP = 'herald_cluster_link_up{shard="0"}';
  await Promise.all(nodes.map((n) => waitFor(async () => (await n.metrics())[UP] === want,
    `${UP} == ${want} on node ${n.port}`, ms)));
}

// Waits until n connections are SUBSCRIBEd to the topic's channel.
const numsubIs = (redis, topic, n, ms = 10000) =>
  waitFor(async () => (await redis.numsub(topicChannel(topic))) === n, `NUMSUB ${topicChannel(topic)} == ${n}`, ms);

function luaString(s) { return JSON.stringify(String(s)); } // a JSON string is a valid Lua string here

// Starts n herald nodes, each on its own port, each with
//   cluster = { redis = <url>, <cluster> }
// followed by `config` (Lua text). redis: a startRedis handle, a URL, a
// port, a list of those (shards), or null for no cluster key at all.
// files: { name: text } written beside each node's config (scripts).
// Resolves with a list of node handles:
//   { srv, port, url, pid, log, stop(), kill9(), status(), metrics(), readyz(), topic(t) }
// Nodes are stopped when the test ends; the test then fails if one logged an
// [error] line (unless allowErrors) or did not exit 0 after SIGTERM (unless
// it was killed with kill9()).
async function startNodes(t, n, { redis, cluster = '', config = '', files = {}, allowErrors = false } = {}) {
  const urlOf = (x) => (typeof x === 'number' ? `redis://127.0.0.1:${x}` : typeof x === 'string' ? x : x.url);
  let text = config;
  if (redis !== null && redis !== undefined) {
    const urls = Array.isArray(redis) ? `{ ${redis.map((x) => luaString(urlOf(x))).join(', ')} }` : luaString(urlOf(redis));
    text = `cluster = { redis = ${urls}${cluster ? `, ${cluster}` : ''} }\n${config}`;
  }
  const started = await Promise.allSettled(Array.from({ length: n }, () => h.startHerald(text, files)));
  const nodes = [];
  for (const s of started) {
    if (s.status !== 'fulfilled') continue;
    const srv = s.value;
    const node = {
      srv,
      port: srv.port,
      url: srv.url,
      get pid() { return srv.proc.pid; },
      get log() { return srv.log; },
      stop: () => srv.stop(),
      kill9: () => srv.kill9(),
      async status() {
        const r = await h.request(srv.port, 'GET', '/admin/status');
        if (r.status !== 200 || !r.json) throw new Error(`GET /admin/status: ${r.status} ${r.body}`);
        return r.json;
      },
      metrics: () => h.metrics(srv.port),
      async readyz() { return (await h.request(srv.port, 'GET', '/readyz')).status; },
      async topic(name) { return (await h.request(srv.port, 'GET', `/api/topics/${encodeURIComponent(name)}`)).json; },
    };
    nodes.push(node);
    defer(t, () => h.finish(srv, { allowErrors }));
  }
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) throw failed.reason;
  return nodes;
}

// A phoenix.js client on port joined to topic, recording every message of
// `events` as { event, payload } in `got`. until(pred) resolves with the
// first recorded message matching pred (already there or still to come);
// joinReply is the join's reply. Disconnected when the test ends.
async function subscribe(t, port, topic, { events = ['msg'], params } = {}) {
  const socket = h.phoenixSocket(port, { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 });
  const got = [];
  const waiters = [];
  const c = {
    socket, got, topic,
    until(pred, what = 'a matching message', ms = 10000) {
      const hit = got.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`timed out after ${ms} ms waiting for ${what} on ${topic} via port ${port}; got ${JSON.stringify(got)}`));
          }
        }, ms).unref();
      });
    },
    leave() { return h.leave(c.channel); },
  };
  defer(t, () => h.within(new Promise((r) => socket.disconnect(r)), 10000, 'the phoenix socket to close').catch(() => {}));
  await h.connect(socket);
  c.channel = socket.channel(topic, params);
  for (const event of events) {
    c.channel.on(event, (payload) => {
      const m = { event, payload };
      got.push(m);
      for (const w of waiters.slice()) if (w.pred(m)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(m); }
    });
  }
  c.joinReply = await h.join(c.channel);
  return c;
}

module.exports = {
  defer, waitFor, freePort, startRedis, redisSubscriber, parseResp, topicChannel, linkUp, numsubIs, startNodes, subscribe,
};
