//! The Open Images downloader against a hostile or changing mirror: MaskPaths that name files
//! outside the cache, malicious mask shards, a remote file that changes under a resumed
//! download, and a bounded, seeded property test of the shard ZIP and segmentation CSV readers.
//!
//! Memory bounds are measured, not assumed: this test binary counts allocations per thread
//! (largest single allocation and peak live bytes) with a wrapper around the system allocator.
#![allow(unsafe_code)] // only the counting allocator below: it forwards every call to `System`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::oi_server::{FxImage, FxOptions, HOT_DOG, PIZZA, ZipBuilder, build_fixture, png_1bit};
use maskstudio::cancel::CancelToken;
use maskstudio::openimages::index::{Index, SEGMENTATION_HEADER, parse_segmentation_csv};
use maskstudio::openimages::zip::{
    self, CentralDirectory, MAX_CENTRAL_DIR_BYTES, MAX_ENTRY_BYTES, RangeSource,
};
use maskstudio::openimages::{
    DownloadRequest, DownloadSummary, Error, FailureKind, Split, check_mask_name, download,
};

// ---------------------------------------------------------------------------------------------
// Allocation accounting (per thread, so tests running in parallel do not see each other).

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(delta: isize, size: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let _ = BIGGEST.try_with(|b| b.set(b.get().max(size)));
}

// SAFETY: every method forwards to `System` with the same arguments; the bookkeeping touches
// only const-initialised thread-locals without destructors (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize), 0);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize, new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` allocated on this thread: (result, largest single allocation, peak live growth).
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    BIGGEST.with(|b| b.set(0));
    let out = f();
    let peak = PEAK.with(Cell::get).saturating_sub(base).max(0) as usize;
    (out, BIGGEST.with(Cell::get), peak)
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Environment.

type Env = common::oi_server::OiEnv;

fn env(opts: FxOptions) -> Env {
    Env::start(&opts, 2)
}

fn small() -> FxOptions {
    FxOptions {
        train_fillers: 2,
        val_fillers: 3,
        ..Default::default()
    }
}

impl Env {
    fn run(&self, req: &DownloadRequest) -> Result<DownloadSummary, Error> {
        download(
            req,
            &mut self.project(),
            &self.cfg,
            &CancelToken::default(),
            &|_| {},
        )
    }

    /// Images of the validation split with at least one instance of `mid`.
    fn validation_with(&self, mid: &str) -> Vec<&FxImage> {
        self.images
            .iter()
            .filter(|i| i.split == "validation" && i.instances.iter().any(|x| x.mid == mid))
            .collect()
    }
}

fn request(classes: &[&str]) -> DownloadRequest {
    DownloadRequest {
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        splits: vec![Split::Validation],
        ..Default::default()
    }
}

const VAL_CSV: &str = "v5/validation-annotations-object-segmentation.csv";

// ---------------------------------------------------------------------------------------------
// 1. MaskPaths that leave the staging folder.

/// A relative path from the staging mask folder up to `/` and down to `target` (absolute).
fn climb_to(target: &Path) -> String {
    let rel = target.to_string_lossy();
    format!("{}{}", "../".repeat(40), rel.trim_start_matches('/'))
}

#[test]
fn hostile_mask_paths_never_touch_files_outside_the_cache() {
    let outside = tempfile::tempdir().unwrap();
    let thesis = outside.path().join("thesis.tex");
    let abs = outside.path().join("abs.txt");
    let mask_like = outside.path().join("climb.png");
    let backslash = outside.path().join("win.png");
    std::fs::write(&thesis, b"\\documentclass{article} precious").unwrap();
    std::fs::write(&abs, b"absolute path target").unwrap();
    // A valid 1-bit mask: the old downloader imported it as an instance, then deleted it.
    let png = png_1bit(64, 48, |x, y| (8..40).contains(&x) && (8..40).contains(&y));
    std::fs::write(&mask_like, &png).unwrap();
    std::fs::write(&backslash, &png).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = [&thesis, &abs, &mask_like, &backslash]
        .iter()
        .map(|p| ((*p).clone(), std::fs::read(p).unwrap()))
        .collect();

    let image = "0b1c2d3e4f5a6b7c"; // a validation Hot dog image of the fixture
    let hostile = [
        climb_to(&thesis),
        abs.to_string_lossy().into_owned(),
        climb_to(&mask_like),
        climb_to(&backslash).replace('/', "\\"),
        format!("{image}_m01b9xk_0000beef.png/../../../../x.png"),
    ];
    let mut opts = small();
    opts.extra_segmentation_rows = hostile
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                "validation",
                p.clone(),
                image.to_owned(),
                HOT_DOG.to_owned(),
                format!("0000be{i:02x}"),
            )
        })
        .collect();
    let env = env(opts);
    let summary = env.run(&request(&["Hot dog"])).unwrap();
    eprintln!("{summary:#?}");

    // The download finished and the good masks arrived.
    let expected = env.validation_with(HOT_DOG);
    assert_eq!(summary.images_added, expected.len());
    let hot_dogs: usize = expected
        .iter()
        .map(|i| i.instances.iter().filter(|x| x.mid == HOT_DOG).count())
        .sum();
    assert_eq!(
        summary.instances_added, hot_dogs,
        "no outside file imported"
    );
    // Every hostile row is a failure with its own reason, nothing else failed.
    let by_kind = summary.failures_by_kind();
    let refused = &by_kind[&FailureKind::UnsafeMaskPath];
    assert_eq!(refused.len(), hostile.len(), "{refused:?}");
    for h in &hostile {
        // Failure ids are escaped (a backslash shows doubled).
        let shown = h.escape_debug().to_string();
        assert!(
            refused.contains(&shown.as_str()),
            "{shown} not reported: {refused:?}"
        );
    }
    assert_eq!(by_kind.len(), 1, "only unsafe paths failed: {by_kind:?}");
    assert_eq!(FailureKind::UnsafeMaskPath.as_str(), "unsafe mask path");
    let text = maskstudio::openimages::cli::summary_text(&summary);
    assert!(
        text.contains(&format!("left out, unsafe mask path ({})", hostile.len())),
        "{text}"
    );
    // The files outside are still there, byte for byte.
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path:?} changed");
    }
    // The project holds no instance whose provenance names a hostile path.
    let project = env.project();
    for img in project.export_set(None).unwrap().images {
        for inst in project.instances(img.id).unwrap() {
            let mask = inst.provenance.as_ref().unwrap()["mask"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(check_mask_name(&mask).is_ok(), "{mask}");
        }
    }

    // A second run (rows still in the index) reports nothing new and still touches nothing.
    let again = env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(again.images_added, 0);
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path:?} changed");
    }
}

