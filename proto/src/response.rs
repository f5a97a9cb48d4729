//! Sealed responses, keyed from the opening recipient's HPKE context in the manner of
//! RFC 9458 §4.4.
//!
//! ```text
//! response = head, then chunks (as in the `stream` module), the last one final
//! head     = version (u8 = 1) || recipient_index (u8) || response_nonce (32) || binding (16)
//!
//! secret   = Export("tandem/v1 response", 32)          on the recipient's HPKE context
//! salt     = enc || response_nonce || request transcript
//! prk      = HKDF-Extract(salt, secret)
//! key      = HKDF-Expand(prk, "tandem/v1 response key", Nk)
//! nonce    = HKDF-Expand(prk, "tandem/v1 response nonce", 12)
//! binding  = HKDF-Expand(prk, "tandem/v1 response binding", 16)
//! ```
//!
//! Only the requester (who made the HPKE context) and the node that opened it can derive the
//! keys. The transcript in the salt binds the response to this exact request, and the binding
//! tag in the head lets the requester tell "this response answers another request" (or an
//! altered head) apart from a tampered chunk.
//!
//! A node that refuses a request it has opened answers with a gRPC status whose code and
//! generic message the gateway reads (it fails over on the code), and a **sealed status**
//! carrying the detail (exact sizes, limits, digests) that only the device can open:
//!
//! ```text
//! sealed status = head || chunk                         (always SEALED_STATUS_LEN bytes)
//! head          = as above (fresh response_nonce, binding over the same derivation)
//! chunk         = seq 0, final flag, sealed as in `stream` with
//!                 key/nonce = HKDF-Expand(prk, "tandem/v1 status key" / "… nonce", …)
//! plaintext     = u16_be(len) || detail (len bytes) || zero padding to STATUS_PLAINTEXT_LEN
//! ```
//!
//! The status key has its own label, so a sealed status cannot be replayed as a response stream
//! or the other way round, and the fixed length means its size says nothing about the detail.

use hpke::rand_core::CryptoRng;
use sha2_hpke::Sha256;
use zeroize::Zeroizing;

use crate::cipher::{ChunkKey, TAG_LEN, expand};
use crate::codec::Reader;
use crate::error::{Error, MisuseError, ResponseError};
use crate::key_config::Suite;
use crate::request::{ENC_LEN, PROTOCOL_VERSION, RequestId};
use crate::stream::{CHUNK_HEADER_LEN, ChunkOpener, ChunkSealer, Limits};

/// Length of the response nonce (at least max(Nn, Nk) for both suites, RFC 9458 §4.4).
pub const RESPONSE_NONCE_LEN: usize = 32;
/// Length of the head's binding tag.
pub const BINDING_LEN: usize = 16;
/// Length of an encoded response head.
pub const RESPONSE_HEAD_LEN: usize = 2 + RESPONSE_NONCE_LEN + BINDING_LEN;

/// Plaintext length of every sealed status chunk (length prefix, detail, padding).
pub const STATUS_PLAINTEXT_LEN: usize = 512;
/// Longest detail a sealed status carries.
pub const MAX_STATUS_DETAIL_LEN: usize = STATUS_PLAINTEXT_LEN - 2;
/// Length of every sealed status: head, chunk header, padded plaintext, tag.
pub const SEALED_STATUS_LEN: usize =
    RESPONSE_HEAD_LEN + CHUNK_HEADER_LEN + STATUS_PLAINTEXT_LEN + TAG_LEN;

const LABEL_RESPONSE: &[u8] = b"tandem/v1 response";
const LABEL_STATUS: &[u8] = b"tandem/v1 status";
const LABEL_BINDING: &[u8] = b"tandem/v1 response binding";

/// The limits of the one-chunk stream inside a sealed status.
fn status_limits() -> Limits {
    Limits {
        max_chunk_len: STATUS_PLAINTEXT_LEN,
        max_message_len: STATUS_PLAINTEXT_LEN,
    }
}

/// The first message of a response stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Which of the request's recipients answered (index into its recipient list).
    pub recipient_index: u8,
    /// Fresh randomness from the node.
    pub response_nonce: [u8; RESPONSE_NONCE_LEN],
    /// Binding tag proving the head was derived from this request's context.
    pub binding: [u8; BINDING_LEN],
}

