//! Running as a service: what `run` does around the pipeline so that systemd and an operator
//! can trust what lineship says about itself.
//!
//! - [`Service::prepare`] (before the pipeline starts): binds `[telemetry] listen` (a bind
//!   failure is a startup error naming the key) and installs the SIGHUP handler, so a SIGHUP
//!   never kills the process (its default action).
//! - [`Service::ready`] (inputs bound, spool open, pipeline running): serves `/metrics` and
//!   `/health`, handles SIGHUP (see `reload.rs`), sends `READY=1` and starts the watchdog
//!   pinger (see `watchdog.rs`).
//! - [`Service::stopping`] (shutdown begins): `STOPPING=1`, stops the watchdog pings.
//! - Dropping the `Service` stops its tasks (the telemetry endpoint serves until `run` ends,
//!   so a drain can be watched).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::output::Sender;
use crate::reload::Reloader;
use crate::sd_notify::{self, Notifier};
use crate::spool::Spool;
use crate::telemetry::endpoint::{self, Telemetry};
use crate::telemetry::Stats;
use crate::watchdog;

/// Stall limit for `/health` when systemd's watchdog is off.
const HEALTH_STALL_LIMIT: Duration = Duration::from_secs(10);

pub struct Service {
    notifier: Option<Arc<Notifier>>,
    watchdog: Option<Duration>,
    listener: Option<tokio::net::TcpListener>,
    hup: Option<tokio::signal::unix::Signal>,
    pinger: Option<JoinHandle<()>>,
    telemetry: Option<Arc<Telemetry>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Binds what must be bound before READY and reads systemd's environment.
    pub fn prepare(settings: &Settings) -> anyhow::Result<Service> {
        let listener = settings.telemetry_listen.map(endpoint::bind).transpose()?;
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; token_file is read at start only, and a SIGHUP ends the process");
                None
            }
        };
        let watchdog = sd_notify::watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Ok(Service {
            notifier: Notifier::from_env().map(Arc::new),
            watchdog,
            listener,
            hup,
            pinger: None,
            telemetry: None,
            tasks: Vec::new(),
        })
    }

    /// The pipeline is up: serve telemetry, handle SIGHUP, tell systemd, feed the watchdog.
    pub fn ready(
        &mut self,
        settings: &Settings,
        stats: &Arc<Stats>,
        spool: &Arc<Spool>,
        sender: &Arc<Sender>,
        reloader: &Arc<Reloader>,
    ) {
        if let Some(listener) = self.listener.take() {
            let stall_limit = self
                .watchdog
                .map_or(HEALTH_STALL_LIMIT, watchdog::stall_limit);
            let telemetry = Arc::new(Telemetry::new(stats.clone(), spool.clone(), stall_limit));
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "telemetry endpoint listening: /metrics and /health");
            }
            self.tasks
                .push(endpoint::spawn(listener, telemetry.clone()));
            self.telemetry = Some(telemetry);
        }
        if let Some(mut hup) = self.hup.take() {
            let (reloader, sender) = (reloader.clone(), sender.clone());
            self.tasks.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    reloader.reload(sender.client());
                }
            }));
        }
        sd_notify::notify(
            self.notifier.as_deref(),
            &format!(
                "READY=1\nSTATUS=delivering to {}",
                settings.output.urls_text()
            ),
        );
        if let (Some(n), Some(interval)) = (&self.notifier, self.watchdog) {
            tracing::debug!(
                ?interval,
                "systemd watchdog enabled; pinging while the pipeline makes progress"
            );
            self.pinger = Some(tokio::spawn(watchdog::run_pinger(
                n.clone(),
                interval,
                stats.progress.clone(),
            )));
        }
    }

    /// Updates the one-line status `systemctl status` shows (the worst state first).
    pub fn status(&self, stats: &Stats) {
        if self.notifier.is_none() {
            return;
        }
        let healthy = stats.health.lock().unwrap().ok;
        let (down, total) = {
            let servers = stats.servers.lock().unwrap();
            let down = servers.iter().filter(|s| s.down.load(Relaxed)).count();
            (down, servers.len())
        };
        sd_notify::notify(
            self.notifier.as_deref(),
            &format!(
                "STATUS={}: {} lines in, {} delivered, {} invalid; spool {} lines",
                state_word(healthy, down, total),
                stats.lines_received(),
                stats.lines_delivered.load(Relaxed),
                stats.lines_invalid(),
                stats.spool.lines.load(Relaxed),
            ),
        );
    }

    /// Shutdown begins: tell systemd (which stops enforcing the watchdog and starts
    /// `TimeoutStopSec`), stop pinging, and have `/health` say `stopping`.
    pub fn stopping(&mut self) {
        if let Some(p) = self.pinger.take() {
            p.abort();
        }
        if let Some(t) = &self.telemetry {
            t.set_stopping();
        }
        sd_notify::notify(
            self.notifier.as_deref(),
            "STOPPING=1\nSTATUS=draining: delivering what is left, then spooling the rest",
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(p) = self.pinger.take() {
            p.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// What the status line leads with: whether the output delivers, and how many of its URLs
/// are out of rotation when some are.
fn state_word(healthy: bool, down: usize, total: usize) -> String {
    match (healthy, down) {
        (false, _) => "output failing".to_owned(),
        (true, 0) => "delivering".to_owned(),
        (true, d) => format!("delivering ({d} of {total} URLs out of rotation)"),
    }
}

#[cfg(test)]
mod tests {
    use super::state_word;

    #[test]
    fn the_status_line_leads_with_the_worst_state() {
        assert_eq!(state_word(true, 0, 1), "delivering");
        assert_eq!(state_word(false, 1, 1), "output failing");
        assert_eq!(
            state_word(true, 1, 3),
            "delivering (1 of 3 URLs out of rotation)"
        );
        assert_eq!(state_word(false, 3, 3), "output failing");
    }
}
