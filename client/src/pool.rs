//! [`Pool`]: a pool's queue seen from a producer.

use std::time::{Duration, Instant};

use redis::Value;

use crate::dead_letters::{
    DeadLetter, DeadLetterFilter, DeadLetterRef, LIST_PAGE, RETRY, RETRY_CHUNK, RetryOutcome,
    parse_range, trim_threshold,
};
use crate::reply::{as_bytes, as_int, into_array};
use crate::results::{
    TaskResult, TaskStatus, WAIT_SLICE, WaitTimeout, exact, next_block, notify_key, pending_row,
    result_key,
};
use crate::submit::{
    Durable, PIPELINE_CHUNK, Planned, RoundRobin, SubmitError, Submitted, Task, plan, send_chunk,
};
use crate::target::{Connection, Target, Tls};
use crate::{EntryId, Error, Layout, QueueStats, Result};

/// A workpool queue seen from a producer: submit tasks, read stats, inspect, retry and
/// purge dead letters (docs/protocol.md). Cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct Pool {
    layout: Layout,
    conn: Connection,
    /// Where `conn` goes, for the connections of blocking waits (none for [`Pool::new`]).
    target: Option<Target>,
    rr: std::sync::Arc<RoundRobin>,
    pipeline: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("layout", &self.layout)
            .finish()
    }
}

/// Per-command timeout of the connections [`Pool::connect`] opens.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

impl Pool {
    /// A pool on `target` (any workpool URL, see [`Target::new`]); `layout` names its
    /// keys, its Cluster tagging set from the target. Connects once; errors say where.
    pub async fn connect(target: &Target, layout: Layout) -> Result<Pool> {
        let layout = layout.with_cluster(target.is_cluster());
        layout.validate()?;
        let conn = target.connect(Some(RESPONSE_TIMEOUT)).await?;
        let mut pool = Pool::new(conn, layout)?;
        pool.target = Some(target.clone());
        Ok(pool)
    }

    /// Like [`Pool::connect`] from a URL and TLS material.
    pub async fn connect_url(url: &str, tls: &Tls, layout: Layout) -> Result<Pool> {
        Pool::connect(&Target::new(url, tls)?, layout).await
    }

    /// A pool over an open connection (its layout must match the target's mode).
    pub fn new(conn: Connection, layout: Layout) -> Result<Pool> {
        layout.validate()?;
        let rr = RoundRobin::new(layout.partitions(), None)?;
        Ok(Pool {
            layout,
            conn,
            target: None,
            rr: std::sync::Arc::new(rr),
            pipeline: PIPELINE_CHUNK,
        })
    }

    /// At most `n` commands per pipeline (default 1,000).
    pub fn with_pipeline(mut self, n: usize) -> Pool {
        self.pipeline = n.max(1);
        self
    }

    /// Starts the round robin at `partition` instead of a random one (tests, vectors).
    pub fn with_round_robin_start(mut self, partition: usize) -> Result<Pool> {
        self.rr = std::sync::Arc::new(RoundRobin::new(self.layout.partitions(), Some(partition))?);
        Ok(self)
    }

    /// The key names.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The connection (for commands this API does not cover).
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    // ------------------------------------------------------------------ submit

    /// Submits one task (see [`Pool::submit_many`]).
    pub async fn submit(&self, task: Task) -> Result<Submitted> {
        self.submit_many(vec![task], None)
            .await
            .map_err(|e| e.source)?
            .pop()
            .ok_or_else(|| Error::unexpected("submit", "no reply"))
    }

