//! `workpool-worker dead-letters list | show | retry | purge` against a real redis-server
//! and the real worker writing the dead letters.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value as J;
use workpool_client::target::Tls;
use workpool_client::{Layout, Pool, QueueStats, Task};
use workpool_worker::testing::RedisServer;

/// Runs the CLI with `--redis-url url --stream stream` and `extra` after the subcommand.
fn cli(url: &str, stream: &str, sub: &[&str], extra: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(sub)
        .args(["--redis-url", url, "--stream", stream])
        .args(extra)
        .env_remove("WORKPOOL_DEAD_LETTER_STREAM")
        .env_remove("WORKPOOL_PARTITIONS")
        .stdin(Stdio::null())
        .output()
        .expect("run workpool-worker")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list_json(url: &str, stream: &str, extra: &[&str]) -> Vec<J> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let text = ok(&cli(url, stream, &["dead-letters", "list"], &args));
    match serde_json::from_str(&text).expect("list --json is JSON") {
        J::Array(a) => a,
        other => panic!("list --json is not one array: {other}"),
    }
}

async fn stats(pool: &Pool) -> QueueStats {
    pool.stats().await.expect("stats")
}

/// Runs a worker with `handler` until `done` holds for the pool's stats.
async fn run_worker(
    url: &str,
    stream: &str,
    extra: &[&str],
    pool: &Pool,
    what: &str,
    done: impl Fn(&QueueStats) -> bool,
) {
    let mut args = vec!["--max-deliveries", "2", "--retry-backoff", "0"];
    args.extend_from_slice(extra);
    let mut w = common::Worker::spawn(url, stream, stream, "w1", &args);
    common::wait_until(Duration::from_secs(60), what, || async {
        done(&stats(pool).await)
    })
    .await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_retry_and_purge_the_workers_dead_letters_of_two_partitions() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let layout = Layout::new("dl", "dl").with_partitions(2);
    let pool = Pool::connect_url(&url, &Tls::none(), layout)
        .await
        .expect("client");
    let subs = pool
        .submit_many(
            (0..6)
                .map(|i| {
                    Task::json(&serde_json::json!({ "n": i }))
                        .unwrap()
                        .with_id(format!("job-{i}"))
                })
                .collect(),
            None,
        )
        .await
        .expect("submit");
    run_worker(
        &url,
        "dl",
        &["--partitions", "2", "--builtin", "fail"],
        &pool,
        "six dead letters",
        |s| s.dead_letters == 6,
    )
    .await;

    // list --json: one array, every field the worker wrote.
    let all = list_json(&url, "dl", &["--partitions", "2"]);
    assert_eq!(all.len(), 6);
    for d in &all {
        let n = d["task_id"].as_str().unwrap().strip_prefix("job-").unwrap();
        let payload: J = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["n"].to_string(), n);
        assert!(
            d["error"].as_str().unwrap().starts_with("failed 2 times"),
            "{d}"
        );
        assert_eq!(
            (d["deliveries"].as_u64(), d["consumer"].as_str()),
            (Some(2), Some("w1"))
        );
        let p = d["partition"].as_u64().unwrap() as usize;
        let sub = subs
            .iter()
            .find(|s| format!("job-{n}") == s.task_id)
            .unwrap();
        assert_eq!(p, sub.partition);
        assert_eq!(d["original_id"], sub.entry_id.to_string());
        let r = d["ref"].as_str().unwrap();
        assert_eq!(r.contains('/'), p > 0, "{r}");
        assert_eq!(d["fields"]["id"], d["task_id"]);
    }
    // Filters and the text form.
    let in_1 = list_json(&url, "dl", &["--partitions", "2", "--partition", "1"]);
    assert_eq!(in_1.len(), subs.iter().filter(|s| s.partition == 1).count());
    assert!(in_1.iter().all(|d| d["partition"] == 1));
    assert_eq!(
        list_json(&url, "dl", &["--partitions", "2", "--limit", "2"]).len(),
        2
    );
    assert_eq!(
        list_json(&url, "dl", &["--partitions", "2", "--task-id", "job-3"]).len(),
        1
    );
    assert!(
        list_json(
            &url,
            "dl",
            &["--partitions", "2", "--error", "no such text"]
        )
        .is_empty()
    );
    assert_eq!(
        list_json(
            &url,
            "dl",
            &[
                "--partitions",
                "2",
                "--since",
                "1h",
                "--min-deliveries",
                "2"
            ]
        )
        .len(),
        6
    );
    let text = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "list"],
        &["--partitions", "2"],
    ));
    assert!(
        text.contains("6 dead letters") && text.contains("job-5"),
        "{text}"
    );

    // show: the same record; a missing one is a clear error.
    let first = &all[0];
    let shown = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "show"],
        &["--partitions", "2", first["ref"].as_str().unwrap()],
    ));
    assert_eq!(serde_json::from_str::<J>(&shown).unwrap(), *first);
    let out = cli(
        &url,
        "dl",
        &["dead-letters", "show"],
        &["--partitions", "2", "1/1-0"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter 1/1-0"));

    // retry by reference: back in their streams, gone from the dead letters, once.
    let two: Vec<&str> = all[..2]
        .iter()
        .map(|d| d["ref"].as_str().unwrap())
        .collect();
    let mut args = vec!["--partitions", "2"];
    args.extend(&two);
    let text = ok(&cli(&url, "dl", &["dead-letters", "retry"], &args));
    assert!(text.contains("retried 2"), "{text}");
    let st = stats(&pool).await;
    assert_eq!((st.dead_letters, st.backlog), (4, 2));
    let again = cli(&url, "dl", &["dead-letters", "retry"], &args);
    assert!(
        !again.status.success(),
        "a dead letter is never retried twice"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("2 of 2 dead letters were not there"));
    assert_eq!(
        stats(&pool).await.backlog,
        2,
        "nothing added by the second retry"
    );

    // retry --all (with a filter), then the tasks run.
    let out = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "retry"],
        &["--partitions", "2", "--all", "--consumer", "w1", "--json"],
    ));
    let outcomes: Vec<J> = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes.iter().all(|o| o["entry_id"].is_string()));
    let st = stats(&pool).await;
    assert_eq!((st.dead_letters, st.backlog), (0, 6));
    run_worker(
        &url,
        "dl",
        &["--partitions", "2", "--builtin", "noop"],
        &pool,
        "the retried tasks ran",
        |s| s.backlog == 0 && s.stream_length == 0,
    )
    .await;
    assert_eq!(
        stats(&pool).await.dead_letters,
        0,
        "the retried tasks did not fail again"
    );

    // purge: by reference, with a filter that matches nothing, then all.
    pool.submit_many((0..4).map(|i| Task::new(format!("{i}"))).collect(), None)
        .await
        .unwrap();
    run_worker(
        &url,
        "dl",
        &["--partitions", "2", "--builtin", "fail"],
        &pool,
        "four dead letters",
        |s| s.dead_letters == 4,
    )
    .await;
    let all = list_json(&url, "dl", &["--partitions", "2"]);
    let text = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "purge"],
        &["--partitions", "2", all[0]["ref"].as_str().unwrap()],
    ));
    assert_eq!(text.trim(), "purged 1");
    let text = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "purge"],
        &["--partitions", "2", "--all", "--error", "no such text"],
    ));
    assert_eq!(text.trim(), "purged 0");
    let text = ok(&cli(
        &url,
        "dl",
        &["dead-letters", "purge"],
        &["--partitions", "2", "--all"],
    ));
    assert_eq!(text.trim(), "purged 3");
    let st = stats(&pool).await;
    assert_eq!((st.dead_letters, st.backlog), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_dead_letter_stream_and_bad_input() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let pool = Pool::connect_url(
        &url,
        &Tls::none(),
        Layout::new("c", "c").with_dead_letter_stream("failed"),
    )
    .await
    .expect("client");
    pool.submit_many(vec![Task::new("{}"), Task::new("{}")], None)
        .await
        .unwrap();
    run_worker(
        &url,
        "c",
        &["--dead-letter-stream", "failed", "--builtin", "fail"],
        &pool,
        "two dead letters",
        |s| s.dead_letters == 2,
    )
    .await;
    assert!(list_json(&url, "c", &[]).is_empty(), "not in c:dead");
    let found = list_json(&url, "c", &["--dead-letter-stream", "failed"]);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|d| d["stream"] == "c"));
    let text = ok(&cli(
        &url,
        "c",
        &["dead-letters", "retry"],
        &["--dead-letter-stream", "failed", "--all"],
    ));
    assert!(text.contains("retried 2"), "{text}");

    // Bad input: a clear error, nothing changed, never a panic.
    for (sub, args, want) in [
        ("retry", vec![], "<--all|REF>"),
        ("retry", vec!["--all", "1-0"], "cannot be used with"),
        ("retry", vec!["not-a-ref"], "invalid dead-letter reference"),
        ("purge", vec!["1-0", "--error", "x"], "go with --all"),
        ("purge", vec!["3/1-0"], "partition 3 does not exist"),
        ("list", vec!["--since", "yesterday"], "neither milliseconds"),
        (
            "list",
            vec!["--partition", "1"],
            "partition 1 does not exist",
        ),
    ] {
        let out = cli(&url, "c", &["dead-letters", sub], &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub} {args:?} should fail");
        assert!(err.contains(want), "{sub} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let st = stats(&pool).await;
    assert_eq!((st.dead_letters, st.stream_length), (0, 2));
    let out = cli("redis://127.0.0.1:1/", "c", &["dead-letters", "list"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot connect to redis at redis://127.0.0.1:1/")
    );
}
