//! The gzip step: [`Encoder`] compresses sealed batches, [`decode`] turns a body back into its
//! lines.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use bytes::Bytes;

use super::isal::{self, GzipEngine};
use super::{Batch, Encoding, RawBatch};

/// The engine for `gzip_level = 1` that [`Encoder::new`] uses: the process's
/// `agent.gzip_engine`, set once at start-up by [`select_engine`]; `auto` until then.
static ENGINE: AtomicU8 = AtomicU8::new(0);

fn engine_code(e: GzipEngine) -> u8 {
    match e {
        GzipEngine::Auto => 0,
        GzipEngine::Libdeflate => 1,
        GzipEngine::Isal => 2,
    }
}

/// Sets the engine every later [`Encoder::new`] uses and says which one compresses
/// `gzip_level = 1`: `isal` or `libdeflate`. `Isal` without a loadable `libisal.so.2` is an
/// error that names the library and the package.
pub fn select_engine(engine: GzipEngine) -> Result<&'static str, String> {
    let used = resolve(engine, isal::lib().map(|_| ()))?;
    ENGINE.store(engine_code(used), Relaxed);
    Ok(used.as_str())
}

/// The engine `engine` comes to, given whether ISA-L loaded (and why not).
fn resolve(engine: GzipEngine, isal: Result<(), &str>) -> Result<GzipEngine, String> {
    match (engine, isal) {
        (GzipEngine::Libdeflate, _) | (GzipEngine::Auto, Err(_)) => Ok(GzipEngine::Libdeflate),
        (_, Ok(())) => Ok(GzipEngine::Isal),
        (GzipEngine::Isal, Err(e)) => Err(format!(
            "agent.gzip_engine = \"isal\" but {} cannot be loaded ({e}); install it (Debian and Ubuntu: apt-get install libisal2) or set gzip_engine = \"auto\"",
            isal::SONAME
        )),
    }
}

fn selected() -> GzipEngine {
    match ENGINE.load(Relaxed) {
        1 => GzipEngine::Libdeflate,
        2 => GzipEngine::Isal,
        _ => GzipEngine::Auto,
    }
}

/// Compresses sealed batches. One per thread: it owns the compressor state (ISA-L's for
/// level 1 where the host has it, else libdeflate's) and a scratch buffer, so the worst-case
/// output size is not allocated (and page-faulted) per batch.
pub struct Encoder {
    level: u32,
    isal: Option<isal::Gzip>,
    /// libdeflate: every level but ISA-L's, and any batch ISA-L refuses (made on first use
    /// when ISA-L is there).
    deflate: Option<libdeflater::Compressor>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// `level` 0 means identity (no compression); 1..=12 are gzip levels (1 through the
    /// process's [`select_engine`], the others libdeflate's).
    pub fn new(level: u32) -> Self {
        Self::with_engine(level, selected())
    }

    /// As [`Encoder::new`], with `engine` for level 1 (`Isal` falls back to libdeflate when
    /// ISA-L cannot be loaded; [`select_engine`] is where that is refused).
    pub fn with_engine(level: u32, engine: GzipEngine) -> Self {
        let isal = match engine {
            GzipEngine::Libdeflate => None,
            _ if level != 1 => None,
            _ => isal::lib().ok().map(isal::Gzip::new),
        };
        let mut e = Encoder {
            level,
            isal,
            deflate: None,
            scratch: Vec::new(),
        };
        if level > 0 && e.isal.is_none() {
            e.deflate = Some(e.new_deflate());
        }
        e
    }

    /// Which engine gzips this encoder's batches (for tests and the bench).
    pub fn engine(&self) -> &'static str {
        match (&self.isal, self.level) {
            (_, 0) => "identity",
            (Some(_), _) => "isal",
            (None, _) => "libdeflate",
        }
    }

    fn new_deflate(&self) -> libdeflater::Compressor {
        let lvl = libdeflater::CompressionLvl::new(self.level as i32).unwrap_or_default();
        libdeflater::Compressor::new(lvl)
    }

    /// Encodes `data` for several lanes: the body is shared (a `Bytes` clone per lane).
    pub fn encode_slice(&mut self, data: &[u8]) -> (Bytes, Encoding) {
        if self.level == 0 {
            return (Bytes::copy_from_slice(data), Encoding::Identity);
        }
        (Bytes::from(self.gzip(data)), Encoding::Gzip)
    }

    /// Encodes the data of `raw` (the lines are not changed).
    pub fn encode(&mut self, raw: RawBatch) -> Batch {
        let raw_len = raw.data.len();
        let (body, encoding) = if self.level == 0 {
            (Bytes::from(raw.data), Encoding::Identity)
        } else {
            (Bytes::from(self.gzip(&raw.data)), Encoding::Gzip)
        };
        Batch {
            dest: raw.dest,
            body,
            encoding,
            lines: raw.lines,
            raw_len,
            acks: raw.acks,
        }
    }

    fn gzip(&mut self, data: &[u8]) -> Vec<u8> {
        // SAFETY: libdeflate documents a NULL compressor as asking for a bound that holds for
        // every level; it reads nothing else.
        let bound = unsafe {
            libdeflate_sys::libdeflate_gzip_compress_bound(std::ptr::null_mut(), data.len())
        };
        self.scratch.resize(bound, 0);
        if let Some(g) = &mut self.isal {
            if let Some(n) = g.compress(data, &mut self.scratch) {
                return self.scratch[..n].to_vec();
            }
        }
        let c = match &mut self.deflate {
            Some(c) => c,
            None => {
                let c = self.new_deflate();
                self.deflate.insert(c)
            }
        };
        let n = c
            .gzip_compress(data, &mut self.scratch)
            .expect("output buffer sized by gzip_compress_bound");
        self.scratch[..n].to_vec()
    }
}

