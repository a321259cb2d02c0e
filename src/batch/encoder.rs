//! The gzip step: [`Encoder`] compresses sealed batches, [`decode`] turns a body back into its
//! lines.

use bytes::Bytes;

use super::{Batch, Encoding, RawBatch};

/// Compresses sealed batches. One per thread: it owns libdeflate's compressor state and a
/// scratch buffer, so the worst-case output size is not allocated (and page-faulted) per batch.
pub struct Encoder {
    compressor: Option<libdeflater::Compressor>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// `level` 0 means identity (no compression); 1..=12 are libdeflate's gzip levels.
    pub fn new(level: u32) -> Self {
        let compressor = (level > 0).then(|| {
            let lvl = libdeflater::CompressionLvl::new(level as i32).unwrap_or_default();
            libdeflater::Compressor::new(lvl)
        });
        Encoder {
            compressor,
            scratch: Vec::new(),
        }
    }

    /// Encodes `data` for several lanes: the body is shared (a `Bytes` clone per lane).
    pub fn encode_slice(&mut self, data: &[u8]) -> (Bytes, Encoding) {
        match &mut self.compressor {
            None => (Bytes::copy_from_slice(data), Encoding::Identity),
            Some(c) => (
                Bytes::from(gzip(c, data, &mut self.scratch)),
                Encoding::Gzip,
            ),
        }
    }

    /// Encodes the data of `raw` (the lines are not changed).
    pub fn encode(&mut self, raw: RawBatch) -> Batch {
        let raw_len = raw.data.len();
        let (body, encoding) = match &mut self.compressor {
            None => (Bytes::from(raw.data), Encoding::Identity),
            Some(c) => (
                Bytes::from(gzip(c, &raw.data, &mut self.scratch)),
                Encoding::Gzip,
            ),
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
}

fn gzip(c: &mut libdeflater::Compressor, data: &[u8], scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.resize(c.gzip_compress_bound(data.len()), 0);
    let n = c
        .gzip_compress(data, scratch)
        .expect("output buffer sized by gzip_compress_bound");
    scratch[..n].to_vec()
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
}
