//! The two ways the operator may use the Secrets pools name (`operator.secretAccess`),
//! each with exactly the RBAC it documents, through a ServiceAccount token:
//!
//! - `get` (the default, `operator/rbac.yaml`): the operator reads the Secret a pool
//!   names, and each named Secret's metadata again every `--secret-refresh` seconds; a
//!   rotated Secret is followed then (its pools reconciled), and the operator never
//!   lists or watches Secrets;
//! - `watch` (the same plus `list` and `watch` on Secrets, here a Role in the pool's
//!   namespace): a rotated Secret is followed at once, long before the refresh.
#![forbid(unsafe_code)]

mod operator_support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use operator_support::*;
use serde_json::json;
use workpool_worker::testing::RedisServer;

/// A pool at zero replicas (only its queue is read) whose `urlSecretRef` names Secret
/// `redis-url`, first on the test's Redis; then the Secret is rotated to `other`, which
/// holds 3 tasks: the pool's backlog shows them once the operator follows the Secret.
async fn rotate(env: &Env, other: &RedisServer) {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-url"}, "stringData": {"url": env.redis.url()}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let mut pool = env.exec_pool("rotated", 0, 0.0, json!({}));
    pool["spec"]["queue"]["redis"] = json!({"urlSecretRef": {"name": "redis-url", "key": "url"}});
    env.apply_pool(&pool).await;
    env.wait_pool("rotated", "the first Redis read", T, |v| {
        v["status"]["queue"]["backlog"] == json!(0)
    })
    .await;
    secrets
        .patch(
            "redis-url",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"url": other.url()}})),
        )
        .await
        .expect("rotate the Secret");
    env.wait_pool("rotated", "the other Redis's backlog", T, |v| {
        v["status"]["queue"]["backlog"] == json!(3)
    })
    .await;
}

fn other_redis_with_tasks() -> RedisServer {
    let other = RedisServer::start().expect("redis-server");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &other.port().to_string()])
        .args(["XADD", "rotated", "*", "payload", "a"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
    for _ in 0..2 {
        std::process::Command::new("redis-cli")
            .args([
                "-p",
                &other.port().to_string(),
                "XADD",
                "rotated",
                "*",
                "payload",
                "b",
            ])
            .output()
            .expect("redis-cli");
    }
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_get_only_a_rotated_secret_is_followed_at_the_next_refresh() {
    let env = Env::start().await;
    let other = other_redis_with_tasks();
    let kc = documented_rbac(&env, "op-get").await;
    let op = Operator::start_with_kubeconfig(
        &env.cluster,
        &kc,
        "op-get",
        &["--secret-refresh", "3", "--queue-poll-interval", "1"],
    );
    rotate(&env, &other).await;
    let log = op.log_text();
    assert!(
        log.contains("RBAC grants no list and watch on secrets"),
        "{log}"
    );
    // Found by the one read per Secret and period, which reconciles the pool naming it
    // (the pool itself has no Secret timer).
    assert!(log.contains("the pool's Redis Secret changed"), "{log}");
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "forbidden requests:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_watch_a_rotated_secret_is_followed_at_once() {
    let env = Env::start().await;
    let other = other_redis_with_tasks();
    let kc = documented_rbac(&env, "op-watch").await;
    let ns = env.ns.clone();
    env.cluster
        .apply_object(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "watch-secrets", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]
        }))
        .await
        .expect("role");
    env.cluster
        .apply_object(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "watch-secrets", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "watch-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "op-watch", "namespace": ns}]
        }))
        .await
        .expect("binding");
    // A refresh far beyond the test: only the watch can move the pool in time.
    let op = Operator::start_with_kubeconfig(
        &env.cluster,
        &kc,
        "op-watch",
        &[
            "--namespace",
            &ns,
            "--secret-refresh",
            "3600",
            "--queue-poll-interval",
            "1",
        ],
    );
    rotate(&env, &other).await;
    let log = op.log_text();
    assert!(
        !log.contains("RBAC grants no list and watch on secrets"),
        "{log}"
    );
    assert!(log.contains("the pool's Redis Secret changed"), "{log}");
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "forbidden requests:\n{log}"
    );
}
