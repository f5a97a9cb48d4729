//! Known-answer tests from data files under `tests/vectors/` (see its README for sources).

use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::Deserialize;
use tandem_proto::{AeadId, KdfId, KemId, KeyConfig, NodeKey, Suite, SymmetricAlgorithm};

fn hex_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    hex::decode(s).map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct HpkeVector {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    #[serde(deserialize_with = "hex_bytes")]
    info: Vec<u8>,
    #[serde(rename = "ikmR", deserialize_with = "hex_bytes")]
    ikm_r: Vec<u8>,
    #[serde(rename = "ikmE", deserialize_with = "hex_bytes")]
    ikm_e: Vec<u8>,
    #[serde(rename = "skRm", deserialize_with = "hex_bytes")]
    sk_rm: Vec<u8>,
    #[serde(rename = "pkRm", deserialize_with = "hex_bytes")]
    pk_rm: Vec<u8>,
    #[serde(deserialize_with = "hex_bytes")]
    enc: Vec<u8>,
    encryptions: Vec<Encryption>,
    exports: Vec<Export>,
}

#[derive(Deserialize)]
struct Encryption {
    #[serde(deserialize_with = "hex_bytes")]
    aad: Vec<u8>,
    #[serde(deserialize_with = "hex_bytes")]
    ct: Vec<u8>,
    #[serde(deserialize_with = "hex_bytes")]
    pt: Vec<u8>,
}

#[derive(Deserialize)]
struct Export {
    #[serde(deserialize_with = "hex_bytes")]
    exporter_context: Vec<u8>,
    #[serde(rename = "L")]
    len: usize,
    #[serde(deserialize_with = "hex_bytes")]
    exported_value: Vec<u8>,
}

/// An "RNG" that hands out fixed bytes: the vector's `ikmE`, so `setup_sender_with_rng` draws
/// exactly the ephemeral key the vector used (rust-hpke's key generation is
/// `DeriveKeyPair(random(Nsk))`).
struct FixedBytes(Vec<u8>);

impl TryRng for FixedBytes {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        unimplemented!("only fill_bytes is used")
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        unimplemented!("only fill_bytes is used")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        assert!(dst.len() <= self.0.len(), "vector has too few ikm bytes");
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}
impl TryCryptoRng for FixedBytes {}

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;

fn check_vector<A: hpke::aead::Aead>(v: &HpkeVector) {
    // Key derivation (RFC 9180 §7.1.3) and Tandem's NodeKey agree with the vector.
    let (sk, pk) = Kem::derive_keypair(&v.ikm_r);
    assert_eq!(sk.to_bytes().as_slice(), v.sk_rm.as_slice());
    assert_eq!(pk.to_bytes().as_slice(), v.pk_rm.as_slice());
    let node = NodeKey::derive(0, &v.ikm_r, &[Suite::default()]).expect("valid");
    assert_eq!(node.config().public_key().as_slice(), v.pk_rm.as_slice());
    let node2 = NodeKey::from_private_key(0, &v.sk_rm, &[Suite::default()]).expect("valid");
    assert_eq!(node2.config(), node.config());

    // Sender side with the vector's ephemeral key.
    let mut rng = FixedBytes(v.ikm_e.clone());
    let (enc, mut sender) =
        hpke::setup_sender_with_rng::<A, Kdf, Kem>(&OpModeS::Base, &pk, &v.info, &mut rng)
            .expect("setup_sender");
    assert_eq!(enc.to_bytes().as_slice(), v.enc.as_slice());

    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&v.enc).expect("enc");
    let mut receiver =
        hpke::setup_receiver::<A, Kdf, Kem>(&OpModeR::Base, &sk, &enc, &v.info).expect("setup");
    // Encryptions are numbered by sequence; every one is checked in order (RFC 9180 §5.2).
    for (seq, e) in v.encryptions.iter().enumerate() {
        let ct = sender.seal(&e.pt, &e.aad).expect("seal");
        assert_eq!(ct, e.ct, "ciphertext {seq}");
        let pt = receiver.open(&e.ct, &e.aad).expect("open");
        assert_eq!(pt, e.pt, "plaintext {seq}");
    }
    for x in &v.exports {
        let mut out = vec![0u8; x.len];
        receiver
            .export(&x.exporter_context, &mut out)
            .expect("export");
        assert_eq!(out, x.exported_value);
        sender
            .export(&x.exporter_context, &mut out)
            .expect("export");
        assert_eq!(out, x.exported_value);
    }
}

