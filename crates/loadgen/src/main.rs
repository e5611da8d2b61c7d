//! The `loadgen` binary: flags in, figures out; everything else is the library's.

use clap::Parser as _;

#[tokio::main]
async fn main() {
    let cli = loadgen::Cli::parse();
    if let Err(e) = loadgen::main_with(cli).await {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
