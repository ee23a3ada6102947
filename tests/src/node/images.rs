//! OCI images built from programs on this machine, for the real node's containerd.
//!
//! No base image can be pulled here, so every image is one layer holding a program, the
//! shared libraries it links (as `ldd` reports them), `/etc/passwd` and `/etc/group` with
//! `root` and the non-root user `nonroot` (65532, as distroless images have), and `/tmp`.
//! An image is written as an OCI image layout tarball and imported with
//! `ctr -n k8s.io images import` under an exact reference, so the kubelet finds it as if it
//! had been pulled (`imagePullPolicy: IfNotPresent`); a reference that was not imported gives
//! `ErrImagePull` / `ImagePullBackOff`, as on a real node with no registry.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The uid (and gid) of the non-root user in every image.
pub const NONROOT_UID: u32 = 65532;

/// The `PATH` every image sets.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One file of an image's layer.
#[derive(Debug, Clone)]
enum Entry {
    /// A file copied from this machine (symlinks followed) to `dest`.
    Host { src: PathBuf, mode: u32 },
    /// A file with the given contents.
    Data { data: Vec<u8>, mode: u32 },
    /// A directory.
    Dir { mode: u32, uid: u32 },
    /// A symbolic link to `target`.
    Symlink { target: String },
}

/// What an image is made of; [`ImageSpec::build`] writes it, [`ImageSpec::import`] loads it
/// into a containerd.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    reference: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    workdir: String,
    env: Vec<String>,
    exposed_ports: Vec<String>,
    strip: bool,
}

