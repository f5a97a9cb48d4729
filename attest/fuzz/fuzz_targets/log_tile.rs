#![no_main]
//! C2SP tlog-tiles paths and entry bundles: parse, and accepted inputs re-encode exactly.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::tile::{self, TilePath};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(t) = TilePath::parse(s)
    {
        assert_eq!(t.to_path(), s);
    }
    if let Some((&w, rest)) = data.split_first() {
        let width = u16::from(w) + 1;
        if let Ok(entries) = tile::parse_entry_bundle(rest, width) {
            assert_eq!(entries.len(), usize::from(width));
            assert_eq!(
                tile::encode_entry_bundle(&entries).ok().as_deref(),
                Some(rest)
            );
        }
    }
});
