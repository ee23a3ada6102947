// workpool: submit tasks to a workpool queue (Redis Streams), read its stats, inspect and
// retry dead letters, wait for results. The protocol: docs/protocol.md.
export * from "./protocol";
export { Target, ConnectOptions, parseUrl, connect } from "./url";
export { Pool, PoolOptions, DurableOptions, ListOptions, Client, SCRIPTS, SCRIPT_NAMES, ScriptName, runScript } from "./pool";
