//! Logging set-up: every binary logs to stdout (stderr is kept for the
//! one-line fatal error), as text or JSON, filtered the same way.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A log filter that does not parse, with the directives it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilterError {
    pub directives: String,
    /// The parser's message on one line.
    pub message: String,
}

impl std::fmt::Display for LogFilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid log filter {:?}: {}",
            self.directives, self.message
        )
    }
}

impl std::error::Error for LogFilterError {}

/// The filter: `level` (`--log-level` / `LOG_LEVEL`) when given and not
/// blank, else `RUST_LOG`, else `info`.
pub fn log_filter(level: Option<&str>) -> Result<EnvFilter, LogFilterError> {
    let directives = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(&directives).map_err(|e| LogFilterError {
        message: e.to_string().replace('\n', " "),
        directives,
    })
}

/// Installs the global subscriber writing to `writer`, with colours only
/// when stdout is a terminal. A subscriber already installed (a test
/// starting a service twice) is left in place.
pub fn init_logging<W>(format: LogFormat, filter: EnvFilter, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_names_its_directives_on_one_line() {
        let err = log_filter(Some("store=loud")).err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("invalid log filter \"store=loud\": "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn an_explicit_level_wins_and_blank_falls_back() {
        let filter = log_filter(Some("debug")).map(|f| f.to_string());
        assert_eq!(filter.as_deref(), Ok("debug"));
        // Blank means unset: RUST_LOG or `info`, never an empty filter.
        let fallback = log_filter(Some("  ")).map(|f| f.to_string());
        assert!(
            matches!(fallback.as_deref(), Ok(s) if !s.is_empty()),
            "{fallback:?}"
        );
    }
}
