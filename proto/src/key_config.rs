//! HPKE key configurations in the Oblivious HTTP encoding (RFC 9458 §3).
//!
//! A node publishes a [`KeyConfig`]; its attestation evidence binds [`KeyConfig::digest`]; a
//! device seals requests to it. The node keeps the matching [`NodeKey`] in memory only.
//!
//! ```text
//! RFC 9458 §3.1
//! HPKE Symmetric Algorithms {
//!   HPKE KDF ID (16),
//!   HPKE AEAD ID (16),
//! }
//! Key Config {
//!   Key Identifier (8),
//!   HPKE KEM ID (16),
//!   HPKE Public Key (Npk * 8),
//!   HPKE Symmetric Algorithms Length (16) = 4..65532,
//!   HPKE Symmetric Algorithms (32) ...,
//! }
//! ```
//!
//! The `application/ohttp-keys` form (RFC 9458 §3.2) is a concatenation of key configs, each
//! prefixed by its 2-byte length: [`KeyConfig::encode_list`], [`KeyConfig::decode_list`].

use std::fmt;

use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, Kem as _, Serializable};
use sha2_hpke::{Digest, Sha256};

use crate::codec::Reader;
use crate::error::{Error, KeyConfigError, MisuseError};

/// The HPKE KEM this crate implements.
pub(crate) type HpkeKem = hpke::kem::X25519HkdfSha256;

/// Length of an X25519 public key (Npk, RFC 9180 §7.1).
pub const X25519_PUBLIC_KEY_LEN: usize = 32;

/// An HPKE KEM identifier (RFC 9180 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KemId(pub u16);

impl KemId {
    /// DHKEM(X25519, HKDF-SHA256).
    pub const X25519_HKDF_SHA256: KemId = KemId(0x0020);
}

/// An HPKE KDF identifier (RFC 9180 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KdfId(pub u16);

impl KdfId {
    /// HKDF-SHA256.
    pub const HKDF_SHA256: KdfId = KdfId(0x0001);
}

/// An HPKE AEAD identifier (RFC 9180 §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AeadId(pub u16);

impl AeadId {
    /// AES-128-GCM.
    pub const AES_128_GCM: AeadId = AeadId(0x0001);
    /// ChaCha20-Poly1305.
    pub const CHACHA20_POLY1305: AeadId = AeadId(0x0003);
}

/// One `HPKE Symmetric Algorithms` entry of a key config. Unknown identifiers are kept as
/// they are, so a config decoded from other OHTTP software re-encodes byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SymmetricAlgorithm {
    /// The KDF.
    pub kdf: KdfId,
    /// The AEAD.
    pub aead: AeadId,
}

/// A complete HPKE suite Tandem implements. The KEM is always DHKEM(X25519, HKDF-SHA256) and
/// the KDF always HKDF-SHA256; the AEAD varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// X25519-HKDF-SHA256 / HKDF-SHA256 / AES-128-GCM (the default; AES-NI makes it fastest).
    #[default]
    X25519Sha256Aes128Gcm,
    /// X25519-HKDF-SHA256 / HKDF-SHA256 / ChaCha20-Poly1305 (for machines without AES hardware).
    X25519Sha256ChaCha20Poly1305,
}

impl Suite {
    /// Every suite, default first.
    pub const ALL: [Suite; 2] = [
        Suite::X25519Sha256Aes128Gcm,
        Suite::X25519Sha256ChaCha20Poly1305,
    ];

    /// The KEM identifier.
    pub fn kem(self) -> KemId {
        KemId::X25519_HKDF_SHA256
    }

    /// The KDF identifier.
    pub fn kdf(self) -> KdfId {
        KdfId::HKDF_SHA256
    }

    /// The AEAD identifier.
    pub fn aead(self) -> AeadId {
        match self {
            Suite::X25519Sha256Aes128Gcm => AeadId::AES_128_GCM,
            Suite::X25519Sha256ChaCha20Poly1305 => AeadId::CHACHA20_POLY1305,
        }
    }

