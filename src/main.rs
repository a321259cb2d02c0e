//! The `lineship` binary: parse the command line, set up logging, load the config, run, and
//! map the outcome to an exit code. All exit codes are decided here.

use std::process::ExitCode;

use clap::Parser;
use lineship::cli::{Cli, Command, SpoolAction};
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
    if cli.command.is_some() {
        // A one-shot command piped into `head` should end quietly, like other Unix tools; the
        // daemon keeps SIGPIPE ignored, so a closed log pipe never kills it.
        // SAFETY: resetting a signal disposition to its default before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match &cli.command {
        Some(Command::Completions { shell }) => {
            lineship::cli::write_completions(*shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            return match lineship::cli::write_man(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the man page: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            };
        }
        _ => {}
    }
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
    let warnings = lineship::config::secret_file_warnings(config, &settings);
    match cli.command {
        Some(Command::Check) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            // An output removed from the config leaves its spool; nothing delivers it now.
            for d in lineship::lanes::orphaned_spools(&settings) {
                eprintln!(
                    "warning: {} holds spooled data that no configured output delivers (an output or a shard URL was removed from the config); put the output back to deliver it, or remove the directory once it is no longer wanted",
                    d.display()
                );
            }
            // gzip_engine = "isal" on a host without ISA-L would stop the start; say so here.
            if let Err(e) = lineship::batch::select_engine(settings.agent.gzip_engine) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // Run as the service user (ExecStartPre), this catches a state_dir it cannot use.
            if settings.state_dir.is_dir() {
                if let Err(e) = lineship::state_dir::check_writable(&settings.state_dir) {
                    eprintln!("warning: {e:#}");
                }
            }
            println!(
                "config {} is valid; effective settings:\n{settings:#?}",
                config.display()
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Spool { action }) => return spool_command(&settings, action),
        Some(Command::Completions { .. } | Command::Man) => {
            unreachable!("handled before the config")
        }
        None => {}
    }
    lineship::telemetry::init_logging(&settings.agent.log_level, settings.agent.log_format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let stdin_mode = settings.inputs.stdin.is_some();
    let rejected = lineship::reject::dead_letter_path(&settings.state_dir);
    let stats = std::sync::Arc::new(lineship::telemetry::Stats::default());
    let started = std::time::Instant::now();
    let log_format = settings.agent.log_format;

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
    let bar = stdin_mode
        .then(|| lineship::progress::Bar::start(stats.clone()))
        .flatten();
    let io = lineship::Io {
        stats: Some(stats),
        ..Default::default()
    };
    let result = rt.block_on(lineship::run(
        settings,
        io,
        // Installed before `run` starts, so a SIGTERM during startup also drains.
        {
            let _in_runtime = rt.enter();
            shutdown_signal()
        },
    ));
    // The stdin thread may still be blocked in read(); don't wait for it.
    rt.shutdown_background();
    if let Some(bar) = bar {
        bar.finish();
    }
    match result {
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(report) if stdin_mode => {
            let code = if report.lines_undelivered > 0
                || report.lines_spooled > 0
                || report.lines_spool_dropped > 0
            {
                EXIT_UNDELIVERED
            } else if report.lines_invalid > 0
                || report.lines_dead_lettered > 0
                || report.lines_partial_dropped > 0
            {
                EXIT_INVALID
            } else {
                0
            };
            let line =
                lineship::progress::summary_line(&report, started.elapsed(), &rejected, code);
            let journald = std::env::var_os("JOURNAL_STREAM").is_some();
            eprintln!(
                "{}",
                lineship::progress::summary_output(&line, code, log_format, journald)
            );
            ExitCode::from(code)
        }
        Ok(_) => ExitCode::SUCCESS,
    }
}

fn spool_command(settings: &Settings, action: SpoolAction) -> ExitCode {
    // Every lane's spool (an output's, or a shard's), then those no output uses any more.
    let plan = lineship::lanes::plan(settings);
    let mut spools: Vec<(String, std::path::PathBuf)> = plan
        .lanes
        .iter()
        .map(|l| {
            let name = &settings.outputs[l.output].name;
            let what = match &l.shard {
                Some(url) => format!("output {name}, shard {url}"),
                None => format!("output {name}"),
            };
            (what, l.spool_dir.clone())
        })
        .collect();
    for d in lineship::lanes::orphaned_spools(settings) {
        spools.push(("no output (removed from the config)".to_owned(), d));
    }
    let several = spools.len() > 1;
    let mut code = ExitCode::SUCCESS;
    for (i, (what, dir)) in spools.iter().enumerate() {
        if several {
            if i > 0 {
                println!();
            }
            println!("{what}:");
        }
        if spool_report(dir, &action) != ExitCode::SUCCESS {
            code = ExitCode::from(EXIT_FAILURE);
        }
    }
    code
}

/// `spool status` or `spool verify` of the spool in `dir`.
fn spool_report(dir: &std::path::Path, action: &SpoolAction) -> ExitCode {
    // Verifying reads every byte of the spool: show how far it is on a terminal.
    let bar = matches!(action, SpoolAction::Verify)
        .then(|| lineship::progress::bytes_bar("verifying"))
        .flatten();
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let inspected = lineship::spool::inspect_dir_with_progress(dir.to_path_buf(), &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let inspection = match inspected {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot read the spool {}: {e}", dir.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match action {
        SpoolAction::Status => {
            let b = inspection.backlog();
            let age = b.oldest_created_at_ms.map(|ms| {
                let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                let age = std::time::SystemTime::now()
                    .duration_since(created)
                    .unwrap_or_default();
                humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
                    .to_string()
            });
            println!("spool:    {}", dir.display());
            println!("segments: {}", b.segments);
            println!("records:  {}", b.records);
            println!("lines:    {}", b.lines);
            println!("bytes:    {}", b.bytes);
            println!(
                "oldest:   {}",
                age.map_or("-".to_owned(), |a| format!("{a} ago"))
            );
            ExitCode::SUCCESS
        }
        SpoolAction::Verify => {
            let problems = inspection.problems();
            let records: usize = inspection
                .segments
                .iter()
                .filter_map(|s| s.scan.as_ref())
                .map(|s| s.records.len())
                .sum();
            if inspection.set_aside > 0 {
                println!(
                    "note: {} holds {} file(s) set aside earlier (their losses were counted and logged then); remove them once examined",
                    dir.join("corrupt").display(),
                    inspection.set_aside
                );
            }
            if problems.is_empty() {
                println!(
                    "spool {} is intact: {} segments, {records} records, every CRC matches",
                    dir.display(),
                    inspection.segments.len()
                );
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    println!("{p}");
                }
                println!("spool {} has {} problem(s); the daemon skips damaged records at start and counts them", dir.display(), problems.len());
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now; the returned future resolves on either signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; SIGTERM will kill without draining");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
