//! `TestCluster`: a Kubernetes API for a test, with a kubeconfig, the project's CRDs
//! applied, a `kube::Client` and a namespace of its own.
//!
//! Two modes:
//! - **Local** (default): the real control plane of [`crate::controlplane`] (etcd,
//!   kube-apiserver, controller manager, scheduler built from Kubernetes' source),
//!   started once per test process and shared; every `TestCluster` works in its own
//!   namespace `wp-test-<random>`. Pods run on the process's real node
//!   ([`TestCluster::shared_node`], [`crate::node`]). Where the real control plane cannot
//!   run, [`TestCluster::start`] fails with what is missing.
//! - **External**: when `WORKPOOL_E2E_KUBECONFIG` names a kubeconfig (e.g. a kind
//!   cluster, see `tests/kind/`), [`TestCluster::start`] / [`TestCluster::start_with`]
//!   connect to that cluster instead. Plain `KUBECONFIG` is never read: a test suite
//!   only touches a cluster it was explicitly pointed at. Every external `TestCluster`
//!   works in its own namespace `wp-test-<random>` too, deleted when the cluster is
//!   dropped, also after a panic. CRDs it had to create are deleted when the last
//!   external `TestCluster` of the process is dropped. [`TestCluster::connect`] does the
//!   same for an explicit kubeconfig. [`TestCluster::is_external`] tells them apart.

use crate::controlplane::{self, ControlPlane};
use crate::node::Node;
use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// The environment variable that switches [`TestCluster`] to a real cluster: the
/// absolute path of its kubeconfig (its current context is used; `cargo test` runs tests
/// in the crate directory, so a relative path is taken from `tests/`).
pub const EXTERNAL_KUBECONFIG_ENV: &str = "WORKPOOL_E2E_KUBECONFIG";

/// Label put on namespaces and CRDs this crate creates on a real cluster.
const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "workpool-tests";

/// Finalizers the conformance tests put on objects; removed before a namespace is
/// deleted so that a test failing half-way does not leave a namespace stuck.
const TEST_FINALIZER_PREFIX: &str = "conformance.workpool.dev/";

/// How long to wait for a real cluster to settle (namespace ready, CRD gone/established).
const EXTERNAL_SETTLE: Duration = Duration::from_secs(120);

/// The kubeconfig named by `WORKPOOL_E2E_KUBECONFIG`, when set and not empty.
pub fn external_kubeconfig() -> Option<PathBuf> {
    std::env::var_os(EXTERNAL_KUBECONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// How to start a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directories whose `*.yaml` / `*.yml` files are applied at start (CRDs first).
    pub manifest_dirs: Vec<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            manifest_dirs: vec![repo_root().join("crds")],
        }
    }
}