#[test]
fn an_unsafe_name_already_in_an_old_index_is_refused_where_it_becomes_a_path() {
    // An index built before MaskPaths were checked may hold one: the second check, where the
    // name is joined onto the staging folder, must catch it.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.png");
    let png = png_1bit(64, 48, |x, y| (8..40).contains(&x) && (8..40).contains(&y));
    std::fs::write(&victim, &png).unwrap();
    let env = env(small());
    env.run(&request(&["Pizza"])).unwrap(); // indexes the validation split
    let image = 0x0b1c_2d3e_4f5a_6b7c_u64; // its only instance is a Hot dog
    let hostile = climb_to(&victim);
    let conn = rusqlite::Connection::open(env.cfg.cache_dir.join("index.sqlite")).unwrap();
    let changed = conn
        .execute(
            "UPDATE masks SET mask_path = ?1 WHERE split = 1 AND image = ?2",
            rusqlite::params![hostile, image as i64],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let summary = env.run(&request(&["Hot dog"])).unwrap();
    eprintln!("{summary:#?}");
    let by_kind = summary.failures_by_kind();
    assert_eq!(
        by_kind[&FailureKind::UnsafeMaskPath],
        vec![hostile.as_str()]
    );
    assert_eq!(by_kind.len(), 1, "{by_kind:?}");
    // Hot dogs of the images the Pizza run did not bring, less the refused one.
    let hot_dogs: usize = env
        .validation_with(HOT_DOG)
        .iter()
        .filter(|i| i.instances.iter().all(|x| x.mid != PIZZA))
        .map(|i| i.instances.iter().filter(|x| x.mid == HOT_DOG).count())
        .sum();
    assert_eq!(
        summary.instances_added,
        hot_dogs - 1,
        "the outside PNG was imported"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        png,
        "the outside file changed"
    );
}

#[test]
fn mask_names_follow_the_open_images_form() {
    for good in [
        "0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        "677c122b0eaa5d16_m04yx4_9a041d52.png",
        "0a1b2c3d4e5f6071_m01_bhs_0000beef.png", // MIDs may hold '_'
        "0a1b2c3d4e5f6071_g11b7_0000beef.png",
    ] {
        assert_eq!(check_mask_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "../0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        "/0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        "x/0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        "0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png/..",
        "..\\0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        ".0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png",
        "0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png\0",
        "0a9e4fa5b0806fc2_m/0663v_2aa2bf3a.png",
        "0a9e4fa5b0806fc2_m0663v_2aa2bf3a.txt",
        "0a9e4fa5b0806fc2__2aa2bf3a.png",
        "0a9e4fa5b0806fcz_m0663v_2aa2bf3a.png",
        "0a9e4fa5b0806fc2_m0663v_2aa2bf3g.png",
        "0a9e4fa5b0806fc2_m0..3v_2aa2bf3a.png",
        "0a9e4fa5b0806fc2-m0663v-2aa2bf3a.png",
    ] {
        let err = check_mask_name(bad).unwrap_err();
        assert!(err.starts_with("MaskPath \""), "{bad:?}: {err}");
        assert!(!err.contains('\0'), "reason is escaped: {err:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Malicious shard ZIPs, built field by field.

/// One entry of a hand-made archive; every field can lie.
#[derive(Clone)]
struct RawEntry {
    name: String,
    /// Bytes as stored (already deflated for method 8).
    stored: Vec<u8>,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    /// Local header offset written to the directory (`None`: the true one).
    offset: Option<u64>,
    /// Sizes and offset in a ZIP64 extra field (32-bit fields saturated).
    zip64: bool,
}

impl RawEntry {
    fn stored(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            stored: data.to_vec(),
            method: 0,
            crc: crc32fast::hash(data),
            compressed: data.len() as u64,
            size: data.len() as u64,
            offset: None,
            zip64: false,
        }
    }

    fn deflated(name: &str, data: &[u8]) -> Self {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        let stored = e.finish().unwrap();
        Self {
            name: name.to_owned(),
            compressed: stored.len() as u64,
            stored,
            method: 8,
            crc: crc32fast::hash(data),
            size: data.len() as u64,
            offset: None,
            zip64: false,
        }
    }
}

/// Lies about the directory as a whole.
#[derive(Default, Clone, Copy)]
struct DirLies {
    /// Entry count in the end records.
    entries: Option<u64>,
    /// Directory size in the end records.
    size: Option<u64>,
    /// Write the ZIP64 end records.
    zip64: bool,
}

fn raw_zip(entries: &[RawEntry], lies: DirLies) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let offset = out.len() as u64;
        let sat = |v: u64| if e.zip64 { 0xFFFF_FFFF } else { v as u32 };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0]);
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]);
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&sat(e.compressed).to_le_bytes());
        out.extend_from_slice(&sat(e.size).to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&e.stored);
        let c = &mut central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&[45, 3, 45, 0, 0, 0]);
        c.extend_from_slice(&e.method.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0x21, 0]);
        c.extend_from_slice(&e.crc.to_le_bytes());
        c.extend_from_slice(&sat(e.compressed).to_le_bytes());
        c.extend_from_slice(&sat(e.size).to_le_bytes());
        c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(if e.zip64 { 28u16 } else { 0 }).to_le_bytes());
        c.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xa4, 0x81]);
        let off = e.offset.unwrap_or(offset);
        c.extend_from_slice(&sat(off).to_le_bytes());
        c.extend_from_slice(e.name.as_bytes());
        if e.zip64 {
            c.extend_from_slice(&1u16.to_le_bytes());
            c.extend_from_slice(&24u16.to_le_bytes());
            c.extend_from_slice(&e.size.to_le_bytes());
            c.extend_from_slice(&e.compressed.to_le_bytes());
            c.extend_from_slice(&off.to_le_bytes());
        }
    }
    let cd_offset = out.len() as u64;
    let cd_size = lies.size.unwrap_or(central.len() as u64);
    let count = lies.entries.unwrap_or(entries.len() as u64);
    out.extend_from_slice(&central);
    if lies.zip64 {
        let rec = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&cd_size.to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&rec.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let (n16, s32, o32) = if lies.zip64 {
        (0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF)
    } else {
        (count as u16, cd_size as u32, cd_offset as u32)
    };
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&s32.to_le_bytes());
    out.extend_from_slice(&o32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The directory error, or each entry's result.
type ReadAll = Result<Vec<Result<Vec<u8>, Error>>, Error>;

/// Reads every entry of an archive.
fn read_all(bytes: &Vec<u8>) -> ReadAll {
    let (dir, _) = CentralDirectory::read(bytes)?;
    Ok(dir
        .entries
        .iter()
        .take(64)
        .map(|e| zip::read_entry(bytes, &dir, e))
        .collect())
}

/// Runs `read_all` with panics caught (reported, then failed) and allocations measured.
fn read_hostile(case: &str, bytes: &Vec<u8>) -> (ReadAll, usize) {
    let (result, biggest, peak) = measured(|| catch_unwind(AssertUnwindSafe(|| read_all(bytes))));
    let result = result.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{case}: the ZIP reader panicked: {msg}")
    });
    eprintln!("{case}: largest allocation {biggest} B, peak {peak} B");
    (result, biggest.max(peak))
}

