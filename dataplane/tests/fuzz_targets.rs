//! The fuzz targets of `dataplane::fuzzing` as bounded property tests, so that every run of
//! `tests/run` exercises them: each target gets its whole committed corpus
//! (`dataplane/fuzz/corpus/<target>/`), then mutations of it and generated inputs. The long
//! runs are `cargo fuzz` over the same functions (`dataplane/fuzz/README.md`).

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Generated cases per target (the `request` target, a whole API call each, gets fewer).
const CASES: u32 = 2_000;
const REQUEST_CASES: u32 = 600;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 3,
        "the corpus of {target} has {} seeds",
        seeds.len()
    );
    seeds.into_iter().map(|(_, bytes)| bytes).collect()
}

/// A seed with a few bytes overwritten, inserted or removed, or two seeds spliced.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (
        0..count,
        0..count,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    )
        .prop_map(move |(a, b, edits)| {
            let mut input = seeds[a].clone();
            for (at, byte, kind) in edits {
                let len = input.len();
                match kind {
                    0 if len > 0 => input[at.index(len)] = byte,
                    1 => input.insert(at.index(len + 1), byte),
                    2 if len > 0 => {
                        input.remove(at.index(len));
                    }
                    _ => {
                        let other = &seeds[b];
                        let cut = at.index(len + 1);
                        input.truncate(cut);
                        input.extend_from_slice(&other[at.index(other.len() + 1)..]);
                    }
                }
            }
            input
        })
}

fn run(target: &str) {
    let (_, function) = dataplane::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let seeds = corpus(target);
    for seed in &seeds {
        function(seed);
    }
    let cases = if target == "request" {
        REQUEST_CASES
    } else {
        CASES
    };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let inputs = prop_oneof![
        3 => mutated(seeds),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ];
    runner
        .run(&inputs, |input| {
            function(&input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let names: Vec<&str> = dataplane::fuzzing::TARGETS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let this = include_str!("fuzz_targets.rs");
    for name in names {
        assert!(
            this.contains(&format!("fn {name}() {{\n    run(\"{name}\")")),
            "no test for {name}"
        );
        corpus(name);
        let fuzz_target = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(fuzz_target.exists(), "{} is missing", fuzz_target.display());
    }
}

#[test]
fn names() {
    run("names")
}

#[test]
fn digests() {
    run("digests")
}

#[test]
fn ranges() {
    run("ranges")
}

#[test]
fn authorization() {
    run("authorization")
}

#[test]
fn jwts() {
    run("jwts")
}

#[test]
fn manifests() {
    run("manifests")
}

#[test]
fn config_document() {
    run("config_document")
}

#[test]
fn request() {
    run("request")
}
