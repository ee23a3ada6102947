// Real redis-servers for the tests on free loopback ports: standalone, a 3-node Cluster,
// a primary with a replica and a Sentinel. Without redis-server the tests skip, except
// under CI=true, where they fail.

import { ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Cluster, Redis } from "ioredis";

export const VECTORS = resolve(__dirname, "..", "..", "..", "vectors");
export const REPO = resolve(VECTORS, "..", "..");

export function vectors(name: string): any {
  return JSON.parse(readFileSync(join(VECTORS, name), "utf8"));
}

export function which(bin: string): string | null {
  const r = spawnSync("sh", ["-c", `command -v ${bin}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** Why the real servers cannot run here (undefined when they can). Under CI=true the caller fails instead of skipping. */
export function missing(): string | undefined {
  for (const b of ["redis-server", "redis-cli"]) if (!which(b)) return `${b} is not installed (make deps installs it)`;
  return undefined;
}

export function skipOrFail(): string | false {
  const why = missing();
  if (!why) return false;
  if (process.env.CI === "true") throw new Error(why);
  return why;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => res(typeof a === "object" && a ? a.port : 0));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Every server this process started dies with it, whatever ends the tests.
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export class Server {
  port = 0;
  dir = "";
  proc?: ChildProcess;

  static async start(extra: string[] = [], conf?: string): Promise<Server> {
    const s = new Server();
    let last = "";
    for (let attempt = 0; attempt < 5; attempt++) {
      s.port = await freePort();
      s.dir = mkdtempSync(join(tmpdir(), `wp-node-redis-${s.port}-`));
      const args = [
        ...(conf ? [conf] : []),
        "--port", String(s.port), "--bind", "127.0.0.1", "--logfile", join(s.dir, "redis.log"),
        ...(extra.includes("--sentinel") ? [] : ["--save", "", "--appendonly", "no", "--dir", s.dir]),
        ...extra,
      ];
      s.proc = spawn("redis-server", args, { stdio: "ignore" });
      live.add(s.proc);
      if (await s.ready()) return s;
      s.stop();
      const log = join(s.dir, "redis.log");
      last = existsSync(log) ? readFileSync(log, "utf8").slice(-2000) : "";
    }
    throw new Error(`redis-server did not start: ${last}`);
  }

  private async ready(): Promise<boolean> {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (this.proc!.exitCode !== null) return false;
      const c = new Redis({ port: this.port, host: "127.0.0.1", lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on("error", () => {});
      try {
        await c.connect();
        await c.ping();
        c.disconnect();
        return true;
      } catch {
        c.disconnect();
        await sleep(20);
      }
    }
    return false;
  }

  client(): Redis {
    return new Redis({ port: this.port, host: "127.0.0.1" });
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  stop(): void {
    // SIGKILL: a test server keeps nothing, and one shutting down on SIGTERM could refuse to
    // exit (a cluster node that cannot write its config) and keep the test process alive.
    if (this.proc && this.proc.exitCode === null) this.proc.kill("SIGKILL");
    if (this.proc) live.delete(this.proc);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

export class TestCluster {
  constructor(readonly nodes: Server[]) {}

  static async start(n = 3): Promise<TestCluster> {
    const nodes: Server[] = [];
    for (let i = 0; i < n; i++) nodes.push(await Server.start(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]));
    const addrs = nodes.map((s) => `127.0.0.1:${s.port}`);
    const r = spawnSync("redis-cli", ["--cluster", "create", ...addrs, "--cluster-yes"], { encoding: "utf8", timeout: 60_000 });
    if (r.status !== 0) {
      nodes.forEach((s) => s.stop());
      throw new Error(`redis-cli --cluster create failed: ${r.stdout}${r.stderr}`);
    }
    const deadline = Date.now() + 30_000;
    for (;;) {
      const states = await Promise.all(
        nodes.map(async (s) => {
          const c = s.client();
          const info = String(await c.call("CLUSTER", "INFO"));
          c.disconnect();
          return info.includes("cluster_state:ok");
        }),
      );
      if (states.every(Boolean)) break;
      if (Date.now() > deadline) throw new Error("the cluster did not reach cluster_state:ok");
      await sleep(50);
    }
    return new TestCluster(nodes);
  }

  get url(): string {
    return "redis+cluster://" + this.nodes.map((s) => `127.0.0.1:${s.port}`).join(",");
  }

  client(): Cluster {
    return new Cluster(this.nodes.map((s) => ({ host: "127.0.0.1", port: s.port })));
  }

  async flush(): Promise<void> {
    for (const s of this.nodes) {
      const c = s.client();
      await c.flushall();
      c.disconnect();
    }
  }

  stop(): void {
    this.nodes.forEach((s) => s.stop());
  }
}

export class Replicated {
  constructor(
    readonly primary: Server,
    readonly replica: Server,
    readonly sentinel: Server,
  ) {}

  static async start(): Promise<Replicated> {
    const primary = await Server.start();
    const replica = await Server.start(["--replicaof", "127.0.0.1", String(primary.port)]);
    const c = primary.client();
    const deadline = Date.now() + 20_000;
    while (!/slave0:.*state=online/.test(String(await c.info("replication")))) {
      if (Date.now() > deadline) throw new Error("the replica did not come online");
      await sleep(50);
    }
    c.disconnect();
    const dir = mkdtempSync(join(tmpdir(), "wp-node-sentinel-"));
    const conf = join(dir, "sentinel.conf");
    writeFileSync(conf, `sentinel monitor wpmaster 127.0.0.1 ${primary.port} 1\n`);
    const sentinel = await Server.start(["--sentinel"], conf);
    return new Replicated(primary, replica, sentinel);
  }

  stop(): void {
    [this.sentinel, this.replica, this.primary].forEach((s) => s.stop());
  }
}

/** The real workpool-worker binary ($WORKPOOL_WORKER_BIN or the repository's target/debug). */
export function workerBinary(): string | undefined {
  const b = process.env.WORKPOOL_WORKER_BIN ?? join(REPO, "target", "debug", "workpool-worker");
  return existsSync(b) ? b : undefined;
}
