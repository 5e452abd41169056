//! Real registry clients round-trip images, artifacts and charts through the real binary,
//! with identical digests (each round trip in `testkit::clients` compares them).

mod common;

use common::Dataplane;

fn with_server(roundtrip: fn(&str, Option<&testkit::clients::Credentials>) -> anyhow::Result<()>) {
    let root = tempfile::tempdir().unwrap();
    let server = Dataplane::start(root.path(), &[]);
    if let Err(err) = roundtrip(&server.host(), None) {
        panic!("{err:#}\n---- server log ----\n{}", server.log());
    }
}

#[test]
fn skopeo_copies_an_image_built_with_umoci() {
    with_server(testkit::clients::skopeo_roundtrip);
}

#[test]
fn crane_pushes_and_pulls() {
    with_server(testkit::clients::crane_roundtrip);
}

#[test]
fn oras_pushes_attaches_and_discovers() {
    with_server(testkit::clients::oras_roundtrip);
}

#[test]
fn podman_pushes_and_pulls() {
    with_server(testkit::clients::podman_roundtrip);
}

#[test]
fn containerd_ctr_pushes_and_pulls() {
    with_server(testkit::clients::ctr_roundtrip);
}

#[test]
fn helm_pushes_and_pulls_a_chart() {
    with_server(testkit::clients::helm_roundtrip);
}
