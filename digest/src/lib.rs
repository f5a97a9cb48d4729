//! `tandem-digest`: the one SHA-256 digest type of Tandem, written as
//! `sha256:<64 lowercase hex digits>` — the form every measurement, release digest, model and
//! adapter digest and report uses. The model stack (`tandem-model`) and the attestation layer
//! (`tandem-attest`) share it, so a digest crosses from one to the other without conversion.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Displayed and parsed as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

/// A string that is not of the form `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a digest of the form sha256:<64 lowercase hex digits>")]
pub struct DigestParseError(pub String);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest and length of everything `reader` yields, read in 1 MiB blocks; `progress`
    /// gets the size of each block as it is hashed. The one way Tandem hashes a file (the
    /// caller opens it: this crate does no I/O of its own).
    pub fn of_reader(
        mut reader: impl std::io::Read,
        mut progress: impl FnMut(u64),
    ) -> std::io::Result<(Self, u64)> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            size += n as u64;
            progress(n as u64);
        }
        Ok((Self(h.finalize().into()), size))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex digits without a prefix.
    pub fn from_hex(s: &str) -> Result<Self, DigestParseError> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestParseError(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError(s.to_owned()))?;
        Ok(Self(out))
    }

    /// A short form for messages: `sha256:ab12cd34…`.
    pub fn short(&self) -> String {
        format!("sha256:{}…", &self.hex()[..8])
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(h) => Self::from_hex(h).map_err(|_| DigestParseError(s.to_owned())),
            None => Err(DigestParseError(s.to_owned())),
        }
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_reader_equals_of_bytes_across_blocks() {
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut seen = 0;
        let (d, n) = Sha256Digest::of_reader(&data[..], |k| seen += k).expect("read");
        assert_eq!(
            (d, n, seen),
            (Sha256Digest::of(&data), data.len() as u64, n)
        );
        let (e, m) = Sha256Digest::of_reader(&[][..], |_| {}).expect("empty");
        assert_eq!((e, m), (Sha256Digest::of(b""), 0));
    }

    #[test]
    fn round_trip_and_rejects() {
        let d = Sha256Digest::of(b"abc");
        // FIPS 180-2 appendix B.1.
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Sha256Digest>(), Ok(d));
        for bad in [
            "",
            "sha256:",
            "sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015adX",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }
}
