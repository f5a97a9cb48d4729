//! GGUF import: a tiny Llama written as llama.cpp writes GGUF (permuted Q/K, byte-level BPE,
//! `<s>`/`</s>` special tokens) imports to a directory that computes the same logits as the
//! model it came from; quantized types dequantize; and the header parser refuses every
//! truncation and survives every flipped byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use tandem_model::gguf::{GgufFile, import};
use tandem_model::test_util::{max_abs_diff, tiny_gguf};
use tandem_model::{DType, Device, Tensor, Tokenizer, load_model};

fn write(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn logits(m: &tandem_model::Model, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_train(&t, None).unwrap()
}

#[test]
fn f32_import_computes_the_source_logits() {
    let (bytes, reference) = tiny_gguf(GgmlDType::F32);
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write(tmp.path(), &bytes);
    let out = tmp.path().join("hf");
    let mut seen = 0;
    let report = import(&gguf, &out, DType::F32, &mut |p| {
        seen = p.done;
        assert!(p.done <= p.total);
    })
    .unwrap();
    assert_eq!(report.tensors, 20);
    assert_eq!(seen, 20);
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let m = load_model(&out, DType::F32, &Device::Cpu).unwrap();
    let ids = [256u32, 70, 71, 258, 72, 73, 74, 75];
    let d = max_abs_diff(&logits(&m.model, &ids), &logits(&reference, &ids));
    assert!(d < 1e-5, "logits differ by {d}");

    // The tokenizer is the GGUF's: BOS added at encode (add_bos_token), the merge applied,
    // special tokens kept whole; EOS and BOS come from the metadata, not from assumptions.
    let ids = m.tokenizer.encode("a t</s>").unwrap();
    assert_eq!(ids.first(), Some(&256), "BOS first: {ids:?}");
    assert!(ids.contains(&258), "`Ġt` merged: {ids:?}");
    assert_eq!(ids.last(), Some(&257), "`</s>` one token: {ids:?}");
    assert_eq!(m.model.config().eos_token_ids, vec![257]);
    assert_eq!(m.model.config().bos_token_id, Some(256));
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["bos_token"], "<s>");
    assert_eq!(tc["eos_token"], "</s>");
    assert!(
        tc["chat_template"]
            .as_str()
            .unwrap()
            .contains("add_generation_prompt")
    );

    // An existing, non-empty output directory is refused, not overwritten.
    let e = import(&gguf, &out, DType::F32, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains(&out.display().to_string()), "{e}");
}

#[test]
fn quantized_types_dequantize() {
    for (ty, tol) in [
        (GgmlDType::F16, 0.02),
        (GgmlDType::Q8_0, 0.1),
        (GgmlDType::Q4_0, 1.0),
        (GgmlDType::Q4_1, 1.0),
    ] {
        let (bytes, reference) = tiny_gguf(ty);
        let tmp = tempfile::tempdir().unwrap();
        let gguf = write(tmp.path(), &bytes);
        let out = tmp.path().join("hf");
        let r = import(&gguf, &out, DType::F16, &mut |_| {}).unwrap();
        assert_eq!(
            r.source_types.get(&format!("{ty:?}")),
            Some(&15),
            "{ty:?}: {:?}",
            r.source_types
        );
        let m = load_model(&out, DType::F32, &Device::Cpu).unwrap();
        let ids = [256u32, 70, 71, 258, 72];
        let d = max_abs_diff(&logits(&m.model, &ids), &logits(&reference, &ids));
        assert!(d < tol, "{ty:?}: logits differ by {d}");
    }
}

fn parse(bytes: &[u8]) -> Result<Content, tandem_model::Error> {
    GgufFile::from_bytes(bytes, Path::new("x.gguf"))
}

/// Where the last tensor's data ends.
fn data_end(c: &Content) -> u64 {
    c.tensor_infos
        .values()
        .map(|i| {
            let n = i.shape.elem_count() as u64;
            c.tensor_data_offset
                + i.offset
                + n / i.ggml_dtype.block_size() as u64 * i.ggml_dtype.type_size() as u64
        })
        .max()
        .unwrap()
}

#[test]
fn every_truncation_is_refused() {
    let (bytes, _) = tiny_gguf(GgmlDType::Q8_0);
    let end = data_end(&parse(&bytes).unwrap()) as usize;
    for n in 0..bytes.len() {
        match parse(&bytes[..n]) {
            Ok(_) => assert!(n >= end, "a file cut at {n} of {end} bytes parsed"),
            Err(e) => assert!(e.to_string().contains("x.gguf"), "{e}"),
        }
    }
}

#[test]
fn every_flipped_header_byte_is_survived() {
    let (bytes, _) = tiny_gguf(GgmlDType::Q8_0);
    let start = parse(&bytes).unwrap().tensor_data_offset as usize;
    let mut refused = 0;
    for i in 0..start {
        for mask in [0xff, 0x01] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            let Ok(content) = parse(&b) else {
                refused += 1;
                continue;
            };
            // Whatever parsed goes through everything the importer derives from the header.
            let f = GgufFile {
                path: "x.gguf".into(),
                content,
                file_len: b.len() as u64,
            };
            let _ = f.config();
            let _ = f.tokenizer_config_json();
            let _ = f.generation_config_json();
            if let Ok(t) = f.tokenizer_json() {
                let _ = Tokenizer::from_bytes(t.to_string().as_bytes(), Path::new("t.json"));
            }
        }
    }
    assert!(
        refused > start / 4,
        "only {refused} of {} flips refused",
        2 * start
    );
}

#[test]
fn hostile_headers_are_refused_with_reasons() {
    let (bytes, _) = tiny_gguf(GgmlDType::F32);
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"GGUX");
    assert!(
        parse(&b)
            .unwrap_err()
            .to_string()
            .contains("not a GGUF file")
    );
    let mut b = bytes.clone();
    b[4] = 9;
    assert!(parse(&b).unwrap_err().to_string().contains("version 9"));
    // A tensor count the file cannot hold: refused before allocating.
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(&b).unwrap_err().to_string().contains("cannot hold"));
    // `general.alignment` = 0 (candle's own reader divides by it).
    let with_alignment = {
        use candle_core::quantized::QTensor;
        use candle_core::quantized::gguf_file::{self, Value};
        let t = QTensor::quantize(
            &Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let a = Value::U32(0);
        let mut cur = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut cur, &[("general.alignment", &a)], &[("t", &t)]).unwrap();
        cur.into_inner()
    };
    assert!(
        parse(&with_alignment)
            .unwrap_err()
            .to_string()
            .contains("alignment")
    );
}

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    let w = Tensor::arange(0f32, 8.0 * 3.0, &Device::Cpu)
        .unwrap()
        .reshape((8, 3))
        .unwrap();
    // llama.cpp: reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).
    let p = w
        .reshape((2, 2, 2, 3))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((8, 3))
        .unwrap();
    let back = tandem_model::gguf::unpermute_qk(&p, 2).unwrap();
    assert_eq!(max_abs_diff(&back, &w), 0.0);
    assert!(tandem_model::gguf::unpermute_qk(&w, 3).is_err());
}

/// Writes the fuzz seed `model/fuzz/corpus/gguf/tiny-q4_0.gguf` (run by hand:
/// `cargo test -p tandem-model --test gguf -- --ignored write_fuzz_seed`).
#[test]
#[ignore = "writes the committed fuzz seed"]
fn write_fuzz_seed() {
    let (bytes, _) = tiny_gguf(GgmlDType::Q4_0);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tiny-q4_0.gguf"), bytes).unwrap();
}