    /// Submits tasks in pipelines (per partition, at most 1,000 commands each, up to 8
    /// pipelines in flight); returns one `Submitted` per task, in input order. Every task
    /// is validated first: bad input submits nothing. With `durable`, each pipeline ends
    /// with `WAIT` and its tasks say whether they were confirmed. A failure part way
    /// says which tasks got an entry id ([`SubmitError::submitted`]); none is retried
    /// here (a retry could duplicate them).
    pub async fn submit_many(
        &self,
        tasks: Vec<Task>,
        durable: Option<Durable>,
    ) -> std::result::Result<Vec<Submitted>, SubmitError> {
        use futures::StreamExt;
        let fail = |n: usize, source: Error| SubmitError {
            submitted: vec![None; n],
            source,
        };
        if let Some(d) = durable
            && d.min_replicas == 0
        {
            return Err(fail(
                tasks.len(),
                Error::InvalidArgument("durable submit needs min_replicas >= 1".into()),
            ));
        }
        let planned: Vec<Planned> = tasks
            .iter()
            .map(|t| plan(&self.layout, t, &self.rr))
            .collect::<Result<_>>()
            .map_err(|e| fail(tasks.len(), e))?;
        // Task indexes grouped by partition, in input order, in pipelines of at most
        // `self.pipeline` commands.
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); self.layout.partitions()];
        for (i, p) in planned.iter().enumerate() {
            by_partition[p.partition].push(i);
        }
        let chunks: Vec<Vec<usize>> = by_partition
            .iter()
            .flat_map(|idx| idx.chunks(self.pipeline).map(<[usize]>::to_vec))
            .collect();
        let planned = &planned;
        let mut replies = futures::stream::iter(chunks)
            .map(|idx| {
                let mut c = self.conn.clone();
                async move {
                    let ps: Vec<&Planned> = idx.iter().map(|&i| &planned[i]).collect();
                    (idx.clone(), send_chunk(&mut c, &ps, durable).await)
                }
            })
            .buffer_unordered(8);
        let mut out: Vec<Option<Submitted>> = vec![None; planned.len()];
        let mut failure = None;
        while let Some((idx, r)) = replies.next().await {
            match r {
                Ok(subs) => {
                    for (i, s) in idx.into_iter().zip(subs) {
                        out[i] = Some(s);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(source) = failure {
            return Err(SubmitError {
                submitted: out,
                source,
            });
        }
        Ok(out.into_iter().flatten().collect())
    }

    // ------------------------------------------------------------------ stats

    /// One partition's stats, read atomically.
    pub async fn partition_stats(&self, partition: usize) -> Result<QueueStats> {
        self.check_partition(partition)?;
        let mut c = self.conn.clone();
        crate::stats::read_partition(
            &mut c,
            &self.layout.partition_stream(partition),
            &self.layout.dead_letter_stream(partition),
            &self.layout.stats_drain_key(partition),
            self.layout.group(),
        )
        .await
    }

    /// The pool's stats, as `workpool-worker stats --json` prints them (the same code).
    pub async fn stats(&self) -> Result<QueueStats> {
        crate::stats::read_pool(&self.conn, &self.layout).await
    }

    // ------------------------------------------------------------------ dead letters

    fn check_partition(&self, p: usize) -> Result<()> {
        if p >= self.layout.partitions() {
            return Err(Error::InvalidArgument(format!(
                "partition {p} does not exist (the pool has {})",
                self.layout.partitions()
            )));
        }
        Ok(())
    }

    fn partitions_of(&self, f: &DeadLetterFilter) -> Result<Vec<usize>> {
        match f.partition {
            Some(p) => {
                self.check_partition(p)?;
                Ok(vec![p])
            }
            None => Ok((0..self.layout.partitions()).collect()),
        }
    }

    /// One page of a partition's dead letters from `lo` to `hi` (XRANGE bounds).
    async fn page(
        &self,
        partition: usize,
        lo: &str,
        hi: &str,
        newest_first: bool,
    ) -> Result<Vec<DeadLetter>> {
        let mut c = self.conn.clone();
        let dead = self.layout.dead_letter_stream(partition);
        let v: Value = if newest_first {
            redis::cmd("XREVRANGE")
                .arg(&dead)
                .arg(hi)
                .arg(lo)
                .arg("COUNT")
                .arg(LIST_PAGE)
                .query_async(&mut c)
                .await?
        } else {
            redis::cmd("XRANGE")
                .arg(&dead)
                .arg(lo)
                .arg(hi)
                .arg("COUNT")
                .arg(LIST_PAGE)
                .query_async(&mut c)
                .await?
        };
        Ok(parse_range(v)?
            .into_iter()
            .map(|(id, fields)| DeadLetter::parse(DeadLetterRef { partition, id }, fields))
            .collect())
    }

    /// Every dead letter of one partition matching `f` (up to `last` when given), oldest
    /// first (or newest first), at most `limit`.
    async fn partition_dead_letters(
        &self,
        partition: usize,
        f: &DeadLetterFilter,
        newest_first: bool,
        last: Option<EntryId>,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>> {
        let (mut lo, mut hi) = f.range();
        if let Some(l) = last {
            let cap = l.to_string();
            if hi == "+" || EntryId::parse(hi.as_bytes()).is_some_and(|h| l < h) {
                hi = cap;
            }
        }
        let mut out = Vec::new();
        loop {
            let page = self.page(partition, &lo, &hi, newest_first).await?;
            let full = page.len() >= LIST_PAGE;
            let last_seen = page.last().map(|d| d.reference.id);
            for d in page {
                if f.matches(&d) {
                    out.push(d);
                    if limit.is_some_and(|l| out.len() >= l) {
                        return Ok(out);
                    }
                }
            }
            match (full, last_seen) {
                (true, Some(id)) if newest_first => hi = format!("({id}"),
                (true, Some(id)) => lo = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }

    /// Dead letters matching `filter`, oldest first (or newest first), partitions merged
    /// in dead-letter id order (ties by partition), at most `limit` (`None`: all).
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
        newest_first: bool,
    ) -> Result<Vec<DeadLetter>> {
        let mut all = Vec::new();
        for p in self.partitions_of(filter)? {
            all.extend(
                self.partition_dead_letters(p, filter, newest_first, None, limit)
                    .await?,
            );
        }
        let key = |d: &DeadLetter| (d.reference.id, d.reference.partition);
        all.sort_by_key(key);
        if newest_first {
            all.reverse();
        }
        if let Some(l) = limit {
            all.truncate(l);
        }
        Ok(all)
    }

    /// One dead letter by reference.
    pub async fn dead_letter(&self, r: DeadLetterRef) -> Result<Option<DeadLetter>> {
        self.check_partition(r.partition)?;
        let id = r.id.to_string();
        let mut c = self.conn.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(self.layout.dead_letter_stream(r.partition))
            .arg(&id)
            .arg(&id)
            .query_async(&mut c)
            .await?;
        Ok(parse_range(v)?
            .into_iter()
            .next()
            .map(|(_, fields)| DeadLetter::parse(r, fields)))
    }

    /// Puts dead letters back into their partition's task stream, each atomically with
    /// `retry.lua` (docs/protocol.md 6); outcomes in input order, `entry_id: None` for
    /// one that was not there (already retried or purged: never retried twice).
    pub async fn retry_dead_letters(&self, refs: &[DeadLetterRef]) -> Result<Vec<RetryOutcome>> {
        for r in refs {
            self.check_partition(r.partition)?;
        }
        let mut out: Vec<RetryOutcome> = refs
            .iter()
            .map(|&reference| RetryOutcome {
                reference,
                entry_id: None,
            })
            .collect();
        for p in 0..self.layout.partitions() {
            let idx: Vec<usize> = (0..refs.len())
                .filter(|&i| refs[i].partition == p)
                .collect();
            let stream = self.layout.partition_stream(p);
            let dead = self.layout.dead_letter_stream(p);
            for chunk in idx.chunks(RETRY_CHUNK) {
                let mut inv = RETRY.key(&stream);
                inv.key(&dead).arg(&stream);
                for &i in chunk {
                    inv.arg(refs[i].id);
                }
                let mut c = self.conn.clone();
                let v: Value = inv.invoke_async(&mut c).await?;
                let rows =
                    into_array(v).ok_or_else(|| Error::unexpected("retry.lua", "not an array"))?;
                if rows.len() != chunk.len() {
                    return Err(Error::unexpected(
                        "retry.lua",
                        format!("{} rows for {} ids", rows.len(), chunk.len()),
                    ));
                }
                for (&i, row) in chunk.iter().zip(rows) {
                    let row = into_array(row).unwrap_or_default();
                    out[i].entry_id = row.get(1).and_then(as_bytes).and_then(EntryId::parse);
                }
            }
        }
        Ok(out)
    }

    async fn newest_id(&self, partition: usize) -> Result<Option<EntryId>> {
        let mut c = self.conn.clone();
        let v: Value = redis::cmd("XREVRANGE")
            .arg(self.layout.dead_letter_stream(partition))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(parse_range(v)?.first().map(|(id, _)| *id))
    }

    /// The references of partition `p`'s dead letters matching `filter`, up to the
    /// newest one now (those written meanwhile are left out).
    async fn existing(&self, p: usize, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRef>> {
        let Some(last) = self.newest_id(p).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .partition_dead_letters(p, filter, false, Some(last), None)
            .await?
            .into_iter()
            .map(|d| d.reference)
            .collect())
    }

    /// Retries every dead letter matching `filter` that exists when the call starts (in
    /// batches of 100; dead letters written meanwhile are left for the next call).
    pub async fn retry_all_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<RetryOutcome>> {
        let mut out = Vec::new();
        for p in self.partitions_of(filter)? {
            let refs = self.existing(p, filter).await?;
            for chunk in refs.chunks(RETRY_CHUNK) {
                out.extend(self.retry_dead_letters(chunk).await?);
            }
        }
        Ok(out)
    }

    /// Deletes dead letters by reference; returns how many existed.
    pub async fn purge_dead_letters(&self, refs: &[DeadLetterRef]) -> Result<u64> {
        for r in refs {
            self.check_partition(r.partition)?;
        }
        let mut n = 0;
        for p in 0..self.layout.partitions() {
            let ids: Vec<EntryId> = refs
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.id)
                .collect();
            for chunk in ids.chunks(PIPELINE_CHUNK) {
                let mut c = self.conn.clone();
                let v: Value = redis::cmd("XDEL")
                    .arg(self.layout.dead_letter_stream(p))
                    .arg(chunk)
                    .query_async(&mut c)
                    .await?;
                n += as_int(&v).unwrap_or(0).max(0) as u64;
            }
        }
        Ok(n)
    }

    /// Deletes every dead letter matching `filter` that exists when the call starts
    /// (without filters: `XTRIM MINID` past the newest); returns how many.
    pub async fn purge_all_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut n = 0;
        for p in self.partitions_of(filter)? {
            if filter.is_all() {
                let Some(last) = self.newest_id(p).await? else {
                    continue;
                };
                let mut c = self.conn.clone();
                let v: Value = redis::cmd("XTRIM")
                    .arg(self.layout.dead_letter_stream(p))
                    .arg("MINID")
                    .arg(trim_threshold(last))
                    .query_async(&mut c)
                    .await?;
                n += as_int(&v).unwrap_or(0).max(0) as u64;
                continue;
            }
            let refs = self.existing(p, filter).await?;
            n += self.purge_dead_letters(&refs).await?;
        }
        Ok(n)
    }

    // ------------------------------------------------------------------ results

    /// The task's result record in `partition` (with results on), or `None`: not
    /// finished, results off, or expired.
    pub async fn result(&self, partition: usize, task_id: &str) -> Result<Option<TaskResult>> {
        self.check_partition(partition)?;
        let mut c = self.conn.clone();
        let key = result_key(&self.layout.partition_stream(partition), task_id);
        let v: Value = redis::cmd("HGETALL").arg(key).query_async(&mut c).await?;
        TaskResult::parse(v)
    }

    /// Blocks until the task's result exists and returns it (the pool needs results
    /// on); a [`WaitTimeout`] after `timeout`. It does not poll: between looks it blocks
    /// on the task's notification list (`BLMOVE` of the list onto itself, so every waiter
    /// wakes and the list keeps its TTL) on a connection of its own, at most
    /// [`WAIT_SLICE`] at a time. Needs a pool made by [`Pool::connect`].
    pub async fn wait_for(
        &self,
        partition: usize,
        task_id: &str,
        timeout: Duration,
    ) -> std::result::Result<TaskResult, WaitError> {
        self.check_partition(partition)?;
        let Some(target) = &self.target else {
            return Err(Error::InvalidArgument(
                "wait_for blocks on a connection of its own: make the pool with Pool::connect"
                    .into(),
            )
            .into());
        };
        let deadline = Instant::now() + timeout;
        let stream = self.layout.partition_stream(partition);
        let notify = notify_key(&stream, task_id);
        let mut blocking: Option<Connection> = None;
        loop {
            if let Some(r) = self.result(partition, task_id).await? {
                return Ok(r);
            }
            let Some(block) = next_block(deadline) else {
                return Err(WaitError::Timeout(WaitTimeout {
                    task_id: task_id.to_string(),
                    timeout,
                }));
            };
            if blocking.is_none() {
                blocking = Some(target.connect(Some(WAIT_SLICE + RESPONSE_TIMEOUT)).await?);
            }
            if let Some(c) = blocking.as_mut() {
                let _: Value = redis::cmd("BLMOVE")
                    .arg(&notify)
                    .arg(&notify)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(block.as_secs_f64())
                    .query_async(c)
                    .await
                    .map_err(Error::from)?;
            }
        }
    }

    /// Where the task is (docs/protocol.md 8): finished (with results on), else by its
    /// entry id when given (what `submit` returned): running, queued, or unknown.
    pub async fn status(
        &self,
        partition: usize,
        task_id: &str,
        entry_id: Option<EntryId>,
    ) -> Result<TaskStatus> {
        if let Some(r) = self.result(partition, task_id).await? {
            return Ok(TaskStatus::Finished(Box::new(r)));
        }
        let Some(id) = entry_id else {
            return Ok(TaskStatus::Unknown);
        };
        let stream = self.layout.partition_stream(partition);
        let mut c = self.conn.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(exact(id))
            .arg(exact(id))
            .query_async(&mut c)
            .await?;
        if parse_range(v)?.is_empty() {
            return Ok(TaskStatus::Unknown);
        }
        let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(self.layout.group())
            .arg(exact(id))
            .arg(exact(id))
            .arg(1)
            .query_async(&mut c)
            .await;
        match pending {
            Ok(v) => Ok(match pending_row(v) {
                Some((consumer, deliveries)) => TaskStatus::Running {
                    consumer,
                    deliveries,
                },
                None => TaskStatus::Queued,
            }),
            // No group yet: nothing was delivered.
            Err(e) if e.code() == Some("NOGROUP") => Ok(TaskStatus::Queued),
            Err(e) => Err(e.into()),
        }
    }
}

/// Why [`Pool::wait_for`] returned without a result.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// No result within the timeout.
    #[error(transparent)]
    Timeout(#[from] WaitTimeout),
    /// Redis or the arguments.
    #[error(transparent)]
    Queue(#[from] Error),
}
