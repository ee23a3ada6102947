//! `TestCluster`: the API server double on a free loopback port, a kubeconfig for it in
//! a temporary directory, the project's CRDs applied, and a `kube::Client`.

use crate::apiserver::{ApiServer, FaultInjector, ServerConfig};
use anyhow::{Context, Result, anyhow};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, Scope};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to start a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Loopback port; 0 = a free one.
    pub port: u16,
    pub server: ServerConfig,
    /// Directories whose `*.yaml` / `*.yml` files are applied at start (CRDs first).
    pub manifest_dirs: Vec<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            port: 0,
            server: ServerConfig::default(),
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

/// A running test control plane (API server double; kubelets attach later).
pub struct TestCluster {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    client: kube::Client,
    /// Things that live as long as the cluster (kubelets, schedulers), dropped first.
    attached: Vec<Box<dyn std::any::Any + Send>>,
}

impl TestCluster {
    /// Starts with defaults: free port, `<repo>/crds/*.yaml` applied.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], opts.port));
        let server = ApiServer::start(addr, opts.server.clone())
            .await
            .with_context(|| format!("binding the API server double on {addr}"))?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-testcluster-")
            .tempdir()
            .context("creating a temporary directory")?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server.url())?;
        let client = client_for(&kubeconfig).await?;
        let cluster = TestCluster {
            server,
            dir,
            kubeconfig,
            client,
            attached: Vec::new(),
        };
        for d in &opts.manifest_dirs {
            cluster.apply_dir(d).await?;
        }
        Ok(cluster)
    }

    /// Path of the kubeconfig (`server: http://127.0.0.1:PORT`, no auth, namespace default).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client for the cluster (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        self.server.url()
    }

    pub fn faults(&self) -> FaultInjector {
        self.server.faults()
    }

    /// The API server double itself (history compaction, direct object inspection).
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    // ---------------------------------------------------------------------------
    // KUBELET ATTACHMENT POINT. The process kubelet (and trivial scheduler) is written
    // elsewhere as `crate::kubelet::Kubelet::start(client, config)`; a test (or a helper
    // added next to this comment by its author) starts it with `self.client()` and hands
    // the handle to `attach` so it lives, and is dropped, with the cluster:
    //
    //     let kubelet = crate::kubelet::Kubelet::start(cluster.client(), cfg).await?;
    //     cluster.attach(kubelet);
    // ---------------------------------------------------------------------------

    /// Keeps `thing` alive until the cluster is dropped (dropped before the server).
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

    /// Server-side applies one object, resolving its kind through discovery.
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
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .context("API discovery")?;
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| anyhow!("the server does not serve {api_version} {kind}"))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        };
        api.patch(
            name,
            &PatchParams::apply("workpool-testcluster").force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
        if kind == "CustomResourceDefinition" {
            wait_established(&api, name).await?;
        }
        Ok(())
    }
}

async fn wait_established(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    for _ in 0..100 {
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow!("CRD {name} did not become Established"))
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

/// Writes a kubeconfig pointing at `server` (plain HTTP, no credentials).
pub fn write_kubeconfig(path: &Path, server: &str) -> Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: workpool-test\n  cluster:\n    server: {server}\nusers:\n- name: workpool-test\n  user: {{}}\ncontexts:\n- name: workpool-test\n  context:\n    cluster: workpool-test\n    user: workpool-test\n    namespace: default\ncurrent-context: workpool-test\n"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A `kube::Client` from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("reading kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    kube::Client::try_from(cfg).context("building client")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Kubelets go first so their pods' processes stop while the API still answers.
        self.attached.clear();
    }
}
