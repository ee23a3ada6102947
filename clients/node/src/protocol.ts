// The pure part of the workpool protocol (docs/protocol.md): key names, partition choice,
// payload encoding, task validation, parsing of Redis replies. No I/O here.

export const PROTOCOL_VERSION = 1;
/** The revision of that version (docs/protocol.md section 9). */
export const PROTOCOL_REVISION = 4;
export const MAX_TASK_ID_BYTES = 512;
export const DEFAULT_DEDUP_WINDOW_MS = 86_400_000;
export const PIPELINE_CHUNK = 1000;
export const RETRY_CHUNK = 100;
export const LIST_PAGE = 500;
export const STATS_COUNT_LIMIT_CHUNKS = 50;
export const MAX_PARTITIONS = 1024;
/** The longest single BLMOVE of waitFor (a safety net, not a poll). */
export const WAIT_SLICE_MS = 5000;

export type Mode = "standalone" | "sentinel" | "cluster";

/** Base class of this package's errors. */
export class WorkpoolError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A pool configuration, URL, task or reference that cannot be used. */
export class ConfigError extends WorkpoolError {}

/** waitFor found no result within its timeout. */
export class WaitTimeoutError extends WorkpoolError {
  constructor(
    readonly taskId: string,
    readonly timeoutMs: number,
  ) {
    super(`no result for task ${JSON.stringify(taskId)} within ${timeoutMs} ms`);
  }
}

/** A batch failed part way: `submitted` holds, by input position, the tasks that did get an entry id. */
export class SubmitError extends WorkpoolError {
  constructor(
    message: string,
    readonly submitted: Array<Submitted | undefined>,
    cause?: unknown,
  ) {
    super(message, { cause });
  }
}

// ------------------------------------------------------------------------ entry ids

const ENTRY_ID = /^(\d{1,20})-(\d{1,20})$/;
const U64_MAX = (1n << 64n) - 1n;

export function parseEntryId(s: string): [bigint, bigint] {
  const m = ENTRY_ID.exec(s);
  if (!m) throw new ConfigError(`invalid stream entry id ${JSON.stringify(s)} (expected <ms>-<seq>)`);
  const ms = BigInt(m[1]);
  const seq = BigInt(m[2]);
  if (ms > U64_MAX || seq > U64_MAX) throw new ConfigError(`invalid stream entry id ${JSON.stringify(s)} (out of range)`);
  return [ms, seq];
}

export function compareEntryIds(a: string, b: string): number {
  const [am, as] = parseEntryId(a);
  const [bm, bs] = parseEntryId(b);
  return am < bm ? -1 : am > bm ? 1 : as < bs ? -1 : as > bs ? 1 : 0;
}

// ------------------------------------------------------------------------ keys

/** The keys of one partition (docs/protocol.md section 1). */
export class PartitionKeys {
  constructor(
    readonly index: number,
    readonly stream: string,
    readonly dead: string,
  ) {}
  result(taskId: string): string {
    return `${this.stream}:result:${taskId}`;
  }
  notify(taskId: string): string {
    return `${this.stream}:notify:${taskId}`;
  }
  dedup(taskId: string): string {
    return `${this.stream}:dedup:${taskId}`;
  }
}

export interface LayoutOptions {
  stream: string;
  /** Defaults to the stream name, as a WorkPool's does. */
  group?: string;
  partitions?: number;
  mode?: Mode;
  deadLetterStream?: string;
}

/** A pool's names: stream S, group G, N partitions, mode, custom dead-letter stream. */
export class Layout {
  readonly stream: string;
  readonly group: string;
  readonly partitions: number;
  readonly mode: Mode;
  readonly deadLetterStream?: string;
  readonly keys: readonly PartitionKeys[];

