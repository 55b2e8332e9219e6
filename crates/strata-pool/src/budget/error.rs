//! Why a budget operation was refused, and the byte formatting its messages use.

use std::fmt;

/// Bytes in one KiB; each larger unit is this many of the one below.
pub const BYTES_PER_KIB: u64 = 1024;

/// Unit names [`format_bytes`] picks from, smallest first; unit `i` is
/// `BYTES_PER_KIB^(i + 1)` bytes.
const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

// Every u64 is below 1024 of the largest unit (16 EiB at most), so no value
// needs a unit past the list.
const _: () = assert!(u64::MAX / BYTES_PER_KIB.pow(UNITS.len() as u32) < BYTES_PER_KIB);

/// Formats a byte count for messages: `"512 B"` below one KiB, otherwise
/// one decimal in the largest binary unit that keeps the value below 1024
/// after rounding (`"64.0 MiB"`, `"1.5 GiB"`, `"1023.9 KiB"`, `"1.0 MiB"`).
///
/// Rounding is to the nearest tenth, ties up, in integer arithmetic, so the
/// text is the same on every platform.
///
/// ```
/// use strata_pool::budget::format_bytes;
/// assert_eq!(format_bytes(100), "100 B");
/// assert_eq!(format_bytes(64 << 20), "64.0 MiB");
/// assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
/// ```
pub fn format_bytes(bytes: u64) -> String {
    if bytes < BYTES_PER_KIB {
        return format!("{bytes} B");
    }
    let mut unit_bytes = 1u128;
    for (i, unit) in UNITS.iter().enumerate() {
        unit_bytes *= BYTES_PER_KIB as u128;
        let tenths = (bytes as u128 * 10 + unit_bytes / 2) / unit_bytes;
        // Move up while rounding would print 1024.0 or more, except from the last unit.
        if tenths < BYTES_PER_KIB as u128 * 10 || i == UNITS.len() - 1 {
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    unreachable!("the last unit always returns")
}

/// Why a fair pool refused a spillable consumer: its share, and how the share
/// was computed (`share_bytes = (limit_bytes - unspillable_bytes) / spillable_consumers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FairShare {
    /// The most one spillable consumer may hold.
    pub share_bytes: u64,
    /// Registered spillable consumers the remainder is split among, the
    /// requester included.
    pub spillable_consumers: u64,
    /// Bytes held by unspillable consumers, which come off the limit first.
    pub unspillable_bytes: u64,
}

/// Why a budget operation was refused. A refused operation changes nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// The pool cannot grant the request: the limit, or for a spillable
    /// consumer of a [`FairPool`](super::FairPool) its fair share, would be
    /// exceeded. The consumer should spill or wait.
    Exhausted {
        /// Name of the consumer that asked.
        consumer: String,
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes the consumer held when it asked.
        held_bytes: u64,
        /// Bytes the consumer could have been granted: what is left of the
        /// limit, or of its fair share when that is smaller.
        available_bytes: u64,
        /// The pool's limit.
        limit_bytes: u64,
        /// `Some` when the consumer's fair share, not the whole limit, ran out.
        fair_share: Option<FairShare>,
        /// The largest consumers (name, bytes held), largest first; filled in
        /// by [`TrackConsumersPool`](super::TrackConsumersPool), empty from a
        /// pool that does not track consumers.
        top_consumers: Vec<(String, u64)>,
    },
    /// A reservation was asked to shrink by more than it holds.
    ShrinkTooLarge {
        /// Name of the consumer that asked.
        consumer: String,
        /// Bytes asked to release.
        shrink_bytes: u64,
        /// Bytes the reservation held.
        held_bytes: u64,
    },
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Exhausted {
                consumer,
                requested_bytes,
                held_bytes,
                available_bytes,
                limit_bytes,
                fair_share,
                top_consumers,
            } => {
                write!(
                    f,
                    "failed to reserve {} for consumer '{consumer}' (holds {}): ",
                    format_bytes(*requested_bytes),
                    format_bytes(*held_bytes)
                )?;
                match fair_share {
                    None => write!(
                        f,
                        "{} of the {} limit available",
                        format_bytes(*available_bytes),
                        format_bytes(*limit_bytes)
                    )?,
                    Some(share) => write!(
                        f,
                        "{} of its fair share of {} available (the {} limit less {} held by \
                         unspillable consumers, split among {} spillable consumers)",
                        format_bytes(*available_bytes),
                        format_bytes(share.share_bytes),
                        format_bytes(*limit_bytes),
                        format_bytes(share.unspillable_bytes),
                        share.spillable_consumers
                    )?,
                }
                for (i, (name, bytes)) in top_consumers.iter().enumerate() {
                    let lead = if i == 0 { "; top consumers: " } else { ", " };
                    write!(f, "{lead}{name} {}", format_bytes(*bytes))?;
                }
                Ok(())
            }
            BudgetError::ShrinkTooLarge {
                consumer,
                shrink_bytes,
                held_bytes,
            } => write!(
                f,
                "cannot shrink consumer '{consumer}' by {} ({shrink_bytes} bytes): it holds {} \
                 ({held_bytes} bytes)",
                format_bytes(*shrink_bytes),
                format_bytes(*held_bytes)
            ),
        }
    }
}

impl std::error::Error for BudgetError {}
