//! Sealed requests to K recipients (1 ≤ K ≤ 16).
//!
//! ```text
//! sealed_request = header || recipient_count (u8) || recipient * count || body
//! header         = version (u8 = 1)
//!                  || kem_id (u16) || kdf_id (u16) || aead_id (u16)
//!                  || request_id (16 bytes) || created_at (u64, Unix seconds)
//!                  || model_id_len (u8) || model_id || adapter_id_len (u8) || adapter_id
//!                  || size_bucket (u8)
//! recipient      = key_id (u8) || enc (32) || wrapped_data_key (32 + 16)
//! body           = (chunk_len (u32) || chunk)*        (chunks as in the `stream` module)
//! ```
//!
//! Sealing:
//! 1. A fresh 32-byte data key is drawn.
//! 2. For each recipient config, HPKE base mode (RFC 9180 §5.1.1, §6.1 `SealBase`) seals the
//!    data key with `info = "tandem/v1 request wrap" || key_id || suite ids || header` and
//!    `aad = SHA-256(recipient's encoded key config)`, binding the wrapping to that recipient's
//!    key, the suite and the authenticated header.
//! 3. `transcript = SHA-256("tandem/v1 request" || header || recipient_count || recipients)`;
//!    the body key is `HKDF-Extract(salt = transcript, ikm = data key)` expanded with the label
//!    `"tandem/v1 request body"`, so the body only opens with the exact header and recipient
//!    list it was sealed with (nothing in the message can be swapped or stripped).
//! 4. The body is sealed once, in chunks, under that key.
//!
//! The gateway can read the header ([`SealedRequest::parse`]) to route, and forward the same
//! bytes to any recipient; a node opens only a wrapping made for its own key.

use std::fmt;

use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use sha2_hpke::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::{ChunkKey, TAG_LEN};
use crate::codec::Reader;
use crate::error::{Error, KeyConfigError, MisuseError, RequestError};
use crate::key_config::{AeadId, HpkeKem, KdfId, KemId, KeyConfig, NodeKey, Suite};
use crate::response::{Responder, ResponseContext};
use crate::stream::{CHUNK_HEADER_LEN, ChunkOpener, ChunkSealer, Limits};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Most recipients one request can be sealed to.
pub const MAX_RECIPIENTS: usize = 16;
/// Length of a request id.
pub const REQUEST_ID_LEN: usize = 16;
/// Length of the data key each recipient wrapping carries.
pub(crate) const DATA_KEY_LEN: usize = 32;
/// Length of an X25519 encapsulated key (Nenc).
pub(crate) const ENC_LEN: usize = 32;
const WRAPPED_LEN: usize = DATA_KEY_LEN + TAG_LEN;
const MAX_ID_LEN: usize = 255;

const LABEL_WRAP: &[u8] = b"tandem/v1 request wrap";
const LABEL_TRANSCRIPT: &[u8] = b"tandem/v1 request";
const LABEL_BODY: &[u8] = b"tandem/v1 request body";

type Kdf = hpke::kdf::HkdfSha256;

/// A request's random identifier, checked by the node's replay guard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub [u8; REQUEST_ID_LEN]);

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A coarse bucket of request size the gateway may see: bucket `b` covers sizes up to
/// `1 KiB * 2^b` (bucket 0: up to 1 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SizeBucket(pub u8);

impl SizeBucket {
    /// The bucket for `len` bytes.
    pub fn for_len(len: usize) -> SizeBucket {
        let kib = len.div_ceil(1024).max(1);
        // ceil(log2(kib)); at most 64 - 10 for any usize.
        let b = usize::BITS - (kib - 1).leading_zeros();
        SizeBucket(u8::try_from(b).unwrap_or(u8::MAX))
    }

    /// Largest size in the bucket, in bytes (saturating).
    pub fn max_len(self) -> u64 {
        1024u64.checked_shl(u32::from(self.0)).unwrap_or(u64::MAX)
    }
}

/// What the gateway may see of a request: which model and adapter it needs and its coarse
/// size. Identifiers are 1–255 (model) or 0–255 (adapter; empty means the base model) bytes of
/// printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutingMetadata {
    /// The model the request needs.
    pub model_id: String,
    /// The adapter the request needs; empty for the base model.
    pub adapter_id: String,
    /// Coarse size of the request.
    pub size_bucket: SizeBucket,
}

