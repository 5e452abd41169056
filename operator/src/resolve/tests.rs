use std::collections::HashMap;

use crds::v1alpha1::{
    NamespaceScope, RegistryCredential, RegistryCredentialSpec, RegistryNamespace,
    RegistryNamespaceSpec, reasons,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;

fn settings() -> Settings {
    Settings::from_yaml_str(
        "region: nl-01\nregistryHost: registry.example.com\nnamespace: registry-system\n\
         organisations: {acme: {containerRegistry: true}, beta: {containerRegistry: true}, \
         nogate: {}}\n",
    )
    .unwrap()
}

fn orgs() -> Organisations {
    HashMap::from([
        ("acme-a".into(), "acme".into()),
        ("acme-b".into(), "acme".into()),
        ("beta-a".into(), "beta".into()),
        ("nogate-a".into(), "nogate".into()),
    ])
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn rns(ns: &str, name: &str, created: i64, scope: NamespaceScope) -> RegistryNamespace {
    let mut obj = RegistryNamespace::new(
        name,
        RegistryNamespaceSpec {
            name: None,
            region: "nl-01".into(),
            visibility: Default::default(),
            scope,
            immutable_tags: Vec::new(),
            description: None,
        },
    );
    obj.metadata.namespace = Some(ns.into());
    obj.metadata.creation_timestamp = Some(Time(at(created)));
    obj
}

fn cred(ns: &str, name: &str, namespaces: &[&str]) -> RegistryCredential {
    let mut obj = RegistryCredential::new(
        name,
        RegistryCredentialSpec {
            region: "nl-01".into(),
            scope: crds::config::Scope::ContainerRegistry,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
            rotation_period: None,
            rotation_overlap: None,
            secret_name: None,
            workload_identity: None,
            sync: Vec::new(),
        },
    );
    obj.metadata.namespace = Some(ns.into());
    obj
}

fn key(ns: &str, name: &str) -> Key {
    Key {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn reason(v: &Verdict) -> &str {
    match v {
        Verdict::Served => "Served",
        Verdict::Refused { reason, .. } => reason,
    }
}

#[test]
fn the_older_claim_wins_and_the_later_one_is_a_conflict() {
    let older = rns("acme-a", "shared", 0, NamespaceScope::Project);
    let later = rns("beta-a", "shared", 10, NamespaceScope::Project);
    // Order of the input does not matter.
    let index = NamespaceIndex::build(&settings(), &orgs(), [&later, &older]);
    assert_eq!(
        index.verdict(&key("acme-a", "shared")),
        Some(&Verdict::Served)
    );
    let v = index.verdict(&key("beta-a", "shared")).unwrap();
    assert_eq!(reason(v), reasons::CONFLICT);
    // The other tenant's object is not named to it.
    let Verdict::Refused {
        message, stalled, ..
    } = v
    else {
        unreachable!()
    };
    assert!(!message.contains("acme"), "{message}");
    assert!(*stalled);
    assert_eq!(index.served()["shared"].key, key("acme-a", "shared"));
}

#[test]
fn other_regions_and_deleted_objects_are_not_considered() {
    let mut other = rns("acme-a", "x", 0, NamespaceScope::Project);
    other.spec.region = "de-01".into();
    let mut deleting = rns("acme-a", "y", 0, NamespaceScope::Project);
    deleting.metadata.deletion_timestamp = Some(Time(at(5)));
    let index = NamespaceIndex::build(&settings(), &orgs(), [&other, &deleting]);
    assert_eq!(index.verdict(&key("acme-a", "x")), None);
    assert_eq!(index.verdict(&key("acme-a", "y")), None);
    assert!(index.served().is_empty());
}

#[test]
fn feature_gates_are_per_organisation() {
    let gated = rns("nogate-a", "n1", 0, NamespaceScope::Project);
    let unlabelled = rns("loose", "n2", 0, NamespaceScope::Project);
    let index = NamespaceIndex::build(&settings(), &orgs(), [&gated, &unlabelled]);
    for k in [key("nogate-a", "n1"), key("loose", "n2")] {
        assert_eq!(
            reason(index.verdict(&k).unwrap()),
            reasons::FEATURE_GATE_DISABLED
        );
    }
    assert!(index.served().is_empty());
    // A credential in such a project is refused the same way.
    let c = cred("nogate-a", "c", &["n1"]);
    let err = credential(&settings(), &orgs(), &index, &c, at(0)).unwrap_err();
    assert_eq!(reason(&err), reasons::FEATURE_GATE_DISABLED);
}

#[test]
fn invalid_names_are_reported() {
    let mut bad = rns("acme-a", "ok", 0, NamespaceScope::Project);
    bad.spec.name = Some("Bad_Name".into());
    let index = NamespaceIndex::build(&settings(), &orgs(), [&bad]);
    let v = index.verdict(&key("acme-a", "ok")).unwrap();
    assert_eq!(reason(v), reasons::INVALID_SPEC);
}

#[test]
fn tenancy_rules() {
    let project = rns("acme-a", "proj", 0, NamespaceScope::Project);
    let org = rns("acme-a", "org", 0, NamespaceScope::Organisation);
    let index = NamespaceIndex::build(&settings(), &orgs(), [&project, &org]);
    let s = settings();
    let grant = |c: &RegistryCredential| credential(&s, &orgs(), &index, c, at(0));

    // Same project: both.
    let g = grant(&cred("acme-a", "c", &["proj", "org", "proj"])).unwrap();
    assert_eq!(g.namespaces, vec!["proj".to_string(), "org".to_string()]);
    // Same organisation, other project: only the organisation-scoped one.
    assert!(grant(&cred("acme-b", "c", &["org"])).is_ok());
    let err = grant(&cred("acme-b", "c", &["proj"])).unwrap_err();
    assert_eq!(reason(&err), reasons::NOT_PERMITTED);
    // Another organisation: neither.
    for name in ["proj", "org"] {
        let err = grant(&cred("beta-a", "c", &[name])).unwrap_err();
        assert_eq!(reason(&err), reasons::NOT_PERMITTED);
    }
    // A name that exists nowhere reads exactly like one that belongs to someone else.
    let missing = grant(&cred("beta-a", "c", &["nowhere"])).unwrap_err();
    let foreign = grant(&cred("beta-a", "c", &["proj"])).unwrap_err();
    let text = |v: Verdict| match v {
        Verdict::Refused { message, .. } => message,
        Verdict::Served => String::new(),
    };
    assert_eq!(
        text(missing).replace("nowhere", "X"),
        text(foreign).replace("proj", "X")
    );
}

#[test]
fn a_conflicting_namespace_grants_nothing_to_its_project() {
    let older = rns("acme-a", "shared", 0, NamespaceScope::Organisation);
    let later = rns("beta-a", "shared", 10, NamespaceScope::Project);
    let index = NamespaceIndex::build(&settings(), &orgs(), [&older, &later]);
    let err = credential(
        &settings(),
        &orgs(),
        &index,
        &cred("beta-a", "c", &["shared"]),
        at(0),
    )
    .unwrap_err();
    assert_eq!(reason(&err), reasons::NOT_PERMITTED);
}

#[test]
fn expiry_in_the_past_is_refused() {
    let ns = rns("acme-a", "proj", 0, NamespaceScope::Project);
    let index = NamespaceIndex::build(&settings(), &orgs(), [&ns]);
    let mut c = cred("acme-a", "c", &["proj"]);
    c.spec.expires_at = Some(Time(at(-1)));
    let err = credential(&settings(), &orgs(), &index, &c, at(0)).unwrap_err();
    assert_eq!(reason(&err), reasons::EXPIRED);
    c.spec.expires_at = Some(Time(at(100)));
    let g = credential(&settings(), &orgs(), &index, &c, at(0)).unwrap();
    assert_eq!(g.expires_at, Some(at(100)));
}

#[test]
fn the_object_serving_a_name_keeps_it_against_a_newcomer_of_the_same_second() {
    let mut incumbent = rns("zz-last", "shared", 0, NamespaceScope::Project);
    let newcomer = rns("aa-first", "shared", 0, NamespaceScope::Project);
    let orgs = HashMap::from([
        ("zz-last".to_string(), "acme".to_string()),
        ("aa-first".to_string(), "acme".to_string()),
    ]);
    // Same creation second: without a status, the key decides.
    let index = NamespaceIndex::build(&settings(), &orgs, [&incumbent, &newcomer]);
    assert_eq!(index.served()["shared"].key, key("aa-first", "shared"));
    // Once one serves the name, it keeps it.
    incumbent.status = Some(crds::v1alpha1::RegistryNamespaceStatus {
        conditions: vec![crds::v1alpha1::Condition::new(
            "Ready",
            crds::v1alpha1::ConditionStatus::True,
            reasons::READY,
            "",
            1,
            &[],
            Time(at(0)),
        )],
        namespace: Some("shared".into()),
        ..Default::default()
    });
    let index = NamespaceIndex::build(&settings(), &orgs, [&newcomer, &incumbent]);
    assert_eq!(index.served()["shared"].key, key("zz-last", "shared"));
    assert_eq!(
        reason(index.verdict(&key("aa-first", "shared")).unwrap()),
        reasons::CONFLICT
    );
}

#[test]
fn a_federation_whose_issuer_the_data_plane_refuses_is_invalid_not_rendered() {
    let ns = rns("acme-a", "proj", 0, NamespaceScope::Project);
    let index = NamespaceIndex::build(&settings(), &orgs(), [&ns]);
    let mut c = cred("acme-a", "ci", &["proj"]);
    let federation = |issuer: &str| crds::v1alpha1::WorkloadIdentity {
        issuer: issuer.into(),
        audience: "registry".into(),
        claim_rules: Vec::new(),
        ca_bundle: None,
    };
    c.spec.workload_identity = Some(federation("https://ci.example.com/?tenant=1"));
    let err = credential(&settings(), &orgs(), &index, &c, at(0)).unwrap_err();
    assert_eq!(reason(&err), reasons::INVALID_SPEC);
    let Verdict::Refused { message, .. } = &err else {
        unreachable!()
    };
    assert!(
        message.contains("spec.workloadIdentity.issuer"),
        "{message}"
    );
    assert!(message.contains("query"), "{message}");
    c.spec.workload_identity = Some(federation("https://ci.example.com"));
    credential(&settings(), &orgs(), &index, &c, at(0)).unwrap();
}