impl ClusterOptions {
    /// Defaults plus the conformance fixtures (`tests/fixtures`, e.g. the Widget CRD).
    pub fn with_fixtures() -> Self {
        let mut o = Self::default();
        o.manifest_dirs.push(fixtures_dir());
        o
    }
}

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The repository root (the workspace directory above `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

enum Backend {
    External { server_url: String },
    Real(Arc<ControlPlane>),
}

/// Process-wide bookkeeping of external clusters: CRDs this process created are deleted
/// when the last external `TestCluster` goes (tests run in parallel and share them).
struct ExternalUsers {
    live: usize,
    created_crds: BTreeSet<String>,
}

static EXTERNAL_USERS: Mutex<ExternalUsers> = Mutex::new(ExternalUsers {
    live: 0,
    created_crds: BTreeSet::new(),
});

fn external_users() -> std::sync::MutexGuard<'static, ExternalUsers> {
    EXTERNAL_USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A namespace of its own on the local real control plane or on an external cluster.
pub struct TestCluster {
    backend: Backend,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    client: kube::Client,
    namespace: String,
    /// Namespaces deleted on drop: the own one plus adopted ones.
    namespaces: Mutex<Vec<String>>,
    /// Further API paths deleted on drop, e.g. a test's own CRD.
    cleanup_paths: Mutex<Vec<String>>,
    /// Things that live as long as the cluster, dropped first.
    attached: Vec<Box<dyn std::any::Any + Send>>,
}

impl TestCluster {
    /// Starts with defaults: `<repo>/crds/*.yaml` applied. Against an external cluster
    /// when `WORKPOOL_E2E_KUBECONFIG` is set.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Connects to the cluster `WORKPOOL_E2E_KUBECONFIG` names, or uses the shared real
    /// control plane of this process.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
        match external_kubeconfig() {
            Some(path) => Self::start_external(&path, opts).await,
            None => Self::start_real(opts).await,
        }
    }

    /// Always the local real control plane (started once per process and shared), in a
    /// namespace of its own, whatever the environment says. Fails with what is missing
    /// where it cannot run.
    pub async fn start_real(opts: ClusterOptions) -> Result<Self> {
        if let Some(reason) = controlplane::unavailable_reason() {
            bail!("the real control plane cannot run here: {reason}");
        }
        let cp = tokio::task::spawn_blocking(ControlPlane::shared)
            .await
            .context("starting the control plane")??;
        let admin = cp.admin_kubeconfig().to_path_buf();
        Self::start_against(&admin, opts, Some(cp)).await
    }

    /// Connects to the cluster of the kubeconfig at `path` (its current context), as
    /// [`start_with`](Self::start_with) does when `WORKPOOL_E2E_KUBECONFIG` is set: own
    /// namespace, CRDs created only when absent, everything removed on drop.
    pub async fn connect(path: &Path, opts: ClusterOptions) -> Result<Self> {
        Self::start_external(path, opts).await
    }

    async fn start_external(path: &Path, opts: ClusterOptions) -> Result<Self> {
        Self::start_against(path, opts, None).await
    }

    /// A cluster in its own namespace of the API server `path` names: the local real
    /// control plane `cp`, or an external cluster.
    async fn start_against(
        path: &Path,
        opts: ClusterOptions,
        cp: Option<Arc<ControlPlane>>,
    ) -> Result<Self> {
        let dir = tempdir()?;
        let namespace = unique_namespace();
        let kubeconfig = dir.path().join("kubeconfig");
        let server_url = derive_kubeconfig(path, &kubeconfig, &namespace).with_context(|| {
            format!(
                "{EXTERNAL_KUBECONFIG_ENV}={}: preparing a kubeconfig for namespace {namespace}",
                path.display()
            )
        })?;
        let client = client_for(&kubeconfig).await?;
        external_users().live += 1;
        // From here on, dropping `cluster` (also on an error below) cleans up.
        let local = cp.is_some();
        let backend = match cp {
            Some(cp) => Backend::Real(cp),
            None => Backend::External { server_url },
        };
        let cluster = TestCluster {
            backend,
            dir,
            kubeconfig,
            client,
            namespace: namespace.clone(),
            namespaces: Mutex::new(vec![namespace.clone()]),
            cleanup_paths: Mutex::new(Vec::new()),
            attached: Vec::new(),
        };
        if !local {
            eprintln!(
                "workpool-tests: using the real cluster at {} ({EXTERNAL_KUBECONFIG_ENV}), namespace {namespace}",
                cluster.server_url()
            );
        }
        cluster.create_namespace().await?;
        for d in &opts.manifest_dirs {
            cluster.apply_dir(d).await?;
        }
        Ok(cluster)
    }

    /// Creates `self.namespace` and waits until pods can be created in it (its `default`
    /// ServiceAccount exists) and, on a real cluster, its `kube-root-ca.crt` ConfigMap
    /// is there, so that later lists see a settled namespace.
    async fn create_namespace(&self) -> Result<()> {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": self.namespace, "labels": {MANAGED_BY_KEY: MANAGED_BY}}
        }))?;
        nss.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {}", self.namespace))?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        // Clusters that publish their CA put it in every namespace, kube-system included.
        let publishes_ca = self.is_external()
            && Api::<ConfigMap>::namespaced(self.client.clone(), "kube-system")
                .get_opt("kube-root-ca.crt")
                .await
                .ok()
                .flatten()
                .is_some();
        let deadline = tokio::time::Instant::now() + EXTERNAL_SETTLE;
        loop {
            let sa = sas.get_opt("default").await?.is_some();
            let ca = !publishes_ca || cms.get_opt("kube-root-ca.crt").await?.is_some();
            if sa && ca {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "namespace {} did not get its default ServiceAccount{} within {EXTERNAL_SETTLE:?}",
                    self.namespace,
                    if publishes_ca {
                        " and kube-root-ca.crt"
                    } else {
                        ""
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// True for a cluster named by a kubeconfig (`WORKPOOL_E2E_KUBECONFIG`,
    /// [`TestCluster::connect`]), false for the local real control plane.
    pub fn is_external(&self) -> bool {
        matches!(self.backend, Backend::External { .. })
    }

    /// The local real control plane, when that is the backend.
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        match &self.backend {
            Backend::Real(cp) => Some(cp),
            _ => None,
        }
    }

    /// The real node of this process's control plane ([`Node::shared`]: started by the
    /// first caller, shared by every test of the process), where this cluster's pods run
    /// from now on. An error where the real node cannot run (the reason says what is
    /// missing) and against an external cluster.
    pub async fn shared_node(&self) -> Result<&'static Node> {
        if !matches!(self.backend, Backend::Real(_)) {
            bail!("the real node runs only on the local real control plane");
        }
        tokio::task::spawn_blocking(Node::shared)
            .await
            .context("starting the real node")?
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` with a token
    /// from the TokenRequest API (one hour), for running a program with exactly the RBAC
    /// granted to it.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        }))?;
        let issued: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
        let token = issued
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("the TokenRequest for {namespace}/{name} returned no token"))?;
        // Same cluster entry as ours (server, CA), the token as the only credential.
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        doc["users"] =
            serde_yaml::from_str(&format!("- name: user\n  user:\n    token: {token}\n"))?;
        if let Some(contexts) = doc["contexts"].as_sequence_mut() {
            for c in contexts {
                c["context"]["user"] = "user".into();
                c["context"]["namespace"] = namespace.into();
            }
        }
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
        Ok(path)
    }

    /// The namespace this cluster's kubeconfig and client default to: a fresh
    /// `wp-test-<random>` one.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Path of the kubeconfig: a copy of the control plane's admin kubeconfig (or of
    /// `WORKPOOL_E2E_KUBECONFIG`) reduced to its current context, with
    /// [`namespace`](Self::namespace) as the context's namespace.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client for the cluster (cheap to clone); its default namespace is
    /// [`namespace`](Self::namespace).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        match &self.backend {
            Backend::External { server_url } => server_url.clone(),
            Backend::Real(cp) => cp.server_url().to_string(),
        }
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes namespace `name` (made by the test) when the cluster is dropped, after
    /// removing the tests' finalizers in it.
    pub fn adopt_namespace(&self, name: &str) {
        lock(&self.namespaces).push(name.to_string());
    }

    /// Sends `DELETE api_path` (e.g. `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x`)
    /// when the cluster is dropped.
    pub fn delete_on_drop(&self, api_path: &str) {
        lock(&self.cleanup_paths).push(api_path.to_string());
    }

    /// Keeps `thing` alive until the cluster is dropped (dropped before its namespace is
    /// deleted).
    pub fn attach<T: Send + 'static>(&mut self, thing: T) {
        self.attached.push(Box::new(thing));
    }

    /// Applies every `*.yaml`/`*.yml` file in `dir` (sorted; CRDs before other kinds).
    /// A missing directory is not an error (the CRDs may not exist yet).
    pub async fn apply_dir(&self, dir: &Path) -> Result<()> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in &files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            docs.extend(parse_docs(&text).with_context(|| format!("parsing {}", f.display()))?);
        }
        docs.sort_by_key(|d| d["kind"] != "CustomResourceDefinition");
        for d in docs {
            self.apply_object(&d).await?;
        }
        Ok(())
    }

    /// Server-side applies the YAML documents in `yaml` (field manager `workpool-testcluster`).
    pub async fn apply_yaml(&self, yaml: &str) -> Result<()> {
        for d in parse_docs(yaml)? {
            self.apply_object(&d).await?;
        }
        Ok(())
    }

    /// Server-side applies one object, resolving its kind through discovery. Namespaced
    /// objects without a namespace go to [`namespace`](Self::namespace).
    ///
    /// Against a real cluster, a CRD that already exists and was not installed by this
    /// crate is used as it is (never overwritten); one this process creates is deleted
    /// when the last external `TestCluster` of the process is dropped; other
    /// cluster-scoped objects are deleted when this cluster is dropped.
    pub async fn apply_object(&self, obj: &serde_json::Value) -> Result<()> {
        let api_version = obj["apiVersion"]
            .as_str()
            .ok_or_else(|| anyhow!("object without apiVersion"))?;
        let kind = obj["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("object without kind"))?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        // Only this kind's group-version: a real API server may list a group another test
        // just created (a CRD) before it serves it, which would fail a full discovery.
        // A kind that was just established may take a moment to be served as well.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (ar, caps) = loop {
            match kube::discovery::pinned_kind(&self.client, &gvk).await {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("discovery of {api_version} {kind}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(anyhow!(e))
                        .context(format!("the server does not serve {api_version} {kind}"));
                }
            }
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&self.namespace);
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        };
        let is_crd = kind == "CustomResourceDefinition";
        if is_crd {
            return self.ensure_crd(&api, name, obj).await;
        }
        if caps.scope == Scope::Cluster {
            self.delete_on_drop(&format!("{}/{name}", api.resource_url()));
        }
        api.patch(
            name,
            &PatchParams::apply("workpool-testcluster").force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
        Ok(())
    }

    /// A CRD: wait out a terminating one (another test of this process just deleted
    /// it), create it when absent (and, on an external cluster, remember that), update it
    /// when this crate installed it, leave anyone else's alone.
    async fn ensure_crd(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        obj: &serde_json::Value,
    ) -> Result<()> {
        let mut labelled = obj.clone();
        labelled["metadata"]["labels"][MANAGED_BY_KEY] = json!(MANAGED_BY);
        let apply = PatchParams::apply("workpool-testcluster").force();
        let deadline = tokio::time::Instant::now() + EXTERNAL_SETTLE;
        loop {
            let existing = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading CRD {name}"))?;
            match existing {
                Some(crd) if crd.metadata.deletion_timestamp.is_some() => {
                    if tokio::time::Instant::now() >= deadline {
                        bail!("CRD {name} is still being deleted after {EXTERNAL_SETTLE:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Some(crd) => {
                    let ours = crd
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(MANAGED_BY_KEY))
                        .is_some_and(|v| v == MANAGED_BY);
                    if ours {
                        api.patch(name, &apply, &Patch::Apply(&labelled))
                            .await
                            .with_context(|| format!("updating CRD {name}"))?;
                    } else {
                        eprintln!(
                            "workpool-tests: CRD {name} exists on the cluster and was not installed by workpool-tests: using it as it is"
                        );
                    }
                    break;
                }
                None => {
                    api.patch(name, &apply, &Patch::Apply(&labelled))
                        .await
                        .with_context(|| format!("creating CRD {name}"))?;
                    // The local control plane lives only as long as this process: its
                    // CRDs go with it. Deleting one while other tests still run would
                    // hang on their objects' finalizers (their operators are gone).
                    if !matches!(self.backend, Backend::Real(_)) {
                        external_users().created_crds.insert(name.to_string());
                    }
                    break;
                }
            }
        }
        wait_established(api, name).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("workpool-testcluster-")
        .tempdir()
        .context("creating a temporary directory")
}

fn unique_namespace() -> String {
    format!("wp-test-{:08x}", rand::random::<u32>())
}

async fn wait_established(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + EXTERNAL_SETTLE;
    loop {
        let crd = api.get(name).await?;
        let ok = crd.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("CRD {name} did not become Established");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parse_docs(text: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        if v["kind"] == "List" {
            if let Some(items) = v["items"].as_array() {
                out.extend(items.iter().cloned());
            }
            continue;
        }
        out.push(v);
    }
    Ok(out)
}

/// Copies the current context of the kubeconfig at `src` (with its cluster and user) to
/// `dst`, with `namespace` as the context's namespace and relative file paths made
/// absolute. Returns the cluster's server URL.
fn derive_kubeconfig(src: &Path, dst: &Path, namespace: &str) -> Result<String> {
    use serde_yaml::Value as Y;
    let text =
        std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let doc: Y = serde_yaml::from_str(&text).context("parsing the kubeconfig")?;
    let base = src
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let current = doc
        .get("current-context")
        .and_then(Y::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("the kubeconfig has no current-context"))?;
    let find = |list: &str, name: &str| -> Result<Y> {
        doc.get(list)
            .and_then(Y::as_sequence)
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Y::as_str) == Some(name))
            })
            .cloned()
            .ok_or_else(|| anyhow!("the kubeconfig has no {list} entry named {name:?}"))
    };
    let mut context = find("contexts", current)?;
    let cluster_name = context
        .get("context")
        .and_then(|c| c.get("cluster"))
        .and_then(Y::as_str)
        .ok_or_else(|| anyhow!("context {current:?} names no cluster"))?
        .to_string();
    let user_name = context
        .get("context")
        .and_then(|c| c.get("user"))
        .and_then(Y::as_str)
        .map(str::to_string);
    let mut cluster = find("clusters", &cluster_name)?;
    let server = cluster
        .get("cluster")
        .and_then(|c| c.get("server"))
        .and_then(Y::as_str)
        .ok_or_else(|| anyhow!("cluster {cluster_name:?} has no server"))?
        .to_string();
    if let Some(c) = cluster.get_mut("cluster") {
        absolutize(c, &["certificate-authority"], &base);
    }
    let mut users = Vec::new();
    if let Some(u) = &user_name {
        let mut user = find("users", u)?;
        if let Some(inner) = user.get_mut("user") {
            absolutize(
                inner,
                &["client-certificate", "client-key", "tokenFile"],
                &base,
            );
            if let Some(exec) = inner.get_mut("exec") {
                // A relative command with a separator is relative to the kubeconfig.
                if let Some(cmd) = exec.get("command").and_then(Y::as_str)
                    && cmd.contains('/')
                    && Path::new(cmd).is_relative()
                {
                    let abs = base.join(cmd).to_string_lossy().into_owned();
                    exec["command"] = Y::String(abs);
                }
            }
        }
        users.push(user);
    }
    match context.get_mut("context").and_then(Y::as_mapping_mut) {
        Some(m) => {
            m.insert(Y::from("namespace"), Y::from(namespace));
        }
        None => bail!("context {current:?} has no context body"),
    }
    let mut out = serde_yaml::Mapping::new();
    out.insert(Y::from("apiVersion"), Y::from("v1"));
    out.insert(Y::from("kind"), Y::from("Config"));
    out.insert(Y::from("clusters"), Y::Sequence(vec![cluster]));
    out.insert(Y::from("users"), Y::Sequence(users));
    out.insert(Y::from("contexts"), Y::Sequence(vec![context]));
    out.insert(Y::from("current-context"), Y::from(current));
    let text = serde_yaml::to_string(&Y::Mapping(out)).context("writing the kubeconfig")?;
    std::fs::write(dst, text).with_context(|| format!("writing {}", dst.display()))?;
    Ok(server)
}

fn absolutize(m: &mut serde_yaml::Value, keys: &[&str], base: &Path) {
    for k in keys {
        if let Some(p) = m.get(*k).and_then(serde_yaml::Value::as_str)
            && !p.is_empty()
            && Path::new(p).is_relative()
        {
            let abs = base.join(p).to_string_lossy().into_owned();
            m[*k] = serde_yaml::Value::String(abs);
        }
    }
}

/// A `kube::Client` from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("reading kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    kube::Client::try_from(cfg).context("building client")
}

/// Deletes a real cluster's test namespaces (after removing the tests' finalizers in
/// them and force-deleting their pods) and the given API paths. Best effort: what
/// cannot be deleted is reported with the command to do it by hand.
async fn clean_up_external(kubeconfig: &Path, namespaces: &[String], paths: &[String]) {
    let client = match client_for(kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "workpool-tests: cannot clean up {namespaces:?} {paths:?}: {e:#}; delete them by hand"
            );
            return;
        }
    };
    for ns in namespaces {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        if let Ok(list) = cms.list(&ListParams::default()).await {
            for cm in list.items {
                let held = cm
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|f| f.starts_with(TEST_FINALIZER_PREFIX)));
                if let (true, Some(name)) = (held, cm.metadata.name.as_deref()) {
                    let _ = cms
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            }
        }
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
        let _ = pods
            .delete_collection(
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
                &ListParams::default(),
            )
            .await;
        let nss: Api<Namespace> = Api::all(client.clone());
        match nss.delete(ns, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                eprintln!(
                    "workpool-tests: could not delete namespace {ns}: {e}; run `kubectl delete namespace {ns}`"
                );
            }
        }
    }
    for path in paths {
        delete_path(&client, path).await;
    }
}

async fn delete_path(client: &kube::Client, path: &str) {
    let req = match axum::http::Request::delete(path).body(Vec::new()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("workpool-tests: bad cleanup path {path}: {e}");
            return;
        }
    };
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => eprintln!(
            "workpool-tests: could not delete {path}: {e}; delete it by hand (kubectl delete --raw {path})"
        ),
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.attached.clear();
        let kubeconfig = self.kubeconfig.clone();
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        let paths = std::mem::take(&mut *lock(&self.cleanup_paths));
        // Drop may run inside a (current-thread) runtime, also while unwinding: do the
        // requests on a thread of our own with its own runtime and wait for it.
        let worker = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("workpool-tests: no runtime for cleaning up {namespaces:?}: {e}");
                    external_users().live -= 1;
                    return;
                }
            };
            let limit = Duration::from_secs(60);
            // (The timer is made inside the runtime: `timeout` needs its reactor.)
            if rt
                .block_on(async {
                    tokio::time::timeout(limit, clean_up_external(&kubeconfig, &namespaces, &paths))
                        .await
                })
                .is_err()
            {
                eprintln!(
                    "workpool-tests: cleaning up {namespaces:?} {paths:?} took over {limit:?}; check the cluster"
                );
            }
            // The lock is held while the last user deletes the CRDs, so that a cluster
            // starting meanwhile sees them terminating (and waits) rather than present.
            let mut users = external_users();
            users.live = users.live.saturating_sub(1);
            if users.live == 0 && !users.created_crds.is_empty() {
                let crds: Vec<String> = std::mem::take(&mut users.created_crds)
                    .into_iter()
                    .map(|n| format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}"))
                    .collect();
                let _ = rt.block_on(async {
                    tokio::time::timeout(limit, clean_up_external(&kubeconfig, &[], &crds)).await
                });
            }
        });
        if worker.join().is_err() {
            eprintln!("workpool-tests: the cleanup thread panicked");
        }
    }
}

/// The `kubectl` to drive clusters with: the one built at the pinned Kubernetes release
/// (`scripts/k8s-bin.sh`) when it is there, so that client and server are one version;
/// else `kubectl` from `PATH`.
pub fn kubectl_path() -> PathBuf {
    controlplane::bin_dir()
        .map(|d| d.join("kubectl"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}
