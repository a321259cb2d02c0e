//! gzip level 1 through Intel's ISA-L (`igzip`), loaded at run time from the host's
//! `libisal.so.2` (Debian and Ubuntu: package `libisal2`; Fedora: `isa-l`).
//!
//! On the lines lineship carries, ISA-L's level 1 compresses about twice as fast as
//! libdeflate's level 1 at nearly the same ratio (README, Performance), and gzip is the larger
//! part of lineship's CPU per line. It is loaded with `dlopen` rather than linked so that a
//! build needs nothing beyond cargo and the binary runs on hosts without it (libdeflate then
//! does all levels). `agent.gzip_engine` chooses ([`GzipEngine`]).
//!
//! Invariants:
//! - The library is opened at most once per process and never closed: the function pointers
//!   in [`Lib`] live as long as the process.
//! - Only the soname `libisal.so.2` is opened: its ABI, the `isal_zstream` layout the caller
//!   allocates included, is stable within the major version. The layout comes from the
//!   `isal-sys` bindings (ISA-L 2.31; Debian 12 ships 2.30, whose header declares the same
//!   structs); the round-trip tests decode what it writes with libdeflate.
//! - One [`Gzip`] per thread: it owns the stream state and the level buffer, so a batch
//!   allocates nothing here.
//! - A batch that does not fit the output bound, or over 4 GiB (ISA-L counts in u32), is
//!   refused with `None`; the caller compresses it with libdeflate instead. Nothing is lost.

use std::os::raw::c_int;
use std::sync::OnceLock;

use isal_sys::igzip_lib as ffi;
use serde::Deserialize;

/// The soname opened.
pub const SONAME: &str = "libisal.so.2";

/// `agent.gzip_engine`: who compresses `gzip_level = 1`. Other levels are always libdeflate's
/// (ISA-L's levels 2 and 3 are not libdeflate's).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum GzipEngine {
    /// ISA-L when `libisal.so.2` loads, else libdeflate.
    #[default]
    Auto,
    /// Always libdeflate.
    Libdeflate,
    /// ISA-L; the daemon refuses to start without it.
    Isal,
}

impl GzipEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            GzipEngine::Auto => "auto",
            GzipEngine::Libdeflate => "libdeflate",
            GzipEngine::Isal => "isal",
        }
    }
}

type InitFn = unsafe extern "C" fn(*mut ffi::isal_zstream);
type DeflateFn = unsafe extern "C" fn(*mut ffi::isal_zstream) -> c_int;

/// The opened library and the two functions lineship calls.
pub struct Lib {
    _lib: libloading::Library,
    init: InitFn,
    deflate: DeflateFn,
}

impl std::fmt::Debug for Lib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SONAME)
    }
}

/// The process's ISA-L, opened on first use; the error says why it could not be.
pub fn lib() -> Result<&'static Lib, &'static str> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(|e| e.as_str())
}

fn open() -> Result<Lib, String> {
    // SAFETY: opening ISA-L runs no initialisers beyond the C runtime's; its symbols are
    // looked up with the signatures its header declares.
    unsafe {
        let lib = libloading::Library::new(SONAME).map_err(|e| e.to_string())?;
        let init = *lib
            .get::<InitFn>(b"isal_deflate_stateless_init\0")
            .map_err(|e| e.to_string())?;
        let deflate = *lib
            .get::<DeflateFn>(b"isal_deflate_stateless\0")
            .map_err(|e| e.to_string())?;
        Ok(Lib {
            _lib: lib,
            init,
            deflate,
        })
    }
}

/// One thread's ISA-L gzip (level 1) state.
pub struct Gzip {
    lib: &'static Lib,
    stream: Box<ffi::isal_zstream>,
    level_buf: Box<[u8]>,
}

