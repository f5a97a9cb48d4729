//! Batched appends: one `POST /add-batch` carries several entries, the log commits them in one
//! durable batch and answers with one checkpoint and an inclusion proof per entry.
//!
//! Request body: the entries one after another, each as `u16 big-endian length || bytes` (the
//! framing of a C2SP tlog-tiles entry bundle), at least one and at most [`MAX_BATCH_ENTRIES`],
//! the whole body at most [`MAX_BATCH_BODY`] bytes. Entries are appended in that order, at
//! consecutive indices.
//!
//! Answer (JSON [`BatchInclusion`]): `first_index` (the index of the first entry; entry `i` of
//! the request is at `first_index + i`), `tree_size`, `inclusion_proofs` (one RFC 9162 path per
//! entry, in request order, each hash in base64) and `checkpoint` (the signed checkpoint of
//! `tree_size` entries, a C2SP signed note). It is sent only once every entry of the request is
//! in the WAL and a checkpoint covering them is published, exactly as for `POST /add`.
//! [`BatchInclusion::bundles`] turns it into one [`InclusionBundle`] per entry.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::LogError;
use super::note::{NoteVerifier, WitnessPolicy, open_checkpoint};
use super::proof::{InclusionBundle, VerifiedInclusion};
use super::tile::MAX_ENTRY_LEN;

/// Most entries one batch request may carry.
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// Largest batch request body, in bytes.
pub const MAX_BATCH_BODY: usize = 8 << 20;

