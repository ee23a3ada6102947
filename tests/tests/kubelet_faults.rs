//! The kubelet keeps working through API faults the double injects on purpose:
//! 500/429/409 answers and closed watches.
#![forbid(unsafe_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster};
use workpool_tests::kubelet::testing::{
    container_status, is_ready, phase, wait_pod, wait_pod_gone,
};
use workpool_tests::kubelet::{ImageMap, Kubelet, KubeletConfig};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_and_are_deleted_despite_api_errors_and_closed_watches() {
    // Always the API double: these suites test our process kubelet, which a real
    // cluster replaces with its own (WORKPOOL_E2E_KUBECONFIG is ignored here).
    let cluster = TestCluster::start_double(ClusterOptions::default())
        .await
        .expect("cluster");
    let client = cluster.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = KubeletConfig::new("node-1", ImageMap::new(), dir.path())
        .with_scheduler(true)
        .with_backoff_base(Duration::from_millis(300));
    let kubelet = Kubelet::start(client.clone(), cfg).await.expect("kubelet");
    let faults = cluster.faults();
    faults.fail(&["create"], &["pods/binding"], 500, Some(2));
    faults.fail(&["patch"], &["pods/status"], 500, Some(4));
    faults.fail(&["patch"], &["pods/status"], 429, Some(2));
    faults.fail(&["patch"], &["pods/status"], 409, Some(3));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sturdy"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "trap '' TERM; sleep 600"]}]
        }
    }))
    .expect("pod json");
    // Creation itself is not faulted (only the kubelet's calls are).
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    wait_pod(&pods, "sturdy", T, "Running and Ready", |p| {
        phase(p) == "Running" && is_ready(p)
    })
    .await
    .expect("runs despite faults");

    // Closed watches: the kubelet re-lists and keeps following the pod.
    faults.close_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.close_watches();
    kubelet
        .kill_container("default", "sturdy", "main")
        .expect("kill");
    wait_pod(&pods, "sturdy", T, "restart reported", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count == 1) && is_ready(p)
    })
    .await
    .expect("restart reported after watches were closed");

    faults.close_watches();
    pods.delete("sturdy", &DeleteParams::default())
        .await
        .expect("delete");
    // The kubelet's own delete (after the 2 s grace period) fails twice first.
    faults.fail(&["delete"], &["pods"], 500, Some(2));
    wait_pod_gone(&pods, "sturdy", T)
        .await
        .expect("removed despite delete errors");
    // Every injected fault was met (and survived) by the kubelet or the scheduler.
    let left: Vec<_> = faults
        .config()
        .rules
        .into_iter()
        .filter(|r| r.count != Some(0))
        .collect();
    assert!(left.is_empty(), "faults never triggered: {left:?}");
    kubelet.shutdown().await;
}
