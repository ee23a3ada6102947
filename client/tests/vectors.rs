//! The shared protocol vectors (clients/vectors, docs/protocol.md) against real
//! redis-servers: a standalone one per test, and one Redis Cluster for the cluster cases.

use std::path::PathBuf;

use serde_json::{Value as J, json};
use workpool_client::dead_letters::{DeadLetter, Fields};
use workpool_client::submit::{RoundRobin, plan};
use workpool_client::target::{Connection, Mode, Target, Tls, parse_url};
use workpool_client::{
    DeadLetterFilter, DeadLetterRef, EntryId, Layout, Pool, RetryOutcome, Task, crc16_xmodem,
};
use workpool_worker::testing::{ClusterOptions, RedisCluster, RedisServer};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/vectors")
}

fn vectors(name: &str) -> J {
    let text = std::fs::read_to_string(vectors_dir().join(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn b64decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = T.iter().position(|&t| t == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// `{text}`, `{base64}`, `{json}` or a plain string, as bytes.
fn bytes_of(v: &J) -> Vec<u8> {
    match v {
        J::String(s) => s.clone().into_bytes(),
        J::Object(o) if o.contains_key("text") => o["text"].as_str().unwrap().as_bytes().to_vec(),
        J::Object(o) if o.contains_key("base64") => b64decode(o["base64"].as_str().unwrap()),
        J::Object(o) if o.contains_key("json") => serde_json::to_vec(&o["json"]).unwrap(),
        J::Number(n) => n.to_string().into_bytes(),
        other => panic!("not a byte value: {other}"),
    }
}

fn layout_of(pool: &J) -> Layout {
    let stream = pool["stream"].as_str().unwrap();
    let group = pool.get("group").and_then(J::as_str).unwrap_or(stream);
    let mut l = Layout::new(stream, group)
        .with_partitions(pool.get("partitions").and_then(J::as_u64).unwrap_or(1) as u32)
        .with_cluster(pool.get("mode").and_then(J::as_str) == Some("cluster"));
    if let Some(d) = pool.get("dead_letter_stream").and_then(J::as_str) {
        l = l.with_dead_letter_stream(d);
    }
    l
}

fn is_cluster(pool: &J) -> bool {
    pool.get("mode").and_then(J::as_str) == Some("cluster")
}

async fn connect(url: &str) -> Connection {
    Target::new(url, &Tls::none())
        .expect("target")
        .connect(Some(std::time::Duration::from_secs(10)))
        .await
        .expect("connect")
}

async fn run(conn: &Connection, args: &[Vec<u8>]) -> redis::Value {
    let mut c = conn.clone();
    let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(a);
    }
    cmd.query_async(&mut c).await.expect("command")
}

async fn flush(conn: &Connection, cluster: Option<&RedisCluster>) {
    match cluster {
        None => {
            run(conn, &[b"FLUSHALL".to_vec()]).await;
        }
        Some(cl) => {
            for n in &cl.nodes {
                // Replicas refuse writes; their primaries' flush reaches them.
                let _ = n.cmd::<redis::Value>(&redis::cmd("FLUSHALL"));
            }
        }
    }
}

async fn entry_fields(conn: &Connection, stream: &str, id: EntryId) -> Fields {
    let mut c = conn.clone();
    let v: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id)
        .arg(id)
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    v.into_iter().next().map(|(_, f)| f).unwrap_or_default()
}

async fn dbsize(conn: &Connection) -> i64 {
    let mut c = conn.clone();
    redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .expect("DBSIZE")
}

#[test]
fn the_packaged_scripts_are_the_canonical_ones() {
    for name in ["stats", "submit_dedup", "retry", "result"] {
        let ours = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scripts/{name}.lua")),
        )
        .expect("client script");
        let canonical =
            std::fs::read_to_string(vectors_dir().join(format!("scripts/{name}.lua"))).unwrap();
        assert_eq!(
            ours, canonical,
            "client/scripts/{name}.lua differs from clients/vectors"
        );
    }
}

#[test]
fn keys() {
    for c in vectors("keys.json")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let l = layout_of(&c["pool"]);
        if c.get("error").and_then(J::as_bool) == Some(true) {
            assert!(l.validate().is_err(), "{name}: must be refused");
            continue;
        }
        l.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(l.draining_key(), c["expect"]["draining"], "{name}");
        let task_id = c["task_id"].as_str().unwrap();
        for (i, want) in c["expect"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(l.partition_stream(i), want["stream"], "{name}");
            assert_eq!(l.dead_letter_stream(i), want["dead"], "{name}");
            // The dedup key as submit writes it.
            let t = Task::new("x")
                .with_id(task_id)
                .in_partition(i)
                .with_dedup(workpool_client::DEFAULT_DEDUP_WINDOW);
            let p = plan(&l, &t, &RoundRobin::new(l.partitions(), Some(0)).unwrap()).unwrap();
            assert_eq!(p.dedup.as_ref().unwrap().0, want["dedup"], "{name}");
        }
    }
}