  constructor(o: LayoutOptions) {
    const mode = o.mode ?? "standalone";
    if (!["standalone", "sentinel", "cluster"].includes(mode)) throw new ConfigError(`unknown mode ${JSON.stringify(mode)}`);
    if (typeof o.stream !== "string" || o.stream === "") throw new ConfigError("the stream name must not be empty");
    const group = o.group ?? o.stream;
    if (typeof group !== "string" || group === "") throw new ConfigError("the group name must not be empty");
    const n = o.partitions ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > MAX_PARTITIONS) throw new ConfigError(`partitions must be an integer from 1 to ${MAX_PARTITIONS}, not ${n}`);
    const cluster = mode === "cluster";
    if (cluster && /[{}]/.test(o.stream)) {
      throw new ConfigError(
        `on Redis Cluster the stream name must not contain '{' or '}' (workpool adds the hash tag itself): ${JSON.stringify(o.stream)}`,
      );
    }
    const d = o.deadLetterStream;
    if (d !== undefined && d === "") throw new ConfigError("the dead-letter stream name must not be empty");
    const keys: PartitionKeys[] = [];
    for (let i = 0; i < n; i++) {
      const base = i === 0 ? o.stream : `${o.stream}:${i}`;
      const p = cluster ? `{${base}}` : base;
      const dead = d === undefined ? `${p}:dead` : !cluster && n === 1 ? d : `${p}:${d}`;
      if (dead === p) throw new ConfigError("the dead-letter stream must differ from the task stream");
      keys.push(new PartitionKeys(i, p, dead));
    }
    this.stream = o.stream;
    this.group = group;
    this.partitions = n;
    this.mode = mode;
    this.deadLetterStream = d;
    this.keys = keys;
  }

  /** The pool's drain hash (docs/protocol.md 5.1), beside partition 0. */
  get draining(): string {
    return `${this.keys[0].stream}:draining`;
  }

  /** The stats script's third key for partition i: the drain hash for partition 0, the
   * partition's own stream (not a hash: nothing read) for the others, so that every key
   * of one call stays in the partition's hash slot. */
  statsDrainKey(i: number): string {
    return i === 0 ? this.draining : this.partition(i).stream;
  }

  partition(i: number): PartitionKeys {
    if (!Number.isInteger(i) || i < 0 || i >= this.partitions) {
      throw new ConfigError(`partition ${i} does not exist (the pool has ${this.partitions})`);
    }
    return this.keys[i];
  }
}

// ------------------------------------------------------------------------ partitions