fn check_id(field: &'static str, v: &[u8], allow_empty: bool) -> Result<(), &'static str> {
    if v.is_empty() && !allow_empty {
        return Err("must not be empty");
    }
    if v.len() > MAX_ID_LEN {
        return Err("longer than 255 bytes");
    }
    if !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        let _ = field;
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

/// The authenticated, gateway-readable request header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// The HPKE suite of every wrapping and of the body.
    pub suite: Suite,
    /// Random id, for replay detection.
    pub request_id: RequestId,
    /// Creation time, Unix seconds (the device's clock).
    pub created_at: u64,
    /// Routing metadata.
    pub routing: RoutingMetadata,
}

impl RequestHeader {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&self.suite.id_bytes());
        out.extend_from_slice(&self.request_id.0);
        out.extend_from_slice(&self.created_at.to_be_bytes());
        // Lengths were checked to fit in a byte by `validate`.
        out.push(self.routing.model_id.len() as u8);
        out.extend_from_slice(self.routing.model_id.as_bytes());
        out.push(self.routing.adapter_id.len() as u8);
        out.extend_from_slice(self.routing.adapter_id.as_bytes());
        out.push(self.routing.size_bucket.0);
    }

    fn validate(&self) -> Result<(), MisuseError> {
        check_id("model_id", self.routing.model_id.as_bytes(), false).map_err(|reason| {
            MisuseError::InvalidMetadata {
                field: "model_id",
                reason,
            }
        })?;
        check_id("adapter_id", self.routing.adapter_id.as_bytes(), true).map_err(|reason| {
            MisuseError::InvalidMetadata {
                field: "adapter_id",
                reason,
            }
        })
    }

    fn read(r: &mut Reader<'_>) -> Result<RequestHeader, RequestError> {
        let version = r.u8("version")?;
        if version != PROTOCOL_VERSION {
            return Err(RequestError::UnsupportedVersion(version));
        }
        let kem = r.u16("kem id")?;
        let kdf = r.u16("kdf id")?;
        let aead = r.u16("aead id")?;
        let suite = Suite::from_ids(KemId(kem), KdfId(kdf), AeadId(aead))
            .ok_or(RequestError::UnsupportedSuite { kem, kdf, aead })?;
        let request_id = RequestId(r.array("request id")?);
        let created_at = r.u64("created at")?;
        let model_id = read_id(r, "model_id", false)?;
        let adapter_id = read_id(r, "adapter_id", true)?;
        let size_bucket = SizeBucket(r.u8("size bucket")?);
        Ok(RequestHeader {
            suite,
            request_id,
            created_at,
            routing: RoutingMetadata {
                model_id,
                adapter_id,
                size_bucket,
            },
        })
    }
}

fn read_id(
    r: &mut Reader<'_>,
    field: &'static str,
    allow_empty: bool,
) -> Result<String, RequestError> {
    let len = usize::from(r.u8(field)?);
    let bytes = r.bytes(len, field)?;
    check_id(field, bytes, allow_empty)
        .map_err(|reason| RequestError::InvalidMetadata { field, reason })?;
    // Printable ASCII is valid UTF-8.
    String::from_utf8(bytes.to_vec()).map_err(|_| RequestError::InvalidMetadata {
        field,
        reason: "not UTF-8",
    })
}

/// One recipient's wrapping of the data key.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient's key id (from its key config).
    pub key_id: u8,
    /// The HPKE encapsulated key.
    pub enc: [u8; ENC_LEN],
    /// The HPKE-sealed data key.
    pub wrapped: [u8; WRAPPED_LEN],
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A parsed (not opened) sealed request: what the gateway sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRequest<'a> {
    /// The authenticated header.
    pub header: RequestHeader,
    /// One wrapping per recipient, in order.
    pub recipients: Vec<Recipient>,
    header_bytes: &'a [u8],
    transcript_bytes: &'a [u8],
    body_chunks: Vec<&'a [u8]>,
}

