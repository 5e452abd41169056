//! The OCI distribution-spec conformance suite, all four categories (pull, push, content
//! discovery, content management), against the real binary. The verdict comes from the
//! runner's report, never from its exit code.

mod common;

use common::Dataplane;

#[test]
fn oci_conformance_suite_passes() {
    let root = tempfile::tempdir().unwrap();
    let server = Dataplane::start(root.path(), &[]);
    let report =
        testkit::conformance::run(&server.host(), &testkit::conformance::Options::default());
    eprintln!("{}", report.summary());
    report.assert_all_passed();
    assert!(
        report.unexercised_categories().is_empty(),
        "{:?}",
        report.unexercised_categories()
    );
}
