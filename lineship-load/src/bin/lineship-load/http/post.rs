//! The HTTP clients of `http`: `clients` threads, each with one keep-alive connection
//! ([`lineship_load::client::RawClient`]), take the next pre-gzipped body and POST it until it is
//! answered 2xx. A 503 is retried after a short sleep (and counted), a broken connection is
//! reopened and the body resent (counted), any other status gives the body up (counted by
//! status). Everything stops at the deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lineship_load::client::RawClient;
use serde::Serialize;

/// The write path the clients POST to (InfluxDB 2.x; lineship and vmagent both serve it).
pub const CLIENT_WRITE_PATH: &str = "/api/v2/write?bucket=bench&precision=ns";

/// One request body: gzip of `lines` whole lines.
pub struct Body {
    pub gz: Vec<u8>,
    pub lines: u64,
}

/// What the clients saw, summed over them.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct PostStats {
    pub requests: u64,
    /// Lines in bodies answered 2xx.
    pub lines_acked: u64,
    pub bodies_acked: u64,
    pub status_503: u64,
    /// Connections reopened after the server closed one (or it broke).
    pub reconnects: u64,
    /// Bodies given up: another status, `(status, count)`; or the deadline passed.
    pub other_statuses: Vec<(u16, u64)>,
    pub bodies_given_up: u64,
    /// From the first request to the last 2xx answer.
    pub acked_s: f64,
}

impl PostStats {
    pub fn merge(&mut self, o: &PostStats) {
        self.requests += o.requests;
        self.lines_acked += o.lines_acked;
        self.bodies_acked += o.bodies_acked;
        self.status_503 += o.status_503;
        self.reconnects += o.reconnects;
        self.bodies_given_up += o.bodies_given_up;
        self.acked_s = self.acked_s.max(o.acked_s);
        for &(status, n) in &o.other_statuses {
            add_status(&mut self.other_statuses, status, n);
        }
        self.other_statuses.sort_unstable();
    }
}

fn add_status(v: &mut Vec<(u16, u64)>, status: u16, n: u64) {
    match v.iter_mut().find(|(s, _)| *s == status) {
        Some((_, c)) => *c += n,
        None => v.push((status, n)),
    }
}

/// POSTs every body to `addr` from `clients` threads; returns when all are answered, given up,
/// or `deadline` passed. The returned instant is the start, just before the first connection.
pub fn post_all(
    addr: SocketAddr,
    bodies: &[Body],
    clients: usize,
    retry: Duration,
    deadline: Instant,
) -> Result<(Instant, PostStats)> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let per_client: Vec<PostStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|i| {
                let next = &next;
                std::thread::Builder::new()
                    .name(format!("client{i}"))
                    .spawn_scoped(s, move || client(addr, bodies, next, retry, t0, deadline))
                    .context("spawning a client thread")
            })
            .collect::<Result<_>>()?;
        Ok::<_, anyhow::Error>(
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread panicked"))
                .collect(),
        )
    })?;
    let mut total = PostStats::default();
    for p in &per_client {
        total.merge(p);
    }
    Ok((t0, total))
}

fn client(
    addr: SocketAddr,
    bodies: &[Body],
    next: &AtomicUsize,
    retry: Duration,
    t0: Instant,
    deadline: Instant,
) -> PostStats {
    let mut st = PostStats::default();
    let mut conn: Option<RawClient> = None;
    loop {
        let i = next.fetch_add(1, Relaxed);
        let Some(body) = bodies.get(i) else {
            return st;
        };
        loop {
            if Instant::now() >= deadline {
                st.bodies_given_up += 1;
                break;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match RawClient::connect(addr) {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        st.reconnects += 1;
                        std::thread::sleep(retry);
                        continue;
                    }
                },
            };
            st.requests += 1;
            match c.request("POST", CLIENT_WRITE_PATH, true, &body.gz) {
                Ok(s) if (200..300).contains(&s) => {
                    st.lines_acked += body.lines;
                    st.bodies_acked += 1;
                    st.acked_s = t0.elapsed().as_secs_f64();
                    break;
                }
                Ok(503) => {
                    st.status_503 += 1;
                    std::thread::sleep(retry);
                }
                Ok(s) => {
                    add_status(&mut st.other_statuses, s, 1);
                    st.bodies_given_up += 1;
                    break;
                }
                Err(_) => {
                    // The server closed the connection (or it broke): reopen and resend.
                    conn = None;
                    st.reconnects += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lineship_load::fake::{FakeInflux, Mode, Reply};

    #[test]
    fn merge_adds_up() {
        let mut a = PostStats {
            requests: 3,
            lines_acked: 10,
            bodies_acked: 2,
            status_503: 1,
            other_statuses: vec![(400, 1)],
            bodies_given_up: 1,
            acked_s: 2.0,
            ..PostStats::default()
        };
        a.merge(&PostStats {
            requests: 2,
            lines_acked: 5,
            bodies_acked: 1,
            reconnects: 1,
            other_statuses: vec![(413, 1), (400, 2)],
            bodies_given_up: 3,
            acked_s: 1.5,
            ..PostStats::default()
        });
        assert_eq!(a.requests, 5);
        assert_eq!(a.lines_acked, 15);
        assert_eq!(a.bodies_acked, 3);
        assert_eq!(a.reconnects, 1);
        assert_eq!(a.other_statuses, vec![(400, 3), (413, 1)]);
        assert_eq!(a.bodies_given_up, 4);
        assert_eq!(a.acked_s, 2.0);
    }

    #[test]
    fn posts_every_body_and_retries_503() {
        // Two 503s first, then 204s: every body arrives once, the 503s are counted.
        let fake = FakeInflux::builder()
            .mode(Mode::Count { check_seq: true })
            .script(vec![
                Reply::influx_error(503, "busy"),
                Reply::influx_error(503, "busy"),
            ])
            .default_reply(Reply::no_content())
            .start()
            .unwrap();
        let data = {
            let mut d = Vec::new();
            lineship_load::gen::LineGen::new(&lineship_load::gen::GenOpts::fixed_example(0))
                .fill_lines(&mut d, 1000);
            d
        };
        let bodies: Vec<Body> = crate::listen::chunks_of_lines(&data, 100)
            .into_iter()
            .map(|(b, lines)| Body {
                gz: lineship_load::gunzip::gzip_level(1, b),
                lines,
            })
            .collect();
        let (_, st) = post_all(
            fake.addr(),
            &bodies,
            3,
            Duration::from_millis(1),
            Instant::now() + Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(st.lines_acked, 1000);
        assert_eq!(st.bodies_acked, 10);
        assert_eq!(st.status_503, 2);
        assert_eq!(st.requests, 12);
        assert_eq!(st.bodies_given_up, 0);
        let c = fake.counts(Some((0, 1000)));
        assert_eq!(c.lines, 1000);
        let seq = c.seq.unwrap();
        assert_eq!((seq.lost, seq.dup), (Some(0), 0));
    }
}
