// Herald's status page (GET /admin): plain JavaScript, no build step.
//
// Static parts come from GET /admin/status; the live figures are pushed
// once a second on the topic herald:status over the node's own WebSocket
// (Phoenix event "status"), so nothing here polls. The API token, when the
// node wants one, is typed in once, kept in sessionStorage (this tab only),
// and sent as "Authorization: Bearer" on fetches and in the status topic's
// join payload, never in a URL.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = 'herald.token';
  const POINTS = 60; // a minute of samples per chart
  const series = { joins: [], publishes: [] };
  let token = sessionStorage.getItem(KEY) || '';
  let socket = null;
  let channel = null;
  let adminPort = null; // the admin listener's port, when the node has one

  function headers() { return token ? { Authorization: 'Bearer ' + token } : {}; }

  async function api(method, path) {
    let r;
    try {
      r = await fetch(path, { method, headers: headers(), cache: 'no-store' });
    } catch (e) {
      return { status: 0, body: { error: String(e) } };
    }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    return { status: r.status, body };
  }

  function errorOf(r) { return (r.body && r.body.error) || (r.status ? 'HTTP ' + r.status : 'no answer'); }

  function badge(el, text, kind) {
    el.textContent = text;
    el.className = 'badge' + (kind ? ' ' + kind : '');
  }

  function showLogin(message) {
    $('main').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function cell(tr, text) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.appendChild(td);
  }

  function rows(tbody, list, columns) {
    tbody.replaceChildren();
    for (const item of list) {
      const tr = document.createElement('tr');
      for (const col of columns) cell(tr, col(item));
      tbody.appendChild(tr);
    }
  }

  function draw(canvas, values) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...values);
    ctx.strokeStyle = '#2f6fdd';
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / (POINTS - 1)) * w;
      const y = h - 2 - (v / max) * (h - 4);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = '#777';
    ctx.font = '10px sans-serif';
    ctx.fillText(String(Math.round(max * 100) / 100), 2, 10);
  }

  function sample(name, value) {
    const s = series[name];
    s.push(value);
    if (s.length > POINTS) s.shift();
    draw($(name + '-chart'), s);
  }

  // Renders what both /admin/status and the feed carry; the feed's own
  // fields (rates, totals, topics) only when present.
  function render(s) {
    $('node').textContent = s.node;
    badge($('state'), s.state, s.state === 'ready' ? 'ok' : s.state === 'draining' ? 'warn' : 'bad');
    $('phase').textContent = s.phase && s.phase !== 'none' ? 'drain phase: ' + s.phase : '';
    $('phase').hidden = !$('phase').textContent;
    $('connections').textContent = s.longpoll_sessions ? `${s.connections} + ${s.longpoll_sessions} long-poll` : s.connections;
    $('topics').textContent = s.topics;
    const sc = s.scripts || {};
    $('generation').textContent = sc.generation;
    $('reloads').textContent = sc.reloads ? `${sc.reloads.ok} ok, ${sc.reloads.failed} failed` : '–';
    const hooks = Object.entries(sc.hooks || {}).map(([k, n]) => (n > 1 ? `${k}×${n}` : k));
    $('hooks').textContent = hooks.length ? hooks.join(', ') : 'none';
    $('script-error').textContent = sc.last_error || 'none';
    $('script-error').className = sc.last_error ? 'error' : '';
    const cl = s.cluster;
    $('cluster').hidden = !cl;
    if (cl) {
      $('cluster-node').textContent = cl.node;
      $('cluster-out').textContent = cl.messages_out;
      $('cluster-in').textContent = cl.messages_in;
      $('cluster-lost').textContent = cl.lost;
      $('cluster-queued').textContent = cl.queued;
      rows($('cluster-shards'), cl.shards || [],
        [(x) => x.url, (x) => (x.up ? 'up' : 'down'), (x) => x.reconnects, (x) => x.topics]);
    }
    if ('joins' in s) {
      $('joins-rate').textContent = s.joins_per_s.toFixed(1);
      $('publishes-rate').textContent = s.publishes_per_s.toFixed(1);
      $('joins-total').textContent = s.joins;
      $('publishes-total').textContent = s.publishes;
      sample('joins', s.joins_per_s);
      sample('publishes', s.publishes_per_s);
      rows($('top-topics'), s.top_topics, [(x) => x.topic, (x) => x.subscribers]);
    }
  }

  function setLive(text, kind) { badge($('live'), text, kind); }

  function join() {
    if (channel) channel.leave();
    // Params as a function: read again at every rejoin (a new token).
    const ch = socket.channel('herald:status', () => (token ? { token } : {}));
    channel = ch;
    ch.on('status', (s) => { setLive('live', 'ok'); render(s); });
    ch.join()
      .receive('ok', () => setLive('live', 'ok'))
      .receive('error', (resp) => {
        const reason = (resp && resp.reason) || 'refused';
        setLive('feed refused: ' + reason, 'bad');
        ch.leave(); // no rejoin loop with a token that will not do
        if (channel === ch) channel = null;
        if (reason === 'unauthorized') showLogin('the status feed refused the token');
      });
  }

  // The WebSocket: this page's host, or, when the page came from the
  // admin listener (which serves no WebSocket), the public port.
  function connect(s) {
    if (socket) { if (!channel) join(); return; }
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const host = adminPort !== null ? location.hostname + ':' + s.websocket.port : location.host;
    const mount = s.websocket.path.replace(/\/websocket$/, '');
    socket = new Phoenix.Socket(scheme + host + mount, {});
    socket.onError(() => setLive('connection lost: reconnecting', 'warn'));
    socket.connect();
    join();
  }

  async function start() {
    const r = await api('GET', '/admin/status');
    if (r.status === 401 || r.status === 403) {
      showLogin(token ? 'the token was refused' : '');
      return;
    }
    if (r.status !== 200) {
      $('error').textContent = 'GET /admin/status: ' + errorOf(r);
      return;
    }
    $('error').textContent = '';
    $('login').hidden = true;
    $('main').hidden = false;
    adminPort = r.body.admin_port;
    render(r.body);
    connect(r.body);
  }

  async function refresh() {
    const r = await api('GET', '/admin/status');
    if (r.status === 200) render(r.body);
  }

  function result(text, kind) {
    $('action-result').textContent = text;
    $('action-result').className = kind === 'bad' ? 'error' : '';
  }

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value;
    $('token').value = '';
    sessionStorage.setItem(KEY, token);
    start();
  });

  $('reload').addEventListener('click', async () => {
    result('reloading…');
    const r = await api('POST', '/admin/reload');
    if (r.status === 200) result('Reloaded: generation ' + r.body.generation, 'ok');
    else result('Reload failed: ' + errorOf(r), 'bad');
    refresh();
  });

  // Drain asks twice: the first click arms the button for a few seconds.
  let armed = null;
  $('drain').addEventListener('click', async () => {
    if (!armed) {
      $('drain').textContent = 'Click again to drain';
      armed = setTimeout(() => { armed = null; $('drain').textContent = 'Drain node'; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    $('drain').textContent = 'Drain node';
    const r = await api('POST', '/admin/drain');
    if (r.status === 202) result('Draining: the node stops taking connections and will exit', 'ok');
    else result('Drain failed: ' + errorOf(r), 'bad');
  });

  $('presence-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const topic = $('presence-topic').value;
    const out = $('presence-out');
    const r = await api('GET', '/api/presence/' + encodeURIComponent(topic));
    out.replaceChildren();
    if (r.status !== 200) {
      const p = document.createElement('p');
      p.className = 'error';
      p.textContent = 'GET /api/presence: ' + errorOf(r);
      out.appendChild(p);
      return;
    }
    const keys = Object.keys(r.body);
    const p = document.createElement('p');
    p.id = 'presence-count';
    p.textContent = `${keys.length} present on ${topic}`;
    out.appendChild(p);
    const table = document.createElement('table');
    const tbody = document.createElement('tbody');
    tbody.id = 'presence-list';
    table.appendChild(tbody);
    rows(tbody, keys, [(k) => k, (k) => r.body[k].metas.length + ' connection(s)',
      (k) => JSON.stringify(r.body[k].metas.map(({ phx_ref, ...m }) => m))]);
    out.appendChild(table);
  });

  start();
})();
