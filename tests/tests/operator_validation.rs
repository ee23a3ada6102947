//! Invalid WorkPools: what the schema and its CEL rules can say is refused at admission
//! by the API server (422 with the rule's message); what they cannot is reported by the
//! operator on the pool's conditions, and the pool's running pods are left alone.
#![forbid(unsafe_code)]

mod operator_support;

use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use operator_support::*;
use serde_json::{Value, json};
use workpool_tests::cluster::{ClusterOptions, TestCluster};

fn pool(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    })
}

fn spec() -> Value {
    json!({
        "queue": {"redis": {"url": "redis://127.0.0.1:1/0", "stream": "tasks"}},
        "replicas": 0,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "fallbackReplicas": 1},
        "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}}
    })
}

fn set(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut v;
    for (i, p) in path.iter().enumerate() {
        if i + 1 == path.len() {
            if value.is_null() {
                if let Some(m) = cur.as_object_mut() {
                    m.remove(*p);
                }
            } else {
                cur[*p] = value.clone();
            }
            break;
        }
        cur = &mut cur[*p];
    }
    v
}

/// Creates the object; `Err(message)` when the API server refuses it.
async fn create(api: &kube::Api<DynamicObject>, obj: &Value) -> Result<(), (u16, String)> {
    let o: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
    match api.create(&PostParams::default(), &o).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message.clone())),
        Err(e) => Err((0, e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_what_the_cel_rules_forbid() {
    let cluster = TestCluster::start_with(ClusterOptions::default())
        .await
        .expect("cluster");
    let ns = cluster.namespace().to_string();
    let api = pools_api(&cluster.client(), &ns);

    // Valid objects are accepted, with defaults filled in.
    create(&api, &pool(&ns, "ok", spec()))
        .await
        .expect("valid pool");
    let secret = set(
        set(spec(), &["queue", "redis", "url"], Value::Null),
        &["queue", "redis", "urlSecretRef"],
        json!({"name": "redis"}),
    );
    create(&api, &pool(&ns, "ok-secret", secret))
        .await
        .expect("pool with a Secret");
    let got = serde_json::to_value(api.get("ok-secret").await.expect("get")).expect("json");
    assert_eq!(
        got["spec"]["queue"]["redis"]["urlSecretRef"]["key"], "url",
        "{got}"
    );
    assert_eq!(got["spec"]["delivery"]["maxDeliveries"], 5, "{got}");
    assert_eq!(
        got["spec"]["delivery"]["visibilityTimeoutSeconds"], 30,
        "{got}"
    );
    let mut minimal = spec();
    minimal.as_object_mut().map(|m| {
        m.remove("replicas");
        m.remove("autoscaling")
    });
    create(&api, &pool(&ns, "ok-minimal", minimal))
        .await
        .expect("minimal pool");
    let got = serde_json::to_value(api.get("ok-minimal").await.expect("get")).expect("json");
    assert_eq!(got["spec"]["replicas"], 1, "{got}");

    // One invalid object per CEL rule.
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "both",
            set(
                spec(),
                &["queue", "redis", "urlSecretRef"],
                json!({"name": "s"}),
            ),
            "set exactly one of url and urlSecretRef",
        ),
        (
            "neither",
            set(spec(), &["queue", "redis", "url"], Value::Null),
            "set exactly one of url and urlSecretRef",
        ),
        (
            "scheme",
            set(spec(), &["queue", "redis", "url"], json!("http://x")),
            "url must start with",
        ),
        (
            "minmax",
            set(spec(), &["autoscaling", "minReplicas"], json!(4)),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "fallback",
            set(spec(), &["autoscaling", "fallbackReplicas"], json!(7)),
            "fallbackReplicas must not exceed maxReplicas",
        ),
        (
            "dead",
            set(spec(), &["delivery"], json!({"deadLetterStream": "tasks"})),
            "must differ from queue.redis.stream",
        ),
    ];
    for (name, s, msg) in cases {
        let r = create(&api, &pool(&ns, &format!("bad-{name}"), s)).await;
        match r {
            Err((422, m)) => assert!(m.contains(msg), "{name}: {m}"),
            other => panic!("{name}: expected 422 with {msg:?}, got {other:?}"),
        }
    }
    let long = "x".repeat(64);
    match create(&api, &pool(&ns, &long, spec())).await {
        Err((422, m)) => assert!(m.contains("at most 63 characters"), "{m}"),
        other => panic!("long name: {other:?}"),
    }
    // Schema (not CEL): no containers, negative replicas.
    let no_containers = set(spec(), &["template", "spec", "containers"], json!([]));
    assert!(matches!(
        create(&api, &pool(&ns, "bad-containers", no_containers)).await,
        Err((422, _))
    ));
    let negative = set(spec(), &["replicas"], json!(-1));
    assert!(matches!(
        create(&api, &pool(&ns, "bad-replicas", negative)).await,
        Err((422, _))
    ));

    // Transition rules: stream and group are immutable, replicas are not.
    let merge = |v: Value| Patch::Merge(v);
    let r = api
        .patch(
            "ok",
            &PatchParams::default(),
            &merge(json!({"spec": {"queue": {"redis": {"stream": "other"}}}})),
        )
        .await;
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("stream is immutable"), "{}", s.message);
        }
        other => panic!("stream change accepted: {other:?}"),
    }
    let r = api
        .patch(
            "ok",
            &PatchParams::default(),
            &merge(json!({"spec": {"queue": {"redis": {"group": "g2"}}}})),
        )
        .await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref s)) if s.code == 422 && s.message.contains("group is immutable")),
        "{r:?}"
    );
    api.patch(
        "ok",
        &PatchParams::default(),
        &merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .expect("replicas change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_admission_cannot_refuse_is_reported_on_conditions() {
    let env = Env::start().await;
    let _op = Operator::start(&env.cluster, "op-invalid", &[]);
    // The dead-letter stream defaults to nothing the schema knows: here it equals the
    // default stream (the pool's name), which only the operator can tell.
    let bad = env.exec_pool(
        "clash",
        1,
        0.0,
        json!({"delivery": {"deadLetterStream": "clash"}}),
    );
    env.apply_pool(&bad).await;
    let v = env
        .wait_pool("clash", "Ready=False with InvalidSpec", T, |v| {
            cond(v, "Ready").is_some_and(|c| c["status"] == "False" && c["reason"] == "InvalidSpec")
        })
        .await;
    let d = cond(&v, "Degraded").expect("Degraded");
    assert_eq!(d["status"], "True");
    assert_eq!(d["reason"], "InvalidSpec");
    assert!(
        d["message"].as_str().unwrap_or("").contains("dead-letter"),
        "{d}"
    );
    assert!(
        env.pool_pods("clash", true).await.is_empty(),
        "no pods for an invalid pool"
    );

    // A template the CRD's schema lets through but that is no PodTemplateSpec: reported
    // on that pool, and the operator keeps serving the other pools.
    let odd = env.exec_pool(
        "oddtemplate",
        1,
        0.0,
        json!({"template": {"spec": {"terminationGracePeriodSeconds": "thirty"}}}),
    );
    env.apply_pool(&odd).await;
    let v = env
        .wait_pool("oddtemplate", "Degraded=True with InvalidSpec", T, |v| {
            cond(v, "Degraded")
                .is_some_and(|c| c["status"] == "True" && c["reason"] == "InvalidSpec")
        })
        .await;
    let d = cond(&v, "Degraded").expect("Degraded");
    assert!(
        d["message"].as_str().unwrap_or("").contains("template"),
        "{d}"
    );

    // Fixed: the pool runs.
    env.pools()
        .patch(
            "clash",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"delivery": {"deadLetterStream": "clash:dlq"}}})),
        )
        .await
        .expect("fix");
    env.wait_ready("clash", 1).await;
    let v = env.pool("clash").await.expect("pool");
    assert_eq!(cond_status(&v, "Degraded").as_deref(), Some("False"));
}
