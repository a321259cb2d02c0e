//! Command line: `lineship --config PATH [--stdin]`, `lineship check`, `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lineship",
    version,
    about = "Ships InfluxDB line protocol to /api/v2/write without losing what it accepted"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Read line protocol from stdin until EOF, deliver it, and exit
    /// (0 delivered, 65 some lines invalid, 75 some data not delivered).
    #[arg(long)]
    pub stdin: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print the effective settings (secrets redacted); exit 2 if bad.
    Check,
    /// Inspect the disk spool under state_dir (read-only; safe while the daemon runs).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Segments, records, lines and bytes waiting, and the age of the oldest record.
    Status,
    /// Check every record's CRC; exit 1 and say where if anything is damaged.
    Verify,
}
