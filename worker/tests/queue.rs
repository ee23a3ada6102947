//! The queue protocol library against a real redis-server.

mod common;

use std::time::Duration;

use common::{conn, enqueue, stats};
use redis::Value;
use workpool_worker::queue::{EntryId, NewTask, Queue, RemoveConsumer};
use workpool_worker::testing::RedisServer;

async fn raw_lag(c: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> Value {
    let groups: Vec<Vec<Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(c)
        .await
        .expect("XINFO GROUPS");
    for g in groups {
        let mut it = g.into_iter();
        let mut name = None;
        let mut lag = None;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match k {
                Value::BulkString(k) if k == b"name" => name = Some(v),
                Value::BulkString(k) if k == b"lag" => lag = Some(v),
                _ => {}
            }
        }
        if name == Some(Value::BulkString(group.as_bytes().to_vec())) {
            return lag.expect("lag field (redis >= 7)");
        }
    }
    panic!("group {group} not found");
}

#[tokio::test]
async fn stats_compute_exact_lag_when_redis_reports_nil() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("jobs", "pool");
    let mut c = conn(&url).await;

    // No stream yet: everything zero.
    let st = q.stats(&mut c).await.expect("stats");
    assert!(!st.stream_exists && !st.group_exists);
    assert_eq!((st.backlog, st.pending, st.dead_letters), (0, 0, 0));

    // Stream without group: the backlog is the whole stream (the group starts at 0).
    let payloads: Vec<String> = (0..2500).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    let ids = enqueue(&url, &q, &refs).await;
    assert_eq!(ids.len(), 2500);
    let st = q.stats(&mut c).await.expect("stats");
    assert!(st.stream_exists && !st.group_exists);
    assert_eq!((st.lag, st.backlog), (2500, 2500));

    q.ensure_group(&mut c).await.expect("create group");
    q.ensure_group(&mut c)
        .await
        .expect("creating twice is fine");
    let read = q
        .read(&mut c, "c1", 1200, Duration::from_millis(100))
        .await
        .expect("read");
    assert_eq!(read.len(), 1200);
    assert!(
        read.iter()
            .all(|e| e.deliveries == 1 && e.payload.is_some())
    );

    // Redis knows the lag while nothing was deleted.
    assert_eq!(raw_lag(&mut c, "jobs", "pool").await, Value::Int(1300));
    let st = q.stats(&mut c).await.expect("stats");
    assert_eq!(
        (st.lag, st.lag_computed, st.pending, st.backlog),
        (1300, false, 1200, 2500)
    );
    assert!(!st.lag_estimated);
    assert_eq!(st.pending_deleted, 0);

    // Delete one undelivered entry: Redis 7.0 reports lag as nil now.
    let _: i64 = redis::cmd("XDEL")
        .arg("jobs")
        .arg(ids[2000])
        .query_async(&mut c)
        .await
        .expect("XDEL");
    assert_eq!(raw_lag(&mut c, "jobs", "pool").await, Value::Nil);
    let st = q.stats(&mut c).await.expect("stats");
    assert!(
        st.lag_computed,
        "lag must be computed when redis reports nil"
    );
    assert_eq!(st.lag, 1299, "exact count of undelivered entries");
    assert_eq!(st.pending, 1200);
    assert_eq!(st.backlog, 2499);
    assert_eq!(st.stream_length, 2499);
    assert_eq!(st.last_delivered_id, Some(ids[1199]));
    assert_eq!(st.oldest_pending_id, Some(ids[0]));
    assert!(st.oldest_pending_age_ms.is_some());
    assert_eq!(st.consumers.len(), 1);
    assert_eq!(st.consumers[0].name, "c1");
    assert_eq!(st.consumers[0].pending, 1200);

    // Ack + delete some delivered entries (the lag is still nil and must stay exact).
    q.ack(&mut c, &ids[..1000]).await.expect("ack");
    let st = q.stats(&mut c).await.expect("stats");
    assert_eq!((st.lag, st.pending, st.backlog), (1299, 200, 1499));

    // The same through the binary.
    let out = std::process::Command::new(common::BIN)
        .args([
            "stats",
            "--redis-url",
            &url,
            "--stream",
            "jobs",
            "--group",
            "pool",
            "--json",
        ])
        .output()
        .expect("run stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    assert_eq!(j["backlog"], 1499);
    assert_eq!(j["lag"], 1299);
    assert_eq!(j["lag_computed"], true);
    assert_eq!(j["consumers"][0]["name"], "c1");
    let text = std::process::Command::new(common::BIN)
        .args([
            "stats",
            "--redis-url",
            &url,
            "--stream",
            "jobs",
            "--group",
            "pool",
        ])
        .output()
        .expect("run stats");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("backlog:       1499"), "{text}");
    assert!(text.contains("lag:           1299 (counted"), "{text}");
}

