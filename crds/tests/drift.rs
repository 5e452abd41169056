//! The committed CRD YAML is what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let mut stale = Vec::new();
    for (file, yaml) in crds::crd_documents() {
        let path = dir.join(&file);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => {}
            Ok(_) => stale.push(format!("{file} differs")),
            Err(err) => stale.push(format!("{file}: {err}")),
        }
    }
    assert!(
        stale.is_empty(),
        "crds/yaml is out of date ({}); run `cargo run -p crds --bin crdgen -- --out crds/yaml`",
        stale.join(", ")
    );
}
