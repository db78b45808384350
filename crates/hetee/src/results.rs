//! The per-input results of `hetee run --json` and `hetee infer --json`:
//! one entry per sample, in input order, with its file name for image
//! inputs.

use serde_json::{json, Value};

/// The index of the largest value (the first on ties); `None` if empty or
/// any value is NaN.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

fn file_of(files: Option<&[String]>, i: usize) -> Value {
    files
        .and_then(|f| f.get(i))
        .map_or(Value::Null, |f| json!(f))
}

/// One entry per sample of float outputs (`data` holds `n` equal rows):
/// `index`, `file` (image inputs; else null), `class` (the argmax) and
/// `output` (the row, flattened).
pub fn float_results(files: Option<&[String]>, n: usize, data: &[f32]) -> Vec<Value> {
    let per = data.len().checked_div(n).unwrap_or(0);
    (0..n)
        .map(|i| {
            let row = &data[i * per..(i + 1) * per];
            json!({"index": i, "file": file_of(files, i), "class": argmax(row), "output": row})
        })
        .collect()
}

/// One entry per sample of labels (`[n, k]`, best first): `index`, `file`,
/// `labels`.
pub fn label_results(files: Option<&[String]>, n: usize, data: &[i32]) -> Vec<Value> {
    let per = data.len().checked_div(n).unwrap_or(0);
    (0..n)
        .map(|i| {
            let row = &data[i * per..(i + 1) * per];
            json!({"index": i, "file": file_of(files, i), "labels": row})
        })
        .collect()
}

/// The stderr line saying which files were read, in batch order.
pub fn describe_files(files: &[String]) -> String {
    match files {
        [] => "no images".into(),
        [one] => format!("1 image ({one})"),
        [first, .., last] => format!(
            "{} images in file-name order ({first} … {last})",
            files.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0.0, f32::NAN]), None);
    }
}
