//! Container environment: `env` (value, fieldRef, resourceFieldRef, secretKeyRef,
//! configMapKeyRef), `envFrom` (with prefix and optional), and `$(VAR)` expansion.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::{Container, Pod};

/// Where secrets and config maps come from (the API in the kubelet; a map in unit tests).
pub trait ConfigSource: Sync {
    /// `Ok(None)` when the secret does not exist; `Err` for any other failure.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, String>> + Send;
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, String>> + Send;
}

/// An in-memory [`ConfigSource`].
#[derive(Clone, Debug, Default)]
pub struct MapConfigSource {
    pub secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    pub config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl ConfigSource for MapConfigSource {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(self
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        Ok(self
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
}

/// The resolved environment, in definition order, later definitions replacing earlier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    pub vars: Vec<(String, String)>,
    /// `envFrom` keys skipped because they are not valid variable names.
    pub invalid_keys: Vec<String>,
}

impl ResolvedEnv {
    fn set(&mut self, key: String, value: String) {
        if let Some(slot) = self.vars.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.vars.push((key, value));
        }
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Node allocatable used as the default for `resourceFieldRef` limits (like the kubelet).
#[derive(Clone, Copy, Debug)]
pub struct NodeAllocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

/// The pod IP and host IP this kubelet reports (all processes share the loopback).
pub const POD_IP: &str = "127.0.0.1";

/// Resolve a container's environment. The error is the message reported with reason
/// `CreateContainerConfigError`.
pub async fn resolve_env<S: ConfigSource>(
    pod: &Pod,
    container: &Container,
    source: &S,
    node: &NodeAllocatable,
) -> Result<ResolvedEnv, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = ResolvedEnv::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let data: BTreeMap<String, String> = if let Some(sref) = &from.secret_ref {
            let optional = sref.optional.unwrap_or(false);
            match source.secret(ns, &sref.name).await? {
                Some(d) => d
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                None if optional => continue,
                None => return Err(format!("secret \"{}\" not found", sref.name)),
            }
        } else if let Some(cref) = &from.config_map_ref {
            let optional = cref.optional.unwrap_or(false);
            match source.config_map(ns, &cref.name).await? {
                Some(d) => d,
                None if optional => continue,
                None => return Err(format!("configmap \"{}\" not found", cref.name)),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            let key = format!("{prefix}{k}");
            if is_env_var_name(&key) {
                out.set(key, v);
            } else {
                out.invalid_keys.push(key);
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field_ref(pod, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_field_ref(pod, container, r, node)?
            } else if let Some(s) = &from.secret_key_ref {
                let optional = s.optional.unwrap_or(false);
                match source.secret(ns, &s.name).await? {
                    Some(d) => match d.get(&s.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                s.key, s.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                }
            } else if let Some(c) = &from.config_map_key_ref {
                let optional = c.optional.unwrap_or(false);
                match source.config_map(ns, &c.name).await? {
                    Some(d) => match d.get(&c.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                c.key, c.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("configmap \"{}\" not found", c.name)),
                }
            } else {
                String::new()
            }
        } else {
            let raw = var.value.as_deref().unwrap_or("");
            expand(raw, |name| out.get(name).map(str::to_string))
        };
        out.set(var.name.clone(), value);
    }
    Ok(out)
}

fn field_ref(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let quoted = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    let v = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => POD_IP.into(),
        _ => {
            if let Some(k) = quoted("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = quoted("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    };
    Ok(v)
}

fn resource_field_ref(
    pod: &Pod,
    container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    node: &NodeAllocatable,
) -> Result<String, String> {
    let target = match r.container_name.as_deref() {
        None | Some("") => container,
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| format!("container {name} not found for resourceFieldRef"))?,
    };
    let res = target.resources.as_ref();
    let (kind, which) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource: {}", r.resource))?;
    let map = match kind {
        "limits" => res.and_then(|x| x.limits.as_ref()),
        "requests" => res.and_then(|x| x.requests.as_ref()),
        _ => return Err(format!("unsupported resource: {}", r.resource)),
    };
    let node_default = match which {
        "cpu" => node.cpu_millis as f64 / 1000.0,
        "memory" => node.memory_bytes as f64,
        "ephemeral-storage" => node.ephemeral_storage_bytes as f64,
        _ => return Err(format!("unsupported resource: {}", r.resource)),
    };
    let value = match map.and_then(|m| m.get(which)) {
        Some(q) => parse_quantity(&q.0)?,
        // Limits default to node allocatable; requests default to 0 (as in the kubelet).
        None if kind == "limits" => node_default,
        None => 0.0,
    };
    let divisor = match r.divisor.as_ref() {
        Some(d) => parse_quantity(&d.0)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(format!("invalid divisor for {}", r.resource));
    }
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// Parse a Kubernetes quantity ("500m", "1.5Gi", "2e3", "10") into a number.
pub fn parse_quantity(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let base: f64 = num.parse().map_err(|_| format!("invalid quantity {q:?}"))?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("invalid quantity {q:?}"))?;
            10f64.powi(exp)
        }
        _ => return Err(format!("invalid quantity {q:?}")),
    };
    Ok(base * mult)
}

/// Whether an `envFrom` key is usable as a variable name. Kubernetes 1.33 relaxed the
/// rule (RelaxedEnvironmentVariableValidation, on by default): any printable ASCII
/// character except `=`.
pub fn is_env_var_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| (' '..='~').contains(&c) && c != '=')
}

