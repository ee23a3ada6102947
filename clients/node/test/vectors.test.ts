// The shared protocol vectors (clients/vectors/), run against real redis-servers.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { Cluster, Redis } from "ioredis";
import {
  ConfigError,
  DeadLetter,
  DeadLetterRef,
  Layout,
  Pool,
  Result,
  RoundRobin,
  SCRIPTS,
  SCRIPT_NAMES,
  Submitted,
  Task,
  crc16,
  logicalCommand,
  parseUrl,
  partitionForKey,
  plan,
  runScript,
} from "../src/index";
import { REPO, Server, TestCluster, VECTORS, skipOrFail, vectors } from "./servers";

const skip = skipOrFail();

function asBuffer(v: any): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v && typeof v === "object") {
    if ("base64" in v) return Buffer.from(v.base64, "base64");
    if ("text" in v) return Buffer.from(v.text, "utf8");
  }
  return Buffer.from(String(v), "utf8");
}

function payloadOf(p: any): any {
  if ("json" in p) return p.json;
  return "base64" in p ? asBuffer(p) : p.text;
}

function layoutOf(pool: any): Layout {
  return new Layout({ stream: pool.stream, group: pool.group, partitions: pool.partitions, mode: pool.mode, deadLetterStream: pool.dead_letter_stream });
}

function poolOn(client: Redis | Cluster, pool: any, roundRobinStart?: number): Pool {
  return new Pool(client, { stream: pool.stream, group: pool.group, partitions: pool.partitions, mode: pool.mode, deadLetterStream: pool.dead_letter_stream, roundRobinStart });
}

function taskOf(t: any): Task {
  const task: Task = { payload: payloadOf(t.payload) };
  for (const k of ["id", "attempt", "key", "partition", "dedup"] as const) if (k in t) (task as any)[k] = t[k];
  if ("dedup_window_ms" in t) task.dedupWindowMs = t.dedup_window_ms;
  return task;
}

async function entryFields(client: Redis | Cluster, stream: string, id: string): Promise<Buffer[][]> {
  const rows = (await client.callBuffer("XRANGE", stream, id, id)) as Array<[Buffer, Buffer[]]>;
  assert.equal(rows.length, 1, `entry ${id} not in ${stream}`);
  const f = rows[0][1];
  const out: Buffer[][] = [];
  for (let i = 0; i < f.length; i += 2) out.push([f[i], f[i + 1]]);
  return out;
}

const pairsOf = (kv: any[][]) => kv.map(([k, v]) => [asBuffer(k), asBuffer(v)]);

