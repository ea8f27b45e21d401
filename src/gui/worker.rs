//! How every panel starts a worker thread, and how it learns that the worker died.
//!
//! [`Worker::spawn`] starts a named thread and hands its closure the **only** sender of a
//! bounded channel ([`WorkerTx`]: each send wakes the GUI). The closure runs under
//! `catch_unwind`; a panic is recorded before the last sender is dropped. [`Worker::poll`]
//! drains the channel on the GUI thread and turns a closed channel that was not preceded by
//! the job's terminal event into [`Polled::Died`] carrying the panic message, so a job never
//! stays "running" after its thread is gone. [`Worker::pool`] is the same for several threads
//! sharing one job (the channel closes when the last one ends), and [`Worker::try_next`] /
//! [`Worker::recv_timeout`] take one event at a time for panels that bound their work per
//! frame or wait at shutdown. Code with no window yet passes `&egui::Context::default()`
//! (its repaint requests reach nobody; the panel polls anyway).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};
use eframe::egui;

pub use crate::infer::panic_text;

/// The sending half a worker's closure gets: sends wake the GUI.
pub struct WorkerTx<E> {
    tx: Sender<E>,
    ctx: egui::Context,
}

impl<E> WorkerTx<E> {
    /// Sends `event` (waits for room); `false` when the panel is gone (the worker should stop).
    pub fn send(&self, event: E) -> bool {
        let ok = self.tx.send(event).is_ok();
        self.ctx.request_repaint();
        ok
    }

    /// Sends `event` if there is room; advisory progress uses this so it never blocks. `false`
    /// when it was dropped (channel full or panel gone).
    pub fn try_send(&self, event: E) -> bool {
        let ok = match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        };
        if ok {
            self.ctx.request_repaint();
        }
        ok
    }

    /// The raw sender, for code below `gui` that takes a `crossbeam_channel::Sender` (it stays
    /// on the worker thread: the clone is dropped when the closure ends).
    pub fn sender(&self) -> Sender<E> {
        self.tx.clone()
    }

    /// The GUI context (to wake it from callbacks that send on [`Self::sender`]).
    pub fn ctx(&self) -> &egui::Context {
        &self.ctx
    }
}

