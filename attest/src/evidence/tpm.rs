//! TPM 2.0 quotes, verifier side (pure Rust: the device never links a TSS).
//!
//! The measured launcher (`tandem-launch`) extended the launch PCR
//! ([`super::eventlog::LAUNCH_PCR`], 13: only a reboot resets it) and wrote every extension to
//! an event log before it ran the node; the node only quotes. `TPM2_Quote` covers
//! `{sha256: [13]}` with qualifying data [`super::EvidenceClaims::tpm_qualifying_data`], signed
//! (ECDSA P-256, SHA-256) by an attestation key that the fleet CA certified; the verifier
//! replays the event log against the quoted PCR ([`super::eventlog::LaunchPolicy::check`]).

use sha2::{Digest as _, Sha256};

use super::eventlog::{EventLog, LAUNCH_PCR};
use super::{EvidenceClaims, EvidenceError};
/// `TPM_GENERATED_VALUE` (TPM 2.0 Part 2 §6.2).
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE` (Part 2 §6.9).
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256` (Part 2 §6.3).
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// Largest accepted `TPMS_ATTEST`.
pub const MAX_ATTEST: usize = 1024;

/// One `TPMS_PCR_SELECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// Hash algorithm of the bank.
    pub hash: u16,
    /// Bitmap: bit `i % 8` of byte `i / 8` selects PCR `i`.
    pub bitmap: Vec<u8>,
}

/// A parsed `TPMS_ATTEST` of type quote (TPM 2.0 Part 2 §10.12.12, §10.12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmQuote {
    raw: Vec<u8>,
    /// `qualifiedSigner` (the AK's qualified name).
    pub qualified_signer: Vec<u8>,
    /// `extraData` (the qualifying data).
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock`.
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: u8,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// `attested.quote.pcrSelect`.
    pub pcr_select: Vec<PcrSelection>,
    /// `attested.quote.pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EvidenceError> {
        if self.b.len() < n {
            return Err(EvidenceError::Quote(format!(
                "TPMS_ATTEST truncated in {what}"
            )));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, EvidenceError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, EvidenceError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, EvidenceError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, EvidenceError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn tpm2b(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, EvidenceError> {
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(EvidenceError::Quote(format!(
                "{what} is {n} bytes, over the {max}-byte limit"
            )));
        }
        Ok(self.take(n, what)?.to_vec())
    }
}

impl TpmQuote {
    /// Parses untrusted `TPMS_ATTEST` bytes; all bytes must be consumed.
    pub fn parse(raw: Vec<u8>) -> Result<Self, EvidenceError> {
        if raw.len() > MAX_ATTEST {
            return Err(EvidenceError::Quote(format!(
                "TPMS_ATTEST of {} bytes is too long",
                raw.len()
            )));
        }
        let mut r = Reader { b: &raw };
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(EvidenceError::Quote(format!(
                "magic {magic:#x} is not TPM_GENERATED_VALUE; not made by a TPM"
            )));
        }
        let ty = r.u16("type")?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(EvidenceError::Quote(format!(
                "type {ty:#x} is not TPM_ST_ATTEST_QUOTE"
            )));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", 68)?;
        let extra_data = r.tpm2b("extraData", 64)?;
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = r.u8("clockInfo.safe")?;
        let firmware_version = r.u64("firmwareVersion")?;
        let count = r.u32("pcrSelect.count")?;
        if count > 16 {
            return Err(EvidenceError::Quote(format!(
                "{count} PCR selections is too many"
            )));
        }
        let mut pcr_select = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash = r.u16("pcrSelect.hash")?;
            let size = r.u8("pcrSelect.sizeofSelect")? as usize;
            if size > 32 {
                return Err(EvidenceError::Quote(format!(
                    "PCR bitmap of {size} bytes is too long"
                )));
            }
            pcr_select.push(PcrSelection {
                hash,
                bitmap: r.take(size, "pcrSelect.pcrSelect")?.to_vec(),
            });
        }
        let pcr_digest = r.tpm2b("pcrDigest", 64)?;
        if !r.b.is_empty() {
            return Err(EvidenceError::Quote(format!(
                "{} trailing bytes after TPMS_ATTEST",
                r.b.len()
            )));
        }
        let raw_owned = raw.clone();
        Ok(Self {
            raw: raw_owned,
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }

    /// The raw `TPMS_ATTEST` bytes (what the attestation key signed).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Checks that the quote binds `claims` (qualifying data) and selects exactly
    /// `{sha256: [13]}`, the launch PCR. What the PCR holds is checked against the event log
    /// by [`super::eventlog::LaunchPolicy::check`].
    pub fn check_binding(&self, claims: &EvidenceClaims) -> Result<(), EvidenceError> {
        if self.extra_data != claims.tpm_qualifying_data() {
            return Err(EvidenceError::Quote(
                "qualifying data does not bind these key configs, expiry and nonce; the quote was made for other keys".into(),
            ));
        }
        let want_bitmap = launch_pcr_bitmap();
        let only_launch_pcr = matches!(self.pcr_select.as_slice(), [s] if s.hash == TPM_ALG_SHA256 && s.bitmap == want_bitmap);
        if !only_launch_pcr {
            let selected: Vec<String> = self
                .pcr_select
                .iter()
                .flat_map(|s| {
                    (0..s.bitmap.len() * 8)
                        .filter(|i| s.bitmap[i / 8] >> (i % 8) & 1 == 1)
                        .map(move |i| format!("{:#06x}:{i}", s.hash))
                })
                .collect();
            return Err(EvidenceError::Quote(format!(
                "quote selects PCRs [{}] but must select exactly sha256 PCR {LAUNCH_PCR}, the \
                 launch PCR that only a reboot resets (a quote of resettable PCR 23 proves \
                 nothing); start the node through tandem-launch",
                selected.join(", ")
            )));
        }
        Ok(())
    }

    /// Builds `TPMS_ATTEST` bytes for a quote (used by tests and fuzzing seeds to make
    /// well-formed quotes without a TPM; the TPM path produces them itself).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        qualified_signer: &[u8],
        extra_data: &[u8],
        clock: u64,
        reset_count: u32,
        restart_count: u32,
        safe: u8,
        firmware_version: u64,
        pcr_select: &[PcrSelection],
        pcr_digest: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        b.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        for x in [qualified_signer, extra_data] {
            b.extend_from_slice(&(x.len() as u16).to_be_bytes());
            b.extend_from_slice(x);
        }
        b.extend_from_slice(&clock.to_be_bytes());
        b.extend_from_slice(&reset_count.to_be_bytes());
        b.extend_from_slice(&restart_count.to_be_bytes());
        b.push(safe);
        b.extend_from_slice(&firmware_version.to_be_bytes());
        b.extend_from_slice(&(pcr_select.len() as u32).to_be_bytes());
        for s in pcr_select {
            b.extend_from_slice(&s.hash.to_be_bytes());
            b.push(s.bitmap.len() as u8);
            b.extend_from_slice(&s.bitmap);
        }
        b.extend_from_slice(&(pcr_digest.len() as u16).to_be_bytes());
        b.extend_from_slice(pcr_digest);
        b
    }
}

