//! Dead letters (docs/protocol.md section 6): references, records, listing filters, and
//! the canonical `retry.lua`.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use redis::{Script, Value};

use crate::reply::{as_bytes, into_array, into_bytes};
use crate::{EntryId, Error, Result};

/// The dead letter's own fields (besides `payload`), written by the worker.
pub const RESERVED_FIELDS: [&str; 6] = [
    "original_id",
    "error",
    "deliveries",
    "stream",
    "group",
    "consumer",
];

/// Dead letters retried per script call.
pub const RETRY_CHUNK: usize = 100;
/// Entries read per `XRANGE` page when listing.
pub const LIST_PAGE: usize = 200;

/// The canonical `retry.lua`: each dead letter back into its task stream atomically.
pub(crate) static RETRY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/retry.lua")));

/// A dead letter: its partition and its entry id in that partition's dead-letter
/// stream. The text form is `[<partition>/]<ms>-<seq>` (the partition omitted for 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterRef {
    /// The partition.
    pub partition: usize,
    /// The dead-letter entry id.
    pub id: EntryId,
}

impl fmt::Display for DeadLetterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition == 0 {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}/{}", self.partition, self.id)
        }
    }
}

impl FromStr for DeadLetterRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "invalid dead-letter reference {s:?} (expected [<partition>/]<ms>-<seq>)"
            ))
        };
        let (partition, id) = match s.rsplit_once('/') {
            Some((p, id)) => {
                if p.is_empty() || p.len() > 9 || !p.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(bad());
                }
                (p.parse::<usize>().map_err(|_| bad())?, id)
            }
            None => (0, s),
        };
        // Only the full `<ms>-<seq>` form: a bare `<ms>` would name a range.
        let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
        if ms.is_empty() || seq.is_empty() {
            return Err(bad());
        }
        let id = EntryId::parse(id.as_bytes()).ok_or_else(bad)?;
        Ok(DeadLetterRef { partition, id })
    }
}

impl serde::Serialize for DeadLetterRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One dead-letter entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it is.
    pub reference: DeadLetterRef,
    /// The task's payload (`None` for a malformed task without one).
    pub payload: Option<Vec<u8>>,
    /// The task id: its `id` field, else `original_id`.
    pub task_id: Option<String>,
    /// The task's entry id in its stream.
    pub original_id: Option<String>,
    /// Why it will not run again.
    pub error: Option<String>,
    /// Deliveries when it was dead-lettered.
    pub deliveries: Option<u64>,
    /// The task stream (P_i).
    pub stream: Option<String>,
    /// The group.
    pub group: Option<String>,
    /// The worker that wrote it.
    pub consumer: Option<String>,
    /// The other fields (the task's own: `id`, `attempt`, ...), in order.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// When it was dead-lettered (ms since the epoch, from its entry id).
    pub fn dead_lettered_ms(&self) -> u64 {
        self.reference.id.ms
    }

    /// Reads a dead-letter entry's fields.
    pub fn parse(reference: DeadLetterRef, fields: Fields) -> DeadLetter {
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let mut d = DeadLetter {
            reference,
            payload: None,
            task_id: None,
            original_id: None,
            error: None,
            deliveries: None,
            stream: None,
            group: None,
            consumer: None,
            fields: Vec::new(),
        };
        let mut seen: Vec<&'static str> = Vec::new();
        for (k, v) in fields {
            let k = text(k);
            if k == "payload" && d.payload.is_none() {
                d.payload = Some(v);
                continue;
            }
            if let Some(&name) = RESERVED_FIELDS.iter().find(|r| **r == k)
                && !seen.contains(&name)
            {
                seen.push(name);
                let v = text(v);
                match name {
                    "original_id" => d.original_id = Some(v),
                    "error" => d.error = Some(v),
                    "deliveries" => d.deliveries = v.parse().ok(),
                    "stream" => d.stream = Some(v),
                    "group" => d.group = Some(v),
                    _ => d.consumer = Some(v),
                }
                continue;
            }
            d.fields.push((k, v));
        }
        d.task_id = d
            .fields
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| d.original_id.clone());
        d
    }

    /// As JSON: payload as text when it is UTF-8 (`payload_base64` otherwise), the other
    /// fields likewise.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value as J, json};
        fn bytes(out: &mut Map<String, J>, name: &str, b: &[u8]) {
            match std::str::from_utf8(b) {
                Ok(s) => out.insert(name.into(), J::String(s.into())),
                Err(_) => out.insert(format!("{name}_base64"), J::String(base64(b))),
            };
        }
        let mut m = Map::new();
        m.insert("ref".into(), J::String(self.reference.to_string()));
        m.insert("partition".into(), json!(self.reference.partition));
        m.insert("id".into(), J::String(self.reference.id.to_string()));
        m.insert("task_id".into(), json!(self.task_id));
        match &self.payload {
            Some(p) => bytes(&mut m, "payload", p),
            None => {
                m.insert("payload".into(), J::Null);
            }
        }
        m.insert("original_id".into(), json!(self.original_id));
        m.insert("error".into(), json!(self.error));
        m.insert("deliveries".into(), json!(self.deliveries));
        m.insert("stream".into(), json!(self.stream));
        m.insert("group".into(), json!(self.group));
        m.insert("consumer".into(), json!(self.consumer));
        m.insert("dead_lettered_ms".into(), json!(self.dead_lettered_ms()));
        let mut fields = Map::new();
        for (k, v) in &self.fields {
            bytes(&mut fields, k, v);
        }
        m.insert("fields".into(), J::Object(fields));
        J::Object(m)
    }
}