fn mask_png() -> Vec<u8> {
    png_1bit(160, 120, |x, y| {
        (20..90).contains(&x) && (30..100).contains(&y)
    })
}

const NAME: &str = "0a1b2c3d4e5f6071_m01b9xk_0000beef.png";

#[test]
fn a_huge_declared_size_is_refused_before_inflating() {
    // 8 MiB of zeros deflate to a few KB; the directory claims 4 GiB.
    let zeros = vec![0u8; 8 * MIB];
    let mut e = RawEntry::deflated(NAME, &zeros);
    drop(zeros);
    e.size = 4 << 30;
    e.zip64 = true;
    let bytes = raw_zip(&[e.clone()], DirLies::default());
    let (result, used) = read_hostile("declared 4 GiB", &bytes);
    let results = result.unwrap();
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(err.contains(NAME) && err.contains("<memory>"), "{err}");
    assert!(err.contains("limit"), "{err}");
    assert!(used < 2 * MIB, "allocated {used} B for a refused entry");

    // Declared small but inflating to more: stops one byte past the declared size.
    e.size = 1000;
    let bytes = raw_zip(&[e], DirLies::default());
    let (result, used) = read_hostile("inflates past its size", &bytes);
    let err = result.unwrap()[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("1001") && err.contains(NAME), "{err}");
    assert!(used < 2 * MIB, "allocated {used} B");
}

