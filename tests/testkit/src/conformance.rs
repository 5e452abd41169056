//! The OCI distribution-spec conformance suite (the redesigned runner, a `conformance` binary
//! built by the harness) run against any registry, with its report parsed.
//!
//! The runner can exit 0 on a configuration or setup error, so the exit code is never
//! trusted: [`run`] reads `junit.xml` (one test case per leaf test) and `results.yaml` (the
//! status of each registry API), and [`Report::assert_all_passed`] fails when either is
//! missing, when no test ran, or when any category of the spec was not exercised.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::clients::Credentials;
use crate::process;
use crate::tools;

/// How long a whole conformance run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The four categories of the distribution spec, with the runner's API names that belong to
/// each. A category counts as exercised when at least one of its APIs passed.
pub const CATEGORIES: [(&str, &[&str]); 4] = [
    (
        "pull",
        &[
            "Blob get",
            "Blob head",
            "Manifest get by digest",
            "Manifest get by tag",
            "Manifest head by digest",
            "Manifest head by tag",
        ],
    ),
    (
        "push",
        &["Blob push", "Manifest put by digest", "Manifest put by tag"],
    ),
    ("content discovery", &["Tag listing", "Referrers"]),
    (
        "content management",
        &[
            "Manifest delete",
            "Blob delete",
            "Tag delete",
            "Blob upload cancel",
        ],
    ),
];

/// Options of a conformance run; the defaults test everything on fresh repositories.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Credentials for registries that require authentication.
    pub credentials: Option<Credentials>,
    /// First repository (default `conformance/<unique>/repo1`).
    pub repo1: Option<String>,
    /// Second repository, for cross-repository mounts (default `conformance/<unique>/repo2`).
    pub repo2: Option<String>,
    /// Where to write `results.yaml`, `junit.xml` and `report.html`
    /// (default `target/conformance/<unique>` in the repository).
    pub results_dir: Option<PathBuf>,
    /// Extra `OCI_*` settings for the runner, applied last (e.g. `("OCI_DATA_SHA512", "false")`).
    pub env: Vec<(String, String)>,
}

impl Options {
    /// Defaults minus the features CNCF Distribution v3 (3.1.x) does not implement, so the
    /// reference peer can pass: no referrers API (clients fall back to the referrers tag
    /// schema), no `sha512` content, and manifests with non-distributable layers are answered
    /// with 500. The project's own registry runs with the defaults instead.
    pub fn distribution_v3() -> Self {
        Self {
            env: [
                ("OCI_API_REFERRER", "false"),
                ("OCI_DATA_SHA512", "false"),
                ("OCI_DATA_NONDISTRIBUTABLE", "false"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
            ..Self::default()
        }
    }
}

/// Outcome of one test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The registry behaved as the spec requires.
    Passed,
    /// Skipped or disabled (an optional feature the registry does not offer, or configuration).
    Skipped,
    /// The registry violated the spec.
    Failed,
    /// The test engine itself failed.
    Error,
}

/// One leaf test of the run.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// Full name, e.g. `OCI Conformance Test/sha256 blobs/...`.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// Error text reported by the runner, if any.
    pub message: String,
}

/// The parsed report of a conformance run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Directory holding `results.yaml`, `junit.xml` and `report.html`.
    pub results_dir: PathBuf,
    /// Every leaf test case from `junit.xml`.
    pub cases: Vec<TestCase>,
    /// Status of each registry API from `results.yaml` (`Pass`, `Skip`, `Disabled`, `FAIL`, `Error`).
    pub apis: BTreeMap<String, String>,
    /// Why the report is incomplete or could not be read, if so.
    pub problem: Option<String>,
    /// The runner's stdout and stderr.
    pub output: String,
}

impl Report {
    fn count(&self, outcome: Outcome) -> usize {
        self.cases.iter().filter(|c| c.outcome == outcome).count()
    }

