'use strict';
// docs/migrating-from-pushex.md (issue 16): every Herald snippet in the
// guide runs. Fenced blocks are marked by their info string:
//   ```lua herald-config name=F [start]   a config: `herald check`, and with
//                                         `start` served and exercised here
//   ```lua herald-hooks name=F            a hook script the configs name
//   ```sh run                             run with bash and curl against the
//                                         served herald.lua; its `# ` lines are
//                                         what it prints (JSON: the fields shown)
//   ```js run name=F                      run with node against it
//   ```elixir                             PushEx's side, not run
// Any other block fails the test, and so does a started config that this
// file has no exercise for. `localhost:4000` in a snippet is the test's
// server, and a config's `listen` line is replaced by a loopback one on a
// free port; nothing else is changed.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const h = require('./lib/harness');

const GUIDE = path.join(h.ROOT, 'docs', 'migrating-from-pushex.md');
const API_TOKEN = 'guide-api-token';
const JWT_SECRET = 'guide-jwt-secret';
process.env.HERALD_API_TOKEN = API_TOKEN;
process.env.HERALD_JWT_SECRET = JWT_SECRET;

// The fenced blocks of the guide: { lang, marks: Set, attrs: {name}, text, line }.
function blocks(md) {
  const out = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)```(.*)$/.exec(lines[i]);
    if (!open) continue;
    const indent = open[1].length;
    const [lang = '', ...words] = open[2].trim().split(/\s+/);
    const body = [];
    let j = i + 1;
    for (; j < lines.length && !/^ *```\s*$/.test(lines[j]); j++) body.push(lines[j].slice(Math.min(indent, /^ */.exec(lines[j])[0].length)));
    assert.ok(j < lines.length, `unclosed block at line ${i + 1}`);
    const attrs = {};
    const marks = new Set();
    for (const w of words) { const kv = /^(\w+)=(.*)$/.exec(w); if (kv) attrs[kv[1]] = kv[2]; else marks.add(w); }
    out.push({ lang, marks, attrs, text: body.join('\n') + '\n', line: i + 1 });
    i = j;
  }
  return out;
}

const ALL = blocks(fs.readFileSync(GUIDE, 'utf8'));
const kind = (b) => (b.lang === 'lua' && b.marks.has('herald-config') ? 'config'
  : b.lang === 'lua' && b.marks.has('herald-hooks') ? 'hooks'
    : b.lang === 'sh' && b.marks.has('run') ? 'sh'
      : b.lang === 'js' && b.marks.has('run') ? 'js'
        : b.lang === 'elixir' ? 'pushex' : 'unknown');
const of = (k) => ALL.filter((b) => kind(b) === k);
const named = (k, name) => { const b = of(k).find((x) => x.attrs.name === name); assert.ok(b, `no ${k} block named ${name} in the guide`); return b; };
const hookFiles = () => Object.fromEntries(of('hooks').map((b) => [b.attrs.name, b.text]));
const loopback = (cfg) => cfg.replace(/^listen\s*=.*$/m, 'listen = { host = "127.0.0.1", port = 0 }');
const ran = new Set();

// Resolves { code, stdout, stderr } of a command (no shell).
function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// Runs a `sh run` block against port and checks what it prints against its
// `# ` lines: a JSON line holds at least the fields shown, with their values.
async function runShell(b, port) {
  const script = b.text.replaceAll('localhost:4000', `127.0.0.1:${port}`);
  const r = await h.within(run('bash', ['-euo', 'pipefail', '-c', script]), 20000, `the snippet at line ${b.line}`);
  assert.equal(r.code, 0, `snippet at line ${b.line} failed:\n${r.stderr}`);
  const expected = b.text.split('\n').filter((l) => l.startsWith('# ')).map((l) => l.slice(2));
  const got = r.stdout.split('\n').filter(Boolean);
  assert.equal(got.length, expected.length, `snippet at line ${b.line} printed:\n${r.stdout}`);
  for (const [i, want] of expected.entries()) {
    let wantJson;
    try { wantJson = JSON.parse(want); } catch { wantJson = undefined; }
    if (wantJson === undefined || typeof wantJson !== 'object') { assert.equal(got[i], want); continue; }
    const gotJson = JSON.parse(got[i]);
    for (const [k, v] of Object.entries(wantJson)) assert.deepEqual(gotJson[k], v, `snippet at line ${b.line}: ${k} in ${got[i]}`);
  }
  ran.add(b);
}

