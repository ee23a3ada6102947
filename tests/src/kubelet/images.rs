//! Image → local program mapping, and the Kubernetes rules that turn an image's
//! entrypoint/cmd plus a container's `command`/`args` into one argv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a mapped image provides: its `ENTRYPOINT`, `CMD`, `ENV` and `WORKDIR`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageEntry {
    /// The image entrypoint; `entrypoint[0]` is a local program (path or name on `PATH`).
    pub entrypoint: Vec<String>,
    /// The image's default arguments (used when the container sets neither command nor args).
    pub cmd: Vec<String>,
    /// Environment the image sets (lowest precedence).
    pub env: Vec<(String, String)>,
    /// The image's working directory (a host path) when the container sets none.
    pub working_dir: Option<PathBuf>,
}

/// Maps image references (repository only: tag and digest are ignored) to local programs.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    entries: BTreeMap<String, ImageEntry>,
}

impl ImageMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `image` (any tag/digest) to a local binary used as the image entrypoint.
    pub fn with(self, image: &str, binary: impl Into<PathBuf>) -> Self {
        let binary: PathBuf = binary.into();
        self.with_entry(
            image,
            ImageEntry {
                entrypoint: vec![binary.to_string_lossy().into_owned()],
                ..ImageEntry::default()
            },
        )
    }

    /// Map `image` to a full entry (entrypoint, cmd, env, working dir).
    pub fn with_entry(mut self, image: &str, entry: ImageEntry) -> Self {
        self.entries
            .insert(image_repository(image).to_string(), entry);
        self
    }

    pub fn lookup(&self, image: &str) -> Option<&ImageEntry> {
        self.entries.get(image_repository(image))
    }
}

/// `ghcr.io/a/b:1.2@sha256:…` → `ghcr.io/a/b`; a registry port (`host:5000/x`) is kept.
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// Why no argv could be built. The reason is reported on the container's waiting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub reason: &'static str,
    pub message: String,
}

/// The reason we report for an image that has no mapping and a container without `command`.
pub const REASON_IMAGE_NOT_MAPPED: &str = "ErrImageNeverPull";

/// Build the argv per the Kubernetes rules (`command` overrides the entrypoint, `args`
/// overrides the image cmd). `command`/`args` must already be `$(VAR)`-expanded.
///
/// When the image is mapped and `command[0]`'s file name equals the file name of the
/// mapped entrypoint (e.g. `command: ["/usr/local/bin/workpool-worker"]`), the mapped
/// local path is used instead, since the in-image path does not exist on this host.
pub fn build_argv(
    images: &ImageMap,
    image: &str,
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, ImageError> {
    let entry = images.lookup(image);
    let mut argv: Vec<String> = if !command.is_empty() {
        let mut argv: Vec<String> = command.iter().chain(args.iter()).cloned().collect();
        if let Some(local) = entry.and_then(|e| e.entrypoint.first())
            && file_name(local) == file_name(&argv[0])
        {
            argv[0] = local.clone();
        }
        argv
    } else {
        let Some(entry) = entry else {
            return Err(ImageError {
                reason: REASON_IMAGE_NOT_MAPPED,
                message: format!(
                    "Container image \"{image}\" is not present with pull policy of Never \
                     (process kubelet: the image has no ImageMap entry and the container \
                     sets no command)"
                ),
            });
        };
        let tail = if args.is_empty() { &entry.cmd } else { args };
        entry
            .entrypoint
            .iter()
            .chain(tail.iter())
            .cloned()
            .collect()
    };
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(ImageError {
            reason: "CreateContainerError",
            message: "no command specified".to_string(),
        });
    }
    argv.shrink_to_fit();
    Ok(argv)
}

fn file_name(p: &str) -> &str {
    Path::new(p)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn repository_ignores_tag_and_digest() {
        assert_eq!(image_repository("ghcr.io/a/b:1.0"), "ghcr.io/a/b");
        assert_eq!(image_repository("ghcr.io/a/b@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(image_repository("ghcr.io/a/b:1@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(image_repository("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(image_repository("localhost:5000/x:v2"), "localhost:5000/x");
        assert_eq!(image_repository("busybox"), "busybox");
    }

    #[test]
    fn command_and_args_rules() {
        let images = ImageMap::new().with_entry(
            "img",
            ImageEntry {
                entrypoint: s(&["/bin/ep"]),
                cmd: s(&["default"]),
                ..Default::default()
            },
        );
        // Neither: entrypoint + cmd.
        assert_eq!(
            build_argv(&images, "img:1", &[], &[]).ok(),
            Some(s(&["/bin/ep", "default"]))
        );
        // Args only: entrypoint + args.
        assert_eq!(
            build_argv(&images, "img", &[], &s(&["a"])).ok(),
            Some(s(&["/bin/ep", "a"]))
        );
        // Command only: the image cmd is ignored.
        assert_eq!(
            build_argv(&images, "img", &s(&["sh", "-c"]), &[]).ok(),
            Some(s(&["sh", "-c"]))
        );
        // Both.
        assert_eq!(
            build_argv(&images, "img", &s(&["sh"]), &s(&["-c", "x"])).ok(),
            Some(s(&["sh", "-c", "x"]))
        );
        // Command naming the mapped binary by its in-image path uses the local one.
        assert_eq!(
            build_argv(&images, "img", &s(&["/usr/local/bin/ep"]), &s(&["run"])).ok(),
            Some(s(&["/bin/ep", "run"]))
        );
    }

    #[test]
    fn unmapped_image() {
        let images = ImageMap::new();
        let err = build_argv(&images, "nginx:1", &[], &[]).err();
        assert_eq!(err.map(|e| e.reason), Some(REASON_IMAGE_NOT_MAPPED));
        assert_eq!(
            build_argv(&images, "nginx:1", &s(&["true"]), &[]).ok(),
            Some(s(&["true"]))
        );
    }
}
