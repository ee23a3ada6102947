//! Every CEL rule of the WorkPool CRD, on valid and invalid objects, evaluated with
//! kube-cel (client-side, the apiserver's CEL libraries). The same rules are checked
//! through an API server in `tests/tests/operator_validation.rs`.
#![forbid(unsafe_code)]

use kube::CustomResourceExt;
use serde_json::{Value, json};
use workpool_operator::crd::WorkPool;

fn schema() -> Value {
    let crd = serde_json::to_value(WorkPool::crd()).expect("crd json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn rules_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                for r in rules {
                    if let Some(s) = r["rule"].as_str() {
                        out.push(s.to_string());
                    }
                }
            }
            for v in m.values() {
                rules_in(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| rules_in(v, out)),
        _ => {}
    }
}

fn pool(spec: Value) -> Value {
    json!({
        "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
        "metadata": {"name": "thumbs", "namespace": "default"},
        "spec": spec
    })
}

fn valid_spec() -> Value {
    json!({
        "queue": {"redis": {"url": "redis://redis:6379/0", "stream": "tasks"}},
        "replicas": 2,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 5, "fallbackReplicas": 2},
        "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}}
    })
}

/// Messages of the failed rules (empty when valid).
fn check(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match kube_cel::Validator::new().validate(&schema(), obj, old) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(|e| e.message.clone()).collect(),
    }
}

fn with(mut v: Value, path: &[&str], value: Value) -> Value {
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

/// (rule substring, invalid object, expected message) — one per rule of the CRD.
fn cases() -> Vec<(&'static str, Value, Option<Value>, &'static str)> {
    let ok = pool(valid_spec());
    vec![
        (
            "size(self.metadata.name) <= 63",
            with(ok.clone(), &["metadata", "name"], json!("x".repeat(64))),
            None,
            "at most 63 characters",
        ),
        (
            "has(self.url) != has(self.urlSecretRef)",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "urlSecretRef"],
                json!({"name": "s", "key": "url"}),
            ),
            None,
            "set exactly one of url and urlSecretRef",
        ),
        (
            "has(self.url) != has(self.urlSecretRef)",
            with(ok.clone(), &["spec", "queue", "redis", "url"], Value::Null),
            None,
            "set exactly one of url and urlSecretRef",
        ),
        (
            "self.matches(",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "url"],
                json!("http://redis:6379"),
            ),
            None,
            "url must start with",
        ),
        (
            "self.minReplicas <= self.maxReplicas",
            with(
                ok.clone(),
                &["spec", "autoscaling", "minReplicas"],
                json!(6),
            ),
            None,
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "self.fallbackReplicas <= self.maxReplicas",
            with(
                ok.clone(),
                &["spec", "autoscaling", "fallbackReplicas"],
                json!(9),
            ),
            None,
            "fallbackReplicas must not exceed maxReplicas",
        ),
        (
            "self.delivery.deadLetterStream != self.queue.redis.stream",
            with(
                ok.clone(),
                &["spec", "delivery"],
                json!({"deadLetterStream": "tasks"}),
            ),
            None,
            "delivery.deadLetterStream must differ from queue.redis.stream",
        ),
        (
            "oldSelf.stream",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "stream"],
                json!("other"),
            ),
            Some(ok.clone()),
            "stream is immutable",
        ),
        (
            "self.url.startsWith('rediss')",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "tls"],
                json!({"caSecretRef": {"name": "ca"}}),
            ),
            None,
            "tls (a CA or client certificate) needs a TLS URL",
        ),
        (
            "self.stream.matches('[{}]')",
            with(
                with(
                    ok.clone(),
                    &["spec", "queue", "redis", "url"],
                    json!("redis+cluster://a:7000,b:7001"),
                ),
                &["spec", "queue", "redis", "stream"],
                json!("{tasks}"),
            ),
            None,
            "on Redis Cluster the stream name must not contain { or }",
        ),
        (
            "oldSelf.partitions",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "partitions"],
                json!(2),
            ),
            Some(with(
                ok.clone(),
                &["spec", "queue", "redis", "partitions"],
                json!(4),
            )),
            "partitions may grow but never shrink",
        ),
        (
            "oldSelf.group",
            with(
                ok.clone(),
                &["spec", "queue", "redis", "group"],
                json!("g2"),
            ),
            Some(ok.clone()),
            "group is immutable",
        ),
    ]
}

