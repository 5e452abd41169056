//! Child processes for tests: each runs in its own process group, writes its output to a log
//! file, and is killed (with the whole group) when its guard is dropped.
//!
//! [`ChildGuard`] is for long-running servers; [`run`] is for one-shot commands (clients),
//! with a timeout and the command's stderr in the error.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Default time a server gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time a one-shot command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a stopped process group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to tell that a server is ready.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// A TCP connection to this address succeeds.
    Tcp(SocketAddr),
    /// A plain-HTTP `GET` of this URL (`http://host:port/path`) answers 200.
    Http(String),
}

/// A running child process in its own process group.
///
/// Its stdout and stderr go to a log file; the log is printed when the guard is dropped during
/// a panic (a failing test) and included in readiness errors. Dropping the guard sends SIGTERM
/// to the group, then SIGKILL after a grace period, and reaps the child.
pub struct ChildGuard {
    name: String,
    child: Child,
    log_path: PathBuf,
    _log_dir: TempDir,
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log_path)
            .finish()
    }
}

impl ChildGuard {
    /// Starts `cmd` in a new process group with stdin closed and output sent to a log file.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("harness-{name}-"))
            .tempdir()
            .context("creating a log directory")?;
        let log_path = log_dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path).context("creating a log file")?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path,
            _log_dir: log_dir,
        })
    }

    /// Waits until the server is ready, failing early (with its log) if it exits.
    pub fn wait_ready(&mut self, readiness: &Readiness, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during startup ({status}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            let ready = match readiness {
                Readiness::Tcp(addr) => {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                }
                Readiness::Http(url) => matches!(http_get_status(url), Ok(200)),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready ({readiness:?}) after {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The child's output so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<log unreadable: {e}>"))
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the process group: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        stop_group(&mut self.child, STOP_GRACE);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end of log of {} ----",
                self.name,
                self.log_path.display(),
                self.log(),
                self.name
            );
        }
        self.stop();
    }
}

fn stop_group(child: &mut Child, grace: Duration) {
    let group = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(None)) {
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Also reaches grandchildren left behind by a leader that already exited.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

/// Returns a loopback TCP port that was free a moment ago, for servers that cannot bind
/// port 0 and report it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// The HTTP status of a plain-HTTP `GET url` (`http://host:port/path` only, no TLS).
pub fn http_get_status(url: &str) -> io::Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::other(format!("not a plain http URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("no address for {authority}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {line:?}")))
}

/// Output of a finished one-shot command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Runs a one-shot command to completion (at most [`COMMAND_TIMEOUT`]) and returns its
/// stdout; fails with the command line, exit status and stderr if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = run_unchecked(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed ({})\nstderr:\n{}\nstdout:\n{}",
            describe(cmd),
            out.status,
            out.stderr.trim_end(),
            out.stdout.trim_end()
        );
    }
    Ok(out.stdout)
}

/// Runs a one-shot command (at most [`COMMAND_TIMEOUT`]) with its stdout written byte for
/// byte to the file `out`; fails like [`run`].
pub fn run_to_file(cmd: &mut Command, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let result = spawn_and_wait(cmd, COMMAND_TIMEOUT, Stdio::from(file))?;
    if !result.status.success() {
        bail!(
            "{} failed ({})\nstderr:\n{}",
            describe(cmd),
            result.status,
            result.stderr.trim_end()
        );
    }
    Ok(())
}

/// Runs a one-shot command in its own process group, killing the group after `timeout`.
/// Does not check the exit status.
pub fn run_unchecked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    spawn_and_wait(cmd, timeout, Stdio::piped())
}

fn spawn_and_wait(cmd: &mut Command, timeout: Duration, stdout: Stdio) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            stop_group(&mut child, Duration::from_secs(1));
            let stderr = stderr.join().unwrap_or_default();
            return Err(anyhow!(
                "{} timed out after {timeout:?}\nstderr:\n{stderr}",
                describe(cmd)
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Stragglers that inherited the pipes would keep the readers waiting.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    format!("`{line}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_stdout_and_reports_stderr_on_failure() {
        let out = run(Command::new("sh").args(["-c", "echo hello"])).unwrap();
        assert_eq!(out, "hello\n");
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("broken") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }

    #[test]
    fn run_to_file_keeps_binary_output_intact() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        run_to_file(
            Command::new("sh").args(["-c", "printf '\\000\\377\\n'"]),
            &out,
        )
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), [0u8, 0xff, b'\n']);
    }

    #[test]
    fn run_kills_commands_that_time_out() {
        let start = Instant::now();
        let err = run_unchecked(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn guard_waits_for_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut guard = ChildGuard::spawn("sleeper", sleeper()).unwrap();
        guard
            .wait_ready(&Readiness::Tcp(addr), Duration::from_secs(10))
            .unwrap();
        assert!(guard.is_running());
    }

    #[test]
    fn guard_kills_the_whole_group_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // A grandchild shares the group; it must die with the guard.
        cmd.args(["-c", "sleep 600 & echo $! > pidfile; exec sleep 600"])
            .current_dir(dir.path());
        let guard = ChildGuard::spawn("group", cmd).unwrap();
        let pidfile = dir.path().join("pidfile");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pidfile.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(50));
        let grandchild = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        assert!(alive(&grandchild), "grandchild should run before the drop");
        drop(guard);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&grandchild) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive(&grandchild),
            "grandchild {grandchild} survived the guard"
        );
    }

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        cmd
    }

    /// Running or sleeping, not a zombie waiting for a reaper.
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    #[test]
    fn readiness_fails_fast_with_the_log_when_the_child_exits() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot-start >&2; exit 1"]);
        let mut guard = ChildGuard::spawn("failing", cmd).unwrap();
        let err = guard
            .wait_ready(
                &Readiness::Http("http://127.0.0.1:1/".into()),
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(format!("{err}").contains("cannot-start"));
    }
}
