//! Locating harness binaries and the repository root.
//!
//! Go-built binaries live in the harness cache (`$REGISTRY_HARNESS_CACHE/bin`, default
//! `~/.cache/registry-harness/bin`); Debian packages are found on `PATH` (plus the `sbin`
//! directories). `tests/harness/install` provides all of them.

use std::env;
use std::path::{Path, PathBuf};

/// The repository root (the workspace directory holding `tests/harness`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testkit lives at <root>/tests/testkit")
        .to_path_buf()
}

/// The harness binary cache: `$REGISTRY_HARNESS_CACHE`, else `~/.cache/registry-harness`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("REGISTRY_HARNESS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/registry-harness")
}

/// Finds a harness binary, or `None` if it is not installed.
///
/// Looks in `$REGISTRY_HARNESS_CACHE/bin`, then `~/.cache/registry-harness/bin`, then
/// `PATH`, `/usr/sbin` and `/sbin` (for tools installed as Debian packages).
pub fn try_bin(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = env::var_os("REGISTRY_HARNESS_CACHE").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/registry-harness/bin"));
    }
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Finds a harness binary.
///
/// # Panics
/// If the binary is missing, with a message telling how to install it.
pub fn bin(name: &str) -> PathBuf {
    try_bin(name).unwrap_or_else(|| {
        panic!(
            "test tool `{name}` not found in {}/bin or on PATH: run `tests/harness/install` \
             (from {}) first",
            cache_dir().display(),
            repo_root().display()
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A binary of this workspace's packages in the profile directory of the running test
/// (`target/<profile>/NAME`, next to the test's own `deps/`), for tests of packages that do
/// not build it themselves.
///
/// # Panics
/// If it is missing, with a message telling how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_harness() {
        assert!(repo_root().join("tests/harness/install").is_file());
    }

    #[test]
    fn finds_debian_tools_and_rejects_unknown_ones() {
        assert!(try_bin("sh").is_some());
        assert!(try_bin("definitely-not-a-harness-tool").is_none());
    }

    #[test]
    #[should_panic(expected = "tests/harness/install")]
    fn missing_tool_names_the_install_script() {
        bin("definitely-not-a-harness-tool");
    }
}