#[tokio::test]
async fn lag_is_computed_when_the_last_delivered_entry_was_deleted() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let ids = enqueue(&url, &q, &["{}", "{}", "{}", "{}", "{}"]).await;
    let read = q
        .read(&mut c, "w", 2, Duration::from_millis(50))
        .await
        .expect("read");
    assert_eq!(read.len(), 2);
    // Ack + delete what was delivered, as workers do, then delete an undelivered one.
    q.ack(&mut c, &ids[..2]).await.expect("ack");
    let _: i64 = redis::cmd("XDEL")
        .arg("s")
        .arg(ids[4])
        .query_async(&mut c)
        .await
        .expect("xdel");
    assert_eq!(raw_lag(&mut c, "s", "g").await, Value::Nil);
    let st = stats(&url, &q).await;
    assert_eq!(
        (st.lag, st.lag_computed, st.pending, st.backlog),
        (2, true, 0, 2)
    );
}

#[tokio::test]
async fn consumers_are_removed_only_when_they_hold_nothing() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    assert_eq!(
        q.remove_consumer_if_idle(&mut c, "w1").await.expect("rm"),
        RemoveConsumer::NoGroup
    );
    q.ensure_group(&mut c).await.expect("group");
    let ids = enqueue(&url, &q, &["{}", "{}"]).await;
    let got = q
        .read(&mut c, "w1", 10, Duration::from_millis(50))
        .await
        .expect("read");
    assert_eq!(got.len(), 2);
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg("s")
        .arg("g")
        .arg("w2")
        .query_async(&mut c)
        .await
        .expect("createconsumer");
    assert_eq!(
        q.remove_consumer_if_idle(&mut c, "w1").await.expect("rm"),
        RemoveConsumer::StillPending(2)
    );
    assert_eq!(q.consumers(&mut c).await.expect("consumers").len(), 2);
    assert_eq!(
        q.pending_entries(&mut c, 10, Some("w1"))
            .await
            .expect("pending")
            .len(),
        2
    );
    q.ack(&mut c, &ids).await.expect("ack");
    assert_eq!(
        q.remove_consumer_if_idle(&mut c, "w1").await.expect("rm"),
        RemoveConsumer::Removed
    );
    assert_eq!(
        q.remove_consumer_if_idle(&mut c, "w2").await.expect("rm"),
        RemoveConsumer::Removed
    );
    assert_eq!(
        q.remove_consumer_if_idle(&mut c, "w1").await.expect("rm"),
        RemoveConsumer::NotFound
    );
    assert!(q.consumers(&mut c).await.expect("consumers").is_empty());
}

