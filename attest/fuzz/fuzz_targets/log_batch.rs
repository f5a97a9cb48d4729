#![no_main]
//! `POST /add-batch` bodies and answers: accepted bodies re-encode exactly, every range lies in
//! the body, and an answer that parses turns into bundles without panicking.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::BatchInclusion;
use tandem_attest::log::batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(ranges) = batch::parse_batch(data) {
        assert!(!ranges.is_empty() && ranges.len() <= batch::MAX_BATCH_ENTRIES);
        let entries: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
        assert_eq!(batch::encode_batch(&entries).ok().as_deref(), Some(data));
    }
    if let Ok(answer) = serde_json::from_slice::<BatchInclusion>(data)
        && let Ok(bundles) = answer.bundles()
    {
        assert_eq!(bundles.len(), answer.inclusion_proofs.len());
        for (i, b) in bundles.iter().enumerate() {
            assert_eq!(b.index, answer.first_index + i as u64);
        }
    }
});
