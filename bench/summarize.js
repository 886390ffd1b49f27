// Reads bench/results/<scenario>-<server>-<run>.json and prints a markdown table: the median of
// the runs for each server and the ratio chat-service / Node.js reference. Ramp results
// (bench/run.sh with RAMP=1, <scenario> = e.g. s2-ramp) get their own table: the maximum
// sustainable rate and the figures of the last passing ("best") step. Server CPU per delivery
// is also split into user and kernel time (results of a chat-bench without the split print n/a).
'use strict';
const fs = require('fs');
const path = require('path');

const [scenario, runs, dir] = process.argv.slice(2);
// `base`: another chat-service build run beside them (bench/run.sh with BASE_BIN), for a
// before/after comparison in the same run; its columns appear only when it has results.
const servers = ['rust', 'node', 'base'];
const rows = [
  ['connected', (s) => s.connected],
  ['offered rate (msg/s)', (s) => s.offered_rate],
  ['delivered / s', (s) => s.delivered_per_s],
  ['delivery ratio', (s) => s.delivery_ratio],
  ['errors', (s) => s.errors.total],
  ['latency p50 (ms)', (s) => s.latency_ms.p50],
  ['latency p99 (ms)', (s) => s.latency_ms.p99],
  ['latency max (ms)', (s) => s.latency_ms.max],
  // The server's own durable-write latency (arrival in send -> end of the commit), from its
  // GET /metrics at the start and end of the window; n/a for servers without it.
  ['durable write p50 (ms)', (s) => s.server.durable_write_ms && s.server.durable_write_ms.p50],
  ['durable write p99 (ms)', (s) => s.server.durable_write_ms && s.server.durable_write_ms.p99],
  ['server CPU (s)', (s) => s.server.cpu_seconds],
  ['server CPU µs / delivery', (s) => s.server.cpu_us_per_delivery],
  ['server user CPU µs / delivery', (s) => s.server.cpu_user_us_per_delivery],
  ['server kernel CPU µs / delivery', (s) => s.server.cpu_sys_us_per_delivery],
  ['server RSS after connect (KB)', (s) => s.server.rss_kb_start],
  ['server RSS at end (KB)', (s) => s.server.rss_kb_end],
  ['RSS growth / connection (KB)', (s) => s.server.rss_per_connection_kb],
  ['RSS total / connection (KB)', (s) => s.server.rss_total_per_connection_kb],
];

