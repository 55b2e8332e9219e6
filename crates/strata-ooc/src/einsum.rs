//! Two-operand einsum specifications: parsing, validation against the
//! operands' shapes, and the role of every label.
//!
//! A spec names each axis of the two operands and of the output with a
//! letter (`"bij,bjk->bik"`). Every label plays one role:
//!
//! | role | in A | in B | in the output |
//! |---|---|---|---|
//! | [`LabelRole::Batch`] | yes | yes | yes |
//! | [`LabelRole::FreeA`] | yes | no | yes |
//! | [`LabelRole::FreeB`] | no | yes | yes |
//! | [`LabelRole::Contracted`] | one or both | one or both | no |
//!
//! A contracted label present in only one operand is summed over that
//! operand (the other operand is constant along it). A label repeated inside
//! one operand takes that operand's diagonal. The output may not repeat a
//! label, and every output label must come from an operand.
//!
//! ```
//! use strata_ooc::einsum::{EinsumSpec, LabelRole};
//!
//! let spec = EinsumSpec::parse("bij,bjk->bik").unwrap();
//! let contraction = spec.bind(&[4, 8, 16], &[4, 16, 32]).unwrap();
//! assert_eq!(contraction.role(b'b'), Some(LabelRole::Batch));
//! assert_eq!(contraction.role(b'j'), Some(LabelRole::Contracted));
//! assert_eq!(contraction.size(b'k'), Some(32));
//! assert_eq!(contraction.output_shape(), vec![4, 8, 32]);
//! // 2 flops (multiply, add) per term of the sum.
//! assert_eq!(contraction.flops(), 2 * 4 * 8 * 16 * 32);
//! ```

use std::fmt;

/// The most axes an operand or the output may have.
pub const RANK_MAX: usize = 16;

/// Which operand of a spec an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The first input.
    A,
    /// The second input.
    B,
    /// The output.
    Output,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::A => write!(f, "operand A"),
            Operand::B => write!(f, "operand B"),
            Operand::Output => write!(f, "the output"),
        }
    }
}

/// Why a spec was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EinsumError {
    /// The text is not `labels,labels->labels`.
    Syntax {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A label is not an ASCII letter.
    BadLabel {
        /// The spec as given.
        spec: String,
        /// The offending character.
        label: char,
    },
    /// More than [`RANK_MAX`] axes.
    RankTooLarge {
        /// Which part of the spec.
        operand: Operand,
        /// Its number of labels.
        rank: usize,
    },
    /// The output repeats a label.
    RepeatedOutputLabel {
        /// The label.
        label: char,
    },
    /// An output label appears in neither input.
    UnknownOutputLabel {
        /// The label.
        label: char,
    },
    /// An operand's rank differs from its number of labels.
    RankMismatch {
        /// Which operand.
        operand: Operand,
        /// Labels in the spec.
        labels: usize,
        /// The operand's shape.
        shape: Vec<u64>,
    },
    /// One label names axes of different lengths.
    SizeMismatch {
        /// The label.
        label: char,
        /// The first length seen and where.
        first: (Operand, usize, u64),
        /// The conflicting length and where.
        second: (Operand, usize, u64),
    },
}

impl fmt::Display for EinsumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EinsumError::Syntax { spec, reason } => {
                write!(f, "einsum spec {spec:?}: {reason} (expected e.g. \"bij,bjk->bik\")")
            }
            EinsumError::BadLabel { spec, label } => {
                write!(f, "einsum spec {spec:?}: label {label:?} is not an ASCII letter")
            }
            EinsumError::RankTooLarge { operand, rank } => {
                write!(f, "einsum: {operand} has {rank} labels, more than the {RANK_MAX} supported")
            }
            EinsumError::RepeatedOutputLabel { label } => {
                write!(f, "einsum: output label {label:?} appears more than once")
            }
            EinsumError::UnknownOutputLabel { label } => {
                write!(f, "einsum: output label {label:?} appears in neither input")
            }
            EinsumError::RankMismatch { operand, labels, shape } => write!(
                f,
                "einsum: {operand} has shape {shape:?} ({} axes) but the spec gives it {labels} labels",
                shape.len()
            ),
            EinsumError::SizeMismatch { label, first, second } => write!(
                f,
                "einsum: label {label:?} is {} long on axis {} of {} but {} long on axis {} of {}",
                first.2, first.1, first.0, second.2, second.1, second.0
            ),
        }
    }
}

impl std::error::Error for EinsumError {}