impl<'a> SealedRequest<'a> {
    /// Parses the framing of a sealed request (no cryptography): header, recipients, and the
    /// body's chunk boundaries. Chunk length prefixes are checked against `limits` before any
    /// allocation.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<SealedRequest<'a>, Error> {
        let mut r = Reader::new(bytes);
        let header = RequestHeader::read(&mut r)?;
        let header_bytes = &bytes[..r.position()];
        let count = usize::from(r.u8("recipient count").map_err(RequestError::from)?);
        if count == 0 || count > MAX_RECIPIENTS {
            return Err(RequestError::RecipientCount(count).into());
        }
        let mut recipients = Vec::with_capacity(count);
        for _ in 0..count {
            recipients.push(Recipient {
                key_id: r.u8("recipient key id").map_err(RequestError::from)?,
                enc: r.array("recipient enc").map_err(RequestError::from)?,
                wrapped: r
                    .array("recipient wrapped key")
                    .map_err(RequestError::from)?,
            });
        }
        let transcript_bytes = &bytes[..r.position()];
        let max_framed = CHUNK_HEADER_LEN + limits.max_chunk_len.saturating_add(TAG_LEN);
        let mut body_chunks = Vec::new();
        while !r.is_empty() {
            let len = r.u32("body chunk length").map_err(RequestError::from)? as usize;
            if len > max_framed {
                return Err(RequestError::BodyChunkLength {
                    index: body_chunks.len(),
                    len,
                    max: max_framed,
                }
                .into());
            }
            body_chunks.push(r.bytes(len, "body chunk").map_err(RequestError::from)?);
        }
        Ok(SealedRequest {
            header,
            recipients,
            header_bytes,
            transcript_bytes,
            body_chunks,
        })
    }

    /// Number of body chunks.
    pub fn body_chunk_count(&self) -> usize {
        self.body_chunks.len()
    }

    /// Re-encodes the request (byte-identical to what was parsed).
    pub fn encode(&self) -> Vec<u8> {
        let body_len: usize = self.body_chunks.iter().map(|c| 4 + c.len()).sum();
        let mut out = Vec::with_capacity(self.transcript_bytes.len() + body_len);
        out.extend_from_slice(self.transcript_bytes);
        for c in &self.body_chunks {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }
}

/// How to seal a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealOptions {
    /// HPKE suite for every wrapping and the body; every recipient must offer it.
    pub suite: Suite,
    /// Chunk and message limits for the body.
    pub limits: Limits,
}

fn transcript_hash(transcript_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL_TRANSCRIPT);
    h.update(transcript_bytes);
    h.finalize().into()
}

fn wrap_info(key_id: u8, suite: Suite, header_bytes: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(LABEL_WRAP.len() + 7 + header_bytes.len());
    info.extend_from_slice(LABEL_WRAP);
    info.push(key_id);
    info.extend_from_slice(&suite.id_bytes());
    info.extend_from_slice(header_bytes);
    info
}

fn body_key(suite: Suite, data_key: &[u8], transcript: &[u8; 32]) -> ChunkKey {
    let prk = hkdf::Hkdf::<Sha256>::new(Some(transcript), data_key);
    ChunkKey::derive(suite, &prk, LABEL_BODY)
}

/// Exporter context of the response secret (RFC 9180 §5.3 `Export`), as RFC 9458 §4.4 exports
/// "message/bhttp response". The response keys also bind the request transcript (see
/// `response`).
pub(crate) const RESPONSE_EXPORTER_CONTEXT: &[u8] = b"tandem/v1 response";

/// Seals `body` to every config in `recipients`, using the operating system's RNG.
///
/// Returns the sealed request bytes and the context that opens the response. `created_at` is
/// the caller's clock (Unix seconds).
pub fn seal_request(
    recipients: &[KeyConfig],
    routing: &RoutingMetadata,
    created_at: u64,
    body: &[u8],
    options: &SealOptions,
) -> Result<(Vec<u8>, ResponseContext), Error> {
    seal_request_with_rng(
        recipients,
        routing,
        created_at,
        body,
        options,
        &mut crate::os_rng(),
    )
}