#[test]
fn offsets_and_sizes_outside_the_data_are_errors_naming_the_entry() {
    let png = mask_png();
    let good = RawEntry::stored("0a1b2c3d4e5f6071_m01b9xk_00000001.png", &png);
    let len_guess = 4096 + png.len() as u64 * 4;
    let cases: Vec<(&str, RawEntry, &str)> = vec![
        (
            "local header offset past the end",
            RawEntry {
                offset: Some(len_guess + 100),
                zip64: true,
                ..RawEntry::stored(NAME, &png)
            },
            "does not fit before the central directory",
        ),
        (
            "offset + size overflows",
            RawEntry {
                offset: Some(u64::MAX - 10),
                zip64: true,
                ..RawEntry::stored(NAME, &png)
            },
            "does not fit before the central directory",
        ),
        (
            "compressed size past the end",
            RawEntry {
                compressed: 1 << 20,
                ..RawEntry::deflated(NAME, &png)
            },
            "does not fit before the central directory",
        ),
        (
            "compressed size u64::MAX",
            RawEntry {
                compressed: u64::MAX,
                zip64: true,
                ..RawEntry::deflated(NAME, &png)
            },
            "limit",
        ),
        (
            "stored sizes disagree",
            RawEntry {
                size: 10,
                ..RawEntry::stored(NAME, &png)
            },
            "stored entry",
        ),
    ];
    for (case, bad, expect) in cases {
        let bytes = raw_zip(&[good.clone(), bad], DirLies::default());
        let (result, used) = read_hostile(case, &bytes);
        let results = result.unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(results[0].as_ref().unwrap(), &png, "{case}: the good entry");
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains(NAME) && err.contains(expect), "{case}: {err}");
        assert!(used < 2 * MIB, "{case}: allocated {used} B");
    }
}

#[test]
fn lying_directory_counts_and_sizes_are_errors_without_big_allocations() {
    let png = mask_png();
    let e = RawEntry::stored(NAME, &png);
    let cases = [
        (
            "count 2^40 (ZIP64)",
            DirLies {
                entries: Some(1 << 40),
                zip64: true,
                ..Default::default()
            },
            "claims",
        ),
        (
            "count 5, one entry",
            DirLies {
                entries: Some(5),
                ..Default::default()
            },
            "entries",
        ),
        (
            "directory size 2^62 (ZIP64)",
            DirLies {
                size: Some(1 << 62),
                zip64: true,
                ..Default::default()
            },
            "beyond the end",
        ),
        (
            "directory size u64::MAX (ZIP64)",
            DirLies {
                size: Some(u64::MAX),
                zip64: true,
                ..Default::default()
            },
            "beyond the end",
        ),
    ];
    for (case, lies, expect) in cases {
        let bytes = raw_zip(std::slice::from_ref(&e), lies);
        let (result, used) = read_hostile(case, &bytes);
        let err = result.err().unwrap_or_else(|| panic!("{case}: accepted"));
        assert!(err.to_string().contains(expect), "{case}: {err}");
        assert!(used < 2 * MIB, "{case}: allocated {used} B");
    }
    // A directory bigger than a real shard's is refused before it is read.
    struct Huge;
    impl RangeSource for Huge {
        fn len(&self) -> u64 {
            1 << 40
        }
        fn read_at(&self, start: u64, len: u64) -> Result<Vec<u8>, Error> {
            // Only the tail exists: a ZIP64 end record claiming a 1 TiB - 1 KiB directory.
            let mut tail = Vec::new();
            let rec = (1u64 << 40) - 98;
            tail.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            tail.extend_from_slice(&44u64.to_le_bytes());
            tail.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            tail.extend_from_slice(&1000u64.to_le_bytes());
            tail.extend_from_slice(&1000u64.to_le_bytes());
            tail.extend_from_slice(&(rec - 1024).to_le_bytes());
            tail.extend_from_slice(&1024u64.to_le_bytes());
            tail.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            tail.extend_from_slice(&0u32.to_le_bytes());
            tail.extend_from_slice(&rec.to_le_bytes());
            tail.extend_from_slice(&1u32.to_le_bytes());
            tail.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
            tail.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            tail.extend_from_slice(&[0xFF; 8]);
            tail.extend_from_slice(&[0, 0]);
            assert_eq!(tail.len(), 98);
            // The last 64 KiB exist (zeros, then the tail); any other read is an error.
            let window = 1u64 << 16;
            let window_start = (1u64 << 40) - window;
            if start < window_start || len > window {
                return Err(Error::Format {
                    file: "huge".into(),
                    message: format!("read of {len} bytes at {start} outside the tail"),
                });
            }
            let mut last = vec![0u8; window as usize];
            last[window as usize - 98..].copy_from_slice(&tail);
            let s = (start - window_start) as usize;
            Ok(last[s..(s + len as usize).min(window as usize)].to_vec())
        }
        fn name(&self) -> String {
            "huge".into()
        }
    }
    let (result, biggest, _) = measured(|| CentralDirectory::read(&Huge));
    let err = result.err().unwrap().to_string();
    assert!(
        err.contains(&format!("{} MiB", MAX_CENTRAL_DIR_BYTES >> 20)),
        "{err}"
    );
    assert!(biggest < MIB, "allocated {biggest} B");
}

