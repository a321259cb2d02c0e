//! What an HTTP request asks for, before its body is read: the endpoint, the destination
//! (bucket and precision) and the client's token; and the answers in InfluxDB's JSON shapes.
//! Pure functions of the method, path, query and headers.

use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::Method;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::line::Precision;

/// The endpoints the listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/v2/write?org=&bucket=&precision=` (InfluxDB 2.x).
    V2Write,
    /// `POST /write?db=&rp=&precision=` (InfluxDB 1.x).
    V1Write,
    /// `POST /api/v3/write_lp?db=&precision=` (InfluxDB 3).
    V3Write,
    /// `GET /ping`.
    Ping,
    /// `GET /health`.
    Health,
}

impl Endpoint {
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Endpoint::V2Write | Endpoint::V1Write | Endpoint::V3Write
        )
    }
}

/// A request refused before its body counts: the status and InfluxDB's `{"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(400, "invalid", message)
    }

    /// The JSON body InfluxDB answers errors with.
    pub fn body(&self) -> String {
        serde_json::json!({ "code": self.code, "message": self.message }).to_string()
    }
}

/// The endpoint for `method` and `path`: 404 for an unknown path, 405 for a known path with
/// the wrong method.
pub fn route(method: &Method, path: &str) -> Result<Endpoint, Refusal> {
    let (endpoint, want) = match path {
        "/api/v2/write" => (Endpoint::V2Write, Method::POST),
        "/write" => (Endpoint::V1Write, Method::POST),
        "/api/v3/write_lp" => (Endpoint::V3Write, Method::POST),
        "/ping" => (Endpoint::Ping, Method::GET),
        "/health" => (Endpoint::Health, Method::GET),
        _ => {
            return Err(Refusal::new(
                404,
                "not found",
                format!("no endpoint {path}: lineship accepts writes on /api/v2/write, /write and /api/v3/write_lp"),
            ))
        }
    };
    let head_ok = want == Method::GET && method == Method::HEAD;
    // InfluxDB also answers /ping to HEAD and POST.
    let ping_any = endpoint == Endpoint::Ping && (method == Method::HEAD || method == Method::POST);
    if method != want && !head_ok && !ping_any {
        return Err(Refusal::new(
            405,
            "method not allowed",
            format!("{path} takes {want}, not {method}"),
        ));
    }
    Ok(endpoint)
}

/// Where a write's lines go: the bucket it names (unless the input forces one) and the
/// precision of its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    pub precision: Precision,
}

/// The destination of a write from its query string. `force_bucket` (the input's configured
/// bucket) wins over what the request names; `default_precision` applies when it names none.
pub fn target(
    endpoint: Endpoint,
    query: &str,
    force_bucket: Option<&str>,
    default_precision: Precision,
) -> Result<Target, Refusal> {
    let q = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let (bucket, precision) = match endpoint {
        Endpoint::V2Write => (
            q("bucket").ok_or("bucket"),
            q("precision").map(|p| v2_precision(&p)).transpose()?,
        ),
        Endpoint::V1Write => (
            q("db")
                .map(|db| match q("rp") {
                    Some(rp) => format!("{db}/{rp}"),
                    None => db,
                })
                .ok_or("db"),
            q("precision").map(|p| v1_precision(&p)).transpose()?,
        ),
        Endpoint::V3Write => (
            q("db").ok_or("db"),
            Some(v3_precision(q("precision").as_deref())?),
        ),
        Endpoint::Ping | Endpoint::Health => unreachable!("not a write"),
    };
    let bucket = match (force_bucket, bucket) {
        (Some(forced), _) => forced.to_owned(),
        (None, Ok(b)) => b,
        (None, Err(param)) => {
            return Err(Refusal::invalid(format!(
                "the request names no bucket: add the {param}= query parameter"
            )))
        }
    };
    Ok(Target {
        bucket,
        precision: precision.unwrap_or(default_precision),
    })
}

