#!/usr/bin/env node
// A minimal Node.js broadcast server built on the `ws` package, the baseline
// that scripts/bench-compare.sh measures herald against.
//
//   node tests/load/node-ws-server.js [PORT]      (PORT 0 or absent: ephemeral)
//
//   subscribe: ws://127.0.0.1:PORT/sub?topic=T[&topic=U...]
//   publish:   POST http://127.0.0.1:PORT/pub?topic=T   (the body is broadcast
//              as one text message to every socket subscribed to T; answer
//              200 {"subscribers":N})
//
// It prints "listening on http://127.0.0.1:PORT" once it accepts connections.
// Loopback only. `ws` is resolved the usual way (tests/node_modules, or
// tests/load/node_modules: see tests/load/package.json).
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 0);
const host = '127.0.0.1';
const maxBody = 1 << 20;

const topics = new Map(); // topic -> Set of sockets

function subscribe(ws, topic) {
  let set = topics.get(topic);
  if (!set) topics.set(topic, (set = new Set()));
  set.add(ws);
}

function unsubscribe(ws, names) {
  for (const t of names) {
    const set = topics.get(t);
    if (!set) continue;
    set.delete(ws);
    if (set.size === 0) topics.delete(t);
  }
}

function reply(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/pub') return reply(res, 404, { error: 'not found' });
  if (req.method !== 'POST') return reply(res, 405, { error: 'method not allowed' });
  const topic = url.searchParams.get('topic');
  if (!topic) return reply(res, 422, { error: 'topic required' });
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > maxBody) {
      reply(res, 413, { error: 'body too large' });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (size > maxBody) return;
    const body = Buffer.concat(chunks).toString('utf8');
    const set = topics.get(topic);
    let n = 0;
    if (set) {
      for (const ws of set) {
        if (ws.readyState === 1) {
          ws.send(body);
          n++;
        }
      }
    }
    reply(res, 200, { subscribers: n });
  });
});
server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  const names = url.searchParams.getAll('topic').filter(Boolean);
  if (url.pathname !== '/sub' || names.length === 0) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    for (const t of names) subscribe(ws, t);
    ws.on('close', () => unsubscribe(ws, names));
    ws.on('error', () => {});
  });
});

server.listen({ port, host, backlog: 4096 }, () => {
  console.log(`listening on http://${host}:${server.address().port}`);
});

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