/// Standard base64 (for bytes that are not UTF-8 in JSON output).
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Which dead letters a listing, "retry all" or "purge all" considers. The default
/// matches every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this partition.
    pub partition: Option<usize>,
    /// Dead-lettered at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Dead-lettered at or before this time (ms since the epoch).
    pub until_ms: Option<u64>,
    /// `error` contains this.
    pub error_contains: Option<String>,
    /// This task id.
    pub task_id: Option<String>,
    /// Written by this consumer.
    pub consumer: Option<String>,
    /// At least this many deliveries.
    pub min_deliveries: Option<u64>,
}

impl DeadLetterFilter {
    /// The `XRANGE` bounds of the time range.
    pub(crate) fn range(&self) -> (String, String) {
        (
            self.since_ms.map_or("-".into(), |ms| format!("{ms}-0")),
            self.until_ms
                .map_or("+".into(), |ms| format!("{ms}-{}", u64::MAX)),
        )
    }

    /// Whether `d` passes the filters other than partition and time.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        if let Some(e) = &self.error_contains
            && !d.error.as_deref().unwrap_or("").contains(e.as_str())
        {
            return false;
        }
        if self.task_id.is_some() && d.task_id != self.task_id {
            return false;
        }
        if self.consumer.is_some() && d.consumer != self.consumer {
            return false;
        }
        if let Some(m) = self.min_deliveries
            && d.deliveries.unwrap_or(0) < m
        {
            return false;
        }
        true
    }

    /// True when it matches everything (of its partitions).
    pub fn is_all(&self) -> bool {
        self.since_ms.is_none()
            && self.until_ms.is_none()
            && self.error_contains.is_none()
            && self.task_id.is_none()
            && self.consumer.is_none()
            && self.min_deliveries.is_none()
    }
}

/// A retried dead letter: the new entry id in its task stream, or `None` when it was no
/// longer there (already retried or purged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryOutcome {
    /// The dead letter.
    #[serde(rename = "ref")]
    pub reference: DeadLetterRef,
    /// Its new entry id.
    pub entry_id: Option<EntryId>,
}

/// A stream entry's fields, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of an `XRANGE`/`XREVRANGE` reply: (id, fields).
pub(crate) fn parse_range(v: Value) -> Result<Vec<(EntryId, Fields)>> {
    let bad = |d: &str| Error::unexpected("XRANGE", d.to_string());
    let rows = into_array(v).ok_or_else(|| bad("not an array"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut r = into_array(row).ok_or_else(|| bad("row not an array"))?;
        if r.len() != 2 {
            return Err(bad("expected [id, fields]"));
        }
        let flat = into_array(r.pop().unwrap_or(Value::Nil)).ok_or_else(|| bad("bad fields"))?;
        let id = r
            .first()
            .and_then(as_bytes)
            .and_then(EntryId::parse)
            .ok_or_else(|| bad("bad id"))?;
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            fields.push((
                into_bytes(k).ok_or_else(|| bad("bad field"))?,
                into_bytes(v).ok_or_else(|| bad("bad value"))?,
            ));
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// The `MINID` that removes everything up to and including `last`.
pub(crate) fn trim_threshold(last: EntryId) -> String {
    if last.seq < u64::MAX {
        format!("{}-{}", last.ms, last.seq + 1)
    } else {
        format!("{}-0", last.ms + 1)
    }
}
