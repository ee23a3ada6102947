//! The workpool queue protocol on Redis Streams (one consumer group per pool).
//!
//! Every operation is a method of [`Queue`] (which only names the stream, group and
//! dead-letter stream) taking any async Redis connection (`MultiplexedConnection`,
//! `ConnectionManager`, ...). See `DESIGN.md`, "The queue protocol":
//!
//! - producers `XADD` entries with a `payload` field (optional `id`, `attempt`): [`Queue::enqueue`];
//! - workers read in batches with `XREADGROUP ... >` ([`Queue::read`]), acknowledge and
//!   delete on success ([`Queue::ack`]), renew the lease of in-flight entries
//!   ([`Queue::renew`]), reclaim entries idle past the visibility timeout
//!   ([`Queue::autoclaim`]), count retries in the group's delivery counter
//!   ([`Queue::claim_for_retry`]), hand entries back on shutdown ([`Queue::release`]) and
//!   move exhausted or malformed entries to the dead-letter stream ([`Queue::dead_letter`]);
//! - the operator reads [`Queue::stats`] and removes consumers with
//!   [`Queue::remove_consumer_if_idle`].

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

/// The protocol's errors (`workpool_client::Error`).
pub use workpool_client::Error as QueueError;
use workpool_client::Layout;
pub use workpool_client::Result;
use workpool_client::reply::{as_id, as_int, as_string, into_array, into_bytes};
/// The field that carries a task's payload in a stream entry.
pub use workpool_client::submit::PAYLOAD_FIELD;
pub use workpool_client::{
    ConsumerInfo, DrainState, EntryId, NewTask, QueueStats, STATS_COUNT_LIMIT_CHUNKS,
};

fn protocol(command: &'static str, detail: impl Into<String>) -> QueueError {
    QueueError::unexpected(command, detail)
}
/// A task read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id.
    pub id: EntryId,
    /// The `payload` field, if present.
    pub payload: Option<Vec<u8>>,
    /// All other fields (e.g. `id`, `attempt`), in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// How many times the group has delivered this entry, this delivery included
    /// (from `XPENDING`; 1 for a fresh read).
    pub deliveries: u32,
}

impl Entry {
    /// The value of a field other than `payload`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// A task's result record (docs/protocol.md 8), written with its ack or dead letter when
/// results are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    /// The key of the record: the entry's `id` field, or its entry id ([`task_id_of`]).
    pub task_id: String,
    /// The record's fields other than `state` (and `dead_letter_id`, which the dead-letter
    /// script adds), in order.
    pub fields: Vec<(&'static str, Vec<u8>)>,
}

impl ResultRecord {
    fn arg_bytes(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// The task id of an entry (docs/protocol.md 3): its `id` field when that is a task id a
/// client accepts, or when `retry.lua` set it to the task's first entry id (marked by
/// `id_source` = `entry`); otherwise its entry id (a raw producer's `id` of another form
/// must not name another task's record).
pub fn task_id_of(entry: &Entry) -> String {
    let retried_without_producer_id = entry.field("id_source") == Some(&b"entry"[..]);
    entry
        .field("id")
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|id| {
            workpool_client::submit::check_task_id(id).is_ok()
                || (retried_without_producer_id && id.parse::<EntryId>().is_ok())
        })
        .map(str::to_string)
        .unwrap_or_else(|| entry.id.to_string())
}

/// The result of one [`Queue::autoclaim`] step.
#[derive(Debug, Clone, Default)]
pub struct AutoClaim {
    /// Where the next step starts; `0-0` when the scan of the pending list is complete.
    pub next_cursor: EntryId,
    /// The claimed entries with their delivery counts (this delivery included).
    pub entries: Vec<Entry>,
    /// Ids that were pending but no longer exist in the stream; Redis removed them from
    /// the pending list.
    pub deleted: Vec<EntryId>,
}

/// One entry of the pending list (`XPENDING` extended form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Entry id.
    pub id: EntryId,
    /// The consumer holding it.
    pub consumer: String,
    /// Milliseconds since it was last delivered (or its lease renewed).
    pub idle_ms: u64,
    /// Delivery count.
    pub deliveries: u32,
}

/// Outcome of [`Queue::remove_consumer_if_idle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveConsumer {
    /// The consumer held nothing and was deleted.
    Removed,
    /// The consumer still holds this many entries; nothing was changed.
    StillPending(u64),
    /// No such consumer in the group (nothing to do).
    NotFound,
    /// The stream or the group does not exist (nothing to do).
    NoGroup,
}

/// Names of the stream, group and dead-letter stream of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    stream: String,
    group: String,
    dead_letter_stream: String,
    /// The pool's drain hash when it is not this queue's own `<stream>:draining`: a
    /// partition i >= 1 of a [`Pool`] shares partition 0's ([`Queue::with_drain_key`]).
    pool_drain_key: Option<String>,
}

/// Lease renewal: re-claim (JUSTID, so the delivery counter is untouched) those ids that
/// this consumer still holds; return the ids it no longer holds.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owned = {}
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
-- Build the whole argument list: in Lua `f(a, unpack(t), b)` passes only t[1], as
-- `unpack` expands fully only as the last argument.
local n = 0
while n < #owned do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for j = n + 1, math.min(n + 200, #owned) do args[#args + 1] = owned[j] end
  n = n + #args - 4
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return lost
"#,
    )
});

/// Retry bookkeeping: if this consumer still holds the entry, set its delivery counter
/// (and reset its idle time). Returns 1 when done, 0 when the entry is no longer held.
static CLAIM_FOR_RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID', 'RETRYCOUNT', ARGV[4])
  return #r
end
return 0
"#,
    )
});

/// Hand back: for each (id, count) this consumer still holds, set the delivery counter
/// and make the entry look idle for ARGV[3] ms so that the next XAUTOCLAIM by any worker
/// takes it. Returns how many were released.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for i = 4, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    n = n + #r
  end
end
return n
"#,
    )
});

/// Consumer removal, race-free: delete the consumer only if it holds nothing.
/// Returns -1 (no stream/group), -2 (no such consumer), 0 (removed) or its pending count.
static REMOVE_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local found = false
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i + 1] == ARGV[1] then found = true end
  end
end
if not found then return -1 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending = nil, 0
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
    if c[i] == 'pending' then pending = c[i + 1] end
  end
  if name == ARGV[2] then
    if pending > 0 then return pending end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 0
  end