    /// The suite for these identifiers, if Tandem implements it.
    pub fn from_ids(kem: KemId, kdf: KdfId, aead: AeadId) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.kem() == kem && s.kdf() == kdf && s.aead() == aead)
    }

    /// The symmetric-algorithm pair of this suite.
    pub fn symmetric(self) -> SymmetricAlgorithm {
        SymmetricAlgorithm {
            kdf: self.kdf(),
            aead: self.aead(),
        }
    }

    /// AEAD key length Nk in bytes (RFC 9180 §7.3).
    pub fn aead_key_len(self) -> usize {
        match self {
            Suite::X25519Sha256Aes128Gcm => 16,
            Suite::X25519Sha256ChaCha20Poly1305 => 32,
        }
    }

    /// The six identifier bytes `kem || kdf || aead`, as bound into AADs and HPKE info strings.
    pub(crate) fn id_bytes(self) -> [u8; 6] {
        let mut out = [0u8; 6];
        out[0..2].copy_from_slice(&self.kem().0.to_be_bytes());
        out[2..4].copy_from_slice(&self.kdf().0.to_be_bytes());
        out[4..6].copy_from_slice(&self.aead().0.to_be_bytes());
        out
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suite::X25519Sha256Aes128Gcm => {
                f.write_str("X25519-HKDF-SHA256/HKDF-SHA256/AES-128-GCM")
            }
            Suite::X25519Sha256ChaCha20Poly1305 => {
                f.write_str("X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20-Poly1305")
            }
        }
    }
}

/// A node's public HPKE key configuration (RFC 9458 §3.1).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyConfig {
    key_id: u8,
    public_key: [u8; X25519_PUBLIC_KEY_LEN],
    symmetric: Vec<SymmetricAlgorithm>,
}

/// Largest number of symmetric algorithm entries: the 16-bit length is at most 65532 (RFC 9458 §3.1).
const MAX_SYMMETRIC: usize = 65532 / 4;

impl KeyConfig {
    /// A key config for an X25519 public key offering `suites`.
    pub fn new(
        key_id: u8,
        public_key: [u8; X25519_PUBLIC_KEY_LEN],
        suites: &[Suite],
    ) -> Result<KeyConfig, Error> {
        Self::with_symmetric(
            key_id,
            public_key,
            suites.iter().map(|s| s.symmetric()).collect(),
        )
    }

    /// A key config with an explicit symmetric algorithm list (which may name algorithms this
    /// crate does not implement).
    pub fn with_symmetric(
        key_id: u8,
        public_key: [u8; X25519_PUBLIC_KEY_LEN],
        symmetric: Vec<SymmetricAlgorithm>,
    ) -> Result<KeyConfig, Error> {
        if symmetric.is_empty() || symmetric.len() > MAX_SYMMETRIC {
            return Err(MisuseError::SymmetricAlgorithmCount(symmetric.len()).into());
        }
        Ok(KeyConfig {
            key_id,
            public_key,
            symmetric,
        })
    }

    /// The key identifier (RFC 9458 §3.1), chosen by the node; not globally unique.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The KEM (always DHKEM(X25519, HKDF-SHA256)).
    pub fn kem(&self) -> KemId {
        KemId::X25519_HKDF_SHA256
    }

    /// The serialized HPKE public key (`SerializePublicKey`, RFC 9180 §7.1.1).
    pub fn public_key(&self) -> &[u8; X25519_PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// The symmetric algorithm list, in the node's order of preference.
    pub fn symmetric(&self) -> &[SymmetricAlgorithm] {
        &self.symmetric
    }

    /// The suites in the list that this crate implements, in the node's order.
    pub fn supported_suites(&self) -> impl Iterator<Item = Suite> + '_ {
        self.symmetric
            .iter()
            .filter_map(|s| Suite::from_ids(self.kem(), s.kdf, s.aead))
    }

    /// Whether the config offers `suite`.
    pub fn offers(&self, suite: Suite) -> bool {
        self.supported_suites().any(|s| s == suite)
    }

