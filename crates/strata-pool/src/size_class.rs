//! Size classes of the small-block path: 16 B to 1 MiB, carved from 2 MiB slabs.
//!
//! Up to 128 B the classes step by 16 B; above, four classes per power of
//! two (`2^k * {5/4, 6/4, 7/4, 8/4}`), so rounding wastes at most 25% of a
//! request (and 12.5% on average over uniform sizes). A request with an
//! alignment above 16 B takes the first class at or above its size whose
//! size is a multiple of the alignment, so every slot of that class (at
//! `slab base + i * class size`, slab bases being slab-aligned) is aligned.
//!
//! ```
//! use strata_pool::size_class::{class_for, class_size_bytes, SMALL_BYTES_MAX};
//!
//! let class = class_for(100, 8).unwrap();
//! assert_eq!(class_size_bytes(class), 112);
//! let aligned = class_for(100, 64).unwrap();
//! assert_eq!(class_size_bytes(aligned) % 64, 0);
//! assert!(class_for(SMALL_BYTES_MAX + 1, 8).is_none());
//! ```

/// The largest request served from slabs; larger ones go to arenas.
pub const SMALL_BYTES_MAX: u64 = 1 << 20;
/// Bytes of one slab (and its alignment).
pub const SLAB_BYTES: u64 = 2 << 20;
/// The smallest class, and the alignment every class guarantees.
pub const CLASS_BYTES_MIN: u64 = 16;
/// Classes stepping by [`CLASS_BYTES_MIN`] cover sizes up to this.
const LINEAR_BYTES_MAX: u64 = 128;
/// Classes per power of two above [`LINEAR_BYTES_MAX`].
const CLASSES_PER_DOUBLING: u64 = 4;
/// Number of small size classes.
pub const CLASS_COUNT: usize = (LINEAR_BYTES_MAX / CLASS_BYTES_MIN) as usize
    + (CLASSES_PER_DOUBLING
        * (SMALL_BYTES_MAX.trailing_zeros() - LINEAR_BYTES_MAX.trailing_zeros()) as u64)
        as usize;
/// The largest alignment the pool honours (a page).
pub const ALIGN_BYTES_MAX: u64 = 4096;

const _: () = assert!(CLASS_COUNT == 60);
const _: () = assert!(
    SLAB_BYTES >= 2 * SMALL_BYTES_MAX,
    "every class fits twice in a slab"
);
const _: () = assert!(SLAB_BYTES.is_power_of_two() && ALIGN_BYTES_MAX <= SLAB_BYTES);

/// Class sizes, computed once at compile time.
const CLASS_SIZES: [u64; CLASS_COUNT] = {
    let mut sizes = [0u64; CLASS_COUNT];
    let mut i = 0;
    while i < (LINEAR_BYTES_MAX / CLASS_BYTES_MIN) as usize {
        sizes[i] = (i as u64 + 1) * CLASS_BYTES_MIN;
        i += 1;
    }
    let mut base = LINEAR_BYTES_MAX;
    while i < CLASS_COUNT {
        let mut step = 1;
        while step <= CLASSES_PER_DOUBLING {
            sizes[i] = base + base * step / CLASSES_PER_DOUBLING;
            i += 1;
            step += 1;
        }
        base *= 2;
    }
    sizes
};

const _: () = assert!(CLASS_SIZES[CLASS_COUNT - 1] == SMALL_BYTES_MAX);

/// Bytes of a slot of `class`.
///
/// # Panics
/// If `class >= CLASS_COUNT`.
#[inline]
pub fn class_size_bytes(class: usize) -> u64 {
    CLASS_SIZES[class]
}

/// Slots of `class` in one slab.
#[inline]
pub fn slots_per_slab(class: usize) -> u64 {
    SLAB_BYTES / CLASS_SIZES[class]
}