    /// Number of passed test cases.
    pub fn passed(&self) -> usize {
        self.count(Outcome::Passed)
    }

    /// Number of failed test cases (spec violations and engine errors).
    pub fn failed(&self) -> usize {
        self.count(Outcome::Failed) + self.count(Outcome::Error)
    }

    /// Number of skipped or disabled test cases.
    pub fn skipped(&self) -> usize {
        self.count(Outcome::Skipped)
    }

    /// Names of failed test cases.
    pub fn failing(&self) -> Vec<&str> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::Error))
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Categories (see [`CATEGORIES`]) none of whose APIs passed.
    pub fn unexercised_categories(&self) -> Vec<&'static str> {
        CATEGORIES
            .iter()
            .filter(|(_, apis)| {
                !apis
                    .iter()
                    .any(|api| self.apis.get(*api).is_some_and(|s| s == "Pass"))
            })
            .map(|(name, _)| *name)
            .collect()
    }

    /// A readable summary: counts, failing tests with their messages, API statuses.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "conformance report in {}: {} passed, {} failed, {} skipped",
            self.results_dir.display(),
            self.passed(),
            self.failed(),
            self.skipped()
        );
        if let Some(problem) = &self.problem {
            let _ = write!(s, "\nPROBLEM: {problem}");
        }
        for case in self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::Error))
        {
            let _ = write!(s, "\nFAILED {}: {}", case.name, case.message.trim());
        }
        let apis: Vec<String> = self.apis.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(s, "\nAPIs: {}", apis.join(", "));
        s
    }

    /// Panics unless the report exists, at least one test ran, nothing failed, and every
    /// category of the spec was exercised. The message includes the runner's output.
    pub fn assert_all_passed(&self) {
        let mut why = Vec::new();
        if let Some(problem) = &self.problem {
            why.push(problem.clone());
        }
        if self.passed() == 0 {
            why.push("no test passed (zero tests run?)".to_owned());
        }
        if self.failed() > 0 {
            why.push(format!("failing tests: {:?}", self.failing()));
        }
        let failed_apis: Vec<&String> = self
            .apis
            .iter()
            .filter(|(_, s)| *s == "FAIL" || *s == "Error")
            .map(|(k, _)| k)
            .collect();
        if !failed_apis.is_empty() {
            why.push(format!("failing APIs: {failed_apis:?}"));
        }
        let missing = self.unexercised_categories();
        if !missing.is_empty() {
            why.push(format!("categories not exercised: {missing:?}"));
        }
        if !why.is_empty() {
            panic!(
                "conformance run did not pass: {}\n{}\n---- runner output ----\n{}",
                why.join("; "),
                self.summary(),
                self.output
            );
        }
    }
}

/// Runs the conformance suite against `host` (`127.0.0.1:PORT`, plain HTTP) and parses the
/// report. Never fails: problems end up in [`Report::problem`].
pub fn run(host: &str, options: &Options) -> Report {
    let unique = unique_suffix();
    let results_dir = options.results_dir.clone().unwrap_or_else(|| {
        tools::repo_root()
            .join("target/conformance")
            .join(format!("{}-{unique}", host.replace([':', '/'], "_")))
    });
    let mut report = Report {
        results_dir: results_dir.clone(),
        cases: Vec::new(),
        apis: BTreeMap::new(),
        problem: None,
        output: String::new(),
    };
    if let Err(e) = run_into(host, options, &unique, &mut report) {
        report.problem = Some(format!("{e:#}"));
    }
    report
}

