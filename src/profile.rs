//! Wall-clock time per named stage, for `cargo bench --bench profile` and `maskstudio bench
//! train-profile`.
//!
//! Off by default: a [`scope`] then costs one relaxed atomic load. When [`enable`]d, each scope
//! adds its elapsed time to a process-wide table keyed by its name. Stage names are dotted
//! (`rpn.nms`); a scope nested in another counts in both, so the report prints parents and
//! children as a tree. On the CPU libtorch ops run synchronously, so a scope's time is the time
//! of the ops inside it; on CUDA call [`enable`] with `sync` so each scope waits for the device.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static SYNC_CUDA: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, Stage>> = Mutex::new(BTreeMap::new());

/// Accumulated time of one stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stage {
    /// Total wall time spent inside the stage's scopes.
    pub total: Duration,
    /// How many scopes of this name ended.
    pub calls: u64,
}

/// Turns recording on or off; `sync_cuda` makes each scope wait for the CUDA device on entry
/// and exit so queued kernels are charged to the stage that queued them.
pub fn enable(on: bool, sync_cuda: bool) {
    SYNC_CUDA.store(sync_cuda, Ordering::Relaxed);
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether scopes record.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Empties the table.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The table so far, by stage name.
pub fn snapshot() -> BTreeMap<&'static str, Stage> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Adds `elapsed` to `name` (for time measured outside a scope, e.g. a loader wait).
pub fn record(name: &'static str, elapsed: Duration) {
    if !enabled() {
        return;
    }
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let s = table.entry(name).or_default();
    s.total += elapsed;
    s.calls += 1;
}

fn sync_device() {
    if SYNC_CUDA.load(Ordering::Relaxed) && tch::Cuda::is_available() {
        tch::Cuda::synchronize(0);
    }
}

/// A running stage; its time is recorded when it is dropped.
#[must_use = "a scope records when it is dropped"]
#[derive(Debug)]
pub struct Scope {
    name: &'static str,
    started: Option<Instant>,
}

/// Starts timing `name` until the returned guard drops (nothing is timed when disabled).
#[inline]
pub fn scope(name: &'static str) -> Scope {
    let started = if enabled() {
        sync_device();
        Some(Instant::now())
    } else {
        None
    };
    Scope { name, started }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.started {
            sync_device();
            record(self.name, t.elapsed());
        }
    }
}

/// Runs `f` as stage `name`.
#[inline]
pub fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let _s = scope(name);
    f()
}

/// The stages as a tree (children under their dotted parent, indented), each with total
/// seconds, share of `wall` and milliseconds per `per` (e.g. per step).
pub fn format_table(
    stages: &BTreeMap<String, Duration>,
    wall: Duration,
    per: usize,
    title: &str,
) -> String {
    let mut out = format!(
        "{title}\n{:<34} {:>9} {:>7} {:>10}\n",
        "stage", "seconds", "share", "ms/step"
    );
    for (name, total) in stages {
        let depth = name.matches('.').count();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let label = format!("{}{}", "  ".repeat(depth), leaf);
        out.push_str(&format!(
            "{label:<34} {:>9.3} {:>6.1}% {:>10.1}\n",
            total.as_secs_f64(),
            100.0 * total.as_secs_f64() / wall.as_secs_f64().max(1e-9),
            1e3 * total.as_secs_f64() / per.max(1) as f64,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide table, so tests cannot race on it.
    #[test]
    fn scopes_record_only_when_enabled_and_nest() {
        reset();
        enable(false, false);
        drop(scope("test.off"));
        assert!(!snapshot().contains_key("test.off"));
        enable(true, false);
        {
            let _outer = scope("test.outer");
            let _inner = scope("test.outer.inner");
            std::thread::sleep(Duration::from_millis(2));
        }
        timed("test.outer", || ());
        enable(false, false);
        let t = snapshot();
        assert_eq!(t["test.outer"].calls, 2);
        assert_eq!(t["test.outer.inner"].calls, 1);
        assert!(t["test.outer"].total >= t["test.outer.inner"].total);
        assert!(t["test.outer.inner"].total >= Duration::from_millis(2));
        reset();
        assert!(snapshot().is_empty());
    }

    #[test]
    fn table_indents_children_and_shares_the_wall() {
        let mut m = BTreeMap::new();
        m.insert("rpn".to_owned(), Duration::from_millis(500));
        m.insert("rpn.nms".to_owned(), Duration::from_millis(250));
        let s = format_table(&m, Duration::from_secs(1), 5, "ours");
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[2].starts_with("rpn "), "{s}");
        assert!(
            lines[2].contains("50.0%") && lines[2].contains("100.0"),
            "{s}"
        );
        assert!(lines[3].starts_with("  nms "), "{s}");
        assert!(
            lines[3].contains("25.0%") && lines[3].contains("50.0"),
            "{s}"
        );
    }
}