#[test]
fn partitions() {
    let v = vectors("partition.json");
    for c in v["crc16"].as_array().unwrap() {
        assert_eq!(
            u64::from(crc16_xmodem(c["key"].as_str().unwrap().as_bytes())),
            c["crc16"].as_u64().unwrap()
        );
    }
    for c in v["by_key"].as_array().unwrap() {
        let l = Layout::new("q", "q").with_partitions(c["partitions"].as_u64().unwrap() as u32);
        assert_eq!(
            l.partition_for_key(c["key"].as_str().unwrap().as_bytes()) as u64,
            c["expect"].as_u64().unwrap()
        );
    }
    for c in v["round_robin"].as_array().unwrap() {
        let n = c["partitions"].as_u64().unwrap() as usize;
        let rr = RoundRobin::new(n, Some(c["start"].as_u64().unwrap() as usize)).unwrap();
        let got: Vec<u64> = (0..c["tasks"].as_u64().unwrap())
            .map(|_| rr.take() as u64)
            .collect();
        assert_eq!(json!(got), c["expect"]);
    }
}

#[test]
fn urls() {
    let v = vectors("urls.json");
    for c in v["cases"].as_array().unwrap() {
        let url = c["url"].as_str().unwrap();
        let e = &c["expect"];
        let p = parse_url(url).unwrap_or_else(|err| panic!("{url}: {err}"));
        let mode = match p.mode {
            Mode::Standalone => "standalone",
            Mode::Sentinel => "sentinel",
            Mode::Cluster => "cluster",
        };
        assert_eq!(mode, e["mode"], "{url}");
        if p.mode == Mode::Standalone {
            // The redis crate reads the rest of a standalone URL: it must accept it.
            Target::new(url, &Tls::none()).unwrap_or_else(|err| panic!("{url}: {err}"));
            continue;
        }
        assert_eq!(p.tls, e["tls"], "{url}");
        assert_eq!(p.db, e["db"].as_i64().unwrap(), "{url}");
        assert_eq!(json!(p.username), e["username"], "{url}");
        assert_eq!(json!(p.password), e["password"], "{url}");
        let hosts: Vec<J> = p.hosts.iter().map(|h| json!([h.host, h.port])).collect();
        assert_eq!(J::Array(hosts), e["hosts"], "{url}");
        for k in ["master", "sentinel_username", "sentinel_password"] {
            if let Some(want) = e.get(k) {
                let got = match k {
                    "master" => json!(p.master),
                    "sentinel_username" => json!(p.sentinel_username),
                    _ => json!(p.sentinel_password),
                };
                assert_eq!(&got, want, "{url} {k}");
            }
        }
    }
    for bad in v["bad"].as_array().unwrap() {
        let url = bad.as_str().unwrap();
        let err = Target::new(url, &Tls::none()).expect_err(url).to_string();
        assert!(
            !err.contains("pw@"),
            "{url}: the error shows the password: {err}"
        );
    }
}

fn task_of(t: &J) -> Task {
    let mut task = Task::new(bytes_of(&t["payload"]));
    if let Some(id) = t.get("id").and_then(J::as_str) {
        task = task.with_id(id);
    }
    if let Some(a) = t.get("attempt").and_then(J::as_i64) {
        task = task.with_attempt(u32::try_from(a).unwrap_or(0));
    }
    if let Some(k) = t.get("key") {
        task = task.with_key(bytes_of(k));
    }
    if let Some(p) = t.get("partition").and_then(J::as_u64) {
        task = task.in_partition(p as usize);
    }
    if t.get("dedup").and_then(J::as_bool) == Some(true) {
        let ms = t
            .get("dedup_window_ms")
            .and_then(J::as_u64)
            .unwrap_or(86_400_000);
        task = task.with_dedup(std::time::Duration::from_millis(ms));
    }
    task
}

