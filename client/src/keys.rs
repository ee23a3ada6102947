//! The key names of a pool (docs/protocol.md section 1, `docs/partitions-and-keys.md`).

use crate::{Error, Result};

/// The most partitions a pool may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes
/// keys to slots with; [`Pool::partition_for_key`] uses it so every language picks the
/// same partition for a key (Python: `binascii.crc_hqx(key, 0)`).
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a Redis Cluster key (its hash tag's when it has one).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&c| c == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&c| c == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % 16384
}

/// The key names of one pool: its stream S, group G, N partitions, an optional custom
/// dead-letter stream name D, and whether it lives on a Redis Cluster (then every key of
/// partition i shares the hash tag of partition i's stream, so scripts and pipelines stay
/// in one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    stream: String,
    group: String,
    partitions: u32,
    cluster: bool,
    dead_letter: Option<String>,
}

impl Layout {
    /// One partition on standalone Redis or Sentinel.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Layout {
        Layout {
            stream: stream.into(),
            group: group.into(),
            partitions: 1,
            cluster: false,
            dead_letter: None,
        }
    }

    /// `n` partitions (see [`Layout::validate`] for the bounds).
    pub fn with_partitions(mut self, n: u32) -> Layout {
        self.partitions = n;
        self
    }

    /// Whether the keys live on a Redis Cluster (hash-tagged names).
    pub fn with_cluster(mut self, cluster: bool) -> Layout {
        self.cluster = cluster;
        self
    }

    /// A custom dead-letter stream name D: used as is with one partition off Cluster;
    /// otherwise partition i's dead letters go to `P_i + ":" + D`.
    pub fn with_dead_letter_stream(mut self, name: impl Into<String>) -> Layout {
        self.dead_letter = Some(name.into());
        self
    }

    /// The stream name S as configured (partition streams derive from it).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group (the same in every partition).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The number of partitions.
    pub fn partitions(&self) -> usize {
        self.partitions as usize
    }

    /// Whether the keys are hash-tagged for Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The custom dead-letter stream name D, if any.
    pub fn custom_dead_letter_stream(&self) -> Option<&str> {
        self.dead_letter.as_deref()
    }

    fn tagged(&self, name: &str) -> String {
        if self.cluster {
            format!("{{{name}}}")
        } else {
            name.to_string()
        }
    }

    /// Partition i's stream P_i: W(S) for i = 0, W(S + ":" + i) after.
    pub fn partition_stream(&self, i: usize) -> String {
        if i == 0 {
            self.tagged(&self.stream)
        } else {
            self.tagged(&format!("{}:{i}", self.stream))
        }
    }

    /// Partition i's dead-letter stream: P_i + ":dead", or D (one partition off
    /// Cluster), or P_i + ":" + D.
    pub fn dead_letter_stream(&self, i: usize) -> String {
        let stream = self.partition_stream(i);
        match &self.dead_letter {
            None => format!("{stream}:dead"),
            Some(d) if self.partitions == 1 && !self.cluster => d.clone(),
            Some(d) => format!("{stream}:{d}"),
        }
    }

    /// The pool's drain hash (docs/protocol.md 5.1): P_0 + ":draining", one for every
    /// partition.
    pub fn draining_key(&self) -> String {
        format!("{}:draining", self.partition_stream(0))
    }

    /// The stats script's third key for partition i: the drain hash for partition 0,
    /// the partition's own stream (not a hash: nothing read) for the others, so every
    /// key of one call stays in the partition's hash slot.
    pub fn stats_drain_key(&self, i: usize) -> String {
        if i == 0 {
            self.draining_key()
        } else {
            self.partition_stream(i)
        }
    }

    /// The partition a task with this key goes to: CRC16-XMODEM(key) mod N.
    pub fn partition_for_key(&self, key: &[u8]) -> usize {
        usize::from(crc16_xmodem(key)) % self.partitions().max(1)
    }

    /// Checks the names and the partition count: clear errors, never a panic later.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidArgument(format!(
                "partitions must be from 1 to {MAX_PARTITIONS}, not {}",
                self.partitions
            )));
        }
        if self.cluster && self.stream.contains(['{', '}']) {
            return Err(Error::InvalidArgument(format!(
                "on Redis Cluster the stream name must not contain {{ or }} (workpool adds the hash tag itself): {:?}",
                self.stream
            )));
        }
        if self.stream.is_empty() {
            return Err(Error::InvalidArgument("stream name is empty".into()));
        }
        if self.group.is_empty() {
            return Err(Error::InvalidArgument("group name is empty".into()));
        }
        if self.dead_letter.as_deref() == Some("") {
            return Err(Error::InvalidArgument(
                "dead-letter stream name is empty".into(),
            ));
        }
        for i in 0..self.partitions() {
            let (stream, dead) = (self.partition_stream(i), self.dead_letter_stream(i));
            if dead == stream {
                return Err(Error::InvalidArgument(
                    "the dead-letter stream must differ from the task stream".into(),
                ));
            }
            if self.cluster && key_slot(dead.as_bytes()) != key_slot(stream.as_bytes()) {
                return Err(Error::InvalidArgument(format!(
                    "partition {i}: the dead-letter stream {dead:?} is not in the hash slot of {stream:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis_cluster() {
        // The CRC16-XMODEM check value and Redis Cluster's own examples (CLUSTER KEYSLOT).
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"{thumbs}:dead"), key_slot(b"thumbs"));
    }
}