fn unknown_precision(p: &str, expected: &str) -> Refusal {
    Refusal::invalid(format!(
        "unknown precision {p:?}: expected one of {expected}"
    ))
}

fn v2_precision(p: &str) -> Result<Precision, Refusal> {
    p.parse().map_err(|_| unknown_precision(p, "ns, us, ms, s"))
}

fn v1_precision(p: &str) -> Result<Precision, Refusal> {
    Ok(match p {
        "n" | "ns" => Precision::Ns,
        "u" | "us" => Precision::Us,
        "ms" => Precision::Ms,
        "s" => Precision::S,
        _ => return Err(unknown_precision(p, "n, ns, u, us, ms, s")),
    })
}

/// InfluxDB 3 guesses the precision of each timestamp from its size when asked for `auto`
/// (its default). lineship forwards lines unchanged with one precision per batch, so it asks
/// for the precision instead of guessing.
fn v3_precision(p: Option<&str>) -> Result<Precision, Refusal> {
    Ok(match p {
        Some("nanosecond" | "ns") => Precision::Ns,
        Some("microsecond" | "us") => Precision::Us,
        Some("millisecond" | "ms") => Precision::Ms,
        Some("second" | "s") => Precision::S,
        None | Some("auto") => {
            return Err(Refusal::invalid(
                "precision=auto (the default of /api/v3/write_lp) is not supported: lineship forwards lines unchanged, so name the precision of their timestamps (precision=nanosecond, microsecond, millisecond or second)",
            ))
        }
        Some(p) => {
            return Err(unknown_precision(
                p,
                "nanosecond, microsecond, millisecond, second (or ns, us, ms, s)",
            ))
        }
    })
}

/// The token a client presents: `Authorization: Token X`, `Bearer X`, `Basic` with the token
/// as the password, or (InfluxDB 1.x) the `p=` query parameter.
pub fn presented_token(headers: &HeaderMap, query: &str) -> Option<String> {
    if let Some(h) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h, ""));
        let rest = rest.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "token" | "bearer" => Some(rest.to_owned()),
            "basic" => base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned())),
            _ => None,
        };
    }
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "p")
        .map(|(_, v)| v.into_owned())
}

