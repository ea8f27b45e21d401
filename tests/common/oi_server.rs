//! A loopback imitation of the Open Images hosts (GCS bucket under `/gcs`, CVDF S3 mirror under
//! `/s3`) with fault injection, and a miniature dataset in the real file formats.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Fault injection, keyed by request path (e.g. `/s3/train/0a1b2c3d4e5f6071.jpg`).
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer 503 this many more times.
    pub fail_503: HashMap<String, u32>,
    /// Send half the body, then close, this many more times.
    pub cut: HashMap<String, u32>,
    /// Answer every Range request with 200 and the whole body.
    pub ignore_range: bool,
    /// Send bodies of paths starting with this prefix in 2 KiB pieces with this pause.
    pub slow: Option<(String, Duration)>,
    /// After a cut of this path, serve these bytes instead (the object changed mid-download).
    pub replace_after_cut: HashMap<String, Vec<u8>>,
    /// After a cut of this path, answer 503 this many times (a run that gives up mid-file).
    pub fail_503_after_cut: HashMap<String, u32>,
    /// Send no `ETag` (clients must fall back to `Last-Modified`).
    pub no_etag: bool,
    /// Send neither `ETag` nor `Last-Modified` (nothing to resume against).
    pub no_validators: bool,
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// GET or HEAD.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Range header.
    pub range: Option<String>,
    /// If-Range header.
    pub if_range: Option<String>,
    /// Status sent.
    pub status: u16,
    /// Body bytes sent.
    pub body_bytes: u64,
}

struct Shared {
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// How many times each path was replaced (its Last-Modified second).
    versions: Mutex<HashMap<String, u64>>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LogEntry>>,
    stop: AtomicBool,
}

/// The server; stops when dropped.
pub struct OiServer {
    /// `http://127.0.0.1:PORT/gcs`.
    pub gcs_base: String,
    /// `http://127.0.0.1:PORT/s3`.
    pub images_base: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for OiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        TcpStream::connect(self.addr).ok(); // wake the accept loop
    }
}

impl OiServer {
    /// Serves `files` (keys are paths without the leading `/`, e.g. `gcs/v5/...`).
    pub fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            files: Mutex::new(
                files
                    .into_iter()
                    .map(|(k, v)| (format!("/{k}"), Arc::new(v)))
                    .collect(),
            ),
            versions: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("oi-server".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let s = s.clone();
                    std::thread::Builder::new()
                        .name("oi-server-conn".into())
                        .spawn(move || {
                            let _ = handle(stream, &s);
                        })
                        .unwrap();
                }
            })
            .unwrap();
        Self {
            gcs_base: format!("http://{addr}/gcs"),
            images_base: format!("http://{addr}/s3"),
            addr,
            shared,
        }
    }

    /// The fault settings.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap()
    }

    /// Replaces or adds a file (its Last-Modified moves on).
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        put_file(&self.shared, &format!("/{key}"), bytes);
    }

    /// Size of a served file.
    pub fn size_of(&self, key: &str) -> Option<u64> {
        self.shared
            .files
            .lock()
            .unwrap()
            .get(&format!("/{key}"))
            .map(|v| v.len() as u64)
    }

    /// Requests answered so far.
    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }
}

fn put_file(s: &Shared, path: &str, bytes: Vec<u8>) {
    s.files
        .lock()
        .unwrap()
        .insert(path.to_owned(), Arc::new(bytes));
    *s.versions
        .lock()
        .unwrap()
        .entry(path.to_owned())
        .or_default() += 1;
}

/// An HTTP date that changes with each replacement of the file.
fn last_modified(version: u64) -> String {
    format!(
        "Mon, 01 Jan 2024 {:02}:{:02}:{:02} GMT",
        version / 3600 % 24,
        version / 60 % 60,
        version % 60
    )
}

