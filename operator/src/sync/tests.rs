use std::collections::BTreeMap;

use crds::v1alpha1::{PULL_SECRETS_LABEL, SyncTarget};
use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn target(names: Option<&[&str]>, selector: Option<LabelSelector>) -> SyncTarget {
    SyncTarget {
        cluster: None,
        namespaces: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        namespace_selector: selector,
        secret_name: None,
        service_accounts: Vec::new(),
    }
}

const ACME: Tenant<'static> = Tenant {
    namespace: "team-a",
    organisation: Some("acme"),
};

struct Cluster(Vec<(&'static str, BTreeMap<String, String>)>);

impl Cluster {
    fn sample() -> Self {
        Self(vec![
            ("team-a", labels(&[(crds::ORGANISATION_LABEL, "acme")])),
            (
                "team-b",
                labels(&[
                    (crds::ORGANISATION_LABEL, "acme"),
                    (PULL_SECRETS_LABEL, "accept"),
                    ("env", "prod"),
                ]),
            ),
            (
                "team-c",
                labels(&[(crds::ORGANISATION_LABEL, "acme"), ("env", "prod")]),
            ),
            (
                "globex-a",
                labels(&[
                    (crds::ORGANISATION_LABEL, "globex"),
                    (PULL_SECRETS_LABEL, "accept"),
                    ("env", "prod"),
                ]),
            ),
            ("kube-system", labels(&[])),
        ])
    }

    fn views(&self) -> impl Iterator<Item = NamespaceView<'_>> {
        self.0
            .iter()
            .map(|(name, labels)| NamespaceView { name, labels })
    }
}

#[test]
fn own_namespace_and_opted_in_namespaces_of_the_organisation_are_permitted() {
    let cluster = Cluster::sample();
    let t = target(
        Some(&[
            "team-a",
            "team-b",
            "team-c",
            "globex-a",
            "kube-system",
            "later",
        ]),
        None,
    );
    let s = select(&t, ACME, Reach::Local, cluster.views()).unwrap();
    assert_eq!(
        s.permitted.iter().map(String::as_str).collect::<Vec<_>>(),
        ["team-a", "team-b"]
    );
    let refused: Vec<&str> = s.not_permitted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(refused, ["globex-a", "kube-system", "team-c"]);
    assert!(
        s.not_permitted[2].1.contains("does not accept"),
        "{:?}",
        s.not_permitted
    );
    assert!(s.not_permitted[0].1.contains("another organisation"));
    assert_eq!(s.missing, ["later"]);
}

#[test]
fn an_opt_in_label_does_not_open_a_namespace_to_another_organisation() {
    let cluster = Cluster::sample();
    let globex = Tenant {
        namespace: "globex-a",
        organisation: Some("globex"),
    };
    let s = select(
        &target(Some(&["team-b"]), None),
        globex,
        Reach::Local,
        cluster.views(),
    )
    .unwrap();
    assert!(s.permitted.is_empty());
    assert_eq!(s.not_permitted.len(), 1);
    // A project without an organisation reaches its own namespace only.
    let lone = Tenant {
        namespace: "kube-system",
        organisation: None,
    };
    let s = select(
        &target(Some(&["kube-system", "team-b"]), None),
        lone,
        Reach::Local,
        cluster.views(),
    )
    .unwrap();
    assert_eq!(s.permitted.iter().collect::<Vec<_>>(), ["kube-system"]);
    assert_eq!(s.not_permitted.len(), 1);
}

#[test]
fn a_selector_matches_inside_the_tenant_only_and_reports_what_it_skipped() {
    let cluster = Cluster::sample();
    let prod = LabelSelector {
        match_labels: Some(labels(&[("env", "prod")])),
        match_expressions: None,
    };
    let s = select(
        &target(None, Some(prod)),
        ACME,
        Reach::Local,
        cluster.views(),
    )
    .unwrap();
    assert_eq!(s.permitted.iter().collect::<Vec<_>>(), ["team-b"]);
    // globex-a matches and accepts, but belongs to another tenant: it does not count at all.
    assert!(s.not_permitted.is_empty(), "{:?}", s.not_permitted);
    assert_eq!(s.skipped, ["team-c"]);

    // Asking for another organisation outright is refused, and selects nothing.
    for foreign in [
        LabelSelector {
            match_labels: Some(labels(&[(crds::ORGANISATION_LABEL, "globex")])),
            match_expressions: None,
        },
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: crds::ORGANISATION_LABEL.into(),
                operator: "In".into(),
                values: Some(vec!["globex".into()]),
            }]),
        },
    ] {
        let s = select(
            &target(None, Some(foreign)),
            ACME,
            Reach::Local,
            cluster.views(),
        )
        .unwrap();
        assert!(s.permitted.is_empty());
        assert_eq!(s.not_permitted.len(), 1);
        assert!(
            s.not_permitted[0].1.contains("globex"),
            "{:?}",
            s.not_permitted
        );
    }

    // Selecting by the opt-in label itself stays inside the tenant.
    let accepting = LabelSelector {
        match_labels: Some(labels(&[
            (crds::ORGANISATION_LABEL, "acme"),
            (PULL_SECRETS_LABEL, "accept"),
        ])),
        match_expressions: None,
    };
    let s = select(
        &target(None, Some(accepting)),
        ACME,
        Reach::Local,
        cluster.views(),
    )
    .unwrap();
    assert_eq!(s.permitted.iter().collect::<Vec<_>>(), ["team-b"]);
    assert!(s.not_permitted.is_empty());
}