/** CRC16-XMODEM (the one Redis Cluster uses for slots). */
export function crc16(data: string | Uint8Array): number {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

export function partitionForKey(key: string | Uint8Array, partitions: number): number {
  return crc16(key) % partitions;
}

/** A producer's round-robin counter, starting at a random partition unless told. */
export class RoundRobin {
  private next: number;
  constructor(
    readonly partitions: number,
    start?: number,
  ) {
    const s = start ?? Math.floor(Math.random() * partitions);
    if (!Number.isInteger(s) || s < 0 || s >= partitions) {
      throw new ConfigError(`roundRobinStart ${s} is not a partition (0..${partitions - 1})`);
    }
    this.next = s;
  }
  take(): number {
    const p = this.next;
    this.next = (p + 1) % this.partitions;
    return p;
  }
}

// ------------------------------------------------------------------------ tasks

/** Buffers and strings are stored as given; any other value is encoded as JSON. */
export type Payload = Buffer | Uint8Array | string | number | boolean | null | object;

export function encodePayload(payload: Payload): Buffer {
  if (Buffer.isBuffer(payload)) return payload;
  if (payload instanceof Uint8Array) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (typeof payload === "string") return Buffer.from(payload, "utf8");
  let s: string | undefined;
  try {
    s = JSON.stringify(payload);
  } catch (e) {
    throw new ConfigError(`the payload is not a Buffer, string or JSON-serializable: ${(e as Error).message}`);
  }
  if (s === undefined) throw new ConfigError(`the payload is not JSON-serializable: ${String(payload)}`);
  return Buffer.from(s, "utf8");
}

export function checkTaskId(id: unknown): string {
  if (typeof id !== "string") throw new ConfigError(`a task id must be a string, not ${typeof id}`);
  const n = Buffer.byteLength(id, "utf8");
  if (n === 0) throw new ConfigError("a task id must not be empty");
  if (n > MAX_TASK_ID_BYTES) throw new ConfigError(`a task id must be at most ${MAX_TASK_ID_BYTES} bytes, not ${n}`);
  if (/^\d+-\d+$/.test(id)) {
    throw new ConfigError(
      `task id ${JSON.stringify(id)} has the form of a stream entry id (<digits>-<digits>), which is reserved for tasks without an id`,
    );
  }
  return id;
}

/** Options of one task. */
export interface TaskOptions {
  /** The task id (results and deduplication are keyed by it); else the entry id. */
  id?: string;
  /** The producer's attempt counter (>= 1). */
  attempt?: number;
  /** Picks the partition by hash (the same in every language). */
  key?: string | Uint8Array;
  /** Picks the partition directly (wins over key). */
  partition?: number;
  /** Do not add a task whose id was submitted within dedupWindowMs. */
  dedup?: boolean;
  dedupWindowMs?: number;
}

/** One task to submit. */
export interface Task extends TaskOptions {
  payload: Payload;
}

export interface Planned {
  partition: number;
  taskId?: string;
  script?: "submit_dedup";
  keys: string[];
  args: Buffer[];
}

/** The command as the vectors write it (`@submit_dedup.lua` for the script). */
export function logicalCommand(p: Planned): Array<string | Buffer> {
  if (p.script) return ["EVAL", `@${p.script}.lua`, String(p.keys.length), ...p.keys, ...p.args];
  return ["XADD", p.keys[0], "*", ...p.args];
}

/** Validates a task and chooses its partition and command (nothing is sent). */
export function plan(layout: Layout, task: Task, rr: RoundRobin): Planned {
  if (task === null || typeof task !== "object" || !("payload" in task)) {
    throw new ConfigError("a task is an object with a payload");
  }
  const payload = encodePayload(task.payload);
  const taskId = task.id !== undefined ? checkTaskId(task.id) : undefined;
  if (task.attempt !== undefined && (!Number.isInteger(task.attempt) || task.attempt < 1)) {
    throw new ConfigError(`attempt must be an integer >= 1, not ${task.attempt}`);
  }
  let windowMs: number | undefined;
  if (task.dedup) {
    if (taskId === undefined) throw new ConfigError("deduplication needs a task id");
    windowMs = Math.round(task.dedupWindowMs ?? DEFAULT_DEDUP_WINDOW_MS);
    if (!(windowMs >= 1)) throw new ConfigError(`dedupWindowMs must be positive, not ${task.dedupWindowMs}`);
  }
  let p: number;
  if (task.partition !== undefined) p = layout.partition(task.partition).index;
  else if (task.key !== undefined) p = partitionForKey(task.key, layout.partitions);
  else if (taskId !== undefined && task.dedup) p = partitionForKey(taskId, layout.partitions);
  else p = rr.take();
  const fields: Buffer[] = [Buffer.from("payload"), payload];
  if (taskId !== undefined) fields.push(Buffer.from("id"), Buffer.from(taskId, "utf8"));
  if (task.attempt !== undefined) fields.push(Buffer.from("attempt"), Buffer.from(String(task.attempt)));
  const k = layout.keys[p];
  if (windowMs !== undefined) {
    return { partition: p, taskId, script: "submit_dedup", keys: [k.stream, k.dedup(taskId!)], args: [Buffer.from(String(windowMs)), ...fields] };
  }
  return { partition: p, taskId, keys: [k.stream], args: fields };
}

/** What identifies a task for status and waitFor. */
export interface TaskRef {
  taskId: string;
  partition: number;
  entryId?: string;
}

/** A submitted task. */
export interface Submitted extends TaskRef {
  entryId: string;
  /** Deduplication found an earlier task with this id (entryId is that task's). */
  duplicate: boolean;
  /** With minReplicas: whether WAIT confirmed it (undefined when not asked). */
  confirmed?: boolean;
}

// ------------------------------------------------------------------------ stats

/** A consumer's state in the pool's drain hash: asked by the operator to stop taking
 * tasks, or its worker has stopped (docs/protocol.md 5.1). */
export type DrainState = "requested" | "stopped";

export interface ConsumerStats {
  name: string;
  pending: number;
  idleMs: number;
  inactiveMs: number | null;
}

/** The figures of `workpool-worker stats --json` (docs/protocol.md section 7);
 * JSON.stringify gives that command's JSON. */
export class Stats {
  streamExists = false;
  groupExists = false;
  streamLength = 0;
  lag = 0;
  lagComputed = false;
  lagEstimated = false;
  pending = 0;
  pendingDeleted = 0;
  backlog = 0;
  deadLetters = 0;
  lastDeliveredId: string | null = null;
  oldestPendingId: string | null = null;
  oldestPendingAgeMs: number | null = null;
  consumers: ConsumerStats[] = [];
  /** For the pool: each partition's stats (empty for a partition's own). */
  partitions: Stats[] = [];
  /** The pool's drain hash (docs/protocol.md 5.1): consumer -> state. On the pool's
   * stats; the elements of `partitions` have none. */
  draining: Record<string, DrainState> = {};

  constructor(
    readonly stream: string,
    readonly group: string,
  ) {}

  toJSON(): Record<string, unknown> {
    const out: Record<string, unknown> = {
      stream: this.stream,
      group: this.group,
      stream_exists: this.streamExists,
      group_exists: this.groupExists,
      stream_length: this.streamLength,
      lag: this.lag,
      lag_computed: this.lagComputed,
      lag_estimated: this.lagEstimated,
      pending: this.pending,
      pending_deleted: this.pendingDeleted,
      backlog: this.backlog,
      dead_letters: this.deadLetters,
      last_delivered_id: this.lastDeliveredId,
      oldest_pending_id: this.oldestPendingId,
      oldest_pending_age_ms: this.oldestPendingAgeMs,
      consumers: this.consumers.map((c) => ({ name: c.name, pending: c.pending, idle_ms: c.idleMs, inactive_ms: c.inactiveMs })),
    };
    if (this.partitions.length > 0) out.partitions = this.partitions.map((p) => p.toJSON());
    if (Object.keys(this.draining).length > 0) out.draining = { ...this.draining };
    return out;
  }
}

function str(v: unknown): string {
  return Buffer.isBuffer(v) ? v.toString("utf8") : String(v);
}

function num(v: unknown): number | null {
  if (typeof v === "number") return v;
  if (v === null || v === undefined) return null;
  const s = str(v);
  if (!/^-?\d+$/.test(s)) return null;
  return Number(s);
}

function pairs(row: unknown): Map<string, unknown> {
  const m = new Map<string, unknown>();
  const a = row as unknown[];
  for (let i = 0; i + 1 < a.length; i += 2) m.set(str(a[i]), a[i + 1]);
  return m;
}

/** The stats script's 15 elements (same reading as `Queue::stats` in queue.rs). */
export function parseStats(reply: unknown, stream: string, group: string): Stats {
  if (!Array.isArray(reply) || reply.length !== 15) throw new WorkpoolError(`unexpected reply from the stats script: ${String(reply)}`);
  const n = (i: number): number => {
    const v = num(reply[i]);
    if (v === null) throw new WorkpoolError(`unexpected element ${i} from the stats script`);
    return v;
  };
  const nowMs = n(0) * 1000 + Math.floor(n(1) / 1000);
  const st = new Stats(stream, group);
  st.deadLetters = Math.max(n(2), 0);
  st.streamExists = n(3) === 1;
  st.streamLength = Math.max(n(4), 0);
  st.groupExists = n(5) === 1;
  st.pending = Math.max(n(6), 0);
  st.lag = Math.max(n(7), 0);
  st.lagComputed = n(8) === 1;
  st.lastDeliveredId = str(reply[9]) || null;
  st.oldestPendingId = str(reply[10]) || null;
  st.lagEstimated = n(12) === 1;
  const present = Math.min(Math.max(n(13), 0), st.pending);
  st.pendingDeleted = st.pending - present;
  st.backlog = st.lag + present;
  if (st.oldestPendingId) {
    st.oldestPendingAgeMs = Math.max(nowMs - Number(parseEntryId(st.oldestPendingId)[0]), 0);
  }
  if (st.groupExists) {
    for (const row of (reply[11] as unknown[]) ?? []) {
      const f = pairs(row);
      st.consumers.push({
        name: str(f.get("name") ?? ""),
        pending: Math.max(num(f.get("pending")) ?? 0, 0),
        idleMs: Math.max(num(f.get("idle")) ?? 0, 0),
        inactiveMs: num(f.get("inactive")),
      });
    }
  }
  // Values other than the two states are left out (a hash someone else wrote under that
  // name is no drain).
  for (const [name, state] of pairs(reply[14] ?? [])) {
    const s = str(state);
    if (s === "requested" || s === "stopped") st.draining[name] = s;
  }
  return st;
}

/** The pool's stats from its partitions' (docs/protocol.md section 7). */
export function aggregateStats(stream: string, group: string, parts: Stats[]): Stats {
  // As the worker: one partition's own names (P_0, tagged on Cluster) and id.
  const st = new Stats(parts.length === 1 ? parts[0].stream : stream, group);
  st.partitions = parts;
  st.groupExists = parts.length > 0 && parts.every((p) => p.groupExists);
  const merged = new Map<string, ConsumerStats>();
  let oldest: Stats | undefined;
  for (const p of parts) {
    st.streamExists ||= p.streamExists;
    st.lagComputed ||= p.lagComputed;
    st.lagEstimated ||= p.lagEstimated;
    st.streamLength += p.streamLength;
    st.lag += p.lag;
    st.pending += p.pending;
    st.pendingDeleted += p.pendingDeleted;
    st.backlog += p.backlog;
    st.deadLetters += p.deadLetters;
    if (p.oldestPendingAgeMs !== null && (oldest === undefined || p.oldestPendingAgeMs > (oldest.oldestPendingAgeMs ?? 0))) oldest = p;
    for (const c of p.consumers) {
      const m = merged.get(c.name);
      if (!m) merged.set(c.name, { ...c });
      else {
        m.pending += c.pending;
        m.idleMs = Math.min(m.idleMs, c.idleMs);
        if (c.inactiveMs !== null) m.inactiveMs = m.inactiveMs === null ? c.inactiveMs : Math.min(m.inactiveMs, c.inactiveMs);
      }
    }
  }
  if (oldest) {
    st.oldestPendingId = oldest.oldestPendingId;
    st.oldestPendingAgeMs = oldest.oldestPendingAgeMs;
  }
  if (parts.length === 1) st.lastDeliveredId = parts[0].lastDeliveredId;
  st.consumers = [...merged.values()];
  // The pool's drain hash is read with partition 0.
  if (parts.length > 0) {
    st.draining = parts[0].draining;
    parts[0].draining = {};
  }
  return st;
}

// ------------------------------------------------------------------------ dead letters

export const RESERVED_DEAD_LETTER_FIELDS = ["original_id", "error", "deliveries", "stream", "group", "consumer"];

/** A dead letter: its partition and entry id; String(ref) is `[<partition>/]<ms>-<seq>`. */
export class DeadLetterRef {
  constructor(
    readonly partition: number,
    readonly id: string,
  ) {}
  toString(): string {
    return this.partition === 0 ? this.id : `${this.partition}/${this.id}`;
  }
  static parse(text: string): DeadLetterRef {
    const bad = () => new ConfigError(`invalid dead-letter reference ${JSON.stringify(text)} (expected [<partition>/]<ms>-<seq>)`);
    if (typeof text !== "string") throw bad();
    const slash = text.lastIndexOf("/");
    let p = 0;
    const id = slash >= 0 ? text.slice(slash + 1) : text;
    if (slash >= 0) {
      const part = text.slice(0, slash);
      if (!/^\d{1,9}$/.test(part)) throw bad();
      p = Number(part);
    }
    if (!ENTRY_ID.test(id)) throw bad();
    return new DeadLetterRef(p, id);
  }
}

export type Fields = Array<[string, Buffer]>;

/** One dead-letter entry (docs/protocol.md section 6). */
export interface DeadLetter {
  ref: DeadLetterRef;
  partition: number;
  id: string;
  payload: Buffer | null;
  taskId: string | null;
  originalId: string | null;
  error: string | null;
  deliveries: number | null;
  stream: string | null;
  group: string | null;
  consumer: string | null;
  /** The fields other than payload and the reserved ones, in order. */
  fields: Fields;
  deadLetteredMs: number;
}

export type RefLike = DeadLetterRef | DeadLetter | string;

export function toRef(r: RefLike): DeadLetterRef {
  if (r instanceof DeadLetterRef) return r;
  if (typeof r === "string") return DeadLetterRef.parse(r);
  if (r && r.ref instanceof DeadLetterRef) return r.ref;
  throw new ConfigError(`not a dead-letter reference: ${String(r)}`);
}

export function parseDeadLetter(partition: number, id: string, raw: Buffer[]): DeadLetter {
  let payload: Buffer | null = null;
  const own = new Map<string, Buffer>();
  const fields: Fields = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i].toString("utf8");
    const v = raw[i + 1];
    if (k === "payload" && payload === null) payload = v;
    else if (RESERVED_DEAD_LETTER_FIELDS.includes(k) && !own.has(k)) own.set(k, v);
    else fields.push([k, v]);
  }
  const text = (k: string) => (own.has(k) ? own.get(k)!.toString("utf8") : null);
  const originalId = text("original_id");
  const idField = fields.find(([k]) => k === "id");
  return {
    ref: new DeadLetterRef(partition, id),
    partition,
    id,
    payload,
    taskId: idField ? idField[1].toString("utf8") : originalId,
    originalId,
    error: text("error"),
    deliveries: own.has("deliveries") ? num(own.get("deliveries")) : null,
    stream: text("stream"),
    group: text("group"),
    consumer: text("consumer"),
    fields,
    deadLetteredMs: Number(parseEntryId(id)[0]),
  };
}

