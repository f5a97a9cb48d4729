//! Chunked AEAD streams: the body of a request and the whole of a response.
//!
//! ```text
//! chunk = seq (u32, big-endian) || flags (u8) || AEAD ciphertext (plaintext length + 16)
//! flags: bit 0 = final chunk; every other bit must be 0
//! nonce = base_nonce XOR I2OSP(seq, 12)              (RFC 9180 §5.2 ComputeNonce)
//! aad   = seq || flags                               (the chunk header)
//! ```
//!
//! Every stream has its own key (derived from a fresh data key or an HPKE export secret), so a
//! chunk authenticates only in the stream, at the position, and with the final flag it was
//! sealed with:
//! - reordering or dropping chunks shows as a sequence gap ([`StreamError::Missing`]),
//! - duplicating one as [`StreamError::Duplicate`],
//! - splicing in a chunk of another stream, or altering one, as [`StreamError::Authentication`],
//! - truncating the stream (dropping the final chunk) as [`StreamError::MissingFinal`] from
//!   [`ChunkOpener::finish`], and anything after the final chunk as [`StreamError::AfterFinal`].
//!
//! [`ChunkSealer`] only seals and [`ChunkOpener`] only opens; sealing the final chunk consumes
//! the sealer.

use crate::cipher::{ChunkKey, TAG_LEN};
use crate::codec::Reader;
use crate::error::{Error, MisuseError, StreamError};

/// Bytes of chunk header: sequence number and flags.
pub const CHUNK_HEADER_LEN: usize = 5;
/// Smallest valid chunk: header and tag around an empty plaintext.
pub const MIN_CHUNK_LEN: usize = CHUNK_HEADER_LEN + TAG_LEN;
const FLAG_FINAL: u8 = 0x01;

/// Size limits of one stream. Both sides check them; each has its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest plaintext in one chunk, in bytes.
    pub max_chunk_len: usize,
    /// Largest plaintext of a whole stream (all chunks together), in bytes.
    pub max_message_len: usize,
}

impl Default for Limits {
    /// 64 KiB chunks, 16 MiB messages.
    fn default() -> Self {
        Limits {
            max_chunk_len: 64 * 1024,
            max_message_len: 16 * 1024 * 1024,
        }
    }
}

/// A chunk's header fields and ciphertext, parsed but not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Whether the sender marked this chunk final.
    pub is_final: bool,
    /// AEAD ciphertext and tag.
    pub ciphertext: &'a [u8],
}

impl<'a> ChunkRef<'a> {
    /// Parses a chunk's framing (no cryptography).
    pub fn parse(bytes: &'a [u8]) -> Result<ChunkRef<'a>, Error> {
        let mut r = Reader::new(bytes);
        let seq = r.u32("chunk sequence number").map_err(StreamError::from)?;
        let flags = r.u8("chunk flags").map_err(StreamError::from)?;
        if flags & !FLAG_FINAL != 0 {
            return Err(StreamError::UnknownFlags { seq, flags }.into());
        }
        if r.remaining() < TAG_LEN {
            return Err(StreamError::Truncated {
                field: "chunk ciphertext and tag",
                needed: TAG_LEN,
                available: r.remaining(),
            }
            .into());
        }
        Ok(ChunkRef {
            seq,
            is_final: flags & FLAG_FINAL != 0,
            ciphertext: r.rest(),
        })
    }

    /// Plaintext length this chunk will open to.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len() - TAG_LEN
    }

    /// The chunk's bytes again.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&header(self.seq, self.is_final));
        out.extend_from_slice(self.ciphertext);
        out
    }
}

fn header(seq: u32, is_final: bool) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..4].copy_from_slice(&seq.to_be_bytes());
    h[4] = if is_final { FLAG_FINAL } else { 0 };
    h
}

/// Seals the chunks of one stream, in order. Seal-only.
#[derive(Debug)]
pub struct ChunkSealer {
    key: ChunkKey,
    next_seq: u32,
    total: usize,
    limits: Limits,
}

impl ChunkSealer {
    pub(crate) fn new(key: ChunkKey, limits: Limits) -> Self {
        ChunkSealer {
            key,
            next_seq: 0,
            total: 0,
            limits,
        }
    }