#[tokio::test]
async fn claims_count_deliveries_and_handle_deleted_entries() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let ids = enqueue(&url, &q, &["a", "b", "c"]).await;
    let got = q
        .read(&mut c, "dead", 10, Duration::from_millis(50))
        .await
        .expect("read");
    assert_eq!(got.len(), 3);
    // One entry is deleted while pending.
    let _: i64 = redis::cmd("XDEL")
        .arg("s")
        .arg(ids[1])
        .query_async(&mut c)
        .await
        .expect("xdel");
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Renewal by the holder keeps entries from being reclaimed.
    let lost = q.renew(&mut c, "dead", &[ids[0]]).await.expect("renew");
    assert!(lost.is_empty());
    let ac = q
        .autoclaim(
            &mut c,
            "alive",
            Duration::from_millis(50),
            EntryId::ZERO,
            10,
        )
        .await
        .expect("autoclaim");
    assert_eq!(
        ac.deleted,
        vec![ids[1]],
        "deleted-but-pending id reported and dropped"
    );
    assert_eq!(ac.entries.len(), 1, "the renewed entry is not reclaimed");
    assert_eq!(ac.entries[0].id, ids[2]);
    assert_eq!(ac.entries[0].deliveries, 2, "delivery count from XPENDING");
    assert_eq!(ac.entries[0].payload.as_deref(), Some(&b"c"[..]));
    // The former holder no longer holds it.
    assert_eq!(
        q.renew(&mut c, "dead", &[ids[2]]).await.expect("renew"),
        vec![ids[2]]
    );
    assert!(
        !q.claim_for_retry(&mut c, "dead", ids[2], 3)
            .await
            .expect("claim")
    );
    assert!(
        q.claim_for_retry(&mut c, "alive", ids[2], 3)
            .await
            .expect("claim")
    );
    let p = q.pending_entries(&mut c, 10, None).await.expect("pending");
    assert_eq!(
        p.iter().find(|p| p.id == ids[2]).map(|p| p.deliveries),
        Some(3)
    );
    // Hand back: idle for a day, counter set as asked.
    assert_eq!(
        q.release(&mut c, "alive", &[(ids[2], 1)])
            .await
            .expect("release"),
        1
    );
    let p = q
        .pending_entries(&mut c, 10, Some("alive"))
        .await
        .expect("pending");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].idle_ms >= 86_000_000,
        "released entry looks idle: {}",
        p[0].idle_ms
    );
    assert_eq!(p[0].deliveries, 1);
    // Dead letter carries payload, id, error and count; the entry is acked and deleted.
    let mut e = ac.entries[0].clone();
    e.deliveries = 3;
    e.fields.push((b"id".to_vec(), b"task-7".to_vec()));
    e.fields.push((b"error".to_vec(), b"user field".to_vec()));
    assert!(
        q.dead_letter(&mut c, &e, "alive", "boom")
            .await
            .expect("dead letter")
            .is_some()
    );
    let dl: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("s:dead")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("xrange");
    assert_eq!(dl.len(), 1);
    let f: std::collections::HashMap<_, _> = dl[0].1.iter().cloned().collect();
    assert_eq!(f["payload"], "c");
    assert_eq!(f["original_id"], ids[2].to_string());
    assert_eq!(f["error"], "boom");
    assert_eq!(f["deliveries"], "3");
    assert_eq!(f["id"], "task-7");
    assert_eq!(f["orig_error"], "user field");
    assert_eq!(f["consumer"], "alive");
    let st = stats(&url, &q).await;
    assert_eq!(st.dead_letters, 1);
    assert_eq!(
        st.stream_length, 1,
        "only the entry still pending for `dead` remains"
    );
}

#[tokio::test]
async fn enqueue_sets_optional_fields() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let ids = q
        .enqueue(
            &mut c,
            &[NewTask {
                payload: b"{\"x\":1}",
                id: Some("abc"),
                attempt: Some(2),
            }],
        )
        .await
        .expect("enqueue");
    let got = q
        .read(&mut c, "w", 1, Duration::from_millis(50))
        .await
        .expect("read");
    assert_eq!(got[0].id, ids[0]);
    assert_eq!(got[0].field("id"), Some(&b"abc"[..]));
    assert_eq!(got[0].field("attempt"), Some(&b"2"[..]));
}

