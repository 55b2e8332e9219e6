//! `strata-region`: immutable region files of named layers, mapped
//! zero-copy (layer "mapped regions" of Strata).
//!
//! A region file is a valid [safetensors] file: an 8-byte little-endian
//! header length, a JSON header padded with spaces so the data starts on a
//! 4 KiB boundary, then the layers' bytes back to back. The header's
//! `__metadata__` carries the format version, an xxh3-64 checksum per layer
//! and string attributes per layer (`docs/region-format.md` has every byte).
//! Any safetensors reader opens a region; any safetensors file opens as a
//! region, its layers reading as [`Verification::Unverified`].
//!
//! - [`format`](mod@format): the header, parsed strictly (every malformed input is a
//!   [`RegionError`], never a panic or a read out of bounds) and written.
//! - [`builder`]: [`RegionBuilder`] streams layers to a temporary file and
//!   publishes it atomically ([`PendingRegion::commit`]).
//! - [`region`]: [`Region::open`] maps a file; [`Region::layer`] borrows a
//!   layer with no copy, its checksum verified on first access, once.
//! - [`store`]: [`RegionStore`], a directory of regions behind one layer
//!   index with lock-free reads, memory levels, and heap proto regions
//!   crystallized into files while readers keep reading.
//!
//! ```
//! use strata_region::{Dtype, Region, RegionBuilder};
//!
//! let dir = std::env::temp_dir().join(format!("strata-region-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("weights.region");
//! let mut builder = RegionBuilder::create(&path).unwrap();
//! let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! builder.add_tensor("w", Dtype::F32, &[2, 2], &values, &[("role", "weights")]).unwrap();
//! builder.add_blob("notes", b"hello", &[]).unwrap();
//! builder.finish().unwrap();
//!
//! let region = Region::open(&path).unwrap();
//! let w = region.layer("w").unwrap();
//! assert_eq!(w.shape(), &[2, 2]);
//! assert_eq!(w.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
//! assert_eq!(w.attribute("role"), Some("weights"));
//! assert_eq!(region.layer("notes").unwrap().bytes(), b"hello");
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! [safetensors]: https://github.com/huggingface/safetensors
#![deny(unsafe_op_in_unsafe_fn)]

pub mod builder;
pub mod error;
pub mod format;
pub mod region;
mod scan;
pub mod store;

pub use builder::{export_plain, PendingRegion, RegionBuilder};
pub use error::RegionError;
pub use format::Dtype;
pub use region::{AccessHint, LayerView, Region, Verification};
pub use store::{LayerId, LayerRef, PressureLevel, RegionStore, StoreError, StoreLimits};
