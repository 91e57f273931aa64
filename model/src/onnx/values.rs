//! The values of initializers stored in an ONNX file, read back: float32 ones (raw or
//! `float_data`) and half-precision ones widened to float32.

use super::graph::Tensor;
use super::pb;

/// The values of a float initializer stored in the file (raw little-endian or `float_data`).
pub(crate) fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 || !t.external_data.is_empty() {
        return None;
    }
    let n = elements(&t.dims)?;
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
    // Only raw data: half precision kept in `int32_data` (which ONNX also allows) is left
    // to the engines as it is.
    (t.raw_data.len() == elements(&t.dims)?.checked_mul(2)?).then(|| {
        let v = t.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        Tensor::new(shape, v)
    })
}

/// The number of values of a tensor of `dims` as the file declares them: `None` for a
/// negative dimension or a count past `usize` (a damaged or hostile file).
fn elements(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes_that_overflow_or_do_not_match_the_data_read_as_nothing() {
        let half = |dims: Vec<i64>, raw: Vec<u8>| pb::TensorProto {
            dims,
            data_type: pb::tensor_proto::DataType::Float16 as i32,
            raw_data: raw,
            ..Default::default()
        };
        assert!(halves(&half(vec![i64::MAX, 4], vec![0; 8])).is_none(), "a count past usize");
        assert!(halves(&half(vec![-1], vec![0; 2])).is_none(), "a negative dimension");
        assert!(halves(&half(vec![3], vec![0; 4])).is_none(), "fewer values than declared");
        let one = half(vec![1], half::f16::from_f32(1.5).to_le_bytes().to_vec());
        assert_eq!(halves(&one).map(|t| t.data), Some(vec![1.5]));
    }
}
