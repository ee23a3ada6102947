// The client: a workpool queue seen from a producer (ioredis).

import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster, Redis } from "ioredis";
import {
  ConfigError,
  DeadLetter,
  DeadLetterFilter,
  DeadLetterRef,
  Layout,
  LayoutOptions,
  LIST_PAGE,
  Locate,
  PartitionKeys,
  Payload,
  PIPELINE_CHUNK,
  Planned,
  RefLike,
  Result,
  RETRY_CHUNK,
  RetryOutcome,
  RoundRobin,
  STATS_COUNT_LIMIT_CHUNKS,
  Stats,
  SubmitError,
  Submitted,
  Task,
  TaskLike,
  TaskOptions,
  TaskStatus,
  WAIT_SLICE_MS,
  WaitTimeoutError,
  aggregateStats,
  chunks,
  compareDeadLetters,
  filterIsEmpty,
  filterMatches,
  filterRange,
  parseDeadLetter,
  parseResult,
  parseStats,
  plan,
  toRef,
  toTaskRef,
  trimThreshold,
  upperBound,
} from "./protocol";
import { ConnectOptions, connect, parseUrl } from "./url";

export type Client = Redis | Cluster;

export const SCRIPT_NAMES = ["stats", "submit_dedup", "retry", "result"] as const;
export type ScriptName = (typeof SCRIPT_NAMES)[number];

// dist/pool.js in the package; build/src/pool.js in the tests' build.
const SCRIPT_DIR = [join(__dirname, "..", "scripts"), join(__dirname, "..", "..", "scripts")].find((d) => existsSync(join(d, "stats.lua")));

/** The canonical Lua scripts, shipped in the package's scripts/ folder. */
export const SCRIPTS: Record<ScriptName, { source: string; sha: string }> = Object.fromEntries(
  SCRIPT_NAMES.map((n) => {
    const source = readFileSync(join(SCRIPT_DIR ?? join(__dirname, "..", "scripts"), `${n}.lua`), "utf8");
    return [n, { source, sha: createHash("sha1").update(source).digest("hex") }];
  }),
) as Record<ScriptName, { source: string; sha: string }>;

/** Runs a canonical script by EVALSHA, loading it with EVAL when the server lacks it. */
export async function runScript(client: Client, name: ScriptName, keys: string[], args: Array<string | number | Buffer>, buffers = false): Promise<unknown> {
  const s = SCRIPTS[name];
  const call = (cmd: string, first: string) =>
    buffers ? client.callBuffer(cmd, first, keys.length, ...keys, ...args) : client.call(cmd, first, keys.length, ...keys, ...args);
  try {
    return await call("EVALSHA", s.sha);
  } catch (e) {
    if (!String((e as Error).message).includes("NOSCRIPT")) throw e;
    return await call("EVAL", s.source);
  }
}

export interface PoolOptions extends LayoutOptions {
  /** The first partition of the round robin (random by default). */
  roundRobinStart?: number;
}

export interface DurableOptions {
  /** With R > 0 each pipeline ends with WAIT R waitTimeoutMs; tasks are `confirmed` when R replicas acknowledged them. */
  minReplicas?: number;
  waitTimeoutMs?: number;
}

export interface ListOptions extends DeadLetterFilter {
  /** At most this many (default 100; null: all). */
  limit?: number | null;
  newestFirst?: boolean;
}

/**
 * A workpool queue, seen from a producer: submit tasks, read stats, inspect and retry dead
 * letters, wait for results. `redis` is an ioredis `Redis` (standalone or Sentinel) or
 * `Cluster`; the key names follow the mode (`cluster` for a Cluster).
 */
export class Pool {
  readonly layout: Layout;
  private readonly rr: RoundRobin;
  private readonly idleBlocking: Client[] = [];
  private readonly busyBlocking = new Set<Client>();
  private owned = false;

