// The local RabbitMQ's ceiling for chat-service's notification events, measured with another
// client (Node.js amqplib) than the service's own (lapin): N persistent `message.sent`-shaped
// messages to a fresh durable queue on one confirm channel, W in flight, confirms awaited per
// window, as the outbox relay does. Cross-checks `examples/outbox_bench.rs` (BENCHMARKS.md).
//
//   node amqp-ceiling.js [N=200000] [W=4096] [persistent|transient] [amqp-url]
const amqp = require('amqplib');

async function main() {
  const n = Number(process.argv[2] || 200000);
  const window = Number(process.argv[3] || 4096);
  const persistent = (process.argv[4] || 'persistent') === 'persistent';
  const url = process.argv[5] || 'amqp://guest:guest@127.0.0.1:5672';
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  const queue = `bench-amqplib-${Date.now()}`;
  await ch.assertQueue(queue, { durable: true });
  const started = Date.now();
  for (let i = 0; i < n; i += window) {
    for (let j = i; j < Math.min(n, i + window); j += 1) {
      const body = Buffer.from(JSON.stringify({
        event: 'message.sent',
        data: {
          messageId: j.toString(16).padStart(24, '0'),
          roomId: `bench-${j % 100}`,
          senderId: 'u1',
          receiverId: null,
          receiverIds: ['u0', 'u2'],
          message: `benchmark message number ${j}`,
          timestamp: Date.now(),
        },
        timestamp: new Date().toISOString(),
      }));
      ch.publish('', queue, body, { persistent, contentType: 'application/json', messageId: String(j) });
    }
    await ch.waitForConfirms();
  }
  const secs = (Date.now() - started) / 1000;
  const { messageCount } = await ch.checkQueue(queue);
  console.log(`amqplib: ${n} ${persistent ? 'persistent' : 'transient'} messages with confirms in ${secs.toFixed(2)}s: ${Math.round(n / secs)} messages/s (queue holds ${messageCount})`);
  await ch.deleteQueue(queue);
  await conn.close();
  if (messageCount !== n) process.exit(1);
}

main().catch((e) => { console.error(e); process.exit(1); });