describe("scripts", () => {
  for (const name of SCRIPT_NAMES) {
    it(`packaged ${name}.lua is the canonical one`, () => {
      assert.equal(SCRIPTS[name].source, readFileSync(join(VECTORS, "scripts", `${name}.lua`), "utf8"));
    });
  }
  it("stats.lua is the worker's STATS script", () => {
    const src = readFileSync(join(REPO, "worker", "src", "queue.rs"), "utf8");
    const m = /static STATS: LazyLock<Script> = LazyLock::new\(\|\| \{\s*Script::new\(\s*r#"\n([\s\S]*?)"#/.exec(src);
    assert.ok(m, "the STATS script is no longer where this test looks for it");
    assert.equal(m[1], SCRIPTS.stats.source);
  });
});

describe("keys", () => {
  for (const c of vectors("keys.json").cases) {
    it(c.name, () => {
      if (c.error) {
        assert.throws(() => layoutOf(c.pool), ConfigError);
        return;
      }
      const lay = layoutOf(c.pool);
      assert.equal(lay.draining, c.expect.draining);
      assert.deepEqual(
        lay.keys.map((k) => ({ stream: k.stream, dead: k.dead, result: k.result(c.task_id), notify: k.notify(c.task_id), dedup: k.dedup(c.task_id) })),
        c.expect.partitions,
      );
    });
  }
});

const PART = vectors("partition.json");

describe("partitions (pure)", () => {
  it("crc16", () => {
    for (const c of PART.crc16) {
      assert.equal(crc16(c.key), c.crc16, c.key);
      assert.equal(crc16(Buffer.from(c.key, "utf8")), c.crc16, c.key);
    }
  });
  it("by key", () => {
    for (const c of PART.by_key) assert.equal(partitionForKey(c.key, c.partitions), c.expect, JSON.stringify(c));
  });
});

const URLS = vectors("urls.json");

describe("urls", () => {
  for (const c of URLS.cases) {
    it(c.url, () => {
      const t = parseUrl(c.url);
      const e = c.expect;
      assert.equal(t.mode, e.mode);
      assert.equal(t.tls, e.tls);
      assert.equal(t.db, e.db);
      assert.equal(t.username, e.username);
      assert.equal(t.password, e.password);
      if ("path" in e) assert.equal(t.path, e.path);
      else assert.deepEqual(t.hosts, e.hosts);
      for (const [k, tk] of [["master", "master"], ["sentinel_username", "sentinelUsername"], ["sentinel_password", "sentinelPassword"]] as const) {
        if (k in e) assert.equal((t as any)[tk], e[k]);
      }
    });
  }
  for (const u of URLS.bad) {
    it(`refuses ${JSON.stringify(u)}`, () => {
      assert.throws(() => parseUrl(u), (e: unknown) => e instanceof ConfigError && !String((e as Error).message).includes("pw@"));
    });
  }
});

const SUBMIT = vectors("submit.json");

describe("submit commands (pure)", () => {
  for (const c of SUBMIT.cases) {
    it(c.name, () => {
      const lay = layoutOf(c.pool);
      const rr = new RoundRobin(lay.partitions, c.round_robin_start ?? 0);
      c.tasks.forEach((t: any, i: number) => {
        const p = plan(lay, taskOf(t), rr);
        assert.equal(p.partition, c.expect[i].partition);
        assert.deepEqual(logicalCommand(p).map(asBuffer), c.expect[i].command.map(asBuffer));
      });
    });
  }
});

const DL = vectors("dead_letters.json");

describe("dead-letter references (pure)", () => {
  it("parse and print", () => {
    for (const c of DL.refs) {
      const r = DeadLetterRef.parse(c.text);
      assert.deepEqual([r.partition, r.id], [c.partition, c.id]);
      assert.equal(String(r), c.canonical ?? c.text);
    }
    for (const b of DL.bad_refs) assert.throws(() => DeadLetterRef.parse(b), ConfigError, b);
  });
});

describe("against real redis-servers", { skip }, () => {
  let server: Server;
  let cluster: TestCluster;
  let r: Redis;
  let rc: Cluster;

  before(async () => {
    server = await Server.start();
    cluster = await TestCluster.start();
    r = server.client();
    rc = cluster.client();
  });
  after(async () => {
    r?.disconnect();
    rc?.disconnect();
    server?.stop();
    cluster?.stop();
  });
  beforeEach(async () => {
    await r.flushall();
    await cluster.flush();
  });

  for (const c of PART.round_robin) {
    it(`round robin ${c.partitions} from ${c.start}`, async () => {
      const pool = new Pool(r, { stream: "rr", partitions: c.partitions, roundRobinStart: c.start });
      const subs = await pool.submitMany(Array.from({ length: c.tasks }, (_, i) => ({ payload: `t${i}` })));
      assert.deepEqual(subs.map((s) => s.partition), c.expect);
      const one = new Pool(r, { stream: "rr1", partitions: c.partitions, roundRobinStart: c.start });
      const got: number[] = [];
      for (let i = 0; i < c.tasks; i++) got.push((await one.submit("x")).partition);
      assert.deepEqual(got, c.expect);
    });
  }

  for (const c of SUBMIT.cases) {
    it(`submit entries: ${c.name}`, async () => {
      const client = c.pool.mode === "cluster" ? rc : r;
      const pool = poolOn(client, c.pool, c.round_robin_start ?? 0);
      const subs: Submitted[] = [];
      for (const t of c.tasks) subs.push((await pool.submitMany([taskOf(t)]))[0]);
      for (let i = 0; i < subs.length; i++) {
        const s = subs[i];
        const e = c.expect[i];
        assert.equal(s.partition, e.partition);
        if ("duplicate" in e) assert.equal(s.duplicate, e.duplicate);
        if ("same_entry_as" in e) assert.equal(s.entryId, subs[e.same_entry_as].entryId);
        else assert.deepEqual(await entryFields(client, pool.layout.keys[s.partition].stream, s.entryId), pairsOf(e.entry));
        const want = e.task_id ?? "@entry_id";
        assert.equal(s.taskId, want === "@entry_id" ? s.entryId : want);
      }
      if (c.stream_lengths) {
        const lens = [];
        for (const k of pool.layout.keys) lens.push(await client.xlen(k.stream));
        assert.deepEqual(lens, c.stream_lengths);
      }
    });
  }

  for (const c of SUBMIT.errors) {
    it(`submit refused, nothing written: ${c.name}`, async () => {
      const pool = poolOn(r, c.pool);
      await assert.rejects(pool.submitMany([{ payload: "fine" }, taskOf(c.task)]), ConfigError);
      assert.equal(await r.dbsize(), 0);
    });
  }

  it("accepted ids", async () => {
    const pool = new Pool(r, { stream: "q" });
    for (const id of SUBMIT.accepted_ids) {
      const s = await pool.submit("x", { id });
      assert.equal(s.taskId, id);
      assert.deepEqual(await entryFields(r, "q", s.entryId), pairsOf([["payload", "x"], ["id", id]]));
    }
  });

  const expand = (a: string, lay: Layout) =>
    a.replace(/\$\{(P|D|G)(\d*)\}/g, (_m, kind: string, i: string) => (kind === "G" ? lay.group : kind === "P" ? lay.keys[Number(i)].stream : lay.keys[Number(i)].dead));

  function checkStats(got: any, want: any) {
    for (const [k, v] of Object.entries(want)) {
      if (k === "partitions") {
        assert.equal(got.partitions.length, (v as any[]).length);
        (v as any[]).forEach((w, i) => checkStats(got.partitions[i], w));
      } else if (k === "consumers") {
        assert.deepEqual(got.consumers.map((c: any) => ({ name: c.name, pending: c.pending })), v);
      } else if (v === "present") {
        assert.ok(Number.isInteger(got[k]) && got[k] >= 0, k);
      } else assert.deepEqual(got[k], v, k);
    }
  }

  for (const c of vectors("stats.json").cases) {
    it(`stats: ${c.name}`, async () => {
      const client = c.pool.mode === "cluster" ? rc : r;
      const pool = poolOn(client, c.pool);
      for (const cmd of c.setup) await client.call(cmd[0], ...cmd.slice(1).map((a: string) => expand(a, pool.layout)));
      checkStats(JSON.parse(JSON.stringify(await pool.stats())), c.expect);
    });
  }

  const dlView = (d: DeadLetter) => ({
    ref: String(d.ref),
    task_id: d.taskId,
    payload: d.payload === null ? null : { text: d.payload.toString("utf8") },
    original_id: d.originalId,
    error: d.error,
    deliveries: d.deliveries,
    stream: d.stream,
    group: d.group,
    consumer: d.consumer,
    dead_lettered_ms: d.deadLetteredMs,
    fields: d.fields.map(([k, v]) => [k, v.toString("utf8")]),
  });

  for (const c of DL.parse) {
    it(`dead letter parse: ${c.name}`, async () => {
      const pool = new Pool(r, { stream: "q", partitions: c.partition + 1 });
      await r.call("XADD", pool.layout.keys[c.partition].dead, c.id, ...c.fields.flat().map(asBuffer));
      assert.deepEqual(dlView((await pool.deadLetter(new DeadLetterRef(c.partition, c.id)))!), c.expect);
      assert.deepEqual(dlView((await pool.deadLetters())[0]), c.expect);
    });
  }

  for (const c of DL.retry) {
    it(`dead letter retry: ${c.name}`, async () => {
      const client = c.pool.mode === "cluster" ? rc : r;
      const pool = poolOn(client, c.pool);
      const k = pool.layout.keys[c.partition];
      const dlId = String(await client.call("XADD", k.dead, "*", ...c.fields.flat().map(asBuffer)));
      const tid = c.expect_task_id;
      if (c.with_result) {
        await runScript(client, "result", [k.result(tid), k.notify(tid)], [60000, "dead", "task_id", tid]);
        assert.equal(await client.exists(k.result(tid), k.notify(tid)), 2);
      }
      const ref = new DeadLetterRef(c.partition, dlId);
      const [out] = await pool.retryDeadLetters([String(ref)]);
      assert.equal(String(out.ref), String(ref));
      assert.ok(out.entryId);
      assert.deepEqual(await entryFields(client, k.stream, out.entryId!), pairsOf(c.expect_entry));
      assert.equal(await client.xlen(k.stream), 1);
      assert.equal(await client.xlen(k.dead), 0);
      assert.equal(await client.exists(k.result(tid), k.notify(tid)), 0);
      assert.deepEqual((await pool.retryDeadLetters([ref])).map((o) => o.entryId), [null]);
      assert.equal(await client.xlen(k.stream), 1);
    });
  }

  it("dead letter filters", async () => {
    const spec = DL.filters;
    const pool = poolOn(r, spec.pool);
    for (const e of spec.entries) await r.call("XADD", pool.layout.keys[e.partition].dead, e.id, ...e.fields.flat().map(asBuffer));
    for (const c of spec.cases) {
      const f = c.filter;
      const opts = {
        limit: f.limit ?? null,
        newestFirst: f.newest_first,
        since: f.since_ms,
        until: f.until_ms,
        errorContains: f.error_contains,
        taskId: f.task_id,
        consumer: f.consumer,
        minDeliveries: f.min_deliveries,
        partition: f.partition,
      };
      assert.deepEqual((await pool.deadLetters(opts)).map((d) => String(d.ref)), c.expect, JSON.stringify(c));
    }
  });

  const resultView = (res: Result) => {
    let output: any = null;
    if (res.output) {
      const t = res.output.toString("utf8");
      output = Buffer.from(t, "utf8").equals(res.output) ? { text: t } : { base64: res.output.toString("base64") };
    }
    return {
      state: res.state,
      version: res.version,
      task_id: res.taskId,
      entry_id: res.entryId,
      deliveries: res.deliveries,
      consumer: res.consumer,
      started_ms: res.startedMs,
      finished_ms: res.finishedMs,
      output,
      output_truncated: res.outputTruncated,
      error: res.error,
      dead_letter_id: res.deadLetterId,
      extra: res.extra.map(([k, v]) => [k, v.toString("utf8")]),
    };
  };

  for (const c of vectors("results.json").cases) {
    it(`results: ${c.name}`, async () => {
      const pool = new Pool(r, { stream: "q" });
      const tid = Object.fromEntries(c.fields.filter(([k]: any) => k === "task_id")).task_id;
      const k = pool.layout.keys[0];
      const args = [60000, c.state, ...c.fields.flat().map(asBuffer)];
      await runScript(r, "result", [k.result(tid), k.notify(tid)], args);
      const pttl = await r.pttl(k.result(tid));
      assert.ok(pttl > 0 && pttl <= 60000);
      assert.deepEqual(await r.lrange(k.notify(tid), 0, -1), [c.state]);
      assert.deepEqual(resultView((await pool.result(tid))!), c.expect);
      assert.deepEqual(resultView(await pool.waitFor(tid, 1000)), c.expect);
      const st = await pool.status({ taskId: tid, partition: 0, entryId: "1-0" });
      assert.equal(st.state, c.state);
      assert.deepEqual(resultView(st.result!), c.expect);
      await runScript(r, "result", [k.result(tid), k.notify(tid)], args);
      assert.deepEqual(await r.lrange(k.notify(tid), 0, -1), [c.state]);
      await pool.close();
    });
  }
});
