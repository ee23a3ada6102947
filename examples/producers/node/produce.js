// Submit one task per argument to a pool and print each task's result as a JSON line.
//
//   npm install ./clients/node
//   WORKPOOL_REDIS_URL=redis://127.0.0.1:6379/0 WORKPOOL_STREAM=thumbnails \
//       node produce.js '{"image": "a.png"}' '{"image": "b.png"}'
//
// The pool must have results on (spec.delivery.results.ttlSeconds).
const { Pool } = require("@workpool/client");

async function main() {
  const pool = Pool.fromUrl(process.env.WORKPOOL_REDIS_URL ?? "redis://127.0.0.1:6379/0", {
    stream: process.env.WORKPOOL_STREAM ?? "thumbnails",
  });
  const payloads = process.argv.length > 2 ? process.argv.slice(2) : ['{"image": "a.png"}'];
  const tasks = [];
  for (const payload of payloads) tasks.push(await pool.submit(payload));
  for (const task of tasks) {
    const result = await pool.waitFor(task, 120_000); // blocks until a worker records the outcome
    console.log(JSON.stringify({ task_id: task.taskId, state: result.state, output: result.output?.toString() ?? null, error: result.error }));
  }
  await pool.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
