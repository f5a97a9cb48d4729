//! C2SP tlog-checkpoint: the body of a signed tree head.
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <root hash, base64>\n
//! [<extension line>\n ...]
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::LogError;
use super::merkle::Hash;

/// Upper bound on a checkpoint body; real ones are about 100 bytes.
pub const MAX_CHECKPOINT_LEN: usize = 64 * 1024;

/// A parsed checkpoint body (C2SP tlog-checkpoint). Parsing is strict so that
/// `parse(encode(c)) == c` and `encode(parse(b)) == b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line: a unique identifier of the log, e.g. `tandem.example/log`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 9162 root hash of the tree.
    pub root_hash: Hash,
    /// Optional extension lines (opaque, non-empty), in order.
    pub extensions: Vec<String>,
}

fn malformed(reason: impl Into<String>) -> LogError {
    LogError::MalformedCheckpoint(reason.into())
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root_hash: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root_hash,
            extensions: Vec::new(),
        }
    }

    /// C2SP tlog-checkpoint "Note text": parse a checkpoint body (the note text, including its
    /// final newline, without signatures).
    pub fn parse(text: &[u8]) -> Result<Self, LogError> {
        if text.len() > MAX_CHECKPOINT_LEN {
            return Err(malformed(format!(
                "{} bytes is longer than the {MAX_CHECKPOINT_LEN}-byte limit",
                text.len()
            )));
        }
        let text = std::str::from_utf8(text).map_err(|_| malformed("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the last line does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("the origin line is empty"));
        }
        if origin.chars().any(char::is_control) {
            return Err(malformed("the origin line contains a control character"));
        }
        let size_line = lines
            .next()
            .ok_or_else(|| malformed("the tree size line is missing"))?;
        let size = parse_decimal(size_line).ok_or_else(|| {
            malformed(format!(
                "tree size {size_line:?} is not a canonical decimal number"
            ))
        })?;
        let hash_line = lines
            .next()
            .ok_or_else(|| malformed("the root hash line is missing"))?;
        let root_hash = parse_hash(hash_line).ok_or_else(|| {
            malformed(format!(
                "root hash {hash_line:?} is not 32 bytes of canonical base64"
            ))
        })?;
        let mut extensions = Vec::new();
        for line in lines {
            if line.is_empty() {
                return Err(malformed("an extension line is empty"));
            }
            if line.chars().any(char::is_control) {
                return Err(malformed("an extension line contains a control character"));
            }
            extensions.push(line.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root_hash,
            extensions,
        })
    }

    /// Encode the checkpoint body.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root_hash)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }
}

/// A decimal with no sign and no leading zeros (except "0" itself).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// 32 bytes of standard, padded, canonical base64.
pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    let bytes = B64.decode(s).ok()?;
    let h: Hash = bytes.try_into().ok()?;
    // Reject non-canonical encodings (stray bits in the last character) so encoding round-trips.
    (B64.encode(h) == s).then_some(h)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn parses_the_spec_example_and_round_trips() {
        let c = Checkpoint::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20_852_163);
        assert_eq!(c.encode(), EXAMPLE);
        let mut with_ext = c.clone();
        with_ext
            .extensions
            .push("Timestamp: 1689748607742585419".into());
        assert_eq!(
            Checkpoint::parse(with_ext.encode().as_bytes()).unwrap(),
            with_ext
        );
    }

    #[test]
    fn rejects_malformed_bodies() {
        for bad in [
            "",
            "\n",
            "origin\n",
            "origin\n12\n",
            "origin\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "origin\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "origin\n+1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "origin\n18446744073709551616\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",
            "origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n",
            "origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
            "origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
            "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        ] {
            assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncation_at_every_offset_fails_or_differs() {
        let b = EXAMPLE.as_bytes();
        let orig = Checkpoint::parse(b).unwrap();
        for cut in 0..b.len() {
            if let Ok(c) = Checkpoint::parse(&b[..cut]) {
                assert_ne!(c, orig, "cut {cut}");
            }
        }
    }

    #[test]
    fn flipping_any_byte_never_yields_the_same_checkpoint() {
        let b = EXAMPLE.as_bytes();
        let orig = Checkpoint::parse(b).unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut m = b.to_vec();
                m[i] ^= 1 << bit;
                if let Ok(c) = Checkpoint::parse(&m) {
                    assert_ne!(c, orig, "byte {i} bit {bit}");
                    assert_eq!(c.encode().as_bytes(), &m[..], "parse must be canonical");
                }
            }
        }
    }
}
