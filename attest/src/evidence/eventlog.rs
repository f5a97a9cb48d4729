//! The launch event log: every extension of the launch PCR since the TPM was last reset, and
//! the verifier's replay of it against a quoted PCR value.
//!
//! **Why PCR 13.** Under the TCG PC Client Platform TPM Profile (its table of PCR attributes), PCRs
//! 0–15 can be reset only by a TPM reset (a reboot); 16 and 23 are resettable from locality 0,
//! i.e. by any root process (PCR 23 is what a node used to reset and extend itself). Of the
//! static-OS PCRs 8–15, a GRUB/shim boot leaves 11, 12, 13 and 15 untouched (8–9 GRUB, 10 IMA,
//! 14 shim's MOK lists); of those, systemd-stub UKIs use 13 only for system extension images
//! (11 for the UKI, 12 for its command line, 15 for machine-id and volume keys). A boot chain
//! that does extend PCR 13 is fine: its events are the log's `boot-chain` events and must be in
//! the policy's allow-list.
//!
//! **What is extended.** A `boot-chain` event's digest is extended as is (what firmware, a boot
//! loader or IMA extend). A launch event (`launcher`, `node-binary`, `node-config`, `release`),
//! written by `tandem-launch`, extends `SHA-256("tandem-launch-event-v1" 0x00 || kind (u8) ||
//! digest (32))`, so an event's kind is bound into the PCR and cannot be relabelled. Extend is
//! TPM 2.0 Part 1 §17.6.6: `PCR := SHA-256(PCR || value)`, from 32 zero bytes after reset.
//!
//! **Wire format** (big-endian; carried base64 in the evidence as `tpmQuote.eventLog`):
//!
//! ```text
//! magic     8 bytes   "TDMEVLG1"
//! count     u16       number of events, at most MAX_EVENTS
//! events    count ×   kind (u8: 1 boot-chain, 2 launcher, 3 node-binary, 4 node-config,
//!                     5 release) || digest (32 bytes, SHA-256)
//! ```
//!
//! Nothing may follow the last event. [`EventLog::parse`] is strict: every accepted input
//! re-encodes to itself.
//!
//! **The launch policy** ([`LaunchPolicy::check`], in this order): (1) the log replays to the
//! PCR value the TPM quoted; (2) it reads `boot-chain*`, one `launcher`, `node-binary`,
//! `node-config`, `release` and nothing after; (3) every boot-chain digest and the launcher
//! digest are in the policy's allow-lists; (4) the node binary, config and release are the
//! release the evidence claims.

use sha2::{Digest as _, Sha256};

use super::EvidenceError;
use crate::digest::Sha256Digest;
use crate::release::{ArtifactKind, ReleaseManifest};

/// The PCR the launch chain extends (see the module docs).
pub const LAUNCH_PCR: u8 = 13;
/// Most events a log may hold (a boot chain plus the four launch events).
pub const MAX_EVENTS: usize = 256;
/// The log's magic bytes.
pub const MAGIC: &[u8; 8] = b"TDMEVLG1";
/// Domain tag of a launch event's extended value.
const EVENT_TAG: &[u8] = b"tandem-launch-event-v1\0";

/// What an event measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A boot-chain stage (firmware, boot loader, kernel, initrd): its digest is extended as is.
    BootChain,
    /// The measured launcher (`tandem-launch`) executable.
    Launcher,
    /// The node executable the launcher runs.
    NodeBinary,
    /// The node config file's bytes.
    NodeConfig,
    /// The release digest the node was launched with.
    Release,
}

impl EventKind {
    fn code(self) -> u8 {
        match self {
            Self::BootChain => 1,
            Self::Launcher => 2,
            Self::NodeBinary => 3,
            Self::NodeConfig => 4,
            Self::Release => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::BootChain,
            2 => Self::Launcher,
            3 => Self::NodeBinary,
            4 => Self::NodeConfig,
            5 => Self::Release,
            _ => return None,
        })
    }

    /// The name used in messages (`boot-chain`, `launcher`, `node-binary`, `node-config`,
    /// `release`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BootChain => "boot-chain",
            Self::Launcher => "launcher",
            Self::NodeBinary => "node-binary",
            Self::NodeConfig => "node-config",
            Self::Release => "release",
        }
    }
}