/// [`seal_request`] with the caller's RNG.
pub fn seal_request_with_rng(
    recipients: &[KeyConfig],
    routing: &RoutingMetadata,
    created_at: u64,
    body: &[u8],
    options: &SealOptions,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, ResponseContext), Error> {
    let suite = options.suite;
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(MisuseError::RecipientCount(recipients.len()).into());
    }
    for c in recipients {
        c.require_suite(suite)?;
    }
    if body.len() > options.limits.max_message_len {
        return Err(MisuseError::MessageTooLarge {
            len: body.len(),
            max: options.limits.max_message_len,
        }
        .into());
    }
    let mut request_id = [0u8; REQUEST_ID_LEN];
    rng.fill_bytes(&mut request_id);
    let header = RequestHeader {
        suite,
        request_id: RequestId(request_id),
        created_at,
        routing: routing.clone(),
    };
    header.validate()?;

    let n_chunks = body
        .len()
        .div_ceil(options.limits.max_chunk_len.max(1))
        .max(1);
    let wrap_len = 1 + ENC_LEN + WRAPPED_LEN;
    let mut out = Vec::with_capacity(
        64 + routing.model_id.len()
            + routing.adapter_id.len()
            + recipients.len() * wrap_len
            + body.len()
            + n_chunks * (4 + CHUNK_HEADER_LEN + TAG_LEN),
    );
    header.encode_into(&mut out);
    let header_len = out.len();

    // 1. Fresh data key.
    let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    rng.fill_bytes(&mut data_key[..]);

    // 2. One HPKE wrapping per recipient; keep each context's response export secret.
    out.push(recipients.len() as u8);
    let mut senders = Vec::with_capacity(recipients.len());
    for config in recipients {
        let info = wrap_info(config.key_id(), suite, &out[..header_len]);
        let aad = config.digest();
        let pk = config.hpke_public_key()?;
        let (enc, wrapped, ctx) = match suite {
            Suite::X25519Sha256Aes128Gcm => wrap::<hpke::aead::AesGcm128>(
                config.key_id(),
                &pk,
                &info,
                &aad,
                &data_key[..],
                rng,
            )?,
            Suite::X25519Sha256ChaCha20Poly1305 => wrap::<hpke::aead::ChaCha20Poly1305>(
                config.key_id(),
                &pk,
                &info,
                &aad,
                &data_key[..],
                rng,
            )?,
        };
        out.push(config.key_id());
        out.extend_from_slice(&enc);
        out.extend_from_slice(&wrapped);
        senders.push((enc, ctx));
    }

    // 3. Transcript binds header and every wrapping; 4. seal the body once.
    let transcript = transcript_hash(&out);
    let mut sealer = ChunkSealer::new(body_key(suite, &data_key[..], &transcript), options.limits);
    let max_chunk = options.limits.max_chunk_len.max(1);
    let mut pieces = body.chunks(max_chunk).peekable();
    if pieces.peek().is_none() {
        seal_body_chunk(&mut sealer, &[], true, &mut out)?;
    }
    while let Some(piece) = pieces.next() {
        let is_final = pieces.peek().is_none();
        seal_body_chunk(&mut sealer, piece, is_final, &mut out)?;
    }
    Ok((
        out,
        ResponseContext::new(suite, header.request_id, transcript, senders),
    ))
}

fn seal_body_chunk(
    sealer: &mut ChunkSealer,
    piece: &[u8],
    is_final: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let len_at = out.len();
    out.extend_from_slice(&[0u8; 4]);
    sealer.seal_into(piece, is_final, out)?;
    let framed = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&framed.to_be_bytes());
    Ok(())
}

type Wrapped = ([u8; ENC_LEN], [u8; WRAPPED_LEN], Zeroizing<[u8; 32]>);

fn wrap<A: hpke::aead::Aead>(
    key_id: u8,
    pk: &<HpkeKem as hpke::Kem>::PublicKey,
    info: &[u8],
    aad: &[u8],
    data_key: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Wrapped, Error> {
    // RFC 9180 §5.1.1 SetupBaseS, §5.2 Seal.
    let (enc, mut ctx) =
        hpke::setup_sender_with_rng::<A, Kdf, HpkeKem>(&OpModeS::Base, pk, info, rng)
            // Encap fails only when the DH output is zero: a low-order public key.
            .map_err(|_| KeyConfigError::InvalidPublicKey { key_id })?;
    let ct = ctx
        .seal(data_key, aad)
        .map_err(|_| Error::Crypto("HPKE seal of the data key"))?;
    let wrapped: [u8; WRAPPED_LEN] = ct
        .as_slice()
        .try_into()
        .map_err(|_| Error::Crypto("HPKE wrapping length"))?;
    let mut enc_bytes = [0u8; ENC_LEN];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    let mut secret = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_EXPORTER_CONTEXT, &mut secret[..])
        .map_err(|_| Error::Crypto("HPKE export of the response secret"))?;
    Ok((enc_bytes, wrapped, secret))
}