/// Decodes a batch body back into its lines (used when a batch must be split).
pub fn decode(batch: &Batch) -> std::io::Result<Vec<u8>> {
    match batch.encoding {
        Encoding::Identity => Ok(batch.body.to_vec()),
        Encoding::Gzip => {
            let mut out = vec![0u8; batch.raw_len];
            let n = libdeflater::Decompressor::new()
                .gzip_decompress(&batch.body, &mut out)
                .map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}"))
                })?;
            out.truncate(n);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Dest;
    use crate::line::Precision;

    #[test]
    fn gzip_round_trip_and_identity() {
        let d = Dest::new("b", Precision::Ns);
        let raw = || RawBatch {
            dest: d.clone(),
            data: b"m f=1\nm f=2\n".to_vec(),
            lines: 2,
            acks: vec![],
        };
        let g = Encoder::new(1).encode(raw());
        assert_eq!(g.encoding, Encoding::Gzip);
        assert_eq!(&g.body[..2], &[0x1f, 0x8b]);
        assert_eq!(decode(&g).unwrap(), b"m f=1\nm f=2\n");
        let i = Encoder::new(0).encode(raw());
        assert_eq!(i.encoding, Encoding::Identity);
        assert_eq!(&i.body[..], b"m f=1\nm f=2\n");
    }

    #[test]
    fn every_engine_and_level_round_trips() {
        let d = Dest::new("b", Precision::Ns);
        let data: Vec<u8> = (0..3000)
            .flat_map(|i| format!("m,host=h{} v={i}i 1700000000{i:09}\n", i % 7).into_bytes())
            .collect();
        let isal_here = isal::lib().is_ok();
        for engine in [GzipEngine::Auto, GzipEngine::Libdeflate, GzipEngine::Isal] {
            for level in [1, 2, 6, 12] {
                let mut e = Encoder::with_engine(level, engine);
                let want = if level == 1 && engine != GzipEngine::Libdeflate && isal_here {
                    "isal"
                } else {
                    "libdeflate"
                };
                assert_eq!(e.engine(), want, "{engine:?} level {level}");
                for _ in 0..2 {
                    let b = e.encode(RawBatch {
                        dest: d.clone(),
                        data: data.clone(),
                        lines: 3000,
                        acks: vec![],
                    });
                    assert_eq!(b.encoding, Encoding::Gzip);
                    assert!(b.body.len() < data.len() / 3, "{engine:?} {level}");
                    assert_eq!(decode(&b).unwrap(), data, "{engine:?} level {level}");
                }
            }
        }
    }

    #[test]
    fn isal_is_refused_at_selection_only_when_it_cannot_load() {
        let gone = Err("libisal.so.2: cannot open shared object file");
        let e = resolve(GzipEngine::Isal, gone).unwrap_err();
        assert!(
            e.contains("agent.gzip_engine")
                && e.contains("libisal.so.2: cannot open")
                && e.contains("apt-get install libisal2"),
            "{e}"
        );
        assert_eq!(resolve(GzipEngine::Auto, gone), Ok(GzipEngine::Libdeflate));
        assert_eq!(
            resolve(GzipEngine::Libdeflate, gone),
            Ok(GzipEngine::Libdeflate)
        );
        assert_eq!(resolve(GzipEngine::Auto, Ok(())), Ok(GzipEngine::Isal));
        assert_eq!(resolve(GzipEngine::Isal, Ok(())), Ok(GzipEngine::Isal));
        assert_eq!(
            resolve(GzipEngine::Libdeflate, Ok(())),
            Ok(GzipEngine::Libdeflate)
        );
        // On this host, as the daemon would start (auto: the process default stays as it was).
        let here = if isal::lib().is_ok() {
            "isal"
        } else {
            "libdeflate"
        };
        assert_eq!(select_engine(GzipEngine::Auto).as_deref(), Ok(here));
    }
}
