//! Serving: the accept loop, one hyper HTTP/1.1 connection task per client, and the routing of
//! a request to its answer (writes go to `write.rs`; `/ping`, `/health` and the rest are
//! answered here). Every request is counted, and recorded in record mode, before its answer goes
//! out, and waiters are woken.

use std::convert::Infallible;
use std::net::TcpListener as StdTcpListener;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::body::FakeBody;
use super::write::{self, BodyError, MAX_BODY_BYTES};
use super::{Mode, Reply, Request, Shared, WRITE_PATH};

pub(super) async fn serve(
    listener: StdTcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("fake influx: listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = {
            let mut state = shared.lock();
            state.connections += 1;
            state.connections
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let close = Arc::new(tokio::sync::Notify::new());
            let close_on = Arc::clone(&close);
            let service = service_fn(move |req| {
                handle(Arc::clone(&shared), connection, Arc::clone(&close_on), req)
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                // The handler signals before returning its reply, and hyper writes the head in
                // the same poll that takes the reply: the head is out (without
                // `Connection: close`) before this disables keep-alive, so the connection
                // closes right after this reply.
                _ = close.notified() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    close: Arc<tokio::sync::Notify>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<FakeBody>, Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let mut request = Request::from_head(&parts, at, connection);
    let body: Result<Bytes, BodyError> = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            Err((413, format!("body larger than {MAX_BODY_BYTES} bytes")))
        }
        Err(e) => Err((400, format!("reading the body failed: {e}"))),
    };

    let mut verdict = None;
    let reply = match (request.method.as_str(), request.path.as_str()) {
        ("POST", WRITE_PATH) => {
            let body_bytes = body.as_ref().map_or(0, Bytes::len);
            {
                let mut state = shared.lock();
                state.writes_in_flight += 1;
                state.max_writes_in_flight = state.max_writes_in_flight.max(state.writes_in_flight);
            }
            let (reply, judged) = write::answer(&shared, &mut request, body);
            verdict = Some((body_bytes, judged));
            let delay = shared.lock().delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            shared.lock().writes_in_flight -= 1;
            reply
        }
        _ => {
            match body {
                Ok(body) if shared.mode == Mode::Record => {
                    request.decoded = body.to_vec();
                    request.body = body.to_vec();
                }
                Ok(_) => {}
                Err((_, error)) => request.decode_error = Some(error),
            }
            match (request.method.as_str(), request.path.as_str()) {
                ("GET" | "HEAD", "/ping") => shared.lock().ping.clone(),
                ("GET" | "HEAD", "/health") => Reply::status(200)
                    .with_header("Content-Type", "application/json; charset=utf-8")
                    .with_body(
                        r#"{"name":"influxdb","message":"ready for queries and writes","status":"pass"}"#,
                    ),
                _ => Reply::influx_error(404, "path not found"),
            }
        }
    };

    request.status = reply.status;
    {
        let mut state = shared.lock();
        state.counters.totals.requests += 1;
        if let Some((body_bytes, judged)) = verdict {
            state.counters.add_write(body_bytes, judged);
        }
        if shared.mode == Mode::Record {
            state.requests.push(request);
        }
    }
    shared.changed.notify_all();
    if reply.close_after {
        close.notify_one();
    }
    Ok(to_response(reply, &shared.streamed))
}

fn to_response(reply: Reply, streamed: &Arc<AtomicU64>) -> hyper::Response<FakeBody> {
    let mut builder = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    for (name, value) in &reply.raw_headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let body = match reply.stream {
        Some(plan) => FakeBody::stream(plan, Arc::clone(streamed)),
        None => FakeBody::full(Bytes::from(reply.body), Arc::clone(streamed)),
    };
    builder.body(body).unwrap_or_else(|e| {
        let text = Bytes::from(format!("bad scripted reply: {e}"));
        let mut response = hyper::Response::new(FakeBody::full(text, Arc::clone(streamed)));
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}
