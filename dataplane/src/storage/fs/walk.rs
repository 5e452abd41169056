//! Walking the repositories tree for the catalog.

use std::io;
use std::path::Path;

use super::MANIFESTS_DIR;
use super::layout::read_dir_names;
use crate::oci::RepoName;

/// Whether a repository directory records at least one manifest revision.
pub(super) fn has_manifest(repo_dir: &Path) -> io::Result<bool> {
    let manifests = repo_dir.join(MANIFESTS_DIR);
    for (alg, kind) in read_dir_names(&manifests)? {
        if kind.is_dir()
            && read_dir_names(&manifests.join(alg))?
                .iter()
                .any(|(_, k)| k.is_file())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn walk_repositories(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<RepoName>,
) -> io::Result<()> {
    for (name, kind) in read_dir_names(dir)? {
        if !kind.is_dir() || name.starts_with('_') {
            continue;
        }
        let sub = dir.join(&name);
        prefix.push(name);
        if has_manifest(&sub)? {
            match prefix.join("/").parse::<RepoName>() {
                Ok(repo) => out.push(repo),
                Err(_) => {
                    tracing::warn!(path = %sub.display(), "skipping an invalid repository directory")
                }
            }
        }
        walk_repositories(&sub, prefix, out)?;
        prefix.pop();
    }
    Ok(())
}
