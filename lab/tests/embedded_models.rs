//! The committed embedded models (`models/device` — palletized, with its recovery adapter —,
//! `models/server`, and `models/device-f16`, the uncompressed model the device model is made
//! from) and their adapters load, their digests are the ones their model cards state, and
//! their perplexity on a fixed slice
//! of the committed held-out text is within 1 % of the number recorded in `EVAL.md`.

use std::path::{Path, PathBuf};

use tandem_lab::train::data::{TokenStream, split_documents};
use tandem_lab::train::trainer::eval_loss;
use tandem_model::{DType, Device, LoadedModel, load_adapter, load_model};

/// The fast slice: 16 windows of 128 predicted tokens, evenly spread over the held-out text.
const SLICE_WINDOWS: usize = 16;
const SLICE_SEQ: usize = 128;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The value after `key` on the line that starts with it, up to the next backtick or space.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(key)?;
        let rest = rest.trim_start_matches([' ', '`', ':']);
        Some(rest.split(['`', ' ']).next().unwrap_or("").to_string())
    })
}

/// Checks `models/NAME` and returns it, loaded.
fn check_model(name: &str, with_adapters: bool) -> LoadedModel {
    let dir = repo().join("models").join(name);
    let dev = Device::Cpu;
    let m =
        load_model(&dir, DType::F32, &dev).unwrap_or_else(|e| panic!("{name} does not load: {e}"));
    let card = read(&dir.join("MODEL_CARD.md"));
    let want = field(&card, "- model digest")
        .unwrap_or_else(|| panic!("{name}/MODEL_CARD.md has no `- model digest` line"));
    assert_eq!(
        m.digest.to_string(),
        want,
        "{name}: weights changed without updating MODEL_CARD.md"
    );
    // The digest computed without loading (what nodes and devices pin) is the loaded one.
    assert_eq!(
        tandem_model::model_digest(&dir).expect("model_digest"),
        m.digest
    );

    let tasks: &[&str] = if with_adapters {
        &["proofread", "truecase"]
    } else {
        &[]
    };
    for task in tasks {
        let adir = dir.join("adapters").join(task);
        let a = load_adapter(&adir, m.model.config(), DType::F32, &dev)
            .unwrap_or_else(|e| panic!("{name} adapter {task} does not load: {e}"));
        let want = field(&card, &format!("- adapter {task} digest")).unwrap_or_else(|| {
            panic!("{name}/MODEL_CARD.md has no `- adapter {task} digest` line")
        });
        assert_eq!(
            a.digest.to_string(),
            want,
            "{name}/{task}: adapter changed without updating the card"
        );
        assert_eq!(
            tandem_model::adapter_digest(&adir).expect("adapter_digest"),
            a.digest
        );
    }

    let text = read(&repo().join("models/data/heldout.txt"));
    let eos = m
        .tokenizer
        .token_to_id("<|endoftext|>")
        .expect("tokenizer has <|endoftext|>");
    let docs = split_documents(&text)
        .into_iter()
        .map(|d| m.tokenizer.encode(d).expect("held-out text tokenizes"))
        .collect::<Vec<_>>();
    let stream = TokenStream::from_documents(docs, eos);
    let windows = stream.eval_windows(SLICE_SEQ, SLICE_WINDOWS);
    assert_eq!(windows.len(), SLICE_WINDOWS);
    let ppl = eval_loss(&m.model, &windows, None)
        .expect("evaluates")
        .exp();

    let eval = read(&repo().join("EVAL.md"));
    let recorded: f64 = field(&eval, &format!("- slice perplexity {name}"))
        .unwrap_or_else(|| panic!("EVAL.md has no `- slice perplexity {name}` line"))
        .parse()
        .expect("a number");
    let rel = (ppl - recorded).abs() / recorded;
    assert!(
        rel <= 0.01,
        "{name}: slice perplexity {ppl:.3} differs from EVAL.md's {recorded} by {:.2}%",
        rel * 100.0
    );
    m
}

#[test]
fn device_model_matches_card_and_eval() {
    let m = check_model("device", true);
    // What `tandem ask` runs is the palletized model with its recovery adapter.
    let dir = repo().join("models/device");
    assert_eq!(m.model.config().base_adapter.as_deref(), Some("recovery"));
    assert!(m.model.base_adapter().is_some());
    let weights = read_bytes(&dir.join("model.safetensors"));
    let f16 = read_bytes(&repo().join("models/device-f16/model.safetensors"));
    assert!(
        weights.len() * 4 <= f16.len(),
        "palletized weights {} B are more than 25% of the f16 file's {} B",
        weights.len(),
        f16.len()
    );
}

#[test]
fn uncompressed_device_model_matches_card_and_eval() {
    check_model("device-f16", false);
}

#[test]
fn server_model_matches_card_and_eval() {
    check_model("server", true);
}

#[test]
fn field_parser_reads_card_lines() {
    let card =
        "# x\n- model digest: `sha256:ab12`\n- slice perplexity device: 123.5 (16 windows)\n";
    assert_eq!(
        field(card, "- model digest").as_deref(),
        Some("sha256:ab12")
    );
    assert_eq!(
        field(card, "- slice perplexity device").as_deref(),
        Some("123.5")
    );
    assert_eq!(field(card, "- nothing"), None);
}
