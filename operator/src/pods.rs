//! The pod the operator creates for a pool (pure): the user's template plus the pool's
//! labels, an owner reference, restricted-profile security defaults where the template
//! says nothing, and the WORKPOOL_* environment of the worker container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::{API_VERSION, KIND, WorkPool};
use crate::observe::signal;

/// Label naming the pool a pod belongs to.
pub const POOL_LABEL: &str = "workpool.dev/pool";
/// Label carrying the hash of the template the pod was built from.
pub const TEMPLATE_HASH_LABEL: &str = "workpool.dev/template-hash";
/// The container that gets the WORKPOOL_* environment (else the first one).
pub const WORKER_CONTAINER: &str = "worker";
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "workpool-operator";
/// The volume (and mount directory) of the Redis CA certificate.
pub const CA_VOLUME: &str = "workpool-redis-ca";
/// The volume (and mount directory) of the Redis client certificate.
pub const CLIENT_CERT_VOLUME: &str = "workpool-redis-client-cert";
/// Where the TLS volumes are mounted in the worker container.
pub const TLS_MOUNT_DIR: &str = "/var/run/workpool";

/// Why a pod cannot be built from a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The pool has no name, namespace or uid (not read from the API).
    #[error("the WorkPool has no {0}")]
    MissingMetadata(&'static str),
    /// The template has no container.
    #[error("spec.template.spec.containers is empty")]
    NoContainers,
    /// The template is not a valid PodTemplateSpec.
    #[error("spec.template is not a valid pod template: {0}")]
    InvalidTemplate(String),
}

/// `workpool.dev/pool=<pool>`: the selector of a pool's pods.
pub fn selector(pool: &str) -> String {
    format!("{POOL_LABEL}={pool}")
}