#[test]
fn a_shard_with_an_entry_past_its_end_fails_that_mask_only() {
    // Validation shard `5` holds the Hot dog and the Pizza mask of 5c6d7e8f9a0b1c2d; the Pizza
    // entry's offset is moved just past the end of the file, next to the Hot dog's record, so
    // both fall into one coalesced range read.
    let env = env(small());
    let key = "gcs/v5/validation-masks/validation-masks-5.zip";
    let served = build_fixture(&small()).files.remove(key).unwrap();
    let (dir, _) = CentralDirectory::read(&served).unwrap();
    let mut raw: Vec<RawEntry> = Vec::new();
    let mut hot_dog = None;
    let mut pizza_name = String::new();
    for e in &dir.entries {
        let data = zip::read_entry(&served, &dir, e).unwrap();
        let mut r = RawEntry::deflated(&e.name, &data);
        if e.name.starts_with("5c6d7e8f9a0b1c2d_m0663v") {
            r.offset = Some(0);
            r.zip64 = true;
            pizza_name = e.name.clone();
        }
        if e.name.starts_with("5c6d7e8f9a0b1c2d_m01b9xk") {
            hot_dog = Some(r);
        } else {
            raw.push(r);
        }
    }
    // The Hot dog record last, so the bad Pizza offset is within the coalescing gap of it.
    raw.push(hot_dog.unwrap());
    assert!(!pizza_name.is_empty());
    let len = raw_zip(&raw, DirLies::default()).len() as u64;
    for r in &mut raw {
        if r.name == pizza_name {
            r.offset = Some(len + 64);
        }
    }
    let shard = raw_zip(&raw, DirLies::default());
    assert_eq!(shard.len() as u64, len);
    env.server.put(key, shard);
    let summary = env.run(&request(&["Hot dog", "Pizza"])).unwrap();
    eprintln!("{summary:#?}");
    let corrupt: Vec<_> = summary
        .failures
        .iter()
        .filter(|f| f.kind == FailureKind::MaskCorrupt)
        .collect();
    assert_eq!(corrupt.len(), 1, "{:?}", summary.failures);
    assert_eq!(corrupt[0].id, pizza_name);
    assert!(
        corrupt[0].message.contains("validation-masks-5.zip")
            && corrupt[0].message.contains(&pizza_name),
        "{}",
        corrupt[0].message
    );
    let wanted = env
        .images
        .iter()
        .filter(|i| i.split == "validation")
        .filter(|i| {
            i.instances
                .iter()
                .any(|x| x.mid == HOT_DOG || x.mid == PIZZA)
        })
        .count();
    assert_eq!(summary.images_added, wanted);
}

// ---------------------------------------------------------------------------------------------
// 3. A remote file that changes under a resumed download.

/// The fixture's validation CSV, and an "older version" of it: same header, rows reversed (so
/// any splice of the two differs from the new file).
fn csv_versions() -> (Vec<u8>, Vec<u8>) {
    let fx = build_fixture(&small());
    let new = fx.files[&format!("gcs/{VAL_CSV}")].clone();
    let text = String::from_utf8(new.clone()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    let old = format!("{}\n", lines.join("\n")).into_bytes();
    assert_eq!(old.len(), new.len());
    assert_ne!(old[..old.len() / 2], new[..new.len() / 2]);
    (old, new)
}

fn cached_csv(env: &Env) -> PathBuf {
    env.cfg.cache_dir.join("files").join(VAL_CSV)
}

fn csv_requests(env: &Env) -> Vec<common::oi_server::LogEntry> {
    env.server
        .log()
        .into_iter()
        .filter(|e| e.path == format!("/gcs/{VAL_CSV}") && e.method == "GET")
        .collect()
}

#[test]
fn resume_after_the_remote_changed_mid_download_restarts_the_file() {
    let env = env(small());
    let (old, new) = csv_versions();
    env.server.put(&format!("gcs/{VAL_CSV}"), old);
    {
        let mut f = env.server.faults();
        f.cut.insert(format!("/gcs/{VAL_CSV}"), 1);
        f.replace_after_cut
            .insert(format!("/gcs/{VAL_CSV}"), new.clone());
    }
    let summary = env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    eprintln!("{log:#?}");
    // The resume asked for the rest *if* the file was unchanged; the server sent it whole.
    assert_eq!(log.len(), 2);
    assert!(log[1].range.is_some() && log[1].if_range.is_some());
    assert_eq!(log[1].status, 200);
    assert_eq!(summary.images_added, env.validation_with(HOT_DOG).len());
}

#[test]
fn resume_of_an_unchanged_file_continues_with_206() {
    // The validator still matches: the rest is appended, not fetched again.
    let env = env(small());
    let (_, new) = csv_versions();
    env.server.faults().cut.insert(format!("/gcs/{VAL_CSV}"), 1);
    env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].status, 206);
    assert!(log[1].if_range.is_some());
    assert_eq!(log[0].body_bytes + log[1].body_bytes, new.len() as u64);
}

