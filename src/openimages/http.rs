//! HTTP with bounded retries, exponential backoff, Range requests, resumable `.part` files and
//! prompt cancellation (the cancel token is checked between body chunks and during backoff).

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cancel::CancelToken;

use super::{Config, Error};

/// Body chunk size; the cancel token is checked after each chunk.
const CHUNK: usize = 64 * 1024;

/// What a HEAD request says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// `Content-Length`.
    pub len: Option<u64>,
    /// `ETag`, quotes included.
    pub etag: Option<String>,
}

/// Answer to a range request.
#[derive(Debug)]
pub(crate) enum RangeReply {
    /// `206` with exactly the requested bytes (fewer at the end of the file).
    Partial(Vec<u8>),
    /// `200`: the server ignores `Range` (the body was not read).
    Ignored,
}

/// A retry decision for one failed attempt.
enum Failed {
    Retry(String),
    Fatal(Error),
}

/// The shared HTTP client.
pub(crate) struct Http {
    agent: ureq::Agent,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl Http {
    pub(crate) fn new(cfg: &Config) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.read_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .accept_encoding("")
            .max_idle_connections_per_host(cfg.workers.max(4) * 2)
            .user_agent(concat!("maskstudio/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
            attempts: cfg.attempts.max(1),
            backoff: cfg.backoff,
            max_backoff: cfg.max_backoff,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts run out. `attempt`
    /// returns `Ok(None)` to ask for another attempt without counting it (progress was made).
    fn retry<T>(
        &self,
        url: &str,
        cancel: &CancelToken,
        mut attempt: impl FnMut() -> Result<Option<T>, Failed>,
    ) -> Result<T, Error> {
        let mut failures = 0u32;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            match attempt() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => failures = 0,
                Err(Failed::Fatal(e)) => return Err(e),
                Err(Failed::Retry(message)) => {
                    failures += 1;
                    if failures >= self.attempts {
                        return Err(Error::Transfer {
                            url: url.to_owned(),
                            message: format!("{message} (gave up after {failures} attempts)"),
                        });
                    }
                    log::debug!("{url}: {message}; retrying ({failures}/{})", self.attempts);
                    let exp = self.backoff.saturating_mul(1 << (failures - 1).min(16));
                    sleep_cancellable(exp.min(self.max_backoff), cancel)?;
                }
            }
        }
    }

    fn send(
        &self,
        url: &str,
        head: bool,
        range: Option<String>,
        if_range: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failed> {
        let result = if head {
            self.agent.head(url).call()
        } else {
            let mut req = self.agent.get(url);
            if let Some(r) = range {
                req = req.header("Range", r);
                if let Some(v) = if_range {
                    req = req.header("If-Range", v);
                }
            }
            req.call()
        };
        let resp = result.map_err(|e| match e {
            ureq::Error::BadUri(_) => Failed::Fatal(Error::Transfer {
                url: url.to_owned(),
                message: e.to_string(),
            }),
            e => Failed::Retry(e.to_string()),
        })?;
        let status = resp.status().as_u16();
        if status >= 500 || status == 429 || status == 408 {
            return Err(Failed::Retry(format!("HTTP {status}")));
        }
        if !(200..300).contains(&status) && status != 416 {
            return Err(Failed::Fatal(Error::Status {
                url: url.to_owned(),
                status,
            }));
        }
        Ok(resp)
    }

    /// `HEAD url`: length and ETag.
    pub(crate) fn head(&self, url: &str, cancel: &CancelToken) -> Result<Head, Error> {
        self.retry(url, cancel, || {
            let resp = self.send(url, true, None, None)?;
            Ok(Some(Head {
                len: header(&resp, "content-length").and_then(|v| v.parse().ok()),
                etag: header(&resp, "etag"),
            }))
        })
    }

    /// Fetches `len` bytes at `start`; counts the body bytes into `counter`.
    pub(crate) fn get_range(
        &self,
        url: &str,
        start: u64,
        len: u64,
        cancel: &CancelToken,
        counter: &AtomicU64,
    ) -> Result<RangeReply, Error> {
        if len == 0 {
            return Ok(RangeReply::Partial(Vec::new()));
        }
        let end = start + len - 1;
        self.retry(url, cancel, || {
            let resp = self.send(url, false, Some(format!("bytes={start}-{end}")), None)?;
            match resp.status().as_u16() {
                200 => return Ok(Some(RangeReply::Ignored)),
                206 => {}
                status => {
                    return Err(Failed::Fatal(Error::Status {
                        url: url.to_owned(),
                        status,
                    }));
                }
            }
            let got_start = header(&resp, "content-range")
                .and_then(|v| parse_content_range(&v))
                .map(|(s, _, _)| s);
            if got_start != Some(start) {
                return Err(Failed::Fatal(Error::Transfer {
                    url: url.to_owned(),
                    message: format!(
                        "asked for bytes {start}-{end}, got Content-Range {got_start:?}"
                    ),
                }));
            }
            let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
            let mut reader = resp.into_body().into_reader();
            let mut buf = vec![0u8; CHUNK];
            loop {
                if cancel.is_cancelled() {
                    return Err(Failed::Fatal(Error::Cancelled));
                }
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        out.extend_from_slice(&buf[..n]);
                        if out.len() as u64 > len {
                            return Err(Failed::Fatal(Error::Transfer {
                                url: url.to_owned(),
                                message: format!(
                                    "range {start}-{end} returned more than {len} bytes"
                                ),
                            }));
                        }
                    }
                    Err(e) => return Err(Failed::Retry(format!("body cut: {e}"))),
                }
            }
            Ok(Some(RangeReply::Partial(out)))
        })
    }

