//! C2SP tlog-tiles: tile paths, hash tiles, entry bundles, and a [`HashSource`] over tiles.
//!
//! A tile at level `L` and index `N` holds up to 256 consecutive hashes of level `8L` of the
//! tree, starting at hash `256 N`; a partial tile of width `W < 256` holds the first `W`.
//! Entry bundles are the level-0 tiles' leaves: each entry as a big-endian `uint16` length and
//! its bytes.

use std::collections::HashMap;

use super::LogError;
use super::merkle::{Hash, HashSource, node_hash};

/// C2SP tlog-tiles: tiles have height 8.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// C2SP tlog-tiles entry bundles: entries are prefixed with a `uint16` length.
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;
/// Highest tile level that can exist in a tree of at most 2^64 leaves.
const MAX_LEVEL: u8 = 63 / TILE_HEIGHT;

/// Which kind of tile a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// A hash tile at this tile level (hashes of tree level `8 * level`).
    Hash(u8),
    /// An entry bundle.
    Entries,
}

/// A tile coordinate: kind, index within its level, and width (1..=256; 256 is a full tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TilePath {
    /// Hash tile level, or entry bundle.
    pub kind: TileKind,
    /// Index of the tile within its level.
    pub index: u64,
    /// Number of hashes or entries in the tile.
    pub width: u16,
}

fn bad_path(path: &str, why: &str) -> LogError {
    LogError::MalformedTile(format!("tile path {path:?}: {why}"))
}

impl TilePath {
    /// The tile of `kind` and `index` as it exists in a tree of `tree_size` leaves, or `None` if
    /// it holds nothing yet.
    pub fn for_tree(kind: TileKind, index: u64, tree_size: u64) -> Option<Self> {
        let level = match kind {
            TileKind::Hash(l) => l,
            TileKind::Entries => 0,
        };
        let hashes_at_level = tree_size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT))?;
        let start = index.checked_mul(TILE_WIDTH)?;
        let width = hashes_at_level.checked_sub(start)?.min(TILE_WIDTH);
        (width > 0).then_some(Self {
            kind,
            index,
            width: width as u16,
        })
    }

    /// Whether the tile is full (immutable).
    pub fn is_full(&self) -> bool {
        u64::from(self.width) == TILE_WIDTH
    }

    /// C2SP tlog-tiles path: `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`, with `N` in
    /// zero-padded groups of three digits, all but the last prefixed by `x`.
    pub fn to_path(&self) -> String {
        let kind = match self.kind {
            TileKind::Hash(l) => l.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let mut n = self.index;
        let mut groups = vec![format!("{:03}", n % 1000)];
        while n >= 1000 {
            n /= 1000;
            groups.push(format!("x{:03}", n % 1000));
        }
        groups.reverse();
        let mut p = format!("tile/{kind}/{}", groups.join("/"));
        if !self.is_full() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parse a tile path (without a leading `/`). Only canonical encodings are accepted.
    pub fn parse(path: &str) -> Result<Self, LogError> {
        if path.len() > 96 {
            return Err(bad_path(path, "too long"));
        }
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad_path(path, "does not start with tile/"))?;
        let (kind_str, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad_path(path, "missing tile index"))?;
        let kind = if kind_str == "entries" {
            TileKind::Entries
        } else {
            if kind_str.is_empty()
                || !kind_str.bytes().all(|b| b.is_ascii_digit())
                || (kind_str.len() > 1 && kind_str.starts_with('0'))
            {
                return Err(bad_path(path, "the level is not a canonical decimal"));
            }
            let l: u8 = kind_str
                .parse()
                .map_err(|_| bad_path(path, "level out of range"))?;
            if l > MAX_LEVEL {
                return Err(bad_path(path, "level out of range"));
            }
            TileKind::Hash(l)
        };
        let (index_str, width) = match rest.split_once(".p/") {
            Some((idx, w)) => {
                if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) || w.starts_with('0') {
                    return Err(bad_path(
                        path,
                        "the partial width is not a canonical decimal",
                    ));
                }
                let w: u16 = w
                    .parse()
                    .map_err(|_| bad_path(path, "partial width out of range"))?;
                if u64::from(w) >= TILE_WIDTH {
                    return Err(bad_path(path, "a partial tile must be narrower than 256"));
                }
                (idx, w)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let groups: Vec<&str> = index_str.split('/').collect();
        let mut index: u64 = 0;
        for (i, g) in groups.iter().enumerate() {
            let last = i + 1 == groups.len();
            let digits = if last {
                *g
            } else {
                g.strip_prefix('x').ok_or_else(|| {
                    bad_path(path, "index groups before the last need an x prefix")
                })?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_path(path, "index groups must be three digits"));
            }
            let d: u64 = digits
                .parse()
                .map_err(|_| bad_path(path, "bad index group"))?;
            index = index
                .checked_mul(1000)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(|| bad_path(path, "index overflows"))?;
        }
        let t = Self { kind, index, width };
        // Leading zero groups ("x000/001") are not canonical.
        if t.to_path() != path {
            return Err(bad_path(path, "not in canonical form"));
        }
        Ok(t)
    }
}

