//! RFC 9162 §2.1 Merkle trees: hashing, inclusion and consistency proofs (generation and
//! verification), and an in-memory tree.
//!
//! Proof generation is written against [`HashSource`], which hands out the hashes of complete
//! subtrees; the in-memory [`MemoryTree`] is one source, a tile store is another.

use sha2::{Digest, Sha256};

use super::LogError;

/// A SHA-256 hash of a node of the tree.
pub type Hash = [u8; 32];

/// RFC 9162 §2.1.1: the hash of an empty tree, `SHA-256()`.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Proofs longer than this cannot belong to a tree of at most 2^64 leaves.
const MAX_PROOF_LEN: usize = 64;

/// RFC 9162 §2.1.1: `MTH({d(0)}) = SHA-256(0x00 || d(0))`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 §2.1.1: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 9162 §2.1.1: the split point `k` of a tree of `n > 1` leaves, the largest power of two
/// smaller than `n`.
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

fn inclusion_err(index: u64, tree_size: u64, reason: &str) -> LogError {
    LogError::InclusionProof {
        index,
        tree_size,
        reason: reason.to_owned(),
    }
}

fn consistency_err(old_size: u64, new_size: u64, reason: &str) -> LogError {
    LogError::ConsistencyProof {
        old_size,
        new_size,
        reason: reason.to_owned(),
    }
}

/// RFC 9162 §2.1.3.2: recompute the root from a leaf hash and its inclusion path.
///
/// Returns `None` when the path has the wrong length for `(index, tree_size)`.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
) -> Option<Hash> {
    // 1. Compare leaf_index against tree_size. If leaf_index >= tree_size, fail.
    if index >= tree_size || proof.len() > MAX_PROOF_LEN {
        return None;
    }
    // 2. Set fn to leaf_index and sn to tree_size - 1.
    let (mut f_n, mut s_n) = (index, tree_size - 1);
    // 3. Set r to hash.
    let mut r = *leaf_hash;
    // 4. For each value p in the inclusion_path array:
    for p in proof {
        // a. If sn is 0, then stop the iteration and fail the proof verification.
        if s_n == 0 {
            return None;
        }
        // b. If LSB(fn) is set, or if fn is equal to sn, then:
        if f_n & 1 == 1 || f_n == s_n {
            // i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, &r);
            // ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            //     LSB(fn) is set or fn is 0.
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            // Otherwise: i. Set r to HASH(0x01 || r || p).
            r = node_hash(&r, p);
        }
        // c. Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Compare sn to 0 (the caller compares r against root_hash).
    (s_n == 0).then_some(r)
}

/// RFC 9162 §2.1.3.2: verify that `leaf_hash` is the leaf at `index` of the tree of `tree_size`
/// leaves whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LogError> {
    if index >= tree_size {
        return Err(inclusion_err(
            index,
            tree_size,
            "the leaf index is not below the tree size",
        ));
    }
    match root_from_inclusion_proof(leaf_hash, index, tree_size, proof) {
        None => Err(inclusion_err(
            index,
            tree_size,
            &format!(
                "a proof of {} hashes has the wrong length for this leaf and tree size",
                proof.len()
            ),
        )),
        Some(r) if r == *root => Ok(()),
        Some(r) => Err(inclusion_err(
            index,
            tree_size,
            &format!(
                "the proof leads to root {} but the checkpoint has {}",
                hex::encode(r),
                hex::encode(root)
            ),
        )),
    }
}

