//! The `WorkPool` custom resource (`workpool.dev/v1alpha1`): types only.
//!
//! Every field carries a description (doc comments become the schema's descriptions, so
//! `kubectl explain workpool.spec` documents them), defaults are in the schema, and CEL
//! rules say what the schema alone cannot (exactly one of `url`/`urlSecretRef`,
//! `minReplicas <= maxReplicas`, immutable stream and group, ...). `crds/workpool.yaml`
//! is generated from these types by the `crdgen` binary.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the WorkPool kind.
pub const GROUP: &str = "workpool.dev";
/// API version of the WorkPool kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of the WorkPool kind.
pub const API_VERSION: &str = "workpool.dev/v1alpha1";
/// The kind.
pub const KIND: &str = "WorkPool";

/// The worker's own default for `--visibility-timeout` (seconds).
pub const DEFAULT_VISIBILITY_TIMEOUT_SECONDS: i32 = 30;
/// The worker's own default for `--max-deliveries`.
pub const DEFAULT_MAX_DELIVERIES: i32 = 5;

/// A pool of worker pods that consume one Redis stream through one consumer group. The
/// operator keeps `replicas` pods alive (or the number the autoscaler asks for), replaces
/// pods that fail, and on scale-in removes idle workers first.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "workpool.dev",
    version = "v1alpha1",
    kind = "WorkPool",
    plural = "workpools",
    singular = "workpool",
    shortname = "wp",
    category = "all",
    namespaced,
    status = "WorkPoolStatus",
    derive = "PartialEq",
    doc = "A WorkPool is a set of worker pods sharing one Redis Streams queue; the workpool operator keeps the right number of them alive.",
    validation = Rule::new("size(self.metadata.name) <= 63").message("a WorkPool's name is used as a label value: at most 63 characters"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        description = "Pods the operator wants",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Pods that are ready",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Busy",
        type_ = "integer",
        description = "Pods holding at least one task",
        json_path = ".status.busyReplicas"
    ),
    printcolumn(
        name = "Draining",
        type_ = "integer",
        description = "Pods told to stop taking tasks, finishing what they hold",
        json_path = ".status.drainingReplicas"
    ),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        description = "Tasks waiting or in flight",
        json_path = ".status.queue.backlog"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        description = "The Ready condition",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!(has(self.delivery) && has(self.delivery.deadLetterStream) && has(self.queue.redis.stream)) || self.delivery.deadLetterStream != self.queue.redis.stream"
).message("delivery.deadLetterStream must differ from queue.redis.stream").field_path(".delivery.deadLetterStream"))]
#[serde(rename_all = "camelCase")]
pub struct WorkPoolSpec {
    /// Where the pool's tasks come from.
    pub queue: QueueSpec,
    /// How tasks are delivered to the workers (passed to every worker as WORKPOOL_* environment).
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// Number of worker pods when `autoscaling` is absent (this is what `kubectl scale` sets).
    /// With `autoscaling`, the autoscaler decides and this field is ignored.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Scale the pool on queue depth. When absent the pool runs `replicas` pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Freeze the pool: while true the operator creates, deletes and drains no pod (a
    /// failed or deleted pod is not replaced, a scale is not followed); it keeps reading
    /// the queue and writing status. Like a Deployment's `spec.paused`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// How pods leave: a pod the operator wants gone (scale-in, an older template, scale
    /// to zero) while its worker holds tasks is first told to stop taking tasks, and is
    /// deleted once it holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// How a template change rolls out: new pods first, old pods drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// The worker pod. The operator adds its labels, an owner reference, a restricted
    /// security context where the template says nothing, and the WORKPOOL_* environment
    /// (queue URL, stream, group, consumer name, delivery settings) to the container named
    /// `worker`, or else to the first container.
    //
    // Kept as JSON and read as a PodTemplateSpec when pods are built, so that a template
    // the schema lets through but that is not a valid PodTemplateSpec (a string where a
    // number belongs, ...) is reported on this pool's conditions instead of breaking the
    // operator's watch of every pool.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: TemplateJson,
}

/// A pod template as compact JSON text: what the operator's pool cache holds of each
/// pool's template. As a `serde_json::Value` a small template took ~4.7 KiB (a map node per
/// object); as text it takes its length, which mattered at 10,000 pools. Read back with
/// [`TemplateJson::value`] when pods are built (once per reconcile: microseconds).
#[derive(Clone, PartialEq, Eq)]
pub struct TemplateJson(Box<str>);