  constructor(
    readonly redis: Client,
    options: PoolOptions,
  ) {
    const mode = options.mode ?? (redis instanceof Cluster ? "cluster" : "standalone");
    this.layout = new Layout({ ...options, mode });
    this.rr = new RoundRobin(this.layout.partitions, options.roundRobinStart);
  }

  /** A pool on the Redis a workpool URL names (the same URL the WorkPool uses). */
  static fromUrl(url: string, options: PoolOptions & ConnectOptions): Pool {
    const t = parseUrl(url);
    const client = connect(t, options);
    let pool: Pool;
    try {
      pool = new Pool(client, { ...options, mode: t.mode });
    } catch (e) {
      client.disconnect();
      throw e;
    }
    pool.owned = true;
    return pool;
  }

  /** Closes the connections of waitFor, and the client if fromUrl created it. */
  async close(): Promise<void> {
    for (const c of [...this.idleBlocking, ...this.busyBlocking]) c.disconnect();
    this.idleBlocking.length = 0;
    this.busyBlocking.clear();
    if (this.owned) await this.redis.quit().catch(() => this.redis.disconnect());
  }

  // ---------------------------------------------------------------------- submit

  /** Submits one task. */
  async submit(payload: Payload, options: TaskOptions & DurableOptions = {}): Promise<Submitted> {
    const { minReplicas, waitTimeoutMs, ...task } = options;
    return (await this.submitMany([{ ...task, payload }], { minReplicas, waitTimeoutMs }))[0];
  }

  /**
   * Submits tasks in pipelines (per partition, at most 1,000 commands each); returns one
   * Submitted per task, in input order. Every task is validated first: bad input submits
   * nothing. A failure part way rejects with a SubmitError saying what was submitted.
   */
  async submitMany(tasks: Task[], options: DurableOptions = {}): Promise<Submitted[]> {
    const minReplicas = options.minReplicas ?? 0;
    if (!Number.isInteger(minReplicas) || minReplicas < 0) throw new ConfigError("minReplicas must be an integer >= 0");
    const planned = tasks.map((t) => plan(this.layout, t, this.rr));
    const out: Array<Submitted | undefined> = new Array(planned.length).fill(undefined);
    const byPartition = new Map<number, number[]>();
    planned.forEach((p, i) => {
      const a = byPartition.get(p.partition) ?? [];
      a.push(i);
      byPartition.set(p.partition, a);
    });
    for (const idxs of byPartition.values()) {
      for (const chunk of chunks(idxs, PIPELINE_CHUNK)) {
        await this.submitChunk(chunk.map((i) => planned[i]), chunk, out, minReplicas, options.waitTimeoutMs ?? 1000);
      }
    }
    return out as Submitted[];
  }

  private async submitChunk(planned: Planned[], positions: number[], out: Array<Submitted | undefined>, minReplicas: number, waitTimeoutMs: number): Promise<void> {
    // One partition per pipeline: on a Cluster it goes to that partition's node, where
    // WAIT counts the XADDs of the same connection.
    const pipe = this.redis.pipeline();
    for (const p of planned) {
      if (p.script) pipe.call("EVAL", SCRIPTS[p.script].source, p.keys.length, ...p.keys, ...p.args);
      else pipe.call("XADD", p.keys[0], "*", ...p.args);
    }
    if (minReplicas > 0) pipe.call("WAIT", minReplicas, Math.max(0, Math.round(waitTimeoutMs)));
    let replies: Array<[Error | null, unknown]>;
    try {
      replies = (await pipe.exec()) ?? [];
    } catch (e) {
      const n = out.filter((s) => s !== undefined).length;
      throw new SubmitError(`submit failed after ${n} of ${out.length} tasks: ${(e as Error).message}`, out, e);
    }
    let confirmed: boolean | undefined;
    if (minReplicas > 0) {
      const [err, w] = replies[replies.length - 1];
      confirmed = !err && Number(w) >= minReplicas;
    }
    let firstError: Error | null = null;
    planned.forEach((p, j) => {
      const [err, r] = replies[j];
      if (err) {
        firstError ??= err;
        return;
      }
      if (p.script) {
        const [added, eid] = r as [number, string];
        out[positions[j]] = { partition: p.partition, entryId: String(eid), taskId: p.taskId ?? String(eid), duplicate: Number(added) === 0, confirmed };
      } else {
        const eid = String(r);
        out[positions[j]] = { partition: p.partition, entryId: eid, taskId: p.taskId ?? eid, duplicate: false, confirmed };
      }
    });
    if (firstError) throw new SubmitError(`submit failed for some tasks: ${(firstError as Error).message}`, out, firstError);
  }