/// RFC 9162 §2.1.4.2: verify that the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root`.
///
/// Edge cases outside the RFC's algorithm (which assumes `0 < old_size < new_size`): every tree
/// extends the empty tree, with an empty proof; a tree is consistent with itself only with an
/// empty proof and equal roots (RFC 9162 §2.1.4.1, `SUBPROOF(m, D[m], true) = {}`).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), LogError> {
    let err = |reason: &str| consistency_err(old_size, new_size, reason);
    if old_size > new_size {
        return Err(err("the old tree is larger than the new one"));
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(err("a proof from the empty tree must be empty"));
        }
        if *old_root != EMPTY_ROOT {
            return Err(err("the old root is not the root of the empty tree"));
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(err("a proof between equal sizes must be empty"));
        }
        if old_root != new_root {
            return Err(err(&format!(
                "two different roots for the same size ({} and {})",
                hex::encode(old_root),
                hex::encode(new_root)
            )));
        }
        return Ok(());
    }
    // 1. If consistency_path is an empty array, stop and fail the proof verification.
    if proof.is_empty() {
        return Err(err("the proof is empty"));
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(err("the proof is longer than any tree allows"));
    }
    // 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    // 3. Set fn to first - 1 and sn to second - 1.
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    // 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Set both fr and sr to the first value in the consistency_path array.
    let (mut fr, mut sr) = (path[0], path[0]);
    // 6. For each subsequent value c in the consistency_path array:
    for c in &path[1..] {
        // a. If sn is 0, then stop the iteration and fail the proof verification.
        if s_n == 0 {
            return Err(err("the proof has more hashes than the tree sizes allow"));
        }
        // b. If LSB(fn) is set, or if fn is equal to sn, then:
        if f_n & 1 == 1 || f_n == s_n {
            // i. Set fr to HASH(0x01 || c || fr). ii. Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            // iii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            //      LSB(fn) is set or fn is 0.
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            // Otherwise: i. Set sr to HASH(0x01 || sr || c).
            sr = node_hash(&sr, c);
        }
        // c. Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 7. Verify that fr equals first_hash, sr equals second_hash, and sn is 0.
    if s_n != 0 {
        return Err(err("the proof has too few hashes for these tree sizes"));
    }
    if fr != *old_root {
        return Err(err(&format!(
            "the proof leads to old root {} but the older checkpoint has {}",
            hex::encode(fr),
            hex::encode(old_root)
        )));
    }
    if sr != *new_root {
        return Err(err(&format!(
            "the proof leads to new root {} but the newer checkpoint has {}",
            hex::encode(sr),
            hex::encode(new_root)
        )));
    }
    Ok(())
}

/// Hashes of complete subtrees: `level` is the height (0 = leaves) and `index` counts subtrees
/// of `2^level` leaves from the left, so the subtree covers leaves
/// `[index * 2^level, (index + 1) * 2^level)`.
pub trait HashSource {
    /// The hash of a complete subtree, or an error if the source does not hold it.
    fn subtree_hash(&self, level: u8, index: u64) -> Result<Hash, LogError>;
}

/// RFC 9162 §2.1.1: `MTH(D[lo:hi])` for a range that occurs in the recursive definition, i.e.
/// `lo` is a multiple of the largest power of two not above `hi - lo`.
fn range_hash<S: HashSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Result<Hash, LogError> {
    let n = hi - lo;
    if n.is_power_of_two() {
        let level = n.trailing_zeros() as u8;
        return src.subtree_hash(level, lo >> level);
    }
    let k = split(n);
    let left = range_hash(src, lo, lo + k)?;
    let right = range_hash(src, lo + k, hi)?;
    Ok(node_hash(&left, &right))
}

/// RFC 9162 §2.1.1: the root of the first `size` leaves.
pub fn root_hash<S: HashSource + ?Sized>(src: &S, size: u64) -> Result<Hash, LogError> {
    if size == 0 {
        return Ok(EMPTY_ROOT);
    }
    range_hash(src, 0, size)
}