/// Every tile (hash tiles at all levels and entry bundles) that changes when a tree grows from
/// `old_size` to `new_size`: the ones to write before publishing the larger checkpoint.
pub fn tiles_to_publish(old_size: u64, new_size: u64) -> Vec<TilePath> {
    let mut out = Vec::new();
    if new_size <= old_size {
        return out;
    }
    for level in 0..=MAX_LEVEL {
        let shift = u32::from(level) * u32::from(TILE_HEIGHT);
        let new_n = new_size >> shift;
        if new_n == 0 {
            break;
        }
        let old_n = old_size >> shift;
        if old_n == new_n {
            continue;
        }
        let first = old_n / TILE_WIDTH;
        let last = (new_n - 1) / TILE_WIDTH;
        for index in first..=last {
            if let Some(t) = TilePath::for_tree(TileKind::Hash(level), index, new_size) {
                // Skip a partial tile that did not change (same width as before).
                let before = TilePath::for_tree(TileKind::Hash(level), index, old_size);
                if before != Some(t) {
                    out.push(t);
                    if level == 0 {
                        out.push(TilePath {
                            kind: TileKind::Entries,
                            ..t
                        });
                    }
                }
            }
        }
    }
    out
}

/// The bytes of hash tile `(level, index)` of the given width: the concatenated hashes of
/// tree level `8 * level`, starting at `256 * index`.
pub fn hash_tile_data<S: HashSource + ?Sized>(
    src: &S,
    level: u8,
    index: u64,
    width: u16,
) -> Result<Vec<u8>, LogError> {
    let tree_level = level * TILE_HEIGHT;
    let start = index * TILE_WIDTH;
    let mut out = Vec::with_capacity(usize::from(width) * 32);
    for i in 0..u64::from(width) {
        out.extend_from_slice(&src.subtree_hash(tree_level, start + i)?);
    }
    Ok(out)
}

