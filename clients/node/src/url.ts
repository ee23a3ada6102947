// Workpool connection URLs (docs/protocol.md section 2) and ioredis clients for them.

import { Cluster, Redis, RedisOptions } from "ioredis";
import type { ConnectionOptions } from "node:tls";
import { ConfigError, Mode } from "./protocol";

/** What a workpool URL names. */
export interface Target {
  mode: Mode;
  tls: boolean;
  hosts: Array<[string, number]>;
  path?: string;
  db: number;
  username: string | null;
  password: string | null;
  master?: string;
  sentinelUsername?: string | null;
  sentinelPassword?: string | null;
}

const SCHEMES: Record<string, [Mode, boolean]> = {
  redis: ["standalone", false],
  rediss: ["standalone", true],
  unix: ["standalone", false],
  "redis+unix": ["standalone", false],
  "redis+sentinel": ["sentinel", false],
  "rediss+sentinel": ["sentinel", true],
  "redis+cluster": ["cluster", false],
  "rediss+cluster": ["cluster", true],
};

function redact(url: string): string {
  return url.replace(/^([^:/]+:\/\/)([^@/]*)@/, "$1***@");
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export function parseUrl(url: string): Target {
  const bad = (why: string) => new ConfigError(`invalid Redis URL ${JSON.stringify(redact(String(url)))}: ${why}`);
  if (typeof url !== "string") throw bad("not a string");
  const sep = url.indexOf("://");
  const scheme = sep < 0 ? "" : url.slice(0, sep).toLowerCase();
  if (!(scheme in SCHEMES)) throw bad(`the scheme must be one of ${Object.keys(SCHEMES).sort().join(", ")}`);
  const [mode, tls] = SCHEMES[scheme];
  let rest = url.slice(sep + 3);
  let query = "";
  const qm = rest.indexOf("?");
  if (qm >= 0) {
    query = rest.slice(qm + 1);
    rest = rest.slice(0, qm);
  }
  const q = new URLSearchParams(query);
  const dbOf = (s: string | null | undefined): number => {
    if (s === null || s === undefined || s === "") return 0;
    if (!/^\d+$/.test(s)) throw bad(`the database must be a number, not ${JSON.stringify(s)}`);
    return Number(s);
  };
  const userinfo = (s: string): [string | null, string | null] => {
    const c = s.indexOf(":");
    const user = decode(c < 0 ? s : s.slice(0, c));
    return [user || null, c < 0 ? null : decode(s.slice(c + 1))];
  };
  if (scheme === "unix" || scheme === "redis+unix") {
    const firstSeg = rest.split("/", 1)[0];
    let user: string | null = null;
    let password: string | null = null;
    let path = rest;
    if (firstSeg.includes("@")) {
      const at = rest.lastIndexOf("@");
      [user, password] = userinfo(rest.slice(0, at));
      path = rest.slice(at + 1);
    }
    if (!path.startsWith("/")) throw bad("a unix socket URL needs an absolute path (unix:///path/to/redis.sock)");
    return { mode, tls: false, hosts: [], path, db: dbOf(q.get("db")), username: user, password };
  }
  const slash = rest.indexOf("/");
  const netloc = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? "" : rest.slice(slash);
  const at = netloc.lastIndexOf("@");
  const [username, password] = at >= 0 ? userinfo(netloc.slice(0, at)) : [null, null];
  const hostpart = at >= 0 ? netloc.slice(at + 1) : netloc;
  const defaultPort = mode === "sentinel" ? 26379 : 6379;
  const hosts = splitHosts(hostpart, bad).map((h) => hostPort(h, defaultPort, bad));
  if (hosts.length === 0) throw bad("no host");
  const segs = path ? path.split("/").slice(1) : [];
  if (mode === "standalone") {
    if (hosts.length !== 1) throw bad("a standalone URL names one host (use redis+sentinel:// or redis+cluster:// for several)");
    if (segs.length > 1) throw bad(`unexpected path ${JSON.stringify(path)}`);
    return { mode, tls, hosts, db: dbOf(segs.length ? segs[0] : q.get("db")), username, password };
  }
  if (mode === "cluster") {
    if (segs.length > 1) throw bad(`unexpected path ${JSON.stringify(path)}`);
    if (dbOf(segs[0]) !== 0) throw bad("Redis Cluster has only database 0");
    return { mode, tls, hosts, db: 0, username, password };
  }
  if (segs.length === 0 || segs[0] === "") throw bad("a sentinel URL names the primary: redis+sentinel://host:26379/MASTER[/db]");
  if (segs.length > 2) throw bad(`unexpected path ${JSON.stringify(path)}`);
  return {
    mode,
    tls,
    hosts,
    master: decode(segs[0]),
    db: dbOf(segs[1]),
    username,
    password,
    sentinelUsername: q.get("sentinel_username"),
    sentinelPassword: q.get("sentinel_password"),
  };
}

function splitHosts(s: string, bad: (w: string) => Error): string[] {
  if (s === "") return [];
  const out: string[] = [];
  let cur = "";
  let depth = 0;
  for (const ch of s) {
    if (ch === "[") depth++;
    else if (ch === "]") depth--;
    if (ch === "," && depth === 0) {
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  out.push(cur);
  if (out.some((h) => h === "")) throw bad("an empty host");
  return out;
}

function hostPort(h: string, defaultPort: number, bad: (w: string) => Error): [string, number] {
  let host: string;
  let port: string | undefined;
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    if (end < 0) throw bad(`unclosed '[' in ${JSON.stringify(h)}`);
    host = h.slice(1, end);
    const rest = h.slice(end + 1);
    if (rest && !rest.startsWith(":")) throw bad(`invalid host ${JSON.stringify(h)}`);
    port = rest ? rest.slice(1) : undefined;
  } else {
    const c = h.indexOf(":");
    host = c < 0 ? h : h.slice(0, c);
    port = c < 0 ? undefined : h.slice(c + 1);
  }
  if (!host) throw bad(`an empty host in ${JSON.stringify(h)}`);
  if (port === undefined) return [host, defaultPort];
  if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) throw bad(`invalid port ${JSON.stringify(port)}`);
  return [host, Number(port)];
}

export interface ConnectOptions {
  /** TLS options (CA, client certificate and key) for rediss URLs. */
  tls?: ConnectionOptions;
  /** More ioredis options. */
  redisOptions?: RedisOptions;
}

/** An ioredis client for a workpool URL: Redis (standalone or Sentinel) or Cluster. */
export function connect(target: string | Target, opts: ConnectOptions = {}): Redis | Cluster {
  const t = typeof target === "string" ? parseUrl(target) : target;
  const base: RedisOptions = { ...opts.redisOptions };
  if (t.username !== null) base.username = t.username;
  if (t.password !== null) base.password = t.password;
  if (t.tls) base.tls = { ...opts.tls };
  if (t.mode === "cluster") {
    return new Cluster(
      t.hosts.map(([host, port]) => ({ host, port })),
      { redisOptions: base },
    );
  }
  if (t.mode === "sentinel") {
    return new Redis({
      ...base,
      sentinels: t.hosts.map(([host, port]) => ({ host, port })),
      name: t.master,
      db: t.db,
      sentinelUsername: t.sentinelUsername ?? undefined,
      sentinelPassword: t.sentinelPassword ?? undefined,
      enableTLSForSentinelMode: t.tls,
      sentinelTLS: t.tls ? { ...opts.tls } : undefined,
    });
  }
  if (t.path !== undefined) return new Redis({ ...base, path: t.path, db: t.db });
  const [[host, port]] = t.hosts;
  return new Redis({ ...base, host, port, db: t.db });
}
