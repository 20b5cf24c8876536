//! keelson-logger: the containerd `binary://` log driver that writes a container's stdout and
//! stderr in the CRI log format kubelet and `kubectl logs` read.
//!
//! Why a separate binary: the containerd shim starts it as its own child, so the log pipe never
//! passes through the agent and a restarting agent loses no output. The agent sets a task's stdio
//! to `binary:///path/to/keelson-logger?path=<percent-encoded log file>`; containerd 1.6's runc
//! shim (`pkg/process/io.go`, `NewBinaryIO`) then runs this program with
//!
//! - the URI's query as arguments, each `key=value` becoming the two arguments `key value`
//!   (in Go map order, i.e. any order), and an environment holding only `CONTAINER_ID` and
//!   `CONTAINER_NAMESPACE`;
//! - fd 3 = read end of the container's stdout, fd 4 = stderr, fd 5 = the write end of a pipe the
//!   shim reads from: closing it tells the shim the logger is ready (any byte or EOF will do);
//! - on task delete it closes its copies of the pipes and sends SIGTERM, waiting up to 12 s before
//!   SIGKILL. SIGTERM is therefore ignored here: the pipes are already closed by then, so reading
//!   on to EOF drains the last output and exits promptly.
//!
//! Arguments: `path <file>` (required, absolute; parent directories are created, the file is
//! appended to, mode 0640) and `max-line <bytes>` (optional, default 16384, containerd's
//! `max_container_log_line_size`).
//!
//! Output, one record per line, written with a single `write` so concurrent streams never tear a
//! record: `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <F|P> <content>\n`. Framing
//! follows containerd's CRI `redirectLogs`: the line terminator (`\n` or `\r\n`) is removed; a
//! line longer than `max-line` is split into `P` records of exactly `max-line` bytes followed by
//! an `F` record with the rest; output that ends without a newline at EOF is written as `P`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// containerd's default `max_container_log_line_size`.
const DEFAULT_MAX_LINE: usize = 16 * 1024;
/// Read size per `read(2)` on a stream (a pipe holds 64 KiB by default).
const READ_CHUNK: usize = 32 * 1024;

/// Whether a record completes a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// `P`: a chunk of a longer line, or output cut off by EOF without a newline.
    Partial,
    /// `F`: the (last part of the) line ended with a newline.
    Full,
}

impl Tag {
    fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// Splits a byte stream into CRI log records (pure: no I/O, no clock).
///
/// Holds at most `max + 1` bytes between calls (one extra so a `\r` right at the limit can still
/// turn out to be part of a `\r\n` terminator).
#[derive(Debug)]
struct LineFramer {
    buf: Vec<u8>,
    max: usize,
}

impl LineFramer {
    fn new(max: usize) -> Self {
        LineFramer { buf: Vec::with_capacity(max.min(DEFAULT_MAX_LINE) + 1), max: max.max(1) }
    }

    /// Feeds bytes read from the stream, calling `emit` for every complete record.
    fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    let start = self.emit_chunks(false, emit);
                    emit(Tag::Full, &self.buf[start..]);
                    self.buf.clear();
                }
                None => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    // Hold a trailing `\r` at the limit back: it may be the start of `\r\n`.
                    let start = self.emit_chunks(true, emit);
                    self.buf.drain(..start);
                }
            }
        }
    }

    /// Emits `P` records of `max` bytes from the front of the buffer while more than `max` bytes
    /// remain (more than `max + 1` when `hold_cr` and the buffer ends in `\r`); returns the offset
    /// of the first byte not emitted.
    fn emit_chunks(&self, hold_cr: bool, emit: &mut impl FnMut(Tag, &[u8])) -> usize {
        let limit = if hold_cr && self.buf.last() == Some(&b'\r') { self.max + 1 } else { self.max };
        let mut start = 0;
        while self.buf.len() - start > limit {
            emit(Tag::Partial, &self.buf[start..start + self.max]);
            start += self.max;
        }
        start
    }

    /// At EOF: whatever is left had no newline, so it is written as partial record(s).
    fn finish(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        let start = self.emit_chunks(false, emit);
        if start < self.buf.len() {
            emit(Tag::Partial, &self.buf[start..]);
        }
        self.buf.clear();
    }
}