    /// `suite` if the config offers it, else an error naming the config.
    pub fn require_suite(&self, suite: Suite) -> Result<Suite, KeyConfigError> {
        if self.offers(suite) {
            Ok(suite)
        } else if self.supported_suites().next().is_none() {
            Err(KeyConfigError::NoSupportedSuite {
                key_id: self.key_id,
            })
        } else {
            Err(KeyConfigError::SuiteNotOffered {
                key_id: self.key_id,
                suite,
            })
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        1 + 2 + X25519_PUBLIC_KEY_LEN + 2 + 4 * self.symmetric.len()
    }

    /// The RFC 9458 §3.1 encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.key_id);
        out.extend_from_slice(&self.kem().0.to_be_bytes());
        out.extend_from_slice(&self.public_key);
        // At most MAX_SYMMETRIC entries (checked at construction), so this fits in 16 bits.
        let sym_len = (4 * self.symmetric.len()) as u16;
        out.extend_from_slice(&sym_len.to_be_bytes());
        for s in &self.symmetric {
            out.extend_from_slice(&s.kdf.0.to_be_bytes());
            out.extend_from_slice(&s.aead.0.to_be_bytes());
        }
    }

    /// Decodes exactly one key config; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<KeyConfig, KeyConfigError> {
        let mut r = Reader::new(bytes);
        let config = Self::read(&mut r)?;
        if !r.is_empty() {
            return Err(KeyConfigError::TrailingBytes(r.remaining()));
        }
        Ok(config)
    }

    fn read(r: &mut Reader<'_>) -> Result<KeyConfig, KeyConfigError> {
        let key_id = r.u8("key identifier")?;
        let kem = r.u16("HPKE KEM ID")?;
        if KemId(kem) != KemId::X25519_HKDF_SHA256 {
            return Err(KeyConfigError::UnsupportedKem(kem));
        }
        let public_key = r.array::<X25519_PUBLIC_KEY_LEN>("HPKE public key")?;
        let sym_len = usize::from(r.u16("HPKE symmetric algorithms length")?);
        if sym_len == 0 || sym_len % 4 != 0 || sym_len > 65532 {
            return Err(KeyConfigError::SymmetricListLength(sym_len));
        }
        let mut sym = Reader::new(r.bytes(sym_len, "HPKE symmetric algorithms")?);
        let mut symmetric = Vec::with_capacity(sym_len / 4);
        while !sym.is_empty() {
            symmetric.push(SymmetricAlgorithm {
                kdf: KdfId(sym.u16("HPKE KDF ID")?),
                aead: AeadId(sym.u16("HPKE AEAD ID")?),
            });
        }
        Ok(KeyConfig {
            key_id,
            public_key,
            symmetric,
        })
    }

    /// The `application/ohttp-keys` encoding of `configs` (RFC 9458 §3.2): each config
    /// prefixed by its 2-byte length.
    pub fn encode_list(configs: &[KeyConfig]) -> Vec<u8> {
        let mut out = Vec::with_capacity(configs.iter().map(|c| 2 + c.encoded_len()).sum());
        for c in configs {
            // encoded_len <= 1 + 2 + 32 + 2 + 65532 < 65536 only if the list is short enough;
            // MAX_SYMMETRIC keeps the symmetric part at 65532, so cap the whole entry.
            let body = c.encode();
            let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body[..usize::from(len)]);
        }
        out
    }

    /// Decodes an `application/ohttp-keys` list (RFC 9458 §3.2). An empty input is an empty list.
    pub fn decode_list(bytes: &[u8]) -> Result<Vec<KeyConfig>, KeyConfigError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while !r.is_empty() {
            let declared = usize::from(r.u16("ohttp-keys entry length")?);
            let entry = r.bytes(declared, "ohttp-keys entry")?;
            let mut er = Reader::new(entry);
            let config = Self::read(&mut er)?;
            if !er.is_empty() {
                return Err(KeyConfigError::ListEntryLength {
                    index: out.len(),
                    declared,
                    parsed: er.position(),
                });
            }
            out.push(config);
        }
        Ok(out)
    }

    /// SHA-256 of [`KeyConfig::encode`]: the value attestation evidence binds.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The HPKE public key object.
    pub(crate) fn hpke_public_key(
        &self,
    ) -> Result<<HpkeKem as hpke::Kem>::PublicKey, KeyConfigError> {
        <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&self.public_key).map_err(|_| {
            KeyConfigError::InvalidPublicKey {
                key_id: self.key_id,
            }
        })
    }
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("key_id", &self.key_id)
            .field("kem", &self.kem())
            .field("public_key", &HexBytes(&self.public_key))
            .field("symmetric", &self.symmetric)
            .finish()
    }
}

