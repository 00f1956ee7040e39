//! The `tidegate` binary as child processes: a `serve` on a free loopback port, and peak RSS
//! measurement for the RSS tests (`tests/rss_*.rs`).
//!
//! Mapped file pages count toward RSS, so the RSS tests catch mapping windows that are never
//! released, which a heap profiler cannot see.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

pub use tidegate_testkit::TEST_KEY;

/// The binary under test, with [`TEST_KEY`] in its environment.
pub fn tidegate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    cmd.env("TIDEGATE_KEY", TEST_KEY);
    cmd
}

/// Runs `cmd` to the end and returns its output; fails the test, with its stderr, unless it
/// exited 0.
pub fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process that is killed if it is still running when dropped: a test that fails
/// half-way leaves no `serve` behind (holding the test's output pipes open).
pub struct Owned(Child);

impl Owned {
    pub fn new(child: Child) -> Self {
        Owned(child)
    }
}

impl std::ops::Deref for Owned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `serve` on a free loopback port and returns it with its address.
pub fn serve(dir: &Path, extra: &[&str]) -> (Owned, String) {
    serve_from(tidegate(), dir, extra)
}

/// [`serve`] from a prepared command (say, with a `pre_exec`).
pub fn serve_from(cmd: Command, dir: &Path, extra: &[&str]) -> (Owned, String) {
    serve_on(cmd, "127.0.0.1:0", dir, extra)
}

/// [`serve`] on a given address: a receiver started again where its senders expect it.
pub fn serve_at(listen: &str, dir: &Path, extra: &[&str]) -> (Owned, String) {
    serve_on(tidegate(), listen, dir, extra)
}

fn serve_on(mut cmd: Command, listen: &str, dir: &Path, extra: &[&str]) -> (Owned, String) {
    let mut child = Owned::new(
        cmd.args(["serve", "--listen", listen, "--dir"])
            .arg(dir)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // Keep reading, so the server's later messages have somewhere to go.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (child, addr)
}

/// Stops a `serve` child with SIGTERM and waits for it.
pub fn stop(mut child: Owned) -> ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

/// Runs the command and returns (exit status, stdout, peak RSS in bytes) from wait4's rusage:
/// the larger of the child's VmHWM and this test process's RSS when it spawned the child
/// (Linux carries a process's maximum over `fork` and `exec`). An upper bound of the child's
/// peak, which is what the tests assert on.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which Child cannot do
pub fn run_measured(cmd: &mut Command) -> (ExitStatus, String, u64) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes into both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (Child::wait was never called).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    let out = reader.join().unwrap();
    (
        ExitStatus::from_raw(status),
        out,
        u64::try_from(usage.ru_maxrss).unwrap() * 1024,
    )
}

/// VmHWM (peak resident set) of a running child, from /proc.
pub fn vm_hwm(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