    /// Downloads `url` to `dest` through `dest.part`, resuming a partial file with
    /// `Range: bytes=N-` and renaming it when complete (length checked against the server's).
    /// `progress` gets (bytes on disk, total when known). Returns the file size.
    ///
    /// A resume never splices two versions of the object: when the `.part` file is started, the
    /// response's validator (strong ETag, else Last-Modified) is written next to it
    /// ([`validator_path`]), and a resume sends it as `If-Range`; a server whose object changed
    /// answers 200 with the whole new body, which restarts the file from zero. A `.part` without
    /// a recorded validator is started over rather than resumed.
    ///
    /// With `max_bytes`, a larger declared length is refused before any byte is written and a
    /// body that runs past the limit is cut there; either way the partial file goes and the
    /// error is not retried.
    pub(crate) fn download_file(
        &self,
        url: &str,
        dest: &Path,
        cancel: &CancelToken,
        counter: &AtomicU64,
        progress: &dyn Fn(u64, Option<u64>),
        max_bytes: Option<u64>,
    ) -> Result<u64, Error> {
        let max_bytes = max_bytes.unwrap_or(u64::MAX);
        let part = part_path(dest);
        let too_large = |part: &Path, what: String| {
            std::fs::remove_file(part).ok();
            Failed::Fatal(Error::Format {
                file: url.to_owned(),
                message: format!("{what}, over the {max_bytes}-byte limit for this file"),
            })
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let fatal_io = |p: &Path| {
            let p = p.to_path_buf();
            move |e: std::io::Error| Failed::Fatal(Error::Io { path: p, source: e })
        };
        let sidecar = validator_path(&part);
        let total = self.retry(url, cancel, || {
            let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            let validator = if have > 0 {
                read_validator(&sidecar)
            } else {
                None
            };
            if have > 0 && validator.is_none() {
                // Nothing says these bytes are the object the server has now: start over.
                log::debug!("{url}: partial file without a validator; starting over");
                std::fs::remove_file(&part).map_err(fatal_io(&part))?;
                have = 0;
            }
            let range = (have > 0).then(|| format!("bytes={have}-"));
            let resp = self.send(url, false, range, validator.as_deref())?;
            let status = resp.status().as_u16();
            let (mut file, offset, total) = match status {
                206 => {
                    let cr = header(&resp, "content-range").and_then(|v| parse_content_range(&v));
                    match cr {
                        Some((s, _, total)) if s == have => {
                            let f = OpenOptions::new()
                                .append(true)
                                .open(&part)
                                .map_err(fatal_io(&part))?;
                            (f, have, total)
                        }
                        _ => {
                            // Misaligned answer: start over from zero.
                            std::fs::remove_file(&part).ok();
                            return Err(Failed::Retry(format!("unexpected Content-Range {cr:?}")));
                        }
                    }
                }
                416 => {
                    // Our partial file is as long as (or longer than) the object: check by HEAD.
                    let len = header(&resp, "content-range")
                        .and_then(|v| v.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()));
                    if len == Some(have) {
                        return Ok(Some(have));
                    }
                    std::fs::remove_file(&part).ok();
                    return Err(Failed::Retry(
                        "416 for a partial file; starting over".into(),
                    ));
                }
                _ => {
                    // The whole object (fresh, or changed since the `.part` began): the file
                    // restarts from zero, and the validator of these bytes is recorded first.
                    if have > 0 {
                        log::debug!("{url}: 200 to a resume; the object changed, starting over");
                    }
                    match response_validator(&resp) {
                        Some(v) => write_validator(&sidecar, &v).map_err(fatal_io(&sidecar))?,
                        None => remove_if_present(&sidecar).map_err(fatal_io(&sidecar))?,
                    }
                    let f = std::fs::File::create(&part).map_err(fatal_io(&part))?;
                    let len = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
                    (f, 0, len)
                }
            };
            if let Some(t) = total.filter(|&t| t > max_bytes) {
                return Err(too_large(&part, format!("the server declares {t} bytes")));
            }
            let mut written = offset;
            progress(written, total);
            let mut reader = resp.into_body().into_reader();
            let mut buf = vec![0u8; CHUNK];
            let cut = loop {
                if cancel.is_cancelled() {
                    file.flush().ok();
                    return Err(Failed::Fatal(Error::Cancelled));
                }
                match reader.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if written.saturating_add(n as u64) > max_bytes {
                            drop(file);
                            return Err(too_large(&part, format!("more than {written} bytes")));
                        }
                        file.write_all(&buf[..n]).map_err(fatal_io(&part))?;
                        written += n as u64;
                        progress(written, total);
                    }
                    Err(e) => break Some(e.to_string()),
                }
            };
            file.flush().map_err(fatal_io(&part))?;
            if let Some(message) = cut {
                return if written > have {
                    log::debug!("{url}: body cut at {written} bytes ({message}); resuming");
                    Ok(None)
                } else {
                    Err(Failed::Retry(format!("body cut: {message}")))
                };
            }
            match total {
                Some(t) if written < t => {
                    if written > have {
                        Ok(None)
                    } else {
                        Err(Failed::Retry("short body".into()))
                    }
                }
                Some(t) if written > t => {
                    std::fs::remove_file(&part).ok();
                    Err(Failed::Retry(format!("got {written} bytes, expected {t}")))
                }
                _ => {
                    file.sync_all().map_err(fatal_io(&part))?;
                    Ok(Some(written))
                }
            }
        })?;
        std::fs::rename(&part, dest).map_err(Error::io(dest))?;
        remove_if_present(&sidecar).map_err(Error::io(&sidecar))?;
        Ok(total)
    }
}