fn run_into(host: &str, options: &Options, unique: &str, report: &mut Report) -> Result<()> {
    let dir = &report.results_dir;
    // Stale reports from an earlier run must not be mistaken for this one.
    for file in ["results.yaml", "junit.xml", "report.html"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("oci-conformance.yaml");
    std::fs::write(&config, render_config(host, options, unique, dir))?;

    let mut cmd = Command::new(tools::bin("conformance"));
    cmd.current_dir(dir);
    // Only our configuration counts: drop any OCI_* settings inherited from the caller.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OCI_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("OCI_CONFIGURATION", &config);
    for (key, value) in &options.env {
        cmd.env(key, value);
    }
    let out = process::run_unchecked(&mut cmd, RUN_TIMEOUT)?;
    report.output = format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status, out.stdout, out.stderr
    );

    let junit = dir.join("junit.xml");
    let results = dir.join("results.yaml");
    if !junit.is_file() || !results.is_file() {
        bail!(
            "the runner wrote no report to {} (exit {}); stderr: {}",
            dir.display(),
            out.status,
            out.stderr.trim()
        );
    }
    report.cases = parse_junit(&std::fs::read_to_string(&junit)?)
        .with_context(|| format!("parsing {}", junit.display()))?;
    report.apis = parse_api_statuses(&std::fs::read_to_string(&results)?)
        .with_context(|| format!("parsing {}", results.display()))?;
    let failed = report.failed() > 0;
    if out.status.success() == failed {
        bail!(
            "runner exit status ({}) disagrees with its report ({} failed)",
            out.status,
            report.failed()
        );
    }
    Ok(())
}

