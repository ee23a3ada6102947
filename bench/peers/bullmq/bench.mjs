// BullMQ peer for bench/run.py: enqueue N no-op jobs with addBulk, then drain them with
// one Worker (concurrency C). Prints one JSON line with both rates.
// Usage: node bench.mjs <redis-port> <jobs> <concurrency>
import { Queue, Worker } from "bullmq";

const [port, jobs, concurrency] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const name = "bench";
const chunk = 1000;

const queue = new Queue(name, { connection });
await queue.obliterate({ force: true });

const enqueueStart = performance.now();
for (let i = 0; i < jobs; i += chunk) {
  const batch = [];
  for (let j = i; j < Math.min(i + chunk, jobs); j++) {
    // Jobs are removed on completion, as workpool acknowledges and deletes its entries.
    batch.push({ name: "noop", data: { i: j }, opts: { removeOnComplete: true, removeOnFail: true } });
  }
  await queue.addBulk(batch);
}
const enqueueSeconds = (performance.now() - enqueueStart) / 1000;

let done = 0;
let firstDone = 0;
const drainStart = performance.now();
const finished = new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency, autorun: true });
  worker.on("completed", () => {
    if (done === 0) firstDone = performance.now();
    done += 1;
    if (done === jobs) resolve(worker);
  });
});
const worker = await finished;
const drainEnd = performance.now();
await worker.close();
await queue.close();
console.log(JSON.stringify({
  enqueue_per_s: jobs / enqueueSeconds,
  drain_per_s: jobs / ((drainEnd - drainStart) / 1000),
  drain_seconds: (drainEnd - drainStart) / 1000,
  first_completion_ms: firstDone - drainStart,
}));
