//! Pure batching: chunks of checked lines in, sealed batches out, plus the gzip step.
//!
//! - This file: the types that travel — [`Dest`], [`Chunk`], [`RawBatch`], [`Batch`] and its
//!   [`Encoding`].
//! - `builder.rs`: [`Builder`] and its [`Limits`], which seal chunks into batches (the
//!   invariants are stated and property-tested there).
//! - `encoder.rs`: [`Encoder`] (gzip) and [`decode`].
//! - `isal.rs`: gzip level 1 through ISA-L where the host has it ([`GzipEngine`]).
//! - `ack.rs`: [`Ack`] tokens and the [`AckRouter`] that hands them back to their inputs.
//! - `lines.rs`: whole-line prefixes of a body and [`split_lines`].
//! - `pool.rs`: [`CompressPool`], sealed batches compressed on several threads and handed
//!   back in the order they were sealed.

use std::sync::Arc;

use bytes::Bytes;

use crate::line::Precision;

mod ack;
mod builder;
mod encoder;
pub mod isal;
mod lines;
pub mod pool;

pub use ack::{Ack, AckRouter, Fate};
pub use builder::{Builder, Limits};
pub use encoder::{decode, select_engine, Encoder};
pub use isal::GzipEngine;
pub use lines::{split_lines, Lines};
pub use pool::{CompressPool, Encoded, Want};

/// Where a batch goes: one bucket at one precision, to a set of outputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    /// Empty: each output's own `bucket` (resolved when the batch is sealed).
    pub bucket: Arc<str>,
    pub precision: Precision,
    /// From an input: the outputs its lines go to (a bit per output). In the batcher: the
    /// delivery lanes a batch goes to (a bit per lane). Not stored in the spool.
    pub route: u64,
}

impl Dest {
    /// To every output.
    pub fn new(bucket: &str, precision: Precision) -> Self {
        Dest::routed(bucket, precision, u64::MAX)
    }

    pub fn routed(bucket: &str, precision: Precision, route: u64) -> Self {
        Dest {
            bucket: Arc::from(bucket),
            precision,
            route,
        }
    }
}

/// One channel message: many complete, checked, `\n`-terminated lines for one destination.
#[derive(Debug)]
pub struct Chunk {
    pub dest: Dest,
    pub data: Vec<u8>,
    pub lines: u32,
    pub ack: Option<Ack>,
}

/// A sealed, not yet encoded batch.
#[derive(Debug)]
pub struct RawBatch {
    pub dest: Dest,
    pub data: Vec<u8>,
    pub lines: u32,
    pub acks: Vec<Ack>,
}

/// How a body is encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// A sealed, encoded batch ready to send. `body` is cheap to clone for retries.
#[derive(Clone, Debug)]
pub struct Batch {
    pub dest: Dest,
    pub body: Bytes,
    pub encoding: Encoding,
    pub lines: u32,
    /// Uncompressed size.
    pub raw_len: usize,
    pub acks: Vec<Ack>,
}