impl TemplateJson {
    /// The template as a JSON value.
    pub fn value(&self) -> serde_json::Value {
        // Text this type wrote from a value: it parses (Null only if that ever broke).
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl Default for TemplateJson {
    fn default() -> Self {
        TemplateJson::from(serde_json::Value::Object(Default::default()))
    }
}

impl From<serde_json::Value> for TemplateJson {
    fn from(v: serde_json::Value) -> Self {
        TemplateJson(v.to_string().into_boxed_str())
    }
}

impl std::fmt::Debug for TemplateJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TemplateJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TemplateJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(TemplateJson::from)
    }
}

fn default_replicas() -> i32 {
    1
}

/// Draining pods before deleting them.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// A draining pod still holding tasks after this many seconds is deleted anyway: its
    /// worker then gets the pod's termination grace period to finish and hands back the
    /// rest (they run again elsewhere). Absent: no limit, a draining pod waits for its
    /// tasks however long they take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_seconds: Option<i64>,
}

/// Rolling out a template change.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Pods a rollout may run above the pool's bound (`autoscaling.maxReplicas`, else the
    /// desired count) while pods of the older template drain: a number, or a percentage of
    /// the bound (`"25%"`, rounded up). At least one. Default `25%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_percent_schema")]
    pub max_surge: Option<serde_json::Value>,
}

fn int_or_percent_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A number of pods, or a percentage such as \"25%\".",
        "x-kubernetes-int-or-string": true,
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^[0-9]+%$"}
        ]
    })
}

/// The queue backend of a pool. Exactly one backend must be set (today: `redis`).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// A Redis stream and consumer group.
    pub redis: RedisQueueSpec,
}

/// A Redis stream read by one consumer group.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlSecretRef)").message("set exactly one of url and urlSecretRef"))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.url) || self.url.startsWith('rediss')").message("tls (a CA or client certificate) needs a TLS URL: rediss://, rediss+sentinel:// or rediss+cluster://").field_path(".tls"))]
#[x_kube(validation = Rule::new("!has(self.url) || !(self.url.startsWith('redis+cluster://') || self.url.startsWith('rediss+cluster://')) || !has(self.stream) || !self.stream.matches('[{}]')").message("on Redis Cluster the stream name must not contain { or }: workpool adds the hash tag itself").field_path(".stream"))]
#[x_kube(validation = Rule::new("!has(oldSelf.partitions) || (has(self.partitions) ? self.partitions : 1) >= oldSelf.partitions").message("partitions may grow but never shrink: the tasks of a removed partition would never be read").field_path(".partitions"))]
#[x_kube(validation = Rule::new("(has(self.stream) ? self.stream : '') == (has(oldSelf.stream) ? oldSelf.stream : '')").message("stream is immutable: the pool's consumers and their pending tasks live in it"))]
#[x_kube(validation = Rule::new("(has(self.group) ? self.group : '') == (has(oldSelf.group) ? oldSelf.group : '')").message("group is immutable: the pool's consumers and their pending tasks live in it"))]
#[serde(rename_all = "camelCase")]
pub struct RedisQueueSpec {
    /// Where the queue lives. One Redis: `redis://redis.workpool-system:6379/0`
    /// (`rediss://` for TLS, `unix://` for a socket). A Sentinel-managed primary, followed
    /// across failovers: `redis+sentinel://[user:pass@]h1:26379,h2:26379/MASTER[/db]`
    /// (sentinel credentials as `?sentinel_password=...`). A Redis Cluster:
    /// `redis+cluster://[user:pass@]h1:7000,h2:7001`. `rediss+sentinel://` and
    /// `rediss+cluster://` use TLS. Use `urlSecretRef` instead when the URL carries a
    /// password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(redis|rediss|unix|redis\\\\+unix|redis\\\\+sentinel|rediss\\\\+sentinel|redis\\\\+cluster|rediss\\\\+cluster)://.+')").message("url must start with redis://, rediss://, unix://, redis+unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"))]
    pub url: Option<String>,
    /// A key of a Secret in the pool's namespace that holds the Redis URL. Workers read it
    /// through `secretKeyRef`; it is never copied into the pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// The task stream. Defaults to the WorkPool's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub stream: Option<String>,
    /// The consumer group. Defaults to the WorkPool's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub group: Option<String>,
    /// Partitions of the pool (default 1): each its own stream, group and dead-letter
    /// stream (`<stream>`, `<stream>:1`, ...; hash-tagged on Redis Cluster, so partitions
    /// spread over the cluster's nodes), to go past one Redis core. Producers spread tasks
    /// over them, workers read them all, the autoscaler scales on their sum. May grow,
    /// never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub partitions: Option<i32>,
    /// TLS material for `rediss` URLs, by Secret reference: a private CA and a client
    /// certificate (mTLS). The workers get them mounted as files; the operator's queue
    /// probe uses the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsSpec>,
}

