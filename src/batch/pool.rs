//! [`CompressPool`]: sealed batches compressed on several threads, handed back in the order
//! they were sealed, so a destination's batches (and a lane's spool) keep their order.
//!
//! The batcher submits each sealed batch with the encodings its lanes need (one per distinct
//! bucket and gzip level, see `batcher.rs`); [`CompressPool::ready`] returns finished batches
//! strictly by submission number, holding back any that finished early.
//!
//! The submitting thread is one of the pool's `threads`: it starts `threads - 1` workers, and
//! encodes a batch itself when each worker already has [`QUEUED_PER_WORKER`] waiting or in
//! hand. So `threads` compressing threads use `threads` cores, not `threads + 1` (the batcher
//! would otherwise compete with its own workers for the cores while it builds the next batch),
//! and a worker always finds its next batch ready. At most [`OUT_PER_THREAD`] × `threads`
//! batches are out at once (submitted, not yet returned by `ready`): [`CompressPool::submit`]
//! waits for a finished one past that, so memory stays bounded even when a worker stalls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Encoder, Encoding, RawBatch};

/// One encoding a batch needs: the gzip level, and what the caller wants back with it (the
/// lanes and bucket it is for).
#[derive(Debug, Clone)]
pub struct Want<T> {
    pub level: u32,
    pub tag: T,
}

/// A batch with its encoded bodies, one per [`Want`], in the order asked. `raw.data` is
/// empty when its bytes became the one body (no compression, one encoding).
#[derive(Debug)]
pub struct Encoded<T> {
    pub raw: RawBatch,
    /// Uncompressed size.
    pub raw_len: usize,
    pub bodies: Vec<(T, Bytes, Encoding)>,
}

struct Job<T> {
    seq: u64,
    raw: RawBatch,
    wants: Vec<Want<T>>,
}

/// A finished batch as a worker sends it (see [`CompressPool::finished`]).
pub struct Done<T> {
    seq: u64,
    encoded: Encoded<T>,
}

/// Encodes `raw` for each of `wants` with `encoders` (one per level, made on first use).
pub fn encode_all<T>(
    encoders: &mut Vec<Option<Encoder>>,
    mut raw: RawBatch,
    mut wants: Vec<Want<T>>,
) -> Encoded<T> {
    let raw_len = raw.data.len();
    // One body, uncompressed: the batch's bytes themselves, not a copy.
    if wants.len() == 1 && wants[0].level == 0 {
        let w = wants.pop().expect("one want");
        let body = Bytes::from(std::mem::take(&mut raw.data));
        return Encoded {
            raw,
            raw_len,
            bodies: vec![(w.tag, body, Encoding::Identity)],
        };
    }
    let mut bodies = Vec::with_capacity(wants.len());
    for w in wants {
        let i = w.level as usize;
        if encoders.len() <= i {
            encoders.resize_with(i + 1, || None);
        }
        let enc = encoders[i].get_or_insert_with(|| Encoder::new(w.level));
        let (body, encoding) = enc.encode_slice(&raw.data);
        bodies.push((w.tag, body, encoding));
    }
    Encoded {
        raw,
        raw_len,
        bodies,
    }
}

/// Batches a worker may have waiting or in hand before the submitting thread encodes one
/// itself.
pub const QUEUED_PER_WORKER: u64 = 2;
/// Batches out per compressing thread before [`CompressPool::submit`] waits.
pub const OUT_PER_THREAD: u64 = 2;

pub struct CompressPool<T> {
    jobs: Option<Sender<Job<T>>>,
    done: Receiver<Done<T>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next_seq: u64,
    next_out: u64,
    /// Finished early: waiting for an earlier one.
    early: BTreeMap<u64, Encoded<T>>,
    max_out: u64,
    /// Batches sent to the workers and not yet received back from them.
    at_workers: u64,
    /// The submitting thread's own encoders.
    encoders: Vec<Option<Encoder>>,
}

