//! The values of initializers stored in an ONNX file, read back: float32 ones (raw or
//! `float_data`) and half-precision ones widened to float32.

use super::graph::Tensor;
use super::pb;

/// The values of a float initializer stored in the file (raw little-endian or `float_data`).
pub(crate) fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 || !t.external_data.is_empty() {
        return None;
    }
    let n: usize = t.dims.iter().map(|&d| usize::try_from(d).ok()).product::<Option<usize>>()?;
    let v: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    (v.len() == n).then_some(v)
}

/// The values of a half-precision initializer stored in the file, widened to f32.
pub(crate) fn halves(t: &pb::TensorProto) -> Option<Tensor> {
    if t.data_type != pb::tensor_proto::DataType::Float16 as i32 || !t.external_data.is_empty() {
        return None;
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let v: Vec<f32> = t.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    (v.len() == shape.iter().product::<usize>()).then(|| Tensor::new(shape, v))
}