end
return -2
"#,
    )
});

/// Dead letter, atomically and at most once: only if `consumer` still holds the entry,
/// `XADD` the dead-letter entry first (a failing `XADD`, e.g. a dead-letter key of another
/// type, aborts the script before anything is written), then `XACK` + `XDEL`, and with
/// results on (4 keys) the task's result record (docs/protocol.md 8, as `result.lua`:
/// `DEL`, `HSET`, `PEXPIRE` of the record, `RPUSH` + `PEXPIRE` of the notification list).
/// Run again (a command retried after a stall or a lost reply) it finds the entry no
/// longer pending and writes nothing. KEYS: stream, dead-letter stream[, result,
/// notification list]. ARGV: group, consumer, id, TTL ms ('' with results off), n, n
/// dead-letter field/value args, then the record's field/value args. Returns the
/// dead-letter id, or nil when the entry is not held.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p ~= 1 or p[1][2] ~= ARGV[2] then return false end
local n = tonumber(ARGV[5])
local args = {'XADD', KEYS[2], '*'}
for i = 6, 5 + n do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #KEYS == 4 then
  redis.call('DEL', KEYS[3], KEYS[4])
  local rec = {'HSET', KEYS[3], 'state', 'dead'}
  for i = 6 + n, #ARGV do rec[#rec + 1] = ARGV[i] end
  rec[#rec + 1] = 'dead_letter_id'
  rec[#rec + 1] = id
  redis.call(unpack(rec))
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('RPUSH', KEYS[4], 'dead')
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return id
"#,
    )
});

/// Take back entries `consumer` holds but lost track of (their delivery reply was lost):
/// for each id still pending for it, reset its idle time without counting a delivery
/// (`XCLAIM ... JUSTID`) and return `{id, deliveries, fields|nil}` (nil: the stream entry
/// was deleted). KEYS: stream. ARGV: group, consumer, ids.
static TAKE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #r == 1 then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
      out[#out + 1] = {ARGV[i], p[1][4], r[1][2]}
    else
      out[#out + 1] = {ARGV[i], p[1][4], false}
    end
  end
end
return out
"#,
    )
});

/// `XAUTOCLAIM` that refuses to run when it reaches Redis late: ARGV[5] is the latest
/// Redis time (ms) at which it may still run, '' for no limit. A reclaim that sat in a
/// socket while Redis was stalled would otherwise run on resume, before the renewals of
/// live workers queued behind it, and take their tasks. Returns nil when too late.
/// KEYS: stream. ARGV: group, consumer, min-idle ms, cursor, deadline, count.
static AUTOCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[5] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now > tonumber(ARGV[5]) then return false end
end
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[6])
"#,
    )
});

/// `XCLAIM` of chosen entries idle at least min-idle (counting a delivery), with the same
/// deadline as [`AUTOCLAIM`]. Returns nil when too late. KEYS: stream. ARGV: group,
/// consumer, min-idle ms, deadline, ids.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now > tonumber(ARGV[4]) then return false end
end
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3]}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"#,
    )
});

/// Ack: `XACK` (its error ignored: the group may be gone) then `XDEL`. KEYS: stream.
/// ARGV: group, ids.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
"#,
    )
});

/// Ack with results on: per task `XACK` (error ignored) + `XDEL`, and when the `XDEL`
/// removed the entry (this run ended the task; a retried script or a task another worker
/// ended already writes nothing) its `done` record as `result.lua` writes it (`DEL`,
/// `HSET`, `PEXPIRE`, `RPUSH`, `PEXPIRE`). KEYS: stream, then per task its record and
/// notification list. ARGV: group, TTL ms, then per task: entry id, n, n field/value args.
static ACK_WITH_RESULTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local i, k = 3, 0
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local rkey, nkey = KEYS[2 + 2 * k], KEYS[3 + 2 * k]
  k = k + 1
  redis.pcall('XACK', KEYS[1], ARGV[1], id)
  if redis.call('XDEL', KEYS[1], id) == 1 then
    redis.call('DEL', rkey, nkey)
    local rec = {'HSET', rkey, 'state', 'done'}
    for j = i + 2, i + 1 + n do rec[#rec + 1] = ARGV[j] end
    redis.call(unpack(rec))
    redis.call('PEXPIRE', rkey, ARGV[2])
    redis.call('RPUSH', nkey, 'done')
    redis.call('PEXPIRE', nkey, ARGV[2])
  end
  i = i + 2 + n
end
return k
"#,
    )
});

/// The worker's drain acknowledgement: set the consumer's field to ARGV[2] only if the
/// field exists. KEYS: drain hash. ARGV: consumer, value. Returns 1 when written.
static ACK_DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// A Redis client for `url`: `redis://` (plain TCP) or `rediss://` (TLS, verified against
/// the system's trusted roots, or against `ca_pem`, PEM certificates of the CA that signed
/// the server's certificate, e.g. a self-signed one).
pub fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client> {
    install_tls_provider();
    let invalid = |e: redis::RedisError| {
        QueueError::InvalidArgument(format!(
            "invalid redis URL {:?}: {e}",
            crate::runtime::redacted(url)
        ))
    };
    match ca_pem {
        None => redis::Client::open(url).map_err(invalid),
        Some(ca) => {
            if !url.starts_with("rediss://") {
                return Err(QueueError::InvalidArgument(
                    "a CA certificate is for TLS: the URL must start with rediss://".into(),
                ));
            }
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
            .map_err(invalid)
        }
    }
}

fn install_tls_provider() {
    crate::target::install_tls_provider();
}

/// Opens a multiplexed connection with the given per-command response timeout
/// (`None`: wait forever; use it for connections that run blocking reads longer than the
/// default 500 ms timeout of the redis crate).
pub async fn connect(
    url: &str,
    response_timeout: Option<Duration>,
) -> Result<redis::aio::MultiplexedConnection> {
    connect_client(&client(url, None)?, response_timeout).await
}

/// Like [`connect`] for an already parsed client.
pub async fn connect_client(
    client: &redis::Client,
    response_timeout: Option<Duration>,
) -> Result<redis::aio::MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(response_timeout);
    Ok(client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?)
}