#[test]
fn submit_commands() {
    for c in vectors("submit.json")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let l = layout_of(&c["pool"]);
        let start = c.get("round_robin_start").and_then(J::as_u64).unwrap_or(0) as usize;
        let rr = RoundRobin::new(l.partitions(), Some(start)).unwrap();
        for (t, e) in c["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["expect"].as_array().unwrap())
        {
            let p = plan(&l, &task_of(t), &rr).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(
                p.partition as u64,
                e["partition"].as_u64().unwrap(),
                "{name}"
            );
            let want: Vec<Vec<u8>> = e["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(bytes_of)
                .collect();
            assert_eq!(p.logical_command(), want, "{name}");
        }
    }
}

async fn submit_case(c: &J, conn: &Connection, cluster: Option<&RedisCluster>) {
    let name = c["name"].as_str().unwrap();
    let start = c.get("round_robin_start").and_then(J::as_u64).unwrap_or(0) as usize;
    let pool = Pool::new(conn.clone(), layout_of(&c["pool"]))
        .unwrap()
        .with_round_robin_start(start)
        .unwrap();
    let tasks = c["tasks"].as_array().unwrap();
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(
            pool.submit(task_of(t))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    for (s, e) in subs.iter().zip(c["expect"].as_array().unwrap()) {
        assert_eq!(
            s.partition as u64,
            e["partition"].as_u64().unwrap(),
            "{name}"
        );
        if let Some(d) = e.get("duplicate") {
            assert_eq!(J::Bool(s.duplicate), *d, "{name}");
        }
        if let Some(i) = e.get("same_entry_as").and_then(J::as_u64) {
            assert_eq!(s.entry_id, subs[i as usize].entry_id, "{name}");
        } else {
            let want: Vec<(Vec<u8>, Vec<u8>)> = e["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|kv| (bytes_of(&kv[0]), bytes_of(&kv[1])))
                .collect();
            let stream = pool.layout().partition_stream(s.partition);
            assert_eq!(
                entry_fields(conn, &stream, s.entry_id).await,
                want,
                "{name}"
            );
        }
        let want_tid = e.get("task_id").and_then(J::as_str).unwrap_or("@entry_id");
        let want_tid = if want_tid == "@entry_id" {
            s.entry_id.to_string()
        } else {
            want_tid.to_string()
        };
        assert_eq!(s.task_id, want_tid, "{name}");
    }
    if let Some(lens) = c.get("stream_lengths") {
        let mut got = Vec::new();
        for i in 0..pool.layout().partitions() {
            let mut cc = conn.clone();
            let n: u64 = redis::cmd("XLEN")
                .arg(pool.layout().partition_stream(i))
                .query_async(&mut cc)
                .await
                .unwrap();
            got.push(n);
        }
        assert_eq!(json!(got), *lens, "{name}");
    }
    // The same tasks as one pipelined batch: the same partitions.
    if !tasks
        .iter()
        .any(|t| t.get("dedup").and_then(J::as_bool) == Some(true))
    {
        flush(conn, cluster).await;
        let batch = Pool::new(conn.clone(), layout_of(&c["pool"]))
            .unwrap()
            .with_round_robin_start(start)
            .unwrap();
        let subs = batch
            .submit_many(tasks.iter().map(task_of).collect(), None)
            .await
            .unwrap();
        let parts: Vec<u64> = subs.iter().map(|s| s.partition as u64).collect();
        let want: Vec<u64> = c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["partition"].as_u64().unwrap())
            .collect();
        assert_eq!(parts, want, "{name}: batch");
    }
    flush(conn, cluster).await;
}

#[tokio::test]
async fn submit_entries_errors_and_ids() {
    let server = RedisServer::start().expect("redis-server");
    let conn = connect(&server.url()).await;
    let v = vectors("submit.json");
    for c in v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !is_cluster(&c["pool"]))
    {
        submit_case(c, &conn, None).await;
    }
    for c in v["errors"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let pool = Pool::new(conn.clone(), layout_of(&c["pool"])).unwrap();
        let t = &c["task"];
        // What Rust's types cannot express (a negative attempt or partition) cannot be
        // submitted at all; the rest is refused with nothing written.
        if t.get("attempt").and_then(J::as_i64).is_some_and(|a| a < 0)
            || t.get("partition")
                .and_then(J::as_i64)
                .is_some_and(|p| p < 0)
        {
            continue;
        }
        let err = pool
            .submit_many(vec![Task::new("fine"), task_of(t)], None)
            .await
            .expect_err(name);
        assert!(
            matches!(err.source, workpool_client::Error::InvalidArgument(_)),
            "{name}: {err}"
        );
        assert!(err.submitted.iter().all(Option::is_none), "{name}");
        assert_eq!(dbsize(&conn).await, 0, "{name}: something was written");
    }
    let pool = Pool::new(conn.clone(), Layout::new("q", "q")).unwrap();
    for id in v["accepted_ids"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let s = pool.submit(Task::new("x").with_id(id)).await.expect(id);
        assert_eq!(s.task_id, id);
        assert_eq!(
            entry_fields(&conn, "q", s.entry_id).await,
            vec![
                (b"payload".to_vec(), b"x".to_vec()),
                (b"id".to_vec(), id.as_bytes().to_vec())
            ]
        );
    }
}

fn check_stats(name: &str, got: &J, want: &J) {
    for (k, w) in want.as_object().unwrap() {
        match k.as_str() {
            "partitions" => {
                let g = got["partitions"].as_array().expect("partitions");
                let w = w.as_array().unwrap();
                assert_eq!(g.len(), w.len(), "{name}");
                for (g, w) in g.iter().zip(w) {
                    check_stats(name, g, w);
                }
            }
            "consumers" => {
                let g: Vec<J> = got["consumers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| json!({"name": c["name"], "pending": c["pending"]}))
                    .collect();
                assert_eq!(J::Array(g), *w, "{name}: consumers");
            }
            // Left out of the JSON when empty.
            "draining" => assert_eq!(
                got.get("draining").cloned().unwrap_or(json!({})),
                *w,
                "{name}"
            ),
            _ if w == "present" => assert!(got[k].as_u64().is_some(), "{name}: {k} = {}", got[k]),
            _ => assert_eq!(got[k], *w, "{name}: {k}"),
        }
    }
}

async fn stats_case(c: &J, conn: &Connection, cluster: Option<&RedisCluster>) {
    let name = c["name"].as_str().unwrap();
    let pool = Pool::new(conn.clone(), layout_of(&c["pool"])).unwrap();
    let l = pool.layout().clone();
    for cmd in c["setup"].as_array().unwrap() {
        let args: Vec<Vec<u8>> = cmd
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let mut s = a.as_str().unwrap().replace("${G}", l.group());
                for i in 0..l.partitions() {
                    s = s
                        .replace(&format!("${{P{i}}}"), &l.partition_stream(i))
                        .replace(&format!("${{D{i}}}"), &l.dead_letter_stream(i));
                }
                s.into_bytes()
            })
            .collect();
        run(conn, &args).await;
    }
    let st = pool.stats().await.unwrap_or_else(|e| panic!("{name}: {e}"));
    check_stats(name, &serde_json::to_value(&st).unwrap(), &c["expect"]);
    flush(conn, cluster).await;
}

