//! Compression of tarballs: detected from magic bytes on import, chosen by file extension (or
//! `--format`) on export. gzip (flate2), xz (liblzma through xz2) and zstd.

use std::io::{self, BufReader, Chain, Cursor, Read, Write};
use std::path::Path;

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip.
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
}

/// Why a stream cannot be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A format we recognise but do not handle.
    #[error("the archive is {0}-compressed, which is not supported (use plain, gzip, xz or zstd)")]
    Unsupported(&'static str),
    /// Reading the first bytes failed.
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    /// The decoder could not be set up.
    #[error("cannot set up the {format} decoder: {source}")]
    Decoder {
        /// The format.
        format: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl Compression {
    /// The format whose magic bytes start `head` (at least 6 bytes unless the stream is
    /// shorter).
    pub fn detect(head: &[u8]) -> Result<Self, CompressError> {
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(b"BZh") {
            return Err(CompressError::Unsupported("bzip2"));
        } else {
            Compression::None
        })
    }

    /// The format a file name's extension asks for (`.tar`, `.tar.gz`/`.tgz`, `.tar.xz`/`.txz`,
    /// `.tar.zst`/`.tzst`); `None` for other names.
    pub fn from_file_name(path: &Path) -> Option<Self> {
        let n = path.file_name()?.to_str()?.to_ascii_lowercase();
        let ends = |sfx: &[&str]| sfx.iter().any(|s| n.ends_with(s));
        Some(if ends(&[".tar.gz", ".tgz"]) {
            Compression::Gzip
        } else if ends(&[".tar.xz", ".txz"]) {
            Compression::Xz
        } else if ends(&[".tar.zst", ".tzst", ".tar.zstd"]) {
            Compression::Zstd
        } else if ends(&[".tar"]) {
            Compression::None
        } else {
            return None;
        })
    }

    /// The name used in messages and by `--format`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// The raw input with the bytes read for detection put back in front.
pub type Peeked<R> = Chain<Cursor<Vec<u8>>, R>;

/// Reads the first bytes of `input` and returns the detected format with a reader that
/// still yields the whole stream.
pub fn peek<R: Read>(mut input: R) -> Result<(Compression, Peeked<R>), CompressError> {
    let mut head = Vec::with_capacity(6);
    while head.len() < 6 {
        let mut b = [0u8; 6];
        let want = 6 - head.len();
        match input.read(&mut b[..want]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CompressError::Read(e)),
        }
    }
    let c = Compression::detect(&head)?;
    Ok((c, Cursor::new(head).chain(input)))
}

/// Buffer size between the raw input and a decoder.
const RAW_BUF: usize = 256 * 1024;

/// A decompressing reader that can give its raw input back (so the caller can drain and
/// account for every raw byte, e.g. to hash a whole download).
pub enum Decoder<R: Read> {
    /// No compression.
    Plain(R),
    /// gzip, all members.
    Gzip(flate2::bufread::MultiGzDecoder<BufReader<R>>),
    /// xz, all streams.
    Xz(xz2::bufread::XzDecoder<BufReader<R>>),
    /// zstd, all frames.
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl<R: Read> Decoder<R> {
    /// A decoder of format `c` over `input`.
    pub fn new(c: Compression, input: R) -> Result<Self, CompressError> {
        let buf = BufReader::with_capacity(RAW_BUF, input);
        Ok(match c {
            Compression::None => Decoder::Plain(buf.into_inner()),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(buf)),
            Compression::Xz => Decoder::Xz(xz2::bufread::XzDecoder::new_multi_decoder(buf)),
            Compression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::with_buffer(buf)
                    .map_err(|source| CompressError::Decoder { format: "zstd", source })?,
            ),
        })
    }

    /// The raw input (bytes the decoder buffered but did not use are lost; they have been
    /// read from the input already).
    pub fn into_source(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner().into_inner(),
            Decoder::Xz(d) => d.into_inner().into_inner(),
            Decoder::Zstd(d) => d.finish().into_inner(),
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Xz(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// A compressing writer.
pub enum Encoder<W: Write> {
    /// No compression.
    Plain(W),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
    /// xz.
    Xz(xz2::write::XzEncoder<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl<W: Write> Encoder<W> {
    /// An encoder of format `c` writing to `out`. xz uses every core: it is by far the
    /// slowest of the three.
    pub fn new(c: Compression, out: W) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => {
                Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::default()))
            }
            Compression::Xz => {
                // More cores than a u32 counts: as many threads as it can ask for.
                let threads = std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
                let stream = xz2::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(6)
                    .check(xz2::stream::Check::Crc64)
                    .encoder()
                    .map_err(io::Error::other)?;
                Encoder::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }

    /// Writes the compressed stream's end and returns the output.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_round_trips_every_format() {
        for c in [Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
            let mut e = Encoder::new(c, Vec::new()).unwrap();
            e.write_all(&data).unwrap();
            let packed = e.finish().unwrap();
            let (found, input) = peek(&packed[..]).unwrap();
            assert_eq!(found, c);
            let mut d = Decoder::new(found, input).unwrap();
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            assert!(out == data, "{c:?} did not round-trip");
        }
        assert!(matches!(Compression::detect(b"BZh91AY"), Err(CompressError::Unsupported("bzip2"))));
    }

    #[test]
    fn truncated_streams_are_errors() {
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let data: Vec<u8> =
                (0..100_000u32).flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes()).collect();
            let mut e = Encoder::new(c, Vec::new()).unwrap();
            e.write_all(&data).unwrap();
            let packed = e.finish().unwrap();
            let cut = &packed[..packed.len() / 2];
            let (_, input) = peek(cut).unwrap();
            let mut d = Decoder::new(c, input).unwrap();
            let mut out = Vec::new();
            assert!(d.read_to_end(&mut out).is_err(), "{c:?}: a truncated stream read without error");
        }
    }

    #[test]
    fn formats_from_file_names() {
        assert_eq!(Compression::from_file_name(Path::new("/x/a.tar.gz")), Some(Compression::Gzip));
        assert_eq!(Compression::from_file_name(Path::new("a.TGZ")), Some(Compression::Gzip));
        assert_eq!(Compression::from_file_name(Path::new("a.tar.xz")), Some(Compression::Xz));
        assert_eq!(Compression::from_file_name(Path::new("a.tar.zst")), Some(Compression::Zstd));
        assert_eq!(Compression::from_file_name(Path::new("a.tar")), Some(Compression::None));
        assert_eq!(Compression::from_file_name(Path::new("a.zip")), None);
    }
}
