//! Lower bounds on the bytes a contraction must read, for reports: how close
//! a run came to the least any schedule could do with the same memory.
//!
//! Two bounds, the report takes the larger:
//!
//! - *compulsory*: every input element read once;
//! - *memory-bound* (Hong and Kung 1981; the constant from Smith et al.,
//!   "A tight I/O lower bound for matrix multiplication", 2019): a product
//!   with `M·N·K` multiply-adds per batch element, computed with fast memory
//!   of `S` elements, must load at least `2·M·N·K / √S` elements, where `M`,
//!   `N` and `K` are the products of the free-A, free-B and contracted label
//!   lengths.
//!
//! ```
//! use strata_ooc::bounds::read_lower_bound_bytes;
//! use strata_ooc::einsum::EinsumSpec;
//!
//! let c = EinsumSpec::matmul().bind(&[4096, 4096], &[4096, 4096]).unwrap();
//! // f32, 32 MiB of memory: S = 8 Mi elements, 2·4096³/√S = 2^37/2^11.5 elements.
//! let bound = read_lower_bound_bytes(&c, 4, 4, 4, 32 << 20);
//! assert!(bound > 2 * 4096 * 4096 * 4); // more than reading each input once
//! ```

use crate::einsum::{Contraction, LabelRole};

/// The larger of the compulsory and the memory-bound lower bounds, in bytes
/// of the inputs' stored types (`a_element_bytes`, `b_element_bytes`), for a
/// run holding `memory_bytes` of `compute_element_bytes` elements.
pub fn read_lower_bound_bytes(
    contraction: &Contraction,
    a_element_bytes: u64,
    b_element_bytes: u64,
    compute_element_bytes: u64,
    memory_bytes: u64,
) -> u64 {
    let product = |role: LabelRole| -> f64 {
        contraction
            .labels
            .iter()
            .filter(|l| l.role == role)
            .map(|l| l.len as f64)
            .product()
    };
    let operand_bytes = |labels: &[u8], element_bytes: u64| -> f64 {
        labels
            .iter()
            .map(|&l| contraction.size(l).expect("bound label") as f64)
            .product::<f64>()
            * element_bytes as f64
    };
    let spec = &contraction.spec;
    let compulsory =
        operand_bytes(&spec.a, a_element_bytes) + operand_bytes(&spec.b, b_element_bytes);
    let fast_elements = (memory_bytes / compute_element_bytes.max(1)).max(1) as f64;
    let element_bytes = (a_element_bytes + b_element_bytes) as f64 / 2.0;
    let memory_bound = product(LabelRole::Batch)
        * 2.0
        * product(LabelRole::FreeA)
        * product(LabelRole::FreeB)
        * product(LabelRole::Contracted)
        / fast_elements.sqrt()
        * element_bytes;
    compulsory.max(memory_bound) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::einsum::EinsumSpec;

    #[test]
    fn small_products_are_bound_by_reading_the_inputs_once() {
        let c = EinsumSpec::matmul().bind(&[64, 64], &[64, 64]).unwrap();
        // Everything fits: the memory bound is below the inputs.
        assert_eq!(
            read_lower_bound_bytes(&c, 4, 4, 4, 1 << 30),
            2 * 64 * 64 * 4
        );
    }

    #[test]
    fn large_products_are_bound_by_memory() {
        let c = EinsumSpec::matmul()
            .bind(&[4096, 4096], &[4096, 4096])
            .unwrap();
        let s = (32u64 << 20) / 4;
        let expected = 2.0 * 4096f64.powi(3) / (s as f64).sqrt() * 4.0;
        let bound = read_lower_bound_bytes(&c, 4, 4, 4, 32 << 20) as f64;
        assert!((bound - expected).abs() <= 1.0, "{bound} vs {expected}");
        // A quarter of the memory doubles the bound.
        let quarter = read_lower_bound_bytes(&c, 4, 4, 4, 8 << 20) as f64;
        assert!((quarter / bound - 2.0).abs() < 1e-6, "{quarter} / {bound}");
    }
}
