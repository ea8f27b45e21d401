//! A cancel flag shared between a job and whoever may stop it (the GUI's Cancel button, a
//! CLI's Ctrl+C). Checked by long jobs at their own safe points: import, download, training,
//! evaluation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cancel flag shared between a job and whoever may stop it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_sees_the_cancel_of_the_original() {
        let token = CancelToken::default();
        let seen_by_job = token.clone();
        assert!(!seen_by_job.is_cancelled());
        token.cancel();
        assert!(seen_by_job.is_cancelled());
    }
}