/// TLS settings of a pool's Redis connections (all optional).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisTlsSpec {
    /// A key of a Secret in the pool's namespace holding the PEM certificate(s) of the CA
    /// that signed the Redis servers' certificates (instead of the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// A Secret in the pool's namespace with the client certificate and its key (e.g. of
    /// type `kubernetes.io/tls`), for servers that require client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<ClientCertSecretRef>,
}

/// A key of a Secret holding a CA certificate.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key whose value is the PEM CA certificate(s).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

/// A Secret holding a client certificate and its key.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key whose value is the PEM certificate (chain).
    #[serde(default = "default_cert_key")]
    #[schemars(length(min = 1, max = 253))]
    pub cert_key: String,
    /// Key whose value is the PEM private key.
    #[serde(default = "default_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".to_string()
}

fn default_key_key() -> String {
    "tls.key".to_string()
}

/// A key of a Secret in the WorkPool's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data whose value is the Redis URL.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".to_string()
}

/// Delivery settings; the defaults are the worker's own.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// A task held this long by a silent worker (crashed, killed, partitioned) is reclaimed
    /// by another worker. Live workers renew their tasks, so long tasks are not run twice.
    #[serde(default = "default_visibility_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub visibility_timeout_seconds: i32,
    /// A task delivered this many times without success moves to the dead-letter stream.
    #[serde(default = "default_max_deliveries")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_deliveries: i32,
    /// The dead-letter stream. Defaults to `<stream>:dead` (per partition: `<partition
    /// stream>:dead`). A name given here is used as is on one Redis or Sentinel with one
    /// partition; on Redis Cluster or with several partitions partition i's dead letters go
    /// to `<partition i's stream>:<this name>` (it must share the partition's hash slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub dead_letter_stream: Option<String>,
    /// Record each task's outcome (done or dead-lettered, the handler's output, error,
    /// timings) for producers that wait for it or ask for it (docs/protocol.md section 8).
    /// Off when absent: nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSpec>,
}

/// Task results (the worker's `--results-ttl`).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResultsSpec {
    /// How long a task's result is kept in Redis, in seconds (at most a year).
    #[schemars(range(min = 1, max = 31536000))]
    pub ttl_seconds: i32,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            visibility_timeout_seconds: DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            dead_letter_stream: None,
            results: None,
        }
    }
}

fn default_visibility_timeout() -> i32 {
    DEFAULT_VISIBILITY_TIMEOUT_SECONDS
}

fn default_max_deliveries() -> i32 {
    DEFAULT_MAX_DELIVERIES
}

/// Queue-depth autoscaling: desired = ceil(backlog / targetBacklogPerReplica), clamped to
/// [minReplicas, maxReplicas], with the behaviour of HPA autoscaling/v2.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("!has(self.fallbackReplicas) || self.fallbackReplicas <= self.maxReplicas").message("fallbackReplicas must not exceed maxReplicas").field_path(".fallbackReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// The fewest pods; 0 lets an idle pool scale to zero.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// The most pods, counting pods that are still terminating.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Tasks (waiting + in flight) one worker should have: desired = ceil(backlog / this).
    #[serde(default = "default_target_backlog")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_replica: i32,
    /// A pool at zero leaves zero only when the backlog exceeds this.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_backlog: i32,
    /// How often the queue is read, in seconds.
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i32,
    /// How long the queue must stay empty before the pool returns to zero pods (when
    /// `minReplicas` is 0), in seconds.
    #[serde(default = "default_scale_to_zero_delay")]
    #[schemars(range(min = 0))]
    pub scale_to_zero_delay_seconds: i32,
    /// Pods to run while the queue cannot be read (QueueReachable=False). When absent the
    /// pool keeps its current size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fallback_replicas: Option<i32>,
    /// Scaling behaviour, with the shape and defaults of HPA autoscaling/v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,
}

