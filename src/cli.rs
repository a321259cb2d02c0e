//! Command line: `lineship --config PATH [--stdin]`, `lineship check`, `lineship spool ...`,
//! `--version`, and `lineship completions SHELL` / `lineship man`, which print the shell
//! completions and the man page generated from these definitions (the package installs them).

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
    /// Print the completion script for SHELL (needs no config), e.g.
    /// `lineship completions bash > /usr/share/bash-completion/completions/lineship`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, lineship(1), in roff (needs no config), e.g. `lineship man | man -l -`.
    Man,
}

/// Writes the completion script for `shell`, from the definitions above.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "lineship", out);
}

/// Writes the man page lineship(1), from the definitions above.
pub fn write_man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(out)
}

#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Segments, records, lines and bytes waiting, and the age of the oldest record.
    Status,
    /// Check every record's CRC; exit 1 and say where if anything is damaged.
    Verify,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn completions_and_man_page_name_every_subcommand() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            // Fish names options without their dashes (`-l config`).
            for word in ["check", "spool", "verify", "config", "stdin"] {
                assert!(text.contains(word), "{shell:?} completions lack {word}");
            }
        }
        let mut man = Vec::new();
        write_man(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH lineship"),
            "{man}"
        );
        for word in ["check", "spool", "completions", "stdin"] {
            assert!(man.contains(word), "the man page lacks {word}");
        }
    }
}