/// One extension of the launch PCR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What was measured.
    pub kind: EventKind,
    /// Its SHA-256.
    pub digest: Sha256Digest,
}

impl Event {
    /// The 32 bytes this event extended into the PCR.
    pub fn extended_value(&self) -> [u8; 32] {
        match self.kind {
            EventKind::BootChain => self.digest.0,
            k => {
                let mut h = Sha256::new();
                h.update(EVENT_TAG);
                h.update([k.code()]);
                h.update(self.digest.as_bytes());
                h.finalize().into()
            }
        }
    }

    fn describe(&self, i: usize) -> String {
        format!("event {i} ({} {})", self.kind.as_str(), self.digest.short())
    }
}

/// `PCR := SHA-256(PCR || value)` (TPM 2.0 Part 1 §17.6.6).
pub fn extend(pcr: &[u8; 32], value: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(value);
    h.finalize().into()
}

/// Every extension of the launch PCR since reset, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventLog {
    events: Vec<Event>,
}

fn malformed(reason: String) -> EvidenceError {
    EvidenceError::Malformed {
        field: "tpmQuote.eventLog",
        reason,
    }
}

impl EventLog {
    /// An empty log (a PCR that nothing extended since reset).
    pub fn new() -> Self {
        Self::default()
    }

    /// The events, in extension order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Appends an event (the caller extends the PCR with [`Event::extended_value`]).
    pub fn push(&mut self, kind: EventKind, digest: Sha256Digest) -> Result<&Event, EvidenceError> {
        if self.events.len() >= MAX_EVENTS {
            return Err(malformed(format!(
                "an event log holds at most {MAX_EVENTS} events"
            )));
        }
        self.events.push(Event { kind, digest });
        Ok(&self.events[self.events.len() - 1])
    }

    /// The PCR value this log replays to, from the 32 zero bytes of a reset PCR.
    pub fn replay(&self) -> [u8; 32] {
        self.events
            .iter()
            .fold([0u8; 32], |pcr, e| extend(&pcr, &e.extended_value()))
    }

    /// Parses untrusted bytes (format in the module docs).
    pub fn parse(b: &[u8]) -> Result<Self, EvidenceError> {
        let Some(rest) = b.strip_prefix(MAGIC.as_slice()) else {
            return Err(malformed(format!(
                "does not start with {:?}; not a Tandem launch event log",
                String::from_utf8_lossy(MAGIC)
            )));
        };
        let [c0, c1, rest @ ..] = rest else {
            return Err(malformed("truncated in the event count".into()));
        };
        let count = u16::from_be_bytes([*c0, *c1]) as usize;
        if count > MAX_EVENTS {
            return Err(malformed(format!(
                "{count} events; at most {MAX_EVENTS} are accepted"
            )));
        }
        let want = count * 33;
        if rest.len() != want {
            return Err(malformed(format!(
                "{count} events need {want} bytes after the header, got {}",
                rest.len()
            )));
        }
        let mut events = Vec::with_capacity(count);
        for (i, chunk) in rest.chunks_exact(33).enumerate() {
            let (code, digest) = chunk.split_at(1);
            let kind = EventKind::from_code(code[0])
                .ok_or_else(|| malformed(format!("event {i} has unknown kind {}", code[0])))?;
            let mut d = [0u8; 32];
            d.copy_from_slice(digest);
            events.push(Event {
                kind,
                digest: Sha256Digest(d),
            });
        }
        Ok(Self { events })
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(10 + self.events.len() * 33);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(self.events.len() as u16).to_be_bytes());
        for e in &self.events {
            b.push(e.kind.code());
            b.extend_from_slice(e.digest.as_bytes());
        }
        b
    }

    /// The digest of the `release` event, if the log has exactly one launch.
    pub fn launched_release(&self) -> Option<Sha256Digest> {
        let mut it = self.events.iter().filter(|e| e.kind == EventKind::Release);
        match (it.next(), it.next()) {
            (Some(e), None) => Some(e.digest),
            _ => None,
        }
    }
}

/// The verifier's allow-lists for the launch chain (policy `tpmLaunch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPolicy {
    /// Allowed boot-chain measurements (any number of them, in any order, before the launcher).
    pub boot_chain: Vec<Sha256Digest>,
    /// Allowed launcher executables (at least one).
    pub launchers: Vec<Sha256Digest>,
}

