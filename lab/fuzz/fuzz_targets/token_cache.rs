#![no_main]
//! Untrusted token-cache bytes (`.u16` files): never panic; what parses writes back identically.
use libfuzzer_sys::fuzz_target;
use tandem_lab::train::data::TokenStream;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = TokenStream::from_u16_le(data, 4096) {
        assert!(s.tokens().iter().all(|&t| t < 4096));
        let bytes = s.to_u16_le().expect("encodes");
        assert_eq!(TokenStream::from_u16_le(&bytes, 4096).expect("round trip").tokens(), s.tokens());
    }
});
