//! `keelson-logger`, the containerd `binary://` log driver, run the way containerd 1.6's runc shim
//! runs it: the URI query as `key value` arguments, an environment of only `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE`, the container's stdout/stderr pipes on fds 3 and 4, and a readiness pipe
//! on fd 5 that the logger closes once its log file is open. The shim-level test (a real task
//! through containerd) lives with the pod runtime tests.
//!
//! Needs the binary built first (`cargo build -p keelson-agent`); no root needed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

fn logger_binary() -> PathBuf {
    let path = keelson_tests::target_dir().join("debug").join("keelson-logger");
    assert!(path.exists(), "{} is missing: build it with `cargo build -p keelson-agent` first", path.display());
    path
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (File::from(OwnedFd::from_raw_fd(fds[0])), File::from(OwnedFd::from_raw_fd(fds[1]))) }
}

/// A running logger with the shim's ends of its pipes.
struct Logger {
    child: Child,
    stdout: Option<File>,
    stderr: Option<File>,
    ready: File,
}

impl Logger {
    /// Starts the logger with `args` and the three pipes on fds 3, 4 and 5.
    fn spawn(args: &[&str]) -> Logger {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let (ready_r, ready_w) = pipe();
        let sources = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut cmd = Command::new(logger_binary());
        cmd.args(args)
            .env_clear()
            .env("CONTAINER_ID", "c0ffee")
            .env("CONTAINER_NAMESPACE", "keelson-test")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // First move every source above the targets, so no dup2 overwrites a later source.
                let mut high = [0; 3];
                for (i, fd) in sources.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    // dup2 clears close-on-exec on the target, so fds 3..=5 reach the logger.
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            })
        };
        let child = cmd.spawn().expect("spawn keelson-logger");
        // The logger holds its own copies now; keep only the shim's ends.
        drop((out_r, err_r, ready_w));
        Logger { child, stdout: Some(out_w), stderr: Some(err_w), ready: ready_r }
    }

    /// Blocks until the logger closes fd 5 (ready, or exited); returns the bytes it wrote there.
    fn wait_ready(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.ready.read_to_end(&mut buf).expect("read readiness pipe");
        buf
    }

    fn write_stdout(&mut self, data: &[u8]) {
        self.stdout.as_mut().expect("stdout open").write_all(data).expect("write to logger stdout pipe");
    }

    fn write_stderr(&mut self, data: &[u8]) {
        self.stderr.as_mut().expect("stderr open").write_all(data).expect("write to logger stderr pipe");
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Closes both streams (as the shim does when the task goes away) and waits for exit.
    fn close_and_wait(mut self) -> (ExitStatus, String) {
        self.stdout = None;
        self.stderr = None;
        let status = keelson_tests::wait_for(Duration::from_secs(10), || self.child.try_wait().expect("try_wait"));
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("keelson-logger did not exit within 10 s after its streams closed");
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).expect("read logger stderr");
        }
        (status, stderr)
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        // Only reached with the child still running when a test fails midway.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One parsed CRI log record.
#[derive(Debug)]
struct Record {
    timestamp: String,
    stream: String,
    tag: String,
    content: String,
}

fn read_records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(text.ends_with('\n'), "log file must end with a newline");
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mut next = || parts.next().unwrap_or_else(|| panic!("record {line:?} has fewer than 4 fields"));
            let record =
                Record { timestamp: next().into(), stream: next().into(), tag: next().into(), content: next().into() };
            assert_rfc3339_nano_utc(&record.timestamp);
            record
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: fixed width, so string order is time order.
fn assert_rfc3339_nano_utc(ts: &str) {
    let shape: String = ts.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dddddddddZ", "timestamp {ts:?} is not RFC 3339 with nanoseconds in UTC");
}

fn stream<'a>(records: &'a [Record], name: &str) -> Vec<(&'a str, &'a str)> {
    let picked: Vec<&Record> = records.iter().filter(|r| r.stream == name).collect();
    for pair in picked.windows(2) {
        assert!(pair[0].timestamp <= pair[1].timestamp, "{name} timestamps go backwards: {pair:?}");
    }
    picked.iter().map(|r| (r.tag.as_str(), r.content.as_str())).collect()
}

