//! `graydar`: the command line of the controller API.

use std::io::Write as _;

use clap::Parser as _;
use graydar_controller::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graydar: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
