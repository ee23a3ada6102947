// Behaviour against real redis-servers: batches, dedup, durable submit, results and
// waiting, status, dead letters under concurrency, Cluster, Sentinel.

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import { Cluster, Redis } from "ioredis";
import { ConfigError, Pool, SubmitError, WaitTimeoutError, runScript } from "../src/index";
import { Replicated, Server, TestCluster, skipOrFail } from "./servers";

const skip = skipOrFail();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function writeResult(client: Redis | Cluster, pool: Pool, tid: string, state = "done", partition = 0, fields: Record<string, string> = {}) {
  const k = pool.layout.keys[partition];
  await runScript(client, "result", [k.result(tid), k.notify(tid)], [60000, state, "v", "1", "task_id", tid, ...Object.entries(fields).flat()]);
}

async function calls(r: Redis, name: string): Promise<number> {
  const m = new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(String(await r.info("commandstats")));
  return m ? Number(m[1]) : 0;
}

async function addDeadLetters(r: Redis | Cluster, dead: string, n: number, prefix = "d", error = "failed 5 times"): Promise<string[]> {
  const p = r.pipeline();
  for (let i = 0; i < n; i++) p.xadd(dead, "*", "payload", `${prefix}${i}`, "original_id", `${i + 1}-0`, "error", error, "deliveries", "5", "stream", "q", "group", "q", "consumer", "w1");
  return ((await p.exec()) ?? []).map(([, id]) => String(id));
}

