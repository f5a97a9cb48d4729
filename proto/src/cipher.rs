//! The symmetric layer: AEAD keys with sequence-numbered nonces, and HKDF-SHA256 derivations.
//!
//! Keys here never come from the wire; they are derived from a fresh data key (requests) or an
//! HPKE export secret (responses).

use aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use sha2_hpke::Sha256;
use zeroize::Zeroizing;

use crate::key_config::Suite;

/// AEAD tag length for both suites (Nt, RFC 9180 §7.3).
pub const TAG_LEN: usize = 16;
/// AEAD nonce length for both suites (Nn, RFC 9180 §7.3).
pub const NONCE_LEN: usize = 12;

#[derive(Clone)]
enum Inner {
    Aes128Gcm(Box<aes_gcm::Aes128Gcm>),
    ChaCha20Poly1305(Box<chacha20poly1305::ChaCha20Poly1305>),
}

/// An AEAD key and base nonce; the nonce for chunk `seq` is `base_nonce XOR I2OSP(seq, Nn)`,
/// as in RFC 9180 §5.2 `ComputeNonce`.
#[derive(Clone)]
pub(crate) struct ChunkKey {
    inner: Inner,
    base_nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey(<redacted>)")
    }
}

/// The AEAD refused to seal (input beyond its length limit).
#[derive(Debug)]
pub(crate) struct SealFailed;

/// The AEAD rejected a ciphertext (wrong key, or altered bytes).
#[derive(Debug)]
pub(crate) struct Inauthentic;

impl ChunkKey {
    /// Derives key and base nonce: `HKDF-Expand(prk, label || "key", Nk)` and
    /// `HKDF-Expand(prk, label || "nonce", Nn)`.
    pub(crate) fn derive(suite: Suite, prk: &Hkdf<Sha256>, label: &[u8]) -> ChunkKey {
        let mut base_nonce = [0u8; NONCE_LEN];
        expand(prk, &[label, b" nonce"], &mut base_nonce);
        let inner = match suite {
            Suite::X25519Sha256Aes128Gcm => {
                let mut key = Zeroizing::new([0u8; 16]);
                expand(prk, &[label, b" key"], &mut key[..]);
                Inner::Aes128Gcm(Box::new(aes_gcm::Aes128Gcm::new(&(*key).into())))
            }
            Suite::X25519Sha256ChaCha20Poly1305 => {
                let mut key = Zeroizing::new([0u8; 32]);
                expand(prk, &[label, b" key"], &mut key[..]);
                Inner::ChaCha20Poly1305(Box::new(chacha20poly1305::ChaCha20Poly1305::new(
                    &(*key).into(),
                )))
            }
        };
        ChunkKey { inner, base_nonce }
    }

    fn nonce(&self, seq: u32) -> [u8; NONCE_LEN] {
        let mut n = self.base_nonce;
        for (b, s) in n[NONCE_LEN - 4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Encrypts `buf[start..]` in place and appends the tag.
    pub(crate) fn seal_in_place(
        &self,
        seq: u32,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), SealFailed> {
        let nonce = self.nonce(seq);
        let tag = match &self.inner {
            Inner::Aes128Gcm(c) => c
                .encrypt_inout_detached(&nonce.into(), aad, (&mut buf[start..]).into())
                .map(<[u8; TAG_LEN]>::from),
            Inner::ChaCha20Poly1305(c) => c
                .encrypt_inout_detached(&nonce.into(), aad, (&mut buf[start..]).into())
                .map(<[u8; TAG_LEN]>::from),
        };
        // Encryption fails only for inputs longer than 2^36 bytes (AES-GCM) or 2^38 (ChaCha),
        // far above any chunk limit.
        buf.extend_from_slice(&tag.map_err(|_| SealFailed)?);
        Ok(())
    }

    /// Decrypts `ct_and_tag` (ciphertext followed by the tag), appending the plaintext to
    /// `out`. On failure `out` is left as it was. Both AEADs check the tag before decrypting,
    /// so no unauthenticated plaintext is ever written.
    pub(crate) fn open_into(
        &self,
        seq: u32,
        aad: &[u8],
        ct_and_tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Inauthentic> {
        let Some(ct_len) = ct_and_tag.len().checked_sub(TAG_LEN) else {
            return Err(Inauthentic);
        };
        let (ct, tag) = ct_and_tag.split_at(ct_len);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Inauthentic)?;
        let start = out.len();
        out.extend_from_slice(ct);
        let nonce = self.nonce(seq);
        let buf = &mut out[start..];
        let ok = match &self.inner {
            Inner::Aes128Gcm(c) => c
                .decrypt_inout_detached(&nonce.into(), aad, buf.into(), &tag.into())
                .is_ok(),
            Inner::ChaCha20Poly1305(c) => c
                .decrypt_inout_detached(&nonce.into(), aad, buf.into(), &tag.into())
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            out.truncate(start);
            Err(Inauthentic)
        }
    }
}

/// `HKDF-Expand(prk, concat(info), out.len())`; `out` is at most 255 * 32 bytes everywhere in
/// this crate, the only case in which HKDF-Expand fails.
pub(crate) fn expand(prk: &Hkdf<Sha256>, info: &[&[u8]], out: &mut [u8]) {
    if prk.expand_multi_info(info, out).is_err() {
        out.fill(0);
    }
}