/// The four launch events after the boot chain, in order.
const LAUNCH: [EventKind; 4] = [
    EventKind::Launcher,
    EventKind::NodeBinary,
    EventKind::NodeConfig,
    EventKind::Release,
];

impl LaunchPolicy {
    /// Checks `log` against the PCR value the TPM quoted (`quoted_pcr`) and this policy, for
    /// a node claiming `release` whose manifest is `manifest`. The checks run in the order of
    /// the module docs; the error names the event or PCR that did not match.
    pub fn check(
        &self,
        log: &EventLog,
        quoted_pcr_digest: &[u8],
        release: &Sha256Digest,
        manifest: &ReleaseManifest,
    ) -> Result<(), EvidenceError> {
        let q = |m: String| EvidenceError::Quote(m);
        // 1. The log replays to the quoted PCR. (For one selected PCR, the quote's pcrDigest
        //    is SHA-256 of its value: TPM 2.0 Part 3 §18.4, TPM2_Quote.)
        let replayed = log.replay();
        let want: [u8; 32] = Sha256::digest(replayed).into();
        if quoted_pcr_digest != want {
            return Err(q(format!(
                "the event log ({} events) replays PCR {LAUNCH_PCR} to {} but the TPM quoted a \
                 different value; an event was removed, changed, reordered or added, or PCR \
                 {LAUNCH_PCR} was extended outside the log; check the node's event log and \
                 what extended PCR {LAUNCH_PCR} since boot",
                log.events.len(),
                short(&replayed)
            )));
        }
        // 2. Shape: boot-chain*, launcher, node-binary, node-config, release, nothing after.
        let ev = &log.events;
        let boot = ev
            .iter()
            .take_while(|e| e.kind == EventKind::BootChain)
            .count();
        let tail = &ev[boot..];
        for (j, want) in LAUNCH.iter().enumerate() {
            match tail.get(j) {
                None => {
                    return Err(q(format!(
                        "PCR {LAUNCH_PCR} has no {} event after {} events; the node was not \
                         started by the measured launcher (tandem-launch)",
                        want.as_str(),
                        ev.len()
                    )));
                }
                Some(e) if e.kind != *want => {
                    return Err(q(format!(
                        "{} where the launch sequence needs a {} event; the launch chain was \
                         interrupted or other code extended PCR {LAUNCH_PCR}",
                        e.describe(boot + j),
                        want.as_str()
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = tail.get(LAUNCH.len()) {
            return Err(q(format!(
                "{} extended PCR {LAUNCH_PCR} after the node was launched; code other than the \
                 launched node ran with access to the TPM since boot; reboot the node",
                extra.describe(boot + LAUNCH.len())
            )));
        }
        // 3. Allow-lists.
        for (i, e) in ev[..boot].iter().enumerate() {
            if !self.boot_chain.contains(&e.digest) {
                return Err(q(format!(
                    "{} is not an allowed boot-chain measurement; add it to the policy's \
                     tpmLaunch.bootChain only if that boot stage is trusted",
                    e.describe(i)
                )));
            }
        }
        let launcher = &tail[0];
        if !self.launchers.contains(&launcher.digest) {
            return Err(q(format!(
                "{} is not an allowed launcher; the policy's tpmLaunch.launchers lists {}",
                launcher.describe(boot),
                list(&self.launchers)
            )));
        }
        // 4. The launched node is the claimed release.
        for (j, kind, artifact) in [
            (1, EventKind::NodeBinary, ArtifactKind::NodeBinary),
            (2, EventKind::NodeConfig, ArtifactKind::NodeConfig),
        ] {
            let e = &tail[j];
            let listed: Vec<Sha256Digest> = manifest
                .artifacts()
                .iter()
                .filter(|a| a.kind == artifact)
                .map(|a| a.sha256)
                .collect();
            if !listed.contains(&e.digest) {
                return Err(q(format!(
                    "{} is not the {} of release {} ({}); the launcher ran a different {}",
                    e.describe(boot + j),
                    artifact.as_str(),
                    release.short(),
                    list(&listed),
                    kind.as_str()
                )));
            }
        }
        let r = &tail[3];
        if r.digest != *release {
            return Err(q(format!(
                "{} but the evidence claims release {}; the node was launched with another \
                 release",
                r.describe(boot + 3),
                release.short()
            )));
        }
        Ok(())
    }
}

fn short(b: &[u8; 32]) -> String {
    format!("{}…", &hex::encode(b)[..12])
}

fn list(d: &[Sha256Digest]) -> String {
    if d.is_empty() {
        return "nothing".into();
    }
    d.iter().map(|d| d.short()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventLog {
        let mut l = EventLog::new();
        for (k, d) in [
            (EventKind::BootChain, &b"firmware"[..]),
            (EventKind::BootChain, b"kernel"),
            (EventKind::Launcher, b"launcher"),
            (EventKind::NodeBinary, b"node"),
            (EventKind::NodeConfig, b"config"),
            (EventKind::Release, b"release"),
        ] {
            l.push(k, Sha256Digest::of(d)).expect("room");
        }
        l
    }

    #[test]
    fn round_trip_and_replay() {
        let l = sample();
        let b = l.encode();
        assert_eq!(EventLog::parse(&b).expect("parses"), l);
        assert_eq!(
            EventLog::parse(&EventLog::new().encode()).expect("empty"),
            EventLog::new()
        );
        // Replay is the TPM's extend chain, by hand.
        let mut pcr = [0u8; 32];
        for e in l.events() {
            let mut h = Sha256::new();
            h.update(pcr);
            h.update(e.extended_value());
            pcr = h.finalize().into();
        }
        assert_eq!(l.replay(), pcr);
        // A boot-chain event extends its digest as is; a launch event a tagged hash.
        assert_eq!(
            l.events()[0].extended_value(),
            Sha256Digest::of(b"firmware").0
        );
        assert_ne!(
            l.events()[2].extended_value(),
            Sha256Digest::of(b"launcher").0
        );
        assert_eq!(l.launched_release(), Some(Sha256Digest::of(b"release")));
    }

    #[test]
    fn truncate_at_every_offset_and_flip_every_byte() {
        let l = sample();
        let b = l.encode();
        for cut in 0..b.len() {
            assert!(EventLog::parse(&b[..cut]).is_err(), "cut at {cut} parsed");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(EventLog::parse(&longer).is_err(), "trailing byte accepted");
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut t = b.clone();
                t[i] ^= 1 << bit;
                match EventLog::parse(&t) {
                    // Whatever parses re-encodes to itself and is a different log.
                    Ok(p) => {
                        assert_eq!(p.encode(), t, "flip {i}.{bit} does not round-trip");
                        assert_ne!(p, l, "flip {i}.{bit} parsed to the same log");
                        assert_ne!(p.replay(), l.replay(), "flip {i}.{bit} replays the same");
                    }
                    Err(e) => assert!(e.to_string().contains("tpmQuote.eventLog"), "{e}"),
                }
            }
        }
    }

    #[test]
    fn too_many_events_refused() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&((MAX_EVENTS + 1) as u16).to_be_bytes());
        b.extend(std::iter::repeat_n(1u8, (MAX_EVENTS + 1) * 33));
        assert!(EventLog::parse(&b).is_err());
        let mut l = EventLog::new();
        for _ in 0..MAX_EVENTS {
            l.push(EventKind::BootChain, Sha256Digest::of(b"x"))
                .expect("room");
        }
        assert!(
            l.push(EventKind::BootChain, Sha256Digest::of(b"x"))
                .is_err()
        );
        assert_eq!(EventLog::parse(&l.encode()).expect("full log"), l);
    }

    fn d(s: &str) -> Sha256Digest {
        Sha256Digest::of(s.as_bytes())
    }

    fn manifest() -> ReleaseManifest {
        use crate::release::Artifact;
        let art = |kind, name: &str, body: &str| Artifact {
            kind,
            name: name.into(),
            sha256: d(body),
            size: body.len() as u64,
        };
        ReleaseManifest::new(
            "tandem-node 0.1.0",
            vec![
                art(ArtifactKind::NodeBinary, "tandem-node", "node"),
                art(ArtifactKind::NodeConfig, "node.toml", "config"),
                art(ArtifactKind::BaseModel, "m/model.safetensors", "weights"),
                art(ArtifactKind::Tokenizer, "tokenizer.json", "tokenizer"),
            ],
        )
        .expect("manifest")
    }

    fn policy() -> LaunchPolicy {
        LaunchPolicy {
            boot_chain: vec![d("firmware"), d("kernel")],
            launchers: vec![d("launcher")],
        }
    }

    fn log_of(events: &[(EventKind, Sha256Digest)]) -> EventLog {
        let mut l = EventLog::new();
        for (k, dg) in events {
            l.push(*k, *dg).expect("room");
        }
        l
    }

    /// The honest chain for `manifest()`, released as `release`.
    fn honest(release: Sha256Digest) -> Vec<(EventKind, Sha256Digest)> {
        vec![
            (EventKind::BootChain, d("firmware")),
            (EventKind::BootChain, d("kernel")),
            (EventKind::Launcher, d("launcher")),
            (EventKind::NodeBinary, d("node")),
            (EventKind::NodeConfig, d("config")),
            (EventKind::Release, release),
        ]
    }

    fn check(events: &[(EventKind, Sha256Digest)], quoted: &EventLog) -> Result<(), String> {
        let m = manifest();
        let quoted_digest = Sha256::digest(quoted.replay());
        policy()
            .check(&log_of(events), &quoted_digest, &m.digest(), &m)
            .map_err(|e| e.to_string())
    }

    /// Every rule of [`LaunchPolicy::check`], each refusal naming what did not match.
    #[test]
    fn launch_policy_table() {
        let r = manifest().digest();
        let ok = honest(r);
        let q = log_of(&ok);
        check(&ok, &q).expect("honest chain");
        // No boot chain at all is allowed too (an empty prefix).
        let bare = ok[2..].to_vec();
        check(&bare, &log_of(&bare)).expect("no boot-chain events");

        // Forged logs against the honest quote: removed, changed, reordered, added.
        let mut removed = ok.clone();
        removed.remove(1);
        let mut changed = ok.clone();
        changed[3].1 = d("other node");
        let mut reordered = ok.clone();
        reordered.swap(0, 1);
        let mut added = ok.clone();
        added.push((EventKind::Release, r));
        for (what, forged) in [
            ("removed", removed),
            ("changed", changed),
            ("reordered", reordered),
            ("added", added),
        ] {
            let e = check(&forged, &q).expect_err(what);
            assert!(e.contains("replays PCR 13"), "{what}: {e}");
        }

        // Logs that replay to their own quote but break the policy.
        let cases: Vec<(Vec<(EventKind, Sha256Digest)>, &str)> = vec![
            (vec![], "no launcher event after 0 events"),
            (ok[..5].to_vec(), "no release event"),
            (
                {
                    let mut v = ok.clone();
                    v.swap(3, 4);
                    v
                },
                "event 3 (node-config",
            ),
            (
                {
                    let mut v = ok.clone();
                    v.push((EventKind::Release, r));
                    v
                },
                "event 6 (release",
            ),
            (
                {
                    let mut v = ok.clone();
                    v.extend(ok[2..].iter().copied());
                    v
                },
                "after the node was launched",
            ),
            (
                {
                    let mut v = ok.clone();
                    v.insert(0, (EventKind::BootChain, d("bootkit")));
                    v
                },
                "event 0 (boot-chain",
            ),
            (
                {
                    let mut v = ok.clone();
                    v[2].1 = d("evil launcher");
                    v
                },
                "is not an allowed launcher",
            ),
            (
                {
                    let mut v = ok.clone();
                    v[3].1 = d("evil node");
                    v
                },
                "is not the node-binary of release",
            ),
            (
                {
                    let mut v = ok.clone();
                    v[4].1 = d("evil config");
                    v
                },
                "is not the node-config of release",
            ),
            (
                {
                    let mut v = ok.clone();
                    v[5].1 = d("other release");
                    v
                },
                "launched with another release",
            ),
            // A boot-chain event after the launcher is not a boot chain.
            (
                {
                    let mut v = ok.clone();
                    v.insert(3, (EventKind::BootChain, d("firmware")));
                    v
                },
                "event 3 (boot-chain",
            ),
        ];
        for (events, want) in cases {
            let e = check(&events, &log_of(&events)).expect_err(want);
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }
}
