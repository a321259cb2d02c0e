//! Spool tests, one concept per file: framing (`record.rs`), replay and acks (`replay.rs`),
//! the size cap (`full.rs`), a model-based property test with crashes and damage
//! (`model.rs`), and the streaming scan (`streaming.rs`). This file: the helpers they share.

mod full;
mod model;
mod record;
mod replay;
mod streaming;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::cursor::CURSOR;
use super::record::{record_crc, MAX_PAYLOAD, META_MAX as META_FIXED, VERSION};
use super::*;
use crate::batch::{Ack, Batch, Dest, Encoding};
use crate::config::{FsyncPolicy, SpoolSettings, WhenFull};
use crate::line::Precision;

fn settings(max_size: u64, when_full: WhenFull, fsync: FsyncPolicy) -> SpoolSettings {
    SpoolSettings {
        max_size,
        when_full,
        fsync,
        fsync_interval: Duration::from_millis(500),
    }
}

fn batch(tag: u32, body_len: usize) -> Batch {
    let mut body = format!("m,t={tag} v=1i\n").into_bytes();
    body.resize(body_len.max(body.len()), b'x');
    Batch {
        dest: Dest::new(&format!("bucket{}", tag % 3), Precision::Ms),
        body: Bytes::from(body),
        encoding: if tag % 2 == 0 {
            Encoding::Gzip
        } else {
            Encoding::Identity
        },
        lines: tag % 7 + 1,
        raw_len: body_len * 3,
        acks: vec![Ack {
            input: 1,
            file: tag as u64,
            offset: 9,
        }],
    }
}

fn same(a: &Batch, b: &Batch) -> bool {
    a.dest == b.dest
        && a.body == b.body
        && a.encoding == b.encoding
        && a.lines == b.lines
        && a.raw_len == b.raw_len
}

fn open(dir: &Path, s: &SpoolSettings) -> Spool {
    Spool::open(dir, s, Arc::new(SpoolStats::default())).unwrap()
}
