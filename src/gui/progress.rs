//! The one progress row every panel shows for a running job: a bar with "done / total" (or the
//! job's own text) and a Cancel button that trips the job's [`CancelToken`].

use eframe::egui;

use crate::cancel::CancelToken;

/// How far a job is, as a panel knows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// `done` of `total` units (a `total` of 0 draws an empty bar).
    Count { done: u64, total: u64 },
    /// A fraction in `0..=1`, or `None` when the job cannot say (the bar animates).
    Fraction(Option<f32>),
}

impl Progress {
    /// The bar's fill in `0..=1`.
    pub fn fraction(self) -> f32 {
        match self {
            Progress::Count { total: 0, .. } => 0.0,
            Progress::Count { done, total } => (done as f64 / total as f64).clamp(0.0, 1.0) as f32,
            Progress::Fraction(f) => f.unwrap_or(0.0).clamp(0.0, 1.0),
        }
    }
}

/// A progress bar `width` points wide, then a button labelled `cancel_label` when `cancel` is
/// given; clicking it cancels the token. `text` overrides the bar's "done / total" text.
pub fn progress_row(
    ui: &mut egui::Ui,
    progress: Progress,
    text: Option<String>,
    width: f32,
    cancel: Option<(&CancelToken, &str)>,
) -> egui::Response {
    let response = progress_bar(ui, progress, text, Some(width));
    if let Some((token, label)) = cancel {
        cancel_button(ui, token, label);
    }
    response
}

/// The row's bar alone (rows of phases or classes, each without its own Cancel): `width`
/// points wide, or the available width when `None`; animated while the fraction is unknown.
pub fn progress_bar(
    ui: &mut egui::Ui,
    progress: Progress,
    text: Option<String>,
    width: Option<f32>,
) -> egui::Response {
    let text = text.unwrap_or_else(|| match progress {
        Progress::Count { done, total } => format!("{done} / {total}"),
        Progress::Fraction(Some(f)) => format!("{:.0}%", f * 100.0),
        Progress::Fraction(None) => String::new(),
    });
    let mut bar = egui::ProgressBar::new(progress.fraction())
        .text(text)
        .animate(matches!(progress, Progress::Fraction(None)));
    if let Some(width) = width {
        bar = bar.desired_width(width);
    }
    ui.add(bar)
}

/// A button labelled `label` that cancels `token` when clicked (a job shown with a spinner
/// rather than a bar uses it alone).
pub fn cancel_button(ui: &mut egui::Ui, token: &CancelToken, label: &str) -> egui::Response {
    let response = ui.button(label);
    if response.clicked() {
        token.cancel();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn fraction_is_clamped_and_safe_on_empty_totals() {
        assert_eq!(Progress::Count { done: 3, total: 0 }.fraction(), 0.0);
        assert!((Progress::Count { done: 1, total: 4 }.fraction() - 0.25).abs() < 1e-6);
        assert_eq!(Progress::Count { done: 9, total: 4 }.fraction(), 1.0);
        assert_eq!(Progress::Fraction(None).fraction(), 0.0);
        assert_eq!(Progress::Fraction(Some(1.5)).fraction(), 1.0);
    }
}
