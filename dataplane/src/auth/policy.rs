//! The authorization rule, in one place: scope × namespace × visibility × action.
//!
//! A repository `<namespace>/<path>` belongs to the registry namespace of its first
//! component. Nothing is allowed in a namespace the configuration does not declare (so
//! pushing to an unknown namespace is denied, and repositories are created by the first push
//! into a declared one). In a declared namespace anyone may pull when it is public; a grant of
//! `containerRegistry:pull` adds pull; `containerRegistry` and `containerRegistry:all` add
//! push and delete.

use std::collections::{BTreeMap, HashMap};

use crate::config::{Config, Scope, Visibility};
use crate::oci::RepoName;

/// What a request wants to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs, push manifests and tags, mount blobs in.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// The action's name in token scopes (`pull`, `push`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Delete => "delete",
        }
    }

    /// The action named in a token scope (`*` is handled by the caller).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pull" => Some(Self::Pull),
            "push" => Some(Self::Push),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// Every action.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Self = Self(0);
    /// Pull only.
    pub const PULL: Self = Self(1);
    /// Pull, push and delete.
    pub const ALL: Self = Self(0b111);

    fn bit(action: Action) -> u8 {
        match action {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    /// Whether the set holds `action`.
    pub fn contains(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    /// The set with `action` added.
    pub fn with(self, action: Action) -> Self {
        Self(self.0 | Self::bit(action))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions in the set, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// The namespaces a principal holds a scope on. When several grants name one namespace, the
/// broader scope wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeMap<String, Scope>);

impl Grants {
    /// No grant (anonymous).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds `scope` on each of `namespaces`.
    pub fn add<'a>(&mut self, scope: Scope, namespaces: impl IntoIterator<Item = &'a String>) {
        for ns in namespaces {
            let entry = self.0.entry(ns.clone()).or_insert(scope);
            if scope.allows_push() {
                *entry = scope;
            }
        }
    }

    /// The scope held on `namespace`, if any.
    pub fn scope(&self, namespace: &str) -> Option<Scope> {
        self.0.get(namespace).copied()
    }

    /// The namespaces granted.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// The declared namespaces and their visibility.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(HashMap<String, Visibility>);

impl Namespaces {
    /// The namespaces of a configuration.
    pub fn from_config(config: &Config) -> Self {
        Self(
            config
                .spec
                .namespaces
                .iter()
                .map(|ns| (ns.name.clone(), ns.visibility))
                .collect(),
        )
    }

    /// The visibility of a declared namespace.
    pub fn visibility(&self, namespace: &str) -> Option<Visibility> {
        self.0.get(namespace).copied()
    }

    /// The public namespaces.
    pub fn public(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(_, v)| **v == Visibility::Public)
            .map(|(n, _)| n.as_str())
    }
}

/// What `grants` allow on `repo`, given the declared `namespaces`.
pub fn permitted(namespaces: &Namespaces, grants: &Grants, repo: &RepoName) -> Actions {
    let ns = repo.namespace();
    // A repository lives inside a namespace: `<namespace>/<repository...>`.
    if ns.len() == repo.as_str().len() {
        return Actions::NONE;
    }
    let Some(visibility) = namespaces.visibility(ns) else {
        return Actions::NONE;
    };
    match grants.scope(ns) {
        Some(scope) if scope.allows_push() => Actions::ALL,
        Some(_) => Actions::PULL,
        None if visibility == Visibility::Public => Actions::PULL,
        None => Actions::NONE,
    }
}

/// Whether the catalog shows repositories of `namespace` to the holder of `grants`.
pub fn lists_namespace(namespaces: &Namespaces, grants: &Grants, namespace: &str) -> bool {
    match namespaces.visibility(namespace) {
        Some(Visibility::Public) => true,
        Some(Visibility::Private) => grants.scope(namespace).is_some(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceConfig;

    fn namespaces() -> Namespaces {
        let mut config = Config::default();
        for (name, visibility) in [("pub", Visibility::Public), ("priv", Visibility::Private)] {
            config.spec.namespaces.push(NamespaceConfig {
                name: name.into(),
                visibility,
                immutable_tags: Vec::new(),
            });
        }
        Namespaces::from_config(&config)
    }

    fn repo(name: &str) -> RepoName {
        name.parse().unwrap()
    }

    #[test]
    fn scope_times_visibility() {
        let ns = namespaces();
        let anon = Grants::none();
        let mut pull = Grants::none();
        pull.add(
            Scope::ContainerRegistryPull,
            &["priv".to_owned(), "pub".to_owned()],
        );
        let mut push = Grants::none();
        push.add(Scope::ContainerRegistry, &["priv".to_owned()]);

        assert_eq!(permitted(&ns, &anon, &repo("pub/app")), Actions::PULL);
        assert_eq!(permitted(&ns, &anon, &repo("priv/app")), Actions::NONE);
        assert_eq!(permitted(&ns, &pull, &repo("priv/app")), Actions::PULL);
        assert_eq!(permitted(&ns, &pull, &repo("pub/a/b")), Actions::PULL);
        assert_eq!(permitted(&ns, &push, &repo("priv/app")), Actions::ALL);
        assert_eq!(permitted(&ns, &push, &repo("pub/app")), Actions::PULL);
        // Undeclared namespaces and bare namespace names hold nothing, for anyone.
        assert_eq!(permitted(&ns, &push, &repo("other/app")), Actions::NONE);
        assert_eq!(permitted(&ns, &push, &repo("priv")), Actions::NONE);
        assert_eq!(permitted(&ns, &anon, &repo("pub")), Actions::NONE);
    }

    #[test]
    fn the_broader_scope_wins() {
        let ns = namespaces();
        let mut g = Grants::none();
        g.add(Scope::ContainerRegistryAll, &["priv".to_owned()]);
        g.add(Scope::ContainerRegistryPull, &["priv".to_owned()]);
        assert_eq!(permitted(&ns, &g, &repo("priv/x")), Actions::ALL);
    }

    #[test]
    fn catalog_shows_public_and_granted_namespaces() {
        let ns = namespaces();
        let mut g = Grants::none();
        g.add(Scope::ContainerRegistryPull, &["priv".to_owned()]);
        assert!(lists_namespace(&ns, &Grants::none(), "pub"));
        assert!(!lists_namespace(&ns, &Grants::none(), "priv"));
        assert!(lists_namespace(&ns, &g, "priv"));
        assert!(!lists_namespace(&ns, &g, "other"));
    }

    #[test]
    fn action_sets() {
        let a = Actions::NONE.with(Action::Push);
        assert!(a.contains(Action::Push) && !a.contains(Action::Pull));
        assert_eq!(Actions::ALL.iter().count(), 3);
        assert!(Actions::NONE.is_empty());
        assert_eq!(Action::parse("delete"), Some(Action::Delete));
        assert_eq!(Action::parse("*"), None);
    }
}