/// Lease renewal must renew every entry a worker holds, not only the first: a worker with
/// several in-flight tasks keeps all of them.
#[tokio::test]
async fn renewal_renews_every_held_entry_of_every_worker() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let payloads: Vec<String> = (0..12).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    enqueue(&url, &q, &refs).await;
    // Three workers hold four entries each.
    let mut held = Vec::new();
    for w in ["w1", "w2", "w3"] {
        let got = q
            .read(&mut c, w, 4, Duration::from_millis(50))
            .await
            .expect("read");
        assert_eq!(got.len(), 4);
        held.push((w, got.iter().map(|e| e.id).collect::<Vec<_>>()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (w, ids) in &held {
        let lost = q.renew(&mut c, w, ids).await.expect("renew");
        assert!(lost.is_empty(), "{w} lost {lost:?}");
    }
    // Every entry was renewed: none is idle past 200 ms, so nothing can be reclaimed.
    let p = q.pending_entries(&mut c, 100, None).await.expect("pending");
    assert_eq!(p.len(), 12);
    for e in &p {
        assert!(
            e.idle_ms < 200,
            "{} of {} not renewed: idle {} ms",
            e.id,
            e.consumer,
            e.idle_ms
        );
        assert_eq!(e.deliveries, 1, "renewal does not count a delivery");
    }
    let ac = q
        .autoclaim(
            &mut c,
            "thief",
            Duration::from_millis(200),
            EntryId::ZERO,
            100,
        )
        .await
        .expect("autoclaim");
    assert!(
        ac.entries.is_empty(),
        "stole {:?}",
        ac.entries.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    // An entry another worker took is reported lost, and the others are still renewed.
    let (w1, ids1) = &held[0];
    let _: Value = redis::cmd("XCLAIM")
        .arg("s")
        .arg("g")
        .arg("w2")
        .arg(0)
        .arg(ids1[2])
        .arg("JUSTID")
        .query_async(&mut c)
        .await
        .expect("xclaim");
    assert_eq!(
        q.renew(&mut c, w1, ids1).await.expect("renew"),
        vec![ids1[2]]
    );
}

/// A dead-letter write that Redis refuses (the dead-letter key holds a string) must leave
/// the task pending, and a dead letter run twice (a command retried after a stall) must
/// write one entry.
#[tokio::test]
async fn dead_letters_are_written_before_the_ack_and_at_most_once() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let ids = enqueue(&url, &q, &["a"]).await;
    let got = q
        .read(&mut c, "w", 1, Duration::from_millis(50))
        .await
        .expect("read");
    let _: () = redis::cmd("SET")
        .arg("s:dead")
        .arg("not a stream")
        .query_async(&mut c)
        .await
        .expect("set");
    let err = q
        .dead_letter(&mut c, &got[0], "w", "boom")
        .await
        .expect_err("the write must fail");
    assert!(err.is_wrong_type(), "{err}");
    let st = stats(&url, &q).await;
    assert_eq!(
        (st.stream_length, st.pending),
        (1, 1),
        "the task is still there and pending"
    );
    let p = q
        .pending_entries(&mut c, 10, Some("w"))
        .await
        .expect("pending");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].id, ids[0]);

    let _: () = redis::cmd("DEL")
        .arg("s:dead")
        .query_async(&mut c)
        .await
        .expect("del");
    // Another worker does not hold it: nothing is written.
    assert_eq!(
        q.dead_letter(&mut c, &got[0], "other", "boom")
            .await
            .expect("dl"),
        None
    );
    let first = q
        .dead_letter(&mut c, &got[0], "w", "boom")
        .await
        .expect("dl");
    assert!(first.is_some());
    let again = q
        .dead_letter(&mut c, &got[0], "w", "boom")
        .await
        .expect("dl");
    assert_eq!(again, None, "the retried command writes nothing");
    let st = stats(&url, &q).await;
    assert_eq!((st.dead_letters, st.stream_length, st.pending), (1, 0, 0));
}