fn default_target_backlog() -> i32 {
    10
}

fn default_poll_interval() -> i32 {
    5
}

fn default_scale_to_zero_delay() -> i32 {
    120
}

/// Scale-up and scale-down rules (HPA autoscaling/v2 `behavior`).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Rules for scaling up. HPA's default: no stabilization; at most +100% or +4 pods
    /// (whichever is more) every 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Rules for scaling down. HPA's default: 300 s stabilization; at most -100% every 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// Rules for one direction of scaling.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations of this many past seconds are considered: the highest for scale-down,
    /// the lowest for scale-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Rate limits; which one applies is chosen by `selectPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ScalingPolicy>>,
    /// Which policy applies when several are given: `Max` (the one allowing the largest
    /// change), `Min` (the smallest), `Disabled` (no scaling in this direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    /// A change smaller than this fraction of the current size is ignored (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: Option<f64>,
}

/// One rate limit.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` (an absolute number of pods) or `Percent` (of the current size).
    #[serde(rename = "type")]
    pub type_: PolicyType,
    /// The number of pods or the percentage.
    #[schemars(range(min = 1))]
    pub value: i32,
    /// The window, in seconds, the limit applies to.
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

/// Kind of a rate limit.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    /// An absolute number of pods.
    Pods,
    /// A percentage of the current number of pods.
    Percent,
}

/// How to pick among several policies.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// Observed state of a WorkPool, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkPoolStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the pool that are neither terminating nor draining.
    #[serde(default)]
    pub replicas: i32,
    /// Of those, pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods whose consumer holds at least one task (draining ones included).
    #[serde(default)]
    pub busy_replicas: i32,
    /// Pods the operator wants (from `replicas` or the autoscaler).
    #[serde(default)]
    pub desired_replicas: i32,
    /// Pods told to stop taking tasks and not yet deleted (they finish what they hold).
    /// Not counted in `replicas` or `readyReplicas`.
    #[serde(default)]
    pub draining_replicas: i32,
    /// Pods of the current template (draining ones excluded).
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the pool's pods (for the scale subresource and `kubectl get pods -l`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The queue as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// When the operator last changed the number of pods to follow a new desired count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Ready, QueueReachable, Degraded and Scaling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The queue as last read by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Tasks waiting (not yet delivered to the group) plus in flight (pending).
    pub backlog: i64,
    /// Tasks delivered to a worker and not yet acknowledged.
    pub pending: i64,
    /// Entries in the dead-letter stream.
    pub dead_letters: i64,
    /// When the oldest task in flight was enqueued (RFC 3339). It changes only when that
    /// task changes; its age is the metric `workpool_queue_oldest_pending_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_time: Option<String>,
    /// Consumers in the group.
    #[serde(default)]
    pub consumers: i32,
    /// Per partition (pools of more than one partition; the fields above are the sums).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of the queue as last read.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// The partition's stream (its key in Redis).
    pub stream: String,
    /// Tasks waiting or in flight in this partition.
    pub backlog: i64,
    /// Tasks delivered and not yet acknowledged in this partition.
    pub pending: i64,
    /// Entries in this partition's dead-letter stream.
    pub dead_letters: i64,
}

impl PartitionStatus {
    /// The partitions of a pool's stats (none for a one-partition pool: the queue status
    /// says it all).
    pub fn of(st: &workpool_worker::queue::QueueStats) -> Vec<PartitionStatus> {
        if st.partitions.len() <= 1 {
            return Vec::new();
        }
        st.partitions
            .iter()
            .map(|p| PartitionStatus {
                stream: p.stream.clone(),
                backlog: p.backlog as i64,
                pending: p.pending as i64,
                dead_letters: p.dead_letters as i64,
            })
            .collect()
    }
}

/// A condition (the shape of metav1.Condition).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, QueueReachable, Degraded or Scaling.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A CamelCase word saying why.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A PodTemplateSpec: the worker pod (see `kubectl explain pod`). The operator merges its labels, environment and security defaults into it.",
        "type": "object",
        "properties": {
            "metadata": {
                "description": "Labels and annotations for the pods (the operator adds its own labels).",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "spec": {
                "description": "The pod spec (see `kubectl explain pod.spec`). At least one container; the one named `worker` (or else the first) gets the WORKPOOL_* environment.",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "description": "The pod's containers.",
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "description": "A container (see `kubectl explain pod.spec.containers`).",
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true
                        }
                    }
                }
            }
        },
        "required": ["spec"]
    })
}

