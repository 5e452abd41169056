//! The rules of a document that its types alone cannot express.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    Config, ConfigError, Problem, check_namespace_name, check_region_name, check_tag_pattern,
};

impl Config {
    /// Checks the rules the schema alone cannot express; reports every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });

        if let Err(message) = check_region_name(&self.spec.region) {
            problem("region".into(), message);
        }

        match (&self.settings.storage.filesystem, &self.settings.storage.s3) {
            (None, None) => problem(
                "storage".into(),
                "exactly one backend is required: `filesystem` or `s3`".into(),
            ),
            (Some(_), Some(_)) => problem(
                "storage".into(),
                "`filesystem` and `s3` are mutually exclusive: configure exactly one".into(),
            ),
            (Some(fs), None) => {
                if fs.root.as_os_str().is_empty() {
                    problem("storage.filesystem.root".into(), "must not be empty".into());
                }
            }
            (None, Some(s3)) => {
                if s3.bucket.is_empty() {
                    problem("storage.s3.bucket".into(), "must not be empty".into());
                }
                if let Some(endpoint) = &s3.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    problem(
                        "storage.s3.endpoint".into(),
                        format!("must be an http:// or https:// URL, found {endpoint:?}"),
                    );
                }
                if s3.prefix.starts_with('/') || s3.prefix.contains("//") {
                    problem(
                        "storage.s3.prefix".into(),
                        "must be a relative key prefix without empty components".into(),
                    );
                }
                if let Some(redirect) = &s3.redirect
                    && (redirect.ttl.0 < Duration::from_secs(60)
                        || redirect.ttl.0 > Duration::from_secs(7 * 24 * 3600))
                {
                    problem(
                        "storage.s3.redirect.ttl".into(),
                        "must be between 1m and 7d (the longest a presigned URL may live)".into(),
                    );
                }
            }
        }

        if self.settings.uploads.session_timeout.0.is_zero() {
            problem(
                "uploads.sessionTimeout".into(),
                "must be longer than zero".into(),
            );
        }

        for (path, value) in [
            ("gc.grace", self.settings.gc.grace.0),
            ("gc.interval", self.settings.gc.interval.0),
        ] {
            if value < Duration::from_secs(1) {
                problem(path.into(), "must be at least 1s".into());
            }
        }
        let metering = self.settings.metering.interval.0;
        if metering < Duration::from_secs(1) || metering > Duration::from_secs(3600) {
            problem(
                "metering.interval".into(),
                "must be between 1s and 1h".into(),
            );
        }

        let connections = &self.settings.connections;
        for (path, value, max, max_text) in [
            (
                "connections.headerTimeout",
                connections.header_timeout.0,
                Duration::from_secs(600),
                "10m",
            ),
            (
                "connections.idleTimeout",
                connections.idle_timeout.0,
                Duration::from_secs(3600),
                "1h",
            ),
        ] {
            if value < Duration::from_secs(1) || value > max {
                problem(path.into(), format!("must be between 1s and {max_text}"));
            }
        }

        let logins = &self.settings.logins;
        for (path, rate) in [
            ("logins.perSource", &logins.per_source),
            ("logins.perCredential", &logins.per_credential),
        ] {
            if !(1..=1_000_000).contains(&rate.failures) {
                problem(
                    format!("{path}.failures"),
                    "must be between 1 and 1000000".into(),
                );
            }
            if rate.per.0 < Duration::from_secs(1) || rate.per.0 > Duration::from_secs(86_400) {
                problem(format!("{path}.per"), "must be between 1s and 24h".into());
            }
        }

        let mut declared = BTreeSet::new();
        for (i, ns) in self.spec.namespaces.iter().enumerate() {
            let path = format!("namespaces[{i}].name");
            if let Err(message) = check_namespace_name(&ns.name) {
                problem(path, message);
            } else if !declared.insert(ns.name.as_str()) {
                problem(path, format!("duplicate namespace {:?}", ns.name));
            }
            for (j, pattern) in ns.immutable_tags.iter().enumerate() {
                if let Err(message) = check_tag_pattern(pattern) {
                    problem(format!("namespaces[{i}].immutableTags[{j}]"), message);
                }
            }
        }
        let mut check_refs = |base: String, namespaces: &[String]| {
            for (j, name) in namespaces.iter().enumerate() {
                if !declared.contains(name.as_str()) {
                    problems.push(Problem {
                        path: format!("{base}.namespaces[{j}]"),
                        message: format!("namespace {name:?} is not declared in `namespaces`"),
                    });
                }
            }
        };
        for (i, c) in self.spec.credentials.iter().enumerate() {
            check_refs(format!("credentials[{i}]"), &c.namespaces);
        }
        for (i, f) in self.spec.federations.iter().enumerate() {
            check_refs(format!("federations[{i}]"), &f.namespaces);
        }
        for (i, r) in self.spec.retention.iter().enumerate() {
            check_refs(
                format!("retention[{i}]"),
                std::slice::from_ref(&r.namespace),
            );
        }
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });

        let mut ids = BTreeSet::new();
        for (i, c) in self.spec.credentials.iter().enumerate() {
            if c.id.is_empty() {
                problem(format!("credentials[{i}].id"), "must not be empty".into());
            } else if !ids.insert(c.id.as_str()) {
                problem(
                    format!("credentials[{i}].id"),
                    format!("duplicate credential id {:?}", c.id),
                );
            }
            if let Err(message) = check_secret_hash(&c.secret_hash) {
                problem(format!("credentials[{i}].secretHash"), message);
            }
            if let (Some(nb), Some(exp)) = (&c.not_before, &c.expires_at)
                && exp.0 <= nb.0
            {
                problem(
                    format!("credentials[{i}].expiresAt"),
                    "must be later than notBefore".into(),
                );
            }
            for (j, old) in c.previous_secrets.iter().enumerate() {
                if let Err(message) = check_secret_hash(&old.secret_hash) {
                    problem(
                        format!("credentials[{i}].previousSecrets[{j}].secretHash"),
                        message,
                    );
                }
            }
        }

        for (i, f) in self.spec.federations.iter().enumerate() {
            if let Err(message) = check_issuer(&f.issuer) {
                problem(format!("federations[{i}].issuer"), message);
            }
            if f.audience.is_empty() {
                problem(
                    format!("federations[{i}].audience"),
                    "must not be empty".into(),
                );
            }
            if let Some(bundle) = &f.ca_bundle
                && !bundle.contains("-----BEGIN CERTIFICATE-----")
            {
                problem(
                    format!("federations[{i}].caBundle"),
                    "must hold PEM certificates (-----BEGIN CERTIFICATE-----)".into(),
                );
            }
            for (j, rule) in f.claim_rules.iter().enumerate() {
                if rule.claim.is_empty() {
                    problem(
                        format!("federations[{i}].claimRules[{j}].claim"),
                        "must not be empty".into(),
                    );
                }
                if rule.values.is_empty() {
                    problem(
                        format!("federations[{i}].claimRules[{j}].values"),
                        "must list at least one accepted value".into(),
                    );
                }
            }
        }

        let mut key_ids = BTreeSet::new();
        for (i, key) in self.spec.tokens.keys.iter().enumerate() {
            if key.id.is_empty() {
                problem(format!("tokens.keys[{i}].id"), "must not be empty".into());
            } else if !key_ids.insert(key.id.as_str()) {
                problem(
                    format!("tokens.keys[{i}].id"),
                    format!("duplicate key id {:?}", key.id),
                );
            }
            if key.private_key.is_empty() {
                problem(
                    format!("tokens.keys[{i}].privateKey"),
                    "must not be empty".into(),
                );
            }
        }
        if let Some(realm) = &self.spec.tokens.realm
            && !(realm.starts_with("https://") || realm.starts_with("http://"))
        {
            problem(
                "tokens.realm".into(),
                format!("must be an absolute http:// or https:// URL, found {realm:?}"),
            );
        }
        if self.spec.tokens.ttl.0 < Duration::from_secs(30)
            || self.spec.tokens.ttl.0 > Duration::from_secs(3600)
        {
            problem(
                "tokens.ttl".into(),
                "must be between 30s and 1h: access tokens are short-lived".into(),
            );
        }
        match &self.spec.tokens.active {
            Some(active) if !key_ids.contains(active.as_str()) => problem(
                "tokens.active".into(),
                format!("names key {active:?}, which is not in tokens.keys"),
            ),
            None if !self.spec.tokens.keys.is_empty() => problem(
                "tokens.active".into(),
                "must name the key that signs new tokens".into(),
            ),
            _ => {}
        }

        for (i, r) in self.spec.retention.iter().enumerate() {
            if r.keep_last_tags.is_none() && r.max_age.is_none() && !r.untagged {
                problem(
                    format!("retention[{i}]"),
                    "selects nothing: set keepLastTags, maxAge or untagged".into(),
                );
            }
        }

        let mut shard_names = BTreeSet::new();
        for (i, s) in self.spec.shards.iter().enumerate() {
            let name_ok = !s.name.is_empty()
                && s.name.len() <= 253
                && s.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && !s.name.starts_with('.')
                && !s.name.contains("..");
            if !name_ok {
                problem(
                    format!("shards[{i}].name"),
                    format!(
                        "{:?} is not a valid shard name (a Kubernetes object name: lowercase \
                         letters, digits, '-' and '.')",
                        s.name
                    ),
                );
            } else if !shard_names.insert(s.name.as_str()) {
                problem(
                    format!("shards[{i}].name"),
                    format!("duplicate shard {:?}", s.name),
                );
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// A secret hash is an argon2 PHC string; anything else (a plaintext secret pasted by
/// mistake, another algorithm) is refused.
fn check_secret_hash(hash: &str) -> Result<(), String> {
    let algorithm_ok = ["$argon2id$", "$argon2i$", "$argon2d$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix));
    if algorithm_ok && hash.split('$').count() >= 5 {
        Ok(())
    } else {
        Err(
            "must be an argon2 hash in PHC format ($argon2id$v=19$...), as printed by \
             `dataplane hash-secret`; secrets are never stored in plain text"
                .into(),
        )
    }
}

/// Checks an OIDC issuer URL: `https://`, or plain `http://` on a loopback address only (an
/// issuer's discovery document and JWKS decide whose tokens are believed, so anyone on a plain
/// HTTP path could serve their own keys and mint identities). OIDC issuers carry no query or
/// fragment.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url::Url::parse(issuer)
        .map_err(|e| format!("must be an absolute https:// URL ({e}), found {issuer:?}"))?;
    if url.host().is_none() {
        return Err(format!("must name a host, found {issuer:?}"));
    }
    let loopback = is_loopback(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "must be an https:// URL, found {issuer:?}: plain http:// is allowed only for \
                 loopback issuers (localhost, 127.0.0.0/8, [::1]), since anyone on the path \
                 could serve their own signing keys"
            ));
        }
        other => {
            return Err(format!(
                "must be an https:// URL, found the scheme {other:?} in {issuer:?}"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("must not carry credentials, found {issuer:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "must not have a query or fragment (OIDC issuers have neither), found {issuer:?}"
        ));
    }
    Ok(())
}

/// Whether `text` is a plain `http://` URL whose host is a loopback address (`localhost`,
/// 127.0.0.0/8 or `[::1]`): the one case where an OIDC fetch may go without TLS.
pub fn is_loopback_http(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| url.scheme() == "http" && is_loopback(&url))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