/// Parses one `[id, [f1, v1, ...]]` entry. `Ok(Err(id))` for an entry whose fields are
/// nil (deleted while pending, Redis < 7).
fn parse_entry(v: Value) -> Result<std::result::Result<Entry, EntryId>> {
    let mut parts = into_array(v).ok_or_else(|| protocol("stream entry", "not an array"))?;
    if parts.len() != 2 {
        return Err(protocol("stream entry", "expected [id, fields]"));
    }
    let fields_v = parts.pop().unwrap_or(Value::Nil);
    let id = parts
        .first()
        .and_then(as_id)
        .ok_or_else(|| protocol("stream entry", "bad entry id"))?;
    if matches!(fields_v, Value::Nil) {
        return Ok(Err(id));
    }
    let flat = into_array(fields_v).ok_or_else(|| protocol("stream entry", "bad fields"))?;
    let mut payload = None;
    let mut fields = Vec::new();
    let mut it = flat.into_iter();
    while let Some(k) = it.next() {
        let k = into_bytes(k).ok_or_else(|| protocol("stream entry", "bad field name"))?;
        let v = it
            .next()
            .and_then(into_bytes)
            .ok_or_else(|| protocol("stream entry", "bad field value"))?;
        if payload.is_none() && k == PAYLOAD_FIELD.as_bytes() {
            payload = Some(v);
        } else {
            fields.push((k, v));
        }
    }
    Ok(Ok(Entry {
        id,
        payload,
        fields,
        deliveries: 1,
    }))
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    // Errors raised inside a Lua script may carry the code in the message only.
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

impl Queue {
    /// A queue on `stream` read by `group`; the dead-letter stream defaults to
    /// `<stream>:dead`.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        let stream = stream.into();
        let dead_letter_stream = format!("{stream}:dead");
        Queue {
            stream,
            group: group.into(),
            dead_letter_stream,
            pool_drain_key: None,
        }
    }

    /// Uses `key` as the drain hash instead of `<stream>:draining`: the partitions
    /// i >= 1 of a pool share the pool's one hash beside partition 0 ([`Pool::draining_key`]).
    /// Such a queue's [`Queue::stats`] leaves the drain hash out (on Cluster it lives in
    /// another hash slot); the pool reads it with partition 0's snapshot.
    pub fn with_drain_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.pool_drain_key = (key != format!("{}:draining", self.stream)).then_some(key);
        self
    }

    /// Sets the dead-letter stream.
    pub fn with_dead_letter_stream(mut self, dead_letter_stream: impl Into<String>) -> Self {
        self.dead_letter_stream = dead_letter_stream.into();
        self
    }

    /// Checks that the names are usable (non-empty, dead letters not the stream itself).
    pub fn validate(&self) -> Result<()> {
        if self.stream.is_empty() {
            return Err(QueueError::InvalidArgument("stream name is empty".into()));
        }
        if self.group.is_empty() {
            return Err(QueueError::InvalidArgument("group name is empty".into()));
        }
        if self.dead_letter_stream.is_empty() {
            return Err(QueueError::InvalidArgument(
                "dead-letter stream name is empty".into(),
            ));
        }
        if self.dead_letter_stream == self.stream {
            return Err(QueueError::InvalidArgument(
                "the dead-letter stream must differ from the task stream".into(),
            ));
        }
        Ok(())
    }

    /// The task stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The dead-letter stream.
    pub fn dead_letter_stream(&self) -> &str {
        &self.dead_letter_stream
    }

    /// The pool's drain hash, `<stream>:draining` (for a pool: `<P_0>:draining`, see
    /// [`Queue::with_drain_key`]): field = consumer name, value `requested` (the operator
    /// wants the consumer to stop taking tasks) or `stopped` (its worker has stopped
    /// reading). Beside partition 0's stream, so it shares its hash slot.
    pub fn drain_key(&self) -> String {
        match &self.pool_drain_key {
            Some(k) => k.clone(),
            None => format!("{}:draining", self.stream),
        }
    }

    /// Whether `consumer` is told to stop taking tasks, and whether it said it stopped.
    pub async fn drain_state<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
    ) -> Result<Option<DrainState>> {
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.drain_key())
            .arg(consumer)
            .query_async(conn)
            .await?;
        Ok(v.as_deref().and_then(DrainState::parse))
    }

    /// The worker's answer to a drain request: `stopped`, written only while the request
    /// stands (an operator that took it back meanwhile is not overruled). Returns whether
    /// it was written.
    pub async fn acknowledge_drain<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
    ) -> Result<bool> {
        let n: i64 = ACK_DRAIN
            .key(self.drain_key())
            .arg(consumer)
            .arg(DrainState::Stopped.as_str())
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }

    /// Tells `consumers` to stop taking tasks (a consumer already told keeps its state).
    pub async fn request_drain<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumers: &[String],
    ) -> Result<()> {
        if consumers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for c in consumers {
            pipe.cmd("HSETNX")
                .arg(self.drain_key())
                .arg(c)
                .arg(DrainState::Requested.as_str())
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
        Ok(())
    }

    /// Takes drain requests back (the consumers read again); also how the fields of gone
    /// consumers are removed.
    pub async fn cancel_drain<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumers: &[String],
    ) -> Result<()> {
        if consumers.is_empty() {
            return Ok(());
        }
        let _: i64 = redis::cmd("HDEL")
            .arg(self.drain_key())
            .arg(consumers)
            .query_async(conn)
            .await?;
        Ok(())
    }

    fn map_err(&self, e: redis::RedisError) -> QueueError {
        if is_nogroup(&e) {
            QueueError::NoGroup {
                stream: self.stream.clone(),
                group: self.group.clone(),
            }
        } else {
            e.into()
        }
    }

    /// Creates the stream and the group (at id 0, so entries enqueued before any worker
    /// existed are delivered) if missing. Idempotent: an existing group is fine.
    pub async fn ensure_group<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<()> {
        self.ensure_group_created(conn).await.map(|_| ())
    }

    /// Like [`Queue::ensure_group`]; true when the group was missing and has been created.
    pub async fn ensure_group_created<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<bool> {
        let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Enqueues tasks in one pipeline; returns their entry ids in order
    /// ([`workpool_client::submit::enqueue`]).
    pub async fn enqueue<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        tasks: &[NewTask<'_>],
    ) -> Result<Vec<EntryId>> {
        workpool_client::submit::enqueue(conn, &self.stream, tasks).await
    }

    /// Enqueues tasks durably (`XADD`s then `WAIT` in one pipeline); returns the entry
    /// ids and how many replicas acknowledged them
    /// ([`workpool_client::submit::enqueue_wait`]).
    pub async fn enqueue_wait<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        tasks: &[NewTask<'_>],
        min_replicas: u32,
        timeout: Duration,
    ) -> Result<(Vec<EntryId>, u64)> {
        workpool_client::submit::enqueue_wait(conn, &self.stream, tasks, min_replicas, timeout)
            .await
    }

    /// Reads up to `count` new entries for `consumer`, blocking up to `block`
    /// (`XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS s >`). Entries have
    /// `deliveries == 1`. The connection's response timeout must exceed `block`.
    pub async fn read<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>> {
        self.read_blocking(conn, consumer, count, Some(block)).await
    }

    /// Like [`Queue::read`] without blocking: the entries there are now (possibly none).
    pub async fn read_now<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>> {
        self.read_blocking(conn, consumer, count, None).await
    }

    async fn read_blocking<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(block) = block {
            // BLOCK 0 would wait forever: at least 1 ms.
            cmd.arg("BLOCK").arg((block.as_millis() as u64).max(1));
        }
        let v: Value = cmd
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        let streams = into_array(v).ok_or_else(|| protocol("XREADGROUP", "not an array"))?;
        let mut out = Vec::new();
        for s in streams {
            let mut pair = match s {
                Value::Array(a) => a,
                // RESP3 maps are flattened by into_array; handle both shapes.
                other => into_array(other).unwrap_or_default(),
            };
            if pair.len() != 2 {
                return Err(protocol("XREADGROUP", "expected [stream, entries]"));
            }
            let entries = into_array(pair.pop().unwrap_or(Value::Nil))
                .ok_or_else(|| protocol("XREADGROUP", "entries not an array"))?;
            out.reserve(entries.len());
            for e in entries {
                // Fresh reads never return deleted entries; ignore one if it ever does.
                if let Ok(entry) = parse_entry(e)? {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Acknowledges and deletes entries (`XACK` + `XDEL` in one Lua script, one round
    /// trip). The entries are deleted even when the group is gone (`XGROUP DESTROY`), so a
    /// recreated group does not deliver finished tasks again. Idempotent.
    pub async fn ack<C: ConnectionLike + Send>(&self, conn: &mut C, ids: &[EntryId]) -> Result<()> {
        for chunk in ids.chunks(1000) {
            let mut inv = ACK.key(&self.stream);
            inv.arg(&self.group);
            for id in chunk {
                inv.arg(*id);
            }
            let _: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
        }
        Ok(())
    }

    /// Acknowledges and deletes entries and writes the `done` record of each that this
    /// call removed from the stream, with `ttl`, in one script per chunk (every key is in
    /// the stream's hash slot). Idempotent: a retried call finds the entries gone and
    /// writes nothing again.
    pub async fn ack_with_results<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        done: &[(EntryId, ResultRecord)],
        ttl: Duration,
    ) -> Result<()> {
        // Chunks of at most 200 tasks or about 4 MB of arguments (outputs may be large).
        let mut start = 0;
        while start < done.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < done.len() && end - start < 200 && (end == start || bytes < 4 << 20) {
                bytes += done[end].1.arg_bytes();
                end += 1;
            }
            let mut inv = ACK_WITH_RESULTS.key(&self.stream);
            inv.arg(&self.group).arg(ttl.as_millis().max(1) as u64);
            for (id, rec) in &done[start..end] {
                inv.key(workpool_client::results::result_key(
                    &self.stream,
                    &rec.task_id,
                ))
                .key(workpool_client::results::notify_key(
                    &self.stream,
                    &rec.task_id,
                ))
                .arg(*id)
                .arg(rec.fields.len() * 2);
                for (k, v) in &rec.fields {
                    inv.arg(*k).arg(v.as_slice());
                }
            }
            let _: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
            start = end;
        }
        Ok(())
    }

    /// One step of reclaiming entries idle longer than `min_idle` from any consumer to
    /// `consumer` (`XAUTOCLAIM`, which increments their delivery counters), starting at
    /// `cursor` and looking at about `count` entries. The delivery counts of the claimed
    /// entries are then read from `XPENDING`.
    pub async fn autoclaim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        min_idle: Duration,
        cursor: EntryId,
        count: usize,
    ) -> Result<AutoClaim> {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        self.finish_autoclaim(conn, v).await
    }

    /// Like [`Queue::autoclaim`], but only if Redis runs it no later than `deadline_ms`
    /// (Redis server time, ms since the epoch); `None` when it arrived too late (it sat
    /// in a socket while Redis was stalled: the leases of live workers may not have been
    /// renewed yet, so nothing is claimed).
    pub async fn autoclaim_before<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        min_idle: Duration,
        cursor: EntryId,
        count: usize,
        deadline_ms: Option<u64>,
    ) -> Result<Option<AutoClaim>> {
        let v: Value = AUTOCLAIM
            .key(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor)
            .arg(deadline_ms.map(|d| d.to_string()).unwrap_or_default())
            .arg(count.max(1))
            .invoke_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        if v == Value::Nil {
            return Ok(None);
        }
        self.finish_autoclaim(conn, v).await.map(Some)
    }

    /// Pending entries of any consumer idle at least `min_idle`, with ids after `after`,
    /// in id order, at most `count` (`XPENDING s g IDLE ms (after + count`). Reads only.
    pub async fn pending_idle<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        min_idle: Duration,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg(start)
            .arg("+")
            .arg(count.max(1))
            .query_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        parse_pending(v)
    }

    /// Claims the given entries to `consumer` if they are still idle at least `min_idle`
    /// (`XCLAIM`, which counts a delivery), only if Redis runs the command no later than
    /// `deadline_ms` (see [`Queue::autoclaim_before`]; `None` when too late). Returns the
    /// claimed entries with their delivery counts (from `XPENDING`); `deleted` lists ids
    /// whose stream entries were gone (dropped from the pending list).
    pub async fn claim_idle<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        min_idle: Duration,
        ids: &[EntryId],
        deadline_ms: Option<u64>,
    ) -> Result<Option<AutoClaim>> {
        if ids.is_empty() {
            return Ok(Some(AutoClaim::default()));
        }
        let mut inv = CLAIM.key(&self.stream);
        inv.arg(&self.group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(deadline_ms.map(|d| d.to_string()).unwrap_or_default());
        for id in ids {
            inv.arg(*id);
        }
        let v: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
        if v == Value::Nil {
            return Ok(None);
        }
        // Same shape as an XAUTOCLAIM reply: [cursor, entries].
        let mut ac = self
            .finish_autoclaim(
                conn,
                Value::Array(vec![Value::BulkString(b"0-0".to_vec()), v]),
            )
            .await?;
        // Redis 7 drops claimed ids whose entries were deleted from the pending list
        // without returning them: report those that are neither claimed nor pending.
        let got: std::collections::HashSet<EntryId> = ac.entries.iter().map(|e| e.id).collect();
        let missing: Vec<EntryId> = ids
            .iter()
            .copied()
            .filter(|id| !got.contains(id) && !ac.deleted.contains(id))
            .collect();
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for id in &missing {
                pipe.cmd("XRANGE").arg(&self.stream).arg(*id).arg(*id);
            }
            let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|e| self.map_err(e))?;
            for (id, r) in missing.into_iter().zip(replies) {
                if into_array(r).is_some_and(|a| a.is_empty()) {
                    ac.deleted.push(id);
                }
            }
        }
        Ok(Some(ac))
    }

    async fn finish_autoclaim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        v: Value,
    ) -> Result<AutoClaim> {
        let mut parts = into_array(v).ok_or_else(|| protocol("XAUTOCLAIM", "not an array"))?;
        if parts.len() < 2 {
            return Err(protocol("XAUTOCLAIM", "expected [cursor, entries, ...]"));
        }
        let deleted_v = if parts.len() >= 3 { parts.pop() } else { None };
        let entries_v = parts.pop().unwrap_or(Value::Nil);
        let next_cursor = parts
            .first()
            .and_then(as_id)
            .ok_or_else(|| protocol("XAUTOCLAIM", "bad cursor"))?;
        let mut out = AutoClaim {
            next_cursor,
            ..Default::default()
        };
        if let Some(d) = deleted_v {
            for id in into_array(d).unwrap_or_default() {
                if let Some(id) = as_id(&id) {
                    out.deleted.push(id);
                }
            }
        }
        let mut nil_ids = Vec::new();
        for e in into_array(entries_v).ok_or_else(|| protocol("XAUTOCLAIM", "bad entries"))? {
            match parse_entry(e)? {
                Ok(entry) => out.entries.push(entry),
                Err(id) => nil_ids.push(id),
            }
        }
        if !nil_ids.is_empty() {
            // Redis < 7 returns deleted-but-pending entries with nil fields and keeps them
            // pending: acknowledge them so they do not come back forever.
            self.ack(conn, &nil_ids).await?;
            out.deleted.extend(nil_ids);
        }
        if !out.entries.is_empty() {
            let mut pipe = redis::pipe();
            for e in &out.entries {
                pipe.cmd("XPENDING")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(e.id)
                    .arg(e.id)
                    .arg(1);
            }
            let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|e| self.map_err(e))?;
            for (e, r) in out.entries.iter_mut().zip(replies) {
                let p = parse_pending(r)?;
                // Not pending any more (acknowledged meanwhile): count stays 1 and the
                // later ack is a no-op.
                if let Some(p) = p.into_iter().next() {
                    e.deliveries = p.deliveries;
                }
            }
        }
        Ok(out)
    }

    /// Renews the lease on entries `consumer` is working on: re-claims them to itself
    /// without touching their delivery counters, which resets their idle time. Entries it
    /// no longer holds (claimed by another worker, acknowledged or deleted) are left alone
    /// and returned.
    pub async fn renew<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        ids: &[EntryId],
    ) -> Result<Vec<EntryId>> {
        let mut lost = Vec::new();
        for chunk in ids.chunks(500) {
            let mut inv = RENEW.key(&self.stream);
            inv.arg(&self.group).arg(consumer);
            for id in chunk {
                inv.arg(*id);
            }
            let v: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
            for id in into_array(v).unwrap_or_default() {
                if let Some(id) = as_id(&id) {
                    lost.push(id);
                }
            }
        }
        Ok(lost)
    }

    /// Before retrying an entry in place: if `consumer` still holds it, set its delivery
    /// counter to `deliveries` (so a crash during the retry is counted) and reset its idle
    /// time. Returns false when the entry is no longer held by `consumer`.
    pub async fn claim_for_retry<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        id: EntryId,
        deliveries: u32,
    ) -> Result<bool> {
        let n: i64 = CLAIM_FOR_RETRY
            .key(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(id)
            .arg(deliveries)
            .invoke_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(n > 0)
    }

    /// Hands entries back (e.g. on shutdown): for each `(id, deliveries)` that `consumer`
    /// still holds, sets the delivery counter and marks the entry idle for a day, so the
    /// next `XAUTOCLAIM` of any worker takes it at once. Returns how many were released.
    pub async fn release<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        entries: &[(EntryId, u32)],
    ) -> Result<u64> {
        let mut total = 0u64;
        for chunk in entries.chunks(500) {
            let mut inv = RELEASE.key(&self.stream);
            inv.arg(&self.group).arg(consumer).arg(86_400_000u64);
            for (id, d) in chunk {
                inv.arg(*id).arg(*d);
            }
            let n: i64 = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
            total += n.max(0) as u64;
        }
        Ok(total)
    }

    /// Moves an entry held by `consumer` to the dead-letter stream and acknowledges +
    /// deletes it, in one Lua script that writes the dead letter first and only then
    /// acknowledges, so a failed write (e.g. the dead-letter key holds another type) leaves
    /// the task pending, and that writes nothing when `consumer` no longer holds the entry,
    /// so a retried command (after a stall or a lost reply) never writes a second dead
    /// letter. Returns the dead-letter entry id, or `None` when `consumer` does not hold
    /// the entry (already dead-lettered or acknowledged, or reclaimed by another worker).
    ///
    /// The dead-letter entry carries the original `payload` (when there was one) and other
    /// fields, plus `original_id`, `error`, `deliveries`, `stream`, `group` and `consumer`.
    /// Original fields whose names collide with these get an `orig_` prefix.
    pub async fn dead_letter<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        entry: &Entry,
        consumer: &str,
        error: &str,
    ) -> Result<Option<EntryId>> {
        self.dead_letter_with_result(conn, entry, consumer, error, None)
            .await
    }

    /// Like [`Queue::dead_letter`], and with `result` (a record and its TTL) writes the
    /// task's `dead` record in the same script (it adds `state` and `dead_letter_id`).
    pub async fn dead_letter_with_result<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        entry: &Entry,
        consumer: &str,
        error: &str,
        result: Option<(&ResultRecord, Duration)>,
    ) -> Result<Option<EntryId>> {
        // The dead letter's own fields (docs/protocol.md 6), shared with the clients.
        const OURS: [&str; 6] = workpool_client::dead_letters::RESERVED_FIELDS;
        let mut inv = DEAD_LETTER.key(&self.stream);
        inv.key(&self.dead_letter_stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(entry.id);
        match result {
            Some((rec, ttl)) => {
                inv.key(workpool_client::results::result_key(
                    &self.stream,
                    &rec.task_id,
                ))
                .key(workpool_client::results::notify_key(
                    &self.stream,
                    &rec.task_id,
                ))
                .arg(ttl.as_millis().max(1) as u64);
            }
            None => {
                inv.arg("");
            }
        }
        let fields = 2 * (6 + entry.fields.len() + usize::from(entry.payload.is_some()));
        inv.arg(fields);
        if let Some(p) = &entry.payload {
            inv.arg(PAYLOAD_FIELD).arg(p.as_slice());
        }
        inv.arg("original_id")
            .arg(entry.id)
            .arg("error")
            .arg(error)
            .arg("deliveries")
            .arg(entry.deliveries)
            .arg("stream")
            .arg(&self.stream)
            .arg("group")
            .arg(&self.group)
            .arg("consumer")
            .arg(consumer);
        for (k, v) in &entry.fields {
            if OURS.iter().any(|o| o.as_bytes() == k.as_slice()) || k == b"payload" {
                let mut name = b"orig_".to_vec();
                name.extend_from_slice(k);
                inv.arg(name).arg(v.as_slice());
            } else {
                inv.arg(k.as_slice()).arg(v.as_slice());
            }
        }
        if let Some((rec, _)) = result {
            for (k, v) in &rec.fields {
                inv.arg(*k).arg(v.as_slice());
            }
        }
        let v: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
        match v {
            Value::Nil => Ok(None),
            v => as_id(&v)
                .map(Some)
                .ok_or_else(|| protocol("XADD", "dead-letter reply is not an entry id")),
        }
    }

    /// Pending entries of `consumer` with ids after `after` (all when `None`), in id
    /// order, at most `count` (`XPENDING s g (after + count consumer`).
    pub async fn pending_of<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start)
            .arg("+")
            .arg(count.max(1))
            .arg(consumer)
            .query_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        parse_pending(v)
    }

    /// Takes back entries that `consumer` holds in Redis but never got (the reply of the
    /// read or claim that delivered them was lost): for each of `ids` it still holds, resets
    /// the idle time without counting a delivery and returns the entry with its delivery
    /// count (unchanged: the lost delivery is the one that now runs). Ids whose stream
    /// entries were deleted are returned in the second list (still pending: acknowledge
    /// them).
    pub async fn take_back<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        ids: &[EntryId],
    ) -> Result<(Vec<Entry>, Vec<EntryId>)> {
        let mut entries = Vec::new();
        let mut deleted = Vec::new();
        for chunk in ids.chunks(200) {
            let mut inv = TAKE_BACK.key(&self.stream);
            inv.arg(&self.group).arg(consumer);
            for id in chunk {
                inv.arg(*id);
            }
            let v: Value = inv.invoke_async(conn).await.map_err(|e| self.map_err(e))?;
            for row in into_array(v).ok_or_else(|| protocol("take back", "not an array"))? {
                let mut r = into_array(row).ok_or_else(|| protocol("take back", "bad row"))?;
                if r.len() != 3 {
                    return Err(protocol("take back", "expected [id, count, fields]"));
                }
                let fields = r.pop().unwrap_or(Value::Nil);
                let id = as_id(&r[0]).ok_or_else(|| protocol("take back", "bad id"))?;
                let count = as_int(&r[1]).unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32;
                match parse_entry(Value::Array(vec![r.swap_remove(0), fields]))? {
                    Ok(mut e) => {
                        e.deliveries = count;
                        entries.push(e);
                    }
                    Err(_) => deleted.push(id),
                }
            }
        }
        Ok((entries, deleted))
    }

    /// Pending entries in id order, optionally only those of one consumer
    /// (`XPENDING s g - + count [consumer]`).
    pub async fn pending_entries<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.stream)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(count);
        if let Some(c) = consumer {
            cmd.arg(c);
        }
        let v: Value = cmd.query_async(conn).await.map_err(|e| self.map_err(e))?;
        parse_pending(v)
    }

    /// The group's consumers (`XINFO CONSUMERS`).
    pub async fn consumers<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<ConsumerInfo>> {
        let v: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(conn)
            .await
            .map_err(|e| {
                if e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("no such key"))
                {
                    QueueError::NoGroup {
                        stream: self.stream.clone(),
                        group: self.group.clone(),
                    }
                } else {
                    self.map_err(e)
                }
            })?;
        workpool_client::stats::parse_consumers(v)
    }

    /// Deletes `consumer` from the group only if it holds no pending entry; checked and
    /// done atomically in one Lua script, so an entry delivered to it meanwhile is never
    /// dropped.
    pub async fn remove_consumer_if_idle<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
    ) -> Result<RemoveConsumer> {
        let n: i64 = REMOVE_CONSUMER
            .key(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .invoke_async(conn)
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(match n {
            -1 => RemoveConsumer::NoGroup,
            -2 => RemoveConsumer::NotFound,
            0 => RemoveConsumer::Removed,
            n => RemoveConsumer::StillPending(n as u64),
        })
    }

    /// An atomic snapshot of the queue: backlog (= lag + pending entries that still exist),
    /// pending, dead letters, oldest pending age and the consumers. The lag is counted
    /// (entries after the group's last delivered id), not taken from Redis, which reports
    /// it as nil after `XDEL` and wrongly after `XTRIM` (7.0); see [`QueueStats`].
    pub async fn stats<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<QueueStats> {
        // A partition i >= 1 passes its own stream as the third key: the script reads
        // the drain hash only when that key is a hash, and every key stays in the
        // stream's hash slot (the pool's hash is read with partition 0).
        let drain_key = match &self.pool_drain_key {
            Some(_) => self.stream.clone(),
            None => self.drain_key(),
        };
        workpool_client::stats::read_partition(
            conn,
            &self.stream,
            &self.dead_letter_stream,
            &drain_key,
            &self.group,
        )
        .await
        .map_err(|e| match e {
            QueueError::Redis(e) => self.map_err(e),
            e => e,
        })
    }
}

