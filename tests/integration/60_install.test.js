'use strict';
// `make install` (issue 16): installs into a temporary DESTDIR (nothing
// outside it is written but the build directory's own files), then runs the
// installed binary with the installed config on a free loopback port and
// checks /healthz, /readyz and a publish reaching a phoenix.js client; the
// installed files are the sources' bytes; the systemd unit's settings, and
// `systemd-analyze verify` on it where that tool exists.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..', '..');
const BUILT = path.resolve(process.env.HERALD_BIN || path.join(ROOT, 'build', 'herald'));
const BUILD_DIR = path.dirname(BUILT);
const DEST = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-destdir-'));
const PREFIX = '/usr/local';
const INST = path.join(DEST, PREFIX);
const TOKEN = 'install-test-token';

// The harness runs $HERALD_BIN: the installed binary, for this file. Its
// config listens where HERALD_HOST and HERALD_PORT say (examples/herald.lua).
process.env.HERALD_BIN = path.join(INST, 'bin', 'herald');
process.env.HERALD_HOST = '127.0.0.1';
process.env.HERALD_PORT = '0';
process.env.HERALD_API_TOKEN = TOKEN;
const h = require('./lib/harness');

test.after(() => fs.rmSync(DEST, { recursive: true, force: true }));

// The environment of a make started from here: without the make that may
// have started ctest (its jobserver descriptors are not ours).
function cleanEnv(extra = {}) {
  const env = { ...process.env, ...extra };
  for (const k of ['MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKE_TERMOUT', 'MAKE_TERMERR']) delete env[k];
  return env;
}

function which(tool) {
  for (const dir of (process.env.PATH || '').split(':')) {
    const f = path.join(dir, tool);
    try { fs.accessSync(f, fs.constants.X_OK); return f; } catch { /* next */ }
  }
  return null;
}

const same = (a, b) => assert.ok(fs.readFileSync(a).equals(fs.readFileSync(b)), `${a} is not a copy of ${b}`);