#[test]
fn remote_clusters_permit_every_namespace_and_expressions_are_honoured() {
    let cluster = Cluster::sample();
    let not_prod = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]),
    };
    let s = select(
        &target(None, Some(not_prod)),
        ACME,
        Reach::Remote,
        cluster.views(),
    )
    .unwrap();
    assert_eq!(
        s.permitted.iter().collect::<Vec<_>>(),
        ["kube-system", "team-a"]
    );
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "Near".into(),
            values: None,
        }]),
    };
    assert!(matches!(
        select(
            &target(None, Some(bad)),
            ACME,
            Reach::Remote,
            cluster.views()
        ),
        Err(TargetError::Selector(_))
    ));
}

fn sa(entries: &[&str], added: Option<&str>) -> ServiceAccount {
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("default".into());
    sa.image_pull_secrets = (!entries.is_empty()).then(|| {
        entries
            .iter()
            .map(|n| LocalObjectReference {
                name: (*n).to_owned(),
            })
            .collect()
    });
    if let Some(added) = added {
        sa.metadata.annotations = Some(labels(&[(ADDED_ANNOTATION, added)]));
    }
    sa
}

fn names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

#[test]
fn merging_keeps_other_entries_adds_ours_once_and_records_it() {
    let other = sa(&["other-team"], None);
    let merged = with_pull_secret(&other, "registry").unwrap();
    assert_eq!(names(&merged), ["other-team", "registry"]);
    assert_eq!(
        added_by_us(&merged).into_iter().collect::<Vec<_>>(),
        ["registry"]
    );
    // Already there: no write at all.
    assert!(with_pull_secret(&merged, "registry").is_none());
    // Removal takes ours and leaves the other team's.
    let removed = without_pull_secret(&merged, "registry").unwrap();
    assert_eq!(names(&removed), ["other-team"]);
    assert!(removed.metadata.annotations.is_none());
    assert!(without_pull_secret(&removed, "registry").is_none());
}

#[test]
fn an_entry_someone_else_added_first_is_never_removed() {
    let theirs = sa(&["registry"], None);
    assert!(with_pull_secret(&theirs, "registry").is_none());
    assert!(without_pull_secret(&theirs, "registry").is_none());
    // Two of ours: removing one keeps the other recorded.
    let two = sa(&["a", "x", "b"], Some("a,b"));
    let one = without_pull_secret(&two, "a").unwrap();
    assert_eq!(names(&one), ["x", "b"]);
    assert_eq!(added_by_us(&one).into_iter().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn service_accounts_by_name_or_all() {
    let mut t = target(Some(&["team-a"]), None);
    assert!(!wants_service_account(&t, "default"));
    t.service_accounts = vec!["default".into()];
    assert!(wants_service_account(&t, "default"));
    assert!(!wants_service_account(&t, "builder"));
    t.service_accounts = vec!["*".into()];
    assert!(wants_service_account(&t, "builder"));
}
