//! How every panel starts a worker thread, and how it learns that the worker died.
//!
//! [`Worker::spawn`] starts a named thread and hands its closure the **only** sender of a
//! bounded channel ([`WorkerTx`]: each send wakes the GUI). The closure runs under
//! `catch_unwind`; a panic is recorded before the last sender is dropped. [`Worker::poll`]
//! drains the channel on the GUI thread and turns a closed channel that was not preceded by
//! the job's terminal event into [`Polled::Died`] carrying the panic message, so a job never
//! stays "running" after its thread is gone.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
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

/// The GUI side of one worker thread.
pub struct Worker<E> {
    name: String,
    rx: Receiver<E>,
    is_terminal: fn(&E) -> bool,
    panic: Arc<Mutex<Option<String>>>,
    state: State,
    handle: std::thread::JoinHandle<()>,
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
        let (tx, rx) = bounded(cap.max(1));
        let panic = Arc::new(Mutex::new(None));
        let (slot, ctx2) = (panic.clone(), ctx.clone());
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Held until the panic is recorded: the receiver sees the channel close only
                // after that.
                let keep = tx.clone();
                let wtx = WorkerTx {
                    tx,
                    ctx: ctx2.clone(),
                };
                if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(move || f(wtx))) {
                    let text = panic_text(&*p);
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
                }
                drop(keep);
                ctx2.request_repaint();
            })?;
        Ok(Self {
            name: name.to_owned(),
            rx,
            is_terminal,
            panic,
            state: State::Running,
            handle,
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
        let Self { rx, handle, .. } = self;
        drop(rx);
        if handle.join().is_err() {
            log::warn!("a worker thread panicked outside its guard");
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

    /// Everything the worker sent since the last call, in order; ends with
    /// [`Polled::Died`] (once) when the channel closed before the terminal event.
    pub fn poll(&mut self) -> Vec<Polled<E>> {
        let mut out = Vec::new();
        if self.state == State::Died {
            return out;
        }
        loop {
            match self.rx.try_recv() {
                Ok(e) => {
                    if (self.is_terminal)(&e) {
                        self.state = State::Finished;
                    }
                    out.push(Polled::Event(e));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if self.state == State::Running {
                        self.state = State::Died;
                        out.push(Polled::Died(self.death_reason()));
                    }
                    break;
                }
            }
        }
        out
    }

    fn death_reason(&self) -> String {
        let panic = self
            .panic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match panic {
            Some(text) => format!("the {} thread panicked: {text}", self.name),
            None => format!("the {} thread stopped before finishing", self.name),
        }
    }
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
}