/// Formats one record (timestamp passed in, so this stays testable).
fn format_record(out: &mut Vec<u8>, timestamp: &str, stream: &str, tag: Tag, content: &[u8]) {
    out.clear();
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[derive(Debug, PartialEq)]
struct Args {
    path: PathBuf,
    max_line: usize,
}

/// Parses the `key value` pairs the shim passes (any order).
fn parse_args(args: &[String]) -> Result<Args, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!("expected `key value` pairs from the binary:// URI query, got {args:?}"));
    }
    let mut path = None;
    let mut max_line = DEFAULT_MAX_LINE;
    for pair in args.chunks(2) {
        let (key, value) = (pair[0].as_str(), pair[1].as_str());
        match key {
            // The shim runs us in the bundle directory; a relative path would land there.
            "path" if value.starts_with('/') => path = Some(PathBuf::from(value)),
            "path" => return Err(format!("argument `path` must be an absolute path, got {value:?}")),
            "max-line" => {
                max_line = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("argument `max-line` must be a positive integer, got {value:?}"))?;
            }
            other => return Err(format!("unknown argument {other:?} (known: path, max-line)")),
        }
    }
    let path = path.ok_or("missing argument `path` (the log file)")?;
    Ok(Args { path, max_line })
}

/// Takes ownership of an inherited descriptor after checking it is open.
fn inherited_fd(fd: RawFd, what: &str) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!("fd {fd} ({what}) is not open: keelson-logger must be started by a containerd shim"));
    }
    // SAFETY: the descriptor is open, was handed to us by the shim for this purpose, and nothing
    // else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies one stream into the log file until EOF.
fn pump(mut input: File, stream: &'static str, max_line: usize, log: &Mutex<File>) {
    let mut framer = LineFramer::new(max_line);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut record = Vec::with_capacity(max_line + 64);
    let mut reported = false;
    let mut write = |tag: Tag, content: &[u8]| {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        format_record(&mut record, &ts, stream, tag, content);
        let result = match log.lock() {
            Ok(mut file) => file.write_all(&record),
            Err(poisoned) => poisoned.into_inner().write_all(&record),
        };
        // Like containerd: report once and keep draining, so the container never blocks on a full pipe.
        if let Err(e) = result
            && !reported
        {
            eprintln!("keelson-logger: writing {stream} record failed: {e}");
            reported = true;
        }
    };
    loop {
        match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => framer.push(&chunk[..n], &mut write),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("keelson-logger: reading {stream} failed: {e}");
                break;
            }
        }
    }
    framer.finish(&mut write);
}