/// Longest validator kept (real ETags are tens of bytes, HTTP dates 29).
const MAX_VALIDATOR_BYTES: usize = 256;

/// `file.ext.part` → `file.ext.part.validator`: the ETag or Last-Modified of the response the
/// part file's bytes came from, sent as `If-Range` on resume.
pub(crate) fn validator_path(part: &Path) -> PathBuf {
    with_suffix(part, ".validator")
}

/// A header value fit to send back: visible ASCII and spaces, bounded.
fn usable_validator(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_VALIDATOR_BYTES && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The validator of a response for `If-Range`: a strong ETag (weak ones may not be used there,
/// RFC 9110 §13.1.5), else Last-Modified.
fn response_validator(resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    header(resp, "etag")
        .filter(|e| !e.starts_with("W/") && usable_validator(e))
        .or_else(|| header(resp, "last-modified").filter(|v| usable_validator(v)))
}

fn read_validator(sidecar: &Path) -> Option<String> {
    let bytes = std::fs::read(sidecar).ok()?;
    let v = std::str::from_utf8(&bytes).ok()?.trim();
    usable_validator(v).then(|| v.to_owned())
}

fn write_validator(sidecar: &Path, v: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(sidecar)?;
    f.write_all(v.as_bytes())?;
    f.sync_all()
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `file.ext` → `file.ext.part`.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".part")
}

/// `path` with `suffix` appended to its file name (not replacing its extension).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// `bytes a-b/total` → (a, b, total); total `*` → `None`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok(),
    ))
}

