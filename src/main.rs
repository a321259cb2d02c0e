//! The `lineship` binary: parse the command line, set up logging, load the config, run, and
//! map the outcome to an exit code. All exit codes are decided here.

use std::process::ExitCode;

use clap::Parser;
use lineship::cli::{Cli, Command};
use lineship::config::Settings;

/// Bad config or usage.
const EXIT_CONFIG: u8 = 2;
/// stdin mode: some lines were invalid (EX_DATAERR).
const EXIT_INVALID: u8 = 65;
/// stdin mode: some data was not delivered (EX_TEMPFAIL).
const EXIT_UNDELIVERED: u8 = 75;
/// The daemon failed at runtime.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config) = cli.config.as_deref() else {
        eprintln!("error: --config PATH is required (see config.example.toml)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let settings = match Settings::load(config, cli.stdin) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        println!(
            "config {} is valid; effective settings:\n{settings:#?}",
            config.display()
        );
        return ExitCode::SUCCESS;
    }
    lineship::telemetry::init_logging(&settings.agent.log_level, settings.agent.log_format);
    let stdin_mode = settings.inputs.stdin.is_some();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lineship-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = rt.block_on(lineship::run(
        settings,
        lineship::Io::default(),
        shutdown_signal(),
    ));
    // The stdin thread may still be blocked in read(); don't wait for it.
    rt.shutdown_background();
    match result {
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(report) if stdin_mode => {
            if report.lines_undelivered > 0 {
                ExitCode::from(EXIT_UNDELIVERED)
            } else if report.lines_invalid > 0
                || report.lines_dead_lettered > 0
                || report.lines_partial_dropped > 0
            {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(_) => ExitCode::SUCCESS,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will kill without draining");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