#[test]
fn the_valid_pool_passes_every_rule() {
    let ok = pool(valid_spec());
    assert_eq!(check(&ok, None), Vec::<String>::new());
    assert_eq!(check(&ok, Some(&ok)), Vec::<String>::new());
    // A Secret reference instead of a URL, no autoscaling, defaults only.
    let secret = pool(json!({
        "queue": {"redis": {"urlSecretRef": {"name": "redis"}}},
        "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}}
    }));
    assert_eq!(check(&secret, None), Vec::<String>::new());
    // Other URL schemes.
    for url in [
        "rediss://h:6380",
        "unix:///tmp/r.sock",
        "redis+unix:///tmp/r.sock",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "rediss+sentinel://s1:26379/mymaster/0?sentinel_password=x",
        "redis+cluster://n1:7000,n2:7001",
        "rediss+cluster://n1:7000",
    ] {
        let p = with(ok.clone(), &["spec", "queue", "redis", "url"], json!(url));
        assert_eq!(check(&p, None), Vec::<String>::new(), "{url}");
    }
    // A dead-letter stream that differs, and unchanged stream/group on update.
    let p = with(
        ok.clone(),
        &["spec", "delivery"],
        json!({"deadLetterStream": "tasks:dlq"}),
    );
    assert_eq!(check(&p, None), Vec::<String>::new());
    let scaled = with(ok.clone(), &["spec", "replicas"], json!(9));
    assert_eq!(check(&scaled, Some(&ok)), Vec::<String>::new());
    // TLS with a TLS URL; partitions growing (or first set); braces off Cluster.
    let tls = with(
        with(
            ok.clone(),
            &["spec", "queue", "redis", "url"],
            json!("rediss+cluster://n1:7000"),
        ),
        &["spec", "queue", "redis", "tls"],
        json!({"caSecretRef": {"name": "ca", "key": "ca.crt"}, "clientCertSecretRef": {"name": "client"}}),
    );
    assert_eq!(check(&tls, None), Vec::<String>::new());
    let four = with(
        ok.clone(),
        &["spec", "queue", "redis", "partitions"],
        json!(4),
    );
    assert_eq!(
        check(&four, Some(&ok)),
        Vec::<String>::new(),
        "from the default 1 to 4"
    );
    let six = with(
        ok.clone(),
        &["spec", "queue", "redis", "partitions"],
        json!(6),
    );
    assert_eq!(check(&six, Some(&four)), Vec::<String>::new());
    let braces = with(
        ok.clone(),
        &["spec", "queue", "redis", "stream"],
        json!("{t}"),
    );
    assert_eq!(check(&braces, None), Vec::<String>::new());
    // min == max is allowed; no fallback is allowed.
    let p = with(
        ok.clone(),
        &["spec", "autoscaling"],
        json!({"minReplicas": 3, "maxReplicas": 3}),
    );
    assert_eq!(check(&p, None), Vec::<String>::new());
}

#[test]
fn every_rule_refuses_its_invalid_object() {
    for (rule, obj, old, msg) in cases() {
        let errs = check(&obj, old.as_ref());
        assert!(
            errs.iter().any(|e| e.contains(msg)),
            "rule {rule:?}: expected {msg:?}, got {errs:?}"
        );
        assert_eq!(
            errs.len(),
            1,
            "rule {rule:?}: only this rule fails: {errs:?}"
        );
    }
}

#[test]
fn every_rule_of_the_crd_has_a_case() {
    let mut rules = Vec::new();
    rules_in(&schema(), &mut rules);
    assert!(rules.len() >= 8, "{rules:?}");
    let cases = cases();
    for r in &rules {
        assert!(
            cases.iter().any(|(needle, ..)| r.contains(needle)),
            "CEL rule without a test case: {r}"
        );
    }
}