function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
function fmt(x) {
  if (x === null || x === undefined) return 'n/a';
  if (Number.isInteger(x)) return String(x);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

const results = {};
for (const server of servers) {
  results[server] = [];
  for (let run = 1; run <= Number(runs); run++) {
    const file = path.join(dir, `${scenario}-${server}-${run}.json`);
    if (fs.existsSync(file)) results[server].push(JSON.parse(fs.readFileSync(file, 'utf8')));
  }
}
const first = results.rust[0] || results.node[0];
if (!first) {
  console.log(`no results for ${scenario}`);
  process.exit(1);
}
if (first.ramp) {
  summarizeRamp();
  process.exit(0);
}
console.log(`### ${scenario}: ${first.connections} connections, rooms of ${first.room_size}, ` +
  `${first.offered_rate} msg/s offered, ${first.duration_s} s measured (+${first.warmup_s} s warm-up), ` +
  `${first.message_size}-byte messages, protocol ${first.protocol}`);
console.log('');
console.log(`Median of ${results.rust.length} (chat-service) / ${results.node.length} (Node.js) runs. ` +
  `Load averages during the runs: ${[...results.rust, ...results.node].map((s) => s.load_average).join('; ')}`);
console.log('');
printTable(rows);
console.log('');
for (const server of servers.filter((sv) => results[sv].length > 0)) {
  console.log(`${server} per run: ` + results[server].map((s) =>
    `cpu µs/delivery ${fmt(s.server.cpu_us_per_delivery)}, p99 ${fmt(s.latency_ms.p99)} ms, ` +
    (s.server.durable_write_ms ? `durable write p99 ${fmt(s.server.durable_write_ms.p99)} ms, ` : '') +
    `RSS ${s.server.rss_kb_start} KB, passed ${s.passed}`).join(' | '));
  console.log('');
}

// One row per metric: the median over each server's runs and their ratio (and, with a
// `base` build, its median and the ratio chat-service / base).
function printTable(metrics) {
  const base = results.base.length > 0;
  console.log('| metric | chat-service | Node.js reference | ratio (chat-service / Node) |' +
    (base ? ' chat-service before (BASE_BIN) | ratio (chat-service / before) |' : ''));
  console.log('| --- | ---: | ---: | ---: |' + (base ? ' ---: | ---: |' : ''));
  const ratio = (a, b) => (a !== null && b ? fmt(a / b) : 'n/a');
  for (const [name, get] of metrics) {
    const r = median(results.rust.map(get));
    const n = median(results.node.map(get));
    const b = base ? median(results.base.map(get)) : null;
    console.log(`| ${name} | ${fmt(r)} | ${fmt(n)} | ${ratio(r, n)} |` +
      (base ? ` ${fmt(b)} | ${ratio(r, b)} |` : ''));
  }
}

// A ramp JSON is {ramp, p99_max_ms, max_sustainable_rate, best, steps}: `best` and each step
// are summaries like a fixed-rate result (offered_rate, delivered_per_s, latency_ms, ...), and
// `best` is null when not even the first step passed. Since chat-bench retries a failing step
// once (`attempts_per_step`: 2), a step's figures are its deciding attempt, with `attempts` and,
// when it ran twice, the failed `first_attempt`; older results have none of the three.
function summarizeRamp() {
  const steps0 = first.steps[0] || {};
  const factor = first.steps.length > 1 ? first.steps[1].offered_rate / first.steps[0].offered_rate : null;
  const retries = (first.attempts_per_step ?? 1) > 1;
  console.log(`### ${scenario}: ${steps0.connections} connections, rooms of ${steps0.room_size}, ` +
    `rate from ${fmt(steps0.offered_rate)} msg/s` + (factor ? ` (x ${fmt(factor)} per step)` : '') +
    ` until ${retries ? 'a step fails twice in a row (' : ''}delivery < 100% or p99 > ${first.p99_max_ms} ms` +
    `${retries ? '; a failing step is run once more at the same rate)' : ''}, ${steps0.duration_s} s measured ` +
    `(+${steps0.warmup_s} s warm-up) per step, ${steps0.message_size}-byte messages, protocol ${steps0.protocol}`);
  console.log('');
  const loads = [...results.rust, ...results.node].map((r) => {
    const s = r.steps[r.steps.length - 1];
    return s ? s.load_average : 'n/a';
  });
  console.log(`Median of ${results.rust.length} (chat-service) / ${results.node.length} (Node.js) runs. ` +
    `A run where not even the first step passed counts as 0 msg/s; the best-step rows are the ` +
    `median over the runs that have a passing step. Load averages at the end of each ramp: ${loads.join('; ')}`);
  console.log('');
  // Deliveries/s of the best step = the sustainable fan-out (the S2 target is in deliveries/s).
  const rampRows = [
    ['max sustainable rate (msg/s)', (r) => r.max_sustainable_rate ?? 0],
    ['steps run', (r) => r.steps.length],
    ['steps run twice (failed once)', (r) => r.steps.filter((s) => s.first_attempt).length],
    ['best step: delivered / s', (r) => r.best && r.best.delivered_per_s],
    ['best step: delivery ratio', (r) => r.best && r.best.delivery_ratio],
    ['best step: latency p50 (ms)', (r) => r.best && r.best.latency_ms.p50],
    ['best step: latency p90 (ms)', (r) => r.best && r.best.latency_ms.p90],
    ['best step: latency p99 (ms)', (r) => r.best && r.best.latency_ms.p99],
    ['best step: latency p99.9 (ms)', (r) => r.best && r.best.latency_ms.p99_9],
    ['best step: latency max (ms)', (r) => r.best && r.best.latency_ms.max],
    ['best step: server CPU (s)', (r) => r.best && r.best.server.cpu_seconds],
    ['best step: server CPU µs / delivery', (r) => r.best && r.best.server.cpu_us_per_delivery],
    ['best step: server user CPU µs / delivery', (r) => r.best && r.best.server.cpu_user_us_per_delivery],
    ['best step: server kernel CPU µs / delivery', (r) => r.best && r.best.server.cpu_sys_us_per_delivery],
    ['best step: server RSS at end (KB)', (r) => r.best && r.best.server.rss_kb_end],
  ];
  printTable(rampRows);
  console.log('');
  // Every step of every run: offered -> delivered/s, delivery ratio, p99, pass or fail (a step
  // run twice: the first attempt's p99 and delivery, then the second's figures).
  for (const server of servers) {
    results[server].forEach((r, i) => {
      // When the last step passed too, the ramp ran out of steps before finding the limit.
      const last = r.steps[r.steps.length - 1];
      const bound = last && last.passed ? ' (every step passed: a lower bound, raise RAMP_STEPS)' : '';
      console.log(`${server} run ${i + 1}: max sustainable ${fmt(r.max_sustainable_rate)} msg/s${bound}; steps: ` +
        r.steps.map((s) => `${fmt(s.offered_rate)} msg/s -> ` + firstAttempt(s) +
          `${fmt(s.delivered_per_s)} deliveries/s, ` +
          `delivery ${fmt(s.delivery_ratio)}, p99 ${fmt(s.latency_ms.p99)} ms, ` +
          `cpu µs/delivery ${fmt(s.server.cpu_us_per_delivery)}, ${s.passed ? 'pass' : 'FAIL'}`).join(' | '));
      console.log('');
    });
  }
}

// The failed first attempt of a step that was run twice, as a prefix of the step's figures.
function firstAttempt(s) {
  const f = s.first_attempt;
  if (!f) return '';
  return `FAIL (delivery ${fmt(f.delivery_ratio)}, p99 ${fmt(f.latency_ms.p99)} ms), again: `;
}