fn render_config(host: &str, options: &Options, unique: &str, dir: &Path) -> String {
    let repo1 = options
        .repo1
        .clone()
        .unwrap_or_else(|| format!("conformance/{unique}/repo1"));
    let repo2 = options
        .repo2
        .clone()
        .unwrap_or_else(|| format!("conformance/{unique}/repo2"));
    let (username, password) = options
        .credentials
        .as_ref()
        .map(|c| (c.username.as_str(), c.password.as_str()))
        .unwrap_or(("", ""));
    // Values are written as JSON strings, which YAML accepts verbatim.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "version: \"1.1\"
resultsDir: {results}
registry: {host}
tls: disabled
repo1: {repo1}
repo2: {repo2}
username: {username}
password: {password}
logging: warn
apis:
  pull: true
  push: true
  blobs:
    delete: true
    uploadCancel: true
  manifests:
    delete: true
  tags:
    delete: true
    list: true
  referrer: true
",
        results = q(&dir.display().to_string()),
        host = q(host),
        repo1 = q(&repo1),
        repo2 = q(&repo2),
        username = q(username),
        password = q(password),
    )
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Extracts the leaf test cases of a JUnit XML report.
pub fn parse_junit(xml: &str) -> Result<Vec<TestCase>> {
    let mut reader = Reader::from_str(xml);
    let mut cases = Vec::new();
    let mut current: Option<TestCase> = None;
    let mut in_message_element = false;
    loop {
        match reader.read_event()? {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testcase" => {
                if let Some(done) = current.take() {
                    cases.push(done);
                }
                let mut case = TestCase {
                    name: String::new(),
                    outcome: Outcome::Passed,
                    message: String::new(),
                };
                for attr in e.attributes() {
                    let attr = attr?;
                    let value = attr.unescape_value()?.into_owned();
                    match attr.key.as_ref() {
                        b"name" => case.name = value,
                        b"status" => case.outcome = outcome_of(&value),
                        _ => {}
                    }
                }
                current = Some(case);
            }
            Event::Start(e) | Event::Empty(e)
                if matches!(e.name().as_ref(), b"failure" | b"error" | b"skipped") =>
            {
                if let Some(case) = current.as_mut() {
                    case.outcome = match e.name().as_ref() {
                        b"failure" => Outcome::Failed,
                        b"error" => Outcome::Error,
                        _ => Outcome::Skipped,
                    };
                    for attr in e.attributes().flatten() {
                        if attr.key.as_ref() == b"message" {
                            case.message.push_str(&attr.unescape_value()?);
                        }
                    }
                }
            }
            Event::Start(e) if e.name().as_ref() == b"system-out" => in_message_element = true,
            Event::End(e) if e.name().as_ref() == b"system-out" => in_message_element = false,
            Event::Text(t) if in_message_element => {
                if let Some(case) = current.as_mut() {
                    case.message.push_str(&t.unescape()?);
                }
            }
            Event::CData(t) if in_message_element => {
                if let Some(case) = current.as_mut() {
                    case.message.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(e) if e.name().as_ref() == b"testcase" => {
                if let Some(done) = current.take() {
                    cases.push(done);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(done) = current.take() {
        cases.push(done);
    }
    Ok(cases)
}

fn outcome_of(status: &str) -> Outcome {
    match status {
        "passed" => Outcome::Passed,
        "skipped" => Outcome::Skipped,
        "failure" => Outcome::Failed,
        _ => Outcome::Error,
    }
}

/// Extracts the per-API statuses (`apis:` map) of a `results.yaml`.
pub fn parse_api_statuses(yaml: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Results {
        #[serde(default)]
        apis: BTreeMap<String, String>,
    }
    let results: Results = serde_yaml::from_str(yaml)?;
    Ok(results.apis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUNIT: &str = r#"<testsuites tests="3">
  <testsuite name="OCI Conformance Test" tests="3" failures="1" errors="0">
    <properties><property name="Config" value="x"></property></properties>
    <testcase name="OCI Conformance Test/blobs/push &amp; pull" classname="" time="0.1" status="passed"></testcase>
    <testcase name="OCI Conformance Test/referrers" classname="" status="failure">
      <system-out>expected 200, got 404</system-out>
    </testcase>
    <testcase name="OCI Conformance Test/sha512" classname="" status="skipped"></testcase>
  </testsuite>
</testsuites>"#;

    #[test]
    fn parses_junit_cases() {
        let cases = parse_junit(JUNIT).unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].name, "OCI Conformance Test/blobs/push & pull");
        assert_eq!(cases[0].outcome, Outcome::Passed);
        assert_eq!(cases[1].outcome, Outcome::Failed);
        assert!(cases[1].message.contains("got 404"));
        assert_eq!(cases[2].outcome, Outcome::Skipped);
    }

    fn report(cases: Vec<TestCase>, apis: &[(&str, &str)]) -> Report {
        Report {
            results_dir: PathBuf::from("/nowhere"),
            cases,
            apis: apis
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            problem: None,
            output: String::new(),
        }
    }

    fn all_categories() -> Vec<(&'static str, &'static str)> {
        CATEGORIES
            .iter()
            .map(|(_, apis)| (apis[0], "Pass"))
            .collect()
    }

    #[test]
    fn counts_and_failing_names() {
        let r = report(parse_junit(JUNIT).unwrap(), &all_categories());
        assert_eq!((r.passed(), r.failed(), r.skipped()), (1, 1, 1));
        assert_eq!(r.failing(), vec!["OCI Conformance Test/referrers"]);
    }

    #[test]
    #[should_panic(expected = "failing tests")]
    fn a_failure_fails_the_assertion() {
        report(parse_junit(JUNIT).unwrap(), &all_categories()).assert_all_passed();
    }

    #[test]
    #[should_panic(expected = "zero tests run")]
    fn an_empty_report_fails_the_assertion() {
        report(Vec::new(), &all_categories()).assert_all_passed();
    }

    #[test]
    #[should_panic(expected = "content management")]
    fn a_missing_category_fails_the_assertion() {
        let pass = TestCase {
            name: "t".into(),
            outcome: Outcome::Passed,
            message: String::new(),
        };
        let mut apis = all_categories();
        apis.pop();
        report(vec![pass], &apis).assert_all_passed();
    }

    #[test]
    fn parses_api_statuses() {
        let yaml = "config:\n  registry: x\napis:\n  Blob push: Pass\n  Referrers: Skip\ndata:\n  Image: Pass\n";
        let apis = parse_api_statuses(yaml).unwrap();
        assert_eq!(apis["Blob push"], "Pass");
        assert_eq!(apis["Referrers"], "Skip");
    }
}
