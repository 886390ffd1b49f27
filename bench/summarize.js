// Reads bench/results/<scenario>-<server>-<run>.json and prints a markdown table: the median of
// the runs for each server and the ratio chat-service / Node.js reference.
'use strict';
const fs = require('fs');
const path = require('path');

const [scenario, runs, dir] = process.argv.slice(2);
const servers = ['rust', 'node'];
const rows = [
  ['connected', (s) => s.connected],
  ['offered rate (msg/s)', (s) => s.offered_rate],
  ['delivered / s', (s) => s.delivered_per_s],
  ['delivery ratio', (s) => s.delivery_ratio],
  ['errors', (s) => s.errors.total],
  ['latency p50 (ms)', (s) => s.latency_ms.p50],
  ['latency p99 (ms)', (s) => s.latency_ms.p99],
  ['latency max (ms)', (s) => s.latency_ms.max],
  ['server CPU (s)', (s) => s.server.cpu_seconds],
  ['server CPU µs / delivery', (s) => s.server.cpu_us_per_delivery],
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
console.log(`### ${scenario}: ${first.connections} connections, rooms of ${first.room_size}, ` +
  `${first.offered_rate} msg/s offered, ${first.duration_s} s measured (+${first.warmup_s} s warm-up), ` +
  `${first.message_size}-byte messages, protocol ${first.protocol}`);
console.log('');
console.log(`Median of ${results.rust.length} (chat-service) / ${results.node.length} (Node.js) runs. ` +
  `Load averages during the runs: ${[...results.rust, ...results.node].map((s) => s.load_average).join('; ')}`);
console.log('');
console.log('| metric | chat-service | Node.js reference | ratio (chat-service / Node) |');
console.log('| --- | ---: | ---: | ---: |');
for (const [name, get] of rows) {
  const r = median(results.rust.map(get));
  const n = median(results.node.map(get));
  const ratio = r !== null && n ? r / n : null;
  console.log(`| ${name} | ${fmt(r)} | ${fmt(n)} | ${ratio === null ? 'n/a' : fmt(ratio)} |`);
}
console.log('');
for (const server of servers) {
  console.log(`${server} per run: ` + results[server].map((s) =>
    `cpu µs/delivery ${fmt(s.server.cpu_us_per_delivery)}, p99 ${fmt(s.latency_ms.p99)} ms, ` +
    `RSS ${s.server.rss_kb_start} KB, passed ${s.passed}`).join(' | '));
  console.log('');
}
