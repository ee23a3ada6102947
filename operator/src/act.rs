//! Act and publish: carry out what [`decide`](crate::decide) decided. Every write checks
//! first that this replica still leads, and every API error names its call and object.
//! Queue writes go to the hub (they never wait for Redis).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::controller::{Context, FIELD_MANAGER};
use crate::crd::{API_VERSION, KIND, WorkPool};
use crate::decide::{
    CreateRefused, Decided, Note, SignalPatch, WakeIntent, is_refusal, stable_refusal,
};
use crate::observe::{Observed, signal};
use crate::planner::DeleteReason;
use crate::pods;
use crate::status;
use crate::{Error, Result};

/// Queue figures alone are written to the status at most this often (they change with
/// every task; the gauges carry them live).
pub const QUEUE_STATUS_INTERVAL: Duration = Duration::from_secs(15);

/// Pod creations in flight at once for one pool (the slow start's largest batch).
pub const CREATE_BATCH_MAX: u32 = 16;

/// What acting did that the status must tell.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Pods created.
    pub created: Vec<String>,
    /// The API refused a create: its message, without the pod's name.
    pub create_refused: Option<String>,
    /// The refusal, returned from the reconcile once the status says it (the error
    /// back-off then applies).
    pub create_error: Option<Error>,
}

/// The writes: queue commands, annotation patches, deletions, creations.
pub async fn act(o: &Observed, d: &Decided, ctx: &Context) -> Result<Outcome> {
    let (ns, pool) = (o.key.0.as_str(), o.key.1.as_str());
    for c in &d.commands {
        ctx.hub.send(&o.key, c.clone());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for (pod, patch) in &d.signals {
        ctx.leading()?;
        // A signal that cannot be written (RBAC without pod patch, a webhook refusing it)
        // must not stop the pool's pods from being managed: said, and tried again later.
        if let Err(e) = patch_signals(&api, pod, patch).await {
            let e = Error::api("annotate pod", format!("{ns}/{pod}"), e);
            warn!(error = %e, "cannot write the busy/idle annotations");
            continue;
        }
        let state = if patch.do_not_disrupt.is_some() {
            "busy"
        } else {
            "idle"
        };
        ctx.metrics
            .signal_updates
            .with_label_values(&[ns, pool, state])
            .inc();
        ctx.metrics
            .deletion_cost_updates
            .with_label_values(&[ns, pool])
            .inc();
    }
    for del in &d.deletes {
        ctx.leading()?;
        let dp = DeleteParams {
            preconditions: del.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&del.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(Error::api("delete pod", format!("{ns}/{}", del.name), e)),
        }
        info!(namespace = ns, workpool = pool, pod = %del.name, reason = ?del.reason, "deleted pod");
        ctx.with_memory(&o.key, |m| m.deleting.insert(del.name.clone(), o.now_ms));
        let outcome = match del.reason {
            DeleteReason::Drained | DeleteReason::NeverStarted => Some("completed"),
            DeleteReason::DrainTimedOut => Some("timed_out"),
            DeleteReason::Finished(_) => None,
        };
        if let Some(outcome) = outcome {
            ctx.metrics
                .drains
                .with_label_values(&[ns, pool, outcome])
                .inc();
        }
    }
    let mut out = Outcome::default();
    // Slow start, as the ReplicaSet controller creates: batches of 1, 2, 4, ... (at most
    // CREATE_BATCH_MAX) in flight at once, no further batch after a refusal, so that a
    // quota or a webhook refusing every create costs one request, not `creates`.
    let mut left = d.creates;
    let mut batch = 1;
    while left > 0 {
        ctx.leading()?;
        let n = batch.min(left);
        left -= n;
        batch = (batch * 2).min(CREATE_BATCH_MAX);
        let results = futures::future::join_all((0..n).map(|_| create_pod(&o.pool, &api))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(name) => {
                    ctx.with_memory(&o.key, |m| {
                        m.creating.insert(name.clone(), o.now_ms);
                        m.create_refused = None;
                    });
                    out.created.push(name);
                }
                Err((name, kube::Error::Api(s))) if is_refusal(s.code) => {
                    let refusal = stable_refusal(&s.message, &name, pool);
                    ctx.with_memory(&o.key, |m| {
                        m.create_refused = Some(CreateRefused::after(
                            m.create_refused.as_ref(),
                            refusal.clone(),
                            o.now_ms,
                        ));
                    });
                    out.create_refused = Some(refusal);
                    out.create_error = Some(Error::api(
                        "create pod",
                        format!("{ns}/{pool}"),
                        kube::Error::Api(s),
                    ));
                }
                Err((_, e)) => failed = Some(Error::api("create pod", format!("{ns}/{pool}"), e)),
            }
        }
        // Every create that succeeded is remembered above before an error returns (a
        // forgotten create would be made again by the next reconcile).
        if let Some(e) = failed {
            return Err(e);
        }
        if out.create_error.is_some() {
            break;
        }
    }
    Ok(out)
}

