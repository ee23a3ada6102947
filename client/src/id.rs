//! Stream entry ids.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A stream entry id `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds part (the enqueue time for auto-generated ids).
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// `0-0`, the smallest id.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>` (or `<ms>`) from bytes.
    pub fn parse(b: &[u8]) -> Option<EntryId> {
        fn num(b: &[u8]) -> Option<u64> {
            if b.is_empty() || b.len() > 20 {
                return None;
            }
            let mut n: u64 = 0;
            for &c in b {
                if !c.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            Some(n)
        }
        match b.iter().position(|&c| c == b'-') {
            Some(i) => Some(EntryId {
                ms: num(&b[..i])?,
                seq: num(&b[i + 1..])?,
            }),
            None => Some(EntryId {
                ms: num(b)?,
                seq: 0,
            }),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        EntryId::parse(s.as_bytes())
            .ok_or_else(|| Error::InvalidArgument(format!("invalid stream entry id {s:?}")))
    }
}

impl serde::Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EntryId::parse(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom(format!("invalid stream entry id {s:?}")))
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut buf = [0u8; 48];
        let n = {
            use std::io::Write;
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            // 20 + 1 + 20 digits always fit into 48 bytes.
            let _ = write!(cur, "{}-{}", self.ms, self.seq);
            cur.position() as usize
        };
        out.write_arg(&buf[..n]);
    }
}

impl redis::ToSingleRedisArg for EntryId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_id_parse_and_display() {
        let id = EntryId::parse(b"1700000000000-42").expect("valid id");
        assert_eq!(
            id,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 42
            }
        );
        assert_eq!(id.to_string(), "1700000000000-42");
        assert_eq!(EntryId::parse(b"5"), Some(EntryId { ms: 5, seq: 0 }));
        assert_eq!(EntryId::parse(b""), None);
        assert_eq!(EntryId::parse(b"1-"), None);
        assert_eq!(EntryId::parse(b"-1"), None);
        assert_eq!(EntryId::parse(b"1-2-3"), None);
        assert_eq!(EntryId::parse(b"abc"), None);
        assert_eq!(EntryId::parse(b"99999999999999999999999-0"), None);
        assert!("x".parse::<EntryId>().is_err());
        assert!(EntryId::parse(b"1-2") < EntryId::parse(b"1-10"));
        assert!(EntryId::parse(b"2-0") > EntryId::parse(b"1-10"));
    }

    #[test]
    fn entry_id_as_redis_arg() {
        let args = redis::ToRedisArgs::to_redis_args(&EntryId {
            ms: u64::MAX,
            seq: u64::MAX,
        });
        assert_eq!(
            args,
            vec![format!("{}-{}", u64::MAX, u64::MAX).into_bytes()]
        );
    }
}