fn handle(mut stream: TcpStream, s: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut range = None;
    let mut if_range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            } else if k.trim().eq_ignore_ascii_case("if-range") {
                if_range = Some(v.trim().to_owned());
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let file = s.files.lock().unwrap().get(&path).cloned();
    let log = |status: u16, body_bytes: u64| {
        s.log.lock().unwrap().push(LogEntry {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            if_range: if_range.clone(),
            status,
            body_bytes,
        });
    };
    let head_only = method == "HEAD";
    let Some(file) = file else {
        let body =
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code></Error>";
        write!(
            stream,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if !head_only {
            stream.write_all(body)?;
        }
        log(403, if head_only { 0 } else { body.len() as u64 });
        return Ok(());
    };
    let (cut, slow, ignore_range, no_etag, no_validators) = {
        let mut f = s.faults.lock().unwrap();
        if let Some(n) = f.fail_503.get_mut(&path).filter(|n| **n > 0) {
            *n -= 1;
            drop(f);
            write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            log(503, 0);
            return Ok(());
        }
        let cut = !head_only
            && f.cut
                .get_mut(&path)
                .filter(|n| **n > 0)
                .map(|n| *n -= 1)
                .is_some();
        let slow = f
            .slow
            .as_ref()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, d)| *d);
        (
            cut,
            slow,
            f.ignore_range,
            f.no_etag || f.no_validators,
            f.no_validators,
        )
    };
    let total = file.len() as u64;
    let etag = format!("\"{:08x}\"", crc32fast::hash(&file));
    let modified = last_modified(s.versions.lock().unwrap().get(&path).copied().unwrap_or(0));
    // If-Range (RFC 9110 §13.1.5): the range only if the validator still matches, else the
    // whole current object with 200.
    let range_valid = match if_range.as_deref() {
        None => true,
        Some(v) => (!no_etag && v == etag) || (!no_validators && v == modified),
    };
    let mut status = 200;
    let (mut start, mut end) = (0u64, total);
    if let (Some(r), false, true) = (range.as_deref(), ignore_range, range_valid) {
        match parse_range(r, total) {
            Some((a, b)) => {
                status = 206;
                start = a;
                end = b;
            }
            None => {
                write!(
                    stream,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                log(416, 0);
                return Ok(());
            }
        }
    }
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 {
            "Partial Content"
        } else {
            "OK"
        },
        end - start
    );
    if !no_etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    if !no_validators {
        head.push_str(&format!("Last-Modified: {modified}\r\n"));
    }
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end - 1
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if head_only {
        log(status, 0);
        return Ok(());
    }
    let body = &file[start as usize..end as usize];
    let body = if cut { &body[..body.len() / 2] } else { body };
    let mut sent = 0u64;
    let result = match slow {
        Some(pause) => (|| {
            for chunk in body.chunks(2048) {
                stream.write_all(chunk)?;
                stream.flush()?;
                sent += chunk.len() as u64;
                std::thread::sleep(pause);
            }
            Ok::<_, std::io::Error>(())
        })(),
        None => stream.write_all(body).map(|_| sent = body.len() as u64),
    };
    log(status, sent);
    if cut {
        let (replacement, fail) = {
            let mut f = s.faults.lock().unwrap();
            (
                f.replace_after_cut.remove(&path),
                f.fail_503_after_cut.remove(&path),
            )
        };
        if let Some(bytes) = replacement {
            put_file(s, &path, bytes);
        }
        if let Some(n) = fail {
            s.faults.lock().unwrap().fail_503.insert(path.clone(), n);
        }
        stream.shutdown(std::net::Shutdown::Both).ok();
    }
    result
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → `[start, end)`.
fn parse_range(r: &str, total: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (total.saturating_sub(n), total)
    } else {
        let a: u64 = a.parse().ok()?;
        let b = if b.is_empty() {
            total
        } else {
            (b.parse::<u64>().ok()? + 1).min(total)
        };
        (a, b)
    };
    (start < end && start < total).then_some((start, end))
}

