//! Segmentation-index throughput: generates a train-sized segmentation CSV (2.7 M rows,
//! ≈ 800 MB; `OI_BENCH_ROWS` overrides), then times the raw parser and the full index build
//! (parse + everything the index stores to answer its queries), printing MB/s and peak RSS.
//!
//! Goal (issue 15): full build ≥ 300 MB/s with ≤ 200 MB peak RSS. The process starts at about
//! 370 MB resident before doing anything (libtorch's shared libraries, linked into every
//! maskstudio binary), so each phase resets the kernel's high-water mark
//! (`/proc/self/clear_refs`) and the goal is checked on the peak the phase adds over the
//! resident size it started from.

use std::io::Write as _;
use std::time::Instant;

use maskstudio::cancel::CancelToken;
use maskstudio::openimages::Split;
use maskstudio::openimages::index::{Index, SEGMENTATION_HEADER, parse_segmentation_csv};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A field of `/proc/self/status` in MB.
fn status_mb(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|kb| kb / 1024.0)
}

/// CPU seconds (user + system) of the whole process and of the calling thread.
fn cpu_secs() -> (f64, f64) {
    let read = |path: &str| -> f64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0)
            / 100.0 // USER_HZ
    };
    (read("/proc/self/stat"), read("/proc/thread-self/stat"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().next().unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Resets the peak-RSS mark; returns the resident size a phase starts from.
fn start_phase() -> f64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_mb("VmRSS:").unwrap_or(0.0)
}

/// (peak RSS, peak over the phase's start) in MB.
fn phase_peak(start: f64) -> (f64, f64) {
    let peak = status_mb("VmHWM:").unwrap_or(0.0);
    (peak, peak - start)
}

fn main() {
    let rows: u64 = std::env::var("OI_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_700_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("train-annotations-object-segmentation.csv");
    let t = Instant::now();
    {
        let mut w = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&csv).expect("create"),
        );
        writeln!(w, "{SEGMENTATION_HEADER}").expect("write");
        let mids: Vec<String> = (0..350)
            .map(|i| format!("/m/0{:x}", mix(i) >> 40))
            .collect();
        for r in 0..rows {
            let h = mix(r);
            let image = mix(r / 3); // ~3 masks per image
            let mid = &mids[(h % 350) as usize];
            let box_id = (h >> 32) as u32;
            let x0 = (h % 500) as f64 / 1000.0;
            let y0 = ((h >> 12) % 500) as f64 / 1000.0;
            write!(
                w,
                "{image:016x}_{}_{box_id:08x}.png,{image:016x},{mid},{box_id:08x},{x0:.6},{:.6},{y0:.6},{:.6},0.{:05},",
                mid.replace('/', ""),
                x0 + 0.4,
                y0 + 0.4,
                h % 100_000
            )
            .expect("write");
            for c in 0..10u64 {
                let v = mix(h ^ c);
                if c > 0 {
                    w.write_all(b";").expect("write");
                }
                write!(
                    w,
                    "0.{:05} 0.{:05} {}",
                    v % 100_000,
                    (v >> 20) % 100_000,
                    v & 1
                )
                .expect("write");
            }
            w.write_all(b"\n").expect("write");
        }
        w.flush().expect("flush");
    }
    let size = std::fs::metadata(&csv).expect("meta").len();
    let mb = size as f64 / 1e6;
    println!(
        "generated {rows} rows, {mb:.1} MB in {:.1} s (process resident before the phases: {:.1} MB)",
        t.elapsed().as_secs_f64(),
        start_phase()
    );

    let cancel = CancelToken::default();
    let rss0 = start_phase();
    let t = Instant::now();
    let mut n = 0u64;
    let mut check = 0u64;
    let file = std::fs::File::open(&csv).expect("open");
    let stats = parse_segmentation_csv(file, "bench", &cancel, &mut |row| {
        n += 1;
        check = check.wrapping_add(row.image_id.len() as u64 + row.clicks.len() as u64);
        Ok(())
    })
    .expect("parse");
    let parse_secs = t.elapsed().as_secs_f64();
    let (parse_peak, parse_added) = phase_peak(rss0);
    println!(
        "parse only: {} rows in {parse_secs:.2} s = {:.0} MB/s, {:.2} M rows/s (peak RSS {parse_peak:.1} MB, +{parse_added:.1} MB) [{check}]",
        stats.rows,
        mb / parse_secs,
        n as f64 / parse_secs / 1e6,
    );

    let index_dir = dir.path().join("cache");
    let mut index = Index::open(&index_dir).expect("index");
    let rss0 = start_phase();
    let (cpu0, main0) = cpu_secs();
    let t = Instant::now();
    let mut reports = 0u64;
    let stats = index
        .load_segmentations(
            Split::Train,
            &csv,
            "bench://train",
            None,
            &cancel,
            &mut |_, _| reports += 1,
        )
        .expect("load");
    let secs = t.elapsed().as_secs_f64();
    let (cpu1, main1) = cpu_secs();
    let (peak, added) = phase_peak(rss0);
    let db = std::fs::metadata(index.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let build = mb / secs;
    println!(
        "full index build: {} rows in {secs:.2} s = {build:.0} MB/s, {:.2} M rows/s; index {:.1} MB; {reports} progress reports (peak RSS {peak:.1} MB, +{added:.1} MB)",
        stats.rows,
        stats.rows as f64 / secs / 1e6,
        db as f64 / 1e6,
    );
    let (cpu, writer) = (cpu1 - cpu0, main1 - main0);
    println!(
        "  CPU: {cpu:.2} s in all ({:.2} s parser thread, {writer:.2} s SQLite writer = this thread); \
         {:.2} cores busy; 1-min load average {} on {} cores (wall time is inflated when the \
         machine is shared)",
        cpu - writer,
        cpu / secs,
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let ok = build >= 300.0 && added <= 200.0;
    println!(
        "goal (build >= 300 MB/s, build adds <= 200 MB RSS): {} — build {build:.0} MB/s, +{added:.1} MB",
        if ok { "MET" } else { "NOT MET" }
    );
}
