#![no_main]
//! C2SP tlog-witness `add-checkpoint` bodies and the witness's state file: never panic;
//! whatever parses re-encodes to the same bytes (both formats are canonical); the witness's
//! decision on any body is a cosignature or a refusal with one of the spec's status codes.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem_attest::log::NoteVerifier;
use tandem_attest::log::note::Cosigner;
use tandem_attest::log::witness::{AddCheckpoint, Witness};

const LOG: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
/// A throwaway witness key (`attest witness keygen --name fuzz.witness`).
const WITNESS: &str =
    "PRIVATE+KEY+fuzz.witness+682a3bf2+BLDyeJQ5co1bKwD+6XisKQxJMQeTeasR3hQkU/lMkCn3";

fn witness() -> &'static Witness {
    static W: OnceLock<Witness> = OnceLock::new();
    W.get_or_init(|| {
        let cosigner = Cosigner::from_skey(WITNESS).expect("fixed key");
        let log = NoteVerifier::new(LOG).expect("fixed key");
        Witness::new(cosigner, [("PeterNeumann".to_owned(), log)]).expect("one log")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AddCheckpoint::parse(data) {
        assert_eq!(r.encode(), data);
    }
    match witness().check(data, 1_700_000_000) {
        Ok(c) => assert_eq!(c.checkpoint().origin, "PeterNeumann"),
        Err(r) => assert!([400, 403, 404, 409, 422].contains(&r.status())),
    }
    let mut w = witness().clone();
    if w.restore_state(data).is_ok() {
        assert_eq!(w.encode_state(), data);
    }
});
