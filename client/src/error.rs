//! The errors of the queue protocol (shared with the worker, which calls this type
//! `QueueError`).

/// Errors of the queue protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or the connection broke.
    #[error("redis connection error: {0}")]
    Connection(#[source] redis::RedisError),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// The consumer group does not exist (e.g. Redis restarted without persistence).
    #[error("consumer group {group:?} does not exist on stream {stream:?}")]
    NoGroup {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// Redis answered with something this protocol does not expect.
    #[error("unexpected reply from redis to {command}: {detail}")]
    Protocol {
        /// The command that got the reply.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An argument was invalid (e.g. an empty stream name or a bad URL).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// True when the error means the connection is unusable and should be re-established.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Error::Connection(_))
    }

    /// True when Redis refused the command because a key holds another type of value
    /// (`WRONGTYPE`), e.g. the stream name is taken by a string or a hash.
    pub fn is_wrong_type(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.code() == Some("WRONGTYPE")
                    || e.to_string().contains("WRONGTYPE")
                    || e.detail().is_some_and(|d| d.contains("WRONGTYPE"))
            }
            _ => false,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        // LOADING (restarting from its AOF), BUSY (a slow script), TRYAGAIN, MASTERDOWN:
        // Redis is not serving yet; treated like an outage, i.e. retried.
        //
        // READONLY (a Sentinel-demoted primary now a replica), UNBLOCKED (a blocked read
        // ended by that demotion), CLUSTERDOWN, MOVED and ASK left over after the cluster
        // client's own retries: the node we talk to is no longer the right one; as
        // connection errors they make the caller reconnect, which asks the sentinels again
        // or reloads the cluster's slot map.
        let transient = matches!(
            e.code(),
            Some(
                "LOADING"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "MASTERDOWN"
                    | "READONLY"
                    | "UNBLOCKED"
                    | "CLUSTERDOWN"
                    | "MOVED"
                    | "ASK"
            )
        ) || {
            let s = e.to_string();
            s.contains("LOADING") || s.contains("READONLY") || s.contains("CLUSTERDOWN")
        };
        if transient
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            Error::Connection(e)
        } else {
            Error::Redis(e)
        }
    }
}

pub(crate) fn protocol(command: &'static str, detail: impl Into<String>) -> Error {
    Error::Protocol {
        command,
        detail: detail.into(),
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A reply that does not follow the protocol (for code built on this crate).
    pub fn unexpected(command: &'static str, detail: impl Into<String>) -> Error {
        protocol(command, detail)
    }
}
