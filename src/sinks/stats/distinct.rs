//! Distinct counts in bounded memory: exact while small, then a HyperLogLog
//! sketch.
//!
//! Up to [`EXACT_LIMIT`] distinct items the counter keeps their 64-bit hashes
//! and its count is exact (tests and small deployments see exact numbers).
//! Past that it turns into a HyperLogLog sketch of 2^16 one-byte registers
//! (64 KiB, standard error 1.04/√65536 ≈ 0.41%), read with Ertl's improved
//! estimator ("New cardinality estimation algorithms for HyperLogLog
//! sketches", 2017), which needs no empirical bias tables and is accurate
//! from a few thousand items to billions.
//!
//! Items are hashed with XXH3, a specified hash, so a snapshot written by one
//! build reads the same in the next.

use super::HashesSet;
use serde::{Deserialize, Serialize};

/// Below this many distinct items, counts are exact.
pub const EXACT_LIMIT: usize = 10_000;

/// Sketch precision: 2^PRECISION registers.
const PRECISION: u32 = 16;
const REGISTERS: usize = 1 << PRECISION;
/// Bits of the hash left after the register index.
const REMAINING_BITS: u32 = 64 - PRECISION;

/// The hash a distinct counter keys on.
pub fn hash_of(item: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(item.as_bytes())
}

/// The hash of an unordered pair (a conversation): the same in either order.
pub fn hash_of_pair(first: &str, second: &str) -> u64 {
    let (low, high) = if first <= second { (first, second) } else { (second, first) };
    // The first id's length up front keeps ("ab","c") apart from ("a","bc"),
    // whatever bytes the ids contain (a separator byte could be in an id).
    let mut joined = Vec::with_capacity(8 + low.len() + high.len());
    joined.extend_from_slice(&(low.len() as u64).to_le_bytes());
    joined.extend_from_slice(low.as_bytes());
    joined.extend_from_slice(high.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&joined)
}

/// The hash of a group's conversation: apart from every pair's, since a
/// pair's first id (sendIDs are never empty) has a length above 0.
pub fn hash_of_group(group_id: &str) -> u64 {
    hash_of_pair("", group_id)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Distinct {
    Exact(HashesSet),
    Estimated(HyperLogLog),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashesSet::default())
    }
}

impl Distinct {
    pub fn insert(&mut self, hash: u64) {
        match self {
            Distinct::Exact(hashes) => {
                hashes.insert(hash);
                if hashes.len() >= EXACT_LIMIT {
                    let mut sketch = HyperLogLog::new();
                    hashes.iter().for_each(|hash| sketch.insert(*hash));
                    *self = Distinct::Estimated(sketch);
                }
            }
            Distinct::Estimated(sketch) => sketch.insert(hash),
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(hashes) => hashes.len() as u64,
            Distinct::Estimated(sketch) => sketch.estimate().round() as u64,
        }
    }

    /// Whether the count is exact (false once it is an estimate).
    pub fn is_exact(&self) -> bool {
        matches!(self, Distinct::Exact(_))
    }
}

/// Register values run from 0 to REMAINING_BITS + 1.
const RANKS: usize = REMAINING_BITS as usize + 2;

/// A HyperLogLog sketch with 2^16 registers.
///
/// It also keeps how many registers hold each value, updated as registers
/// change, so an estimate reads 50 counts instead of 65,536 registers: `/stats`
/// and `/stats/daily` read up to 124 estimates while holding the stats lock.
/// Only the registers are saved; the counts are rebuilt when a snapshot is read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(from = "SavedSketch", into = "SavedSketch")]
pub struct HyperLogLog {
    registers: Vec<u8>,
    /// `ranks[v]`: registers holding value `v`.
    ranks: [u32; RANKS],
}

/// What a snapshot holds of a sketch (the layout snapshots have always had).
#[derive(Serialize, Deserialize)]
struct SavedSketch {
    registers: Vec<u8>,
}

impl From<SavedSketch> for HyperLogLog {
    fn from(saved: SavedSketch) -> Self {
        let mut registers = saved.registers;
        registers.resize(REGISTERS, 0);
        let mut ranks = [0u32; RANKS];
        for register in &mut registers {
            *register = (*register).min(RANKS as u8 - 1);
            ranks[*register as usize] += 1;
        }
        HyperLogLog { registers, ranks }
    }
}

impl From<HyperLogLog> for SavedSketch {
    fn from(sketch: HyperLogLog) -> Self {
        SavedSketch { registers: sketch.registers }
    }
}

impl HyperLogLog {
    fn new() -> Self {
        let mut ranks = [0u32; RANKS];
        ranks[0] = REGISTERS as u32;
        HyperLogLog { registers: vec![0; REGISTERS], ranks }
    }

    fn insert(&mut self, hash: u64) {
        let index = (hash >> REMAINING_BITS) as usize;
        // The rank is the position of the first 1 in the remaining bits, 1-based;
        // REMAINING_BITS + 1 when they are all 0.
        let remaining = hash << PRECISION;
        let rank = (remaining.leading_zeros().min(REMAINING_BITS) + 1) as u8;
        if let Some(register) = self.registers.get_mut(index)
            && rank > *register
        {
            self.ranks[*register as usize] -= 1;
            self.ranks[rank as usize] += 1;
            *register = rank;
        }
    }

    /// Ertl's improved raw estimator, from the counts of register values.
    fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let q = REMAINING_BITS as usize;
        let histogram = &self.ranks;
        let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
        for count in histogram[1..=q].iter().rev() {
            z = 0.5 * (z + f64::from(*count));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        m * m / (2.0 * std::f64::consts::LN_2 * z)
    }
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(items: u64) -> (u64, bool) {
        let mut distinct = Distinct::default();
        for item in 0..items {
            // Every item twice: duplicates must not count.
            distinct.insert(hash_of(&format!("user-{item}")));
            distinct.insert(hash_of(&format!("user-{item}")));
        }
        (distinct.count(), distinct.is_exact())
    }

    #[test]
    fn counts_are_exact_below_the_limit() {
        assert_eq!(count_of(0), (0, true));
        assert_eq!(count_of(9_999), (9_999, true));
    }

    #[test]
    fn estimates_stay_within_one_percent_past_the_limit() {
        for items in [10_000_u64, 50_000, 300_000] {
            let (estimate, exact) = count_of(items);
            assert!(!exact);
            let error = (estimate as f64 - items as f64).abs() / items as f64;
            assert!(error < 0.01, "{items} items estimated as {estimate} ({:.3}% off)", error * 100.0);
        }
    }

    #[test]
    fn a_pair_hashes_the_same_in_either_order_and_apart_from_its_concatenation() {
        assert_eq!(hash_of_pair("a", "b"), hash_of_pair("b", "a"));
        assert_ne!(hash_of_pair("ab", "c"), hash_of_pair("a", "bc"));
        assert_ne!(hash_of_pair("a\u{0}b", "c"), hash_of_pair("a", "b\u{0}c"), "ids that contain NUL");
    }
}
