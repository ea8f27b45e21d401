//! Opening, creating and sampling projects: each on a one-shot shell worker (the folder
//! dialog too: rfd blocks until the user answers), and what the shell does with the answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui;

use super::StudioApp;
use crate::dataset::store::{Project, ProjectInfo};

/// Which folder dialog is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DialogPurpose {
    Open,
    New,
}

/// What the shell's workers report.
pub(super) enum Event {
    Loaded {
        root: PathBuf,
        info: Box<ProjectInfo>,
    },
    Failed {
        root: PathBuf,
        error: String,
    },
    Dialog {
        purpose: DialogPurpose,
        path: Option<PathBuf>,
        took: Duration,
    },
    /// The folder dialog's thread died (the text says why).
    DialogDied(String),
    Sample(Result<PathBuf, String>),
    SettingsSaved(Result<(), String>),
}

/// Which job a shell worker runs: names its thread and turns its death into its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ShellJob {
    /// Opening (or creating) the project at this folder.
    Load(PathBuf),
    Dialog,
    Sample,
    SaveSettings,
}

impl ShellJob {
    /// The worker thread's name.
    pub(super) fn thread_name(&self) -> &'static str {
        match self {
            ShellJob::Load(_) => "project-loader",
            ShellJob::Dialog => "folder-dialog",
            ShellJob::Sample => "sample-project",
            ShellJob::SaveSettings => "settings-save",
        }
    }

    /// The event that reports this job failed because its thread died (`reason`).
    pub(super) fn died(&self, reason: String) -> Event {
        match self {
            ShellJob::Load(root) => Event::Failed {
                root: root.clone(),
                error: reason,
            },
            ShellJob::Dialog => Event::DialogDied(reason),
            ShellJob::Sample => Event::Sample(Err(reason)),
            ShellJob::SaveSettings => Event::SettingsSaved(Err(reason)),
        }
    }
}

/// Creates the offline sample project in `dir` ([`crate::sample_project`]); reopens it when it exists.
fn create_sample(dir: &Path) -> anyhow::Result<()> {
    if dir.join("project.sqlite").is_file() {
        return Ok(());
    }
    crate::sample_project::create_sample_project(dir, &mut |_| {})
}

impl StudioApp {
    /// Starts opening (or with `create`, creating) a project on a worker thread. Without a
    /// `ctx` (before the first frame) the worker wakes nobody: `logic` polls while loading.
    pub(super) fn open_project(
        &mut self,
        root: PathBuf,
        create: bool,
        ctx: Option<&egui::Context>,
    ) {
        self.loading = Some(root.clone());
        let ctx = ctx.cloned().unwrap_or_default();
        let job = ShellJob::Load(root.clone());
        let started = self.start_job(job, "the project loader", &ctx, move || {
            let opened = if create {
                Project::create_or_open(&root)
            } else {
                Project::open(&root)
            };
            match opened.and_then(|p| p.info()) {
                Ok(info) => Event::Loaded {
                    root,
                    info: Box::new(info),
                },
                Err(e) => Event::Failed {
                    root,
                    error: format!("{e:#}"),
                },
            }
        });
        if !started {
            self.loading = None;
        }
    }

    /// Opens a folder dialog on a thread (rfd blocks until the user answers).
    pub(super) fn pick_folder(&mut self, purpose: DialogPurpose, ctx: &egui::Context) {
        if self.dialog_open {
            return;
        }
        let start_dir = self.settings.data_dir.clone();
        self.dialog_open = self.start_job(ShellJob::Dialog, "the folder dialog", ctx, move || {
            let started = Instant::now();
            let title = match purpose {
                DialogPurpose::Open => "Open a Mask Studio project",
                DialogPurpose::New => "Folder for the new project",
            };
            let mut dialog = rfd::FileDialog::new().set_title(title);
            if start_dir.is_dir() {
                dialog = dialog.set_directory(&start_dir);
            }
            let path = dialog.pick_folder();
            Event::Dialog {
                purpose,
                path,
                took: started.elapsed(),
            }
        });
    }

    /// Creates (or reopens) the sample project under the data folder on a thread.
    pub(super) fn try_sample(&mut self, ctx: &egui::Context) {
        if self.sample_running {
            return;
        }
        let dir = self.settings.data_dir.join("sample");
        self.sample_running =
            self.start_job(ShellJob::Sample, "the sample project", ctx, move || {
                let result = create_sample(&dir)
                    .map(|()| dir.clone())
                    .map_err(|e| format!("{}: {e:#}", dir.display()));
                Event::Sample(result)
            });
    }

    pub(super) fn handle_event(&mut self, event: Event, ctx: &egui::Context) {
        match event {
            Event::Loaded { root, info } => {
                if self.loading.as_ref() == Some(&root) {
                    self.loading = None;
                }
                let reopened = self.project.as_ref().is_some_and(|(r, _)| *r == root);
                if !reopened {
                    self.train
                        .project_opened(crate::sample_project::is_sample(&info));
                }
                self.project_path = root.display().to_string();
                self.settings.touch_recent(&root);
                self.project = Some((root, *info));
                self.review.refresh();
                if !reopened {
                    self.review.selected_image = None;
                }
            }
            Event::Failed { root, error } => {
                if self.loading.as_ref() == Some(&root) {
                    self.loading = None;
                }
                self.notices
                    .error(format!("Opening {} failed: {error}", root.display()));
            }
            Event::Dialog {
                purpose,
                path,
                took,
            } => {
                self.dialog_open = false;
                match path {
                    Some(path) => self.open_project(path, purpose == DialogPurpose::New, Some(ctx)),
                    None if took < Duration::from_millis(150) => self.notices.warn(
                        "No folder dialog is available here (no desktop portal or zenity): type the folder in the Project folder field, then press Open or Create",
                    ),
                    None => {}
                }
            }
            Event::DialogDied(reason) => {
                self.dialog_open = false;
                self.notices.error(format!("The folder dialog: {reason}"));
            }
            Event::Sample(result) => {
                self.sample_running = false;
                match result {
                    Ok(dir) => self.open_project(dir, false, Some(ctx)),
                    Err(e) => self.notices.error(format!("The sample project: {e}")),
                }
            }
            Event::SettingsSaved(Err(e)) => {
                self.notices.error(format!("Saving settings failed: {e}"))
            }
            Event::SettingsSaved(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_stub_names_its_folder() {
        let err = create_sample(Path::new("/proc/maskstudio-sample")).unwrap_err();
        assert!(err.to_string().contains("maskstudio-sample"), "{err:#}");
    }
}