/// The environment the operator sets in the worker container (in this order).
pub fn worker_env(wp: &WorkPool) -> Vec<EnvVar> {
    let redis = &wp.spec.queue.redis;
    let url = match (&redis.url, &redis.url_secret_ref) {
        (_, Some(r)) => EnvVar {
            name: "WORKPOOL_REDIS_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        (url, None) => plain("WORKPOOL_REDIS_URL", url.clone().unwrap_or_default()),
    };
    vec![
        url,
        plain("WORKPOOL_STREAM", wp.stream()),
        plain("WORKPOOL_GROUP", wp.group()),
        EnvVar {
            name: "WORKPOOL_CONSUMER".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.name".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        plain(
            "WORKPOOL_VISIBILITY_TIMEOUT",
            wp.spec.delivery.visibility_timeout_seconds.to_string(),
        ),
        plain(
            "WORKPOOL_MAX_DELIVERIES",
            wp.spec.delivery.max_deliveries.to_string(),
        ),
    ]
    .into_iter()
    .chain((wp.partitions() > 1).then(|| plain("WORKPOOL_PARTITIONS", wp.partitions().to_string())))
    // Only a name the user chose: the worker derives the default per partition (and
    // with the hash tag on Redis Cluster).
    .chain(
        wp.spec
            .delivery
            .dead_letter_stream
            .clone()
            .map(|d| plain("WORKPOOL_DEAD_LETTER_STREAM", d)),
    )
    // Results only when asked for: without the variable the worker writes none.
    .chain(
        wp.spec
            .delivery
            .results
            .map(|r| plain("WORKPOOL_RESULTS_TTL", r.ttl_seconds.to_string())),
    )
    .chain(tls_env(wp))
    .collect()
}

fn tls_env(wp: &WorkPool) -> Vec<EnvVar> {
    let Some(tls) = &wp.spec.queue.redis.tls else {
        return Vec::new();
    };
    let mut env = Vec::new();
    if tls.ca_secret_ref.is_some() {
        env.push(plain(
            "WORKPOOL_REDIS_CA_FILE",
            format!("{TLS_MOUNT_DIR}/{CA_VOLUME}/ca.crt"),
        ));
    }
    if tls.client_cert_secret_ref.is_some() {
        env.push(plain(
            "WORKPOOL_REDIS_CERT_FILE",
            format!("{TLS_MOUNT_DIR}/{CLIENT_CERT_VOLUME}/tls.crt"),
        ));
        env.push(plain(
            "WORKPOOL_REDIS_KEY_FILE",
            format!("{TLS_MOUNT_DIR}/{CLIENT_CERT_VOLUME}/tls.key"),
        ));
    }
    env
}

/// The Secret volumes of the pool's TLS material and their read-only mounts in the
/// worker container (files named as `tls_env` says).
fn tls_volumes(wp: &WorkPool) -> Vec<(Volume, VolumeMount)> {
    let Some(tls) = &wp.spec.queue.redis.tls else {
        return Vec::new();
    };
    let secret = |volume: &str, name: &str, items: Vec<(String, &str)>| {
        (
            Volume {
                name: volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(name.into()),
                    items: Some(
                        items
                            .into_iter()
                            .map(|(key, path)| KeyToPath {
                                key,
                                path: path.into(),
                                mode: None,
                            })
                            .collect(),
                    ),
                    optional: Some(false),
                    default_mode: None,
                }),
                ..Default::default()
            },
            VolumeMount {
                name: volume.into(),
                mount_path: format!("{TLS_MOUNT_DIR}/{volume}"),
                read_only: Some(true),
                ..Default::default()
            },
        )
    };
    let mut out = Vec::new();
    if let Some(ca) = &tls.ca_secret_ref {
        out.push(secret(
            CA_VOLUME,
            &ca.name,
            vec![(ca.key.clone(), "ca.crt")],
        ));
    }
    if let Some(c) = &tls.client_cert_secret_ref {
        out.push(secret(
            CLIENT_CERT_VOLUME,
            &c.name,
            vec![
                (c.cert_key.clone(), "tls.crt"),
                (c.key_key.clone(), "tls.key"),
            ],
        ));
    }
    out
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// Fills the restricted Pod Security profile's settings the user left unset; never
/// overrides a value the template gives.
fn restrict(spec: &mut PodSpec) {
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if psc.run_as_non_root.is_none() {
        psc.run_as_non_root = Some(true);
    }
    if psc.seccomp_profile.is_none() {
        psc.seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        let privileged = sc.privileged == Some(true);
        if sc.allow_privilege_escalation.is_none() && !privileged {
            sc.allow_privilege_escalation = Some(false);
        }
        if sc.capabilities.is_none() {
            sc.capabilities = Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            });
        }
        if sc.read_only_root_filesystem.is_none() {
            sc.read_only_root_filesystem = Some(true);
        }
    }
}

fn inject_env(c: &mut Container, env: Vec<EnvVar>) {
    let mut list: Vec<EnvVar> = c.env.take().unwrap_or_default();
    list.retain(|e| !env.iter().any(|o| o.name == e.name));
    list.extend(env);
    c.env = Some(list);
}

/// The pool's pod template, rendered: labels, security defaults and environment, without
/// name, owner reference or template hash. The template hash is computed from this.
pub fn render_template(wp: &WorkPool) -> Result<(ObjectMeta, PodSpec), PodError> {
    let pool = wp
        .metadata
        .name
        .clone()
        .ok_or(PodError::MissingMetadata("name"))?;
    let tpl: PodTemplateSpec = serde_json::from_value(wp.spec.template.value())
        .map_err(|e| PodError::InvalidTemplate(e.to_string()))?;
    let mut spec = tpl.spec.clone().unwrap_or_default();
    if spec.containers.is_empty() {
        return Err(PodError::NoContainers);
    }
    let idx = spec
        .containers
        .iter()
        .position(|c| c.name == WORKER_CONTAINER)
        .unwrap_or(0);
    inject_env(&mut spec.containers[idx], worker_env(wp));
    for (volume, mount) in tls_volumes(wp) {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != volume.name);
        volumes.push(volume);
        let mounts = spec.containers[idx]
            .volume_mounts
            .get_or_insert_with(Vec::new);
        mounts.retain(|m| m.name != mount.name);
        mounts.push(mount);
    }
    restrict(&mut spec);

    let tmeta = tpl.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POOL_LABEL.into(), pool.clone());
    labels.insert("app.kubernetes.io/name".into(), "workpool-worker".into());
    labels.insert("app.kubernetes.io/instance".into(), pool);
    labels.insert("app.kubernetes.io/component".into(), "worker".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    let meta = ObjectMeta {
        labels: Some(labels),
        annotations: tmeta.annotations.filter(|a| !a.is_empty()),
        ..Default::default()
    };
    Ok((meta, spec))
}

