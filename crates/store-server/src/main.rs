//! `store`: the margin-offer store server. See the crate's lib for the parts.

use anyhow::Context as _;
use clap::Parser as _;
use clap::error::ErrorKind;
use std::process::ExitCode;
use store_server::cli::Cli;

/// glibc malloc keeps freed memory in its per-thread arenas, so the store's
/// RSS stayed near the peak of its largest overwrite; mimalloc purges freed
/// pages back to the OS (at once: `store_server::allocator`) and is faster
/// on the many small allocations of offers (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    store_server::allocator::return_freed_memory_promptly();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap renders a paragraph (tips, usage); the first line says it all.
            eprintln!("{} (see store --help)", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the cause chain joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            tracing::error!("exiting: {msg}");
            ExitCode::FAILURE
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

fn run(cli: Cli) -> anyhow::Result<()> {
    store_server::init_logging(cli.log_format, cli.log_level.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let metrics = store_server::http::install_metrics()?;
        let shutdown = store_server::shutdown_signal()?;
        store_server::run(&cli, metrics, shutdown).await?;
        Ok(())
    })
}
