//! Segmentation-index throughput: generates a train-sized segmentation CSV (2.7 M rows,
//! ≈ 800 MB; `OI_BENCH_ROWS` overrides), then times the raw parser and the full SQLite index
//! build, printing MB/s and peak RSS (goal: ≥ 300 MB/s parsing, ≤ 200 MB peak).

use std::io::Write as _;
use std::time::Instant;

use maskstudio::dataset::store::CancelToken;
use maskstudio::openimages::Split;
use maskstudio::openimages::index::{Index, SEGMENTATION_HEADER, parse_segmentation_csv};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn peak_rss_mb() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(|| "n/a".into(), |kb| format!("{:.1} MB", kb / 1024.0))
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
        "generated {rows} rows, {mb:.1} MB in {:.1} s (peak RSS {})",
        t.elapsed().as_secs_f64(),
        peak_rss_mb()
    );

    let cancel = CancelToken::default();
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
    let secs = t.elapsed().as_secs_f64();
    println!(
        "parse only: {} rows in {secs:.2} s = {:.0} MB/s, {:.2} M rows/s (peak RSS {}) [{check}]",
        stats.rows,
        mb / secs,
        n as f64 / secs / 1e6,
        peak_rss_mb()
    );

    let index_dir = dir.path().join("cache");
    let mut index = Index::open(&index_dir).expect("index");
    let t = Instant::now();
    let stats = index
        .load_segmentations(
            Split::Train,
            &csv,
            "bench://train",
            None,
            &cancel,
            &mut |_, _| {},
        )
        .expect("load");
    let secs = t.elapsed().as_secs_f64();
    let db = std::fs::metadata(index.path())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "parse + SQLite index: {} rows in {secs:.2} s = {:.0} MB/s, {:.2} M rows/s; index {:.1} MB (peak RSS {})",
        stats.rows,
        mb / secs,
        stats.rows as f64 / secs / 1e6,
        db as f64 / 1e6,
        peak_rss_mb()
    );
}
