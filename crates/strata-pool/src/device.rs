//! Devices a pool can serve. Only the CPU has a backend today.

use std::fmt;

/// A memory device: the CPU's RAM now, with room for accelerator ordinals.
///
/// Only [`Device::Cpu`] has a backend; asking for a pool on any other
/// device is refused with [`PoolError::UnsupportedDevice`](crate::PoolError::UnsupportedDevice),
/// never pretended.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// A CUDA device by ordinal (no backend yet).
    Cuda(u32),
    /// A Metal device by ordinal (no backend yet).
    Metal(u32),
}

impl Device {
    /// Whether this build has a backend for the device.
    pub fn has_backend(self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Device::Metal(ordinal) => write!(f, "metal:{ordinal}"),
        }
    }
}