/// A stable hash (FNV-1a 64) of the rendered template: pods with another hash are
/// outdated and get replaced.
pub fn template_hash(meta: &ObjectMeta, spec: &PodSpec) -> String {
    let bytes = serde_json::to_vec(&(meta, spec)).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Label values: alphanumeric, at most 63 characters.
    format!("{h:016x}")
}

/// The pod `name` of the pool: rendered template, hash label and owner reference.
pub fn build_pod(wp: &WorkPool, name: &str) -> Result<Pod, PodError> {
    let (mut meta, spec) = render_template(wp)?;
    let hash = template_hash(&meta, &spec);
    let uid = wp
        .metadata
        .uid
        .clone()
        .ok_or(PodError::MissingMetadata("uid"))?;
    let namespace = wp
        .metadata
        .namespace
        .clone()
        .ok_or(PodError::MissingMetadata("namespace"))?;
    let labels: &mut BTreeMap<String, String> = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash);
    // A new pod holds no task: it is created with the idle signals, so that it needs no
    // annotation patch until it takes one (signals are written only when they change:
    // one write per pod instead of two). Set after the hash: the signals are the
    // operator's, and the hash of existing pods stays what it was.
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(signal::SAFE_TO_EVICT.into(), "true".into());
    annotations.remove(signal::DO_NOT_DISRUPT);
    annotations.remove(signal::DELETION_COST);
    meta.name = Some(name.to_string());
    meta.namespace = Some(namespace);
    meta.owner_references = Some(vec![OwnerReference {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        name: wp.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// The characters of a pod name's random suffix (as a ReplicaSet's).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The part of the pool's pod names before `-<suffix>`: the pool's name, shortened so
/// that a whole name fits 63 characters.
pub fn name_prefix(pool: &str) -> String {
    let prefix: String = pool.chars().take(63 - 6).collect();
    prefix.trim_end_matches(['-', '.']).to_string()
}

/// A pod name for the pool: `<prefix>-<5 random characters>` like a ReplicaSet's.
pub fn pod_name(pool: &str, random: u64) -> String {
    let mut suffix = String::with_capacity(5);
    let mut r = random;
    for _ in 0..5 {
        suffix.push(ALPHABET[(r % ALPHABET.len() as u64) as usize] as char);
        r /= ALPHABET.len() as u64;
    }
    format!("{}-{suffix}", name_prefix(pool))
}

/// Whether `name` is a name [`pod_name`] gives the pool's pods (also for a long pool name,
/// whose pods carry a shortened prefix; and never for another pool's pods, even one whose
/// name starts with this pool's).
pub fn is_pod_of(pool: &str, name: &str) -> bool {
    name.strip_prefix(name_prefix(pool).as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|s| s.len() == 5 && s.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(spec: serde_json::Value) -> WorkPool {
        let mut wp: WorkPool = serde_json::from_value(json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": "thumbs", "namespace": "ns", "uid": "u-1"},
            "spec": spec
        }))
        .expect("valid pool");
        wp.metadata.generation = Some(1);
        wp
    }

    fn env_of(c: &Container) -> BTreeMap<String, serde_json::Value> {
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let v = serde_json::to_value(&e).expect("env json");
                (e.name, v)
            })
            .collect()
    }

    #[test]
    fn env_goes_to_the_worker_container_and_the_secret_is_referenced() {
        let wp = pool(json!({
            "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "stream": "s"}},
            "delivery": {"visibilityTimeoutSeconds": 30, "maxDeliveries": 3},
            "template": {"spec": {"containers": [
                {"name": "sidecar", "image": "x"},
                {"name": "worker", "image": "w", "env": [
                    {"name": "WORKPOOL_STREAM", "value": "user"},
                    {"name": "KEEP", "value": "1"}
                ]}
            ]}}
        }));
        let pod = build_pod(&wp, "thumbs-abcde").expect("pod");
        let spec = pod.spec.expect("spec");
        assert!(spec.containers[0].env.is_none(), "sidecar untouched");
        let env = env_of(&spec.containers[1]);
        assert_eq!(env["KEEP"]["value"], "1");
        assert_eq!(env["WORKPOOL_STREAM"]["value"], "s");
        assert_eq!(env["WORKPOOL_GROUP"]["value"], "thumbs");
        assert!(
            !env.contains_key("WORKPOOL_DEAD_LETTER_STREAM"),
            "the worker derives the default dead-letter stream itself"
        );
        assert!(
            !env.contains_key("WORKPOOL_PARTITIONS"),
            "one partition: the default"
        );
        assert!(
            !env.contains_key("WORKPOOL_RESULTS_TTL"),
            "results are off unless delivery.results is set"
        );
        assert_eq!(env["WORKPOOL_VISIBILITY_TIMEOUT"]["value"], "30");
        assert_eq!(env["WORKPOOL_MAX_DELIVERIES"]["value"], "3");
        assert_eq!(
            env["WORKPOOL_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env["WORKPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"],
            json!({"name": "redis", "key": "url", "optional": false})
        );
        assert!(env["WORKPOOL_REDIS_URL"].get("value").is_none());
        let n = spec.containers[1]
            .env
            .as_ref()
            .map(|e| e.iter().filter(|v| v.name == "WORKPOOL_STREAM").count());
        assert_eq!(n, Some(1), "the operator's value replaces the user's");
    }

    #[test]
    fn tls_secrets_are_mounted_and_named_in_the_env_with_partitions_and_dead_letters() {
        let wp = pool(json!({
            "queue": {"redis": {
                "url": "rediss+cluster://r:7000", "partitions": 6,
                "tls": {"caSecretRef": {"name": "ca", "key": "root.pem"},
                        "clientCertSecretRef": {"name": "client", "certKey": "tls.crt", "keyKey": "tls.key"}}}},
            "delivery": {"deadLetterStream": "failed", "results": {"ttlSeconds": 3600}},
            "template": {"spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "worker", "image": "w",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}
        }));
        let pod = build_pod(&wp, "thumbs-abcde").expect("pod");
        let spec = pod.spec.expect("spec");
        let env = env_of(&spec.containers[0]);
        assert_eq!(env["WORKPOOL_PARTITIONS"]["value"], "6");
        assert_eq!(env["WORKPOOL_DEAD_LETTER_STREAM"]["value"], "failed");
        assert_eq!(env["WORKPOOL_RESULTS_TTL"]["value"], "3600");
        assert_eq!(
            env["WORKPOOL_REDIS_CA_FILE"]["value"],
            "/var/run/workpool/workpool-redis-ca/ca.crt"
        );
        assert_eq!(
            env["WORKPOOL_REDIS_CERT_FILE"]["value"],
            "/var/run/workpool/workpool-redis-client-cert/tls.crt"
        );
        assert_eq!(
            env["WORKPOOL_REDIS_KEY_FILE"]["value"],
            "/var/run/workpool/workpool-redis-client-cert/tls.key"
        );
        let volumes = serde_json::to_value(spec.volumes.expect("volumes")).expect("json");
        assert_eq!(volumes[0]["name"], "data", "the user's volumes stay");
        assert_eq!(volumes[1]["secret"]["secretName"], "ca");
        assert_eq!(
            volumes[1]["secret"]["items"],
            json!([{"key": "root.pem", "path": "ca.crt"}])
        );
        assert_eq!(volumes[2]["secret"]["secretName"], "client");
        let mounts = serde_json::to_value(spec.containers[0].volume_mounts.clone()).expect("json");
        assert_eq!(mounts.as_array().map(Vec::len), Some(3));
        assert!(
            mounts[1]["readOnly"].as_bool() == Some(true)
                && mounts[2]["readOnly"].as_bool() == Some(true)
        );
        // Rendering twice changes nothing (same template hash).
        let (m1, s1) = render_template(&wp).expect("render");
        let (m2, s2) = render_template(&wp).expect("render");
        assert_eq!(template_hash(&m1, &s1), template_hash(&m2, &s2));
    }

    #[test]
    fn pods_are_created_with_the_idle_signals_whatever_the_template_says() {
        let wp = pool(json!({
            "queue": {"redis": {"url": "redis://r:6379"}},
            "template": {"metadata": {"annotations": {
                             "x": "y",
                             signal::SAFE_TO_EVICT: "false",
                             signal::DO_NOT_DISRUPT: "true",
                             signal::DELETION_COST: "7"}},
                         "spec": {"containers": [{"name": "worker", "image": "w"}]}}
        }));
        let pod = build_pod(&wp, "thumbs-abcde").expect("pod");
        let ann = pod.metadata.annotations.clone().expect("annotations");
        assert_eq!(ann["x"], "y");
        assert_eq!(ann[signal::SAFE_TO_EVICT], "true");
        assert!(
            !ann.contains_key(signal::DO_NOT_DISRUPT) && !ann.contains_key(signal::DELETION_COST)
        );
        // The hash is the template's: the same as before the signals were set at create.
        let (meta, spec) = render_template(&wp).expect("render");
        assert_eq!(
            pod.metadata.labels.expect("labels")[TEMPLATE_HASH_LABEL],
            template_hash(&meta, &spec)
        );
    }

    #[test]
    fn first_container_when_none_is_named_worker_and_labels_and_owner() {
        let wp = pool(json!({
            "queue": {"redis": {"url": "redis://r:6379"}},
            "template": {"metadata": {"labels": {"team": "a"}, "annotations": {"x": "y"}},
                         "spec": {"containers": [{"name": "main", "image": "w"}]}}
        }));
        let pod = build_pod(&wp, "thumbs-abcde").expect("pod");
        let env = env_of(&pod.spec.as_ref().expect("spec").containers[0]);
        assert_eq!(env["WORKPOOL_REDIS_URL"]["value"], "redis://r:6379");
        assert_eq!(env["WORKPOOL_STREAM"]["value"], "thumbs");
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[POOL_LABEL], "thumbs");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGED_BY);
        assert_eq!(labels["app.kubernetes.io/instance"], "thumbs");
        assert!(labels.contains_key(TEMPLATE_HASH_LABEL));
        assert_eq!(pod.metadata.annotations.expect("ann")["x"], "y");
        let owner = &pod.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("WorkPool", "u-1", Some(true))
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn security_defaults_fill_gaps_but_never_override() {
        let wp = pool(json!({
            "queue": {"redis": {"url": "redis://r:6379"}},
            "template": {"spec": {
                "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [
                    {"name": "worker", "image": "w"},
                    {"name": "tool", "image": "t", "securityContext": {
                        "readOnlyRootFilesystem": false,
                        "capabilities": {"add": ["NET_BIND_SERVICE"]}}},
                    {"name": "priv", "image": "p", "securityContext": {"privileged": true}}
                ]}}
        }));
        let pod = build_pod(&wp, "thumbs-abcde").expect("pod");
        let spec = serde_json::to_value(pod.spec.expect("spec")).expect("json");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], false);
        assert_eq!(spec["securityContext"]["runAsUser"], 0);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let w = &spec["containers"][0]["securityContext"];
        assert_eq!(w["allowPrivilegeEscalation"], false);
        assert_eq!(w["readOnlyRootFilesystem"], true);
        assert_eq!(w["capabilities"]["drop"], json!(["ALL"]));
        let t = &spec["containers"][1]["securityContext"];
        assert_eq!(t["readOnlyRootFilesystem"], false);
        assert_eq!(t["capabilities"], json!({"add": ["NET_BIND_SERVICE"]}));
        let p = &spec["containers"][2]["securityContext"];
        assert!(p.get("allowPrivilegeEscalation").is_none());
        let i = &spec["initContainers"][0]["securityContext"];
        assert_eq!(i["allowPrivilegeEscalation"], false);
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_the_template() {
        let a = pool(json!({"queue": {"redis": {"url": "redis://r"}},
            "template": {"spec": {"containers": [{"name": "worker", "image": "w:1"}]}}}));
        let b = pool(json!({"queue": {"redis": {"url": "redis://r"}},
            "template": {"spec": {"containers": [{"name": "worker", "image": "w:2"}]}}}));
        let h = |wp: &WorkPool| {
            let (m, s) = render_template(wp).expect("renders");
            template_hash(&m, &s)
        };
        assert_eq!(h(&a), h(&a.clone()));
        assert_ne!(h(&a), h(&b));
        assert_eq!(h(&a).len(), 16);
        // Replicas are not part of the template.
        let mut c = a.clone();
        c.spec.replicas = 7;
        assert_eq!(h(&a), h(&c));
    }

    #[test]
    fn no_containers_is_an_error_not_a_panic() {
        let wp = pool(json!({"queue": {"redis": {"url": "redis://r"}},
            "template": {"spec": {"containers": []}}}));
        assert_eq!(build_pod(&wp, "x").err(), Some(PodError::NoContainers));
        let mut wp = wp;
        wp.metadata.name = None;
        assert_eq!(
            render_template(&wp).err(),
            Some(PodError::MissingMetadata("name"))
        );
    }

    #[test]
    fn a_template_of_the_wrong_shape_is_an_error_not_a_panic() {
        let wp = pool(json!({"queue": {"redis": {"url": "redis://r"}},
            "template": {"spec": {"terminationGracePeriodSeconds": "thirty",
                                  "containers": [{"name": "worker", "image": "w"}]}}}));
        match build_pod(&wp, "x") {
            Err(PodError::InvalidTemplate(m)) => assert!(m.contains("invalid type"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pod_names_are_valid_dns_labels() {
        let n = pod_name("thumbs", 12345);
        assert!(n.starts_with("thumbs-") && n.len() == 12, "{n}");
        let long = "a".repeat(80);
        assert!(pod_name(&long, u64::MAX).len() <= 63);
        assert_ne!(pod_name("p", 1), pod_name("p", 2));
        assert!(
            pod_name("p", 99)
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn a_pools_pods_are_recognised_by_name_and_only_its_own() {
        for pool in ["thumbs", &"a".repeat(59), &format!("{}-x", "b".repeat(55))] {
            for r in [0, 7, u64::MAX] {
                let n = pod_name(pool, r);
                assert!(is_pod_of(pool, &n), "{pool}: {n}");
            }
        }
        // A pool whose name continues this one's, a hand-made consumer, a different suffix.
        assert!(!is_pod_of("a", &pod_name("a-b", 3)));
        assert!(!is_pod_of("a-b", &pod_name("a", 3)));
        assert!(!is_pod_of("thumbs", "thumbs-worker-1"));
        assert!(
            !is_pod_of("thumbs", "thumbs-aaaaa"),
            "a not in the alphabet"
        );
        assert!(!is_pod_of("thumbs", "thumbs"));
    }

    #[test]
    fn selector_names_the_pool() {
        assert_eq!(selector("thumbs"), "workpool.dev/pool=thumbs");
    }
}