/// The role of a label; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelRole {
    /// In both inputs and the output.
    Batch,
    /// In A and the output only.
    FreeA,
    /// In B and the output only.
    FreeB,
    /// In at least one input, not in the output: summed over.
    Contracted,
}

/// A parsed spec: the labels of A, B and the output, as ASCII bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EinsumSpec {
    /// Labels of the first input, one per axis.
    pub a: Vec<u8>,
    /// Labels of the second input.
    pub b: Vec<u8>,
    /// Labels of the output.
    pub output: Vec<u8>,
}

impl EinsumSpec {
    /// Parses `"ab,bc->ac"` (spaces ignored). The `->output` part is
    /// required: implicit outputs are ambiguous to readers of a job log.
    pub fn parse(spec: &str) -> Result<EinsumSpec, EinsumError> {
        let compact: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
        let syntax = |reason| EinsumError::Syntax {
            spec: spec.to_string(),
            reason,
        };
        let (inputs, output) = compact
            .split_once("->")
            .ok_or_else(|| syntax("missing \"->\" before the output labels"))?;
        let (a, b) = inputs
            .split_once(',')
            .ok_or_else(|| syntax("expected two comma-separated inputs"))?;
        if b.contains(',') {
            return Err(syntax("more than two inputs"));
        }
        if output.contains("->") || output.contains(',') {
            return Err(syntax("the output must be one list of labels"));
        }
        let labels = |text: &str, operand: Operand| -> Result<Vec<u8>, EinsumError> {
            if let Some(label) = text.chars().find(|c| !c.is_ascii_alphabetic()) {
                return Err(EinsumError::BadLabel {
                    spec: spec.to_string(),
                    label,
                });
            }
            if text.len() > RANK_MAX {
                return Err(EinsumError::RankTooLarge {
                    operand,
                    rank: text.len(),
                });
            }
            Ok(text.bytes().collect())
        };
        let parsed = EinsumSpec {
            a: labels(a, Operand::A)?,
            b: labels(b, Operand::B)?,
            output: labels(output, Operand::Output)?,
        };
        for (i, &label) in parsed.output.iter().enumerate() {
            if parsed.output[..i].contains(&label) {
                return Err(EinsumError::RepeatedOutputLabel {
                    label: label as char,
                });
            }
            if !parsed.a.contains(&label) && !parsed.b.contains(&label) {
                return Err(EinsumError::UnknownOutputLabel {
                    label: label as char,
                });
            }
        }
        Ok(parsed)
    }

    /// The spec for a plain matrix product `ij,jk->ik`.
    pub fn matmul() -> EinsumSpec {
        EinsumSpec {
            a: b"ij".to_vec(),
            b: b"jk".to_vec(),
            output: b"ik".to_vec(),
        }
    }

    /// Checks the spec against the operands' shapes and fixes every label's
    /// length.
    pub fn bind(&self, a_shape: &[u64], b_shape: &[u64]) -> Result<Contraction, EinsumError> {
        let mut sizes: Vec<(u8, u64, Operand, usize)> = Vec::new();
        for (operand, labels, shape) in [
            (Operand::A, &self.a, a_shape),
            (Operand::B, &self.b, b_shape),
        ] {
            if labels.len() != shape.len() {
                return Err(EinsumError::RankMismatch {
                    operand,
                    labels: labels.len(),
                    shape: shape.to_vec(),
                });
            }
            for (axis, (&label, &len)) in labels.iter().zip(shape).enumerate() {
                match sizes.iter().find(|s| s.0 == label) {
                    Some(&(_, first_len, first_operand, first_axis)) if first_len != len => {
                        return Err(EinsumError::SizeMismatch {
                            label: label as char,
                            first: (first_operand, first_axis, first_len),
                            second: (operand, axis, len),
                        });
                    }
                    Some(_) => {}
                    None => sizes.push((label, len, operand, axis)),
                }
            }
        }
        let labels = sizes
            .iter()
            .map(|&(label, len, _, _)| {
                let in_a = self.a.contains(&label);
                let in_b = self.b.contains(&label);
                let role = match (in_a, in_b, self.output.contains(&label)) {
                    (true, true, true) => LabelRole::Batch,
                    (true, false, true) => LabelRole::FreeA,
                    (false, true, true) => LabelRole::FreeB,
                    _ => LabelRole::Contracted,
                };
                LabelInfo { label, len, role }
            })
            .collect();
        Ok(Contraction {
            spec: self.clone(),
            labels,
        })
    }
}

