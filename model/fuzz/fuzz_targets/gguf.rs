#![no_main]
//! Untrusted GGUF bytes: the header parser and everything the importer derives from a parsed
//! header (config, tokenizer.json, tokenizer_config.json, and the tokenizer built from it) never
//! panic; a header that parses has its tensor data inside the input.
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tandem_model::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = GgufFile::from_bytes(data, Path::new("fuzz.gguf")) else {
        return;
    };
    for info in content.tensor_infos.values() {
        assert!(content.tensor_data_offset + info.offset <= data.len() as u64);
    }
    let f = GgufFile {
        path: "fuzz.gguf".into(),
        content,
        file_len: data.len() as u64,
    };
    let _ = f.config();
    let _ = f.generation_config_json();
    let _ = f.tokenizer_config_json();
    if let Ok(t) = f.tokenizer_json() {
        let _ = tandem_model::Tokenizer::from_bytes(t.to_string().as_bytes(), Path::new("t.json"));
    }
});
