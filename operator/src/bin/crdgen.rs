//! Writes the WorkPool CRD as YAML: `crdgen` prints it, `crdgen PATH` writes PATH
//! (`crds/workpool.yaml` is generated this way; a test fails when it is stale).
#![forbid(unsafe_code)]

fn main() {
    let yaml = workpool_operator::crdgen::crd_yaml();
    match std::env::args_os().nth(1) {
        None => print!("{yaml}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.to_string_lossy());
                std::process::exit(1);
            }
        }
    }
}
