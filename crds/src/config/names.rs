//! Name rules of the document: registry namespace names, region names, tag patterns.
//!
//! They are stated here, not borrowed from the data plane, so that the operator and admission
//! checks apply exactly the rules the data plane applies.

/// Longest registry namespace name.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest tag pattern (a tag is at most 128 characters).
pub const MAX_TAG_PATTERN_LEN: usize = 128;

/// Checks a registry namespace name: one path component of the OCI repository name grammar
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), at most 63 characters.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    const RULE: &str = "1-63 lowercase letters and digits, separated by '.', '_', '__' or \
                        dashes, starting and ending with a letter or digit; no '/'";
    let invalid = |why: &str| {
        Err(format!(
            "{name:?} is not a valid namespace name: {why} ({RULE})"
        ))
    };
    let b = name.as_bytes();
    if b.is_empty() {
        return invalid("it is empty");
    }
    if b.len() > MAX_NAMESPACE_LEN {
        return invalid("it is too long");
    }
    if name.contains('/') {
        return invalid("a namespace is a single path component");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return invalid("it must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &name[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return invalid(&format!("{sep:?} is not a separator"));
        }
    }
    Ok(())
}

/// Checks a region name: a DNS label (1-63 lowercase letters, digits and '-').
pub fn check_region_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid region name (1-63 lowercase letters, digits and '-', \
             not starting or ending with '-')"
        ))
    }
}

/// Checks a tag pattern: tag characters (`A-Za-z0-9_.-`) plus the wildcards `*` and `?`.
pub fn check_tag_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_TAG_PATTERN_LEN {
        return Err(format!(
            "{pattern:?} is not a valid tag pattern: 1-{MAX_TAG_PATTERN_LEN} characters"
        ));
    }
    match pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '?')))
    {
        Some(c) => Err(format!(
            "{pattern:?} is not a valid tag pattern: {c:?} is not allowed (tag characters \
             A-Z a-z 0-9 _ . - and the wildcards * and ?)"
        )),
        None => Ok(()),
    }
}

/// Whether `tag` matches a tag pattern: `*` matches any run of characters (also none), `?`
/// exactly one, anything else itself.
pub fn tag_pattern_matches(pattern: &str, tag: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), tag.as_bytes());
    // Iterative glob matching with one backtracking point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in [
            "acme",
            "acme-platform",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "0",
            "x1",
        ] {
            check_namespace_name(ok).unwrap();
        }
        for bad in [
            "",
            "Acme",
            "-a",
            "a-",
            "a/b",
            "a..b",
            "a___b",
            "a b",
            &"a".repeat(64),
        ] {
            let err = check_namespace_name(bad).unwrap_err();
            assert!(
                err.contains("is not a valid namespace name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn tag_patterns() {
        check_tag_pattern("v*").unwrap();
        check_tag_pattern("release-?.*").unwrap();
        assert!(check_tag_pattern("").is_err());
        assert!(check_tag_pattern("v/1").unwrap_err().contains("'/'"));
        assert!(tag_pattern_matches("v*", "v1.2.3"));
        assert!(tag_pattern_matches("v*", "v"));
        assert!(!tag_pattern_matches("v*", "latest"));
        assert!(tag_pattern_matches("*-rc?", "1.0-rc1"));
        assert!(!tag_pattern_matches("*-rc?", "1.0-rc10"));
        assert!(tag_pattern_matches("latest", "latest"));
        assert!(!tag_pattern_matches("latest", "latest2"));
        assert!(tag_pattern_matches("a*b*c", "aXbYbZc"));
        assert!(tag_pattern_matches("*", ""));
    }
}