/// `name` with `:latest` when it names no tag or digest (`--image IMAGE=PATH` semantics).
pub fn normalize_reference(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The fully qualified form containerd stores: `redis:7` → `docker.io/library/redis:7`,
/// `me/app:1` → `docker.io/me/app:1`; a reference with a registry host stays as it is.
pub fn qualify_reference(name: &str) -> String {
    let name = normalize_reference(name);
    let first = name.split('/').next().unwrap_or("");
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

impl ImageSpec {
    /// An empty image (user 65532, `/tmp`, `/etc/passwd`, `/etc/group`) with this reference.
    pub fn new(reference: &str) -> Self {
        let mut entries = BTreeMap::new();
        for dir in ["etc", "tmp", "usr", "usr/local", "usr/local/bin", "home"] {
            let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
            entries.insert(dir.to_string(), Entry::Dir { mode, uid: 0 });
        }
        entries.insert(
            "home/nonroot".into(),
            Entry::Dir {
                mode: 0o755,
                uid: NONROOT_UID,
            },
        );
        let passwd = format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
        );
        let group = format!("root:x:0:\nnonroot:x:{NONROOT_UID}:\n");
        entries.insert(
            "etc/passwd".into(),
            Entry::Data {
                data: passwd.into_bytes(),
                mode: 0o644,
            },
        );
        entries.insert(
            "etc/group".into(),
            Entry::Data {
                data: group.into_bytes(),
                mode: 0o644,
            },
        );
        entries.insert(
            "etc/nsswitch.conf".into(),
            Entry::Data {
                data: b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
                mode: 0o644,
            },
        );
        ImageSpec {
            reference: qualify_reference(reference),
            entries,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            user: format!("{NONROOT_UID}:{NONROOT_UID}"),
            workdir: "/".into(),
            env: vec![format!("PATH={IMAGE_PATH}")],
            exposed_ports: Vec::new(),
            strip: true,
        }
    }

    /// An image whose entrypoint is `program` as `/usr/local/bin/<its file name>`, with the
    /// libraries it links: the `--image IMAGE=PATH` meaning.
    pub fn for_program(reference: &str, program: &Path) -> Result<Self> {
        let name = program
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{} has no file name", program.display()))?
            .to_string();
        let mut spec = ImageSpec::new(reference);
        let dest = spec.add_program(program, &format!("/usr/local/bin/{name}"))?;
        spec.entrypoint = vec![dest];
        Ok(spec)
    }

    /// The reference the image is imported under (fully qualified).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Adds `program` at `dest` (absolute) plus every shared library it links; returns `dest`.
    pub fn add_program(&mut self, program: &Path, dest: &str) -> Result<String> {
        if !program.is_file() {
            bail!("{} is not a file", program.display());
        }
        self.add_parents(dest);
        self.entries.insert(
            dest.trim_start_matches('/').to_string(),
            Entry::Host {
                src: program.to_path_buf(),
                mode: 0o755,
            },
        );
        for lib in linked_libraries(program)? {
            let rel = lib.trim_start_matches('/').to_string();
            self.add_parents(&lib);
            self.entries.insert(
                rel,
                Entry::Host {
                    src: PathBuf::from(&lib),
                    mode: 0o755,
                },
            );
        }
        Ok(dest.to_string())
    }

    /// Adds a file with these contents at `dest` (absolute).
    pub fn add_file(&mut self, dest: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.add_parents(dest);
        self.entries.insert(
            dest.trim_start_matches('/').to_string(),
            Entry::Data {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Adds a directory owned by `uid` at `dest` (absolute).
    pub fn add_dir(&mut self, dest: &str, mode: u32, uid: u32) -> &mut Self {
        self.add_parents(dest);
        self.entries.insert(
            dest.trim_start_matches('/').to_string(),
            Entry::Dir { mode, uid },
        );
        self
    }

    /// Adds a symbolic link at `dest` (absolute) pointing to `target`.
    pub fn add_symlink(&mut self, dest: &str, target: &str) -> &mut Self {
        self.add_parents(dest);
        self.entries.insert(
            dest.trim_start_matches('/').to_string(),
            Entry::Symlink {
                target: target.to_string(),
            },
        );
        self
    }

    fn add_parents(&mut self, dest: &str) {
        let mut path = Path::new(dest.trim_start_matches('/')).parent();
        while let Some(p) = path {
            let s = p.to_string_lossy().to_string();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s).or_insert(Entry::Dir {
                mode: 0o755,
                uid: 0,
            });
            path = p.parent();
        }
    }

    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = entrypoint.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The image's `User` (default `65532:65532`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = dir.to_string();
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    /// Declares `port/tcp` as exposed.
    pub fn expose(mut self, port: u16) -> Self {
        self.exposed_ports.push(format!("{port}/tcp"));
        self
    }

    /// Whether debug info is stripped from copied programs (default true: smaller layers).
    pub fn strip(mut self, strip: bool) -> Self {
        self.strip = strip;
        self
    }

    /// Writes the image as an OCI image layout tarball at `out`; returns the manifest digest.
    pub fn build(&self, out: &Path) -> Result<String> {
        let layer = self.layer_tar()?;
        let layer_digest = sha256(&layer);
        let created = "1970-01-01T00:00:00Z";
        let mut config = json!({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": self.user,
                "Env": self.env,
                "WorkingDir": self.workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "history": [{"created": created, "created_by": "workpool-tests node::images"}],
        });
        if !self.entrypoint.is_empty() {
            config["config"]["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = json!(self.cmd);
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            config["config"]["ExposedPorts"] = serde_json::Value::Object(ports);
        }
        let config = serde_json::to_vec(&config)?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = sha256(&manifest);
        let tag = self
            .reference
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))?;
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        append_data(
            &mut tar,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        append_data(&mut tar, "index.json", &index, 0o644)?;
        append_dir(&mut tar, "blobs", 0o755, 0)?;
        append_dir(&mut tar, "blobs/sha256", 0o755, 0)?;
        for (digest, data) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            append_data(&mut tar, &format!("blobs/sha256/{digest}"), data, 0o644)?;
        }
        tar.into_inner()?.flush()?;
        Ok(format!("sha256:{manifest_digest}"))
    }

    /// Builds the image (or takes it from the image cache, [`cache_dir`]) and imports it
    /// into the containerd at `address` (namespace `k8s.io`, where the CRI plugin looks).
    /// `work_dir` holds the tarball when there is no cache.
    pub fn import(&self, address: &Path, work_dir: &Path) -> Result<()> {
        let (tarball, temporary) = match self.cached()? {
            Some(path) => (path, false),
            None => {
                std::fs::create_dir_all(work_dir)?;
                let out = work_dir.join(format!("{}.oci.tar", self.file_stem()));
                self.build(&out)?;
                (out, true)
            }
        };
        let output = Command::new("ctr")
            .arg("--address")
            .arg(address)
            .args(["-n", "k8s.io", "images", "import", "--no-unpack"])
            .arg(&tarball)
            .output()
            .context("running ctr images import")?;
        if temporary {
            let _ = std::fs::remove_file(&tarball);
        }
        if !output.status.success() {
            bail!(
                "ctr images import {} failed: {}",
                self.reference,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// The reference as a file name.
    fn file_stem(&self) -> String {
        self.reference
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }

    /// What the image is made of, as a key: the spec and, for every file copied from
    /// this machine, its path, size and modification time (a rebuilt program is a new key).
    fn cache_key(&self) -> Result<String> {
        let mut text = format!("{self:?}");
        for entry in self.entries.values() {
            if let Entry::Host { src, .. } = entry {
                let meta =
                    std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                text.push_str(&format!("\n{} {} {modified}", src.display(), meta.len()));
            }
        }
        Ok(sha256(text.as_bytes())[..20].to_string())
    }

    /// The image's tarball in the image cache, built there when it is not: every node
    /// start imports the same images, and building one (stripping the program, hashing
    /// the layer) takes seconds, importing it a fraction of that. `None` without a cache
    /// directory. Entries of the same reference unused for 10 minutes are removed when a
    /// new one is written.
    fn cached(&self) -> Result<Option<PathBuf>> {
        let Some(dir) = cache_dir() else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)?;
        let stem = self.file_stem();
        let path = dir.join(format!("{stem}-{}.oci.tar", self.cache_key()?));
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            // Used now: not pruned while in use.
            let _ = file.set_modified(std::time::SystemTime::now());
            return Ok(Some(path));
        }
        let partial = dir.join(format!(".{stem}-{:016x}.partial", rand::random::<u64>()));
        let built = self.build(&partial);
        if let Err(e) = built {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &path)?;
        let prefix = format!("{stem}-");
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        for old in std::fs::read_dir(&dir)?.flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            let unused = old
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale);
            if name.starts_with(&prefix) && old.path() != path && unused {
                let _ = std::fs::remove_file(old.path());
            }
        }
        Ok(Some(path))
    }

    fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let strip_dir = tempfile::tempdir()?;
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode, uid } => append_dir(&mut tar, path, *mode, *uid)?,
                Entry::Data { data, mode } => append_data(&mut tar, path, data, *mode)?,
                Entry::Symlink { target } => {
                    let mut h = header(path, 0, 0o777, 0, tar::EntryType::Symlink);
                    tar.append_link(&mut h, path, target)?;
                }
                Entry::Host { src, mode } => {
                    let data = if self.strip && is_program(path) {
                        stripped(src, strip_dir.path())?
                    } else {
                        std::fs::read(src).with_context(|| format!("reading {}", src.display()))?
                    };
                    append_data(&mut tar, path, &data, *mode)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// Programs (not libraries) are stripped of debug info: a debug build of a Rust binary
/// is mostly DWARF.
fn is_program(path: &str) -> bool {
    path.starts_with("usr/local/bin/")
}

fn stripped(src: &Path, dir: &Path) -> Result<Vec<u8>> {
    let out = dir.join("stripped");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(src)
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => Ok(std::fs::read(&out)?),
        _ => Ok(std::fs::read(src).with_context(|| format!("reading {}", src.display()))?),
    }
}

fn header(path: &str, size: u64, mode: u32, uid: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(uid as u64);
    h.set_mtime(0);
    let _ = path;
    h
}

fn append_data<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let mut h = header(path, data.len() as u64, mode, 0, tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32, uid: u32) -> Result<()> {
    let mut h = header(path, 0, mode, uid, tar::EntryType::Directory);
    tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
    Ok(())
}

/// Where built images are kept between node starts: `$WORKPOOL_IMAGE_CACHE`, else
/// `$XDG_CACHE_HOME/workpool/images` or `~/.cache/workpool/images`; `WORKPOOL_IMAGE_CACHE=`
/// (empty) builds every image afresh.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("WORKPOOL_IMAGE_CACHE") {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("workpool/images")),
    }
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared libraries `program` links, absolute paths, as `ldd` reports them (the
/// dynamic loader included). A static program links none.
pub fn linked_libraries(program: &Path) -> Result<Vec<String>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("{} links a missing library: {line}", program.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
            None => line.split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

/// Finds `name` on `PATH` (or returns it when it is a path).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The `redis` image, as `images/redis.Dockerfile` builds it: Debian's `redis-server`
/// and `redis-cli` with their libraries, a shell with `cp`, `head`, `sleep`, `sort` and
/// `uniq` (the chart's HA mode starts Redis and the sentinels with a script; Debian's
/// image has them), user 65532, working directory `/data` (writable by that user),
/// `/etc/redis`, port 6379, no entrypoint and `CMD ["redis-server", "--dir", "/data",
/// "--appendonly", "yes", "--protected-mode", "no"]`.
pub fn redis_image(reference: &str) -> Result<ImageSpec> {
    let server = which("redis-server").ok_or_else(|| anyhow!("redis-server is not installed"))?;
    let cli = which("redis-cli").ok_or_else(|| anyhow!("redis-cli is not installed"))?;
    let mut spec = ImageSpec::new(reference);
    spec.add_program(&server, "/usr/bin/redis-server")?;
    spec.add_program(&cli, "/usr/bin/redis-cli")?;
    let busybox = Path::new("/bin/busybox");
    if busybox.is_file() && linked_libraries(busybox).is_ok_and(|l| l.is_empty()) {
        spec.add_program(busybox, "/usr/local/bin/busybox")?;
        for applet in ["sh", "cat", "cp", "echo", "head", "sleep", "sort", "uniq"] {
            spec.add_symlink(&format!("/usr/local/bin/{applet}"), "busybox");
        }
        spec.add_symlink("/bin/sh", "/usr/local/bin/busybox");
    }
    spec.add_dir("/data", 0o755, NONROOT_UID);
    spec.add_dir("/etc/redis", 0o755, 0);
    Ok(spec
        .workdir("/data")
        .cmd(&[
            "redis-server",
            "--dir",
            "/data",
            "--appendonly",
            "yes",
            "--protected-mode",
            "no",
        ])
        .expose(6379))
}

/// The worker image, as `images/worker.Dockerfile` builds it: `workpool-worker` as the
/// entrypoint in `/usr/local/bin`, busybox's `sh` and a few applets when this machine has
/// a static busybox, working directory `/work` owned by 65532, port 9090.
pub fn worker_image(reference: &str, worker: &Path) -> Result<ImageSpec> {
    let mut spec = ImageSpec::for_program(reference, worker)?;
    let busybox = Path::new("/bin/busybox");
    if busybox.is_file() && linked_libraries(busybox).is_ok_and(|l| l.is_empty()) {
        spec.add_program(busybox, "/usr/local/bin/busybox")?;
        for applet in [
            "sh", "ash", "cat", "cp", "echo", "env", "grep", "head", "ls", "mkdir", "mv", "printf",
            "rm", "sed", "sleep", "sort", "tail", "tee", "test", "tr", "wc", "xargs",
        ] {
            spec.add_symlink(&format!("/usr/local/bin/{applet}"), "busybox");
        }
        spec.add_symlink("/bin/sh", "/usr/local/bin/busybox");
    }
    spec.add_dir("/work", 0o755, NONROOT_UID);
    Ok(spec.workdir("/work").expose(9090))
}

/// The operator image, as `images/operator.Dockerfile` builds it: `workpool-operator` as
/// the entrypoint in `/usr/local/bin`, user 65532, port 8080.
pub fn operator_image(reference: &str, operator: &Path) -> Result<ImageSpec> {
    Ok(ImageSpec::for_program(reference, operator)?.expose(8080))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_like_containerd() {
        assert_eq!(normalize_reference("redis"), "redis:latest");
        assert_eq!(
            normalize_reference("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(qualify_reference("redis:7"), "docker.io/library/redis:7");
        assert_eq!(qualify_reference("me/app"), "docker.io/me/app:latest");
        assert_eq!(
            qualify_reference("ghcr.io/workpool-dev/workpool-worker:dev"),
            "ghcr.io/workpool-dev/workpool-worker:dev"
        );
    }

    #[test]
    fn ldd_lists_libc_and_the_loader() {
        let libs = linked_libraries(Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
        assert!(libs.iter().any(|l| l.contains("ld-linux")), "{libs:?}");
    }

    #[test]
    fn an_image_tarball_has_layout_index_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ImageSpec::for_program("example/sh", Path::new("/bin/sh")).unwrap();
        assert_eq!(spec.reference(), "docker.io/example/sh:latest");
        let out = dir.path().join("img.tar");
        let digest = spec.build(&out).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
            .collect();
        assert!(names.contains(&"index.json".to_string()), "{names:?}");
        assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
        let blob = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        assert!(names.contains(&blob), "{names:?}");
    }
}