impl ResponseHead {
    /// Parses a head (no cryptography).
    pub fn parse(bytes: &[u8]) -> Result<ResponseHead, Error> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version").map_err(ResponseError::from)?;
        if version != PROTOCOL_VERSION {
            return Err(ResponseError::UnsupportedVersion(version).into());
        }
        let head = ResponseHead {
            recipient_index: r.u8("recipient index").map_err(ResponseError::from)?,
            response_nonce: r.array("response nonce").map_err(ResponseError::from)?,
            binding: r.array("binding").map_err(ResponseError::from)?,
        };
        if !r.is_empty() {
            return Err(ResponseError::TrailingBytes(r.remaining()).into());
        }
        Ok(head)
    }

    /// Encodes the head.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RESPONSE_HEAD_LEN);
        out.push(PROTOCOL_VERSION);
        out.push(self.recipient_index);
        out.extend_from_slice(&self.response_nonce);
        out.extend_from_slice(&self.binding);
        out
    }
}

fn derive(
    suite: Suite,
    label: &[u8],
    secret: &[u8; 32],
    enc: &[u8; ENC_LEN],
    response_nonce: &[u8; RESPONSE_NONCE_LEN],
    transcript: &[u8; 32],
) -> (ChunkKey, [u8; BINDING_LEN]) {
    let mut salt = [0u8; ENC_LEN + RESPONSE_NONCE_LEN + 32];
    salt[..ENC_LEN].copy_from_slice(enc);
    salt[ENC_LEN..ENC_LEN + RESPONSE_NONCE_LEN].copy_from_slice(response_nonce);
    salt[ENC_LEN + RESPONSE_NONCE_LEN..].copy_from_slice(transcript);
    let prk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
    let key = ChunkKey::derive(suite, &prk, label);
    let mut binding = [0u8; BINDING_LEN];
    expand(&prk, &[LABEL_BINDING], &mut binding);
    (key, binding)
}

/// Node side: seals the response to the request it came from. One-shot: starting the
/// response consumes it. Seal-only.
pub struct Responder {
    suite: Suite,
    recipient_index: u8,
    enc: [u8; ENC_LEN],
    secret: Zeroizing<[u8; 32]>,
    transcript: [u8; 32],
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("suite", &self.suite)
            .field("recipient_index", &self.recipient_index)
            .finish_non_exhaustive()
    }
}

impl Responder {
    pub(crate) fn new(
        suite: Suite,
        recipient_index: u8,
        enc: [u8; ENC_LEN],
        secret: Zeroizing<[u8; 32]>,
        transcript: [u8; 32],
    ) -> Responder {
        Responder {
            suite,
            recipient_index,
            enc,
            secret,
            transcript,
        }
    }

    /// Starts the response with the operating system's RNG: returns the encoded head (send it
    /// first) and the sealer for the chunks.
    pub fn start(self, limits: Limits) -> (Vec<u8>, ChunkSealer) {
        self.start_with_rng(limits, &mut crate::os_rng())
    }

    /// [`Responder::start`] with the caller's RNG.
    pub fn start_with_rng(
        self,
        limits: Limits,
        rng: &mut impl CryptoRng,
    ) -> (Vec<u8>, ChunkSealer) {
        let (head, key) = self.head_with_rng(LABEL_RESPONSE, rng);
        (head, ChunkSealer::new(key, limits))
    }

    /// A fresh head and the stream key under `label`.
    fn head_with_rng(&self, label: &[u8], rng: &mut impl CryptoRng) -> (Vec<u8>, ChunkKey) {
        let mut response_nonce = [0u8; RESPONSE_NONCE_LEN];
        rng.fill_bytes(&mut response_nonce);
        let (key, binding) = derive(
            self.suite,
            label,
            &self.secret,
            &self.enc,
            &response_nonce,
            &self.transcript,
        );
        let head = ResponseHead {
            recipient_index: self.recipient_index,
            response_nonce,
            binding,
        };
        (head.encode(), key)
    }

    /// Refuses the request instead of answering it, with the operating system's RNG: `detail`
    /// (at most [`MAX_STATUS_DETAIL_LEN`] bytes) sealed to the requester as a sealed status of
    /// [`SEALED_STATUS_LEN`] bytes (format in the module docs). One-shot, like
    /// [`Responder::start`].
    pub fn seal_status(self, detail: &[u8]) -> Result<Vec<u8>, Error> {
        self.seal_status_with_rng(detail, &mut crate::os_rng())
    }