/// Sleeps up to `d`, waking every 20 ms to check the cancel token.
pub(crate) fn sleep_cancellable(d: Duration, cancel: &CancelToken) -> Result<(), Error> {
    let end = std::time::Instant::now() + d;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// A loopback server for tests of size limits: answers one request with 200 and `declared` as
/// Content-Length (none when `None`: the body ends when the connection closes), then sends
/// `body` bytes or until the client hangs up. Returns its base URL.
#[cfg(test)]
pub(crate) fn oversized_server(declared: Option<u64>, body: u64) -> String {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut out = stream;
        let length = declared.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
        let head = format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0u64;
        while sent < body {
            let n = chunk.len().min((body - sent) as usize);
            if out.write_all(&chunk[..n]).is_err() {
                return;
            }
            sent += n as u64;
        }
    });
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn part_names() {
        assert_eq!(
            part_path(Path::new("/a/b.csv")),
            PathBuf::from("/a/b.csv.part")
        );
        assert_eq!(
            validator_path(Path::new("/a/b.csv.part")),
            PathBuf::from("/a/b.csv.part.validator")
        );
    }

    #[test]
    fn validators_round_trip_and_bad_ones_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("x.part.validator");
        assert_eq!(read_validator(&side), None);
        write_validator(&side, "\"abc123\"").unwrap();
        assert_eq!(read_validator(&side).as_deref(), Some("\"abc123\""));
        std::fs::write(&side, b"\"a\"\r\nX-Evil: 1").unwrap();
        assert_eq!(read_validator(&side), None);
        std::fs::write(&side, vec![b'a'; MAX_VALIDATOR_BYTES + 1]).unwrap();
        assert_eq!(read_validator(&side), None);
        remove_if_present(&side).unwrap();
        remove_if_present(&side).unwrap();
    }

    #[test]
    fn an_object_over_the_limit_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().to_path_buf());
        cfg.attempts = 1;
        let limit = 1 << 20;
        // Declared too long: refused before the body; sent without a length: cut at the limit.
        for (declared, body) in [(Some(limit + 1), 0), (None, 4 * limit)] {
            let http = Http::new(&cfg);
            let url = format!("{}/big.csv", oversized_server(declared, body));
            let dest = dir.path().join("big.csv");
            let counter = AtomicU64::new(0);
            let cancel = CancelToken::default();
            let err = http
                .download_file(&url, &dest, &cancel, &counter, &|_, _| {}, Some(limit))
                .unwrap_err();
            let message = err.to_string();
            assert!(message.contains("1048576-byte limit"), "{message}");
            assert!(!dest.exists() && !part_path(&dest).exists(), "{message}");
            let received = counter.load(Ordering::Relaxed);
            assert!(received <= limit + (64 << 10), "read {received} bytes");
        }
    }
}
