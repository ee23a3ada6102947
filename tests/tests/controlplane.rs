//! The real control plane (`workpool_tests::controlplane`): RBAC is enforced, the real
//! node registers a Node with a node credential and runs the pods the real scheduler
//! binds to it, and every process stops when the control plane is dropped. Where the real
//! control plane cannot run, the tests fail saying what is missing.
#![forbid(unsafe_code)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use workpool_tests::cluster::{ClusterOptions, TestCluster, client_for};
use workpool_tests::controlplane::{ControlPlane, ControlPlaneOptions};
use workpool_tests::node::PROBE_IMAGE;

const T: Duration = Duration::from_secs(90);

/// A namespace of its own on this process's real control plane.
async fn real_cluster() -> TestCluster {
    TestCluster::start_real(ClusterOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the real control plane: {e:#}"))
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_refuses_a_service_account_what_its_role_does_not_grant() {
    let cluster = real_cluster().await;
    let ns = cluster.namespace().to_string();
    cluster
        .apply_yaml(&format!(
            r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: configmap-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {ns}}}
"#
        ))
        .await
        .expect("RBAC objects applied");
    let kubeconfig = cluster
        .service_account_kubeconfig(&ns, "reader")
        .await
        .expect("a token for the ServiceAccount");
    let reader = client_for(&kubeconfig).await.expect("client");

    let cms: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns);
    // The grant takes effect as soon as the RoleBinding is in the informer cache.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match cms.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(
                    list.items
                        .iter()
                        .any(|c| c.metadata.name.as_deref() == Some("kube-root-ca.crt"))
                );
                break;
            }
            Err(e) if status_code(&e) == Some(403) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("listing configmaps as the reader: {e}"),
        }
    }
    // No verb for secrets at all, no create on configmaps, nothing in other namespaces.
    let secrets: Api<Secret> = Api::namespaced(reader.clone(), &ns);
    let err = secrets
        .list(&ListParams::default())
        .await
        .expect_err("secrets refused");
    assert_eq!(status_code(&err), Some(403), "{err}");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let err = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("create refused");
    assert_eq!(status_code(&err), Some(403), "{err}");
    let other: Api<ConfigMap> = Api::namespaced(reader.clone(), "kube-system");
    let err = other
        .list(&ListParams::default())
        .await
        .expect_err("other namespace refused");
    assert_eq!(status_code(&err), Some(403), "{err}");
    if let kube::Error::Api(s) = &err {
        assert!(
            s.message
                .contains(&format!("system:serviceaccount:{ns}:reader")),
            "{}",
            s.message
        );
    }
    // The admin's client still can.
    let admin: Api<ServiceAccount> = Api::namespaced(cluster.client(), &ns);
    assert!(
        admin
            .get_opt("reader")
            .await
            .expect("admin reads")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_node_registers_and_runs_what_the_scheduler_binds() {
    let cluster = real_cluster().await;
    let node = cluster.shared_node().await.expect("the real node");
    let node_name = node.name().to_string();
    let ns = cluster.namespace().to_string();
    let client = cluster.client();

    // Two pods: the real scheduler binds both to the node, its kubelet runs them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": PROBE_IMAGE, "args": ["sleep"]}]
            }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod created");
    }
    for name in ["a", "b"] {
        let deadline = tokio::time::Instant::now() + T;
        let pod = loop {
            let pod = pods.get(name).await.expect("get pod");
            if is_ready(&pod) {
                break pod;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} not Ready: {:?}",
                pod.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(node_name.as_str()));
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=a"))
            .await
            .expect("events");
        let by_scheduler = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("Scheduled")
                && (e.reporting_component.as_deref() == Some("default-scheduler")
                    || e.source.as_ref().and_then(|s| s.component.as_deref())
                        == Some("default-scheduler"))
        });
        if by_scheduler {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Scheduled event from default-scheduler: {:?}",
            list.items
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let nodes: Api<Node> = Api::all(client.clone());
    let registered = nodes.get(&node_name).await.expect("node registered");
    let ready = registered
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node Ready");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    // The kubelet creates its lease at its first sync after registration (every 10 s).
    let deadline = tokio::time::Instant::now() + T;
    let lease = loop {
        match leases.get_opt(&node_name).await.expect("read the lease") {
            Some(lease) => break lease,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            None => panic!("no heartbeat lease of {node_name} in kube-node-lease"),
        }
    };
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(node_name.as_str())
    );

    // NodeRestriction: the kubelet's own credential cannot touch another node.
    let cp = cluster.control_plane().expect("the local control plane");
    let node_client = client_for(
        &cp.kubeconfig_for_user(&format!("system:node:{node_name}"), &["system:nodes"])
            .expect("node kubeconfig"),
    )
    .await
    .expect("client");
    let other: Node =
        serde_json::from_value(json!({"metadata": {"name": format!("not-{node_name}")}})).unwrap();
    let err = Api::<Node>::all(node_client)
        .create(&PostParams::default(), &other)
        .await
        .expect_err("a node cannot create another node");
    assert_eq!(status_code(&err), Some(403), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_control_plane_leaves_no_process_or_directory_behind() {
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default()))
        .await
        .expect("join")
        .expect("a second control plane starts");
    let dir = cp.dir().to_path_buf();
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("pids"))
        .expect("pid list")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        4,
        "etcd, apiserver, controller manager, scheduler"
    );
    let client = client_for(cp.admin_kubeconfig()).await.expect("client");
    let version = client.apiserver_version().await.expect("serves");
    let pinned = workpool_tests::controlplane::kubernetes_version().unwrap();
    assert_eq!(
        version.git_version, pinned,
        "the server is the pinned release"
    );
    tokio::task::spawn_blocking(move || drop(cp))
        .await
        .expect("drop");
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "process {pid} still running");
    }
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_tokens_and_namespaces_their_default_account() {
    let cluster = real_cluster().await;
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), cluster.namespace());
    assert!(sas.get_opt("default").await.expect("get").is_some());
    let kubeconfig = cluster
        .service_account_kubeconfig(cluster.namespace(), "default")
        .await
        .expect("token");
    let client = client_for(&kubeconfig).await.expect("client");
    // Authenticated (a 403 is an authorization answer, a 401 would not be).
    let err = Api::<Secret>::namespaced(client, cluster.namespace())
        .list(&ListParams::default())
        .await
        .expect_err("default account has no grants");
    assert_eq!(status_code(&err), Some(403), "{err}");
}