#[test]
fn rfc9180_base_mode_vectors_for_tandem_suites() {
    let text = include_str!("vectors/rfc9180-hpke-test-vectors-5f503c5-base-x25519-sha256.json");
    let vectors: Vec<HpkeVector> = serde_json::from_str(text).expect("vector file parses");
    let mut seen = Vec::new();
    for v in &vectors {
        assert_eq!((v.mode, v.kem_id, v.kdf_id), (0, 0x20, 1));
        let suite = Suite::from_ids(KemId(v.kem_id), KdfId(v.kdf_id), AeadId(v.aead_id))
            .expect("file holds only Tandem suites");
        match suite {
            Suite::X25519Sha256Aes128Gcm => check_vector::<hpke::aead::AesGcm128>(v),
            Suite::X25519Sha256ChaCha20Poly1305 => check_vector::<hpke::aead::ChaCha20Poly1305>(v),
        }
        assert_eq!(v.encryptions.len(), 257);
        seen.push(suite);
    }
    // Both suites Tandem implements are covered.
    for s in Suite::ALL {
        assert!(seen.contains(&s), "no vector for {s}");
    }
}

#[derive(Deserialize)]
struct OhttpAppendixA {
    #[serde(rename = "skR", deserialize_with = "hex_bytes")]
    sk_r: Vec<u8>,
    #[serde(deserialize_with = "hex_bytes")]
    key_config: Vec<u8>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    key_id: u8,
    kem_id: u16,
    #[serde(deserialize_with = "hex_bytes")]
    public_key: Vec<u8>,
    symmetric: Vec<Sym>,
}

#[derive(Deserialize)]
struct Sym {
    kdf_id: u16,
    aead_id: u16,
}

#[test]
fn rfc9458_appendix_a_key_config_decodes_to_documented_fields() {
    let v: OhttpAppendixA =
        serde_json::from_str(include_str!("vectors/rfc9458-appendix-a.json")).expect("parses");
    let c = KeyConfig::decode(&v.key_config).expect("Appendix A config decodes");
    assert_eq!(c.key_id(), v.expected.key_id);
    assert_eq!(c.kem(), KemId(v.expected.kem_id));
    assert_eq!(c.public_key().as_slice(), v.expected.public_key.as_slice());
    let sym: Vec<SymmetricAlgorithm> = v
        .expected
        .symmetric
        .iter()
        .map(|s| SymmetricAlgorithm {
            kdf: KdfId(s.kdf_id),
            aead: AeadId(s.aead_id),
        })
        .collect();
    assert_eq!(c.symmetric(), sym.as_slice());
    assert_eq!(
        c.supported_suites().collect::<Vec<_>>(),
        Suite::ALL.to_vec()
    );
    // Re-encodes byte for byte, and the private key in the appendix matches the public key.
    assert_eq!(c.encode(), v.key_config);
    let node = NodeKey::from_private_key(c.key_id(), &v.sk_r, &Suite::ALL).expect("32 bytes");
    assert_eq!(node.config(), &c);
    // The list form wraps it with a 2-byte length.
    let list = KeyConfig::encode_list(std::slice::from_ref(&c));
    assert_eq!(&list[..2], &(v.key_config.len() as u16).to_be_bytes());
    assert_eq!(KeyConfig::decode_list(&list).expect("list"), vec![c]);
}

#[test]
fn ohttp_crate_reads_tandem_key_configs() {
    // Interop: a Tandem node's ohttp-keys list is read by the `ohttp` crate (RFC 9458 software).
    let node =
        NodeKey::derive(0x2a, b"interop ikm for tandem key config", &Suite::ALL).expect("valid");
    let list = KeyConfig::encode_list(&[node.config().clone()]);
    let mut ohttp_configs = ohttp::KeyConfig::decode_list(&list).expect("ohttp decodes our list");
    assert_eq!(ohttp_configs.len(), 1);
    let encoded = ohttp_configs.remove(0).encode().expect("ohttp re-encodes");
    assert_eq!(encoded, node.config().encode());
}