/// Encode an entry bundle.
pub fn encode_entry_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    for e in entries {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| {
            LogError::InvalidArgument(format!(
                "an entry of {} bytes is longer than the {MAX_ENTRY_LEN} bytes a tlog-tiles entry bundle allows",
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Parse an entry bundle that must hold exactly `width` entries.
pub fn parse_entry_bundle(data: &[u8], width: u16) -> Result<Vec<Vec<u8>>, LogError> {
    let mut entries = Vec::with_capacity(usize::from(width));
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(LogError::MalformedTile(
                "entry bundle ends inside a length prefix".into(),
            ));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = rest
            .get(2..2 + len)
            .ok_or_else(|| LogError::MalformedTile("entry bundle ends inside an entry".into()))?;
        entries.push(body.to_vec());
        rest = &rest[2 + len..];
        if entries.len() > usize::from(width) {
            break;
        }
    }
    if entries.len() != usize::from(width) {
        return Err(LogError::MalformedTile(format!(
            "entry bundle holds {} entries, the path says {width}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// Hash tiles fetched from a log, as a [`HashSource`] for proof generation on the client side.
///
/// When a needed tile is absent, [`HashSource::subtree_hash`] returns
/// [`LogError::MissingTile`] naming it; the caller fetches that tile, [`TileSet::insert`]s it and
/// tries again (at most one fetch per tile touched by the proof).
#[derive(Debug, Clone)]
pub struct TileSet {
    tree_size: u64,
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

impl TileSet {
    /// An empty set for a tree of `tree_size` leaves (taken from a verified checkpoint).
    pub fn new(tree_size: u64) -> Self {
        Self {
            tree_size,
            tiles: HashMap::new(),
        }
    }

    /// Add a hash tile's bytes. The width must be the one the tree size implies.
    pub fn insert(&mut self, tile: TilePath, data: &[u8]) -> Result<(), LogError> {
        let TileKind::Hash(level) = tile.kind else {
            return Err(LogError::InvalidArgument(
                "entry bundles are not hash tiles".into(),
            ));
        };
        if data.len() != usize::from(tile.width) * 32 {
            return Err(LogError::MalformedTile(format!(
                "tile {} has {} bytes, expected {}",
                tile.to_path(),
                data.len(),
                usize::from(tile.width) * 32
            )));
        }
        let hashes = data
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        self.tiles.insert((level, tile.index), hashes);
        Ok(())
    }
}

impl HashSource for TileSet {
    fn subtree_hash(&self, level: u8, index: u64) -> Result<Hash, LogError> {
        // The subtree of height `level` at `index` spans hashes [index << d, (index + 1) << d)
        // of tree level 8L, where L = level / 8 and d = level % 8.
        let tile_level = level / TILE_HEIGHT;
        let d = level % TILE_HEIGHT;
        let first = index << d;
        let count = 1u64 << d;
        let tile_index = first / TILE_WIDTH;
        let Some(want) = TilePath::for_tree(TileKind::Hash(tile_level), tile_index, self.tree_size)
        else {
            return Err(LogError::InvalidArgument(format!(
                "level {level} index {index} is outside a tree of {} leaves",
                self.tree_size
            )));
        };
        let start = usize::try_from(first % TILE_WIDTH).unwrap_or(usize::MAX);
        let end = start.saturating_add(count as usize);
        match self.tiles.get(&(tile_level, tile_index)) {
            Some(hashes) if hashes.len() >= end => Ok(fold(&hashes[start..end])),
            _ if end > usize::from(want.width) => Err(LogError::InvalidArgument(format!(
                "level {level} index {index} is not a complete subtree of a tree of {} leaves",
                self.tree_size
            ))),
            _ => Err(LogError::MissingTile(want)),
        }
    }
}

/// The root of a complete subtree given its `2^k` lowest-level hashes.
fn fold(hashes: &[Hash]) -> Hash {
    if hashes.len() == 1 {
        return hashes[0];
    }
    let mid = hashes.len() / 2;
    node_hash(&fold(&hashes[..mid]), &fold(&hashes[mid..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::log::merkle::{MemoryTree, inclusion_proof};

    #[test]
    fn paths_follow_the_spec_examples() {
        let t = TilePath {
            kind: TileKind::Hash(0),
            index: 1_234_067,
            width: 256,
        };
        assert_eq!(t.to_path(), "tile/0/x001/x234/067");
        let p = TilePath {
            kind: TileKind::Entries,
            index: 1_234_067,
            width: 8,
        };
        assert_eq!(p.to_path(), "tile/entries/x001/x234/067.p/8");
        for t in [t, p] {
            assert_eq!(TilePath::parse(&t.to_path()).unwrap(), t);
        }
        assert_eq!(
            TilePath::parse("tile/3/000").unwrap().kind,
            TileKind::Hash(3)
        );
    }

    #[test]
    fn non_canonical_paths_are_rejected() {
        for bad in [
            "tile/0/1",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/010",
            "tile/00/001",
            "tile/8/001",
            "tile/entries/1234",
            "tile/0/x001/x234",
            "tile//001",
            "tiles/0/001",
            "tile/0/001/",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
        ] {
            assert!(TilePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiles_to_publish_covers_every_level() {
        let t = tiles_to_publish(0, 70_000);
        // level 0: 273 full tiles + one partial of 112; level 1: 273 hashes -> one full + partial 17;
        // level 2: one partial tile of width 1.
        let l0: Vec<_> = t.iter().filter(|t| t.kind == TileKind::Hash(0)).collect();
        assert_eq!(l0.len(), 274);
        assert_eq!(l0.last().unwrap().width, 112);
        let l1: Vec<_> = t.iter().filter(|t| t.kind == TileKind::Hash(1)).collect();
        assert_eq!(
            l1.iter().map(|t| t.width).collect::<Vec<_>>(),
            vec![256, 17]
        );
        let l2: Vec<_> = t.iter().filter(|t| t.kind == TileKind::Hash(2)).collect();
        assert_eq!(l2.iter().map(|t| t.width).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            t.iter().filter(|t| t.kind == TileKind::Entries).count(),
            274
        );
        // Growing within one partial tile rewrites only that tile (and its bundle).
        assert_eq!(tiles_to_publish(10, 11).len(), 2);
        assert!(tiles_to_publish(11, 11).is_empty());
    }

    #[test]
    fn proofs_from_tiles_equal_proofs_from_memory() {
        let mut tree = MemoryTree::new();
        for i in 0u32..70_000 {
            tree.push(&i.to_be_bytes());
        }
        for size in [1u64, 255, 256, 257, 65_536, 65_537, 70_000] {
            let mut set = TileSet::new(size);
            for (index, _) in [(0u64, 0), (size - 1, 0), (size / 2, 0)] {
                let want = tree.inclusion_proof(index, size).unwrap();
                let got = loop {
                    match inclusion_proof(&set, index, size) {
                        Ok(p) => break p,
                        Err(LogError::MissingTile(t)) => {
                            let TileKind::Hash(l) = t.kind else { panic!() };
                            let data = hash_tile_data(&tree, l, t.index, t.width).unwrap();
                            set.insert(t, &data).unwrap();
                        }
                        Err(e) => panic!("{e}"),
                    }
                };
                assert_eq!(got, want, "size {size} index {index}");
            }
        }
    }

    #[test]
    fn entry_bundles_round_trip_and_reject_damage() {
        let entries: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), vec![7; 300]];
        let b = encode_entry_bundle(&entries).unwrap();
        assert_eq!(parse_entry_bundle(&b, 3).unwrap(), entries);
        assert!(parse_entry_bundle(&b, 2).is_err());
        assert!(parse_entry_bundle(&b, 4).is_err());
        for cut in 0..b.len() {
            assert!(parse_entry_bundle(&b[..cut], 3).is_err(), "cut {cut}");
        }
        assert!(encode_entry_bundle(&[vec![0u8; 65_536]]).is_err());
    }
}