function which(tool) {
  return (process.env.PATH || '').split(':').some((d) => { try { fs.accessSync(path.join(d, tool), fs.constants.X_OK); return true; } catch { return false; } });
}

test('the migration guide: every snippet runs', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-guide-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  await t.test('every block is a marked Herald snippet or PushEx\'s side', () => {
    const unknown = ALL.filter((b) => kind(b) === 'unknown');
    assert.deepEqual(unknown.map((b) => `line ${b.line}: \`\`\`${b.lang} ${[...b.marks].join(' ')}`), []);
    for (const k of ['config', 'hooks', 'sh', 'js', 'pushex']) assert.ok(of(k).length >= 1, `no ${k} block`);
    for (const b of [...of('config'), ...of('hooks'), ...of('js')]) assert.ok(b.attrs.name, `block at line ${b.line} has no name=`);
  });

  await t.test('herald check accepts every config, with the hook scripts beside it', async () => {
    for (const [name, text] of Object.entries(hookFiles())) fs.writeFileSync(path.join(dir, name), text);
    for (const b of of('config')) {
      const file = path.join(dir, b.attrs.name);
      fs.writeFileSync(file, b.text);
      const r = await run(h.BIN, ['check', file]);
      assert.equal(r.code, 0, `herald check ${b.attrs.name} (line ${b.line}):\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /: ok \(/);
      ran.add(b);
    }
  });

  // The exercises of the configs marked `start`, by name.
  const exercises = {
    // jwt plugin (socket_connect) + join.lua (channel_join), and then the
    // client, the backend's pushes, the deploy checks and the drain.
    async 'herald.lua'(st, b) {
      const srv = await h.startHerald(loopback(b.text), hookFiles());
      st.after(() => h.finish(srv));
      const token = (sub) => h.jwt({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET);

      await st.test('socket_connect: a JWT signed with the secret connects; none, or a wrong one, is 403', async (sst) => {
        for (const q of ['', `&token=${h.jwt({ sub: '42' }, 'another secret')}`]) {
          const out = (await h.rawExchange(srv.port, h.upgradeRequest(`/push_socket/websocket?vsn=2.0.0${q}`, 'dGhlIHNhbXBsZSBub25jZQ=='))).toString();
          assert.match(out, /^HTTP\/1\.1 403 /, out);
        }
        const s = h.phoenixSocket(srv.port, { params: { token: token('42') }, reconnectAfterMs: () => 60000 }, '/push_socket');
        st.after(() => s.disconnect());
        await h.connect(s);
        await sst.test('channel_join (join.lua): the own user topic and public ones; another user\'s refused', async () => {
          await h.join(s.channel('user:42'));
          await h.join(s.channel('public:news'));
          await assert.rejects(h.join(s.channel('user:7')), (e) => e.response.reason === 'unauthorized');
          await assert.rejects(h.join(s.channel('elsewhere')), (e) => e.response.reason === 'unauthorized');
        });
      });

      // The client snippet, left running while the shell snippets push.
      const js = named('js', 'client.js');
      const file = path.join(dir, js.attrs.name);
      fs.writeFileSync(file, js.text.replaceAll('localhost:4000', `127.0.0.1:${srv.port}`));
      const client = spawn(process.execPath, [file, token('42')], {
        stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_PATH: path.join(h.ROOT, 'tests', 'node_modules') },
      });
      const exited = once(client, 'exit');
      st.after(async () => { if (client.exitCode === null && client.signalCode === null) { client.kill('SIGTERM'); await exited; } });
      const lines = new h.Inbox();
      let out = '', err = '';
      client.stderr.on('data', (d) => (err += d));
      client.stdout.setEncoding('utf8');
      client.stdout.on('data', (d) => { out += d; let i; while ((i = out.indexOf('\n')) >= 0) { lines.push(out.slice(0, i)); out = out.slice(i + 1); } });
      exited.then(() => lines.end(`client.js exited: ${err}`));
      const prints = js.text.split('\n').map((l) => /^\/\/ prints: (.*)$/.exec(l)).filter(Boolean).map((m) => m[1]);
      assert.equal(prints[0], 'joined');
      assert.equal(await lines.next(10000, 'client.js to join'), 'joined');

      if (!which('curl')) throw new Error('curl is not installed (scripts/deps.sh installs it): the shell snippets cannot run');
      const shells = of('sh');
      const drain = shells.filter((s) => /\/admin\/drain/.test(s.text));
      assert.equal(drain.length, 1, 'one snippet drains, and it comes last');
      assert.equal(shells[shells.length - 1], drain[0]);
      for (const s of shells.slice(0, -1)) await runShell(s, srv.port);

      await st.test('the client got every push of the backend snippets, as it prints them', async () => {
        const got = [];
        for (let i = 1; i < prints.length; i++) got.push(await lines.next(10000, `client.js line ${i + 1}`));
        assert.deepEqual(got, prints.slice(1));
        ran.add(js);
      });

      await st.test('the drain snippet: herald drains and exits 0, the client is closed with 1012', async () => {
        const from = srv.log.length;
        await runShell(drain[0], srv.port);
        const r = await h.within(srv.exited, 30000, 'herald to exit after the drain');
        assert.deepEqual(r, { code: 0, signal: null });
        const log = srv.log.slice(from);
        for (const phase of ['announce', 'stop_accepting', 'http', 'flush', 'disconnect'])
          assert.match(log, new RegExp(`drain: phase ${phase} done`), log);
        assert.match(log, /\bstopped\b/);
        assert.equal(lines.items.length, 0, `client.js printed more: ${lines.items}`);
      });
    },

    // connect.lua (socket_connect decided by the backend) + join.lua.
    async 'hooks.lua'(st, b) {
      const seen = [];
      const backend = http.createServer((req, res) => {
        let body = '';
        req.on('data', (d) => (body += d));
        req.on('end', () => {
          seen.push({ method: req.method, url: req.url, type: req.headers['content-type'], body });
          const { token } = JSON.parse(body);
          res.setHeader('content-type', 'application/json');
          if (token === 'phoenix-token-of-42') res.end(JSON.stringify({ user_id: '42' }));
          else { res.statusCode = 403; res.end('{}'); }
        });
      });
      backend.listen(0, '127.0.0.1');
      await once(backend, 'listening');
      st.after(() => new Promise((r) => backend.close(r)));
      process.env.HERALD_BACKEND_URL = `http://127.0.0.1:${backend.address().port}`;
      const srv = await h.startHerald(loopback(b.text), hookFiles());
      st.after(() => h.finish(srv));

      await st.test('a token the backend vouches for connects as its user; others are 403 with the reason', async () => {
        for (const [q, reason] of [['', 'missing token'], ['&token=forged', 'unauthorized']]) {
          const out = (await h.rawExchange(srv.port, h.upgradeRequest(`/push_socket/websocket?vsn=2.0.0${q}`, 'dGhlIHNhbXBsZSBub25jZQ=='))).toString();
          assert.match(out, /^HTTP\/1\.1 403 /, out);
          assert.ok(out.includes(JSON.stringify({ error: reason })), out);
        }
        const s = h.phoenixSocket(srv.port, { params: { token: 'phoenix-token-of-42' }, reconnectAfterMs: () => 60000 }, '/push_socket');
        st.after(() => s.disconnect());
        await h.connect(s);
        assert.deepEqual(seen.at(-1), { method: 'POST', url: '/push/verify', type: 'application/json', body: '{"token":"phoenix-token-of-42"}' });
        assert.equal(seen.length, 2, 'the missing token never reached the backend');
        await h.join(s.channel('user:42'));
        await assert.rejects(h.join(s.channel('user:7')), (e) => e.response.reason === 'unauthorized');
        const ch = s.channel('public:scores');
        await h.join(ch);
        const got = h.nextEvent(ch, 'msg');
        const r = await h.push(srv.port, { channel: 'public:scores', event: 'goal', data: { home: 1 } },
          { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` });
        assert.equal(r.status, 200, r.body);
        assert.deepEqual(await got, { event: 'goal', data: { home: 1 } });
      });
    },
  };

  for (const b of of('config').filter((x) => x.marks.has('start'))) {
    assert.ok(exercises[b.attrs.name], `the guide starts ${b.attrs.name} (line ${b.line}) but this test has no exercise for it`);
    await t.test(`${b.attrs.name} served and exercised`, (st) => exercises[b.attrs.name](st, b));
    for (const name of Object.keys(hookFiles())) if (b.text.includes(`"${name}"`)) ran.add(named('hooks', name));
  }

  await t.test('every Herald snippet ran', () => {
    const notRun = ALL.filter((b) => kind(b) !== 'pushex' && !ran.has(b)).map((b) => `line ${b.line}: ${b.lang} ${[...b.marks].join(' ')} ${b.attrs.name || ''}`);
    assert.deepEqual(notRun, []);
  });
});
