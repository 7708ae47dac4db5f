//! Host-side tensors as they come out of a checkpoint file: a dtype, a shape and raw little-endian bytes.

use crate::error::{Error, Result};
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    U8,
    /// Anything we read but never compute with (I64 step counters, bool masks...).
    Other,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::U8 => 1,
            DType::Other => 0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::U8 => "U8",
            DType::Other => "other",
        }
    }
}

/// One tensor read from a checkpoint. `bytes` holds `shape.iter().product() * dtype.size()` bytes, row-major.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Build an f32 tensor (used by tests, benches and the CPU backend).
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        HostTensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            bytes: bytemuck::cast_slice(values).to_vec(),
        }
    }

    /// Values widened to f32. F16/BF16 widen exactly; U8 and others are an error (they are not weights).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self.numel();
        if self.bytes.len() != n * self.dtype.size() {
            return Err(Error::tensor(
                &self.name,
                format!(
                    "holds {} bytes, expected {} for shape {:?} in {}",
                    self.bytes.len(),
                    n * self.dtype.size(),
                    self.shape,
                    self.dtype.name()
                ),
            ));
        }
        // chunks_exact rather than a cast: the bytes of a memory map need not be aligned.
        Ok(match self.dtype {
            DType::F32 => self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => self.bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => self.bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::U8 | DType::Other => {
                return Err(Error::tensor(
                    &self.name,
                    format!("has dtype {}, expected a float weight (F16, BF16 or F32)", self.dtype.name()),
                ))
            }
        })
    }
}
