#![no_main]
//! C2SP tlog-proofs (`c2sp.org/tlog-proof@v1`): never panic; whatever parses re-encodes to the
//! same bytes (the format is canonical) and can be verified.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::{NoteVerifier, TlogProof};

const LOG: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TlogProof::parse(data) {
        assert_eq!(p.bundle.to_tlog_proof(p.extra.as_deref()).as_bytes(), data);
        let log = NoteVerifier::new(LOG).expect("fixed key");
        let _ = p.bundle.verify(b"entry", &log, None, None);
    }
});