describe("Pool against a real redis-server", { skip }, () => {
  let server: Server;
  let r: Redis;
  const pools: Pool[] = [];
  const mk = (o: ConstructorParameters<typeof Pool>[1], client?: Redis) => {
    const p = new Pool(client ?? r, o);
    pools.push(p);
    return p;
  };

  before(async () => {
    server = await Server.start();
    r = server.client();
  });
  after(async () => {
    for (const p of pools) await p.close();
    r?.disconnect();
    server?.stop();
  });
  beforeEach(async () => {
    await r.flushall();
  });

  it("spreads a batch over the partitions, in order", async () => {
    const pool = mk({ stream: "q", partitions: 3, roundRobinStart: 0 });
    const subs = await pool.submitMany(Array.from({ length: 2500 }, (_, i) => ({ payload: { n: i } })));
    assert.deepEqual(subs.map((s) => s.partition), Array.from({ length: 2500 }, (_, i) => i % 3));
    for (const [p, stream] of ["q", "q:1", "q:2"].entries()) {
      const rows = await r.xrange(stream, "-", "+");
      assert.deepEqual(rows.map(([id]) => id), subs.filter((s) => s.partition === p).map((s) => s.entryId));
      assert.deepEqual(rows.map(([, f]) => f[1]), Array.from({ length: 2500 }, (_, i) => i).filter((i) => i % 3 === p).map((i) => `{"n":${i}}`));
    }
    assert.equal((await pool.stats()).backlog, 2500);
  });

  it("submits nothing when one task of a batch is bad", async () => {
    const pool = mk({ stream: "q" });
    await assert.rejects(pool.submitMany([...Array(10).fill({ payload: "ok" }), { payload: "x", id: "17-0" }]), ConfigError);
    await assert.rejects(pool.submitMany([{ payload: "ok" }, { payload: () => 1 } as any]), ConfigError);
    assert.equal(await r.dbsize(), 0);
  });

  it("says what was submitted when a partition fails", async () => {
    const pool = mk({ stream: "q", partitions: 2, roundRobinStart: 0 });
    await r.set("q:1", "not a stream");
    const e = await pool.submitMany(Array.from({ length: 6 }, (_, i) => ({ payload: `t${i}` }))).catch((e) => e);
    assert.ok(e instanceof SubmitError);
    assert.deepEqual(e.submitted.map((s: any) => s !== undefined), [true, false, true, false, true, false]);
    assert.deepEqual((await r.xrange("q", "-", "+")).map(([id]) => id), e.submitted.filter(Boolean).map((s: any) => s.entryId));
  });

  it("deduplicates by task id within the window", async () => {
    const pool = mk({ stream: "q" });
    const a = await pool.submit("first", { id: "order-1", dedup: true });
    const [b, c] = await pool.submitMany([{ payload: "again", id: "order-1", dedup: true }, { payload: "other", id: "order-2", dedup: true }]);
    assert.ok(!a.duplicate && b.duplicate && !c.duplicate);
    assert.equal(b.entryId, a.entryId);
    assert.equal(await r.xlen("q"), 2);
    const short = await pool.submit("w", { id: "order-3", dedup: true, dedupWindowMs: 50 });
    await sleep(150);
    const later = await pool.submit("w", { id: "order-3", dedup: true, dedupWindowMs: 50 });
    assert.ok(!later.duplicate && later.entryId !== short.entryId);
  });

  it("adds each id once under concurrent producers", async () => {
    const clients = Array.from({ length: 6 }, () => server.client());
    const results = await Promise.all(
      clients.map((c) => new Pool(c, { stream: "q", partitions: 3 }).submitMany(Array.from({ length: 200 }, (_, i) => ({ payload: `p${i}`, id: `id-${i}`, dedup: true })))),
    );
    clients.forEach((c) => c.disconnect());
    assert.equal((await r.xlen("q")) + (await r.xlen("q:1")) + (await r.xlen("q:2")), 200);
    for (let i = 0; i < 200; i++) {
      assert.equal(new Set(results.map((res) => res[i].entryId)).size, 1);
      assert.equal(results.filter((res) => !res[i].duplicate).length, 1);
    }
  });

  it("reports durable submits no replica confirmed, and keeps them", async () => {
    const pool = mk({ stream: "q" });
    const subs = await pool.submitMany([{ payload: "a" }, { payload: "b" }], { minReplicas: 1, waitTimeoutMs: 50 });
    assert.deepEqual(subs.map((s) => s.confirmed), [false, false]);
    assert.equal(await r.xlen("q"), 2);
    assert.equal((await pool.submit("c")).confirmed, undefined);
  });

  it("waitFor blocks until the result instead of polling", async () => {
    const pool = mk({ stream: "q" });
    const s = await pool.submit("x", { id: "job-1" });
    const [h0, b0] = [await calls(r, "hgetall"), await calls(r, "blmove")];
    const writer = sleep(500).then(() => writeResult(r, pool, "job-1", "done", 0, { output: "thumb.png", entry_id: s.entryId }));
    const res = await pool.waitFor(s, 10_000);
    await writer;
    assert.equal(res.state, "done");
    assert.equal(res.output?.toString(), "thumb.png");
    assert.equal(res.entryId, s.entryId);
    assert.equal((await calls(r, "hgetall")) - h0, 2);
    assert.equal((await calls(r, "blmove")) - b0, 1);
  });

  it("wakes every waiter of a task", async () => {
    const pool = mk({ stream: "q", partitions: 2 });
    const s = await pool.submit("x", { id: "shared", key: "k" });
    const others = Array.from({ length: 4 }, () => mk({ stream: "q", partitions: 2 }, server.client()));
    const waits = [pool, ...others].map((p) => p.waitFor("shared", 10_000, { key: "k" }));
    await sleep(300);
    await writeResult(r, pool, "shared", "done", s.partition);
    const got = await Promise.all(waits);
    assert.ok(got.every((g) => g.state === "done"));
    others.forEach((p) => p.redis.disconnect());
  });

  it("waitFor times out", async () => {
    const pool = mk({ stream: "q" });
    const e = await pool.waitFor("never", 200).catch((e) => e);
    assert.ok(e instanceof WaitTimeoutError && e.taskId === "never");
  });

  it("needs the partition of a bare id in a partitioned pool", async () => {
    const pool = mk({ stream: "q", partitions: 3 });
    await assert.rejects(pool.waitFor("some-id", 10), /partition/);
    await assert.rejects(pool.waitFor("some-id", 10, { partition: 2 }), WaitTimeoutError);
    await assert.rejects(pool.status("some-id", { partition: 3 }), ConfigError);
  });

  it("follows a task's life in status", async () => {
    const pool = mk({ stream: "q", group: "g" });
    const s = await pool.submit("x", { id: "life" });
    assert.equal((await pool.status(s)).state, "queued");
    await r.xgroup("CREATE", "q", "g", "0");
    assert.equal((await pool.status(s)).state, "queued");
    await r.xreadgroup("GROUP", "g", "w1", "COUNT", 1, "STREAMS", "q", ">");
    assert.deepEqual(await pool.status(s), { state: "running", consumer: "w1", deliveries: 1 });
    await r.xack("q", "g", s.entryId);
    await r.xdel("q", s.entryId);
    assert.equal((await pool.status(s)).state, "unknown");
    await writeResult(r, pool, "life", "dead", 0, { error: "boom" });
    const st = await pool.status(s);
    assert.equal(st.state, "dead");
    assert.equal(st.result?.error, "boom");
  });

  it("retryAll moves the dead letters present at the start, exactly once", async () => {
    const pool = mk({ stream: "q" });
    await addDeadLetters(r, "q:dead", 250);
    const w = server.client();
    const late: string[] = [];
    let stop = false;
    const writer = (async () => {
      while (!stop && late.length < 300) {
        await addDeadLetters(w, "q:dead", 1, `late${late.length}-`);
        late.push(`late${late.length}-0`);
      }
    })();
    await sleep(5);
    const outcomes = await pool.retryAllDeadLetters();
    stop = true;
    await writer;
    w.disconnect();
    const queued = (await r.xrange("q", "-", "+")).map(([, f]) => f[1]);
    const remaining = (await r.xrange("q:dead", "-", "+")).map(([, f]) => f[1]);
    assert.deepEqual(queued.filter((p) => p.startsWith("d")).sort(), Array.from({ length: 250 }, (_, i) => `d${i}`).sort());
    assert.ok(remaining.every((p) => p.startsWith("late")));
    assert.deepEqual([...queued, ...remaining].sort(), [...Array.from({ length: 250 }, (_, i) => `d${i}`), ...late].sort());
    assert.equal(outcomes.length, queued.length);
    assert.ok(outcomes.every((o) => o.entryId));
  });

  it("concurrent retries move each dead letter once", async () => {
    const ids = await addDeadLetters(r, "q:dead", 300);
    const clients = Array.from({ length: 4 }, () => server.client());
    const outs = await Promise.all(clients.map((c) => new Pool(c, { stream: "q" }).retryDeadLetters(ids)));
    clients.forEach((c) => c.disconnect());
    assert.equal(await r.xlen("q"), 300);
    assert.equal(await r.xlen("q:dead"), 0);
    for (let i = 0; i < 300; i++) assert.equal(outs.filter((o) => o[i].entryId !== null).length, 1);
  });

  it("purges by filter, by reference and all", async () => {
    const pool = mk({ stream: "q", partitions: 2 });
    await addDeadLetters(r, "q:dead", 3, "d", "permanent failure: 404");
    await addDeadLetters(r, "q:1:dead", 4);
    assert.equal((await pool.stats()).deadLetters, 7);
    assert.equal(await pool.purgeAllDeadLetters({ errorContains: "404" }), 3);
    const [one] = await pool.deadLetters({ limit: 1 });
    assert.equal(await pool.purgeDeadLetters([one, "1/1-0"]), 1);
    assert.equal(await pool.purgeAllDeadLetters(), 3);
    assert.equal((await pool.stats()).deadLetters, 0);
    assert.equal(await pool.purgeAllDeadLetters(), 0);
  });

  it("lists dead letters page by page, merged", async () => {
    const pool = mk({ stream: "q", partitions: 2 });
    await addDeadLetters(r, "q:dead", 1200);
    await addDeadLetters(r, "q:1:dead", 700, "e");
    const all = await pool.deadLetters({ limit: null });
    assert.equal(all.length, 1900);
    const keys = all.map((d) => d.id.split("-").map(Number).concat(d.partition));
    const sorted = [...keys].sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
    assert.deepEqual(keys, sorted);
    const newest = await pool.deadLetters({ limit: null, newestFirst: true });
    assert.deepEqual(newest.map((d) => String(d.ref)), all.map((d) => String(d.ref)).reverse());
    assert.equal((await pool.deadLetters()).length, 100);
  });

  it("fromUrl", async () => {
    const pool = Pool.fromUrl(server.url, { stream: "q", partitions: 2 });
    await pool.submitMany([{ payload: "a" }, { payload: "b" }]);
    assert.equal((await pool.stats()).streamLength, 2);
    await pool.close();
    assert.throws(() => Pool.fromUrl("http://x", { stream: "q" }), ConfigError);
  });
});

