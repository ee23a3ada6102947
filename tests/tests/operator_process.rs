//! The `workpool-operator` process: two replicas elect one leader on a Lease, the other
//! takes over within the lease duration when the leader dies (no duplicate or orphaned
//! pods), a graceful shutdown releases the Lease at once, and a cluster without the CRD
//! gets a clear error and exit.
#![forbid(unsafe_code)]

mod operator_support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use operator_support::*;
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster};

async fn leader(op: &Operator) -> Option<bool> {
    op.metric("workpool_leader").await.map(|v| v == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operators_elect_one_leader_and_fail_over_without_duplicate_pods() {
    let env = Env::start().await;
    let mut a = Operator::start(&env.cluster, "op-a", &[]);
    eventually("op-a leads", T, || async {
        leader(&a).await.filter(|l| *l)
    })
    .await;
    let mut b = Operator::start(&env.cluster, "op-b", &[]);
    // b answers, stands by and does not act.
    let (code, body) = eventually("op-b serves /readyz", T, || async {
        b.get("/readyz").await
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(leader(&b).await, Some(false));

    env.apply_pool(&env.exec_pool("ha", 3, 0.0, json!({})))
        .await;
    env.wait_ready("ha", 3).await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let lease = leases.get("workpool-operator").await.expect("lease");
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    assert_eq!(holder.as_deref(), Some("op-a"));

    // The leader dies without a word; b takes over within the lease duration (4 s) plus
    // a retry period and its cache sync.
    a.kill();
    let died = Instant::now();
    eventually("op-b leads", Duration::from_secs(30), || async {
        leader(&b).await.filter(|l| *l)
    })
    .await;
    let took = died.elapsed();
    assert!(took < Duration::from_secs(12), "takeover took {took:?}");
    let lease = leases.get("workpool-operator").await.expect("lease");
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("op-b"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 1);

    // No duplicates and no orphans: still exactly three pods, and the new leader acts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.pool_pods("ha", true).await.len(), 3);
    env.pools()
        .patch(
            "ha",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("scale");
    env.wait_ready("ha", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.pool_pods("ha", true).await.len(), 4);
    let t = payloads("ha", 10);
    env.submit("ha", &t);
    env.wait_done("ha", &t, T).await;

    // A third replica stands by; b's graceful shutdown releases the Lease, so c takes
    // over at once rather than after the lease duration.
    let c = Operator::start(
        &env.cluster,
        "op-c",
        &["--lease-duration", "30", "--lease-renew-deadline", "20"],
    );
    eventually("op-c serves", T, || async {
        c.get("/readyz").await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(leader(&c).await, Some(false));
    let stopped = Instant::now();
    let status = b.terminate().expect("b exits");
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("released the leader lease"),
        "{}",
        b.log_text()
    );
    eventually("op-c leads", Duration::from_secs(20), || async {
        leader(&c).await.filter(|l| *l)
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "a released lease is taken at once, not after its 30 s duration: {:?}",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.pool_pods("ha", true).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crd_the_operator_exits_with_a_clear_error() {
    let cluster = TestCluster::start_with(ClusterOptions {
        manifest_dirs: Vec::new(),
    })
    .await
    .expect("cluster");
    // A shared real cluster may have the CRD from other tests: then this cannot be shown.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cluster.client());
    if crds
        .get_opt("workpools.workpool.dev")
        .await
        .ok()
        .flatten()
        .is_some()
    {
        eprintln!(
            "skipped: the WorkPool CRD is installed in this cluster (shared with other tests)"
        );
        return;
    }
    let mut op = Operator::start(&cluster, "op-nocrd", &[]);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = op.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the operator keeps running without its CRD"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    op.child = None;
    assert!(!status.success());
    let log = op.log_text();
    assert!(
        log.contains("WorkPool CRD") && log.contains("not installed"),
        "{log}"
    );
}