#[test]
fn logger_writes_cri_records_for_both_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Parent directories do not exist yet: the logger creates them.
    let path = dir.path().join("default_web_0123/app/0.log");
    let path_arg = path.to_str().expect("utf-8 path");
    let mut logger = Logger::spawn(&["path", path_arg]);
    assert_eq!(logger.wait_ready(), b"", "readiness is signalled by closing fd 5");
    assert!(path.exists(), "log file must be open before the logger reports ready");

    let long = "x".repeat(40_000);
    logger.write_stdout(b"hello\nwor");
    logger.write_stderr(b"oops\n");
    logger.write_stdout(b"ld\n");
    logger.write_stdout(format!("{long}\n").as_bytes());
    logger.write_stdout(b"dos line\r\n\n");
    logger.write_stderr(b"no newline at the end");
    let (status, stderr) = logger.close_and_wait();
    assert!(status.success(), "logger failed: {status}: {stderr}");

    let records = read_records(&path);
    let x16k = "x".repeat(16_384);
    let rest = "x".repeat(40_000 - 2 * 16_384);
    assert_eq!(
        stream(&records, "stdout"),
        vec![
            ("F", "hello"),
            ("F", "world"),
            ("P", x16k.as_str()),
            ("P", x16k.as_str()),
            ("F", rest.as_str()),
            ("F", "dos line"),
            ("F", ""),
        ]
    );
    assert_eq!(stream(&records, "stderr"), vec![("F", "oops"), ("P", "no newline at the end")]);
    assert_eq!(records.len(), 9, "no records from other streams");
}

#[test]
fn logger_appends_and_drains_after_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let path_arg = path.to_str().expect("utf-8 path");

    let mut first = Logger::spawn(&["path", path_arg, "max-line", "8"]);
    first.wait_ready();
    first.write_stdout(b"first run\n");
    let (status, stderr) = first.close_and_wait();
    assert!(status.success(), "first run failed: {status}: {stderr}");

    // Second instance on the same file, arguments in the other order (the shim's order is random).
    let mut second = Logger::spawn(&["max-line", "8", "path", path_arg]);
    second.wait_ready();
    // The shim sends SIGTERM when the task is deleted; the logger must keep draining to EOF.
    // SAFETY: kill on the PID of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(second.pid(), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    std::thread::sleep(Duration::from_millis(200));
    assert!(second.child.try_wait().expect("try_wait").is_none(), "logger died on SIGTERM");
    second.write_stdout(b"second\n");
    second.write_stderr(b"after term\n");
    let (status, stderr) = second.close_and_wait();
    assert!(status.success(), "second run failed: {status}: {stderr}");

    let records = read_records(&path);
    assert_eq!(stream(&records, "stdout"), vec![("P", "first ru"), ("F", "n"), ("F", "second")]);
    assert_eq!(stream(&records, "stderr"), vec![("P", "after te"), ("F", "rm")]);
}

#[test]
fn logger_rejects_bad_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let path_arg = path.to_str().expect("utf-8 path");
    let mut logger = Logger::spawn(&["path", path_arg, "colour", "red"]);
    logger.wait_ready();
    let (status, stderr) = logger.close_and_wait();
    assert!(!status.success(), "unknown argument must fail");
    assert!(stderr.contains("unknown argument \"colour\""), "stderr: {stderr}");
    assert!(!path.exists(), "nothing is created on bad arguments");

    let mut logger = Logger::spawn(&[]);
    logger.wait_ready();
    let (status, stderr) = logger.close_and_wait();
    assert!(!status.success(), "missing path must fail");
    assert!(stderr.contains("missing argument `path`"), "stderr: {stderr}");
}

#[test]
fn logger_refuses_to_run_without_the_shim_descriptors() {
    let mut cmd = Command::new(logger_binary());
    cmd.args(["path", "/nonexistent/never-created.log"]).stdin(Stdio::null());
    // SAFETY: close is async-signal-safe. Closing makes sure no descriptor the test runner itself
    // inherited (e.g. a jobserver pipe) sits on fds 3..=5.
    unsafe {
        cmd.pre_exec(|| {
            for fd in 3..=5 {
                libc::close(fd);
            }
            Ok(())
        })
    };
    let out = cmd.output().expect("run keelson-logger");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fd 3"), "stderr: {stderr}");
}
