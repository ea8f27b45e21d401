//! Warnings and errors logged anywhere (any thread, through the `log` crate) shown as toasts.
//!
//! [`install`] sets the process logger: env_logger, filtered and formatted exactly as before
//! (`RUST_LOG`, default `info`), wrapped by a logger that also sends each warn/error record's
//! message into a bounded crossbeam channel. Sending never blocks: a full channel drops the
//! record (the terminal still has it) and counts the drop. The shell holds the receiving end
//! ([`LogToasts`], passed in through `StudioOptions::log_toasts`) and drains it every frame
//! into its [`Notices`] with [`LogFeed::drain_into`], folding a message repeated within
//! [`DEDUPE_WINDOW`] into the first toast.
//!
//! One path per message: [`Notices::push`] logs its text under [`NOTICE_LOG_TARGET`], which
//! this logger does not forward (the panel already made the toast), so a toast a panel posts
//! is never shown twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use log::{Level, LevelFilter, Log, Metadata, Record};

use super::shared::{NOTICE_LOG_TARGET, NoticeLevel, Notices};

/// Records the channel holds before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 256;
/// An identical message (same level and text) within this long after a toast of it is folded
/// into that toast.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(5);
/// Toast text is cut to this many characters (the terminal keeps the whole record).
pub const MAX_TOAST_CHARS: usize = 600;
/// Log targets (crate prefixes) that never become toasts: the window and graphics stack
/// reports driver and windowing details a user cannot act on; the terminal keeps them.
pub const QUIET_TARGETS: &[&str] = &[
    "wgpu",
    "naga",
    "winit",
    "eframe",
    "egui",
    "glutin",
    "glow",
    "sctk",
    "smithay",
    "calloop",
    "zbus",
    "arboard",
    "accesskit",
    "rfd",
    "tracing",
];

/// One forwarded record: its level and message (without the module target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogToast {
    /// Warning or error.
    pub level: NoticeLevel,
    /// The formatted message.
    pub text: String,
}

/// Called after a record is queued (the shell asks for a repaint).
type Waker = Arc<dyn Fn() + Send + Sync>;

/// The receiving end of the forwarded records (cheap to clone; clones share the queue, so
/// give it to one studio only).
#[derive(Clone)]
pub struct LogToasts {
    rx: Receiver<LogToast>,
    dropped: Arc<AtomicU64>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl std::fmt::Debug for LogToasts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogToasts")
            .field("queued", &self.rx.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl LogToasts {
    /// Records dropped so far because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Calls `wake` (on the logging thread) after each queued record; replaces an earlier one.
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(wake));
    }
}

/// Whether a record of this target and level becomes a toast.
pub fn is_toasted(target: &str, level: Level) -> bool {
    level <= Level::Warn
        && target != NOTICE_LOG_TARGET
        && !QUIET_TARGETS.iter().any(|q| {
            target.strip_prefix(q).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with("::") || rest.starts_with('_')
            })
        })
}