#[tokio::test]
async fn stats() {
    let server = RedisServer::start().expect("redis-server");
    let conn = connect(&server.url()).await;
    for c in vectors("stats.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !is_cluster(&c["pool"]))
    {
        stats_case(c, &conn, None).await;
    }
}

fn dl_json(d: &DeadLetter) -> J {
    json!({
        "ref": d.reference.to_string(),
        "task_id": d.task_id,
        "payload": d.payload.as_ref().map(|p| json!({"text": String::from_utf8_lossy(p)})),
        "original_id": d.original_id,
        "error": d.error,
        "deliveries": d.deliveries,
        "stream": d.stream,
        "group": d.group,
        "consumer": d.consumer,
        "dead_lettered_ms": d.dead_lettered_ms(),
        "fields": d.fields.iter().map(|(k, v)| json!([k, String::from_utf8_lossy(v)])).collect::<Vec<_>>(),
    })
}

fn fields_args(fields: &J) -> Vec<Vec<u8>> {
    fields
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|kv| [bytes_of(&kv[0]), bytes_of(&kv[1])])
        .collect()
}

async fn retry_case(c: &J, conn: &Connection, cluster: Option<&RedisCluster>) {
    let name = c["name"].as_str().unwrap();
    let pool = Pool::new(conn.clone(), layout_of(&c["pool"])).unwrap();
    let p = c["partition"].as_u64().unwrap() as usize;
    let (stream, dead) = (
        pool.layout().partition_stream(p),
        pool.layout().dead_letter_stream(p),
    );
    let mut args = vec![b"XADD".to_vec(), dead.clone().into_bytes(), b"*".to_vec()];
    args.extend(fields_args(&c["fields"]));
    let id = match run(conn, &args).await {
        redis::Value::BulkString(b) => EntryId::parse(&b).unwrap(),
        other => panic!("{name}: XADD gave {other:?}"),
    };
    let tid = c["expect_task_id"].as_str().unwrap();
    let (result, notify) = (
        format!("{stream}:result:{tid}"),
        format!("{stream}:notify:{tid}"),
    );
    if c.get("with_result").and_then(J::as_bool) == Some(true) {
        let src = std::fs::read_to_string(vectors_dir().join("scripts/result.lua")).unwrap();
        let args: Vec<Vec<u8>> = [
            "EVAL", &src, "2", &result, &notify, "60000", "dead", "task_id", tid,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        run(conn, &args).await;
        assert_eq!(exists(conn, &[&result, &notify]).await, 2, "{name}");
    }
    let r = DeadLetterRef { partition: p, id };
    let [out] = pool.retry_dead_letters(&[r]).await.unwrap()[..] else {
        panic!("{name}: one outcome")
    };
    let new_id = out
        .entry_id
        .unwrap_or_else(|| panic!("{name}: not retried"));
    let want: Vec<(Vec<u8>, Vec<u8>)> = c["expect_entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (bytes_of(&kv[0]), bytes_of(&kv[1])))
        .collect();
    assert_eq!(entry_fields(conn, &stream, new_id).await, want, "{name}");
    assert_eq!(xlen(conn, &stream).await, 1, "{name}");
    assert_eq!(xlen(conn, &dead).await, 0, "{name}");
    assert_eq!(exists(conn, &[&result, &notify]).await, 0, "{name}");
    // Never retried twice.
    assert_eq!(
        pool.retry_dead_letters(&[r]).await.unwrap(),
        vec![RetryOutcome {
            reference: r,
            entry_id: None
        }],
        "{name}"
    );
    assert_eq!(xlen(conn, &stream).await, 1, "{name}");
    flush(conn, cluster).await;
}

async fn xlen(conn: &Connection, key: &str) -> u64 {
    let mut c = conn.clone();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn exists(conn: &Connection, keys: &[&str]) -> u64 {
    // One key per call: on Cluster a multi-key EXISTS must stay in one slot.
    let mut n = 0;
    for k in keys {
        let mut c = conn.clone();
        let e: u64 = redis::cmd("EXISTS")
            .arg(*k)
            .query_async(&mut c)
            .await
            .unwrap();
        n += e;
    }
    n
}

#[tokio::test]
async fn dead_letters() {
    let server = RedisServer::start().expect("redis-server");
    let conn = connect(&server.url()).await;
    let v = vectors("dead_letters.json");
    for c in v["parse"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let p = c["partition"].as_u64().unwrap() as usize;
        let pool = Pool::new(
            conn.clone(),
            Layout::new("q", "q").with_partitions(p as u32 + 1),
        )
        .unwrap();
        let mut args = vec![
            b"XADD".to_vec(),
            pool.layout().dead_letter_stream(p).into_bytes(),
            c["id"].as_str().unwrap().as_bytes().to_vec(),
        ];
        args.extend(fields_args(&c["fields"]));
        run(&conn, &args).await;
        let r = DeadLetterRef {
            partition: p,
            id: c["id"].as_str().unwrap().parse().unwrap(),
        };
        assert_eq!(
            dl_json(&pool.dead_letter(r).await.unwrap().expect(name)),
            c["expect"],
            "{name}"
        );
        let listed = pool
            .dead_letters(&DeadLetterFilter::default(), Some(100), false)
            .await
            .unwrap();
        assert_eq!(dl_json(&listed[0]), c["expect"], "{name}");
        flush(&conn, None).await;
    }
    for c in v["retry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !is_cluster(&c["pool"]))
    {
        retry_case(c, &conn, None).await;
    }
    let spec = &v["filters"];
    let pool = Pool::new(conn.clone(), layout_of(&spec["pool"])).unwrap();
    for e in spec["entries"].as_array().unwrap() {
        let p = e["partition"].as_u64().unwrap() as usize;
        let mut args = vec![
            b"XADD".to_vec(),
            pool.layout().dead_letter_stream(p).into_bytes(),
            e["id"].as_str().unwrap().as_bytes().to_vec(),
        ];
        args.extend(fields_args(&e["fields"]));
        run(&conn, &args).await;
    }
    for c in spec["cases"].as_array().unwrap() {
        let f = &c["filter"];
        let s = |k: &str| f.get(k).and_then(J::as_str).map(str::to_string);
        let n = |k: &str| f.get(k).and_then(J::as_u64);
        let filter = DeadLetterFilter {
            partition: n("partition").map(|p| p as usize),
            since_ms: n("since_ms"),
            until_ms: n("until_ms"),
            error_contains: s("error_contains"),
            task_id: s("task_id"),
            consumer: s("consumer"),
            min_deliveries: n("min_deliveries"),
        };
        let limit = n("limit").map(|l| l as usize);
        let newest = f.get("newest_first").and_then(J::as_bool).unwrap_or(false);
        let got: Vec<String> = pool
            .dead_letters(&filter, limit, newest)
            .await
            .unwrap()
            .iter()
            .map(|d| d.reference.to_string())
            .collect();
        assert_eq!(json!(got), c["expect"], "{f}");
    }
    for c in v["refs"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let r: DeadLetterRef = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(r.partition as u64, c["partition"].as_u64().unwrap());
        assert_eq!(r.id.to_string(), c["id"].as_str().unwrap());
        assert_eq!(
            r.to_string(),
            c.get("canonical").and_then(J::as_str).unwrap_or(text)
        );
    }
    for bad in v["bad_refs"].as_array().unwrap() {
        assert!(
            bad.as_str().unwrap().parse::<DeadLetterRef>().is_err(),
            "{bad} must be refused"
        );
    }
}

/// Every vector case that runs on Redis Cluster (submit, stats, retry), on one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cases() {
    let cluster = RedisCluster::start(ClusterOptions::default()).expect("redis cluster");
    let conn = connect(&cluster.url()).await;
    let cl = Some(&cluster);
    let mut ran = 0;
    for c in vectors("submit.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| is_cluster(&c["pool"]))
    {
        submit_case(c, &conn, cl).await;
        ran += 1;
    }
    for c in vectors("stats.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| is_cluster(&c["pool"]))
    {
        stats_case(c, &conn, cl).await;
        ran += 1;
    }
    for c in vectors("dead_letters.json")["retry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| is_cluster(&c["pool"]))
    {
        retry_case(c, &conn, cl).await;
        ran += 1;
    }
    assert!(ran >= 6, "the vectors have cluster cases: {ran}");
}

fn result_json(r: &workpool_client::TaskResult) -> J {
    let output = r.output.as_ref().map(|o| match std::str::from_utf8(o) {
        Ok(t) => json!({ "text": t }),
        Err(_) => json!({ "base64": workpool_client::dead_letters::base64(o) }),
    });
    json!({
        "state": r.state, "version": r.version, "task_id": r.task_id, "entry_id": r.entry_id,
        "deliveries": r.deliveries, "consumer": r.consumer, "started_ms": r.started_ms,
        "finished_ms": r.finished_ms, "output": output, "output_truncated": r.output_truncated,
        "error": r.error, "dead_letter_id": r.dead_letter_id,
        "extra": r.extra.iter().map(|(k, v)| json!([k, String::from_utf8_lossy(v)])).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn results() {
    use workpool_client::TaskStatus;
    let server = RedisServer::start().expect("redis-server");
    let pool = Pool::connect_url(&server.url(), &Tls::none(), Layout::new("q", "q"))
        .await
        .unwrap();
    let conn = pool.connection();
    let src = std::fs::read_to_string(vectors_dir().join("scripts/result.lua")).unwrap();
    for c in vectors("results.json")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let fields = c["fields"].as_array().unwrap();
        let tid = fields.iter().find(|kv| kv[0] == "task_id").unwrap()[1]
            .as_str()
            .unwrap();
        let (rk, nk) = (format!("q:result:{tid}"), format!("q:notify:{tid}"));
        let mut args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            src.clone().into_bytes(),
            b"2".to_vec(),
            rk.clone().into_bytes(),
            nk.clone().into_bytes(),
            b"60000".to_vec(),
            c["state"].as_str().unwrap().as_bytes().to_vec(),
        ];
        args.extend(fields_args(&c["fields"]));
        run(&conn, &args).await;
        let got = pool.result(0, tid).await.unwrap().expect(name);
        assert_eq!(result_json(&got), c["expect"], "{name}");
        let waited = pool
            .wait_for(0, tid, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(result_json(&waited), c["expect"], "{name}");
        let st = pool
            .status(0, tid, Some(EntryId { ms: 1, seq: 0 }))
            .await
            .unwrap();
        assert_eq!(st, TaskStatus::Finished(Box::new(got)), "{name}");
        flush(&conn, None).await;
    }
}
