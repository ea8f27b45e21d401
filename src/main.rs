//! `maskstudio`: the studio window, or a headless job when a subcommand is given.

use clap::Parser as _;
use maskstudio::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => maskstudio::gui::run(None),
        Some(Command::Gui { project, tab }) => {
            let mut options = maskstudio::gui::StudioOptions::from_env(project);
            if let Some(tab) = tab.as_deref().and_then(maskstudio::gui::parse_tab) {
                options.start_tab = Some(tab);
            }
            maskstudio::gui::run_with(options)
        }
        Some(command) => maskstudio::cli::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