// ---------------------------------------------------------------------------------------------
// The miniature dataset.

/// One instance of a fixture image.
#[derive(Debug, Clone)]
pub struct FxInstance {
    /// MID.
    pub mid: &'static str,
    /// BoxID.
    pub box_id: String,
    /// Foreground rectangle, normalised `[x0, y0, x1, y1]` in the stored frame.
    pub rect: [f64; 4],
    /// The mask PNG has no foreground.
    pub empty: bool,
    /// The mask PNG is at 2/3 of the image size instead of 1600 px long edge.
    pub small: bool,
    /// MaskPath.
    pub mask_path: String,
}

/// One fixture image.
#[derive(Debug, Clone)]
pub struct FxImage {
    /// ImageID.
    pub id: String,
    /// Split.
    pub split: &'static str,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// Rotation column text.
    pub rotation: &'static str,
    /// Instances.
    pub instances: Vec<FxInstance>,
    /// Served as a permanently truncated JPEG.
    pub truncated: bool,
    /// Author column (with quotes and commas).
    pub author: String,
    /// Title column.
    pub title: String,
}

/// Fixture options.
#[derive(Debug, Clone)]
pub struct FxOptions {
    /// Filler masks (Person, class not downloaded by the tests) per train shard.
    pub train_fillers: usize,
    /// Filler masks per validation shard.
    pub val_fillers: usize,
    /// Serve only the V7 class descriptions (with header); the V5 path answers 403.
    pub v7_classes: bool,
    /// Add 70,000 tiny entries to validation shard `f` (a real ZIP64 archive by count).
    pub big_shard: bool,
    /// Extra segmentation CSV rows, as `(split, MaskPath, ImageID, LabelName, BoxID)`, written
    /// with a valid box: a hostile mirror's rows (e.g. a MaskPath of `../../../home/u/x.png`).
    pub extra_segmentation_rows: Vec<(&'static str, String, String, String, String)>,
}

impl Default for FxOptions {
    fn default() -> Self {
        Self {
            train_fillers: 150,
            val_fillers: 40,
            v7_classes: false,
            big_shard: false,
            extra_segmentation_rows: Vec::new(),
        }
    }
}

/// The served files plus what they contain.
pub struct Fixture {
    /// Files by key (`gcs/...`, `s3/...`).
    pub files: HashMap<String, Vec<u8>>,
    /// The images with masks that have JPEGs on the mirror.
    pub images: Vec<FxImage>,
}

/// Hot dog.
pub const HOT_DOG: &str = "/m/01b9xk";
/// Pizza.
pub const PIZZA: &str = "/m/0663v";
/// French fries.
pub const FRIES: &str = "/m/02y6n";
/// Person.
pub const PERSON: &str = "/m/01g317";

const CLASSES: &[(&str, &str)] = &[
    ("/m/011k07", "Tortoise"),
    (HOT_DOG, "Hot dog"),
    ("/m/01_bhs", "Fast food"),
    ("/m/02wbm", "Food"),
    (FRIES, "French fries"),
    (PIZZA, "Pizza"),
    (PERSON, "Person"),
    ("/m/0bt9lr", "Dog"),
    ("/m/0k4j", "Car"),
    ("/m/083wq", "Wheel"),
    ("/m/0hot01", "Hat, \"hot\" style"),
];

const SEGMENTABLE: &[&str] = &[
    HOT_DOG,
    FRIES,
    PIZZA,
    PERSON,
    "/m/0bt9lr",
    "/m/0k4j",
    "/m/083wq",
    "/m/011k07",
];

const HIERARCHY: &str = r#"{"LabelName": "/m/0bl9f", "Subcategory": [{"LabelName": "/m/011k07"}, {"LabelName": "/m/02wbm", "Subcategory": [{"LabelName": "/m/01_bhs", "Subcategory": [{"LabelName": "/m/01b9xk"}, {"LabelName": "/m/02y6n"}]}, {"LabelName": "/m/0663v"}, {"LabelName": "/m/02y6n"}]}, {"LabelName": "/m/01g317"}, {"LabelName": "/m/0bt9lr"}, {"LabelName": "/m/0hot01"}, {"LabelName": "/m/0k4j", "Part": [{"LabelName": "/m/083wq"}]}]}"#;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A 1-bit grayscale PNG (IHDR depth 1, colour type 0), written by hand.
pub fn png_1bit(width: u32, height: u32, on: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let stride = width.div_ceil(8) as usize;
    let mut raw = Vec::with_capacity((stride + 1) * height as usize);
    for y in 0..height {
        raw.push(0); // filter: none
        let mut row = vec![0u8; stride];
        for x in 0..width {
            if on(x, y) {
                row[(x / 8) as usize] |= 0x80 >> (x % 8);
            }
        }
        raw.extend_from_slice(&row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32fast::hash(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &idat);
    chunk(b"IEND", &[]);
    out
}

/// ZIP writer: flat entries, stored or deflated, optionally forced to ZIP64 records.
pub struct ZipBuilder {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u64,
    zip64: bool,
}

impl ZipBuilder {
    /// A new archive; `zip64` forces the ZIP64 records (and offset extras) even when small.
    pub fn new(zip64: bool) -> Self {
        Self {
            out: Vec::new(),
            central: Vec::new(),
            count: 0,
            zip64,
        }
    }

    /// Adds an entry.
    pub fn add(&mut self, name: &str, data: &[u8], deflate: bool) {
        let crc = crc32fast::hash(data);
        let comp = if deflate {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.to_vec()
        };
        let method: u16 = if deflate { 8 } else { 0 };
        let offset = self.out.len() as u64;
        let o = &mut self.out;
        o.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        o.extend_from_slice(&[20, 0, 0, 0]);
        o.extend_from_slice(&method.to_le_bytes());
        o.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
        o.extend_from_slice(&crc.to_le_bytes());
        o.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        o.extend_from_slice(&(data.len() as u32).to_le_bytes());
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&comp);
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&[45, 3, 45, 0, 0, 0]);
        c.extend_from_slice(&method.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0x21, 0]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(if self.zip64 { 12u16 } else { 0 }).to_le_bytes());
        c.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xa4, 0x81]);
        let off32 = if self.zip64 {
            0xFFFF_FFFF
        } else {
            offset as u32
        };
        c.extend_from_slice(&off32.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        if self.zip64 {
            c.extend_from_slice(&1u16.to_le_bytes());
            c.extend_from_slice(&8u16.to_le_bytes());
            c.extend_from_slice(&offset.to_le_bytes());
        }
        self.count += 1;
    }

    /// The finished archive.
    pub fn finish(mut self) -> Vec<u8> {
        let cd_offset = self.out.len() as u64;
        let cd_size = self.central.len() as u64;
        self.out.extend_from_slice(&self.central);
        let zip64 = self.zip64 || self.count > 0xFFFF;
        if zip64 {
            let rec = self.out.len() as u64;
            let o = &mut self.out;
            o.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            o.extend_from_slice(&44u64.to_le_bytes());
            o.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            o.extend_from_slice(&self.count.to_le_bytes());
            o.extend_from_slice(&self.count.to_le_bytes());
            o.extend_from_slice(&cd_size.to_le_bytes());
            o.extend_from_slice(&cd_offset.to_le_bytes());
            o.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            o.extend_from_slice(&0u32.to_le_bytes());
            o.extend_from_slice(&rec.to_le_bytes());
            o.extend_from_slice(&1u32.to_le_bytes());
        }
        let o = &mut self.out;
        o.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        o.extend_from_slice(&[0, 0, 0, 0]);
        let n16 = if zip64 { 0xFFFF } else { self.count as u16 };
        o.extend_from_slice(&n16.to_le_bytes());
        o.extend_from_slice(&n16.to_le_bytes());
        let s32 = if zip64 { 0xFFFF_FFFF } else { cd_size as u32 };
        let o32 = if zip64 { 0xFFFF_FFFF } else { cd_offset as u32 };
        o.extend_from_slice(&s32.to_le_bytes());
        o.extend_from_slice(&o32.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

/// Deterministic hash for fixture values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn inst(mid: &'static str, image: &str, k: u64, rect: [f64; 4]) -> FxInstance {
    let box_id = format!(
        "{:08x}",
        mix(k ^ u64::from_str_radix(&image[..8], 16).unwrap()) as u32
    );
    FxInstance {
        mid,
        mask_path: format!("{image}_{}_{box_id}.png", mid.replace('/', "")),
        box_id,
        rect,
        empty: false,
        small: false,
    }
}

/// Quadrant rectangles (normalised) so instances never overlap.
const Q: [[f64; 4]; 4] = [
    [0.05, 0.05, 0.45, 0.45],
    [0.55, 0.05, 0.95, 0.45],
    [0.05, 0.55, 0.45, 0.95],
    [0.55, 0.55, 0.95, 0.95],
];

fn image(
    id: &str,
    split: &'static str,
    w: u32,
    h: u32,
    rotation: &'static str,
    classes: &[&'static str],
) -> FxImage {
    FxImage {
        id: id.to_owned(),
        split,
        width: w,
        height: h,
        rotation,
        instances: classes
            .iter()
            .enumerate()
            .map(|(k, mid)| inst(mid, id, k as u64, Q[k % 4]))
            .collect(),
        truncated: false,
        author: format!("Smith, \"Bob\" {}", &id[..4]),
        title: format!("Lunch, at \"{}\"", &id[..6]),
    }
}

/// The fixture images (IDs spread over many shard letters).
pub fn fixture_images() -> Vec<FxImage> {
    let mut v = vec![
        image(
            "0a1b2c3d4e5f6071",
            "train",
            320,
            240,
            "0.0",
            &[HOT_DOG, PERSON],
        ),
        image("1b2c3d4e5f607182", "train", 300, 200, "90.0", &[HOT_DOG]),
        image(
            "2c3d4e5f60718293",
            "train",
            256,
            256,
            "180.0",
            &[HOT_DOG, HOT_DOG],
        ),
        image("3d4e5f60718293a4", "train", 240, 320, "270.0", &[HOT_DOG]),
        image("4e5f60718293a4b5", "train", 400, 300, "", &[HOT_DOG]),
        image(
            "5f60718293a4b5c6",
            "train",
            320,
            240,
            "0.0",
            &[HOT_DOG, PIZZA],
        ),
        image("60718293a4b5c6d7", "train", 1024, 683, "0.0", &[HOT_DOG]),
        image("718293a4b5c6d7e8", "train", 320, 240, "0.0", &[HOT_DOG]),
        image(
            "8293a4b5c6d7e8f9",
            "train",
            320,
            240,
            "0.0",
            &[HOT_DOG, HOT_DOG],
        ),
        image("93a4b5c6d7e8f90a", "train", 200, 300, "0.0", &[HOT_DOG]),
        image("a4b5c6d7e8f90a1b", "train", 320, 240, "0.0", &[HOT_DOG]),
        image("b5c6d7e8f90a1b2c", "train", 320, 240, "0.0", &[HOT_DOG]),
        image("c6d7e8f90a1b2c3d", "train", 320, 240, "0.0", &[PIZZA]),
        image(
            "d7e8f90a1b2c3d4e",
            "train",
            240,
            320,
            "90.0",
            &[PIZZA, FRIES],
        ),
        image(
            "e8f90a1b2c3d4e5f",
            "train",
            320,
            240,
            "0.0",
            &[FRIES, HOT_DOG],
        ),
        image("f90a1b2c3d4e5f60", "train", 320, 240, "0.0", &[FRIES]),
        image(
            "0b1c2d3e4f5a6b7c",
            "validation",
            320,
            240,
            "0.0",
            &[HOT_DOG],
        ),
        image(
            "5c6d7e8f9a0b1c2d",
            "validation",
            240,
            320,
            "",
            &[HOT_DOG, PIZZA],
        ),
        image(
            "fa0b1c2d3e4f5a6b",
            "validation",
            300,
            200,
            "90.0",
            &[HOT_DOG],
        ),
        image("1c2d3e4f5a6b7c8d", "validation", 320, 240, "0.0", &[PIZZA]),
        image("2d3e4f5a6b7c8d9e", "test", 320, 240, "0.0", &[HOT_DOG]),
    ];
    v[6].instances[0].small = true; // 2/3-size mask for the 1024 px image
    v[7].truncated = true;
    v[8].instances[1].empty = true;
    v
}

fn mask_png(img: &FxImage, i: &FxInstance) -> Vec<u8> {
    let (w, h) = (img.width as f64, img.height as f64);
    let (mw, mh) = if i.small {
        (
            (w * 2.0 / 3.0).round() as u32,
            (h * 2.0 / 3.0).round() as u32,
        )
    } else if w >= h {
        (1600, (1600.0 * h / w).round() as u32)
    } else {
        ((1600.0 * w / h).round() as u32, 1600)
    };
    let r = i.rect;
    let empty = i.empty;
    png_1bit(mw, mh, |x, y| {
        let (fx, fy) = ((x as f64 + 0.5) / mw as f64, (y as f64 + 0.5) / mh as f64);
        !empty && fx >= r[0] && fx < r[2] && fy >= r[1] && fy < r[3]
    })
}

/// The stored-frame JPEG: dark noise with a white rectangle per (non-empty) instance.
pub fn jpeg_for(img: &FxImage) -> Vec<u8> {
    let seed = u64::from_str_radix(&img.id[..8], 16).unwrap();
    let pic = image::RgbImage::from_fn(img.width, img.height, |x, y| {
        let (fx, fy) = (
            (x as f64 + 0.5) / img.width as f64,
            (y as f64 + 0.5) / img.height as f64,
        );
        let inside = img.instances.iter().any(|i| {
            !i.empty && fx >= i.rect[0] && fx < i.rect[2] && fy >= i.rect[1] && fy < i.rect[3]
        });
        if inside {
            image::Rgb([255, 255, 255])
        } else {
            let n = (mix(seed ^ u64::from(x) ^ (u64::from(y) << 20)) % 40) as u8;
            image::Rgb([n, n / 2, 60 - n])
        }
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&pic)
        .unwrap();
    out
}

/// Filler blob masks (irregular ellipses), a few variants reused across filler entries.
fn filler_pngs() -> Vec<Vec<u8>> {
    (0..4)
        .map(|v| {
            let (mw, mh) = (1600u32, 1066u32);
            png_1bit(mw, mh, move |x, y| {
                let (cx, cy) = (500.0 + 150.0 * v as f64, 500.0);
                let (dx, dy) = ((x as f64 - cx) / 300.0, (y as f64 - cy) / 250.0);
                let wobble = 1.0 + 0.08 * ((dy * 7.0 + v as f64).sin() + (dx * 11.0).cos());
                dx * dx + dy * dy < wobble
            })
        })
        .collect()
}

/// Builds the miniature tree.
pub fn build_fixture(opts: &FxOptions) -> Fixture {
    let images = fixture_images();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    // Catalogue files.
    let mut desc = String::new();
    for (mid, name) in CLASSES {
        desc.push_str(&format!("{mid},{}\n", csv_field(name)));
    }
    if opts.v7_classes {
        files.insert(
            "gcs/v7/oidv7-class-descriptions-boxable.csv".into(),
            format!("LabelName,DisplayName\n{desc}").into_bytes(),
        );
    } else {
        files.insert(
            "gcs/v5/class-descriptions-boxable.csv".into(),
            desc.into_bytes(),
        );
    }
    files.insert(
        "gcs/v5/classes-segmentation.txt".into(),
        SEGMENTABLE
            .iter()
            .map(|m| format!("{m}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    files.insert(
        "gcs/2018_04/bbox_labels_600_hierarchy.json".into(),
        HIERARCHY.as_bytes().to_vec(),
    );

    let fillers = filler_pngs();
    for split in ["train", "validation", "test"] {
        let mut seg_rows: Vec<(u64, String)> = Vec::new();
        let mut img_rows: Vec<(u64, String)> = Vec::new();
        let mut shards: HashMap<char, Vec<(String, Vec<u8>, bool)>> = HashMap::new();
        let train = split == "train";
        let row = |img_id: &str, i: &FxInstance, k: u64| {
            let r = i.rect;
            let (iou, clicks) = if train {
                (
                    format!("{:.5}", 0.5 + (mix(k) % 500) as f64 / 1000.0),
                    format!(
                        "{:.5} {:.5} 1;{:.5} {:.5} 0",
                        r[0] + 0.01,
                        r[1] + 0.01,
                        r[2] - 0.01,
                        r[3] - 0.01
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            format!(
                "{},{img_id},{},{},{:.6},{:.6},{:.6},{:.6},{iou},{clicks}\n",
                i.mask_path, i.mid, i.box_id, r[0], r[2], r[1], r[3]
            )
        };
        for (k, img) in images.iter().filter(|i| i.split == split).enumerate() {
            for (j, i) in img.instances.iter().enumerate() {
                seg_rows.push((
                    mix(k as u64 * 31 + j as u64),
                    row(&img.id, i, k as u64 * 7 + j as u64),
                ));
                let shard = img.id.chars().next().unwrap();
                shards.entry(shard).or_default().push((
                    i.mask_path.clone(),
                    mask_png(img, i),
                    true,
                ));
            }
            let jpeg = jpeg_for(img);
            let jpeg = if img.truncated {
                jpeg[..jpeg.len() * 2 / 3].to_vec()
            } else {
                jpeg
            };
            files.insert(format!("s3/{split}/{}.jpg", img.id), jpeg);
            img_rows.push((
                mix(k as u64 + 1000),
                format!(
                    "{},{split},https://farm1.staticflickr.com/1/{k}_o.jpg,https://www.flickr.com/photos/x/{k},https://creativecommons.org/licenses/by/2.0/,https://www.flickr.com/people/x/,{},{},{},{},{},{}\n",
                    img.id,
                    csv_field(&img.author),
                    csv_field(&img.title),
                    100_000 + k,
                    "KFukvivpCM5QXl5SqKe41g==",
                    if k % 3 == 0 { String::new() } else { format!("https://c1.staticflickr.com/1/{k}_z.jpg") },
                    img.rotation
                ),
            ));
        }
        // Fillers: Person masks of images that have no JPEG (never selected by the tests).
        let per_shard = if train {
            opts.train_fillers
        } else {
            opts.val_fillers
        };
        for (si, shard) in "0123456789abcdef".chars().enumerate() {
            for f in 0..per_shard {
                let id = format!(
                    "{shard}{:015x}",
                    mix((si * 100_000 + f) as u64 ^ split.len() as u64) >> 4
                );
                let fi = inst(PERSON, &id, f as u64, [0.2, 0.2, 0.8, 0.8]);
                seg_rows.push((
                    mix(id.len() as u64 ^ mix(f as u64 + si as u64 * 7919)),
                    row(&id, &fi, f as u64),
                ));
                shards.entry(shard).or_default().push((
                    fi.mask_path.clone(),
                    fillers[f % fillers.len()].clone(),
                    false,
                ));
                img_rows.push((mix(f as u64 ^ 77), format!("{id},{split},https://x/{f}.jpg,https://x/{f},https://creativecommons.org/licenses/by/2.0/,https://x/,Anon,Untitled,1,AAAA,,0.0\n")));
            }
        }
        if opts.big_shard && split == "validation" {
            let e = shards.entry('f').or_default();
            for n in 0..70_000u64 {
                e.push((
                    format!("f{:015x}_m0tiny_{:08x}.png", mix(n) >> 4, n as u32),
                    n.to_le_bytes().to_vec(),
                    false,
                ));
            }
        }
        for (n, (_, mask_path, image_id, label, box_id)) in opts
            .extra_segmentation_rows
            .iter()
            .filter(|r| r.0 == split)
            .enumerate()
        {
            seg_rows.push((
                mix(n as u64 ^ 0xbad),
                format!(
                    "{},{image_id},{label},{box_id},0.100000,0.900000,0.100000,0.900000,,\n",
                    csv_field(mask_path)
                ),
            ));
        }
        // Unsorted CSVs.
        seg_rows.sort_by_key(|(k, _)| *k);
        img_rows.sort_by_key(|(k, _)| *k);
        let mut seg = String::from(
            "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n",
        );
        seg.extend(seg_rows.into_iter().map(|(_, r)| r));
        files.insert(
            format!("gcs/v5/{split}-annotations-object-segmentation.csv"),
            seg.into_bytes(),
        );
        let mut meta = String::from(
            "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,OriginalMD5,Thumbnail300KURL,Rotation\n",
        );
        meta.extend(img_rows.into_iter().map(|(_, r)| r));
        let meta_path = match split {
            "train" => "gcs/2018_04/train/train-images-boxable-with-rotation.csv",
            "validation" => "gcs/2018_04/validation/validation-images-with-rotation.csv",
            _ => "gcs/2018_04/test/test-images-with-rotation.csv",
        };
        files.insert(meta_path.into(), meta.into_bytes());
        for (shard, mut entries) in shards {
            entries.sort_by_key(|e| {
                mix(e.0.len() as u64 ^ u64::from(e.0.as_bytes()[3]) ^ u64::from(e.0.as_bytes()[20]))
            });
            let digit = shard.to_digit(16).unwrap();
            let mut z = ZipBuilder::new(digit % 2 == 0);
            for (name, data, deflate) in &entries {
                z.add(name, data, *deflate);
            }
            files.insert(
                format!("gcs/v5/{split}-masks/{split}-masks-{shard}.zip"),
                z.finish(),
            );
        }
    }
    Fixture { files, images }
}

/// A loopback mirror serving a fixture, a temp folder and a download [`maskstudio::openimages::Config`]
/// pointed at the mirror (fast retries), shared by the download tests.
pub struct OiEnv {
    /// The mirror.
    pub server: OiServer,
    /// The fixture's images.
    pub images: Vec<FxImage>,
    /// Holds `cache/` (the downloader's) and `project/`.
    pub dir: tempfile::TempDir,
    /// Download settings aimed at the mirror.
    pub cfg: maskstudio::openimages::Config,
}

impl OiEnv {
    /// Serves the fixture built from `opts`; `workers` image downloads run in parallel.
    pub fn start(opts: &FxOptions, workers: usize) -> Self {
        let fx = build_fixture(opts);
        let server = OiServer::start(fx.files);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = maskstudio::openimages::Config::new(dir.path().join("cache"));
        cfg.gcs_base = server.gcs_base.clone();
        cfg.images_base = server.images_base.clone();
        cfg.workers = workers;
        cfg.attempts = 4;
        cfg.backoff = Duration::from_millis(5);
        cfg.read_timeout = Duration::from_secs(5);
        Self {
            server,
            images: fx.images,
            dir,
            cfg,
        }
    }

    /// The project in `dir/project` (created on first use).
    pub fn project(&self) -> maskstudio::dataset::store::Project {
        maskstudio::dataset::store::Project::create_or_open(&self.dir.path().join("project"))
            .unwrap()
    }
}
