//! lineship ships InfluxDB line protocol: it reads lines from its inputs, checks every line,
//! batches them, gzips each batch and POSTs it to `/api/v2/write`, retrying with backoff.
//!
//! ```text
//!  UDP  (recv thread, recvmmsg) ─┐
//!  stdin, tail (threads)        ─┼─► queue of Chunks ─────────► batcher thread ─► sender (tokio + reqwest) ─► /api/v2/write
//!                                │   (bounded in chunks and      group by (bucket,   N requests in flight        │  ▲
//!                                    bytes; never one message    precision); seal     retry/backoff, bisect       ▼  │ replay, FIFO
//!                                    per line)                   + gzip               on 400/413                 spool (disk)
//! ```
//!
//! With several outputs (`[outputs.NAME]`) or a sharded one, the batcher hands each sealed
//! batch to every delivery lane it goes to (`lanes.rs`), each lane with its own sender and
//! spool; a batch is compressed once per (bucket, precision, gzip_level), not once per lane.
//!
//! Lines are forwarded byte for byte: the only changes are CRLF → LF and a timestamp appended
//! to lines that have none. Backpressure runs back to front: the sender bounds the bytes it
//! holds, the batcher blocks, the channel fills, and the inputs block.

pub mod app;
pub mod batch;
pub mod batcher;
pub mod cli;
pub mod clock;
pub mod config;
pub mod input;
pub mod lanes;
pub mod line;
pub mod output;
pub mod pipeline;
pub mod precision;
pub mod progress;
pub mod queue;
pub mod reject;
pub mod reload;
pub mod sd_notify;
pub mod service;
pub mod spool;
pub mod state_dir;
pub mod statefile;
pub mod telemetry;
pub mod watchdog;

pub use app::{run, Io, OutputReport, Report};
pub use config::Settings;