/// Redis 7.0 reports a wrong lag after XTRIM, and pending entries whose stream entries were
/// trimmed are no work: the backlog must be the entries that can still run.
#[tokio::test]
async fn stats_after_xtrim_count_the_lag_and_leave_out_trimmed_pending_entries() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let payloads: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = payloads.iter().map(|s| s.as_str()).collect();
    enqueue(&url, &q, &refs).await;
    let got = q
        .read(&mut c, "w", 4, Duration::from_millis(50))
        .await
        .expect("read");
    assert_eq!(got.len(), 4);
    let _: i64 = redis::cmd("XTRIM")
        .arg("s")
        .arg("MAXLEN")
        .arg(3)
        .query_async(&mut c)
        .await
        .expect("xtrim");
    let st = stats(&url, &q).await;
    assert_eq!(st.stream_length, 3);
    assert_eq!(st.lag, 3, "the 3 entries left were never delivered");
    assert_eq!(st.pending, 4, "redis still lists 4 pending ids");
    assert_eq!(st.pending_deleted, 4, "all 4 were trimmed away");
    assert_eq!(st.backlog, 3);
    assert!(!st.lag_estimated);
    // XADD with MAXLEN trims too.
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("MAXLEN")
        .arg(2)
        .arg("*")
        .arg("payload")
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("xadd maxlen");
    let st = stats(&url, &q).await;
    assert_eq!((st.stream_length, st.lag, st.backlog), (2, 2, 2));
}

/// Entries delivered to a consumer whose reply never arrived are taken back without
/// counting another delivery.
#[tokio::test]
async fn lost_deliveries_are_taken_back_without_counting_a_delivery() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    let ids = enqueue(&url, &q, &["a", "b", "c"]).await;
    // The read ran in Redis; pretend its reply was lost.
    let _ = q
        .read(&mut c, "w", 3, Duration::from_millis(50))
        .await
        .expect("read");
    let _: i64 = redis::cmd("XDEL")
        .arg("s")
        .arg(ids[2])
        .query_async(&mut c)
        .await
        .expect("xdel");
    let own = q.pending_of(&mut c, "w", None, 10).await.expect("pending");
    assert_eq!(own.len(), 3);
    let page = q
        .pending_of(&mut c, "w", Some(ids[0]), 10)
        .await
        .expect("pending");
    assert_eq!(
        page.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![ids[1], ids[2]]
    );
    let (entries, deleted) = q.take_back(&mut c, "w", &ids).await.expect("take back");
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1]]
    );
    assert_eq!(entries[0].payload.as_deref(), Some(&b"a"[..]));
    assert!(
        entries.iter().all(|e| e.deliveries == 1),
        "no delivery counted"
    );
    assert_eq!(deleted, vec![ids[2]]);
    let p = q.pending_entries(&mut c, 10, None).await.expect("pending");
    assert!(p.iter().all(|p| p.deliveries == 1));
    // Another consumer cannot take them.
    let (entries, _) = q.take_back(&mut c, "x", &ids).await.expect("take back");
    assert!(entries.is_empty());
}

/// A reclaim that reaches Redis after its deadline claims nothing.
#[tokio::test]
async fn a_late_reclaim_claims_nothing() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let q = Queue::new("s", "g");
    let mut c = conn(&url).await;
    q.ensure_group(&mut c).await.expect("group");
    enqueue(&url, &q, &["a"]).await;
    let _ = q
        .read(&mut c, "dead", 1, Duration::from_millis(50))
        .await
        .expect("read");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.expect("time");
    let now_ms = secs * 1000 + micros / 1000;
    let late = q
        .autoclaim_before(
            &mut c,
            "w",
            Duration::from_millis(10),
            EntryId::ZERO,
            10,
            Some(now_ms - 1),
        )
        .await
        .expect("autoclaim");
    assert!(late.is_none());
    let on_time = q
        .autoclaim_before(
            &mut c,
            "w",
            Duration::from_millis(10),
            EntryId::ZERO,
            10,
            Some(now_ms + 60_000),
        )
        .await
        .expect("autoclaim")
        .expect("in time");
    assert_eq!(on_time.entries.len(), 1);
    assert_eq!(on_time.entries[0].deliveries, 2);
}
