//! Input files: float32 `.npy` tensors and the bundled MNIST IDX data.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A float32 tensor with its shape (first dimension = samples).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// Reads a float32 `.npy` file, with clear errors for anything else.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
}

/// Parses float32 `.npy` bytes (C order, little endian).
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor> {
    if !bytes.starts_with(b"\x93NUMPY") {
        bail!("missing the NumPy magic header; save the array with numpy.save");
    }
    if !header_nesting_ok(bytes) {
        bail!("malformed .npy header: nested too deep for a float32 array");
    }
    let npy = npyz::NpyFile::new(bytes).context("malformed .npy header")?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        bail!("the array is in Fortran order; save a C-contiguous array (np.ascontiguousarray)");
    }
    let dtype = npy.dtype();
    let is_f32 = matches!(&dtype, npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4);
    if !is_f32 {
        bail!(
            "dtype is {}, expected float32; convert with x.astype(np.float32)",
            dtype.descr()
        );
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= bytes.len() / 4)
        .with_context(|| format!("the shape {shape:?} needs more values than the file holds"))?;
    let data: Vec<f32> = npy.into_vec().context("truncated or corrupt .npy data")?;
    if data.len() != n {
        bail!(
            "the array holds {} values but its shape {shape:?} needs {n}",
            data.len()
        );
    }
    Ok(Tensor { shape, data })
}

/// Whether the `.npy` header dict nests at most two deep (`{.. 'shape': (..)}`),
/// as every float32 header does. npyz's header parser takes time exponential
/// in the nesting of `[` and `{`, so deeper headers are refused before it runs.
fn header_nesting_ok(bytes: &[u8]) -> bool {
    // Version 1 has a u16 header length at 8, later versions a u32.
    let (start, len) = match bytes.get(6) {
        Some(1) => (
            10,
            bytes
                .get(8..10)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
        ),
        _ => (
            12,
            (bytes.get(8..12)).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
        ),
    };
    let header = bytes.get(start..).unwrap_or_default();
    let header = &header[..len.unwrap_or(0).min(header.len())];
    let mut depth = 0usize;
    for &b in header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > 2 {
                    return false;
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Writes a float32 `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy_of(path, shape, data)
}

/// Writes an int32 `.npy` file (labels).
pub fn write_npy_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    write_npy_of(path, shape, data)
}

fn write_npy_of<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<()> {
    let mut buf = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
            .writer(std::io::Cursor::new(&mut buf))
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    std::fs::write(path, buf).with_context(|| format!("cannot write {}", path.display()))
}

fn gunzip(gz: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .context("corrupt gzip data")?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> Result<usize> {
    let s = b.get(at..at + 4).context("truncated IDX header")?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Decodes gzip'd IDX images into `[n, 1, rows, cols]` floats in `[0, 1]`
/// (pixel / 255, the preprocessing the bundled models were trained with).
pub fn idx_images(gz: &[u8]) -> Result<Tensor> {
    let b = gunzip(gz)?;
    if be_u32(&b, 0)? != 0x0803 {
        bail!("not an IDX image file");
    }
    let (n, r, c) = (be_u32(&b, 4)?, be_u32(&b, 8)?, be_u32(&b, 12)?);
    let px = b.get(16..16 + n * r * c).context("truncated IDX images")?;
    Ok(Tensor {
        shape: vec![n, 1, r, c],
        data: px.iter().map(|&p| p as f32 / 255.0).collect(),
    })
}

/// Decodes gzip'd IDX labels.
pub fn idx_labels(gz: &[u8]) -> Result<Vec<u8>> {
    let b = gunzip(gz)?;
    if be_u32(&b, 0)? != 0x0801 {
        bail!("not an IDX label file");
    }
    let n = be_u32(&b, 4)?;
    Ok(b.get(8..8 + n).context("truncated IDX labels")?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 `.npy` file with this header dict and no data.
    fn npy_with_header(dict: &str) -> Vec<u8> {
        let mut h = dict.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b
    }

    #[test]
    fn parse_npy_refuses_deeply_nested_headers_quickly() {
        // Found by fuzz/ (npy): npyz's parser is exponential in this nesting.
        for open in ["[", "{", "\r\n["] {
            let b = npy_with_header(&format!(
                "{}{{'descr': '<f4', 'fortran_order': False, 'shape': (0, ), }}",
                open.repeat(100)
            ));
            let t = std::time::Instant::now();
            assert!(parse_npy(&b).is_err());
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
        }
        let ok = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2), }");
        assert_eq!(parse_npy(&ok).unwrap().shape, vec![0, 2]);
    }

    #[test]
    fn parse_npy_refuses_shapes_larger_than_the_file() {
        let b = npy_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (8589934592, 2147483648), }",
        );
        assert!(parse_npy(&b).is_err());
        let b = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000, ), }");
        assert!(parse_npy(&b).is_err());
    }
}