pub use workpool_client::{MAX_PARTITIONS, crc16_xmodem, key_slot};
/// The key names of one pool (a [`Layout`], see `docs/partitions-and-keys.md`) with the
/// worker's and operator's operations: partition i is a [`Queue`] of its own
/// ([`Pool::partition`]); the stats are the client crate's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    layout: Layout,
}

impl Pool {
    /// One partition on standalone Redis or Sentinel: exactly the keys of
    /// `Queue::new(stream, group)`.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Pool {
        Pool {
            layout: Layout::new(stream, group),
        }
    }

    /// The pool of these key names.
    pub fn from_layout(layout: Layout) -> Pool {
        Pool { layout }
    }

    /// The key names.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `n` partitions (see [`Pool::validate`] for the bounds).
    pub fn with_partitions(self, n: u32) -> Pool {
        Pool::from_layout(self.layout.with_partitions(n))
    }

    /// Whether the keys live on a Redis Cluster (hash-tagged names).
    pub fn with_cluster(self, cluster: bool) -> Pool {
        Pool::from_layout(self.layout.with_cluster(cluster))
    }

    /// A custom dead-letter stream name D: used as is with one partition off Cluster;
    /// otherwise partition i's dead letters go to `P_i + ":" + D`.
    pub fn with_dead_letter_stream(self, name: impl Into<String>) -> Pool {
        Pool::from_layout(self.layout.with_dead_letter_stream(name))
    }

    /// The stream name S as configured (partition streams derive from it).
    pub fn stream(&self) -> &str {
        self.layout.stream()
    }

    /// The consumer group (the same in every partition).
    pub fn group(&self) -> &str {
        self.layout.group()
    }

    /// The number of partitions.
    pub fn partitions(&self) -> usize {
        self.layout.partitions()
    }

    /// Whether the keys are hash-tagged for Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.layout.is_cluster()
    }

    /// Partition i's stream P_i: W(S) for i = 0, W(S + ":" + i) after.
    pub fn partition_stream(&self, i: usize) -> String {
        self.layout.partition_stream(i)
    }

    /// Partition i's queue (stream, group, dead-letter stream).
    pub fn partition(&self, i: usize) -> Queue {
        Queue::new(self.layout.partition_stream(i), self.layout.group())
            .with_drain_key(self.draining_key())
            .with_dead_letter_stream(self.layout.dead_letter_stream(i))
    }

    /// Every partition's queue, in partition order.
    pub fn queues(&self) -> Vec<Queue> {
        (0..self.partitions()).map(|i| self.partition(i)).collect()
    }

    /// The pool's drain hash (consumers told to stop taking tasks, see
    /// [`Queue::drain_key`]): P_0 + ":draining", one for every partition.
    pub fn draining_key(&self) -> String {
        self.layout.draining_key()
    }

    /// The partition a task with this key goes to: CRC16-XMODEM(key) mod N.
    pub fn partition_for_key(&self, key: &[u8]) -> usize {
        self.layout.partition_for_key(key)
    }

    /// Checks the names and the partition count: clear errors, never a panic later.
    pub fn validate(&self) -> Result<()> {
        self.layout.validate()
    }

    /// Stats of every partition and their sums ([`workpool_client::stats::read_pool`]).
    pub async fn stats<C: ConnectionLike + Send + Clone>(&self, conn: &C) -> Result<QueueStats> {
        workpool_client::stats::read_pool(conn, &self.layout).await
    }

    /// The pool's stats from its partitions' ([`workpool_client::stats::sum`]).
    pub fn sum(&self, parts: Vec<QueueStats>) -> QueueStats {
        workpool_client::stats::sum(&self.layout, parts)
    }
    /// Removes `consumer` from every partition's group where it holds nothing (atomically
    /// per partition, see [`Queue::remove_consumer_if_idle`]). The result: `Removed` when
    /// it is gone from every partition, `StillPending(n)` with the entries it still holds
    /// in the others, `NotFound`/`NoGroup` when no partition knew it.
    pub async fn remove_consumer_if_idle<C: ConnectionLike + Send + Clone>(
        &self,
        conn: &C,
        consumer: &str,
    ) -> Result<RemoveConsumer> {
        let mut removed = false;
        let mut held = 0u64;
        let mut no_group = true;
        for q in self.queues() {
            let mut c = conn.clone();
            match q.remove_consumer_if_idle(&mut c, consumer).await? {
                RemoveConsumer::Removed => {
                    removed = true;
                    no_group = false;
                }
                RemoveConsumer::StillPending(n) => {
                    held += n;
                    no_group = false;
                }
                RemoveConsumer::NotFound => no_group = false,
                RemoveConsumer::NoGroup => {}
            }
        }
        Ok(if held > 0 {
            RemoveConsumer::StillPending(held)
        } else if removed {
            RemoveConsumer::Removed
        } else if no_group {
            RemoveConsumer::NoGroup
        } else {
            RemoveConsumer::NotFound
        })
    }
}

