//! [`MemArray`]: a whole array in memory (C order), for tests and for small
//! operands. It is both a [`ChunkSource`] and a [`ChunkSink`].
//!
//! The incomplete rule here: [`MemArray::is_complete`] is false until
//! `finish`; reads are allowed either way (tests read back what they wrote).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::chunk::{check_chunk_buffer, ChunkSink, ChunkSource};
use crate::error::ArrayError;
use crate::meta::{for_each_run, ArrayMeta};

/// An in-memory chunked array.
#[derive(Debug)]
pub struct MemArray {
    name: String,
    meta: ArrayMeta,
    /// The whole array, C order, little-endian elements of the dtype.
    data: RwLock<Vec<u8>>,
    finished: AtomicBool,
}

impl MemArray {
    /// An array of zeros (the fill value), not yet finished.
    pub fn zeroed(name: impl Into<String>, meta: ArrayMeta) -> MemArray {
        let len_bytes =
            usize::try_from(meta.len_bytes()).expect("array larger than the address space");
        MemArray {
            name: name.into(),
            meta,
            data: RwLock::new(vec![0; len_bytes]),
            finished: AtomicBool::new(false),
        }
    }

    /// A finished array holding `data` (the whole array in C order).
    pub fn from_bytes(
        name: impl Into<String>,
        meta: ArrayMeta,
        data: Vec<u8>,
    ) -> Result<MemArray, ArrayError> {
        let name = name.into();
        if data.len() as u64 != meta.len_bytes() {
            return Err(ArrayError::BufferLength {
                array: name,
                chunk: Vec::new(),
                chunk_shape: meta.shape().to_vec(),
                expected_bytes: meta.len_bytes() as usize,
                found_bytes: data.len(),
            });
        }
        Ok(MemArray {
            name,
            meta,
            data: RwLock::new(data),
            finished: AtomicBool::new(true),
        })
    }

    /// A copy of the whole array, C order.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.read().expect("MemArray lock poisoned").clone()
    }

    /// True once `finish` succeeded.
    pub fn is_complete(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Panics (printing the values) if the buffer does not match the shape.
    pub fn check_invariants(&self) {
        self.meta.check_invariants();
        let len = self.data.read().expect("MemArray lock poisoned").len();
        assert_eq!(
            len as u64,
            self.meta.len_bytes(),
            "array {}: {len} bytes held for {:?} of {}",
            self.name,
            self.meta.shape(),
            self.meta.dtype()
        );
    }
}

impl ChunkSource for MemArray {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        check_chunk_buffer(&self.name, &self.meta, grid_index, out.len())?;
        let size = self.meta.dtype().size_bytes();
        let data = self.data.read().expect("MemArray lock poisoned");
        let region = self.meta.chunk_region(grid_index);
        for_each_run(self.meta.shape(), &region, |outer, inner, len| {
            let (outer, inner, len) = (
                outer as usize * size,
                inner as usize * size,
                len as usize * size,
            );
            out[inner..inner + len].copy_from_slice(&data[outer..outer + len]);
        });
        Ok(())
    }
}

impl ChunkSink for MemArray {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn write_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError> {
        if self.is_complete() {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        check_chunk_buffer(&self.name, &self.meta, grid_index, data.len())?;
        let size = self.meta.dtype().size_bytes();
        let mut array = self.data.write().expect("MemArray lock poisoned");
        let region = self.meta.chunk_region(grid_index);
        for_each_run(self.meta.shape(), &region, |outer, inner, len| {
            let (outer, inner, len) = (
                outer as usize * size,
                inner as usize * size,
                len as usize * size,
            );
            array[outer..outer + len].copy_from_slice(&data[inner..inner + len]);
        });
        Ok(())
    }

    fn finish(&self) -> Result<(), ArrayError> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        Ok(())
    }
}
