//! `maskstudio`: the studio window, or a headless job when a subcommand is given.

use clap::Parser as _;
use maskstudio::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    maskstudio::alloc::keep_large_blocks();
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let result = match cli.command {
        None => studio(&mut logger, None, None),
        Some(Command::Gui { project, tab }) => studio(&mut logger, project, tab),
        Some(command) => {
            logger.init();
            maskstudio::cli::run(command)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The window: the terminal log as always, plus logged warnings and errors as toasts.
fn studio(
    logger: &mut env_logger::Builder,
    project: Option<std::path::PathBuf>,
    tab: Option<String>,
) -> anyhow::Result<()> {
    if let Err(e) = maskstudio::gui::log_toasts::install(logger) {
        eprintln!("warning: logged warnings will not show as toasts: {e}");
    }
    let mut options = maskstudio::gui::StudioOptions::from_env(project);
    if let Some(tab) = tab.as_deref().and_then(maskstudio::gui::parse_tab) {
        options.start_tab = Some(tab);
    }
    maskstudio::gui::run_with(options)
}