/// Whether `presented` is one of `tokens`, compared in constant time (every token is looked
/// at, and each comparison takes the same time wherever the bytes differ). No tokens
/// configured: every request is allowed.
pub fn authorized(tokens: &[Secret], presented: Option<&str>) -> bool {
    if tokens.is_empty() {
        return true;
    }
    let Some(p) = presented else {
        return false;
    };
    let mut ok = subtle::Choice::from(0);
    for t in tokens {
        let t = t.expose().as_bytes();
        // `ct_eq` on slices of different lengths is false without looking at the bytes; the
        // lengths of the configured tokens are no secret worth a timing channel.
        ok |= t.ct_eq(p.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn routes_name_the_endpoint_or_refuse_with_404_and_405() {
        assert_eq!(route(&Method::POST, "/api/v2/write"), Ok(Endpoint::V2Write));
        assert_eq!(route(&Method::POST, "/write"), Ok(Endpoint::V1Write));
        assert_eq!(
            route(&Method::POST, "/api/v3/write_lp"),
            Ok(Endpoint::V3Write)
        );
        assert_eq!(route(&Method::GET, "/ping"), Ok(Endpoint::Ping));
        assert_eq!(route(&Method::HEAD, "/ping"), Ok(Endpoint::Ping));
        assert_eq!(route(&Method::HEAD, "/health"), Ok(Endpoint::Health));
        assert_eq!(route(&Method::GET, "/nope").unwrap_err().status, 404);
        let r = route(&Method::GET, "/api/v2/write").unwrap_err();
        assert_eq!(r.status, 405);
        assert!(r.body().contains("takes POST"), "{}", r.body());
    }

    fn t(ep: Endpoint, q: &str) -> Result<Target, Refusal> {
        target(ep, q, None, Precision::Ns)
    }

    #[test]
    fn targets_from_every_api_and_their_precisions() {
        let v2 = t(Endpoint::V2Write, "org=o&bucket=b%2Fx&precision=ms").unwrap();
        assert_eq!((v2.bucket.as_str(), v2.precision), ("b/x", Precision::Ms));
        assert_eq!(
            t(Endpoint::V2Write, "bucket=b").unwrap().precision,
            Precision::Ns
        );
        let v1 = t(Endpoint::V1Write, "db=d&rp=r&precision=u").unwrap();
        assert_eq!((v1.bucket.as_str(), v1.precision), ("d/r", Precision::Us));
        assert_eq!(t(Endpoint::V1Write, "db=d&rp=").unwrap().bucket, "d");
        for (p, want) in [
            ("n", Precision::Ns),
            ("ns", Precision::Ns),
            ("u", Precision::Us),
            ("us", Precision::Us),
            ("ms", Precision::Ms),
            ("s", Precision::S),
        ] {
            assert_eq!(
                t(Endpoint::V1Write, &format!("db=d&precision={p}"))
                    .unwrap()
                    .precision,
                want
            );
        }
        for (p, want) in [
            ("nanosecond", Precision::Ns),
            ("microsecond", Precision::Us),
            ("millisecond", Precision::Ms),
            ("second", Precision::S),
            ("ms", Precision::Ms),
        ] {
            let v3 = t(Endpoint::V3Write, &format!("db=d&precision={p}")).unwrap();
            assert_eq!((v3.bucket.as_str(), v3.precision), ("d", want));
        }
        let forced = target(
            Endpoint::V2Write,
            "bucket=asked",
            Some("forced"),
            Precision::S,
        );
        assert_eq!(forced.unwrap().bucket, "forced");
        assert_eq!(
            target(Endpoint::V1Write, "", Some("forced"), Precision::S)
                .unwrap()
                .precision,
            Precision::S,
            "no bucket asked for is fine when one is forced; the input's precision applies"
        );
    }

    #[test]
    fn a_missing_bucket_or_an_unknown_precision_is_400_naming_it() {
        let r = t(Endpoint::V2Write, "org=o").unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.message.contains("bucket="), "{}", r.message);
        assert!(t(Endpoint::V1Write, "rp=r")
            .unwrap_err()
            .message
            .contains("db="));
        let r = t(Endpoint::V2Write, "bucket=b&precision=h").unwrap_err();
        assert!(r.message.contains("\"h\""), "{}", r.message);
        assert!(t(Endpoint::V1Write, "db=d&precision=m").is_err());
        let r = t(Endpoint::V3Write, "db=d").unwrap_err();
        assert!(r.message.contains("precision=auto"), "{}", r.message);
        assert!(t(Endpoint::V3Write, "db=d&precision=fortnight").is_err());
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn tokens_come_from_every_auth_form() {
        assert_eq!(
            presented_token(&headers("Token abc"), ""),
            Some("abc".into())
        );
        assert_eq!(
            presented_token(&headers("Bearer abc"), ""),
            Some("abc".into())
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("user:abc");
        assert_eq!(
            presented_token(&headers(&format!("Basic {basic}")), ""),
            Some("abc".into())
        );
        assert_eq!(
            presented_token(&HeaderMap::new(), "db=d&u=user&p=abc"),
            Some("abc".into())
        );
        assert_eq!(presented_token(&HeaderMap::new(), "db=d"), None);
        assert_eq!(presented_token(&headers("Digest x"), ""), None);
    }

    #[test]
    fn only_a_configured_token_is_authorized() {
        let tokens = vec![Secret::new("one"), Secret::new("two")];
        assert!(authorized(&tokens, Some("two")));
        assert!(!authorized(&tokens, Some("tw")));
        assert!(!authorized(&tokens, Some("twoo")));
        assert!(!authorized(&tokens, None));
        assert!(authorized(&[], None), "no tokens: loopback without auth");
    }
}