/** Which dead letters deadLetters, retryAll and purgeAll consider. */
export interface DeadLetterFilter {
  partition?: number;
  /** ms since the epoch, or a Date (inclusive). */
  since?: number | Date;
  until?: number | Date;
  errorContains?: string;
  taskId?: string;
  consumer?: string;
  minDeliveries?: number;
}

const ms = (t: number | Date | undefined) => (t === undefined ? undefined : t instanceof Date ? t.getTime() : Math.floor(t));

export function filterRange(f: DeadLetterFilter): [string, string] {
  const s = ms(f.since);
  const u = ms(f.until);
  return [s !== undefined ? `${s}-0` : "-", u !== undefined ? `${u}-${U64_MAX}` : "+"];
}

export function filterMatches(f: DeadLetterFilter, d: DeadLetter): boolean {
  if (f.errorContains !== undefined && !(d.error ?? "").includes(f.errorContains)) return false;
  if (f.taskId !== undefined && d.taskId !== f.taskId) return false;
  if (f.consumer !== undefined && d.consumer !== f.consumer) return false;
  if (f.minDeliveries !== undefined && (d.deliveries ?? 0) < f.minDeliveries) return false;
  return true;
}

export function filterIsEmpty(f: DeadLetterFilter): boolean {
  return [f.since, f.until, f.errorContains, f.taskId, f.consumer, f.minDeliveries].every((v) => v === undefined);
}

