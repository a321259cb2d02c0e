//! Reloading on SIGHUP: what can change without a restart.
//!
//! - `output.token_file` is read again and, if it changed, handed to the HTTP client: the next
//!   request carries the new token. A file that cannot be read, is empty, or holds a token no
//!   HTTP header can carry (a line break inside, a control or non-ASCII character) keeps the
//!   current token (and says so at error level, naming the file). The token itself is never
//!   logged.
//! - Every SIGHUP bumps a generation number on a `tokio::sync::watch` channel that inputs
//!   subscribe to with [`Reloader::subscribe`] (the tail input rescans its globs). Async code
//!   awaits `changed()`; a blocking thread polls `has_changed()` and calls `mark_unchanged()`.
//!
//! Everything else in the config needs a restart (`systemctl restart lineship`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::config::{self, OutputSettings, Secret};
use crate::output::client::Client;

/// What re-reading the token file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenReload {
    /// No `output.token_file`: the token comes from `output.token` or `LINESHIP_TOKEN`.
    NotConfigured,
    Unchanged,
    Replaced(Secret),
    /// The file could not be used; the current token stays.
    Failed(String),
}

/// Reads `token_file` again and compares it with the token in use.
pub fn reread_token(token_file: Option<&Path>, current: &Secret) -> TokenReload {
    let Some(path) = token_file else {
        return TokenReload::NotConfigured;
    };
    match config::read_token_file(path) {
        Ok(t) if &t == current => TokenReload::Unchanged,
        Ok(t) => TokenReload::Replaced(t),
        Err(e) => TokenReload::Failed(e),
    }
}

pub struct Reloader {
    generation: watch::Sender<u64>,
    /// Each output's token file and the token in use, in output order.
    tokens: Vec<TokenFile>,
}

struct TokenFile {
    /// `output.token_file`, `outputs.NAME.token_file`.
    key: String,
    path: Option<PathBuf>,
    token: Mutex<Secret>,
}

impl Reloader {
    pub fn new(outputs: &[OutputSettings]) -> Self {
        Reloader {
            generation: watch::Sender::new(0),
            tokens: outputs
                .iter()
                .map(|o| TokenFile {
                    key: format!("{}.token_file", o.key),
                    path: o.token_file.clone(),
                    token: Mutex::new(o.token.clone()),
                })
                .collect(),
        }
    }

    /// A receiver that sees the generation number change on every reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Handles one reload request: `clients[i]` are the HTTP clients of output `i`.
    pub fn reload(&self, clients: &[Vec<&Client>]) {
        for (t, clients) in self.tokens.iter().zip(clients) {
            t.reload(clients);
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

impl TokenFile {
    fn reload(&self, clients: &[&Client]) {
        let key = &self.key;
        let mut current = self.token.lock().unwrap();
        let shown = self.path.as_deref().unwrap_or(Path::new("")).display();
        match reread_token(self.path.as_deref(), &current) {
            TokenReload::NotConfigured => tracing::info!(
                "reload (SIGHUP): {key} is not set, so the token stays as it is (a token in the config file and LINESHIP_TOKEN are read at start only)"
            ),
            TokenReload::Unchanged => tracing::info!(
                token_file = %shown,
                "reload (SIGHUP): re-read {key}; the token is unchanged"
            ),
            TokenReload::Replaced(t) => {
                for c in clients {
                    c.set_token(t.clone());
                }
                *current = t;
                tracing::info!(
                    token_file = %shown,
                    "reload (SIGHUP): re-read {key}; the next request uses the new token"
                );
            }
            TokenReload::Failed(e) => tracing::error!(
                "reload (SIGHUP): cannot use {key}: {e}; keeping the current token"
            ),
        }
        if let Some(path) = &self.path {
            if let Some(w) = config::world_readable_warning(path, key) {
                tracing::warn!("{w}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "old\n").unwrap();
        let old = Secret::new("old");
        assert_eq!(reread_token(None, &old), TokenReload::NotConfigured);
        assert_eq!(reread_token(Some(&f), &old), TokenReload::Unchanged);
        std::fs::write(&f, "new\n").unwrap();
        assert_eq!(
            reread_token(Some(&f), &old),
            TokenReload::Replaced(Secret::new("new"))
        );
        std::fs::write(&f, "  \n").unwrap();
        assert!(
            matches!(reread_token(Some(&f), &old), TokenReload::Failed(m) if m.contains("empty"))
        );
        // A token no HTTP header can carry keeps the current one; the error names the file.
        for bad in [
            "SECRET\nPART\n",
            "SECRET PART",
            "SECRET\u{1}PART",
            "SECRET\u{e9}PART",
        ] {
            std::fs::write(&f, bad).unwrap();
            match reread_token(Some(&f), &old) {
                TokenReload::Failed(m) => {
                    assert!(m.contains(&f.display().to_string()), "{m}");
                    assert!(!m.contains("SECRET") && !m.contains("PART"), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(
            reread_token(Some(&f), &old),
            TokenReload::Failed(_)
        ));
    }

    #[test]
    fn subscribers_see_every_reload() {
        let settings = crate::config::Settings::from_toml(
            "state_dir = \"/tmp/x\"\n[output]\nurl = \"http://localhost:1\"\nbucket = \"b\"\n",
            false,
            |_| None,
        )
        .unwrap();
        let r = Reloader::new(&settings.outputs);
        let mut rx = r.subscribe();
        assert!(!rx.has_changed().unwrap());
        let client = Client::new(&settings.outputs[0]).unwrap();
        r.reload(&[vec![&client]]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        r.reload(&[vec![&client]]);
        assert_eq!(*rx.borrow_and_update(), 2);
    }
}
