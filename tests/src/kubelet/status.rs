//! Pure pieces of pod status: container states, phase, QoS class, conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::env::parse_quantity;

/// A container state as this kubelet tracks it.
#[derive(Clone, Debug, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        container_id: Option<String>,
    },
}

impl CState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        CState::Waiting {
            reason: reason.to_string(),
            message,
        }
    }
    pub fn is_running(&self) -> bool {
        matches!(self, CState::Running { .. })
    }
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
    pub fn to_k8s(&self) -> ContainerState {
        match self {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            CState::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.map(Time),
                    finished_at: Some(Time(*finished_at)),
                    container_id: container_id.clone(),
                }),
                ..Default::default()
            },
        }
    }
}

/// The reported status of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct CtrStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
}

impl CtrStatus {
    pub fn new(c: &Container) -> Self {
        CtrStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            state: CState::waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }
    pub fn to_k8s(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            state: Some(self.state.to_k8s()),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map(CState::to_k8s)
                    .unwrap_or_default(),
            ),
            restart_count: self.restart_count,
            ready: self.ready,
            started: Some(self.started),
            ..Default::default()
        }
    }
}

/// The pod phase from the regular containers, as the kubelet's `getPhase` computes it.
pub fn pod_phase(
    restart_policy: &str,
    init_pending: bool,
    init_failed: bool,
    ctrs: &[CtrStatus],
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if init_pending {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in ctrs {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            CState::Waiting { .. } => match c.last_state.as_ref().and_then(CState::exit_code) {
                Some(code) => {
                    stopped += 1;
                    if code == 0 {
                        succeeded += 1;
                    }
                }
                None => waiting += 1,
            },
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Never" if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

/// The pod's QoS class (Guaranteed / Burstable / BestEffort) from cpu and memory.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let res = c.resources.as_ref();
        let get = |m: Option<
            &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                   k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(|q| parse_quantity(&q.0).ok())
                .filter(|v| *v > 0.0)
        };
        let limits = res.and_then(|r| r.limits.as_ref());
        let requests = res.and_then(|r| r.requests.as_ref());
        for k in ["cpu", "memory"] {
            let l = get(limits, k);
            let r = get(requests, k);
            if l.is_some() || r.is_some() {
                any = true;
            }
            match (l, r) {
                (Some(l), Some(r)) if l == r => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The conditions this kubelet owns; it remembers when each last flipped.
#[derive(Clone, Debug, Default)]
pub struct OwnedConditions {
    last: BTreeMap<String, (bool, Timestamp)>,
}

impl OwnedConditions {
    /// Seed the transition times from conditions already on the object (kubelet restart).
    pub fn seed(&mut self, existing: &[PodCondition]) {
        for c in existing {
            if let Some(t) = &c.last_transition_time {
                self.last
                    .entry(c.type_.clone())
                    .or_insert((c.status == "True", t.0));
            }
        }
    }

    /// Set one condition; its transition time changes only when the status flips.
    pub fn condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
        now: Timestamp,
    ) -> PodCondition {
        let entry = self.last.entry(type_.to_string()).or_insert((status, now));
        if entry.0 != status {
            *entry = (status, now);
        }
        PodCondition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: Some(Time(entry.1)),
            last_probe_time: None,
            observed_generation: None,
        }
    }
}

/// Our conditions replace same-typed ones; others' conditions are kept in place.
pub fn merge_conditions(existing: &[PodCondition], ours: Vec<PodCondition>) -> Vec<PodCondition> {
    let mut out: Vec<PodCondition> = existing
        .iter()
        .filter(|c| !ours.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    out.extend(ours);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn st(state: CState, last: Option<CState>) -> CtrStatus {
        CtrStatus {
            state,
            last_state: last,
            ..CtrStatus::new(&Container::default())
        }
    }
    fn term(code: i32) -> CState {
        CState::Terminated {
            exit_code: code,
            signal: None,
            reason: "x".into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        }
    }
    fn run() -> CState {
        CState::Running {
            started_at: Timestamp::now(),
        }
    }

    #[test]
    fn phases() {
        let w = || st(CState::waiting("ContainerCreating", None), None);
        let backoff = |code| st(CState::waiting("CrashLoopBackOff", None), Some(term(code)));
        assert_eq!(pod_phase("Always", true, false, &[]), "Pending");
        assert_eq!(pod_phase("Never", false, true, &[]), "Failed");
        assert_eq!(pod_phase("Always", false, false, &[w()]), "Pending");
        assert_eq!(
            pod_phase("Always", false, false, &[w(), st(run(), None)]),
            "Pending"
        );
        assert_eq!(
            pod_phase("Always", false, false, &[st(run(), None)]),
            "Running"
        );
        assert_eq!(pod_phase("Always", false, false, &[backoff(1)]), "Running");
        assert_eq!(
            pod_phase("Never", false, false, &[st(term(0), None)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase(
                "Never",
                false,
                false,
                &[st(term(0), None), st(term(2), None)]
            ),
            "Failed"
        );
        assert_eq!(
            pod_phase("Never", false, false, &[st(term(2), None), st(run(), None)]),
            "Running"
        );
        assert_eq!(
            pod_phase("OnFailure", false, false, &[st(term(0), None)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("OnFailure", false, false, &[backoff(1)]),
            "Running"
        );
    }

    fn ctr(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let m = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
                    .collect()
            })
        };
        Container {
            resources: Some(ResourceRequirements {
                limits: m(limits),
                requests: m(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn qos() {
        let spec = |cs: Vec<Container>| PodSpec {
            containers: cs,
            ..Default::default()
        };
        assert_eq!(qos_class(&spec(vec![Container::default()])), "BestEffort");
        assert_eq!(
            qos_class(&spec(vec![ctr(&[("cpu", "1"), ("memory", "1Gi")], &[])])),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(vec![ctr(
                &[("cpu", "1"), ("memory", "1Gi")],
                &[("cpu", "1000m"), ("memory", "1Gi")]
            )])),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(vec![ctr(&[], &[("cpu", "100m")])])),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(vec![
                ctr(&[("cpu", "1"), ("memory", "1Gi")], &[]),
                Container::default()
            ])),
            "Burstable"
        );
    }

    #[test]
    fn transition_times_only_move_on_flips() {
        let mut oc = OwnedConditions::default();
        let t0 = Timestamp::now();
        let t1 = t0 + k8s_openapi::jiff::SignedDuration::from_secs(5);
        let t2 = t0 + k8s_openapi::jiff::SignedDuration::from_secs(9);
        let a = oc.condition("Ready", false, Some("ContainersNotReady"), None, t0);
        let b = oc.condition("Ready", false, Some("ContainersNotReady"), None, t1);
        assert_eq!(a.last_transition_time, b.last_transition_time);
        let c = oc.condition("Ready", true, None, None, t2);
        assert_eq!(c.last_transition_time, Some(Time(t2)));
        assert_eq!(c.status, "True");

        let theirs = PodCondition {
            type_: "example.com/gate".into(),
            status: "True".into(),
            ..Default::default()
        };
        let old_ready = PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        };
        let merged = merge_conditions(&[theirs.clone(), old_ready], vec![c.clone()]);
        assert_eq!(merged, vec![theirs, c]);
    }
}