impl WorkPool {
    /// The task stream: `spec.queue.redis.stream` or the pool's name.
    pub fn stream(&self) -> String {
        self.spec
            .queue
            .redis
            .stream
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The consumer group: `spec.queue.redis.group` or the pool's name.
    pub fn group(&self) -> String {
        self.spec
            .queue
            .redis
            .group
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The dead-letter stream: `spec.delivery.deadLetterStream` or `<stream>:dead`
    /// (of a standalone one-partition pool; see [`WorkPool::queue_pool`] for the others).
    pub fn dead_letter_stream(&self) -> String {
        self.spec
            .delivery
            .dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.stream()))
    }

    /// The number of partitions (`spec.queue.redis.partitions`, default 1).
    pub fn partitions(&self) -> u32 {
        self.spec
            .queue
            .redis
            .partitions
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The pool's key names (partitions, hash tags on Cluster); `cluster` from the URL.
    pub fn queue_pool(&self, cluster: bool) -> workpool_worker::queue::Pool {
        let mut p = workpool_worker::queue::Pool::new(self.stream(), self.group())
            .with_partitions(self.partitions())
            .with_cluster(cluster);
        if let Some(d) = &self.spec.delivery.dead_letter_stream {
            p = p.with_dead_letter_stream(d.clone());
        }
        p
    }

    /// Whether the pool reads anything of its Redis target from Secrets (URL, CA, client
    /// certificate).
    pub fn reads_secrets(&self) -> bool {
        let r = &self.spec.queue.redis;
        r.url_secret_ref.is_some()
            || r.tls
                .as_ref()
                .is_some_and(|t| t.ca_secret_ref.is_some() || t.client_cert_secret_ref.is_some())
    }

    /// Whether the pool refers to the Secret `name` (URL, CA or client certificate).
    pub fn references_secret(&self, name: &str) -> bool {
        self.secret_names().any(|s| s == name)
    }

    /// The names of the Secrets the pool refers to (URL, CA, client certificate; a name
    /// may come twice), all in the pool's namespace.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let r = &self.spec.queue.redis;
        let tls = r.tls.as_ref();
        [
            r.url_secret_ref.as_ref().map(|s| s.name.as_str()),
            tls.and_then(|t| t.ca_secret_ref.as_ref())
                .map(|s| s.name.as_str()),
            tls.and_then(|t| t.client_cert_secret_ref.as_ref())
                .map(|s| s.name.as_str()),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> serde_json::Value {
        json!({
            "metadata": {"labels": {"team": "a", "tier": "b"}},
            "spec": {"containers": [{
                "name": "worker",
                "image": "w:1",
                "args": ["run", "--builtin", "sleep"],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            }], "terminationGracePeriodSeconds": 30},
        })
    }

    #[test]
    fn a_template_reads_back_as_the_json_it_was_given() {
        let wp: WorkPool = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"queue": {"redis": {"url": "redis://r:6379"}}, "template": template()},
        }))
        .expect("a WorkPool");
        assert_eq!(wp.spec.template.value(), template());
        // And it serializes as the object, not as a string.
        let back = serde_json::to_value(&wp).expect("serializes");
        assert_eq!(back["spec"]["template"], template());
        // From text too (the watch's path), and the wrong shape is kept as given, to be
        // reported on the pool's conditions when pods are built.
        let text = r#"{"spec": {"terminationGracePeriodSeconds": "thirty", "containers": [{"name": "w"}]}}"#;
        let t: TemplateJson = serde_json::from_str(text).expect("any JSON object");
        assert_eq!(t.value()["spec"]["terminationGracePeriodSeconds"], "thirty");
    }

    #[test]
    fn a_template_is_kept_as_compact_text() {
        let t = TemplateJson::from(template());
        // Debug shows the text kept.
        let text = format!("{t:?}");
        assert_eq!(text, template().to_string());
        assert!(!text.contains(": "), "{text}");
        assert_eq!(TemplateJson::default().value(), json!({}));
    }
}