fn parse_pending(v: Value) -> Result<Vec<PendingEntry>> {
    let rows = into_array(v).ok_or_else(|| protocol("XPENDING", "not an array"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let r = into_array(r).ok_or_else(|| protocol("XPENDING", "row not an array"))?;
        if r.len() < 4 {
            return Err(protocol("XPENDING", "short row"));
        }
        out.push(PendingEntry {
            id: as_id(&r[0]).ok_or_else(|| protocol("XPENDING", "bad id"))?,
            consumer: as_string(&r[1]).ok_or_else(|| protocol("XPENDING", "bad consumer"))?,
            idle_ms: as_int(&r[2]).unwrap_or(0).max(0) as u64,
            deliveries: as_int(&r[3]).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_entry_splits_payload_and_fields() {
        let v = Value::Array(vec![
            Value::BulkString(b"1-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"id".to_vec()),
                Value::BulkString(b"t1".to_vec()),
                Value::BulkString(b"payload".to_vec()),
                Value::BulkString(b"{}".to_vec()),
            ]),
        ]);
        let e = parse_entry(v).expect("parses").expect("has fields");
        assert_eq!(e.payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(e.field("id"), Some(&b"t1"[..]));
        assert_eq!(e.deliveries, 1);
        let nil = Value::Array(vec![Value::BulkString(b"1-2".to_vec()), Value::Nil]);
        assert_eq!(
            parse_entry(nil).expect("parses"),
            Err(EntryId { ms: 1, seq: 2 })
        );
        assert!(parse_entry(Value::Int(3)).is_err());
    }

    #[test]
    fn pool_key_names_follow_the_protocol_decisions() {
        // Standalone, one partition: exactly today's names.
        let p = Pool::new("thumbs", "g");
        assert_eq!(p.partition(0), Queue::new("thumbs", "g"));
        assert_eq!(p.draining_key(), "thumbs:draining");
        // Cluster, one partition: tagged.
        let c = Pool::new("thumbs", "g").with_cluster(true);
        assert_eq!(c.partition(0).stream(), "{thumbs}");
        assert_eq!(c.partition(0).dead_letter_stream(), "{thumbs}:dead");
        assert_eq!(c.draining_key(), "{thumbs}:draining");
        // Partitions: P_i = W(S:i), each with its own dead letters.
        let n = Pool::new("thumbs", "g")
            .with_partitions(3)
            .with_cluster(true);
        let names: Vec<(String, String)> = n
            .queues()
            .iter()
            .map(|q| (q.stream().to_string(), q.dead_letter_stream().to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("{thumbs}".into(), "{thumbs}:dead".into()),
                ("{thumbs:1}".into(), "{thumbs:1}:dead".into()),
                ("{thumbs:2}".into(), "{thumbs:2}:dead".into()),
            ]
        );
        assert!(n.queues().iter().all(|q| q.group() == "g"));
        let plain = Pool::new("s", "g").with_partitions(2);
        assert_eq!(plain.partition(1).stream(), "s:1");
        // A custom dead-letter name: as is only standalone with one partition.
        let d = Pool::new("s", "g").with_dead_letter_stream("failed");
        assert_eq!(d.partition(0).dead_letter_stream(), "failed");
        let d = Pool::new("s", "g")
            .with_dead_letter_stream("failed")
            .with_partitions(2);
        assert_eq!(d.partition(0).dead_letter_stream(), "s:failed");
        assert_eq!(d.partition(1).dead_letter_stream(), "s:1:failed");
        let d = Pool::new("s", "g")
            .with_dead_letter_stream("failed")
            .with_cluster(true);
        assert_eq!(d.partition(0).dead_letter_stream(), "{s}:failed");
        assert!(d.validate().is_ok());
        // The same key always picks the same partition; keys spread.
        let p6 = Pool::new("s", "g").with_partitions(6);
        assert_eq!(p6.partition_for_key(b"123456789"), 0x31c3 % 6);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| p6.partition_for_key(format!("k{i}").as_bytes()))
            .collect();
        assert_eq!(spread.len(), 6);
    }

    #[test]
    fn pool_validation_gives_clear_errors() {
        for (pool, what) in [
            (Pool::new("s", "g").with_partitions(0), "partitions must be"),
            (
                Pool::new("s", "g").with_partitions(MAX_PARTITIONS + 1),
                "partitions must be",
            ),
            (Pool::new("{s}", "g").with_cluster(true), "must not contain"),
            (Pool::new("", "g"), "stream name is empty"),
            (
                Pool::new("s", "g").with_dead_letter_stream(""),
                "dead-letter stream name is empty",
            ),
            (
                Pool::new("s", "g").with_dead_letter_stream("s"),
                "must differ",
            ),
        ] {
            let e = pool.validate().expect_err(what).to_string();
            assert!(e.contains(what), "{e}");
        }
        assert!(
            Pool::new("{s}", "g").validate().is_ok(),
            "braces are fine off Cluster"
        );
    }

    #[test]
    fn pool_stats_sum_the_partitions() {
        let consumer = |name: &str, pending: u64, idle_ms: u64| ConsumerInfo {
            name: name.into(),
            pending,
            idle_ms,
            inactive_ms: None,
        };
        let a = QueueStats {
            stream: "s".into(),
            stream_exists: true,
            group_exists: true,
            stream_length: 10,
            lag: 4,
            pending: 2,
            backlog: 6,
            dead_letters: 1,
            oldest_pending_age_ms: Some(500),
            oldest_pending_id: Some(EntryId { ms: 1, seq: 0 }),
            consumers: vec![consumer("w1", 2, 100), consumer("w2", 0, 50)],
            ..Default::default()
        };
        let b = QueueStats {
            stream: "s:1".into(),
            stream_exists: true,
            group_exists: false,
            stream_length: 3,
            lag: 3,
            backlog: 3,
            lag_computed: true,
            oldest_pending_age_ms: Some(900),
            oldest_pending_id: Some(EntryId { ms: 2, seq: 0 }),
            consumers: vec![consumer("w1", 5, 10)],
            ..Default::default()
        };
        let st = Pool::new("s", "g")
            .with_partitions(2)
            .sum(vec![a.clone(), b]);
        assert_eq!(st.stream, "s");
        assert_eq!(
            (
                st.stream_length,
                st.lag,
                st.pending,
                st.backlog,
                st.dead_letters
            ),
            (13, 7, 2, 9, 1)
        );
        assert!(st.stream_exists && !st.group_exists && st.lag_computed);
        assert_eq!(st.oldest_pending_age_ms, Some(900));
        assert_eq!(st.oldest_pending_id, Some(EntryId { ms: 2, seq: 0 }));
        assert_eq!(
            st.consumers,
            vec![consumer("w1", 7, 10), consumer("w2", 0, 50)]
        );
        assert_eq!(st.partitions.len(), 2);
        assert_eq!(st.last_delivered_id, None);
        let json = serde_json::to_value(&st).expect("json");
        assert_eq!(json["backlog"], 9);
        assert_eq!(json["partitions"][1]["stream"], "s:1");
        // One partition: its own stats, plus itself under `partitions`.
        let one = Pool::new("s", "g").sum(vec![a.clone()]);
        assert_eq!(one.backlog, a.backlog);
        assert_eq!(one.partitions, vec![a]);
    }
}
