//! List semantics of the core kinds.

use super::*;

// ---------------- list semantics ----------------

#[test]
fn core_list_semantics_table() {
    let p = |s: &str| -> Vec<String> { s.split('.').map(str::to_string).collect() };
    let m = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
    let cases = [
        ("v1", "Pod", "spec.containers", m(&["name"])),
        ("v1", "Pod", "spec.initContainers", m(&["name"])),
        ("v1", "Pod", "spec.ephemeralContainers", m(&["name"])),
        ("v1", "Pod", "spec.containers.env", m(&["name"])),
        (
            "v1",
            "Pod",
            "spec.containers.ports",
            m(&["containerPort", "protocol"]),
        ),
        (
            "v1",
            "Pod",
            "spec.containers.volumeMounts",
            m(&["mountPath"]),
        ),
        ("v1", "Pod", "spec.containers.envFrom", ListType::Atomic),
        ("v1", "Pod", "spec.containers.command", ListType::Atomic),
        ("v1", "Pod", "spec.containers.args", ListType::Atomic),
        ("v1", "Pod", "spec.volumes", m(&["name"])),
        ("v1", "Pod", "spec.imagePullSecrets", m(&["name"])),
        ("v1", "Pod", "spec.tolerations", ListType::Atomic),
        ("v1", "Pod", "status.conditions", m(&["type"])),
        ("v1", "Pod", "status.containerStatuses", ListType::Atomic),
        ("v1", "Pod", "status.podIPs", m(&["ip"])),
        ("v1", "Pod", "metadata.ownerReferences", m(&["uid"])),
        ("v1", "Pod", "metadata.finalizers", ListType::Set),
        ("v1", "Pod", "metadata.managedFields", ListType::Atomic),
        ("v1", "Service", "spec.ports", m(&["port", "protocol"])),
        ("v1", "Service", "spec.externalIPs", ListType::Atomic),
        ("v1", "Node", "status.conditions", m(&["type"])),
        ("v1", "Node", "status.addresses", m(&["type"])),
        ("v1", "Node", "spec.podCIDRs", ListType::Set),
        ("v1", "Node", "spec.taints", ListType::Atomic),
        ("v1", "Namespace", "spec.finalizers", ListType::Atomic),
        ("v1", "ConfigMap", "metadata.finalizers", ListType::Set),
        ("v1", "Event", "metadata.ownerReferences", m(&["uid"])),
        (
            "coordination.k8s.io/v1",
            "Lease",
            "metadata.finalizers",
            ListType::Set,
        ),
        (
            "apps/v1",
            "Deployment",
            "spec.template.spec.containers",
            m(&["name"]),
        ),
        (
            "apps/v1",
            "Deployment",
            "spec.template.spec.containers.env",
            m(&["name"]),
        ),
        (
            "apps/v1",
            "Deployment",
            "spec.template.metadata.finalizers",
            ListType::Set,
        ),
        ("apps/v1", "Deployment", "status.conditions", m(&["type"])),
        (
            "batch/v1",
            "CronJob",
            "spec.jobTemplate.spec.template.spec.volumes",
            m(&["name"]),
        ),
        ("v1", "Secret", "data", ListType::Atomic),
    ];
    for (av, kind, path, want) in cases {
        assert_eq!(core(av, kind).list_type(&p(path)), want, "{kind} {path}");
    }
}