  // ---------------------------------------------------------------------- stats

  /** One partition's stats, read atomically. */
  async partitionStats(partition: number): Promise<Stats> {
    const k = this.layout.partition(partition);
    const reply = await runScript(this.redis, "stats", [k.stream, k.dead], [this.layout.group, STATS_COUNT_LIMIT_CHUNKS]);
    return parseStats(reply, k.stream, this.layout.group);
  }

  /** The pool's stats; JSON.stringify gives what `workpool-worker stats --json` prints. */
  async stats(): Promise<Stats> {
    const parts: Stats[] = [];
    for (let i = 0; i < this.layout.partitions; i++) parts.push(await this.partitionStats(i));
    return aggregateStats(this.layout.stream, this.layout.group, parts);
  }

  // ---------------------------------------------------------------------- dead letters

  private partitionsOf(f: DeadLetterFilter): PartitionKeys[] {
    return f.partition !== undefined ? [this.layout.partition(f.partition)] : [...this.layout.keys];
  }

  private async *iterPartition(k: PartitionKeys, f: DeadLetterFilter, newestFirst: boolean, lastId?: string): AsyncGenerator<DeadLetter> {
    let [lo, hi] = filterRange(f);
    if (lastId !== undefined) hi = upperBound(hi, lastId);
    for (;;) {
      const rows = (newestFirst
        ? await this.redis.xrevrangeBuffer(k.dead, hi, lo, "COUNT", LIST_PAGE)
        : await this.redis.xrangeBuffer(k.dead, lo, hi, "COUNT", LIST_PAGE)) as unknown as Array<[Buffer, Buffer[]]>;
      for (const [id, fields] of rows) {
        const d = parseDeadLetter(k.index, id.toString(), fields);
        if (filterMatches(f, d)) yield d;
      }
      if (rows.length < LIST_PAGE) return;
      const last = "(" + rows[rows.length - 1][0].toString();
      if (newestFirst) hi = last;
      else lo = last;
    }
  }

  /** Dead letters matching the filter, oldest first (or newest first), partitions merged; read page by page. */
  async *iterDeadLetters(filter: DeadLetterFilter & { newestFirst?: boolean } = {}): AsyncGenerator<DeadLetter> {
    const newest = filter.newestFirst ?? false;
    const its = this.partitionsOf(filter).map((k) => this.iterPartition(k, filter, newest));
    const heads: Array<{ d: DeadLetter; i: number }> = [];
    for (let i = 0; i < its.length; i++) {
      const n = await its[i].next();
      if (!n.done) heads.push({ d: n.value, i });
    }
    while (heads.length > 0) {
      let best = 0;
      for (let j = 1; j < heads.length; j++) {
        const c = compareDeadLetters(heads[j].d, heads[best].d);
        if (newest ? c > 0 : c < 0) best = j;
      }
      const [{ d, i }] = heads.splice(best, 1);
      yield d;
      const n = await its[i].next();
      if (!n.done) heads.push({ d: n.value, i });
    }
  }

