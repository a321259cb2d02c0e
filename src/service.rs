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
use crate::pipeline::Pipeline;
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
        pipeline: &Pipeline,
        reloader: &Arc<Reloader>,
    ) {
        let outputs = settings.outputs.len();
        let spools: Vec<Vec<Arc<Spool>>> = (0..outputs).map(|i| pipeline.spools_of(i)).collect();
        let senders: Vec<Vec<Arc<Sender>>> = (0..outputs).map(|i| pipeline.senders_of(i)).collect();
        if let Some(listener) = self.listener.take() {
            let stall_limit = self
                .watchdog
                .map_or(HEALTH_STALL_LIMIT, watchdog::stall_limit);
            let telemetry = Arc::new(Telemetry::new(stats.clone(), spools, stall_limit));
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "telemetry endpoint listening: /metrics and /health");
            }
            self.tasks
                .push(endpoint::spawn(listener, telemetry.clone()));
            self.telemetry = Some(telemetry);
        }
        if let Some(mut hup) = self.hup.take() {
            let reloader = reloader.clone();
            self.tasks.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let clients: Vec<Vec<_>> = senders
                        .iter()
                        .map(|s| s.iter().map(|s| s.client()).collect())
                        .collect();
                    reloader.reload(&clients);
                }
            }));
        }
        sd_notify::notify(
            self.notifier.as_deref(),
            &format!(
                "READY=1\nSTATUS=delivering to {}",
                settings
                    .outputs
                    .iter()
                    .map(|o| o.urls_text())
                    .collect::<Vec<_>>()
                    .join("; ")
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
        let outputs = stats.outputs();
        let states: Vec<OutputState> = outputs
            .iter()
            .map(|o| {
                let servers = o.servers.lock().unwrap();
                OutputState {
                    name: &o.name,
                    healthy: o.health.lock().unwrap().ok,
                    down: servers.iter().filter(|s| s.down.load(Relaxed)).count(),
                    total: servers.len(),
                }
            })
            .collect();
        sd_notify::notify(
            self.notifier.as_deref(),
            &format!(
                "STATUS={}: {} lines in, {} delivered, {} invalid; spool {} lines",
                worst_state(&states),
                stats.lines_received(),
                stats.outputs_sum(|o| o.lines_delivered.load(Relaxed)),
                stats.lines_invalid(),
                stats.outputs_sum(|o| o.spool_sum(|s| &s.lines)),
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

/// One output, as the status line sees it.
struct OutputState<'a> {
    name: &'a str,
    healthy: bool,
    /// URLs out of rotation, of `total`.
    down: usize,
    total: usize,
}

/// What the status line leads with: the worst output's state (a failing one, else the one
/// with the most URLs out of rotation), named when there are several outputs.
fn worst_state(outputs: &[OutputState]) -> String {
    let Some(w) = outputs
        .iter()
        .min_by_key(|o| (o.healthy, std::cmp::Reverse(o.down)))
    else {
        return "delivering".to_owned();
    };
    let named = outputs.len() > 1;
    match (w.healthy, w.down, named) {
        (false, _, false) => "output failing".to_owned(),
        (false, _, true) => format!("output {} failing", w.name),
        (true, 0, _) => "delivering".to_owned(),
        (true, d, false) => format!("delivering ({d} of {} URLs out of rotation)", w.total),
        (true, d, true) => format!(
            "delivering ({d} of {} URLs of output {} out of rotation)",
            w.total, w.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{worst_state, OutputState};

    fn state_word(healthy: bool, down: usize, total: usize) -> String {
        worst_state(&[OutputState {
            name: "default",
            healthy,
            down,
            total,
        }])
    }

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

    #[test]
    fn with_several_outputs_the_worst_is_named() {
        let o = |name, healthy, down| OutputState {
            name,
            healthy,
            down,
            total: 3,
        };
        let all = [o("default", true, 1), o("lake", false, 3), o("b", true, 2)];
        assert_eq!(worst_state(&all), "output lake failing");
        let all = [o("default", true, 1), o("b", true, 2)];
        assert_eq!(
            worst_state(&all),
            "delivering (2 of 3 URLs of output b out of rotation)"
        );
        assert_eq!(
            worst_state(&[o("default", true, 0), o("b", true, 0)]),
            "delivering"
        );
    }
}
