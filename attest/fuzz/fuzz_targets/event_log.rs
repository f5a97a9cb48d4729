#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::evidence::EventLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        assert_eq!(log.encode(), data);
        let _ = log.replay();
    }
});
