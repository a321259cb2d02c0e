//! [`Reply`]: one answer of the fake InfluxDB, as a script entry, a default or a responder's
//! pick. Besides ordinary answers it can behave like a hostile server: a huge or endless body
//! ([`BodyStream`]), header values that are not UTF-8, or closing the connection after answering
//! without saying so (no `Connection: close`).

use std::sync::Arc;

use super::body::BodyStream;
use super::request::Request;

/// One scripted answer of [`FakeInflux`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Headers whose values need not be UTF-8 (sent after `headers`).
    pub raw_headers: Vec<(String, Vec<u8>)>,
    /// A generated body sent instead of `body`.
    pub stream: Option<BodyStream>,
    /// Close the connection once this reply is sent, without a `Connection: close` header
    /// (the client only learns of it when it tries the connection again).
    pub close_after: bool,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: String::new(),
            headers: Vec::new(),
            raw_headers: Vec::new(),
            stream: None,
            close_after: false,
        }
    }

    /// `204 No Content`, what InfluxDB answers to a good write.
    pub fn no_content() -> Self {
        Self::status(204)
    }

    /// An error shaped like InfluxDB 2.x's: JSON `{"code": ..., "message": ...}`.
    pub fn influx_error(status: u16, message: &str) -> Self {
        let code = match status {
            400 => "invalid",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not found",
            413 => "request too large",
            422 => "unprocessable entity",
            429 => "too many requests",
            503 => "unavailable",
            _ => "internal error",
        };
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        Self::status(status)
            .with_header("Content-Type", "application/json; charset=utf-8")
            .with_body(body)
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_raw_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.raw_headers.push((name.into(), value.into()));
        self
    }

    pub fn with_stream(mut self, stream: BodyStream) -> Self {
        self.stream = Some(stream);
        self
    }

    pub fn closing(mut self) -> Self {
        self.close_after = true;
        self
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A programmable answer: sees the recorded request (with `status == 0`) and picks the reply.
pub type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync + 'static>;