impl Gzip {
    pub fn new(lib: &'static Lib) -> Self {
        // On the heap (it holds a 64 KiB window), zeroed: `isal_zstream` is a plain C struct
        // (integers, raw pointers, arrays) for which all-zero bytes is a valid value, and
        // `init` sets it up before each use.
        let layout = std::alloc::Layout::new::<ffi::isal_zstream>();
        // SAFETY: the layout is the type's own (non-zero size); the pointer is checked, then
        // owned by the Box, which frees it with the same layout.
        let stream = unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<ffi::isal_zstream>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(p)
        };
        Gzip {
            lib,
            stream,
            level_buf: vec![0u8; ffi::ISAL_DEF_LVL1_DEFAULT as usize].into_boxed_slice(),
        }
    }

    /// Compresses `data` into `out` as one gzip member; the length written, or `None` when it
    /// did not fit (or `data` is too large for ISA-L): the caller then uses libdeflate.
    pub fn compress(&mut self, data: &[u8], out: &mut [u8]) -> Option<usize> {
        let avail_in = u32::try_from(data.len()).ok()?;
        let avail_out = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let s = &mut *self.stream;
        // SAFETY: `s` is a live, initialised stream; the pointers set below are valid for
        // the lengths given for the duration of the call, and ISA-L reads only `avail_in`
        // bytes of `next_in` (it never writes through it) and writes at most `avail_out`.
        let rc = unsafe {
            (self.lib.init)(s);
            s.level = 1;
            s.level_buf = self.level_buf.as_mut_ptr();
            s.level_buf_size = self.level_buf.len() as u32;
            s.gzip_flag = ffi::IGZIP_GZIP as u16;
            s.end_of_stream = 1;
            s.flush = ffi::NO_FLUSH as u16;
            s.next_in = data.as_ptr().cast_mut();
            s.avail_in = avail_in;
            s.next_out = out.as_mut_ptr();
            s.avail_out = avail_out;
            (self.lib.deflate)(s)
        };
        let written = s.total_out as usize;
        // The stream must not keep pointers into the caller's buffers past the call.
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        (rc == ffi::COMP_OK as c_int && s.avail_in == 0).then_some(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(body: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len + 1];
        let n = libdeflater::Decompressor::new()
            .gzip_decompress(body, &mut out)
            .expect("a valid gzip member");
        out.truncate(n);
        out
    }

    /// Where the host has no ISA-L the tests say so; CI installs it and requires it.
    fn lib_or_skip() -> Option<&'static Lib> {
        match lib() {
            Ok(l) => Some(l),
            Err(e) if std::env::var_os("LINESHIP_REQUIRE_ISAL").is_some() => {
                panic!("LINESHIP_REQUIRE_ISAL is set but {SONAME} cannot be loaded: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: {SONAME} cannot be loaded ({e}); install libisal2");
                None
            }
        }
    }

    #[test]
    fn round_trips_through_libdeflate() {
        let Some(lib) = lib_or_skip() else { return };
        let mut g = Gzip::new(lib);
        let mut lines = Vec::new();
        for i in 0..20_000u32 {
            lines.extend_from_slice(
                format!(
                    "cpu,host=h{} usage={}.5,seq={i}i 17000000000{i:08}\n",
                    i % 97,
                    i % 13
                )
                .as_bytes(),
            );
        }
        let mut out = vec![0u8; lines.len() + (lines.len() >> 4) + 1024];
        // The same state reused: every call starts a fresh member.
        for data in [&lines[..], b"", b"m v=1\n", &lines[..1000], &lines[..]] {
            let n = g.compress(data, &mut out).expect("fits");
            assert_eq!(&out[..2], &[0x1f, 0x8b]);
            assert_eq!(gunzip(&out[..n], data.len()), data);
        }
    }

    #[test]
    fn an_output_too_small_is_refused_not_cut() {
        let Some(lib) = lib_or_skip() else { return };
        let mut g = Gzip::new(lib);
        // Incompressible input into a buffer smaller than the input.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut small = vec![0u8; 50_000];
        assert_eq!(g.compress(&data, &mut small), None);
        // And the state is still good for the next batch.
        let mut out = vec![0u8; 110_000];
        let n = g.compress(&data, &mut out).expect("fits the bound");
        assert_eq!(gunzip(&out[..n], data.len()), data);
    }
}
