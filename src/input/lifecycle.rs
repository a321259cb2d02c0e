//! One way to start the inputs and one way to stop them.
//!
//! [`open`] binds what must be bound before anything runs (the UDP sockets), so that a bind
//! error ends the run before the pipeline starts. [`Opened::start`] gives every input the same
//! [`Links`] and returns [`Running`]. Adding an input is one module with a `start` taking
//! `&Links`, and one line in [`Opened::start`].
//!
//! Shutdown: cancelling `links.cancel` makes every input stop reading, send what it holds and
//! drop its sender; the batcher ends when the last sender is gone. Inputs that wait for
//! acknowledgements (tail) keep applying them until `links.pipeline_done` is cancelled, then
//! write their last checkpoint. [`Running::join`] waits for every input thread.

use std::io::Read;
use std::net::UdpSocket;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{http, stdin, tail, tcp, udp};
use crate::batch::AckRouter;
use crate::config::Settings;
use crate::queue::ChunkTx;
use crate::reject::DeadLetter;
use crate::telemetry::Stats;

/// Where inputs read from that tests replace.
#[derive(Default)]
pub struct Sources {
    /// What the stdin input reads (the process's stdin when `None`).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Bound UDP sockets, used by the `[[input.udp]]` whose `listen` equals their local address
    /// instead of binding one. `None`: take what systemd socket activation passed
    /// (`LISTEN_FDS`), if anything.
    pub udp_sockets: Option<Vec<UdpSocket>>,
}

/// What every input shares with the rest of the agent.
pub struct Links {
    /// Where checked lines go (cloned by each input thread; see [`crate::queue`]).
    pub chunks: ChunkTx,
    /// Cancelled when shutdown begins: stop reading, send what is held, drop the sender.
    pub cancel: CancellationToken,
    /// Cancelled once no more acknowledgements will come (the sender has finished and the
    /// spool made its last sync).
    pub pipeline_done: CancellationToken,
    /// Acknowledgements of delivered or durably spooled lines, for inputs that wait for them.
    pub acks: Arc<AckRouter>,
    pub dead_letter: Arc<DeadLetter>,
    pub stats: Arc<Stats>,
    /// Changes on SIGHUP (see [`crate::reload`]).
    pub reloads: watch::Receiver<u64>,
}

/// The inputs of a run, bound but not reading yet.
pub struct Opened {
    stdin: Option<Box<dyn Read + Send>>,
    udp: Vec<udp::Opened>,
    tcp: Vec<tcp::Opened>,
    http: Vec<http::Opened>,
}

/// Binds (or claims from systemd) the sockets of every configured input.
pub fn open(settings: &Settings, sources: Sources) -> anyhow::Result<Opened> {
    let inputs = &settings.inputs;
    if inputs.stdin.is_none()
        && inputs.udp.is_empty()
        && inputs.tail.is_empty()
        && inputs.tcp.is_empty()
        && inputs.http.is_empty()
    {
        anyhow::bail!("no input is configured: add an [[input.udp]], [[input.tcp]], [[input.http]] or [[input.tail]] table, or enable [input.stdin] (or pass --stdin)");
    }
    let mut inherited = match sources.udp_sockets {
        Some(socks) => udp::Inherited::new(socks)?,
        None => udp::Inherited::from_env(),
    };
    let udp = inputs
        .udp
        .iter()
        .map(|u| udp::open(u, &mut inherited))
        .collect::<anyhow::Result<Vec<_>>>()?;
    inherited.close_unclaimed();
    let tcp = inputs
        .tcp
        .iter()
        .map(tcp::open)
        .collect::<anyhow::Result<_>>()?;
    let http_inputs = inputs
        .http
        .iter()
        .map(http::open)
        .collect::<anyhow::Result<_>>()?;
    let stdin = inputs
        .stdin
        .as_ref()
        .map(|_| sources.stdin.unwrap_or_else(|| Box::new(std::io::stdin())));
    Ok(Opened {
        stdin,
        udp,
        tcp,
        http: http_inputs,
    })
}

impl Opened {
    /// Starts every input. On error, the inputs already started are cancelled and joined.
    pub async fn start(self, settings: &Settings, links: Links) -> anyhow::Result<Running> {
        let mut running = Running::default();
        let max_line_bytes = settings.agent.max_line_bytes;
        let started: anyhow::Result<()> = async {
            if let (Some(st), Some(reader)) = (&settings.inputs.stdin, self.stdin) {
                running.stdin_done = Some(stdin::start(st, reader, max_line_bytes, &links)?);
            }
            for udp in self.udp {
                let threads = udp
                    .start(max_line_bytes, &links)
                    .context("cannot start a UDP receive thread")?;
                running.threads.extend(threads);
            }
            for tcp in self.tcp {
                let thread = tcp
                    .start(max_line_bytes, &links)
                    .context("cannot start a TCP accept thread")?;
                running.threads.push(thread);
            }
            for (i, http) in self.http.into_iter().enumerate() {
                running.tasks.push(http.start(i, settings, &links)?);
            }
            running.threads.extend(tail::start(settings, &links).await?);
            Ok(())
        }
        .await;
        if let Err(e) = started {
            links.cancel.cancel();
            links.pipeline_done.cancel();
            drop(links);
            running.join().await;
            return Err(e);
        }
        Ok(running)
    }
}

/// The running inputs.
#[derive(Default)]
pub struct Running {
    threads: Vec<JoinHandle<()>>,
    /// Inputs that run on the runtime (HTTP).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Resolves when the stdin input has read everything it will.
    stdin_done: Option<oneshot::Receiver<()>>,
}

impl Running {
    /// Resolves when the inputs have ended the run by themselves: stdin at EOF. Never, without
    /// the stdin input (only a signal ends such a run).
    pub async fn finished(&mut self) {
        match self.stdin_done.as_mut() {
            Some(done) => {
                let _ = done.await;
            }
            None => std::future::pending().await,
        }
    }

    /// Waits for every input thread to end (after `cancel`, and for inputs that wait for
    /// acknowledgements, after `pipeline_done`). The stdin thread is not waited for: it may be
    /// blocked in `read` on a pipe nobody closes, with its sender already dropped.
    pub async fn join(self) {
        for t in self.tasks {
            if t.await.is_err() {
                tracing::error!("an input task panicked");
            }
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let name = t.thread().name().unwrap_or("input").to_owned();
                if t.join().is_err() {
                    tracing::error!(thread = %name, "an input thread panicked");
                }
            }
        })
        .await;
    }
}
