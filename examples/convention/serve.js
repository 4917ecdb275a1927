#!/usr/bin/env node
// examples/convention/serve.js: the convention's pages, on a loopback web server.
//
//   HERALD_JWT_SECRET=... node examples/convention/serve.js [--port 8080] [--herald-port 4000]
//
// Serves /admin.html, /vote.html, /tallies.js and /phoenix.js (the browser build from the
// `phoenix` npm package), and /session?name=...&role=participant|admin, which
// hands a page a JWT signed with HERALD_JWT_SECRET and herald's socket URL.
// /session stands in for the application's own login, which is what issues
// these tokens in real life: anyone who can reach it gets one, admins too,
// which is why this binds 127.0.0.1 only.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const HERE = __dirname;
const ROOT = path.resolve(HERE, '..', '..');

// The browser build of phoenix.js: priv/static/phoenix.js beside the
// package's main file (its "exports" do not list the browser build).
function phoenixJsPath() {
  const main = require.resolve('phoenix', { paths: [HERE, path.join(ROOT, 'tests')] });
  return path.join(path.dirname(main), 'phoenix.js');
}

function jwt(claims, secret) {
  const b64url = (b) => Buffer.from(b).toString('base64url');
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// An http.Server (not yet listening) for the pages. secret: the jwt
// plugin's; heraldPort: where the pages' socket connects, on the host the
// page was loaded from.
function createServer({ secret, heraldPort = 4000 }) {
  if (!secret) throw new Error('HERALD_JWT_SECRET is not set: the pages need tokens herald accepts');
  const files = {
    '/admin.html': ['text/html; charset=utf-8', path.join(HERE, 'admin.html')],
    '/vote.html': ['text/html; charset=utf-8', path.join(HERE, 'vote.html')],
    '/tallies.js': ['text/javascript', path.join(HERE, 'tallies.js')],
    '/phoenix.js': ['text/javascript', phoenixJsPath()],
  };
  let seq = 0;
  return http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET') return send(405, 'text/plain', 'GET only\n');
    if (url.pathname === '/') {
      return send(200, 'text/html; charset=utf-8',
        '<!doctype html><meta charset="utf-8"><title>Convention</title>' +
        '<p><a href="/vote.html">Participant</a> · <a href="/admin.html">Admin</a></p>');
    }
    if (url.pathname === '/session') {
      const role = url.searchParams.get('role') === 'admin' ? 'admin' : 'participant';
      const name = (url.searchParams.get('name') || '').slice(0, 60) || `Delegate ${++seq}`;
      const sub = role === 'admin' ? `admin:${crypto.randomBytes(4).toString('hex')}` : `web:${crypto.randomBytes(6).toString('hex')}`;
      const host = (req.headers.host || '127.0.0.1').replace(/:\d+$/, '');
      const token = jwt({ sub, name, role, exp: Math.floor(Date.now() / 1000) + 12 * 3600 }, secret);
      return send(200, 'application/json', JSON.stringify({ token, socket: `ws://${host}:${heraldPort}/socket`, id: sub, name }));
    }
    const f = files[url.pathname];
    if (!f) return send(404, 'text/plain', 'not found\n');
    fs.readFile(f[1], (err, body) => (err ? send(500, 'text/plain', `${err.message}\n`) : send(200, f[0], body)));
  });
}

module.exports = { createServer, phoenixJsPath, jwt };

if (require.main === module) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const port = Number(arg('--port', 8080));
  const heraldPort = Number(arg('--herald-port', process.env.HERALD_PORT || 4000));
  let server;
  try {
    server = createServer({ secret: process.env.HERALD_JWT_SECRET, heraldPort });
  } catch (e) {
    console.error(`serve.js: ${e.message}`);
    process.exit(2);
  }
  server.listen(port, '127.0.0.1', () => {
    const base = `http://127.0.0.1:${server.address().port}`;
    console.log(`convention pages for herald on port ${heraldPort}:\n  ${base}/vote.html   (a participant; open several)\n  ${base}/admin.html  (the chair)`);
  });
}
