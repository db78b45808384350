//! A model's public metadata: what its provider declares at upload for data
//! providers to read with the model's info (`GET /v1/models/{id}`), the
//! preprocessing of image inputs and the model's own output shape. It is
//! neither secret nor attested: the host stores and serves it as it is, so
//! a client that does not trust the host for it passes its own.

use serde::{Deserialize, Serialize};

/// Public metadata of a model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicMeta {
    /// Preprocessing spec of image inputs (`hetee::images::Preprocess` text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
    /// The model's output shape for one sample (e.g. `[10]`, `[C, H, W]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_shape: Option<Vec<usize>>,
}

impl PublicMeta {
    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.preprocess.is_none() && self.output_shape.is_none()
    }

    /// The query string of `POST /v1/models` that declares it (empty, or
    /// `?preprocess=…&output_shape=…`, percent-encoded).
    pub fn query_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.preprocess {
            parts.push(format!("preprocess={}", percent_encode(p)));
        }
        if let Some(s) = &self.output_shape {
            let dims: Vec<String> = s.iter().map(usize::to_string).collect();
            parts.push(format!("output_shape={}", percent_encode(&dims.join(","))));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes every byte but the unreserved characters of RFC 3986.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_string_encodes_the_spec() {
        assert_eq!(PublicMeta::default().query_string(), "");
        let m = PublicMeta {
            preprocess: Some("size=28x28,scale=1/255,mean=1e+0".into()),
            output_shape: Some(vec![1, 10]),
        };
        assert_eq!(
            m.query_string(),
            "?preprocess=size%3D28x28%2Cscale%3D1%2F255%2Cmean%3D1e%2B0&output_shape=1%2C10"
        );
    }
}
