//! The TPM 2.0 root of trust, node side (cargo feature `tpm`; links Debian's `libtss2` through
//! `tss-esapi`). The caller opens the TPM connection (a [`tss_esapi::Context`] over any TCTI:
//! `device:/dev/tpmrm0` on a real node, `swtpm:host=127.0.0.1,port=N` against the simulator);
//! this module only issues commands on it.
//!
//! Flow: [`create_attestation_key`] makes a restricted ECDSA P-256 signing key (the fleet CA
//! then certifies its public point as a [`CertRole::TpmAttestationKey`]); before the node
//! runs, the measured launcher (`tandem-launch`) extends the launch PCR 13 with
//! [`extend_event`] and writes the [`EventLog`]; the node's [`TpmRoot`] checks that the log
//! replays to PCR 13 and [`RootOfTrust::attest`] quotes PCR 13 with the claims' qualifying
//! data, carrying the log. Nothing here resets a PCR: PCR 13 is reset only by a reboot.

use std::str::FromStr as _;

use p256::ecdsa::VerifyingKey;
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::{KeyHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, DigestValues, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    PcrSelectionListBuilder, PcrSlot, Public, PublicBuilder, PublicEccParametersBuilder, Signature,
    SignatureScheme,
};
use tss_esapi::traits::Marshall;

use super::eventlog::{Event, EventLog, LAUNCH_PCR};
use super::tpm::TpmQuote;
use super::{
    CertRole, Evidence, EvidenceClaims, EvidenceError, EvidenceProof, FleetCertificate, RootOfTrust,
};
use crate::digest::Sha256Digest;

/// The launch PCR as a TSS slot and handle (PCR 13, see [`super::eventlog`]).
const SLOT: PcrSlot = PcrSlot::Slot13;
const HANDLE: PcrHandle = PcrHandle::Pcr13;
const _: () = assert!(LAUNCH_PCR == 13, "SLOT and HANDLE name the launch PCR");

fn dev(what: &str, e: tss_esapi::Error) -> EvidenceError {
    EvidenceError::Device(format!("{what}: {e}"))
}

/// Creates a restricted ECDSA-P256/SHA-256 signing primary key in the owner hierarchy (an
/// attestation key) and returns its handle and public key.
pub fn create_attestation_key(
    ctx: &mut Context,
) -> Result<(KeyHandle, VerifyingKey), EvidenceError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
        .map_err(|e| dev("object attributes", e))?;
    let params = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()
        .map_err(|e| dev("ECC parameters", e))?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| dev("public template", e))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })
        .map_err(|e| dev("TPM2_CreatePrimary", e))?;
    let vk = ecc_public_to_key(&created.out_public)?;
    Ok((created.key_handle, vk))
}

fn ecc_public_to_key(public: &Public) -> Result<VerifyingKey, EvidenceError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(EvidenceError::Device(
            "attestation key is not an ECC key".into(),
        ));
    };
    let (x, y) = (unique.x().value(), unique.y().value());
    if x.len() > 32 || y.len() > 32 {
        return Err(EvidenceError::Device(
            "attestation key point is not on P-256".into(),
        ));
    }
    let mut sec1 = vec![0x04];
    sec1.extend(std::iter::repeat_n(0, 32 - x.len()));
    sec1.extend_from_slice(x);
    sec1.extend(std::iter::repeat_n(0, 32 - y.len()));
    sec1.extend_from_slice(y);
    VerifyingKey::from_sec1_bytes(&sec1)
        .map_err(|_| EvidenceError::Device("attestation key point is not on P-256".into()))
}

fn pad32(v: &[u8]) -> Result<[u8; 32], EvidenceError> {
    if v.len() > 32 {
        return Err(EvidenceError::Device(
            "ECDSA signature component longer than 32 bytes".into(),
        ));
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

/// The current SHA-256 value of the launch PCR.
pub fn read_launch_pcr(ctx: &mut Context) -> Result<[u8; 32], EvidenceError> {
    let sel = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &[SLOT])
        .build()
        .map_err(|e| dev("PCR selection", e))?;
    let (_, _, digests) = ctx
        .pcr_read(sel)
        .map_err(|e| dev(&format!("TPM2_PCR_Read({LAUNCH_PCR})"), e))?;
    let v = digests.value();
    let [d] = v else {
        return Err(EvidenceError::Device(format!(
            "TPM2_PCR_Read({LAUNCH_PCR}) returned {} values; does this TPM have a SHA-256 bank?",
            v.len()
        )));
    };
    d.value().try_into().map_err(|_| {
        EvidenceError::Device(format!(
            "sha256 PCR {LAUNCH_PCR} is {} bytes, not 32",
            d.value().len()
        ))
    })
}

/// Extends the launch PCR with `event`'s value (TPM2_PCR_Extend, sha256 bank only). The caller
/// appends `event` to the event log.
pub fn extend_event(ctx: &mut Context, event: &Event) -> Result<(), EvidenceError> {
    let mut vals = DigestValues::new();
    vals.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(event.extended_value().to_vec()).map_err(|e| dev("digest", e))?,
    );
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.pcr_extend(HANDLE, vals))
        .map_err(|e| dev(&format!("TPM2_PCR_Extend({LAUNCH_PCR})"), e))
}