/// The `pcrSelect` bitmap of the launch PCR alone (3 bytes, PC Client's 24 PCRs).
pub fn launch_pcr_bitmap() -> Vec<u8> {
    let mut b = vec![0u8; 3];
    b[(LAUNCH_PCR / 8) as usize] = 1 << (LAUNCH_PCR % 8);
    b
}

/// The quote a TPM would produce for `claims` with its launch PCR holding what `log` replays
/// to, for tests (see [`TpmQuote::encode`]).
pub fn synthetic_quote_bytes(claims: &EvidenceClaims, log: &EventLog) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(log.replay()).into();
    TpmQuote::encode(
        &[0x00, 0x0b, 1, 2, 3],
        &claims.tpm_qualifying_data(),
        1000,
        1,
        0,
        1,
        0x2019_0125,
        &[PcrSelection {
            hash: TPM_ALG_SHA256,
            bitmap: launch_pcr_bitmap(),
        }],
        &digest,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;
    use crate::evidence::EventKind;

    fn claims() -> EvidenceClaims {
        EvidenceClaims {
            key_config_digest: Sha256Digest::of(b"k"),
            release_digest: Sha256Digest::of(b"r"),
            key_expiry: 7,
            nonce: None,
        }
    }

    fn log() -> EventLog {
        let mut l = EventLog::new();
        l.push(EventKind::Release, Sha256Digest::of(b"r"))
            .expect("room");
        l
    }

    fn pcr_digest(l: &EventLog) -> Vec<u8> {
        Sha256::digest(l.replay()).to_vec()
    }

    #[test]
    fn parse_round_trip_and_binding() {
        let c = claims();
        let raw = synthetic_quote_bytes(&c, &log());
        let q = TpmQuote::parse(raw.clone()).expect("parses");
        assert_eq!(q.raw(), raw.as_slice());
        assert_eq!(q.pcr_digest, pcr_digest(&log()));
        q.check_binding(&c).expect("binds");
        let mut other = c.clone();
        other.key_config_digest = Sha256Digest::of(b"other");
        assert!(q.check_binding(&other).is_err());
        other = c.clone();
        other.key_expiry = 8;
        assert!(q.check_binding(&other).is_err());
        // A quote of PCR 23 (resettable from software) is refused, naming what it selected.
        let pcr23 = TpmQuote::encode(
            &[0x00, 0x0b],
            &c.tpm_qualifying_data(),
            1,
            1,
            0,
            1,
            0,
            &[PcrSelection {
                hash: TPM_ALG_SHA256,
                bitmap: vec![0, 0, 0x80],
            }],
            &pcr_digest(&log()),
        );
        let e = TpmQuote::parse(pcr23)
            .expect("parses")
            .check_binding(&c)
            .expect_err("PCR 23 refused");
        assert!(e.to_string().contains("[0x000b:23]"), "{e}");
        assert!(e.to_string().contains("PCR 13"), "{e}");
    }

    #[test]
    fn truncate_and_flip() {
        let c = claims();
        let raw = synthetic_quote_bytes(&c, &log());
        for cut in 0..raw.len() {
            assert!(TpmQuote::parse(raw[..cut].to_vec()).is_err(), "cut {cut}");
        }
        let mut extended = raw.clone();
        extended.push(0);
        assert!(TpmQuote::parse(extended).is_err());
        for i in 0..raw.len() {
            let mut b = raw.clone();
            b[i] ^= 0x01;
            // Flips in clock/firmware fields still parse and still bind (the signature covers
            // them); every other flip must either fail to parse, fail to bind, or change the
            // quoted PCR value (which the event-log replay then refuses).
            if let Ok(q) = TpmQuote::parse(b) {
                let binds = q.check_binding(&c).is_ok() && q.pcr_digest == pcr_digest(&log());
                let harmless = q.clock != 1000
                    || q.reset_count != 1
                    || q.restart_count != 0
                    || q.safe != 1
                    || q.firmware_version != 0x2019_0125
                    || q.qualified_signer != [0x00, 0x0b, 1, 2, 3];
                assert!(!binds || harmless, "flip at {i} still binds");
            }
        }
    }
}
