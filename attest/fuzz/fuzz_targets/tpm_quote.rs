#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::evidence::TpmQuote;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = TpmQuote::parse(data.to_vec()) {
        let again = TpmQuote::encode(
            &q.qualified_signer,
            &q.extra_data,
            q.clock,
            q.reset_count,
            q.restart_count,
            q.safe,
            q.firmware_version,
            &q.pcr_select,
            &q.pcr_digest,
        );
        assert_eq!(again, data);
    }
});
