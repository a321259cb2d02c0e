//! Reply bodies for [`super::FakeInflux`] that a hostile server sends: a plain body, a huge one
//! generated on the fly (so a 1 GB reply costs the test no memory), and one that never ends.
//! Every byte handed to hyper is counted in `streamed`, so a test can tell how much of a body
//! the client actually took before it hung up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// A body generated while it is sent, instead of [`super::Reply::body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStream {
    /// This many bytes of `x`, announced in `Content-Length`, as fast as the client reads.
    Sized(u64),
    /// No `Content-Length` (chunked) and no end: a chunk of `chunk` bytes every `every`
    /// (`Duration::ZERO`: as fast as the client reads).
    Endless { chunk: usize, every: Duration },
}

/// The response body type of the fake.
pub struct FakeBody {
    kind: Kind,
    streamed: Arc<AtomicU64>,
}

enum Kind {
    Full(Option<Bytes>),
    Sized {
        left: u64,
        block: Bytes,
    },
    Endless {
        block: Bytes,
        every: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// `len` bytes of `x`, shared by every chunk generated from it.
fn block(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

impl FakeBody {
    pub fn full(body: Bytes, streamed: Arc<AtomicU64>) -> Self {
        let kind = Kind::Full((!body.is_empty()).then_some(body));
        FakeBody { kind, streamed }
    }

    pub fn stream(plan: BodyStream, streamed: Arc<AtomicU64>) -> Self {
        let kind = match plan {
            BodyStream::Sized(len) => Kind::Sized {
                left: len,
                block: block(64 * 1024),
            },
            BodyStream::Endless { chunk, every } => Kind::Endless {
                block: block(chunk.max(1)),
                every,
                sleep: None,
            },
        };
        FakeBody { kind, streamed }
    }

    fn count(&self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
        self.streamed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(body) => match body.take() {
                Some(b) => this.count(b),
                None => Poll::Ready(None),
            },
            Kind::Sized { left, block } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(block.len() as u64);
                *left -= n;
                let data = block.slice(..n as usize);
                this.count(data)
            }
            Kind::Endless {
                block,
                every,
                sleep,
            } => {
                if !every.is_zero() {
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*every)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                let data = block.clone();
                this.count(data)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(body) => body.is_none(),
            Kind::Sized { left, .. } => *left == 0,
            Kind::Endless { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Sized { left, .. } => SizeHint::with_exact(*left),
            Kind::Endless { .. } => SizeHint::default(),
        }
    }
}