async fn patch_signals(
    api: &Api<Pod>,
    pod: &str,
    p: &SignalPatch,
) -> std::result::Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": {
        signal::SAFE_TO_EVICT: p.safe_to_evict,
        signal::DO_NOT_DISRUPT: p.do_not_disrupt,
        signal::DELETION_COST: p.deletion_cost,
    }}});
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates one pod of the pool (another random name on a name collision). On failure,
/// the name tried and the error.
async fn create_pod(
    wp: &WorkPool,
    api: &Api<Pod>,
) -> std::result::Result<String, (String, kube::Error)> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let mut last = None;
    for _ in 0..3 {
        let name = pods::pod_name(
            &wp.metadata.name.clone().unwrap_or_default(),
            rand::random::<u64>(),
        );
        let pod = match pods::build_pod(wp, &name) {
            Ok(p) => p,
            Err(e) => {
                let status = kube::core::Status::failure(&e.to_string(), "Invalid").with_code(422);
                return Err((name, kube::Error::Api(status.boxed())));
            }
        };
        match api.create(&pp, &pod).await {
            Ok(_) => return Ok(name),
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some((name, kube::Error::Api(s))),
            Err(e) => return Err((name, e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        let s =
            kube::core::Status::failure("no pod name available", "AlreadyExists").with_code(409);
        (String::new(), kube::Error::Api(s.boxed()))
    }))
}

/// Publishes: Events (those decided, plus the creates), metrics, the wake registration,
/// and the status when it changed (queue figures alone at most every
/// [`QUEUE_STATUS_INTERVAL`]). Returns when to look again.
pub async fn publish(o: &Observed, d: &Decided, out: &Outcome, ctx: &Context) -> Result<Duration> {
    let (ns, pool) = (o.key.0.as_str(), o.key.1.as_str());
    let mut notes = d.notes.clone();
    if !out.created.is_empty() {
        info!(namespace = ns, workpool = pool, pods = ?out.created, "created pods");
        notes.push(Note {
            warning: false,
            reason: "PodsCreated",
            action: "Create",
            note: format!(
                "created {} (desired {})",
                out.created.join(", "),
                d.status.desired
            ),
        });
    }
    if let Some(msg) = &out.create_refused {
        notes.push(Note {
            warning: true,
            reason: "PodCreateFailed",
            action: "Create",
            note: format!("cannot create a pod: {msg}"),
        });
    }
    record_metrics(o, d, ctx);
    apply_wake(o, d, ctx);

    let now = status::rfc3339_ms(o.now_ms).unwrap_or_default();
    let old = o.pool.status.as_ref();
    let fresh_queue = o
        .snapshot
        .as_ref()
        .and_then(|s| s.result.as_ref().ok())
        .map(status::queue_status);
    let mut status = d.status.build(
        o,
        out.create_refused
            .clone()
            .or_else(|| d.held_refusal.clone()),
        fresh_queue.clone(),
        &now,
    );
    let mut requeue = d.requeue;
    let written = ctx.with_memory(&o.key, |m| m.written_status.clone());
    // The latest status known: this process's last write, else the cached pool's.
    if let Some(old) = written.as_ref().or(old)
        && status::differs(Some(old), &status)
        && status::only_queue_differs(old, &status)
    {
        let since = ctx.with_memory(&o.key, |m| o.now_ms.saturating_sub(m.queue_written_ms));
        let wait = (QUEUE_STATUS_INTERVAL.as_millis() as u64).saturating_sub(since);
        if wait > 0 {
            // Written with the next change, or when the interval is over.
            status.queue = old.queue.clone();
            requeue = requeue.min(Duration::from_millis(wait));
        }
    }
    let undone = written
        .as_ref()
        .is_some_and(|w| status::differs(Some(w), &status));
    if status::differs(old, &status) || undone {
        ctx.leading()?;
        let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": pool, "namespace": ns},
            "status": status
        });
        api.patch_status(
            pool,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::api("patch status of", format!("{ns}/{pool}"), e))?;
        debug!(namespace = ns, workpool = pool, "status written");
        ctx.with_memory(&o.key, |m| m.written_status = Some(status.clone()));
        if old.is_none_or(|o| o.queue != status.queue) {
            ctx.with_memory(&o.key, |m| m.queue_written_ms = o.now_ms);
        }
    } else {
        debug!(
            namespace = ns,
            workpool = pool,
            "status unchanged: not written"
        );
    }
    ctx.notify(&o.pool, notes).await;
    Ok(requeue)
}

fn record_metrics(o: &Observed, d: &Decided, ctx: &Context) {
    let (ns, pool) = (o.key.0.as_str(), o.key.1.as_str());
    let m = &ctx.metrics;
    let l = [ns, pool];
    let f = d.figures;
    m.desired.with_label_values(&l).set(f.desired as i64);
    m.replicas.with_label_values(&l).set(f.replicas as i64);
    m.ready.with_label_values(&l).set(f.ready as i64);
    m.busy.with_label_values(&l).set(f.busy as i64);
    m.draining.with_label_values(&l).set(f.draining as i64);
    for (_, reason) in &d.replacements {
        m.replacements
            .with_label_values(&[ns, pool, reason.as_str()])
            .inc();
    }
    if let Some(s) = d.scaled {
        m.scale_events
            .with_label_values(&[ns, pool, s.direction])
            .inc();
        m.scale_decisions
            .with_label_values(&[ns, pool, s.direction, s.reason])
            .inc();
    }
    for (outcome, n) in [("started", d.drains.0), ("cancelled", d.drains.1)] {
        if n > 0 {
            m.drains
                .with_label_values(&[ns, pool, outcome])
                .inc_by(u64::from(n));
        }
    }
}

fn apply_wake(o: &Observed, d: &Decided, ctx: &Context) {
    if !ctx.wake.enabled() {
        return;
    }
    match &d.wake {
        WakeIntent::Watch(t) => ctx.wake.watch(&o.key, Some((**t).clone())),
        WakeIntent::Keep => {}
        WakeIntent::Unwatch => ctx.wake.watch(&o.key, None),
    }
}
