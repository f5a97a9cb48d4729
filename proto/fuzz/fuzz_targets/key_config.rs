#![no_main]
//! Key config parsers: single config and `application/ohttp-keys` list; decode→encode round-trips.

use libfuzzer_sys::fuzz_target;
use tandem_proto::KeyConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = KeyConfig::decode(data) {
        assert_eq!(c.encode(), data);
        let _ = c.digest();
    }
    if let Ok(list) = KeyConfig::decode_list(data) {
        assert_eq!(KeyConfig::encode_list(&list), data);
    }
});