  /** Like iterDeadLetters, as an array of at most `limit` (default 100; null: all). */
  async deadLetters(options: ListOptions = {}): Promise<DeadLetter[]> {
    const limit = options.limit === undefined ? 100 : options.limit;
    const out: DeadLetter[] = [];
    if (limit === 0) return out;
    for await (const d of this.iterDeadLetters(options)) {
      out.push(d);
      if (limit !== null && out.length >= limit) break;
    }
    return out;
  }

  /** One dead letter by reference, or null. */
  async deadLetter(ref: RefLike): Promise<DeadLetter | null> {
    const r = toRef(ref);
    const k = this.layout.partition(r.partition);
    const rows = (await this.redis.xrangeBuffer(k.dead, r.id, r.id, "COUNT", 1)) as unknown as Array<[Buffer, Buffer[]]>;
    return rows.length ? parseDeadLetter(r.partition, rows[0][0].toString(), rows[0][1]) : null;
  }

  private groupRefs(refs: RefLike[]): [DeadLetterRef[], Map<number, number[]>] {
    const rs = refs.map(toRef);
    const groups = new Map<number, number[]>();
    rs.forEach((r, i) => {
      this.layout.partition(r.partition);
      const a = groups.get(r.partition) ?? [];
      a.push(i);
      groups.set(r.partition, a);
    });
    return [rs, groups];
  }

  /** Puts dead letters back into their partition's task stream, each atomically; new entry ids in input order (null: it was not there). */
  async retryDeadLetters(refs: RefLike[]): Promise<RetryOutcome[]> {
    const [rs, groups] = this.groupRefs(refs);
    const out: RetryOutcome[] = new Array(rs.length);
    for (const [part, idxs] of groups) {
      const k = this.layout.keys[part];
      for (const chunk of chunks(idxs, RETRY_CHUNK)) {
        const reply = (await runScript(this.redis, "retry", [k.stream, k.dead], [k.stream, ...chunk.map((i) => rs[i].id)])) as Array<[string, string | null]>;
        chunk.forEach((i, j) => {
          const row = reply[j];
          out[i] = { ref: rs[i], entryId: row && row[1] != null ? String(row[1]) : null };
        });
      }
    }
    return out;
  }

  private async newestId(k: PartitionKeys): Promise<string | undefined> {
    const rows = (await this.redis.xrevrange(k.dead, "+", "-", "COUNT", 1)) as Array<[string, string[]]>;
    return rows.length ? rows[0][0] : undefined;
  }

  /** Retries every dead letter matching the filter that exists when the call starts (in batches of 100). */
  async retryAllDeadLetters(filter: DeadLetterFilter = {}): Promise<RetryOutcome[]> {
    const out: RetryOutcome[] = [];
    for (const k of this.partitionsOf(filter)) {
      const last = await this.newestId(k);
      if (last === undefined) continue;
      let batch: DeadLetterRef[] = [];
      for await (const d of this.iterPartition(k, filter, false, last)) {
        batch.push(d.ref);
        if (batch.length === RETRY_CHUNK) {
          out.push(...(await this.retryDeadLetters(batch)));
          batch = [];
        }
      }
      if (batch.length) out.push(...(await this.retryDeadLetters(batch)));
    }
    return out;
  }

  /** Deletes dead letters by reference; returns how many existed. */
  async purgeDeadLetters(refs: RefLike[]): Promise<number> {
    const [rs, groups] = this.groupRefs(refs);
    let n = 0;
    for (const [part, idxs] of groups) {
      const k = this.layout.keys[part];
      for (const chunk of chunks(idxs, PIPELINE_CHUNK)) n += Number(await this.redis.xdel(k.dead, ...chunk.map((i) => rs[i].id)));
    }
    return n;
  }