/// An opened request: the header, the body, and the one-shot [`Responder`] for the reply.
#[derive(Debug)]
pub struct OpenedRequest {
    /// The authenticated header.
    pub header: RequestHeader,
    /// The plaintext body (zeroized on drop).
    pub body: Zeroizing<Vec<u8>>,
    /// Seals the response to the requester.
    pub responder: Responder,
}

/// Opens a sealed request with this node's key. Checks run in this order:
/// 1. framing (header, version, suite, recipient count, metadata, body chunk lengths),
/// 2. the suite is one this key's config offers,
/// 3. some recipient entry carries this key's id,
/// 4. one such entry opens with this key (HPKE `SetupBaseR` + `Open`, binding key id, suite,
///    header and key config digest),
/// 5. the body: every chunk in order, authenticated under the transcript-bound body key, ending
///    with the final chunk, within `limits`.
///
/// Replay is not checked here: pass the header to [`crate::ReplayGuard::check`].
pub fn open_request(key: &NodeKey, sealed: &[u8], limits: &Limits) -> Result<OpenedRequest, Error> {
    // 1.
    let req = SealedRequest::parse(sealed, limits)?;
    let suite = req.header.suite;
    let config = key.config();
    // 2.
    if !config.offers(suite) {
        return Err(RequestError::SuiteNotOffered {
            key_id: config.key_id(),
            suite,
        }
        .into());
    }
    // 3.
    let transcript = transcript_hash(req.transcript_bytes);
    let info = wrap_info(config.key_id(), suite, req.header_bytes);
    let aad = config.digest();
    let mut candidates = req
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key_id == config.key_id())
        .peekable();
    if candidates.peek().is_none() {
        return Err(RequestError::NoWrappingForKey {
            key_id: config.key_id(),
        }
        .into());
    }
    // 4.
    let mut opened = None;
    for (index, r) in candidates {
        let res = match suite {
            Suite::X25519Sha256Aes128Gcm => unwrap::<hpke::aead::AesGcm128>(key, r, &info, &aad),
            Suite::X25519Sha256ChaCha20Poly1305 => {
                unwrap::<hpke::aead::ChaCha20Poly1305>(key, r, &info, &aad)
            }
        };
        if let Some((data_key, secret)) = res {
            opened = Some((index, r.enc, data_key, secret));
            break;
        }
    }
    let Some((index, enc, data_key, secret)) = opened else {
        return Err(RequestError::WrappingOpen {
            key_id: config.key_id(),
        }
        .into());
    };
    // 5.
    let mut opener = ChunkOpener::new(body_key(suite, &data_key[..], &transcript), *limits);
    // Sized up front (framing bounds it by the input length) so the plaintext is never
    // reallocated, leaving unzeroized copies behind.
    let capacity: usize = req
        .body_chunks
        .iter()
        .map(|c| c.len().saturating_sub(crate::stream::MIN_CHUNK_LEN))
        .sum();
    let mut body = Zeroizing::new(Vec::with_capacity(capacity.min(limits.max_message_len)));
    for chunk in &req.body_chunks {
        opener.open_into(chunk, &mut body)?;
    }
    opener.finish()?;
    // Recipient indices are below MAX_RECIPIENTS (16).
    let responder = Responder::new(suite, index as u8, enc, secret, transcript);
    Ok(OpenedRequest {
        header: req.header,
        body,
        responder,
    })
}

type Unwrapped = (Zeroizing<[u8; DATA_KEY_LEN]>, Zeroizing<[u8; 32]>);

fn unwrap<A: hpke::aead::Aead>(
    key: &NodeKey,
    r: &Recipient,
    info: &[u8],
    aad: &[u8],
) -> Option<Unwrapped> {
    // RFC 9180 §5.1.1 SetupBaseR, §5.2 Open.
    let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&r.enc).ok()?;
    let mut ctx =
        hpke::setup_receiver::<A, Kdf, HpkeKem>(&OpModeR::Base, key.secret(), &enc, info).ok()?;
    let pt = Zeroizing::new(ctx.open(&r.wrapped, aad).ok()?);
    let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if pt.len() != DATA_KEY_LEN {
        return None;
    }
    data_key.copy_from_slice(&pt);
    let mut secret = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_EXPORTER_CONTEXT, &mut secret[..])
        .ok()?;
    Some((data_key, secret))
}
