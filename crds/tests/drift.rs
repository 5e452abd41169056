//! The committed CRD YAML is what the Rust types generate, in `crds/yaml` and in the Helm
//! chart's `charts/registry/crds` alike.

use std::path::Path;

/// The files of `dir` that differ from the generated CRDs, are missing, or are not generated
/// at all.
fn stale_files(dir: &Path) -> Vec<String> {
    let documents = crds::crd_documents();
    let mut stale = Vec::new();
    for (file, yaml) in &documents {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == *yaml => {}
            Ok(_) => stale.push(format!("{file} differs")),
            Err(err) => stale.push(format!("{file}: {err}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !documents.iter().any(|(file, _)| *file == name) {
                stale.push(format!("{name} is not a generated CRD"));
            }
        }
    }
    stale
}

#[test]
fn committed_crds_match_the_types() {
    let stale = stale_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml"));
    assert!(
        stale.is_empty(),
        "crds/yaml is out of date ({}); run `cargo run -p crds --bin crdgen -- --out crds/yaml`",
        stale.join(", ")
    );
}

#[test]
fn chart_crds_match_the_types() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/registry/crds");
    let stale = stale_files(&chart);
    assert!(
        stale.is_empty(),
        "charts/registry/crds is out of date ({}); run \
         `cargo run -p crds --bin crdgen -- --out charts/registry/crds`",
        stale.join(", ")
    );
}
