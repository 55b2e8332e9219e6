//! Element types: what is stored, how wide it is, and what it is computed in.
//!
//! Seven stored types. Kernels compute in `f32` or `f64` only: `f16` and
//! `bf16` are widened to `f32` (exactly: every half value is an `f32`
//! value), `u8` to `f32` (exact), `i32` and `i64` to `f64` (`i32` exactly;
//! `i64` exactly up to 2^53 in magnitude, rounded to nearest beyond).
//!
//! ```
//! use strata_array::dtype::{ComputeType, DataType};
//!
//! assert_eq!(DataType::F16.size_bytes(), 2);
//! assert_eq!(DataType::F16.compute_type(), ComputeType::F32);
//! assert_eq!(DataType::I64.compute_type(), ComputeType::F64);
//! assert_eq!(DataType::from_zarr_name("bfloat16"), Some(DataType::BF16));
//! assert_eq!(DataType::from_numpy_descr("<f8"), Some(DataType::F64));
//! ```

use std::fmt;

/// The stored element type of an array. Elements are little-endian in every
/// buffer this crate hands out or takes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// Two's complement 32-bit integer.
    I32,
    /// Two's complement 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// IEEE 754 binary16 (stored; computed in `f32`).
    F16,
    /// bfloat16, the upper half of a binary32 (stored; computed in `f32`).
    BF16,
}

/// The type a kernel computes a stored type in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComputeType {
    /// `f32` arithmetic.
    F32,
    /// `f64` arithmetic.
    F64,
}

impl ComputeType {
    /// The stored type with the same representation.
    pub fn dtype(self) -> DataType {
        match self {
            ComputeType::F32 => DataType::F32,
            ComputeType::F64 => DataType::F64,
        }
    }
}

/// Every data type, for tests and for listing what is supported.
pub const ALL_DATA_TYPES: [DataType; 7] = [
    DataType::F32,
    DataType::F64,
    DataType::I32,
    DataType::I64,
    DataType::U8,
    DataType::F16,
    DataType::BF16,
];

/// The widest element, in bytes; bounds per-element scratch space.
pub const ELEMENT_SIZE_MAX_BYTES: usize = 8;
const _: () = {
    let mut i = 0;
    while i < ALL_DATA_TYPES.len() {
        assert!(ALL_DATA_TYPES[i].size_bytes() <= ELEMENT_SIZE_MAX_BYTES);
        i += 1;
    }
};

impl DataType {
    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            DataType::F32 | DataType::I32 => 4,
            DataType::F64 | DataType::I64 => 8,
            DataType::U8 => 1,
            DataType::F16 | DataType::BF16 => 2,
        }
    }

    /// The numpy-style name (`float32`, `bfloat16`, ...); `bfloat16` is the
    /// `ml_dtypes` name, numpy itself has no such type.
    pub const fn numpy_name(self) -> &'static str {
        match self {
            DataType::F32 => "float32",
            DataType::F64 => "float64",
            DataType::I32 => "int32",
            DataType::I64 => "int64",
            DataType::U8 => "uint8",
            DataType::F16 => "float16",
            DataType::BF16 => "bfloat16",
        }
    }

    /// The Zarr v3 `data_type` name. `bfloat16` is a registered Zarr v3
    /// extension, not a core type: readers other than zarrs may refuse it.
    pub const fn zarr_name(self) -> &'static str {
        // The core Zarr v3 names coincide with numpy's.
        self.numpy_name()
    }

    /// The NPY `descr` string (little-endian), or `None` for `bf16`, which
    /// the NPY format cannot name.
    pub const fn numpy_descr(self) -> Option<&'static str> {
        match self {
            DataType::F32 => Some("<f4"),
            DataType::F64 => Some("<f8"),
            DataType::I32 => Some("<i4"),
            DataType::I64 => Some("<i8"),
            DataType::U8 => Some("|u1"),
            DataType::F16 => Some("<f2"),
            DataType::BF16 => None,
        }
    }

    /// The type from a Zarr v3 `data_type` name.
    pub fn from_zarr_name(name: &str) -> Option<DataType> {
        ALL_DATA_TYPES
            .iter()
            .copied()
            .find(|dtype| dtype.zarr_name() == name)
    }

    /// The type from an NPY `descr`. Accepts explicit little-endian (`<`),
    /// "not applicable" (`|`, one-byte types) and native (`=`) on
    /// little-endian hosts; refuses big-endian (`>`) by returning `None`.
    pub fn from_numpy_descr(descr: &str) -> Option<DataType> {
        let (order, code) = descr.split_at_checked(1)?;
        let native_is_little = cfg!(target_endian = "little");
        let order_ok = match order {
            "<" | "|" => true,
            "=" => native_is_little,
            _ => false,
        };
        if !order_ok {
            return None;
        }
        match code {
            "f4" => Some(DataType::F32),
            "f8" => Some(DataType::F64),
            "i4" => Some(DataType::I32),
            "i8" => Some(DataType::I64),
            "u1" => Some(DataType::U8),
            "f2" => Some(DataType::F16),
            _ => None,
        }
    }

    /// The type kernels compute this stored type in.
    pub const fn compute_type(self) -> ComputeType {
        match self {
            DataType::F32 | DataType::U8 | DataType::F16 | DataType::BF16 => ComputeType::F32,
            DataType::F64 | DataType::I32 | DataType::I64 => ComputeType::F64,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.numpy_name())
    }
}