test('make install into a DESTDIR, then the installed herald on the installed config', async (t) => {
  if (!fs.existsSync(path.join(BUILD_DIR, 'CMakeCache.txt'))) {
    t.skip(`${BUILT} is not in a CMake build directory: nothing to install from`);
    return;
  }
  const r = spawnSync('make', ['-s', 'install', `BUILD=${BUILD_DIR}`, `DESTDIR=${DEST}`], {
    cwd: ROOT, env: cleanEnv(), encoding: 'utf8', timeout: 300000,
  });
  assert.equal(r.status, 0, `make install failed:\n${r.stdout}\n${r.stderr}`);

  await t.test('what was installed is what is under DESTDIR (install_manifest.txt)', () => {
    // The manifest names the files as they will be seen (without DESTDIR).
    const manifest = fs.readFileSync(path.join(BUILD_DIR, 'install_manifest.txt'), 'utf8').split('\n').filter(Boolean);
    assert.ok(manifest.length > 10, manifest.join('\n'));
    const under = [];
    const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) (e.isDirectory() ? walk : (x) => under.push(x))(path.join(d, e.name)); };
    walk(DEST);
    assert.deepEqual(under.map((f) => f.slice(DEST.length)).sort(), [...manifest].sort());
    for (const f of manifest) assert.ok(f.startsWith(PREFIX + '/'), `${f} is outside PREFIX ${PREFIX}`);
  });

  await t.test('the binary, the Lua modules, the plugins, the examples, the config, the docs', () => {
    const bin = path.join(INST, 'bin', 'herald');
    fs.accessSync(bin, fs.constants.X_OK);
    const v = spawnSync(bin, ['version'], { encoding: 'utf8' });
    assert.equal(v.status, 0);
    assert.equal(v.stdout, spawnSync(BUILT, ['version'], { encoding: 'utf8' }).stdout);
    assert.match(v.stdout, /^herald \d+\.\d+\.\d+/);
    const luaDir = path.join(ROOT, 'lua', 'herald');
    const lua = fs.readdirSync(luaDir).filter((f) => f.endsWith('.lua'));
    assert.ok(lua.includes('config.lua') && lua.includes('init.lua'), lua.join(' '));
    for (const f of lua) same(path.join(INST, 'share', 'herald', 'lua', 'herald', f), path.join(luaDir, f));
    const plugins = fs.readdirSync(path.join(ROOT, 'plugins')).filter((f) => f.endsWith('.lua'));
    assert.ok(plugins.includes('jwt.lua'), plugins.join(' '));
    for (const f of [...plugins, 'README.md']) same(path.join(INST, 'share', 'herald', 'plugins', f), path.join(ROOT, 'plugins', f));
    for (const f of ['herald.lua', 'pushex.lua', 'herald.service', 'grafana.json', 'README.md'])
      same(path.join(INST, 'share', 'herald', 'examples', f), path.join(ROOT, 'examples', f));
    same(path.join(INST, 'etc', 'herald', 'herald.lua'), path.join(ROOT, 'examples', 'herald.lua'));
    same(path.join(INST, 'share', 'doc', 'herald', 'README.md'), path.join(ROOT, 'README.md'));
    same(path.join(INST, 'share', 'doc', 'herald', 'migrating-from-pushex.md'), path.join(ROOT, 'docs', 'migrating-from-pushex.md'));
  });

  await t.test('a second make install keeps an operator\'s config', () => {
    const cfg = path.join(INST, 'etc', 'herald', 'herald.lua');
    const edited = fs.readFileSync(cfg, 'utf8') + '-- edited by the operator\n';
    fs.writeFileSync(cfg, edited);
    const again = spawnSync('make', ['-s', 'install', `BUILD=${BUILD_DIR}`, `DESTDIR=${DEST}`], {
      cwd: ROOT, env: cleanEnv(), encoding: 'utf8', timeout: 300000,
    });
    assert.equal(again.status, 0, again.stderr);
    assert.equal(fs.readFileSync(cfg, 'utf8'), edited);
    assert.match(again.stdout, /Kept: .*etc\/herald\/herald\.lua/);
  });

  await t.test('herald check accepts the installed config', () => {
    const c = spawnSync(path.join(INST, 'bin', 'herald'), ['check', path.join(INST, 'etc', 'herald', 'herald.lua')], { encoding: 'utf8' });
    assert.equal(c.status, 0, c.stdout + c.stderr);
  });

  await t.test('the installed binary serves /healthz, /readyz and a publish on the installed config', async (st) => {
    const srv = await h.startHerald('', {}, { args: ['-c', path.join(INST, 'etc', 'herald', 'herald.lua')] });
    st.after(() => h.finish(srv));
    assert.match(srv.log, new RegExp(`starting with ${path.join(INST, 'etc', 'herald', 'herald.lua').replace(/[.]/g, '\\.')}`));
    const hz = await h.request(srv.port, 'GET', '/healthz');
    assert.equal(hz.status, 200);
    assert.deepEqual(hz.json, { status: 'ok' });
    assert.equal((await h.request(srv.port, 'GET', '/readyz')).status, 200);

    const socket = h.phoenixSocket(srv.port, { reconnectAfterMs: () => 60000 }, '/push_socket');
    st.after(() => socket.disconnect());
    await h.connect(socket);
    const ch = socket.channel('room:install');
    await h.join(ch);
    const got = h.nextEvent(ch, 'msg');
    const denied = await h.push(srv.port, { channel: 'room:install', event: 'e', data: 1 });
    assert.equal(denied.status, 403, 'api.token comes from HERALD_API_TOKEN: no bearer, no push');
    const ok = await h.push(srv.port, { channel: 'room:install', event: 'hello', data: { n: 1 } },
      { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` });
    assert.equal(ok.status, 200, ok.body);
    assert.deepEqual(ok.json, { channel: ['room:install'], data: { n: 1 }, event: 'hello' });
    assert.deepEqual(await got, { event: 'hello', data: { n: 1 } });
  });

  const unitFile = path.join(INST, 'lib', 'systemd', 'system', 'herald.service');
  await t.test('the systemd unit: paths for the prefix, simple, SIGTERM, a stop timeout above the drain budget', () => {
    const unit = fs.readFileSync(unitFile, 'utf8');
    const settings = {};
    for (const line of unit.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line);
      if (m) settings[m[1]] = m[2];
    }
    assert.equal(settings.ExecStart, `${PREFIX}/bin/herald -c ${PREFIX}/etc/herald/herald.lua`);
    assert.equal(settings.EnvironmentFile, `-${PREFIX}/etc/herald/herald.env`);
    // herald never calls sd_notify, so Type=notify would time out.
    assert.doesNotMatch(fs.readFileSync(path.join(ROOT, 'core', 'main.c'), 'utf8'), /sd_notify|NOTIFY_SOCKET/);
    assert.equal(settings.Type, 'simple');
    assert.equal(settings.KillSignal, 'SIGTERM');
    assert.equal(settings.Restart, 'on-failure');
    assert.ok(settings.User && settings.User !== 'root', `User=${settings.User}`);
    const schema = fs.readFileSync(path.join(ROOT, 'lua', 'herald', 'config.lua'), 'utf8');
    const drainMs = Number(/drain = \{\s*timeout_ms = \{ (\d+),/.exec(schema)[1]);
    assert.equal(drainMs, 30000);
    assert.ok(Number(settings.TimeoutStopSec) * 1000 > drainMs, `TimeoutStopSec=${settings.TimeoutStopSec} vs drain.timeout_ms ${drainMs}`);
    assert.ok(Number(settings.LimitNOFILE) > 100000 + 64 + 1024, `LimitNOFILE=${settings.LimitNOFILE}`);
  });

  await t.test('systemd-analyze verify accepts the unit', (st) => {
    const tool = which('systemd-analyze');
    if (!tool) { st.skip('systemd-analyze is not installed: the unit is not verified'); return; }
    // The unit as installed, its paths pointed into DESTDIR: verify checks
    // that ExecStart's binary exists.
    const copy = path.join(DEST, 'herald.service');
    fs.writeFileSync(copy, fs.readFileSync(unitFile, 'utf8').replaceAll(`${PREFIX}/`, `${INST}/`));
    const v = spawnSync(tool, ['verify', copy], { encoding: 'utf8' });
    assert.equal(v.status, 0, v.stdout + v.stderr);
    assert.equal(v.stderr.trim(), '', v.stderr);
  });
});
