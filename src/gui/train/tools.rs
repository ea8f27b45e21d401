//! What the reference Python venv offers the Train tab: the torchrun engine and the deployment
//! export formats. [`crate::host::python_tools`] probes a subprocess the first time, so the
//! panel asks once on the `python-tools` worker when it first shows and keeps the answer;
//! until then (and when the venv is missing) those choices are greyed with the reason.

use crate::train::deploy::DeployFormat;
use crate::train::torchrun::{Engine, TorchrunOptions};

/// The reason shown while the probe runs.
const PROBING: &str = "checking the reference Python venv…";

/// The venv's answer as the panel keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum PythonTools {
    /// Not asked yet (the panel has not shown).
    #[default]
    Unknown,
    /// The `python-tools` worker is asking.
    Probing,
    /// The answer: whether torchrun can run, and each deployment format's availability.
    Known(ToolsAnswer),
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ToolsAnswer {
    /// Ok, or why torchrun cannot run here.
    pub(super) torchrun: Result<(), String>,
    /// [`DeployFormat::available`] of each of [`DeployFormat::ALL`].
    pub(super) formats: Vec<(DeployFormat, Result<(), String>)>,
}

/// Asks the venv (blocking: a subprocess the first time in a process; run it on a worker).
pub(super) fn probe() -> ToolsAnswer {
    let torchrun = crate::host::python_tools()
        .map(|_| ())
        .map_err(|why| format!("torchrun runs in the reference Python venv: {why}"));
    let formats = DeployFormat::ALL
        .into_iter()
        .map(|f| (f, f.available()))
        .collect();
    ToolsAnswer { torchrun, formats }
}

/// The answer when the probe itself failed (its worker died): everything unavailable, `why`.
pub(super) fn failed(why: &str) -> ToolsAnswer {
    let why = format!("the reference Python venv could not be checked: {why}");
    ToolsAnswer {
        torchrun: Err(why.clone()),
        formats: DeployFormat::ALL
            .into_iter()
            .map(|f| (f, Err(why.clone())))
            .collect(),
    }
}

impl PythonTools {
    /// Whether the probe is running.
    pub(super) fn probing(&self) -> bool {
        matches!(self, Self::Probing)
    }

    /// Ok, or why the torchrun engine is not offered.
    pub(super) fn torchrun(&self) -> Result<(), String> {
        match self {
            Self::Known(a) => a.torchrun.clone(),
            Self::Unknown | Self::Probing => Err(PROBING.to_owned()),
        }
    }

    /// Ok, or why `format` cannot be exported here.
    pub(super) fn format(&self, format: DeployFormat) -> Result<(), String> {
        match self {
            Self::Known(a) => a.formats.iter().find(|(f, _)| *f == format).map_or_else(
                || Err(format!("{} is not offered", format.label())),
                |(_, r)| r.clone(),
            ),
            Self::Unknown | Self::Probing => Err(PROBING.to_owned()),
        }
    }
}

/// How the run list and the live view name a run's engine: `in-process`, or `torchrun × N`
/// with N the processes in all (per machine × machines; `torchrun` alone when unknown).
pub fn engine_label(engine: Engine, opts: Option<&TorchrunOptions>) -> String {
    match (engine, opts) {
        (Engine::Torchrun, Some(o)) => {
            format!("torchrun × {}", o.nproc_per_node * o.nnodes.max(1))
        }
        (e, _) => e.label().to_owned(),
    }
}

/// The name a deployment format has in the export row: `ONNX (.onnx)`, `TorchScript (.pt)`.
pub(super) fn format_name(format: DeployFormat) -> &'static str {
    match format {
        DeployFormat::Onnx => "ONNX (.onnx)",
        DeployFormat::TorchScript => "TorchScript (.pt)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_engine_and_its_process_count() {
        let two = TorchrunOptions::default();
        assert_eq!(engine_label(Engine::Torchrun, Some(&two)), "torchrun × 2");
        let nodes = TorchrunOptions {
            nproc_per_node: 4,
            nnodes: 3,
            ..TorchrunOptions::default()
        };
        assert_eq!(
            engine_label(Engine::Torchrun, Some(&nodes)),
            "torchrun × 12"
        );
        assert_eq!(engine_label(Engine::Torchrun, None), "torchrun");
        assert_eq!(engine_label(Engine::InProcess, Some(&two)), "in-process");
    }

    #[test]
    fn unknown_and_failed_answers_grey_everything_with_a_reason() {
        let probing = PythonTools::Probing;
        assert_eq!(probing.torchrun(), Err(PROBING.to_owned()));
        assert_eq!(probing.format(DeployFormat::Onnx), Err(PROBING.to_owned()));
        let dead = PythonTools::Known(failed("boom"));
        let why = dead.format(DeployFormat::TorchScript).unwrap_err();
        assert!(why.contains("boom"), "{why}");
        assert!(dead.torchrun().unwrap_err().contains("boom"));
    }
}
