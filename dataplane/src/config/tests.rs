use super::*;

const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";
const SHARD_HEAD: &str =
    "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfigShard\n";

#[test]
fn stated_settings_are_read_from_the_top_level() {
    let stated = StatedSettings::of(&format!("{HEAD}storage: {{filesystem: {{root: /a}}}}\n"));
    assert!(stated.storage && !stated.uploads);
    let stated = StatedSettings::of(&format!("{HEAD}uploads: {{sessionTimeout: 1h}}\n"));
    assert!(!stated.storage && stated.uploads);
    assert_eq!(StatedSettings::of(HEAD), StatedSettings::default());
    assert_eq!(StatedSettings::of("- a list"), StatedSettings::default());
}

#[test]
fn assemble_merges_shards_in_index_order_and_validates_the_whole() {
    let index = format!(
        "{HEAD}revision: 9\nnamespaces: [{{name: one}}]\n\
         shards: [{{name: b, revision: 9}}, {{name: a, revision: 8}}]\n"
    );
    let shards = |name: &str| -> Result<Vec<String>, LoadError> {
        Ok(match name {
            "a" => vec![format!(
                "{SHARD_HEAD}revision: 8\nnamespaces: [{{name: from-a}}]\n"
            )],
            "b" => vec![format!(
                "{SHARD_HEAD}revision: 9\nnamespaces: [{{name: from-b}}]\n"
            )],
            _ => Vec::new(),
        })
    };
    let loaded = assemble(&index, shards).unwrap();
    let names: Vec<&str> = loaded
        .config
        .spec
        .namespaces
        .iter()
        .map(|ns| ns.name.as_str())
        .collect();
    assert_eq!(names, ["one", "from-b", "from-a"]);

    // The merged whole is validated: a duplicate across shards is an error.
    let clash = |name: &str| -> Result<Vec<String>, LoadError> {
        Ok(vec![format!(
            "{SHARD_HEAD}revision: {}\nnamespaces: [{{name: one}}]\n",
            if name == "b" { 9 } else { 8 }
        )])
    };
    let err = assemble(&index, clash).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert!(!err.is_incomplete());
}

#[test]
fn assemble_without_shards_is_plain_validation() {
    let err = assemble(&format!("{HEAD}region: Not_A_Region\n"), |_| {
        panic!("no shard is read")
    })
    .unwrap_err();
    assert!(err.to_string().contains("region"), "{err}");
    let loaded = assemble(&format!("{HEAD}revision: 3\n"), |_| Ok(Vec::new())).unwrap();
    assert_eq!(loaded.config.spec.revision, 3);
}

#[test]
fn a_shard_of_another_kind_is_named() {
    let index = format!("{HEAD}shards: [{{name: a}}]\n");
    let err = assemble(&index, |_| Ok(vec![HEAD.to_owned()])).unwrap_err();
    assert!(
        matches!(&err, LoadError::Shard { name, source: ConfigError::WrongKind { .. } } if name == "a"),
        "{err}"
    );
}
