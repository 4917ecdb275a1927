// A tiny TCP balancer for tests, on 127.0.0.1: each connection goes to the
// first backend that accepts it (a refused backend is skipped), so clients
// reconnecting after a node drains land on a node that is up. With
// { rotate: true } each connection starts one backend further than the
// last (round robin over the backends that accept).
'use strict';
const net = require('node:net');

function balancer(backends, { rotate = false } = {}) {
  const open = new Set();
  let turn = 0;
  const server = net.createServer((client) => {
    open.add(client);
    client.on('close', () => open.delete(client));
    client.pause();
    const order = backends.slice();
    if (rotate && order.length) order.push(...order.splice(0, turn++ % order.length));
    const attempt = () => {
      const port = order.shift();
      if (port === undefined) { client.destroy(); return; }
      const up = net.connect(port, '127.0.0.1');
      up.once('connect', () => {
        up.removeAllListeners('error');
        client.pipe(up).pipe(client);
        client.resume();
        up.on('error', () => client.destroy());
        client.on('error', () => up.destroy());
        up.on('close', () => client.destroy());
        client.on('close', () => up.destroy());
      });
      up.once('error', attempt);
    };
    attempt();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    backends, // mutable: the test replaces restarted nodes' ports
    close: () => new Promise((r) => { server.close(r); for (const c of open) c.destroy(); }),
    server,
  })));
}

module.exports = { balancer };
