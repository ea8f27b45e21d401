//! `maskstudio`: the studio window, or a headless job when a subcommand is given.

use clap::Parser as _;
use maskstudio::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => maskstudio::gui::run(None),
        Some(Command::Gui { project }) => maskstudio::gui::run(project),
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
