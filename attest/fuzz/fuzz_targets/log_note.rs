#![no_main]
//! C2SP signed notes and signed checkpoints (with a witness policy), plus verifier keys.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::note::{self, CosignerKey, NoteVerifier, WitnessPolicy};

const LOG: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const WITNESS: &str = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2";

fuzz_target!(|data: &[u8]| {
    let log = NoteVerifier::new(LOG).expect("fixed key");
    let w = CosignerKey::new(WITNESS).expect("fixed key");
    let policy = WitnessPolicy::new(vec![w], 1).expect("fixed policy");
    if let Ok(opened) = note::open_note(data, &[&log]) {
        assert!(!opened.verified_by.is_empty());
    }
    let _ = note::open_checkpoint(data, &log, Some(&policy), Some((0, 0)));
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = CosignerKey::new(s) {
            assert_eq!(CosignerKey::new(&k.vkey()).ok(), Some(k));
        }
        let _ = NoteVerifier::new(s);
    }
});