#[test]
fn without_any_validator_a_cut_download_restarts_instead_of_splicing() {
    // Neither ETag nor Last-Modified: nothing proves the rest belongs to the same object.
    let env = env(small());
    let (old, new) = csv_versions();
    let path = format!("/gcs/{VAL_CSV}");
    env.server.put(&format!("gcs/{VAL_CSV}"), old);
    {
        let mut f = env.server.faults();
        f.no_validators = true;
        f.cut.insert(path.clone(), 1);
        f.replace_after_cut.insert(path.clone(), new.clone());
    }
    env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1].range.is_none(), "{log:?}");
}

/// A first run gives up mid-file (the server answers 503 after a cut), the file changes on the
/// mirror, a second run resumes.
fn resume_across_runs(no_etag: bool) -> (Env, Vec<u8>) {
    let env = env(small());
    let (old, new) = csv_versions();
    let path = format!("/gcs/{VAL_CSV}");
    env.server.put(&format!("gcs/{VAL_CSV}"), old);
    {
        let mut f = env.server.faults();
        f.no_etag = no_etag;
        f.cut.insert(path.clone(), 1);
        f.fail_503_after_cut.insert(path.clone(), 1000);
    }
    assert!(env.run(&request(&["Hot dog"])).is_err());
    let part = cached_csv(&env).with_extension("csv.part");
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(have > 0 && have < new.len() as u64, "{have}");
    env.server.put(&format!("gcs/{VAL_CSV}"), new.clone());
    env.server.faults().fail_503.clear();
    env.server.clear_log();
    let summary = env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(summary.images_added, env.validation_with(HOT_DOG).len());
    (env, new)
}