impl fmt::Display for EinsumSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |labels: &[u8]| String::from_utf8_lossy(labels).into_owned();
        write!(
            f,
            "{},{}->{}",
            text(&self.a),
            text(&self.b),
            text(&self.output)
        )
    }
}

/// One distinct label of a bound spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelInfo {
    /// The label (an ASCII letter).
    pub label: u8,
    /// Its length.
    pub len: u64,
    /// Its role.
    pub role: LabelRole,
}

/// A spec bound to operand shapes: every distinct label with its length and
/// role, in order of first appearance (A, then B).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contraction {
    /// The spec.
    pub spec: EinsumSpec,
    /// Distinct labels.
    pub labels: Vec<LabelInfo>,
}

impl Contraction {
    /// The info of `label`, if the spec uses it.
    pub fn info(&self, label: u8) -> Option<LabelInfo> {
        self.labels.iter().copied().find(|l| l.label == label)
    }

    /// The role of `label`.
    pub fn role(&self, label: u8) -> Option<LabelRole> {
        self.info(label).map(|l| l.role)
    }

    /// The length of `label`.
    pub fn size(&self, label: u8) -> Option<u64> {
        self.info(label).map(|l| l.len)
    }

    /// The output's shape.
    pub fn output_shape(&self) -> Vec<u64> {
        self.spec
            .output
            .iter()
            .map(|&l| self.size(l).expect("output labels are bound"))
            .collect()
    }

    /// Labels with `role`, in order of first appearance.
    pub fn with_role(&self, role: LabelRole) -> Vec<u8> {
        self.labels
            .iter()
            .filter(|l| l.role == role)
            .map(|l| l.label)
            .collect()
    }

    /// Floating-point operations of the contraction: one multiply and one
    /// add per term, over every distinct label's range.
    pub fn flops(&self) -> u64 {
        self.labels
            .iter()
            .fold(2u64, |product, l| product.saturating_mul(l.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_malformed_specs() {
        for (spec, expect_syntax) in [
            ("ij,jk", true),
            ("ij->ik", true),
            ("ij,jk,kl->il", true),
            ("i1,jk->ik", false),
        ] {
            let error = EinsumSpec::parse(spec).unwrap_err();
            assert_eq!(
                matches!(error, EinsumError::Syntax { .. }),
                expect_syntax,
                "{spec}: {error}"
            );
        }
        assert_eq!(
            EinsumSpec::parse("ij,jk->ii").unwrap_err(),
            EinsumError::RepeatedOutputLabel { label: 'i' }
        );
        assert_eq!(
            EinsumSpec::parse("ij,jk->iz").unwrap_err(),
            EinsumError::UnknownOutputLabel { label: 'z' }
        );
    }

    #[test]
    fn roles_cover_transpose_broadcast_and_diagonal() {
        let c = EinsumSpec::parse("ji,kj->ik")
            .unwrap()
            .bind(&[3, 2], &[5, 3])
            .unwrap();
        assert_eq!(c.with_role(LabelRole::FreeA), b"i");
        assert_eq!(c.with_role(LabelRole::FreeB), b"k");
        assert_eq!(c.with_role(LabelRole::Contracted), b"j");
        assert_eq!(c.output_shape(), vec![2, 5]);
        // `x` only in A and not in the output: summed over A.
        let c = EinsumSpec::parse("ixj,jk->ik")
            .unwrap()
            .bind(&[2, 7, 3], &[3, 4])
            .unwrap();
        assert_eq!(c.role(b'x'), Some(LabelRole::Contracted));
        // A diagonal: both axes of `ii` must agree.
        let error = EinsumSpec::parse("ii,ik->k")
            .unwrap()
            .bind(&[2, 3], &[2, 4])
            .unwrap_err();
        assert!(
            matches!(error, EinsumError::SizeMismatch { label: 'i', .. }),
            "{error}"
        );
        let error = EinsumSpec::matmul().bind(&[2, 3], &[4, 5]).unwrap_err();
        assert_eq!(
            error,
            EinsumError::SizeMismatch {
                label: 'j',
                first: (Operand::A, 1, 3),
                second: (Operand::B, 0, 4)
            }
        );
        assert!(matches!(
            EinsumSpec::matmul().bind(&[2, 3, 1], &[3, 5]).unwrap_err(),
            EinsumError::RankMismatch {
                operand: Operand::A,
                labels: 2,
                ..
            }
        ));
    }
}
