//! `lineship_load`: what lineship's load tool and its integration tests share.
//!
//! - [`fake`]: [`fake::FakeInflux`], the one InfluxDB stand-in. The integration tests run it in
//!   record mode (every request kept for assertions, scripted and programmable replies, hostile
//!   bodies); the load tool runs it in count mode as its counting sink (gzip decoded and lines
//!   counted at millions of lines a second, sequence numbers checked, nothing stored).
//! - [`gen`]: [`gen::LineGen`], fast generated line protocol with a unique `seq` per line.
//! - [`seq`] and [`gunzip`]: counting lines and sequence numbers in a body, and libdeflate
//!   gzip in both directions.
//! - [`client`]: a minimal keep-alive HTTP/1.1 client to drive the fake at full speed.
//!
//! This crate does not link the `lineship` crate: a fake that shared code with the daemon could
//! share its bugs. The `lineship-load` binary (`src/bin/lineship-load/`) drives the daemon from
//! the outside, the way an operator would.

pub mod client;
pub mod fake;
pub mod gen;
pub mod gunzip;
pub mod seq;