/// What [`Worker::poll`] found.
#[derive(Debug, PartialEq)]
pub enum Polled<E> {
    /// An event the worker sent.
    Event(E),
    /// The worker ended without sending its terminal event: the text says why (the panic
    /// message when it panicked).
    Died(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Died,
}

/// Where a worker thread writes its panic message before its last sender drops.
type PanicSlot = Arc<Mutex<Option<String>>>;

/// The GUI side of one worker thread.
#[derive(Debug)]
pub struct Worker<E> {
    name: String,
    rx: Receiver<E>,
    is_terminal: fn(&E) -> bool,
    panic: PanicSlot,
    state: State,
    handles: Vec<JoinHandle<()>>,
}

impl<E: Send + 'static> Worker<E> {
    /// Starts `f` on a thread named `name` with the only sender of a channel of `cap` events.
    /// `is_terminal` names the event that ends the job; a worker that never ends on its own
    /// (a command loop) passes `|_| false`, so any end of it while polled is a death.
    pub fn spawn<F>(
        name: &str,
        ctx: &egui::Context,
        cap: usize,
        is_terminal: fn(&E) -> bool,
        f: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(WorkerTx<E>) + Send + 'static,
    {
        Self::start(name, cap, is_terminal, |tx, panic| {
            Ok(vec![spawn_guarded(name.to_owned(), tx, ctx, panic, f)?])
        })
    }

    /// Starts `threads` threads named `name-0`, `name-1`, … sharing one channel of `cap`
    /// events; each runs `f(n, tx)`. The job dies when the last thread ends (or the first
    /// panics and the rest end) without the terminal event. A pool that could start no thread
    /// is an error; one that started some runs with those.
    pub fn pool<F>(
        name: &str,
        ctx: &egui::Context,
        threads: usize,
        cap: usize,
        is_terminal: fn(&E) -> bool,
        f: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(usize, WorkerTx<E>) + Clone + Send + 'static,
    {
        Self::start(name, cap, is_terminal, |tx, panic| {
            let mut handles = Vec::new();
            let mut first_error = None;
            for n in 0..threads.max(1) {
                let f = f.clone();
                let run = move |tx| f(n, tx);
                match spawn_guarded(format!("{name}-{n}"), tx.clone(), ctx, panic, run) {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        log::error!("cannot start the {name}-{n} thread: {e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) if handles.is_empty() => Err(e),
                _ => Ok(handles),
            }
        })
    }

    /// A running job named `name` over a channel of `cap` events: `spawn` starts its threads
    /// with the channel's sender (dropped when `spawn` returns, so only the threads hold one)
    /// and the panic slot.
    fn start(
        name: &str,
        cap: usize,
        is_terminal: fn(&E) -> bool,
        spawn: impl FnOnce(Sender<E>, &PanicSlot) -> std::io::Result<Vec<JoinHandle<()>>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded(cap.max(1));
        let panic = Arc::new(Mutex::new(None));
        let handles = spawn(tx, &panic)?;
        Ok(Self {
            name: name.to_owned(),
            rx,
            is_terminal,
            panic,
            state: State::Running,
            handles,
        })
    }

    /// Starts a one-shot worker on a thread named `name`: `f`'s value is its only (and
    /// terminal) event.
    pub fn once<F>(name: &str, ctx: &egui::Context, f: F) -> std::io::Result<Self>
    where
        F: FnOnce() -> E + Send + 'static,
    {
        Self::spawn(
            name,
            ctx,
            1,
            |_| true,
            move |tx| {
                tx.send(f());
            },
        )
    }

    /// Closes the channel and waits for the thread to end (after its terminal event only its
    /// clean-up is left: tensors freed before the process may exit). Events not polled yet are
    /// dropped.
    pub fn join(self) {
        let Self { rx, handles, .. } = self;
        drop(rx);
        for handle in handles {
            if handle.join().is_err() {
                log::warn!("a worker thread panicked outside its guard");
            }
        }
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the job has neither finished (terminal event seen) nor died.
    pub fn running(&self) -> bool {
        self.state == State::Running
    }

    /// Polls the worker in `slot` (if any) and empties the slot once its job finished or died;
    /// a death becomes `died(reason)`, so a panel drains one event type.
    pub fn drain(slot: &mut Option<Self>, died: impl FnOnce(String) -> E) -> Vec<E> {
        let Some(worker) = slot else {
            return Vec::new();
        };
        let mut died = Some(died);
        let events = worker
            .poll()
            .into_iter()
            .filter_map(|p| match p {
                Polled::Event(e) => Some(e),
                Polled::Died(why) => died.take().map(|f| f(why)),
            })
            .collect();
        if !worker.running() {
            *slot = None;
        }
        events
    }

    /// Whether every thread of the job has ended (its last events may still be unread).
    pub fn threads_ended(&self) -> bool {
        self.handles
            .iter()
            .all(std::thread::JoinHandle::is_finished)
    }

    /// Once every thread has ended without the terminal event: why, in the words of
    /// [`Polled::Died`] (whether or not that was polled yet). `None` while a thread runs or
    /// after the terminal event.
    pub fn ended(&self) -> Option<String> {
        (self.state != State::Finished && self.threads_ended()).then(|| self.death_reason())
    }

    /// Events sent and not polled yet.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Everything the worker sent since the last call, in order; ends with
    /// [`Polled::Died`] (once) when the channel closed before the terminal event.
    pub fn poll(&mut self) -> Vec<Polled<E>> {
        std::iter::from_fn(|| self.try_next()).collect()
    }

    /// The next event if one is ready (never blocks), or [`Polled::Died`] once when the
    /// channel closed before the terminal event.
    pub fn try_next(&mut self) -> Option<Polled<E>> {
        let got = self.rx.try_recv().map_err(|e| match e {
            TryRecvError::Empty => RecvTimeoutError::Timeout,
            TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
        });
        self.received(got)
    }

    /// Like [`Self::try_next`], waiting up to `timeout` for an event (tests, flushes at shutdown;
    /// never on the GUI thread's frame path).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Polled<E>> {
        let got = self.rx.recv_timeout(timeout);
        self.received(got)
    }

    fn received(&mut self, got: Result<E, RecvTimeoutError>) -> Option<Polled<E>> {
        if self.state == State::Died {
            return None;
        }
        match got {
            Ok(e) => {
                if (self.is_terminal)(&e) {
                    self.state = State::Finished;
                }
                Some(Polled::Event(e))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                if self.state != State::Running {
                    return None;
                }
                self.state = State::Died;
                Some(Polled::Died(self.death_reason()))
            }
        }
    }

    fn death_reason(&self) -> String {
        let panic = self
            .panic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match panic {
            Some(text) => format!("the {} thread panicked: {text}", self.name),
            None => format!("the {} thread stopped before finishing", self.name),
        }
    }
}

/// Starts `f` on a thread named `name` under `catch_unwind` with `tx` (this thread's sender of
/// the job's channel); a panic is written to `slot` before this thread's last sender drops.
fn spawn_guarded<E, F>(
    name: String,
    tx: Sender<E>,
    ctx: &egui::Context,
    slot: &PanicSlot,
    f: F,
) -> std::io::Result<JoinHandle<()>>
where
    E: Send + 'static,
    F: FnOnce(WorkerTx<E>) + Send + 'static,
{
    let (slot, ctx) = (slot.clone(), ctx.clone());
    std::thread::Builder::new().name(name).spawn(move || {
        // Held until the panic is recorded: the receiver sees the channel close only after
        // that.
        let keep = tx.clone();
        let wtx = WorkerTx {
            tx,
            ctx: ctx.clone(),
        };
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(move || f(wtx))) {
            let text = panic_text(&*p);
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert(text);
        }
        drop(keep);
        ctx.request_repaint();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Polls until the worker is no longer running (bounded at 60 s, never a timing assertion).
    fn poll_to_end(w: &mut Worker<u32>) -> Vec<Polled<u32>> {
        let start = Instant::now();
        let mut all = Vec::new();
        while w.running() {
            assert!(start.elapsed() < Duration::from_secs(60), "worker hung");
            all.extend(w.poll());
            std::thread::sleep(Duration::from_millis(2));
        }
        all.extend(w.poll());
        all
    }

    fn terminal(e: &u32) -> bool {
        *e == 99
    }

    #[test]
    fn events_then_terminal_finish_cleanly() {
        let ctx = egui::Context::default();
        let mut w = Worker::spawn("worker-ok", &ctx, 2, terminal, |tx| {
            for i in 0..5 {
                assert!(tx.send(i));
            }
            tx.send(99);
        })
        .unwrap();
        let got = poll_to_end(&mut w);
        let want: Vec<Polled<u32>> = [0, 1, 2, 3, 4, 99].map(Polled::Event).into();
        assert_eq!(got, want);
        assert_eq!(w.name(), "worker-ok");
    }

    #[test]
    fn a_panic_after_partial_events_is_died_with_its_message() {
        let ctx = egui::Context::default();
        let mut w = Worker::spawn("worker-panics", &ctx, 1, terminal, |tx| {
            tx.send(1);
            tx.send(2);
            panic!("boom at step 3");
        })
        .unwrap();
        let got = poll_to_end(&mut w);
        assert_eq!(
            got,
            vec![
                Polled::Event(1),
                Polled::Event(2),
                Polled::Died("the worker-panics thread panicked: boom at step 3".to_owned())
            ]
        );
        assert!(w.poll().is_empty(), "death is reported once");
    }

    #[test]
    fn returning_without_the_terminal_event_is_died() {
        let ctx = egui::Context::default();
        let mut w = Worker::spawn("worker-quits", &ctx, 4, terminal, |tx| {
            tx.send(7);
        })
        .unwrap();
        let got = poll_to_end(&mut w);
        assert_eq!(
            got,
            vec![
                Polled::Event(7),
                Polled::Died("the worker-quits thread stopped before finishing".to_owned())
            ]
        );
    }

    #[test]
    fn a_pool_dies_only_when_its_last_thread_ends_and_names_the_panic() {
        let ctx = egui::Context::default();
        let (go_tx, go_rx) = bounded::<()>(0);
        let mut w = Worker::pool("worker-pool", &ctx, 3, 8, terminal, move |n, tx| {
            tx.send(n as u32);
            if n == 1 {
                panic!("thread {n} fails");
            }
            // The others wait for the test to let them end.
            go_rx.recv().ok();
        })
        .unwrap();
        let start = Instant::now();
        while w.queued() < 3 {
            assert!(start.elapsed() < Duration::from_secs(60), "pool hung");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut first: Vec<Polled<u32>> = w.poll();
        first.sort_by_key(|p| match p {
            Polled::Event(n) => *n,
            Polled::Died(_) => u32::MAX,
        });
        assert_eq!(first, [0, 1, 2].map(Polled::Event));
        assert!(w.running(), "two threads still run");
        assert_eq!(w.ended(), None);
        drop(go_tx);
        let rest = poll_to_end(&mut w);
        let died = "the worker-pool thread panicked: thread 1 fails".to_owned();
        assert_eq!(rest, vec![Polled::Died(died.clone())]);
        assert!(w.threads_ended() || !w.running());
        while !w.threads_ended() {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.ended(), Some(died), "the reason stays readable");
    }

    #[test]
    fn recv_timeout_waits_for_one_event_and_times_out_empty() {
        let ctx = egui::Context::default();
        let (go_tx, go_rx) = bounded::<()>(0);
        let mut w = Worker::spawn("worker-slow", &ctx, 1, terminal, move |tx| {
            go_rx.recv().ok();
            tx.send(99);
        })
        .unwrap();
        assert_eq!(w.recv_timeout(Duration::from_millis(20)), None);
        go_tx.send(()).unwrap();
        let got = w.recv_timeout(Duration::from_secs(60));
        assert_eq!(got, Some(Polled::Event(99)));
        assert!(!w.running());
        assert_eq!(
            w.recv_timeout(Duration::from_millis(20)),
            None,
            "finished: no death"
        );
    }
}