pub(crate) struct HexBytes<'a>(pub &'a [u8]);

impl fmt::Debug for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A node's HPKE private key with its public [`KeyConfig`]. Lives in memory only; the private
/// key is zeroized on drop (by `x25519-dalek`) and never printed.
#[derive(Clone)]
pub struct NodeKey {
    config: KeyConfig,
    secret: <HpkeKem as hpke::Kem>::PrivateKey,
}

impl NodeKey {
    /// A fresh key pair from the operating system's RNG.
    pub fn generate(key_id: u8, suites: &[Suite]) -> Result<NodeKey, Error> {
        Self::generate_with_rng(key_id, suites, &mut crate::os_rng())
    }

    /// A fresh key pair from `rng`.
    pub fn generate_with_rng(
        key_id: u8,
        suites: &[Suite],
        rng: &mut impl CryptoRng,
    ) -> Result<NodeKey, Error> {
        let (secret, public) = HpkeKem::gen_keypair_with_rng(rng);
        Self::assemble(key_id, secret, &public, suites)
    }

    /// The key pair `DeriveKeyPair(ikm)` (RFC 9180 §7.1.3); deterministic.
    pub fn derive(key_id: u8, ikm: &[u8], suites: &[Suite]) -> Result<NodeKey, Error> {
        let (secret, public) = HpkeKem::derive_keypair(ikm);
        Self::assemble(key_id, secret, &public, suites)
    }

    /// A node key from a serialized X25519 private key (RFC 9180 `SerializePrivateKey`).
    pub fn from_private_key(
        key_id: u8,
        private_key: &[u8],
        suites: &[Suite],
    ) -> Result<NodeKey, Error> {
        let secret = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(private_key)
            .map_err(|_| MisuseError::PrivateKeyLength(private_key.len()))?;
        let public = HpkeKem::sk_to_pk(&secret);
        Self::assemble(key_id, secret, &public, suites)
    }

    fn assemble(
        key_id: u8,
        secret: <HpkeKem as hpke::Kem>::PrivateKey,
        public: &<HpkeKem as hpke::Kem>::PublicKey,
        suites: &[Suite],
    ) -> Result<NodeKey, Error> {
        let mut pk = [0u8; X25519_PUBLIC_KEY_LEN];
        pk.copy_from_slice(&public.to_bytes());
        Ok(NodeKey {
            config: KeyConfig::new(key_id, pk, suites)?,
            secret,
        })
    }

