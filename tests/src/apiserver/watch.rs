//! Watch streams: one JSON event per line on a chunked response.
//!
//! Semantics modelled after the watch cache: `resourceVersion` unset or "0" starts
//! with synthetic ADDED events for the current state; a version N replays the history
//! after N, or answers an ERROR event with a 410 Expired Status when N was compacted;
//! `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`, WatchList)
//! sends the state and then a BOOKMARK annotated `k8s.io/initial-events-end`;
//! `allowWatchBookmarks=true` gets periodic BOOKMARKs; objects that stop (start)
//! matching a selector are sent as DELETED (ADDED).

use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::server::{
    Query, Shared, Target, error_response, matches, q, selectors, stream_response,
};
use super::status::ApiError;
use super::store::{EventType, StoredEvent};
use super::table;
use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

struct Filter {
    ri: ResourceInfo,
    namespace: Option<String>,
    ls: LabelSelector,
    fs: FieldSelector,
}

impl Filter {
    fn same_resource(&self, ev: &StoredEvent) -> bool {
        ev.group == self.ri.storage_group
            && ev.resource == self.ri.resource
            && self.namespace.as_ref().is_none_or(|n| *n == ev.namespace)
    }

    fn view(&self, o: &Value) -> Value {
        if self.ri.group == "events.k8s.io" {
            super::builtins::event_to_v1(o)
        } else if let Some(crd) = &self.ri.crd {
            let mut v = o.clone();
            crd.schema.apply_defaults(&mut v);
            v
        } else {
            o.clone()
        }
    }

    fn matches(&self, o: &Value) -> bool {
        matches(&self.ri, &self.view(o), &self.ls, &self.fs)
    }

    /// The event a watcher of this filter sees for `ev`, if any.
    fn translate(&self, ev: &StoredEvent) -> Option<(&'static str, Value)> {
        if !self.same_resource(ev) {
            return None;
        }
        let now = self.matches(&ev.object);
        match ev.etype {
            EventType::Added | EventType::Deleted => {
                now.then(|| (ev.etype.as_str(), self.view(&ev.object)))
            }
            EventType::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", self.view(&ev.object))),
                    (false, true) => Some(("ADDED", self.view(&ev.object))),
                    (true, false) => Some(("DELETED", self.view(&ev.object))),
                    (false, false) => None,
                }
            }
        }
    }
}

struct Encoder {
    ri: ResourceInfo,
    table: bool,
    include: String,
    headers_sent: bool,
}

impl Encoder {
    fn line(&mut self, etype: &str, obj: Value) -> Bytes {
        let obj = if self.table && etype != "BOOKMARK" && etype != "ERROR" {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let t = table::table(
                &self.ri,
                &[obj],
                &self.include,
                &rv,
                None,
                !self.headers_sent,
            );
            self.headers_sent = true;
            t
        } else {
            obj
        };
        let mut s = json!({"type": etype, "object": obj}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&mut self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.ri.kind, "apiVersion": self.ri.api_version(), "metadata": meta});
        self.line("BOOKMARK", obj)
    }
}

fn parse_rv(s: Option<&str>) -> Result<Option<u64>, ApiError> {
    match s {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}"))),
    }
}

pub fn serve(shared: Arc<Shared>, t: Target, query: &Query, as_table: bool) -> Response {
    match start(shared, t, query, as_table) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn start(
    shared: Arc<Shared>,
    t: Target,
    query: &Query,
    as_table: bool,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(&t.ri, query)?;
    let rv = parse_rv(q(query, "resourceVersion"))?;
    let bookmarks = matches!(q(query, "allowWatchBookmarks"), Some("true") | Some("1"));
    let send_initial = match q(query, "sendInitialEvents") {
        Some("true") | Some("1") => true,
        Some("false") | Some("0") | None => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid sendInitialEvents {other:?}"
            )));
        }
    };
    // Invalid ListOptions combinations, refused like the apiserver's validation.
    let forbidden_option = |field: &str, message: &str| {
        ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[super::status::cause("FieldValueForbidden", field, message)],
        )
    };
    let rv_match = q(query, "resourceVersionMatch").unwrap_or("");
    if q(query, "sendInitialEvents").is_some() && rv_match != "NotOlderThan" {
        return Err(forbidden_option(
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial && !bookmarks {
        return Err(forbidden_option(
            "allowWatchBookmarks",
            "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    if !send_initial && !rv_match.is_empty() {
        return Err(forbidden_option(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let timeout = q(query, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(shared.config.default_watch_timeout);
    let filter = Filter {
        ri: t.ri.clone(),
        namespace: t.namespace.clone(),
        ls,
        fs,
    };
    let mut enc = Encoder {
        ri: t.ri.clone(),
        table: as_table,
        include: q(query, "includeObject").unwrap_or("Metadata").to_string(),
        headers_sent: false,
    };
    let mut initial: Vec<Bytes> = Vec::new();
    let (mut rx, mut seen_rv) = {
        let st = shared.lock();
        let cur = st.rv;
        let replay_from = if rv.is_none() || send_initial {
            cur
        } else {
            rv.unwrap_or(cur)
        };
        let (history, rx) = match st.history_since(replay_from) {
            Ok(x) => x,
            Err(e) => {
                drop(st);
                // Like the watch cache: 200 and an ERROR event carrying the 410 Status.
                let line = enc.line("ERROR", e.body);
                return Ok(stream_response(Body::from(line)));
            }
        };
        if rv.is_none() || send_initial {
            for o in st.list(&t.ri, t.namespace.as_deref()) {
                if matches(&t.ri, &o, &filter.ls, &filter.fs) {
                    initial.push(enc.line("ADDED", o));
                }
            }
        } else {
            for ev in history {
                if let Some((ty, o)) = filter.translate(&ev) {
                    initial.push(enc.line(ty, o));
                }
            }
        }
        if send_initial {
            initial.push(enc.bookmark(cur, true));
        }
        (rx, cur)
    };
    let min_rv = if send_initial { 0 } else { rv.unwrap_or(0) };
    let mut close = shared.faults.close_signal();
    close.mark_unchanged();
    let interval = shared.config.bookmark_interval;
    let stream = async_stream::stream! {
        for b in initial {
            yield Ok::<Bytes, Infallible>(b);
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = close.changed() => break,
                _ = tick.tick() => {
                    if bookmarks {
                        yield Ok(enc.bookmark(seen_rv, false));
                    }
                }
                r = rx.recv() => match r {
                    // A version from the future: nothing at or below it is sent.
                    Ok(ev) if ev.rv <= min_rv => seen_rv = ev.rv.max(seen_rv),
                    Ok(ev) => {
                        seen_rv = ev.rv;
                        if let Some((ty, o)) = filter.translate(&ev) {
                            yield Ok(enc.line(ty, o));
                        }
                    }
                    // A slow watcher is cut off; the client resumes from its last version.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => break,
                }
            }
        }
    };
    Ok(stream_response(Body::from_stream(stream)))
}