#[test]
fn resume_in_a_later_run_uses_the_recorded_etag() {
    let (env, new) = resume_across_runs(false);
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    assert!(log[0].range.is_some(), "{log:?}");
    assert!(log[0].if_range.as_deref().unwrap().starts_with('"'));
    assert_eq!(log[0].status, 200);
    let leftovers: Vec<_> = std::fs::read_dir(cached_csv(&env).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn resume_in_a_later_run_uses_last_modified_without_an_etag() {
    let (env, new) = resume_across_runs(true);
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    assert!(
        log[0].if_range.as_deref().unwrap().ends_with("GMT"),
        "{log:?}"
    );
    assert_eq!(log[0].status, 200);
}

#[test]
fn a_part_file_without_a_validator_is_started_over() {
    // A `.part` left by an older version (no validator beside it): never spliced.
    let env = env(small());
    let (old, new) = csv_versions();
    let part = cached_csv(&env).with_extension("csv.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &old[..old.len() / 2]).unwrap();
    env.run(&request(&["Hot dog"])).unwrap();
    assert_eq!(std::fs::read(cached_csv(&env)).unwrap(), new);
    let log = csv_requests(&env);
    assert!(log[0].range.is_none(), "{log:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Bounded, seeded property test of the two readers.

/// SplitMix64: small, seeded, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break arithmetic and bounds when written into a length or offset field.
fn extreme(rng: &mut Rng, len: usize) -> u64 {
    let l = len as u64;
    [
        0,
        1,
        0xFF,
        0xFFFF,
        0xFFFF_FFFF,
        0xFFFF_FFFE,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        l,
        l.wrapping_sub(1),
        l + 1,
        l.wrapping_sub(22),
        4 << 30,
        rng.next(),
        rng.next() & 0xFFFF,
    ][rng.below(16)]
}

fn put_le(buf: &mut [u8], at: usize, v: u64, width: usize) {
    for i in 0..width {
        if let Some(b) = buf.get_mut(at + i) {
            *b = (v >> (8 * i)) as u8;
        }
    }
}

/// Offsets of every occurrence of a 4-byte signature.
fn sig_positions(buf: &[u8], sig: u32) -> Vec<usize> {
    let s = sig.to_le_bytes();
    buf.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == s)
        .map(|(i, _)| i)
        .collect()
}

/// One mutation of a valid archive: bit flips, cuts, or extreme values in (known or random)
/// fields.
fn mutate_zip(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(len);
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => b.truncate(rng.below(len)),
            2 => {
                let cut = rng.below(len);
                b.drain(..cut);
            }
            3 => {
                let at = rng.below(len);
                let v = extreme(rng, len);
                put_le(&mut b, at, v, [2, 4, 8][rng.below(3)]);
            }
            _ => {
                // A field of a known record.
                let (sig, fields): (u32, &[(usize, usize)]) = match rng.below(5) {
                    0 => (
                        0x0201_4b50,
                        &[
                            (10, 2),
                            (20, 4),
                            (24, 4),
                            (28, 2),
                            (30, 2),
                            (32, 2),
                            (42, 4),
                            (50, 8),
                            (58, 8),
                            (66, 8),
                        ],
                    ),
                    1 => (0x0605_4b50, &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
                    2 => (0x0606_4b50, &[(24, 8), (32, 8), (40, 8), (48, 8)]),
                    3 => (0x0706_4b50, &[(8, 8)]),
                    _ => (0x0403_4b50, &[(8, 2), (18, 4), (22, 4), (26, 2), (28, 2)]),
                };
                let at = sig_positions(&b, sig);
                if !at.is_empty() {
                    let p = at[rng.below(at.len())];
                    let (off, width) = fields[rng.below(fields.len())];
                    let v = extreme(rng, len);
                    put_le(&mut b, p + off, v, width);
                }
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn property_zip_reader_never_panics_and_stays_bounded() {
    let mut bases = Vec::new();
    for (zip64, deflate) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut z = ZipBuilder::new(zip64);
        for k in 0..6u32 {
            let png = png_1bit(40 + 8 * k, 30, |x, y| (x + y + k) % 7 < 3);
            z.add(
                &format!("0a1b2c3d4e5f607{k}_m01b9xk_0000000{k}.png"),
                &png,
                deflate,
            );
        }
        bases.push(z.finish());
    }
    const CASES: usize = 60_000;
    let mut rng = Rng(0x5EED_0001);
    let (mut dir_rejected, mut entries_ok, mut entries_rejected, mut fully_ok) = (0, 0, 0, 0);
    let mut panics = Vec::new();
    let mut worst = 0usize;
    let started = std::time::Instant::now();
    for case in 0..CASES {
        let base = &bases[case % bases.len()];
        let bytes = mutate_zip(&mut rng, base);
        let (result, biggest, peak) =
            measured(|| catch_unwind(AssertUnwindSafe(|| read_all(&bytes))));
        worst = worst.max(biggest).max(peak);
        match result {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panics.push((case, msg));
            }
            Ok(Err(_)) => dir_rejected += 1,
            Ok(Ok(results)) => {
                let mut all = true;
                for r in results {
                    match r {
                        Ok(data) => {
                            assert!(data.len() as u64 <= MAX_ENTRY_BYTES);
                            entries_ok += 1;
                        }
                        Err(_) => {
                            entries_rejected += 1;
                            all = false;
                        }
                    }
                }
                fully_ok += usize::from(all);
            }
        }
    }
    eprintln!(
        "zip property: {CASES} mutated archives in {:?}: {dir_rejected} rejected at the \
         directory, {fully_ok} read whole; entries {entries_ok} accepted, {entries_rejected} \
         rejected; {} panics; largest allocation or peak {worst} B",
        started.elapsed(),
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "panics: {:?}",
        &panics[..panics.len().min(5)]
    );
    // The archives are a few KB: nothing near an entry's cap may be allocated for them.
    assert!(worst < 4 * MIB, "allocated {worst} B for a few-KB archive");
    assert!(dir_rejected > 0 && entries_ok > 0 && entries_rejected > 0);
}

fn valid_csv(rng: &mut Rng, rows: usize) -> String {
    let mut s = format!("{SEGMENTATION_HEADER}\n");
    for r in 0..rows {
        let id = format!("{:016x}", rng.next());
        let mid = ["/m/01b9xk", "/m/0663v", "/m/01_bhs", "/g/11b7"][rng.below(4)];
        let bx = format!("{:08x}", rng.next() as u32);
        let clicks = if r % 2 == 0 {
            "0.10000 0.20000 1;0.30000 0.40000 0".to_owned()
        } else {
            String::new()
        };
        let iou = if r % 2 == 0 { "0.86864" } else { "" };
        s.push_str(&format!(
            "{id}_{}_{bx}.png,{id},{mid},{bx},0.1,0.9,0.2,0.8,{iou},{clicks}\n",
            mid.replace('/', "")
        ));
    }
    s
}

/// Field values a hostile mirror might send.
const HOSTILE_FIELDS: &[&str] = &[
    "../../../../home/u/thesis.tex",
    "/home/u/abs.png",
    "..\\..\\x.png",
    ".hidden.png",
    "",
    "\"",
    "\"a,b\"",
    "\"\"\"\"",
    "NaN",
    "inf",
    "-1e308",
    "1e400",
    "\u{0}",
    "\r",
    "ffffffffffffffff",
    "zzzzzzzzzzzzzzzz",
    "123456789",
    "/m/../../..",
    "é",
];

fn mutate_csv(rng: &mut Rng, base: &str) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = base.lines().map(|l| l.as_bytes().to_vec()).collect();
    for _ in 0..1 + rng.below(4) {
        let n = lines.len();
        let li = rng.below(n);
        match rng.below(7) {
            0 if li > 0 => {
                // Replace one field with a hostile value.
                let text = String::from_utf8_lossy(&lines[li]).into_owned();
                let mut fields: Vec<String> = text.split(',').map(str::to_owned).collect();
                let fi = rng.below(fields.len());
                fields[fi] = HOSTILE_FIELDS[rng.below(HOSTILE_FIELDS.len())].to_owned();
                lines[li] = fields.join(",").into_bytes();
            }
            1 => {
                let l = &mut lines[li];
                if !l.is_empty() {
                    let i = rng.below(l.len());
                    l[i] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let l = &mut lines[li];
                let at = rng.below(l.len() + 1);
                let junk = [b'"', b',', b'\n', b'\r', 0, b'/', b'.', b'\\', 0xFF][rng.below(9)];
                l.insert(at, junk);
            }
            3 => {
                let l = &mut lines[li];
                let cut = rng.below(l.len() + 1);
                l.truncate(cut);
            }
            4 => {
                let copy = lines[li].clone();
                lines.insert(rng.below(n + 1), copy);
            }
            5 => {
                let len = rng.below(120);
                lines.insert(
                    1.min(n) + rng.below(n),
                    (0..len).map(|_| rng.next() as u8).collect(),
                );
            }
            _ if li > 0 => {
                lines.remove(li);
            }
            _ => {}
        }
        if lines.is_empty() {
            break;
        }
    }
    let mut out = lines.join(&b'\n');
    if rng.below(2) == 0 {
        out.push(b'\n');
    }
    out
}

#[test]
fn property_segmentation_csv_reader_never_panics_and_indexes_only_safe_mask_paths() {
    const PARSE_CASES: usize = 3_000;
    const INDEX_CASES: usize = 150;
    let mut rng = Rng(0x5EED_0002);
    let started = std::time::Instant::now();
    let (mut parsed_ok, mut parse_err, mut rows_seen) = (0usize, 0usize, 0u64);
    let mut worst = 0usize;
    for case in 0..PARSE_CASES {
        let base = valid_csv(&mut rng, 1 + case % 12);
        let doc = mutate_csv(&mut rng, &base);
        let (result, biggest, _) = measured(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let mut n = 0u64;
                parse_segmentation_csv(doc.as_slice(), "fuzz", &CancelToken::default(), &mut |r| {
                    n += 1;
                    assert!(r.line_end as usize <= doc.len() + 1);
                    Ok(())
                })
                .map(|_| n)
            }))
        });
        worst = worst.max(biggest);
        match result {
            Err(_) => panic!("case {case}: the CSV parser panicked on {doc:?}"),
            Ok(Ok(n)) => {
                parsed_ok += 1;
                rows_seen += n;
            }
            Ok(Err(_)) => parse_err += 1,
        }
    }
    // Through the index (real SQLite): only safe MaskPaths reach the masks table.
    let dir = tempfile::tempdir().unwrap();
    let (mut indexed, mut refused, mut bad, mut load_err) = (0u64, 0u64, 0u64, 0usize);
    for case in 0..INDEX_CASES {
        let base = valid_csv(&mut rng, 8);
        let doc = mutate_csv(&mut rng, &base);
        let csv = dir.path().join("seg.csv");
        std::fs::write(&csv, &doc).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            index.load_segmentations(
                Split::Test,
                &csv,
                "fuzz",
                None,
                &CancelToken::default(),
                &mut |_, _| {},
            )
        }))
        .unwrap_or_else(|_| panic!("case {case}: indexing panicked on {doc:?}"));
        match result {
            Ok(stats) => {
                indexed += stats.rows;
                refused += stats.unsafe_mask_paths;
                bad += stats.bad_rows;
            }
            Err(_) => load_err += 1,
        }
        drop(index);
        let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT m.image, c.mid, m.box, m.mask_path, m.xmin, m.xmax, m.ymin, m.ymax
                 FROM masks m JOIN classes c ON c.id = m.class",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    [r.get::<_, f64>(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                ))
            })
            .unwrap();
        for row in rows {
            let (image, mid, bx, stored, bbox) = row.unwrap();
            let name = stored.unwrap_or_else(|| {
                format!(
                    "{:016x}_{}_{:08x}.png",
                    image as u64,
                    mid.replace('/', ""),
                    bx
                )
            });
            assert_eq!(
                check_mask_name(&name),
                Ok(()),
                "case {case}: indexed {name:?}"
            );
            assert!(bbox.iter().all(|v| v.is_finite()), "case {case}: {bbox:?}");
        }
    }
    eprintln!(
        "csv property: {PARSE_CASES} mutated files parsed ({parsed_ok} ok with {rows_seen} rows, \
         {parse_err} rejected), {INDEX_CASES} indexed ({indexed} rows indexed, {refused} unsafe \
         MaskPaths refused, {bad} malformed rows, {load_err} files rejected) in {:?}; largest \
         allocation {worst} B",
        started.elapsed()
    );
    assert!(parsed_ok > 0 && parse_err > 0 && refused > 0 && bad > 0 && indexed > 0);
    // The parser's one buffer is the largest allocation, whatever the input.
    assert!(worst <= maskstudio::openimages::index::MAX_LINE_BYTES + MIB);
}
