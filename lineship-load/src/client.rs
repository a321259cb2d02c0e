//! [`RawClient`]: one keep-alive connection speaking just enough HTTP/1.1 to drive the fake
//! InfluxDB as fast as it can answer (the self-test's load, and the fake's own tests). It is not
//! a general client: it expects `Content-Length` replies and no `Connection: close`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{ensure, Context, Result};
use memchr::memmem;

/// The write path with the query lineship sends.
pub const BENCH_WRITE_PATH: &str = "/api/v2/write?org=bench&bucket=bench&precision=ns";

/// One keep-alive connection speaking just enough HTTP/1.1 to drive the sink.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and returns the response status.
    pub fn request(&mut self, method: &str, path: &str, gzip: bool, body: &[u8]) -> Result<u16> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sink\r\nContent-Length: {}\r\n",
            body.len()
        );
        if gzip {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        let end = loop {
            if let Some(p) = memmem::find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("response status")?;
        let body_len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + body_len {
            self.fill()?;
        }
        self.buf.drain(..end + body_len);
        Ok(status)
    }

    fn fill(&mut self) -> Result<()> {
        let mut tmp = [0u8; 4096];
        let n = self.stream.read(&mut tmp)?;
        ensure!(n > 0, "sink closed the connection");
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}
