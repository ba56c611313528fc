//! `graydar`: the command line of the controller API.

use std::io::Write as _;

use clap::Parser as _;
use graydar_controller::cli::{Cli, exit_code, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graydar: {e}");
            // 3: the run (or fault) did not pass; 1: any other error (2 is clap's usage error).
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}