/// Encode entries as a batch request body.
pub fn encode_batch<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, LogError> {
    if entries.is_empty() || entries.len() > MAX_BATCH_ENTRIES {
        return Err(LogError::InvalidArgument(format!(
            "a batch holds 1 to {MAX_BATCH_ENTRIES} entries, not {}",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.iter().map(|e| 2 + e.as_ref().len()).sum());
    for (i, e) in entries.iter().enumerate() {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| {
            LogError::InvalidArgument(format!(
                "entry {i} of the batch is {} bytes long; at most {MAX_ENTRY_LEN}",
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    if out.len() > MAX_BATCH_BODY {
        return Err(LogError::InvalidArgument(format!(
            "the batch encodes to {} bytes; at most {MAX_BATCH_BODY}: split it",
            out.len()
        )));
    }
    Ok(out)
}

/// Parse a batch request body: the byte range of each entry within `body`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Range<usize>>, LogError> {
    let bad = |what: String| LogError::MalformedBatch(what);
    if body.is_empty() {
        return Err(bad("the batch holds no entries".into()));
    }
    if body.len() > MAX_BATCH_BODY {
        return Err(bad(format!(
            "the batch is {} bytes; at most {MAX_BATCH_BODY}",
            body.len()
        )));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < body.len() {
        if out.len() == MAX_BATCH_ENTRIES {
            return Err(bad(format!(
                "the batch holds more than {MAX_BATCH_ENTRIES} entries"
            )));
        }
        let Some(&[hi, lo]) = body.get(pos..pos + 2) else {
            return Err(bad(format!(
                "the batch ends inside the length of entry {} (byte {pos})",
                out.len()
            )));
        };
        let start = pos + 2;
        let end = start + usize::from(u16::from_be_bytes([hi, lo]));
        if end > body.len() {
            return Err(bad(format!(
                "entry {} of the batch claims {} bytes but only {} remain",
                out.len(),
                end - start,
                body.len() - start
            )));
        }
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}

/// The log's answer to a batch: one checkpoint, one inclusion proof per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchInclusion {
    /// Index of the batch's first entry; the others follow it.
    pub first_index: u64,
    /// Size of the tree the proofs are for (equal to the checkpoint's size).
    pub tree_size: u64,
    /// RFC 9162 inclusion paths, one per entry in request order, leaf side first, in base64.
    pub inclusion_proofs: Vec<Vec<String>>,
    /// The signed checkpoint (C2SP signed note).
    pub checkpoint: String,
}

impl BatchInclusion {
    /// One inclusion bundle per entry, in request order.
    pub fn bundles(&self) -> Result<Vec<InclusionBundle>, LogError> {
        self.inclusion_proofs
            .iter()
            .enumerate()
            .map(|(i, proof)| {
                let index = self.first_index.checked_add(i as u64).ok_or_else(|| {
                    LogError::MalformedProof(format!(
                        "batch entry {i}: first_index {} + {i} overflows",
                        self.first_index
                    ))
                })?;
                Ok(InclusionBundle {
                    index,
                    tree_size: self.tree_size,
                    inclusion_proof: proof.clone(),
                    checkpoint: self.checkpoint.clone(),
                })
            })
            .collect()
    }

    /// Verify that every one of `entries` (the batch as sent) is in the log at its index: the
    /// checkpoint is signed by `log` (and cosigned per `witnesses`) and each proof leads from
    /// its entry to the checkpoint's root.
    pub fn verify<E: AsRef<[u8]>>(
        &self,
        entries: &[E],
        log: &NoteVerifier,
        witnesses: Option<&WitnessPolicy>,
        now: Option<(u64, u64)>,
    ) -> Result<Vec<VerifiedInclusion>, LogError> {
        if entries.len() != self.inclusion_proofs.len() {
            return Err(LogError::MalformedProof(format!(
                "the log answered {} inclusion proofs for a batch of {} entries",
                self.inclusion_proofs.len(),
                entries.len()
            )));
        }
        // The signature is checked once; each bundle then reuses the opened checkpoint.
        let checkpoint = open_checkpoint(self.checkpoint.as_bytes(), log, witnesses, now)?;
        self.bundles()?
            .iter()
            .zip(entries)
            .map(|(b, e)| b.verify_under(e.as_ref(), &checkpoint))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Vec<Vec<u8>> {
        vec![
            b"first".to_vec(),
            Vec::new(),
            vec![0xff; 300],
            b"x".to_vec(),
        ]
    }

    #[test]
    fn round_trips() {
        let entries = sample();
        let body = encode_batch(&entries).unwrap();
        let ranges = parse_batch(&body).unwrap();
        let got: Vec<&[u8]> = ranges.iter().map(|r| &body[r.clone()]).collect();
        assert_eq!(got, entries);
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        assert!(encode_batch::<Vec<u8>>(&[]).is_err());
        assert!(encode_batch(&[vec![0u8; MAX_ENTRY_LEN + 1]]).is_err());
        let many = vec![Vec::<u8>::new(); MAX_BATCH_ENTRIES + 1];
        assert!(encode_batch(&many).is_err());
        // 4097 empty entries: 8194 bytes of zeros.
        let err = parse_batch(&vec![0u8; 2 * (MAX_BATCH_ENTRIES + 1)]).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        assert_eq!(
            parse_batch(&vec![0u8; 2 * MAX_BATCH_ENTRIES])
                .unwrap()
                .len(),
            MAX_BATCH_ENTRIES
        );
        assert!(parse_batch(&vec![0u8; MAX_BATCH_BODY + 2]).is_err());
        assert!(parse_batch(&[]).is_err());
    }

    #[test]
    fn every_truncation_is_refused_or_a_prefix() {
        let entries = sample();
        let body = encode_batch(&entries).unwrap();
        // Offsets where a whole number of entries ends parse as that prefix; every other cut
        // is refused.
        let mut boundaries = vec![];
        let mut pos = 0;
        for e in &entries {
            pos += 2 + e.len();
            boundaries.push(pos);
        }
        for cut in 0..body.len() {
            match parse_batch(&body[..cut]) {
                Ok(r) => {
                    let n = boundaries.iter().position(|&b| b == cut).unwrap() + 1;
                    assert_eq!(r.len(), n, "cut at {cut}");
                }
                Err(e) => {
                    assert!(!boundaries.contains(&cut), "cut at {cut}: {e}");
                    assert!(matches!(e, LogError::MalformedBatch(_)));
                }
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_or_reparsed_consistently() {
        let body = encode_batch(&sample()).unwrap();
        for i in 0..body.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = body.clone();
                b[i] ^= bit;
                // Either refused, or every range lies in the body and re-encoding the parsed
                // entries gives back exactly these bytes.
                if let Ok(ranges) = parse_batch(&b) {
                    let got: Vec<&[u8]> = ranges.iter().map(|r| &b[r.clone()]).collect();
                    assert_eq!(encode_batch(&got).unwrap(), b, "byte {i} bit {bit:#x}");
                }
            }
        }
    }

    #[test]
    fn answers_with_a_wrong_count_or_index_are_refused() {
        let log = crate::log::note::NoteSigner::generate_with_rng(
            &mut rand::rngs::OsRng,
            "test.tandem/log",
        )
        .unwrap()
        .0;
        let a = BatchInclusion {
            first_index: u64::MAX,
            tree_size: 3,
            inclusion_proofs: vec![vec![], vec![]],
            checkpoint: String::new(),
        };
        assert!(a.bundles().is_err());
        let err = a
            .verify(&[b"one"], &log.verifier(), None, None)
            .unwrap_err();
        assert!(err.to_string().contains("2 inclusion proofs"), "{err}");
    }
}