fn run() -> Result<(), String> {
    // The shim closes the pipes and then sends SIGTERM; keep draining to EOF instead of dying with
    // the last output unread (see the module docs).
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };

    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&raw)?;
    let stdout = File::from(inherited_fd(3, "container stdout")?);
    let stderr = File::from(inherited_fd(4, "container stderr")?);
    let ready = inherited_fd(5, "readiness pipe")?;

    if let Some(dir) = args.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating log directory {}: {e}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&args.path)
        .map_err(|e| format!("opening log file {}: {e}", args.path.display()))?;
    let log = Arc::new(Mutex::new(log));

    // Ready: the shim may now start the container.
    drop(ready);

    let max_line = args.max_line;
    let err_log = Arc::clone(&log);
    let err_thread = std::thread::Builder::new()
        .name("stderr".into())
        .spawn(move || pump(stderr, "stderr", max_line, &err_log))
        .map_err(|e| format!("spawning the stderr reader: {e}"))?;
    pump(stdout, "stdout", max_line, &log);
    err_thread.join().map_err(|_| "the stderr reader panicked".to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson-logger: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(max: usize, pushes: &[&[u8]]) -> Vec<(Tag, String)> {
        let mut out = Vec::new();
        let mut framer = LineFramer::new(max);
        let mut emit = |tag: Tag, content: &[u8]| out.push((tag, String::from_utf8_lossy(content).into_owned()));
        for p in pushes {
            framer.push(p, &mut emit);
        }
        framer.finish(&mut emit);
        out
    }

    fn f(s: &str) -> (Tag, String) {
        (Tag::Full, s.to_string())
    }
    fn p(s: &str) -> (Tag, String) {
        (Tag::Partial, s.to_string())
    }

    #[test]
    fn whole_lines_are_full_records() {
        assert_eq!(frame(16, &[b"hello\nworld\n"]), vec![f("hello"), f("world")]);
    }

    #[test]
    fn empty_lines_are_kept() {
        assert_eq!(frame(16, &[b"\n\na\n"]), vec![f(""), f(""), f("a")]);
    }

    #[test]
    fn crlf_terminator_is_removed_but_lone_cr_is_content() {
        assert_eq!(frame(16, &[b"a\r\nb\rc\n"]), vec![f("a"), f("b\rc")]);
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(frame(16, &[b"hel", b"lo\nwo", b"rld", b"\n"]), vec![f("hello"), f("world")]);
        assert_eq!(frame(16, &[b"a\r", b"\nb\n"]), vec![f("a"), f("b")]);
    }

    #[test]
    fn unterminated_output_at_eof_is_partial() {
        assert_eq!(frame(16, &[b"done\nno newline"]), vec![f("done"), p("no newline")]);
        assert!(frame(16, &[]).is_empty());
        assert!(frame(16, &[b""]).is_empty());
    }

    #[test]
    fn long_lines_become_partial_chunks_then_full() {
        assert_eq!(frame(4, &[b"abcdefghij\n"]), vec![p("abcd"), p("efgh"), f("ij")]);
        // Exactly the limit: one full record. Twice the limit: one partial, one full.
        assert_eq!(frame(4, &[b"abcd\n"]), vec![f("abcd")]);
        assert_eq!(frame(4, &[b"abcdefgh\n"]), vec![p("abcd"), f("efgh")]);
        // One byte over.
        assert_eq!(frame(4, &[b"abcde\n"]), vec![p("abcd"), f("e")]);
    }

    #[test]
    fn long_lines_are_split_while_streaming() {
        // Chunks are emitted before the newline arrives, so memory stays bounded.
        let mut out = Vec::new();
        let mut framer = LineFramer::new(4);
        framer.push(b"abcdefghij", &mut |t: Tag, c: &[u8]| out.push((t, c.to_vec())));
        assert_eq!(out, vec![(Tag::Partial, b"abcd".to_vec()), (Tag::Partial, b"efgh".to_vec())]);
        assert!(framer.buf.len() <= 5);
    }

    #[test]
    fn crlf_at_the_limit_does_not_create_a_partial() {
        // "abcd\r" arrives first: the \r may belong to \r\n, so nothing is emitted yet.
        assert_eq!(frame(4, &[b"abcd\r", b"\n"]), vec![f("abcd")]);
        // It did not: the \r is content.
        assert_eq!(frame(4, &[b"abcd\r", b"x\n"]), vec![p("abcd"), f("\rx")]);
    }

    #[test]
    fn long_unterminated_output_is_all_partial() {
        assert_eq!(frame(4, &[b"abcdefghij"]), vec![p("abcd"), p("efgh"), p("ij")]);
    }

    #[test]
    fn default_limit_is_16_kib() {
        let line = vec![b'x'; 40_000];
        let mut data = line.clone();
        data.push(b'\n');
        let out = frame(DEFAULT_MAX_LINE, &[&data]);
        let tags: Vec<Tag> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![Tag::Partial, Tag::Partial, Tag::Full]);
        assert_eq!(out[0].1.len(), 16_384);
        assert_eq!(out[1].1.len(), 16_384);
        assert_eq!(out[2].1.len(), 40_000 - 2 * 16_384);
    }

    #[test]
    fn record_format() {
        let mut out = Vec::new();
        format_record(&mut out, "2026-01-02T03:04:05.000000006Z", "stderr", Tag::Partial, b"x y");
        assert_eq!(out, b"2026-01-02T03:04:05.000000006Z stderr P x y\n");
        format_record(&mut out, "2026-01-02T03:04:05.000000006Z", "stdout", Tag::Full, b"");
        assert_eq!(out, b"2026-01-02T03:04:05.000000006Z stdout F \n");
    }

    #[test]
    fn arguments_come_as_pairs_in_any_order() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["path", "/x/0.log"]), Ok(Args { path: "/x/0.log".into(), max_line: DEFAULT_MAX_LINE }));
        assert_eq!(a(&["max-line", "100", "path", "/x/0.log"]), Ok(Args { path: "/x/0.log".into(), max_line: 100 }));
        assert!(a(&[]).expect_err("no path").contains("missing argument `path`"));
        assert!(a(&["path"]).expect_err("odd").contains("pairs"));
        assert!(a(&["path", ""]).expect_err("empty").contains("absolute"));
        assert!(a(&["path", "logs/0.log"]).expect_err("relative").contains("absolute"));
        assert!(a(&["path", "/x", "colour", "red"]).expect_err("unknown").contains("colour"));
        assert!(a(&["path", "/x", "max-line", "0"]).expect_err("zero").contains("max-line"));
        assert!(a(&["path", "/x", "max-line", "ten"]).expect_err("nan").contains("max-line"));
    }
}