/// `TPM2_Quote` of the sha256 PCRs `pcrs` by the attestation key `ak` with qualifying data
/// `qualifying_data`: the parsed `TPMS_ATTEST` and the `r || s` signature. [`TpmRoot`] quotes
/// only the launch PCR; other selections are for tests that play an attacker.
pub fn quote(
    ctx: &mut Context,
    ak: KeyHandle,
    qualifying_data: &[u8],
    pcrs: &[PcrSlot],
) -> Result<(TpmQuote, [u8; 64]), EvidenceError> {
    let qd = Data::try_from(qualifying_data.to_vec()).map_err(|e| dev("qualifying data", e))?;
    let sel = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, pcrs)
        .build()
        .map_err(|e| dev("PCR selection", e))?;
    let (attest, sig) = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.quote(
                ak,
                qd,
                SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                },
                sel,
            )
        })
        .map_err(|e| dev("TPM2_Quote", e))?;
    let raw = attest
        .marshall()
        .map_err(|e| dev("marshalling TPMS_ATTEST", e))?;
    let Signature::EcDsa(ecc) = sig else {
        return Err(EvidenceError::Device(
            "TPM returned a non-ECDSA quote signature".into(),
        ));
    };
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&pad32(ecc.signature_r().value())?);
    signature[32..].copy_from_slice(&pad32(ecc.signature_s().value())?);
    Ok((TpmQuote::parse(raw)?, signature))
}

/// A TPM-backed root of trust: quotes the launch PCR and carries the launcher's event log.
pub struct TpmRoot {
    ctx: Context,
    ak: KeyHandle,
    certificate: FleetCertificate,
    event_log: EventLog,
    release: Sha256Digest,
}

impl std::fmt::Debug for TpmRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmRoot")
            .field("subject", &self.certificate.subject)
            .field("release", &self.release)
            .field("events", &self.event_log.events().len())
            .finish_non_exhaustive()
    }
}

impl TpmRoot {
    /// A root over an open TPM context, an attestation key loaded in it, the fleet certificate
    /// for that key, and the launcher's event log. Checks that the certificate is for this key,
    /// that the log replays to the launch PCR's current value, and that the log launched
    /// `release` (the node's own release) exactly once.
    pub fn new(
        mut ctx: Context,
        ak: KeyHandle,
        certificate: FleetCertificate,
        event_log: EventLog,
        release: Sha256Digest,
    ) -> Result<Self, EvidenceError> {
        match Self::check(&mut ctx, ak, &certificate, &event_log, &release) {
            Ok(()) => Ok(Self {
                ctx,
                ak,
                certificate,
                event_log,
                release,
            }),
            Err(e) => {
                // A TPM holds only a few transient objects; do not leave the key loaded.
                let _ = ctx.flush_context(ak.into());
                Err(e)
            }
        }
    }

    fn check(
        ctx: &mut Context,
        ak: KeyHandle,
        certificate: &FleetCertificate,
        event_log: &EventLog,
        release: &Sha256Digest,
    ) -> Result<(), EvidenceError> {
        if certificate.role != CertRole::TpmAttestationKey {
            return Err(EvidenceError::Certificate(
                "certificate is not for a TPM attestation key".into(),
            ));
        }
        let (public, _, _) = ctx.read_public(ak).map_err(|e| dev("TPM2_ReadPublic", e))?;
        if ecc_public_to_key(&public)? != certificate.public_key {
            return Err(EvidenceError::Certificate(
                "certificate is for a different key than the loaded attestation key".into(),
            ));
        }
        let pcr = read_launch_pcr(ctx)?;
        if pcr != event_log.replay() {
            return Err(EvidenceError::Device(format!(
                "PCR {LAUNCH_PCR} holds {} but the event log ({} events) replays to {}; the log \
                 is not the one tandem-launch wrote at this boot, or PCR {LAUNCH_PCR} was \
                 extended outside it (reboot and start the node through tandem-launch)",
                hex::encode(&pcr[..6]),
                event_log.events().len(),
                hex::encode(&event_log.replay()[..6])
            )));
        }
        match event_log.launched_release() {
            Some(r) if r == *release => {}
            Some(r) => {
                return Err(EvidenceError::Device(format!(
                    "tandem-launch measured release {} into PCR {LAUNCH_PCR} but this node is \
                     release {}; launch the node with its own release bundle",
                    r.short(),
                    release.short()
                )));
            }
            None => {
                return Err(EvidenceError::Device(format!(
                    "the event log does not record exactly one launch (release event) in PCR \
                     {LAUNCH_PCR}; start the node through tandem-launch after a reboot"
                )));
            }
        }
        Ok(())
    }