    /// [`Responder::seal_status`] with the caller's RNG.
    pub fn seal_status_with_rng(
        self,
        detail: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, Error> {
        if detail.len() > MAX_STATUS_DETAIL_LEN {
            return Err(MisuseError::ChunkTooLarge {
                len: detail.len(),
                max: MAX_STATUS_DETAIL_LEN,
            }
            .into());
        }
        let mut plaintext = Zeroizing::new(vec![0u8; STATUS_PLAINTEXT_LEN]);
        // At most MAX_STATUS_DETAIL_LEN (510), so it fits a u16.
        plaintext[..2].copy_from_slice(&(detail.len() as u16).to_be_bytes());
        plaintext[2..2 + detail.len()].copy_from_slice(detail);
        let (mut out, key) = self.head_with_rng(LABEL_STATUS, rng);
        out.reserve_exact(SEALED_STATUS_LEN - out.len());
        ChunkSealer::new(key, status_limits()).seal_into(&plaintext, true, &mut out)?;
        debug_assert_eq!(out.len(), SEALED_STATUS_LEN);
        Ok(out)
    }
}

/// Device side: what it takes to open the response to one sealed request. One-shot: opening
/// the head consumes it. Open-only.
pub struct ResponseContext {
    suite: Suite,
    request_id: RequestId,
    transcript: [u8; 32],
    recipients: Vec<([u8; ENC_LEN], Zeroizing<[u8; 32]>)>,
}

impl std::fmt::Debug for ResponseContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseContext")
            .field("suite", &self.suite)
            .field("request_id", &self.request_id)
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

impl ResponseContext {
    pub(crate) fn new(
        suite: Suite,
        request_id: RequestId,
        transcript: [u8; 32],
        recipients: Vec<([u8; ENC_LEN], Zeroizing<[u8; 32]>)>,
    ) -> ResponseContext {
        ResponseContext {
            suite,
            request_id,
            transcript,
            recipients,
        }
    }

    /// The id of the request this context answers.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// Opens the response head and returns the opener for its chunks. Checks, in order:
    /// 1. head framing and version,
    /// 2. the recipient index names one of this request's recipients,
    /// 3. the binding tag matches (the head answers this request and was not altered).
    pub fn open_head(self, head: &[u8], limits: Limits) -> Result<ChunkOpener, Error> {
        Ok(ChunkOpener::new(
            self.head_key(head, LABEL_RESPONSE)?,
            limits,
        ))
    }

    /// Opens a sealed status (a node's refusal, format in the module docs) and returns its
    /// detail. One-shot: a request gets one answer, a stream or a sealed status. Checks, in
    /// order:
    /// 1. the length is [`SEALED_STATUS_LEN`],
    /// 2. the head, as in [`ResponseContext::open_head`] (framing, recipient, binding),
    /// 3. the chunk: framing, sequence 0, AEAD under the status key, the final flag,
    /// 4. the padding: declared length within [`MAX_STATUS_DETAIL_LEN`], zeros after it.
    pub fn open_status(self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        // 1.
        if sealed.len() != SEALED_STATUS_LEN {
            return Err(ResponseError::StatusLength {
                len: sealed.len(),
                expected: SEALED_STATUS_LEN,
            }
            .into());
        }
        let (head, chunk) = sealed.split_at(RESPONSE_HEAD_LEN);
        // 2.
        let key = self.head_key(head, LABEL_STATUS)?;
        // 3.
        let mut opener = ChunkOpener::new(key, status_limits());
        let opened = opener.open(chunk)?;
        if !opened.is_final {
            return Err(ResponseError::StatusNotFinal.into());
        }
        // 4. The length is fixed, so the plaintext is STATUS_PLAINTEXT_LEN bytes.
        let pt = &opened.data;
        let len = pt.get(..2).map_or(usize::MAX, |l| {
            usize::from(u16::from_be_bytes([l[0], l[1]]))
        });
        let detail = (len <= MAX_STATUS_DETAIL_LEN)
            .then(|| pt.get(2..2 + len).zip(pt.get(2 + len..)))
            .flatten()
            .filter(|(_, padding)| padding.iter().all(|b| *b == 0));
        match detail {
            Some((detail, _)) => Ok(detail.to_vec()),
            None => Err(ResponseError::StatusPadding {
                len,
                max: MAX_STATUS_DETAIL_LEN,
            }
            .into()),
        }
    }

    /// Checks a head against this request and derives the stream key under `label`.
    fn head_key(&self, head: &[u8], label: &[u8]) -> Result<ChunkKey, Error> {
        let head = ResponseHead::parse(head)?;
        let Some((enc, secret)) = self.recipients.get(usize::from(head.recipient_index)) else {
            return Err(ResponseError::UnknownRecipient {
                index: head.recipient_index,
                count: self.recipients.len(),
            }
            .into());
        };
        let (key, binding) = derive(
            self.suite,
            label,
            secret,
            enc,
            &head.response_nonce,
            &self.transcript,
        );
        if !ct_eq(&binding, &head.binding) {
            return Err(ResponseError::WrongRequest.into());
        }
        Ok(key)
    }
}

/// Constant-time equality of two tags.
fn ct_eq(a: &[u8; BINDING_LEN], b: &[u8; BINDING_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