    /// The public key config to publish.
    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    pub(crate) fn secret(&self) -> &<HpkeKem as hpke::Kem>::PrivateKey {
        &self.secret
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("config", &self.config)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyConfig {
        let key = NodeKey::derive(7, b"tandem key config test ikm 32 by", &Suite::ALL)
            .expect("valid suites");
        key.config().clone()
    }

    #[test]
    fn round_trip_single_and_list() {
        let c = sample();
        let bytes = c.encode();
        assert_eq!(bytes.len(), c.encoded_len());
        assert_eq!(KeyConfig::decode(&bytes), Ok(c.clone()));
        let mut other = c.clone();
        other.key_id = 9;
        let list = KeyConfig::encode_list(&[c.clone(), other.clone()]);
        assert_eq!(KeyConfig::decode_list(&list), Ok(vec![c, other]));
        assert_eq!(KeyConfig::decode_list(&[]), Ok(vec![]));
    }

    #[test]
    fn unknown_symmetric_algorithms_survive_round_trip() {
        let sym = vec![
            SymmetricAlgorithm {
                kdf: KdfId(0x0003),
                aead: AeadId(0x0002),
            },
            Suite::X25519Sha256ChaCha20Poly1305.symmetric(),
        ];
        let c = KeyConfig::with_symmetric(1, [5u8; 32], sym).expect("valid");
        let d = KeyConfig::decode(&c.encode()).expect("decodes");
        assert_eq!(d, c);
        assert_eq!(
            d.supported_suites().collect::<Vec<_>>(),
            vec![Suite::X25519Sha256ChaCha20Poly1305]
        );
        assert_eq!(
            d.require_suite(Suite::X25519Sha256Aes128Gcm),
            Err(KeyConfigError::SuiteNotOffered {
                key_id: 1,
                suite: Suite::X25519Sha256Aes128Gcm
            })
        );
        let none = KeyConfig::with_symmetric(
            2,
            [5u8; 32],
            vec![SymmetricAlgorithm {
                kdf: KdfId(2),
                aead: AeadId(2),
            }],
        )
        .expect("valid");
        assert_eq!(
            none.require_suite(Suite::default()),
            Err(KeyConfigError::NoSupportedSuite { key_id: 2 })
        );
    }

    #[test]
    fn empty_symmetric_list_is_misuse() {
        assert_eq!(
            KeyConfig::new(1, [0; 32], &[]),
            Err(Error::Misuse(MisuseError::SymmetricAlgorithmCount(0)))
        );
    }

    #[test]
    fn truncation_at_every_offset_is_reported() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            match KeyConfig::decode(&bytes[..cut]) {
                Err(KeyConfigError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
        let list = KeyConfig::encode_list(&[sample()]);
        for cut in 1..list.len() {
            match KeyConfig::decode_list(&list[..cut]) {
                Err(KeyConfigError::Truncated { .. }) => {}
                other => panic!("list cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(
            KeyConfig::decode(&bytes),
            Err(KeyConfigError::TrailingBytes(1))
        );
    }

    #[test]
    fn bad_lengths_and_kem_rejected() {
        let mut bytes = sample().encode();
        bytes[1] = 0x00;
        bytes[2] = 0x10; // P-256
        assert_eq!(
            KeyConfig::decode(&bytes),
            Err(KeyConfigError::UnsupportedKem(0x0010))
        );
        let mut bytes = sample().encode();
        bytes[35] = 0;
        bytes[36] = 6; // not a multiple of 4
        assert_eq!(
            KeyConfig::decode(&bytes),
            Err(KeyConfigError::SymmetricListLength(6))
        );
        // A list entry whose length prefix is longer than the config inside it.
        let c = sample().encode();
        let mut list = ((c.len() + 1) as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&c);
        list.push(0);
        assert_eq!(
            KeyConfig::decode_list(&list),
            Err(KeyConfigError::ListEntryLength {
                index: 0,
                declared: c.len() + 1,
                parsed: c.len()
            })
        );
    }

    #[test]
    fn every_bit_flip_decodes_to_a_different_config_or_errors() {
        let c = sample();
        let bytes = c.encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(d) = KeyConfig::decode(&b) {
                    assert_ne!(
                        d, c,
                        "flip of byte {i} bit {bit} decoded to the same config"
                    );
                    assert_ne!(d.digest(), c.digest());
                    assert_eq!(d.encode(), b, "decode/encode round trip broke");
                }
            }
        }
    }

    #[test]
    fn digest_is_sha256_of_encoding() {
        let c = sample();
        let expected: [u8; 32] = Sha256::digest(c.encode()).into();
        assert_eq!(c.digest(), expected);
        assert_ne!(c.digest(), [0u8; 32]);
    }

    #[test]
    fn node_key_debug_hides_secret_and_matches_public_key() {
        let k = NodeKey::from_private_key(3, &[0x42; 32], &[Suite::default()]).expect("32 bytes");
        assert!(format!("{k:?}").contains("<redacted>"));
        assert_eq!(
            NodeKey::from_private_key(3, &[0x42; 31], &[Suite::default()]).map(|_| ()),
            Err(Error::Misuse(MisuseError::PrivateKeyLength(31)))
        );
        let pk = HpkeKem::sk_to_pk(k.secret()).to_bytes();
        assert_eq!(&pk[..], &k.config().public_key()[..]);
    }
}