impl<T: Send + 'static> CompressPool<T> {
    /// A pool of `threads` compressing threads (at least 2): this one and `threads - 1`
    /// workers.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let threads_n = threads.max(2);
        let workers = threads_n - 1;
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Job<T>>();
        let (done_tx, done) = crossbeam_channel::unbounded::<Done<T>>();
        let job_rx = Arc::new(job_rx);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("lineship-gzip-{i}"))
                    .spawn(move || {
                        let mut encoders = Vec::new();
                        for job in rx.iter() {
                            let encoded = encode_all(&mut encoders, job.raw, job.wants);
                            if tx
                                .send(Done {
                                    seq: job.seq,
                                    encoded,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                    })?,
            );
        }
        Ok(CompressPool {
            jobs: Some(jobs),
            done,
            threads: handles,
            next_seq: 0,
            next_out: 0,
            early: BTreeMap::new(),
            max_out: OUT_PER_THREAD * threads_n as u64,
            at_workers: 0,
            encoders: Vec::new(),
        })
    }

    /// Batches submitted and not yet returned by [`CompressPool::ready`].
    pub fn outstanding(&self) -> u64 {
        self.next_seq - self.next_out
    }

    /// Hands a batch to a worker, or encodes it here when every worker has
    /// [`QUEUED_PER_WORKER`] already. With the pool full, first waits for a finished batch
    /// (calling `beat` every `every` while it waits), which [`CompressPool::ready`] returns.
    pub fn submit(
        &mut self,
        raw: RawBatch,
        wants: Vec<Want<T>>,
        every: Duration,
        beat: &mut dyn FnMut(),
    ) {
        while self.next_seq - self.next_out >= self.max_out
            && self.early.len() as u64 + self.next_out < self.next_seq
        {
            if !self.take_one(every, beat) {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.collect();
        match &self.jobs {
            Some(j) if self.at_workers < QUEUED_PER_WORKER * self.threads.len() as u64 => {
                self.at_workers += 1;
                // The workers end only when `jobs` is dropped, so this cannot fail.
                let _ = j.send(Job { seq, raw, wants });
            }
            _ => {
                let encoded = encode_all(&mut self.encoders, raw, wants);
                self.early.insert(seq, encoded);
            }
        }
    }

    /// Takes every batch the workers have finished, without waiting.
    fn collect(&mut self) {
        while let Ok(d) = self.done.try_recv() {
            self.accept(d);
        }
    }

    /// Waits for one finished batch; false if the workers are gone.
    fn take_one(&mut self, every: Duration, beat: &mut dyn FnMut()) -> bool {
        loop {
            match self.done.recv_timeout(every) {
                Ok(d) => {
                    self.accept(d);
                    return true;
                }
                Err(RecvTimeoutError::Timeout) => beat(),
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// The receiver to select on: a message there means [`CompressPool::ready`] may return
    /// more (call [`CompressPool::accept`] with it first).
    pub fn finished(&self) -> &Receiver<Done<T>> {
        &self.done
    }

    /// Takes a message received from [`CompressPool::finished`].
    pub fn accept(&mut self, d: Done<T>) {
        self.at_workers -= 1;
        self.early.insert(d.seq, d.encoded);
    }

    /// Finished batches in submission order, as far as they are contiguous.
    pub fn ready(&mut self) -> Vec<Encoded<T>> {
        self.collect();
        let mut out = Vec::new();
        while let Some(e) = self.early.remove(&self.next_out) {
            out.push(e);
            self.next_out += 1;
        }
        out
    }

    /// Waits for every submitted batch and returns the rest in order.
    pub fn finish(&mut self, every: Duration, beat: &mut dyn FnMut()) -> Vec<Encoded<T>> {
        while self.early.len() as u64 + self.next_out < self.next_seq {
            if !self.take_one(every, beat) {
                break;
            }
        }
        self.ready()
    }
}

impl<T> Drop for CompressPool<T> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{decode, Batch, Dest};
    use crate::line::Precision;

    fn raw(i: usize, len: usize) -> RawBatch {
        let mut data = Vec::new();
        while data.len() < len {
            data.extend_from_slice(format!("m,b={i} v={}i {i}\n", data.len()).as_bytes());
        }
        RawBatch {
            dest: Dest::new("b", Precision::Ns),
            lines: data.iter().filter(|&&c| c == b'\n').count() as u32,
            data,
            acks: vec![],
        }
    }

    #[test]
    fn batches_come_back_in_the_order_they_were_submitted_whatever_finishes_first() {
        let mut pool = CompressPool::start(3).unwrap();
        let mut got = Vec::new();
        let mut beat = || {};
        for i in 0..200 {
            // Big and small batches mixed, so later ones often finish first.
            let len = if i % 7 == 0 { 400_000 } else { 300 };
            let wants = vec![
                Want {
                    level: 1,
                    tag: (i, 1),
                },
                Want {
                    level: 0,
                    tag: (i, 0),
                },
            ];
            pool.submit(raw(i, len), wants, Duration::from_secs(1), &mut beat);
            assert!(
                pool.outstanding() <= 6 + 1,
                "bounded: {}",
                pool.outstanding()
            );
            got.extend(pool.ready());
        }
        got.extend(pool.finish(Duration::from_secs(1), &mut beat));
        assert_eq!(got.len(), 200);
        for (i, e) in got.iter().enumerate() {
            let want = raw(i, if i % 7 == 0 { 400_000 } else { 300 }).data;
            assert_eq!(e.raw.data, want);
            assert_eq!(e.raw_len, want.len());
            assert_eq!(e.bodies.len(), 2);
            for (tag, body, encoding) in &e.bodies {
                assert_eq!(tag.0, i);
                let b = Batch {
                    dest: e.raw.dest.clone(),
                    body: body.clone(),
                    encoding: *encoding,
                    lines: e.raw.lines,
                    raw_len: e.raw_len,
                    acks: vec![],
                };
                assert_eq!(decode(&b).unwrap(), want, "byte for byte");
            }
        }
    }

    #[test]
    fn with_one_worker_busy_the_submitting_thread_compresses_and_order_is_kept() {
        let mut pool = CompressPool::start(2).unwrap();
        assert_eq!(pool.threads.len(), 1, "one worker");
        let mut got = Vec::new();
        let mut beat = || {};
        let mut here = 0;
        for i in 0..60 {
            // A big batch keeps the worker busy while the small ones after it arrive.
            let len = if i % 10 == 0 { 2_000_000 } else { 500 };
            let want = vec![Want { level: 1, tag: i }];
            pool.submit(raw(i, len), want, Duration::from_secs(1), &mut beat);
            // A batch handed to the worker comes back through `done`, which only `ready`
            // reads from here on; one finished already was encoded on this thread.
            if pool.early.contains_key(&(i as u64)) {
                here += 1;
            }
            assert!(pool.at_workers <= QUEUED_PER_WORKER, "{}", pool.at_workers);
            assert!(pool.outstanding() <= OUT_PER_THREAD * 2 + 1);
            got.extend(pool.ready());
        }
        got.extend(pool.finish(Duration::from_secs(1), &mut beat));
        assert!(here > 0, "the submitting thread never compressed a batch");
        assert_eq!(pool.at_workers, 0);
        let tags: Vec<usize> = got.iter().map(|e| e.bodies[0].0).collect();
        assert_eq!(tags, (0..60).collect::<Vec<_>>());
        for (i, e) in got.iter().enumerate() {
            let b = Batch {
                dest: e.raw.dest.clone(),
                body: e.bodies[0].1.clone(),
                encoding: e.bodies[0].2,
                lines: e.raw.lines,
                raw_len: e.raw_len,
                acks: vec![],
            };
            let len = if i % 10 == 0 { 2_000_000 } else { 500 };
            assert_eq!(decode(&b).unwrap(), raw(i, len).data);
        }
    }
}

#[cfg(test)]
mod identity {
    use super::*;
    use crate::batch::Dest;
    use crate::line::Precision;

    #[test]
    fn one_uncompressed_body_is_the_batch_itself_and_two_are_copies() {
        let raw = || RawBatch {
            dest: Dest::new("b", Precision::Ns),
            data: b"m v=1i 1\n".to_vec(),
            lines: 1,
            acks: vec![],
        };
        let r = raw();
        let ptr = r.data.as_ptr();
        let e = encode_all(&mut Vec::new(), r, vec![Want { level: 0, tag: () }]);
        assert_eq!(e.bodies[0].1.as_ptr(), ptr, "no copy");
        assert_eq!((e.raw_len, &e.bodies[0].1[..]), (9, &b"m v=1i 1\n"[..]));
        let e = encode_all(
            &mut Vec::new(),
            raw(),
            vec![Want { level: 0, tag: 0 }, Want { level: 1, tag: 1 }],
        );
        assert_eq!(&e.bodies[0].1[..], b"m v=1i 1\n");
        assert_eq!(e.bodies[1].2, Encoding::Gzip);
        assert_eq!(e.raw_len, 9);
    }
}