describe("Pool on a real Sentinel with a replica", { skip }, () => {
  let rp: Replicated;
  before(async () => {
    rp = await Replicated.start();
  });
  after(() => rp?.stop());

  it("confirms durable submits and follows the sentinel URL", async () => {
    const direct = new Pool(rp.primary.client(), { stream: "durable" });
    const subs = await direct.submitMany(Array.from({ length: 50 }, (_, i) => ({ payload: `t${i}` })), { minReplicas: 1, waitTimeoutMs: 5000 });
    assert.ok(subs.every((s) => s.confirmed === true));
    direct.redis.disconnect();
    const pool = Pool.fromUrl(`redis+sentinel://127.0.0.1:${rp.sentinel.port}/wpmaster`, { stream: "durable" });
    assert.equal((await pool.submit({ x: 1 }, { minReplicas: 1, waitTimeoutMs: 5000 })).confirmed, true);
    assert.equal((await pool.stats()).streamLength, 51);
    await pool.close();
    const rep = rp.replica.client();
    const deadline = Date.now() + 5000;
    while ((await rep.xlen("durable")) !== 51 && Date.now() < deadline) await sleep(20);
    assert.equal(await rep.xlen("durable"), 51);
    rep.disconnect();
  });
});

describe("Pool on a real 3-node Redis Cluster", { skip }, () => {
  let cluster: TestCluster;
  let rc: Cluster;
  before(async () => {
    cluster = await TestCluster.start();
    rc = cluster.client();
  });
  after(() => {
    rc?.disconnect();
    cluster?.stop();
  });

  it("partitions live on several nodes; submit, stats, dead letters, results", async () => {
    const pool = new Pool(rc, { stream: "jobs", partitions: 6, roundRobinStart: 0 });
    assert.equal(pool.layout.mode, "cluster");
    const subs = await pool.submitMany(Array.from({ length: 600 }, (_, i) => ({ payload: { i } })));
    subs.push(...(await pool.submitMany(Array.from({ length: 60 }, (_, i) => ({ payload: i, id: `d${i}`, dedup: true })))));
    const st = await pool.stats();
    assert.equal(st.stream, "jobs");
    assert.equal(st.backlog, 660);
    assert.deepEqual(st.partitions.map((p) => p.stream), ["{jobs}", "{jobs:1}", "{jobs:2}", "{jobs:3}", "{jobs:4}", "{jobs:5}"]);
    const durable = await pool.submitMany(Array.from({ length: 12 }, () => ({ payload: "x" })), { minReplicas: 1, waitTimeoutMs: 50 });
    assert.ok(durable.every((s) => s.confirmed === false));
    for (const k of pool.layout.keys) await addDeadLetters(rc, k.dead, 2, `p${k.index}-`);
    assert.equal((await pool.stats()).deadLetters, 12);
    assert.equal((await pool.deadLetters({ limit: null })).length, 12);
    assert.equal((await pool.retryAllDeadLetters()).length, 12);
    assert.equal((await pool.stats()).deadLetters, 0);
    const s = subs[subs.length - 1];
    const waiting = pool.waitFor(s, 5000);
    await sleep(100);
    await writeResult(rc, pool, s.taskId, "done", s.partition, { output: "ok" });
    assert.equal((await waiting).output?.toString(), "ok");
    await pool.close();
  });
});
