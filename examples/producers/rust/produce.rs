//! Submit one task per argument to a pool and print each task's result as a JSON line.
//!
//! ```sh
//! WORKPOOL_REDIS_URL=redis://127.0.0.1:6379/0 WORKPOOL_STREAM=thumbnails \
//!     cargo run -p workpool-client --example produce -- '{"image": "a.png"}' '{"image": "b.png"}'
//! ```
//!
//! The pool must have results on (spec.delivery.results.ttlSeconds).
#![forbid(unsafe_code)]

use std::time::Duration;

use workpool_client::{Layout, Pool, Task, target::Tls};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WORKPOOL_REDIS_URL").unwrap_or("redis://127.0.0.1:6379/0".into());
    let stream = std::env::var("WORKPOOL_STREAM").unwrap_or("thumbnails".into());
    // A WorkPool's group is its stream's name unless spec.queue.redis.group says otherwise.
    let pool = Pool::connect_url(&url, &Tls::none(), Layout::new(&stream, &stream)).await?;
    let mut payloads: Vec<String> = std::env::args().skip(1).collect();
    if payloads.is_empty() {
        payloads.push(r#"{"image": "a.png"}"#.into());
    }
    let mut tasks = Vec::new();
    for payload in payloads {
        tasks.push(pool.submit(Task::new(payload)).await?);
    }
    for task in tasks {
        // Blocks until a worker records the outcome.
        let result = pool
            .wait_for(task.partition, &task.task_id, Duration::from_secs(120))
            .await?;
        let output = result
            .output
            .as_deref()
            .map(|o| String::from_utf8_lossy(o).into_owned());
        let line = serde_json::json!({"task_id": task.task_id, "state": result.state,
                                      "output": output, "error": result.error});
        println!("{line}");
    }
    Ok(())
}