export function compareDeadLetters(a: DeadLetter, b: DeadLetter): number {
  return compareEntryIds(a.id, b.id) || a.partition - b.partition;
}

/** The smaller of an XRANGE upper bound (`+` or an id) and lastId. */
export function upperBound(hi: string, lastId: string): string {
  return hi === "+" || compareEntryIds(lastId, hi) < 0 ? lastId : hi;
}

/** The MINID that removes everything up to and including lastId. */
export function trimThreshold(lastId: string): string {
  const [m, s] = parseEntryId(lastId);
  return s < U64_MAX ? `${m}-${s + 1n}` : `${m + 1n}-0`;
}

/** A retried dead letter: the new entry id, or null when it was not there. */
export interface RetryOutcome {
  ref: DeadLetterRef;
  entryId: string | null;
}

// ------------------------------------------------------------------------ results

/** A task's outcome as the worker records it (docs/protocol.md section 8). */
export interface Result {
  state: "done" | "dead" | string;
  version: number | null;
  taskId: string | null;
  entryId: string | null;
  deliveries: number | null;
  consumer: string | null;
  startedMs: number | null;
  finishedMs: number | null;
  output: Buffer | null;
  outputTruncated: boolean;
  error: string | null;
  deadLetterId: string | null;
  extra: Fields;
}