/// RFC 9162 §2.1.3.1: `PATH(m, D[n])`, the inclusion proof of leaf `index` in the tree of the
/// first `tree_size` leaves.
pub fn inclusion_proof<S: HashSource + ?Sized>(
    src: &S,
    index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, LogError> {
    if index >= tree_size {
        return Err(LogError::InvalidArgument(format!(
            "leaf {index} is not in a tree of size {tree_size}"
        )));
    }
    let mut proof = Vec::new();
    // Walk down from the root; the proof lists siblings from the leaf up, so collect and reverse.
    let (mut lo, mut hi, mut m) = (0u64, tree_size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            // PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])
            proof.push(range_hash(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            // PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])
            proof.push(range_hash(src, lo, lo + k)?);
            lo += k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 §2.1.4.1: `PROOF(m, D[n])`, the consistency proof from the tree of `old_size`
/// leaves to the tree of `new_size` leaves.
pub fn consistency_proof<S: HashSource + ?Sized>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, LogError> {
    if old_size > new_size {
        return Err(LogError::InvalidArgument(format!(
            "no consistency proof from size {old_size} to the smaller size {new_size}"
        )));
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled; hashes are produced root-first, so reverse at the end.
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut m, mut b) = (0u64, new_size, old_size, true);
    loop {
        let n = hi - lo;
        if m == n {
            // SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}
            if !b {
                proof.push(range_hash(src, lo, hi)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            // SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            proof.push(range_hash(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            // SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            proof.push(range_hash(src, lo, lo + k)?);
            lo += k;
            m -= k;
            b = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// An append-only Merkle tree held in memory: every complete subtree hash at every level.
///
/// Memory is about 64 bytes per leaf (2 hashes per leaf summed over all levels).
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    /// `levels[l][i]` is the hash of the complete subtree of height `l` at index `i`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append a leaf by its hash; returns its index.
    pub fn push_leaf_hash(&mut self, h: Hash) -> u64 {
        let index = self.size();
        let mut level = 0usize;
        let mut h = h;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            h = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
        index
    }

    /// Append a leaf by its data; returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        self.check_size(size)?;
        root_hash(self, size)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `tree_size` leaves.
    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(tree_size)?;
        inclusion_proof(self, index, tree_size)
    }

    /// The consistency proof between two sizes of this tree.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(new_size)?;
        consistency_proof(self, old_size, new_size)
    }

    /// The stored leaf hashes and level hashes (for writing tiles).
    pub fn level(&self, level: u8) -> &[Hash] {
        self.levels.get(level as usize).map_or(&[], Vec::as_slice)
    }

    fn check_size(&self, size: u64) -> Result<(), LogError> {
        if size > self.size() {
            return Err(LogError::InvalidArgument(format!(
                "tree size {size} is beyond the {} leaves held",
                self.size()
            )));
        }
        Ok(())
    }
}

impl HashSource for MemoryTree {
    fn subtree_hash(&self, level: u8, index: u64) -> Result<Hash, LogError> {
        self.levels
            .get(level as usize)
            .and_then(|l| usize::try_from(index).ok().and_then(|i| l.get(i)))
            .copied()
            .ok_or_else(|| {
                LogError::InvalidArgument(format!(
                    "no complete subtree at level {level} index {index} in a tree of {} leaves",
                    self.size()
                ))
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Naive RFC 9162 §2.1.1 MTH over leaf hashes, as an independent reference.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (MemoryTree, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let h = leaf_hash(&i.to_be_bytes());
            t.push_leaf_hash(h);
            leaves.push(h);
        }
        (t, leaves)
    }

    #[test]
    fn split_is_largest_power_of_two_below() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 40, 1 << 39),
        ] {
            assert_eq!(split(n), k, "n={n}");
        }
    }

    #[test]
    fn roots_match_naive_definition() {
        let (t, leaves) = tree(70);
        for size in 0..=70u64 {
            assert_eq!(
                t.root(size).unwrap(),
                mth(&leaves[..size as usize]),
                "size {size}"
            );
        }
        assert!(t.root(71).is_err());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_mutations_fail() {
        let (t, leaves) = tree(33);
        for size in 1..=33u64 {
            let root = t.root(size).unwrap();
            for i in 0..size {
                let p = t.inclusion_proof(i, size).unwrap();
                verify_inclusion(&leaves[i as usize], i, size, &p, &root).unwrap();
                assert!(verify_inclusion(&leaves[i as usize], i + 1, size, &p, &root).is_err());
                // (A proof can also fit a different tree size with the same path shape; the
                // checkpoint's signature binds size and root together, so that is harmless.)
                let mut longer = p.clone();
                longer.push([0; 32]);
                assert!(verify_inclusion(&leaves[i as usize], i, size, &longer, &root).is_err());
                if !p.is_empty() {
                    assert!(
                        verify_inclusion(&leaves[i as usize], i, size, &p[1..], &root).is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_mutations_fail() {
        let (t, _) = tree(33);
        for new in 0..=33u64 {
            let new_root = t.root(new).unwrap();
            for old in 0..=new {
                let old_root = t.root(old).unwrap();
                let p = t.consistency_proof(old, new).unwrap();
                verify_consistency(old, new, &old_root, &new_root, &p).unwrap();
                if old > 0 && old < new {
                    let wrong_old = t.root(old - 1).unwrap();
                    assert!(verify_consistency(old, new, &wrong_old, &new_root, &p).is_err());
                    assert!(verify_consistency(old, new, &old_root, &old_root, &p).is_err());
                    assert!(verify_consistency(old, new, &old_root, &new_root, &p[1..]).is_err());
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let (t, leaves) = tree(5);
        assert!(t.inclusion_proof(5, 5).is_err());
        assert!(t.consistency_proof(4, 3).is_err());
        assert!(verify_inclusion(&leaves[0], 0, 0, &[], &EMPTY_ROOT).is_err());
        assert!(
            verify_inclusion(&leaves[0], u64::MAX, u64::MAX, &[[0; 32]; 65], &EMPTY_ROOT).is_err()
        );
        assert!(verify_consistency(3, 2, &EMPTY_ROOT, &EMPTY_ROOT, &[]).is_err());
        assert!(verify_consistency(1, u64::MAX, &EMPTY_ROOT, &EMPTY_ROOT, &[[0; 32]; 3]).is_err());
    }
}
