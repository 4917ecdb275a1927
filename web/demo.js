// The demo page (GET / on the embedded default config): joins room:1 and
// shows every push. Host and port come from location, so it works on any
// port (HERALD_PORT) and behind a proxy.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const TOPIC = 'room:1';
  const base = location.protocol + '//' + location.host;
  const body = JSON.stringify({ channel: TOPIC, event: 'hello', data: { text: 'hi' } });
  $('curl').textContent = `curl -X POST ${base}/api/push -H 'content-type: application/json' -d '${body}'`;

  const ws = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/socket';
  $('ws-url').textContent = ws + '/websocket';
  // (LongPoll after 2.5 s without a WebSocket: proxies that break upgrades)
  const socket = new Phoenix.Socket(ws, { longPollFallbackMs: 2500 });
  socket.onOpen(() => { $('ws-url').textContent = ws + '/' + (socket.transport === Phoenix.LongPoll ? 'longpoll' : 'websocket'); });
  socket.onError(() => { $('state').textContent = 'connection lost: reconnecting'; $('state').className = 'badge warn'; });
  socket.connect();
  const channel = socket.channel(TOPIC, {});
  channel.on('msg', ({ event, data }) => {
    const li = document.createElement('li');
    li.textContent = `${event}: ${JSON.stringify(data)}`;
    $('log').appendChild(li);
  });
  channel.join()
    .receive('ok', () => { $('state').textContent = 'joined ' + TOPIC; $('state').className = 'badge ok'; })
    .receive('error', (r) => { $('state').textContent = 'join refused: ' + JSON.stringify(r); $('state').className = 'badge bad'; });

  $('send').addEventListener('click', async () => {
    const r = await fetch('/api/push', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    $('send-result').textContent = r.ok ? 'sent' : `refused: HTTP ${r.status} ${(await r.json()).error || ''}`;
  });
})();
