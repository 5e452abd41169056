//! Acceptance tests of the peer registries and the registry clients: every client round
//! trip and the OCI conformance suite against CNCF Distribution v3, plus smoke tests of
//! Debian's Distribution 2.8 and of Distribution v3 on the harness S3 server.

use testkit::clients::{self, Credentials};
use testkit::conformance::{self, Options};
use testkit::registry::{Distribution, DockerRegistry28, Storage};
use testkit::s3::S3Server;

#[test]
fn skopeo_round_trips_through_distribution() {
    let registry = Distribution::start();
    clients::skopeo_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn crane_round_trips_through_distribution() {
    let registry = Distribution::start();
    clients::crane_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn oras_round_trips_artifacts_and_referrers_through_distribution() {
    let registry = Distribution::start();
    clients::oras_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn podman_round_trips_through_distribution() {
    let registry = Distribution::start();
    clients::podman_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn containerd_round_trips_through_distribution() {
    let registry = Distribution::start();
    clients::ctr_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn helm_round_trips_charts_through_distribution() {
    let registry = Distribution::start();
    clients::helm_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn distribution_passes_the_conformance_suite() {
    let registry = Distribution::start();
    let report = conformance::run(registry.host(), &Options::distribution_v3());
    eprintln!("{}", report.summary());
    report.assert_all_passed();
    assert!(report.results_dir.join("report.html").is_file());
    assert!(
        report.passed() > 50,
        "suspiciously few tests: {}",
        report.summary()
    );
}

#[test]
fn conformance_against_no_registry_does_not_pass() {
    // A port nobody listens on: the runner may exit 0, the report must still fail.
    let port = testkit::process::free_port();
    let report = conformance::run(&format!("127.0.0.1:{port}"), &Options::default());
    let outcome = std::panic::catch_unwind(|| report.assert_all_passed());
    assert!(
        outcome.is_err(),
        "an absent registry passed: {}",
        report.summary()
    );
}

#[test]
fn a_client_round_trip_against_no_registry_fails() {
    let port = testkit::process::free_port();
    let err = clients::crane_roundtrip(&format!("127.0.0.1:{port}"), None).unwrap_err();
    assert!(format!("{err:#}").contains("crane"), "{err:#}");
}

#[test]
fn docker_registry_2_8_serves_crane_and_skopeo() {
    let registry = DockerRegistry28::start();
    clients::crane_roundtrip(registry.host(), None).unwrap();
    clients::skopeo_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn distribution_on_s3_serves_crane() {
    let s3 = S3Server::start();
    let registry = Distribution::start_with(Storage::S3(&s3)).unwrap();
    clients::crane_roundtrip(registry.host(), None).unwrap();
}

#[test]
fn conformance_defaults_catch_what_distribution_lacks() {
    // With every feature on, the reference peer must fail exactly where it is known to be
    // incomplete (sha512 content): proof that the report is read, not the exit code.
    let registry = Distribution::start();
    let report = conformance::run(registry.host(), &Options::default());
    assert!(report.problem.is_none(), "{}", report.summary());
    assert!(report.failed() > 0, "{}", report.summary());
    assert!(
        report.failing().iter().any(|name| name.contains("sha512")),
        "{}",
        report.summary()
    );
}

#[test]
fn clients_authenticate_with_credentials() {
    let user = Credentials::new("harness-user", "harness-password");
    let registry = Distribution::start_with_auth(&user).unwrap();
    assert_eq!(
        testkit::process::http_get_status(&format!("{}/v2/", registry.url())).unwrap(),
        401
    );
    // Without credentials every client must be refused.
    assert!(clients::crane_roundtrip(registry.host(), None).is_err());
    assert!(clients::oras_roundtrip(registry.host(), None).is_err());
    let wrong = Credentials::new("harness-user", "wrong");
    assert!(clients::skopeo_roundtrip(registry.host(), Some(&wrong)).is_err());
    // With them, every client round trips.
    clients::skopeo_roundtrip(registry.host(), Some(&user)).unwrap();
    clients::crane_roundtrip(registry.host(), Some(&user)).unwrap();
    clients::oras_roundtrip(registry.host(), Some(&user)).unwrap();
    clients::podman_roundtrip(registry.host(), Some(&user)).unwrap();
    clients::ctr_roundtrip(registry.host(), Some(&user)).unwrap();
    clients::helm_roundtrip(registry.host(), Some(&user)).unwrap();
    let options = Options {
        credentials: Some(user),
        ..Options::distribution_v3()
    };
    let report = conformance::run(registry.host(), &options);
    eprintln!("{}", report.summary());
    report.assert_all_passed();
}