const RESULT_FIELDS = ["v", "state", "task_id", "entry_id", "deliveries", "consumer", "started_ms", "finished_ms", "output", "output_truncated", "error", "dead_letter_id"];

export function parseResult(h: Record<string, Buffer>): Result | null {
  const keys = Object.keys(h);
  if (keys.length === 0) return null;
  const t = (k: string) => (h[k] !== undefined ? h[k].toString("utf8") : null);
  const n = (k: string) => (h[k] !== undefined ? num(h[k]) : null);
  return {
    state: t("state") ?? "",
    version: n("v"),
    taskId: t("task_id"),
    entryId: t("entry_id"),
    deliveries: n("deliveries"),
    consumer: t("consumer"),
    startedMs: n("started_ms"),
    finishedMs: n("finished_ms"),
    output: h.output ?? null,
    outputTruncated: t("output_truncated") === "1",
    error: t("error"),
    deadLetterId: t("dead_letter_id"),
    extra: keys.filter((k) => !RESULT_FIELDS.includes(k)).map((k) => [k, h[k]]),
  };
}

/** queued, running (consumer, deliveries), done / dead (result) or unknown. */
export interface TaskStatus {
  state: "queued" | "running" | "done" | "dead" | "unknown" | string;
  result?: Result;
  consumer?: string;
  deliveries?: number;
}

export type TaskLike = TaskRef | Submitted | string;

export interface Locate {
  /** The partition of a bare task id. */
  partition?: number;
  /** The key it was submitted with. */
  key?: string | Uint8Array;
}

export function toTaskRef(layout: Layout, task: TaskLike, where: Locate = {}): TaskRef {
  if (typeof task === "object" && task !== null) {
    layout.partition(task.partition);
    checkAny(task.taskId);
    return task;
  }
  checkAny(task);
  let p: number;
  if (where.partition !== undefined) p = layout.partition(where.partition).index;
  else if (where.key !== undefined) p = partitionForKey(where.key, layout.partitions);
  else if (layout.partitions === 1) p = 0;
  else {
    throw new ConfigError(
      `the pool has ${layout.partitions} partitions: say which one holds task ${JSON.stringify(task)} ({partition} or the {key} it was submitted with), or pass what submit returned`,
    );
  }
  return { taskId: task, partition: p };
}

function checkAny(id: unknown): void {
  if (typeof id !== "string" || id === "") throw new ConfigError(`a task is a TaskRef, a Submitted or a task id string, not ${String(id)}`);
}

export function chunks<T>(a: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < a.length; i += n) out.push(a.slice(i, i + n));
  return out;
}