  /** Deletes every dead letter matching the filter that exists when the call starts; returns how many. */
  async purgeAllDeadLetters(filter: DeadLetterFilter = {}): Promise<number> {
    let n = 0;
    for (const k of this.partitionsOf(filter)) {
      const last = await this.newestId(k);
      if (last === undefined) continue;
      if (filterIsEmpty(filter)) {
        n += Number(await this.redis.call("XTRIM", k.dead, "MINID", trimThreshold(last)));
        continue;
      }
      const ids: string[] = [];
      for await (const d of this.iterPartition(k, filter, false, last)) ids.push(d.id);
      for (const chunk of chunks(ids, PIPELINE_CHUNK)) n += Number(await this.redis.xdel(k.dead, ...chunk));
    }
    return n;
  }

  // ---------------------------------------------------------------------- results

  /** The task's result record, or null (not finished, results off, or expired). */
  async result(task: TaskLike, where: Locate = {}): Promise<Result | null> {
    const ref = toTaskRef(this.layout, task, where);
    return parseResult(await this.redis.hgetallBuffer(this.layout.keys[ref.partition].result(ref.taskId)));
  }

  /** Where the task is: done/dead need results on; queued/running need the entry id (pass what submit returned). */
  async status(task: TaskLike, where: Locate = {}): Promise<TaskStatus> {
    const ref = toTaskRef(this.layout, task, where);
    const k = this.layout.keys[ref.partition];
    let res = parseResult(await this.redis.hgetallBuffer(k.result(ref.taskId)));
    if (res) return { state: res.state, result: res };
    if (ref.entryId !== undefined) {
      const rows = await this.redis.xrange(k.stream, ref.entryId, ref.entryId, "COUNT", 1);
      if (rows.length) {
        let p: unknown[] = [];
        try {
          p = (await this.redis.xpending(k.stream, this.layout.group, ref.entryId, ref.entryId, 1)) as unknown[];
        } catch (e) {
          if (!String((e as Error).message).includes("NOGROUP")) throw e;
        }
        if (p.length) {
          const [, consumer, , deliveries] = p[0] as [string, string, number, number];
          return { state: "running", consumer: String(consumer), deliveries: Number(deliveries) };
        }
        return { state: "queued" };
      }
      res = parseResult(await this.redis.hgetallBuffer(k.result(ref.taskId)));
      if (res) return { state: res.state, result: res };
    }
    return { state: "unknown" };
  }

  private acquireBlocking(): Client {
    const c = this.idleBlocking.pop() ?? this.redis.duplicate();
    this.busyBlocking.add(c);
    return c;
  }

  private releaseBlocking(c: Client, healthy: boolean): void {
    this.busyBlocking.delete(c);
    if (healthy && this.idleBlocking.length < 8) this.idleBlocking.push(c);
    else c.disconnect();
  }

  /**
   * Resolves with the task's result once it exists (the pool needs results on); rejects
   * with WaitTimeoutError after timeoutMs. It blocks on the task's notification list
   * (BLMOVE, on a connection of its own), it does not poll.
   */
  async waitFor(task: TaskLike, timeoutMs = 30_000, where: Locate = {}): Promise<Result> {
    const ref = toTaskRef(this.layout, task, where);
    const k = this.layout.keys[ref.partition];
    const rkey = k.result(ref.taskId);
    const nkey = k.notify(ref.taskId);
    const deadline = Date.now() + timeoutMs;
    let blocking: Client | undefined;
    let healthy = true;
    try {
      for (;;) {
        const res = parseResult(await this.redis.hgetallBuffer(rkey));
        if (res) return res;
        const left = deadline - Date.now();
        if (left <= 0) throw new WaitTimeoutError(ref.taskId, timeoutMs);
        blocking ??= this.acquireBlocking();
        // Never 0 (which blocks forever); Redis counts in ms.
        const secs = Math.max(Math.min(left, WAIT_SLICE_MS), 10) / 1000;
        try {
          await blocking.blmove(nkey, nkey, "RIGHT", "LEFT", secs);
        } catch (e) {
          healthy = false;
          throw e;
        }
      }
    } finally {
      if (blocking) this.releaseBlocking(blocking, healthy);
    }
  }
}