    /// The open context (for callers that need other TPM commands).
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.ctx
    }

    /// The event log this root carries in its evidence.
    pub fn event_log(&self) -> &EventLog {
        &self.event_log
    }
}

impl Drop for TpmRoot {
    fn drop(&mut self) {
        let _ = self.ctx.flush_context(self.ak.into());
    }
}

impl RootOfTrust for TpmRoot {
    fn kind(&self) -> &'static str {
        "tpm2"
    }

    fn attest(&mut self, claims: &EvidenceClaims) -> Result<Evidence, EvidenceError> {
        claims.check()?;
        if self.release != claims.release_digest {
            return Err(EvidenceError::Device(format!(
                "PCR {LAUNCH_PCR} was launched with release {}, not {}",
                self.release.short(),
                claims.release_digest.short()
            )));
        }
        let (quote, signature) = quote(
            &mut self.ctx,
            self.ak,
            &claims.tpm_qualifying_data(),
            &[SLOT],
        )?;
        Ok(Evidence::new(
            claims.clone(),
            self.certificate.clone(),
            EvidenceProof::Tpm2 {
                quote,
                signature,
                event_log: self.event_log.clone(),
            },
        ))
    }
}

/// Opens the TPM behind a TSS2 TCTI string: `device:/dev/tpmrm0` on a real node,
/// `swtpm:host=127.0.0.1,port=2321` against the simulator.
pub fn open(tcti: &str) -> Result<Context, EvidenceError> {
    let conf = tss_esapi::TctiNameConf::from_str(tcti).map_err(|e| {
        EvidenceError::Device(format!(
            "TCTI {tcti:?} is not a TSS2 TCTI string ({e}); e.g. device:/dev/tpmrm0 or \
             swtpm:host=127.0.0.1,port=2321"
        ))
    })?;
    Context::new(conf).map_err(|e| {
        EvidenceError::Device(format!(
            "cannot open the TPM at {tcti:?}: {e}; is the TPM (or swtpm) there and reachable?"
        ))
    })
}

/// The public half of the node's attestation key on the TPM at `tcti`: what the fleet CA
/// certifies (as a [`CertRole::TpmAttestationKey`]) when the node is enrolled. The key is a
/// primary key, derived from the TPM's owner seed and a fixed template, so the same TPM gives
/// the same key at every start and nothing has to be stored.
pub fn attestation_key_public(tcti: &str) -> Result<VerifyingKey, EvidenceError> {
    let mut ctx = open(tcti)?;
    let (handle, vk) = create_attestation_key(&mut ctx)?;
    let _ = ctx.flush_context(handle.into());
    Ok(vk)
}

type Reply<T> = std::sync::mpsc::Sender<Result<T, EvidenceError>>;

enum Command {
    Attest(Box<EvidenceClaims>, Reply<Evidence>),
}

/// A [`TpmRoot`] on a thread of its own, so that it can be shared between threads (a TSS
/// context cannot leave the thread that opened it): every call is a message to that thread and
/// a wait for its answer. The thread ends when this value is dropped.
#[derive(Debug)]
pub struct TpmThread {
    tx: std::sync::mpsc::Sender<Command>,
}

fn gone() -> EvidenceError {
    EvidenceError::Device("the TPM thread stopped".into())
}

impl TpmThread {
    /// Opens the TPM at `tcti` on a new thread, loads the attestation key and starts a
    /// [`TpmRoot`] with `certificate`, `event_log` and `release` (see [`TpmRoot::new`]).
    pub fn start(
        tcti: &str,
        certificate: FleetCertificate,
        event_log: EventLog,
        release: Sha256Digest,
    ) -> Result<Self, EvidenceError> {
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), EvidenceError>>();
        let tcti = tcti.to_owned();
        std::thread::Builder::new()
            .name("tpm".into())
            .spawn(move || {
                let root = open(&tcti).and_then(|mut ctx| {
                    let (ak, _) = create_attestation_key(&mut ctx)?;
                    TpmRoot::new(ctx, ak, certificate, event_log, release)
                });
                let mut root = match root {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for cmd in rx {
                    match cmd {
                        Command::Attest(c, reply) => {
                            let _ = reply.send(root.attest(&c));
                        }
                    }
                }
            })
            .map_err(|e| EvidenceError::Device(format!("starting the TPM thread: {e}")))?;
        ready_rx.recv().map_err(|_| gone())??;
        Ok(Self { tx })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EvidenceError> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl RootOfTrust for TpmThread {
    fn kind(&self) -> &'static str {
        "tpm2"
    }

    fn attest(&mut self, claims: &EvidenceClaims) -> Result<Evidence, EvidenceError> {
        self.call(|r| Command::Attest(Box::new(claims.clone()), r))
    }
}