/// The smallest class holding `size_bytes` (1..=SMALL_BYTES_MAX), ignoring
/// alignment (every class is 16-byte aligned).
#[inline]
pub fn class_for_size(size_bytes: u64) -> usize {
    debug_assert!(
        (1..=SMALL_BYTES_MAX).contains(&size_bytes),
        "size {size_bytes}"
    );
    if size_bytes <= LOOKUP_BYTES_MAX {
        // One load for the common small sizes.
        return CLASS_LOOKUP[((size_bytes - 1) / CLASS_BYTES_MIN) as usize] as usize;
    }
    class_for_size_computed(size_bytes)
}

/// Sizes up to this many bytes find their class in [`CLASS_LOOKUP`].
const LOOKUP_BYTES_MAX: u64 = 4096;

/// The class of every size up to [`LOOKUP_BYTES_MAX`], by `(size - 1) / 16`
/// (classes step by at least 16 bytes, so sizes in one 16-byte step share
/// a class).
const CLASS_LOOKUP: [u8; (LOOKUP_BYTES_MAX / CLASS_BYTES_MIN) as usize] = {
    let mut table = [0u8; (LOOKUP_BYTES_MAX / CLASS_BYTES_MIN) as usize];
    let mut i = 0;
    while i < table.len() {
        table[i] = class_for_size_computed((i as u64 + 1) * CLASS_BYTES_MIN) as u8;
        i += 1;
    }
    table
};

/// [`class_for_size`] by arithmetic, for any size in 1..=SMALL_BYTES_MAX.
const fn class_for_size_computed(size_bytes: u64) -> usize {
    if size_bytes <= LINEAR_BYTES_MAX {
        return size_bytes.div_ceil(CLASS_BYTES_MIN) as usize - 1;
    }
    // size in (2^k, 2^(k+1)]: classes 2^k * (1 + step/4), step 1..=4.
    let below = size_bytes - 1;
    let k = 63 - below.leading_zeros() as u64; // 2^k <= size - 1 < 2^(k+1)
    let base = 1u64 << k;
    // base / 4 is 2^(k-2): a shift, not a division.
    let step = ((below - base) >> (k - CLASSES_PER_DOUBLING.trailing_zeros() as u64)) + 1;
    let doublings = k - LINEAR_BYTES_MAX.trailing_zeros() as u64;
    (LINEAR_BYTES_MAX / CLASS_BYTES_MIN) as usize
        + (doublings * CLASSES_PER_DOUBLING + step - 1) as usize
}

/// The class serving `size_bytes` at `align_bytes` (a power of two), or
/// `None` if it must go to the large path (too big, or no class of that
/// alignment is large enough).
#[inline]
pub fn class_for(size_bytes: u64, align_bytes: u64) -> Option<usize> {
    if size_bytes == 0 || size_bytes > SMALL_BYTES_MAX {
        return None;
    }
    let mut class = class_for_size(size_bytes);
    if align_bytes <= CLASS_BYTES_MIN {
        return Some(class);
    }
    while class < CLASS_COUNT {
        if CLASS_SIZES[class].is_multiple_of(align_bytes) {
            return Some(class);
        }
        class += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_increase_and_lookup_is_the_smallest_fit() {
        for pair in CLASS_SIZES.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            assert_eq!(pair[0] % CLASS_BYTES_MIN, 0);
        }
        for size in (1..=SMALL_BYTES_MAX)
            .step_by(7)
            .chain([1, 16, 17, 128, 129, SMALL_BYTES_MAX])
        {
            let naive = CLASS_SIZES.iter().position(|&s| s >= size).unwrap();
            assert_eq!(class_for(size, 1), Some(naive), "size {size}");
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        for shift in 0..=12 {
            let align = 1u64 << shift;
            for size in [1, 15, 100, 4095, 4096, 5000, 100_000, SMALL_BYTES_MAX] {
                let naive = CLASS_SIZES
                    .iter()
                    .position(|&s| s >= size && s % align.max(1) == 0);
                assert_eq!(class_for(size, align), naive, "size {size} align {align}");
            }
        }
    }

    #[test]
    fn rounding_waste_is_bounded() {
        for size in 129..=SMALL_BYTES_MAX {
            let class = class_for(size, 1).unwrap();
            let waste = class_size_bytes(class) - size;
            assert!(
                waste * 4 < size,
                "size {size} class {}",
                class_size_bytes(class)
            );
        }
    }
}
