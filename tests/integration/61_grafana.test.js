'use strict';
// examples/grafana.json (issue 16): every metric an expression of the
// dashboard names is exported by /metrics of a real herald (a single node,
// and a node clustered on a real redis-server for the herald_cluster_*
// ones), with the labels its `by (...)` clauses group on; the drain phase
// mapping is herald's own order of phases; the panels the issue asks for
// are there.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');
const c = require('./lib/cluster');

const DASH = JSON.parse(fs.readFileSync(path.join(h.ROOT, 'examples', 'grafana.json'), 'utf8'));
// Labels Prometheus adds to every series it scrapes: not herald's to export.
const TARGET_LABELS = new Set(['instance', 'job']);

function allPanels(panels = DASH.panels) {
  return panels.flatMap((p) => [p, ...allPanels(p.panels || [])]);
}

// Every PromQL expression: the panels' targets and the template variables.
function expressions() {
  const out = [];
  for (const p of allPanels()) for (const tg of p.targets || []) out.push({ panel: p.title, expr: tg.expr });
  for (const v of DASH.templating.list) {
    if (v.type !== 'query') continue;
    out.push({ panel: `variable $${v.name}`, expr: typeof v.query === 'string' ? v.query : v.query.query });
  }
  return out;
}

const metricNames = (expr) => [...new Set(expr.match(/\bherald_[a-z0-9_]+\b/g) || [])];
const byLabels = (expr) => [...expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) => m[1].split(',').map((s) => s.trim()).filter(Boolean));

// /metrics as { name: Set(label names) } plus the series in order.
async function exported(port) {
  const r = await h.request(port, 'GET', '/metrics');
  assert.equal(r.status, 200);
  const names = new Map();
  const series = [];
  for (const line of r.body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? /.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels = {};
    for (const l of (m[3] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    if (!names.has(m[1])) names.set(m[1], new Set());
    for (const k of Object.keys(labels)) names.get(m[1]).add(k);
    series.push({ name: m[1], labels });
  }
  return { names, series };
}

test('examples/grafana.json is a dashboard of metrics herald exports', async (t) => {
  const exprs = expressions();
  assert.ok(exprs.length >= 30, `${exprs.length} expressions`);

  await t.test('the dashboard is well formed: unique ids, a Prometheus data source variable, targets on every panel', () => {
    assert.equal(typeof DASH.title, 'string');
    assert.equal(typeof DASH.uid, 'string');
    const ids = allPanels().map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate panel ids: ${ids}`);
    const ds = DASH.templating.list.find((v) => v.type === 'datasource');
    assert.equal(ds.query, 'prometheus');
    for (const p of allPanels()) {
      if (p.type === 'row') continue;
      assert.ok(p.targets && p.targets.length, `panel "${p.title}" has no targets`);
      assert.equal(p.datasource.uid, `\${${ds.name}}`, `panel "${p.title}"`);
      for (const tg of p.targets) assert.ok(metricNames(tg.expr).length, `panel "${p.title}": ${tg.expr} names no herald metric`);
    }
  });

  // A single node, with one WebSocket closed by herald (1007, a binary
  // message with a truncated header) so that herald_ws_closes_sent_total
  // has a series.
  const single = await h.serve(t, 'scripts = { "hooks.lua" }\n', { 'hooks.lua': 'return { join = function() return true end }\n' });
  const ws = await h.rawWs(single.port);
  ws.send(2, Buffer.from([1, 2, 3]));
  assert.equal(await ws.closeHandshake(), 1007);
  const one = await exported(single.port);

  // A clustered node on its own redis-server, its link up.
  const redis = await c.startRedis(t);
  const [node] = await c.startNodes(t, 1, { redis });
  await c.waitFor(async () => (await node.metrics())['herald_cluster_link_up{shard="0"}'] === 1, 'the Redis link up');
  const clustered = await exported(node.port);

  const labelsOf = (name) => new Set([...(one.names.get(name) || []), ...(clustered.names.get(name) || [])]);

  await t.test('every metric an expression names is exported, with the labels it groups by', () => {
    const missing = [];
    for (const { panel, expr } of exprs) {
      const names = metricNames(expr);
      for (const n of names) if (!one.names.has(n) && !clustered.names.has(n)) missing.push(`${n} (panel "${panel}")`);
      for (const l of byLabels(expr)) {
        if (TARGET_LABELS.has(l)) continue;
        assert.ok(names.some((n) => labelsOf(n).has(l)), `panel "${panel}": no metric of ${expr} has the label ${l}`);
      }
    }
    assert.deepEqual(missing, [], `not exported by /metrics:\n${missing.join('\n')}`);
  });

  await t.test('a clustered node exports the cluster metrics, a single node none of them', () => {
    const cl = [...new Set(exprs.flatMap((e) => metricNames(e.expr)))].filter((n) => n.startsWith('herald_cluster_'));
    assert.ok(cl.length >= 6, cl.join(' '));
    for (const n of cl) {
      assert.ok(clustered.names.has(n), n);
      assert.ok(!one.names.has(n), `${n} on a single node`);
    }
  });

  await t.test('the drain phase mapping is herald\'s order of phases', () => {
    // herald_drain_phase_seconds lists the phases 1.. in their enum order;
    // 0 is "none".
    const phases = ['none', ...one.series.filter((s) => s.name === 'herald_drain_phase_seconds').map((s) => s.labels.phase)];
    assert.equal(phases.length, 8, phases.join(' '));
    const mapped = allPanels().filter((p) => (p.targets || []).some((tg) => metricNames(tg.expr).includes('herald_drain_phase')));
    assert.ok(mapped.length >= 1);
    for (const p of mapped) {
      const opts = p.fieldConfig.defaults.mappings[0].options;
      assert.deepEqual(Object.keys(opts).map(Number), phases.map((_, i) => i), `panel "${p.title}"`);
      for (const [i, name] of phases.entries()) assert.equal(opts[String(i)].text, name, `panel "${p.title}" value ${i}`);
    }
  });

  await t.test('the panels the issue asks for', () => {
    const uses = (pred) => exprs.some(({ expr }) => pred(expr));
    const want = {
      connections: (e) => metricNames(e).includes('herald_connections'),
      'publish rate': (e) => /rate\(herald_publishes_total/.test(e),
      'delivery rate': (e) => /rate\(herald_deliveries_total/.test(e),
      'drops by reason': (e) => metricNames(e).includes('herald_dropped_total') && byLabels(e).includes('reason'),
      'slow consumer closes': (e) => metricNames(e).includes('herald_slow_consumer_closes_total'),
      'hook errors': (e) => metricNames(e).includes('herald_hook_errors_total') && byLabels(e).includes('hook'),
      'hook budget': (e) => metricNames(e).includes('herald_hook_budget_exceeded_total'),
      'hooks waiting': (e) => metricNames(e).includes('herald_hooks_waiting'),
      'herald.http.request': (e) => metricNames(e).includes('herald_lua_http_requests_total'),
      'refusals by reason': (e) => metricNames(e).includes('herald_tcp_refused_total') && byLabels(e).includes('reason'),
      'drain phase': (e) => metricNames(e).includes('herald_drain_phase'),
      'cluster link': (e) => metricNames(e).includes('herald_cluster_link_up'),
      history: (e) => metricNames(e).some((n) => n.startsWith('herald_history_')),
      recoveries: (e) => metricNames(e).includes('herald_recoveries_total'),
    };
    for (const [what, pred] of Object.entries(want)) assert.ok(uses(pred), `no panel for ${what}`);
  });
});