/// Kubernetes `$(VAR)` expansion: `$(NAME)` → value when `lookup` knows it, else left
/// as is; `$$` → `$`; any other `$x` and an unterminated `$(` are left as is.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            None => {
                out.push('$');
                rest = "";
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Expand a container's `command`/`args` against its resolved environment.
pub fn expand_all(items: &[String], env: &ResolvedEnv) -> Vec<String> {
    items
        .iter()
        .map(|s| expand(s, |n| env.get(n).map(str::to_string)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, ResourceFieldSelector, ResourceRequirements, SecretEnvSource,
        SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn lk(n: &str) -> Option<String> {
        match n {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_rules() {
        assert_eq!(expand("$(A)", lk), "alpha");
        assert_eq!(expand("x$(A)y$(A)", lk), "xalphayalpha");
        assert_eq!(expand("$(B)", lk), "$(B)");
        assert_eq!(expand("$$(A)", lk), "$(A)");
        assert_eq!(expand("$$$(A)", lk), "$alpha");
        assert_eq!(expand("a$", lk), "a$");
        assert_eq!(expand("$x$(A", lk), "$x$(A");
        assert_eq!(expand("$(EMPTY)!", lk), "!");
        assert_eq!(expand("é$é$(A)", lk), "é$éalpha");
        assert_eq!(expand("$()", lk), "$()");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").ok(), Some(0.5));
        assert_eq!(parse_quantity("2").ok(), Some(2.0));
        assert_eq!(parse_quantity("1Gi").ok(), Some(1073741824.0));
        assert_eq!(parse_quantity("64Mi").ok(), Some(67108864.0));
        assert_eq!(parse_quantity("1e3").ok(), Some(1000.0));
        assert!(parse_quantity("abc").is_err());
        assert!(parse_quantity("1Qi").is_err());
    }

    fn env_value(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }
    fn env_from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(src),
        }
    }

    fn pod_with(container: Container) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p1".into());
        pod.metadata.namespace = Some("ns1".into());
        pod.metadata.uid = Some("u-1".into());
        pod.metadata.labels = Some([("app".to_string(), "demo".to_string())].into());
        pod.metadata.annotations = Some([("a/b".to_string(), "note".to_string())].into());
        pod.spec = Some(PodSpec {
            node_name: Some("node-1".into()),
            containers: vec![container],
            ..Default::default()
        });
        pod
    }

    fn store() -> MapConfigSource {
        let mut s = MapConfigSource::default();
        s.secrets.insert(
            ("ns1".into(), "sec".into()),
            [
                ("password".to_string(), b"hunter2".to_vec()),
                ("bad=key".to_string(), b"x".to_vec()),
            ]
            .into(),
        );
        s.config_maps.insert(
            ("ns1".into(), "cm".into()),
            [
                ("MODE".to_string(), "fast".to_string()),
                ("level".to_string(), "3".to_string()),
            ]
            .into(),
        );
        s
    }

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 20 << 30,
    };

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn resolves_all_sources_in_order() {
        let c = Container {
            name: "c".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cm".into(),
                        optional: None,
                    }),
                    prefix: Some("CM_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "sec".into(),
                        optional: None,
                    }),
                    prefix: None,
                    config_map_ref: None,
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    prefix: None,
                    config_map_ref: None,
                },
            ]),
            env: Some(vec![
                env_from("POD", field("metadata.name")),
                env_from("NS", field("metadata.namespace")),
                env_from("UID", field("metadata.uid")),
                env_from("APP", field("metadata.labels['app']")),
                env_from("NOTE", field("metadata.annotations['a/b']")),
                env_from("NODE", field("spec.nodeName")),
                env_from("SA", field("spec.serviceAccountName")),
                env_from("IP", field("status.podIP")),
                env_value("GREETING", "hi $(POD) in $(NS) $(MISSING) $$(POD)"),
                env_value("CM_MODE", "override"),
                env_from(
                    "PW",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "sec".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                env_from(
                    "OPT",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cm".into(),
                            key: "nope".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
                env_from(
                    "MEM",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: None,
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                        }),
                        ..Default::default()
                    },
                ),
                env_from(
                    "CPU",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: None,
                            resource: "limits.cpu".into(),
                            divisor: None,
                        }),
                        ..Default::default()
                    },
                ),
            ]),
            resources: Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pod_with(c.clone());
        let env = resolve_env(&pod, &c, &store(), &NODE)
            .await
            .expect("resolves");
        let get = |k: &str| env.get(k).map(str::to_string);
        assert_eq!(get("POD").as_deref(), Some("p1"));
        assert_eq!(get("NS").as_deref(), Some("ns1"));
        assert_eq!(get("UID").as_deref(), Some("u-1"));
        assert_eq!(get("APP").as_deref(), Some("demo"));
        assert_eq!(get("NOTE").as_deref(), Some("note"));
        assert_eq!(get("NODE").as_deref(), Some("node-1"));
        assert_eq!(get("SA").as_deref(), Some("default"));
        assert_eq!(get("IP").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            get("GREETING").as_deref(),
            Some("hi p1 in ns1 $(MISSING) $(POD)")
        );
        assert_eq!(get("CM_MODE").as_deref(), Some("override"));
        assert_eq!(get("CM_level").as_deref(), Some("3"));
        assert_eq!(get("password").as_deref(), Some("hunter2"));
        assert_eq!(get("PW").as_deref(), Some("hunter2"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("MEM").as_deref(), Some("64"));
        // No cpu limit: node allocatable (4 cores).
        assert_eq!(get("CPU").as_deref(), Some("4"));
        assert_eq!(env.invalid_keys, vec!["bad=key".to_string()]);
        // The later definition replaced the earlier one in place.
        assert_eq!(env.vars.iter().filter(|(k, _)| k == "CM_MODE").count(), 1);
    }

    #[tokio::test]
    async fn missing_required_refs_are_config_errors() {
        let cases = [
            (
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "nosuch".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
                "secret \"nosuch\" not found",
            ),
            (
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "sec".into(),
                        key: "k".into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                },
                "couldn't find key k in Secret ns1/sec",
            ),
            (
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "nocm".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
                "configmap \"nocm\" not found",
            ),
            (field("metadata.generation"), "unsupported fieldPath"),
        ];
        for (src, want) in cases {
            let c = Container {
                name: "c".into(),
                env: Some(vec![env_from("X", src)]),
                ..Default::default()
            };
            let pod = pod_with(c.clone());
            let err = resolve_env(&pod, &c, &store(), &NODE)
                .await
                .expect_err("must fail");
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains("hunter2"));
        }
    }

    #[test]
    fn env_names() {
        assert!(is_env_var_name("A_b.c-1"));
        assert!(is_env_var_name("1A"));
        assert!(is_env_var_name("a b"));
        assert!(!is_env_var_name("a=b"));
        assert!(!is_env_var_name("tab\there"));
        assert!(!is_env_var_name(""));
    }
}