/// A `log::Log` that writes through `inner` (its own filter decides what the terminal shows)
/// and forwards toastable warn/error records to a bounded channel.
pub struct ToastLogger<L> {
    inner: L,
    tx: Sender<LogToast>,
    dropped: Arc<AtomicU64>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl<L: Log> ToastLogger<L> {
    /// Wraps `inner`; returns the logger and the receiving end.
    pub fn new(inner: L) -> (Self, LogToasts) {
        let (tx, rx) = bounded(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let waker = Arc::new(Mutex::new(None));
        let logger = Self {
            inner,
            tx,
            dropped: dropped.clone(),
            waker: Arc::clone(&waker),
        };
        (logger, LogToasts { rx, dropped, waker })
    }
}

impl<L: Log> Log for ToastLogger<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata) || is_toasted(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        // The inner logger applies its own filter (env_logger checks `matches` itself).
        self.inner.log(record);
        if !is_toasted(record.target(), record.level()) {
            return;
        }
        let level = if record.level() == Level::Error {
            NoticeLevel::Error
        } else {
            NoticeLevel::Warning
        };
        let mut text = record.args().to_string();
        if let Some((cut, _)) = text.char_indices().nth(MAX_TOAST_CHARS) {
            text.truncate(cut);
            text.push('…');
        }
        match self.tx.try_send(LogToast { level, text }) {
            Ok(()) => {
                // Clone out of the lock: the waker may take other locks (egui's context).
                let wake = self.waker.lock().ok().and_then(|w| w.clone());
                if let Some(wake) = wake {
                    wake();
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The installed feed, so a second [`install`] (tests) gets the same receiver.
static INSTALLED: Mutex<Option<LogToasts>> = Mutex::new(None);

/// Installs the process logger: `builder`'s env_logger for the terminal plus warn/error
/// toasts; returns the receiving end. Called again, returns the same receiver; fails when a
/// logger that is not this one is already set.
pub fn install(builder: &mut env_logger::Builder) -> Result<LogToasts, log::SetLoggerError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(feed) = installed.as_ref() {
        return Ok(feed.clone());
    }
    let inner = builder.build();
    // The terminal's level, but warnings always reach the toast path.
    let max_level = inner.filter().max(LevelFilter::Warn);
    let (logger, feed) = ToastLogger::new(inner);
    log::set_boxed_logger(Box::new(logger))?;
    log::set_max_level(max_level);
    *installed = Some(feed.clone());
    Ok(feed)
}

/// The receiver of the installed logger, if [`install`] ran.
pub fn installed() -> Option<LogToasts> {
    INSTALLED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The shell's side: the receiver plus what it needs to fold repeats and report drops.
#[derive(Debug)]
pub struct LogFeed {
    toasts: LogToasts,
    /// Messages toasted recently: level, text, when.
    recent: VecDeque<(NoticeLevel, String, Instant)>,
    dropped_reported: u64,
}

/// Records one drain takes at most (the rest wait for the next frame).
const DRAIN_PER_FRAME: usize = 64;

impl LogFeed {
    /// Follows `toasts`.
    pub fn new(toasts: LogToasts) -> Self {
        let dropped_reported = toasts.dropped();
        Self {
            toasts,
            recent: VecDeque::new(),
            dropped_reported,
        }
    }

    /// Calls `wake` after each queued record ([`LogToasts::set_waker`]).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        self.toasts.set_waker(wake);
    }

    /// Whether records wait to be drained.
    pub fn pending(&self) -> bool {
        !self.toasts.rx.is_empty()
    }

    /// Moves waiting records into `notices` (without logging them again); returns whether
    /// records remain queued (the caller asks for another frame).
    pub fn drain_into(&mut self, notices: &mut Notices, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) >= DEDUPE_WINDOW)
        {
            self.recent.pop_front();
        }
        for _ in 0..DRAIN_PER_FRAME {
            let Ok(t) = self.toasts.rx.try_recv() else {
                break;
            };
            if self
                .recent
                .iter()
                .any(|(level, text, _)| *level == t.level && *text == t.text)
            {
                continue;
            }
            self.recent.push_back((t.level, t.text.clone(), now));
            notices.post_logged(t.level, t.text);
        }
        let dropped = self.toasts.dropped();
        if dropped > self.dropped_reported {
            let n = dropped - self.dropped_reported;
            self.dropped_reported = dropped;
            notices.warn(format!(
                "{n} more log warnings came too fast to show; the terminal log has them"
            ));
        }
        !self.toasts.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what reaches the inner logger.
    struct Counting(AtomicU64);

    impl Log for Counting {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            m.level() <= Level::Info
        }
        fn log(&self, r: &Record<'_>) {
            if self.enabled(r.metadata()) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn flush(&self) {}
    }

    fn record(logger: &impl Log, level: Level, target: &str, text: &str) {
        logger.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        );
    }

    #[test]
    fn forwards_warnings_and_errors_only_and_never_blocks() {
        let (logger, feed) = ToastLogger::new(Counting(AtomicU64::new(0)));
        record(&logger, Level::Info, "maskstudio::train", "an info line");
        record(&logger, Level::Warn, "maskstudio::gui::thumbs", "no masks");
        record(&logger, Level::Error, "maskstudio::x", "broken");
        record(&logger, Level::Warn, NOTICE_LOG_TARGET, "a panel toast");
        record(&logger, Level::Warn, "wgpu_hal::vulkan", "driver chatter");
        record(&logger, Level::Warn, "eframe", "window chatter");
        record(&logger, Level::Warn, "winitless", "not a quiet crate");
        // Every record reached the terminal logger; three were forwarded.
        assert_eq!(logger.inner.0.load(Ordering::Relaxed), 7);
        let got: Vec<LogToast> = feed.rx.try_iter().collect();
        assert_eq!(
            got,
            vec![
                LogToast {
                    level: NoticeLevel::Warning,
                    text: "no masks".into()
                },
                LogToast {
                    level: NoticeLevel::Error,
                    text: "broken".into()
                },
                LogToast {
                    level: NoticeLevel::Warning,
                    text: "not a quiet crate".into()
                },
            ]
        );
        for k in 0..CHANNEL_CAPACITY + 5 {
            record(&logger, Level::Warn, "maskstudio", &format!("flood {k}"));
        }
        assert_eq!(feed.dropped(), 5);
        let woken = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&woken);
        feed.set_waker(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        feed.rx.try_recv().unwrap();
        record(&logger, Level::Warn, "maskstudio", "wakes the shell");
        record(&logger, Level::Warn, "maskstudio", "dropped: wakes nobody");
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(feed.rx.len(), CHANNEL_CAPACITY);
    }

    #[test]
    fn drain_folds_repeats_and_reports_drops() {
        let (logger, feed) = ToastLogger::new(Counting(AtomicU64::new(0)));
        let mut shell = LogFeed::new(feed);
        let mut notices = Notices::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            record(&logger, Level::Warn, "maskstudio", "disk almost full");
        }
        record(&logger, Level::Error, "maskstudio", "disk almost full");
        assert!(!shell.drain_into(&mut notices, t0));
        let texts: Vec<(NoticeLevel, &str)> = notices
            .items
            .iter()
            .map(|n| (n.level, n.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (NoticeLevel::Warning, "disk almost full"),
                (NoticeLevel::Error, "disk almost full")
            ]
        );
        // Within the window: folded; after it: a new toast.
        record(&logger, Level::Warn, "maskstudio", "disk almost full");
        shell.drain_into(&mut notices, t0 + Duration::from_secs(1));
        assert_eq!(notices.items.len(), 2);
        record(&logger, Level::Warn, "maskstudio", "disk almost full");
        shell.drain_into(&mut notices, t0 + DEDUPE_WINDOW + Duration::from_secs(1));
        assert_eq!(notices.items.len(), 3);

        let long = "x".repeat(MAX_TOAST_CHARS + 50);
        record(&logger, Level::Warn, "maskstudio", &long);
        for k in 0..CHANNEL_CAPACITY + 2 {
            record(&logger, Level::Warn, "maskstudio", &format!("flood {k}"));
        }
        let now = t0 + DEDUPE_WINDOW * 3;
        let before = notices.items.len();
        // A frame takes a bounded number of records and says more are waiting.
        assert!(shell.drain_into(&mut notices, now));
        assert_eq!(
            notices.items[before].text.chars().count(),
            MAX_TOAST_CHARS + 1
        );
        while shell.drain_into(&mut notices, now) {}
        let drops: Vec<&str> = notices
            .items
            .iter()
            .map(|n| n.text.as_str())
            .filter(|t| t.contains("came too fast"))
            .collect();
        assert_eq!(
            drops,
            ["3 more log warnings came too fast to show; the terminal log has them"]
        );
        // The long message, the flood that fitted and the drop notice.
        assert_eq!(notices.items.len(), before + 1 + (CHANNEL_CAPACITY - 1) + 1);
    }
}
