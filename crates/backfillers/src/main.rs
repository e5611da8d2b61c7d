//! `backfillers`: see the crate's lib for the parts and exit codes.

use backfillers::cli::Cli;
use clap::Parser as _;
use clap::error::ErrorKind;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "{} (see backfillers --help)",
                one_line(&e.render().to_string())
            );
            return ExitCode::from(backfillers::EXIT_CONFIG);
        }
    };
    match backfillers::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// clap's message up to its usage paragraph, without tips, as one line.
fn one_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    if parts.is_empty() {
        "error: bad arguments".to_owned()
    } else {
        parts.join(" ")
    }
}