    /// The limits this stream was opened with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Seals a non-final chunk.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + plaintext.len() + TAG_LEN);
        self.seal_into(plaintext, false, &mut out)?;
        Ok(out)
    }

    /// Seals the final chunk (which may be empty) and ends the stream.
    pub fn seal_final(mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + plaintext.len() + TAG_LEN);
        self.seal_into(plaintext, true, &mut out)?;
        Ok(out)
    }

    /// Appends one sealed chunk to `out`.
    pub(crate) fn seal_into(
        &mut self,
        plaintext: &[u8],
        is_final: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if plaintext.len() > self.limits.max_chunk_len {
            return Err(MisuseError::ChunkTooLarge {
                len: plaintext.len(),
                max: self.limits.max_chunk_len,
            }
            .into());
        }
        let total = self.total.saturating_add(plaintext.len());
        if total > self.limits.max_message_len {
            return Err(MisuseError::MessageTooLarge {
                len: total,
                max: self.limits.max_message_len,
            }
            .into());
        }
        let seq = self.next_seq;
        // A non-final chunk needs a successor sequence number for the final one.
        let Some(next) = seq.checked_add(1) else {
            return Err(MisuseError::SequenceExhausted.into());
        };
        let h = header(seq, is_final);
        out.extend_from_slice(&h);
        let start = out.len();
        out.extend_from_slice(plaintext);
        self.key
            .seal_in_place(seq, &h, out, start)
            .map_err(|_| Error::Crypto("AEAD seal of a chunk"))?;
        self.next_seq = next;
        self.total = total;
        Ok(())
    }
}

/// One opened chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedChunk {
    /// The plaintext.
    pub data: Vec<u8>,
    /// Whether this was the final chunk.
    pub is_final: bool,
}

/// Opens the chunks of one stream, in order. Open-only.
#[derive(Debug)]
pub struct ChunkOpener {
    key: ChunkKey,
    next_seq: u32,
    total: usize,
    finished: bool,
    limits: Limits,
}

impl ChunkOpener {
    pub(crate) fn new(key: ChunkKey, limits: Limits) -> Self {
        ChunkOpener {
            key,
            next_seq: 0,
            total: 0,
            finished: false,
            limits,
        }
    }

    /// Whether the final chunk has been opened.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Opens the next chunk. Checks run in this order:
    /// 1. framing (length, flags),
    /// 2. no chunk after the final one,
    /// 3. chunk size limit,
    /// 4. sequence number is the next expected one,
    /// 5. message size limit,
    /// 6. AEAD authentication.
    pub fn open(&mut self, chunk: &[u8]) -> Result<OpenedChunk, Error> {
        let mut data = Vec::with_capacity(chunk.len().saturating_sub(MIN_CHUNK_LEN));
        let is_final = self.open_into(chunk, &mut data)?;
        Ok(OpenedChunk { data, is_final })
    }

    /// [`ChunkOpener::open`], appending the plaintext to `out` (left unchanged on error).
    /// Returns whether the chunk was final.
    pub fn open_into(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<bool, Error> {
        let c = ChunkRef::parse(chunk)?;
        if self.finished {
            return Err(StreamError::AfterFinal { seq: c.seq }.into());
        }
        let len = c.plaintext_len();
        if len > self.limits.max_chunk_len {
            return Err(StreamError::ChunkTooLarge {
                len,
                max: self.limits.max_chunk_len,
            }
            .into());
        }
        if c.seq < self.next_seq {
            return Err(StreamError::Duplicate { seq: c.seq }.into());
        }
        if c.seq > self.next_seq {
            return Err(StreamError::Missing {
                expected: self.next_seq,
                got: c.seq,
            }
            .into());
        }
        let total = self.total.saturating_add(len);
        if total > self.limits.max_message_len {
            return Err(StreamError::MessageTooLarge {
                len: total,
                max: self.limits.max_message_len,
            }
            .into());
        }
        let h = header(c.seq, c.is_final);
        self.key
            .open_into(c.seq, &h, c.ciphertext, out)
            .map_err(|_| StreamError::Authentication { seq: c.seq })?;
        self.total = total;
        self.finished = c.is_final;
        // A sealer never emits a non-final chunk with seq u32::MAX, so a forged one cannot
        // authenticate; saturating keeps the state sane regardless.
        self.next_seq = self.next_seq.saturating_add(1);
        Ok(c.is_final)
    }

    /// Ends the stream; an error if the final chunk never arrived (the stream was truncated).
    pub fn finish(self) -> Result<(), Error> {
        if self.finished {
            Ok(())
        } else {
            Err(StreamError::MissingFinal {
                received: self.next_seq,
            }
            .into())
        }
    }
}
