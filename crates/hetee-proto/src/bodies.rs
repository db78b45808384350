//! Binary request bodies (`application/octet-stream`) for the two routes
//! that carry ciphertexts, so that they travel as bytes rather than base64
//! inside JSON. Little-endian, strictly length-checked:
//!
//! ```text
//! query  (POST /v1/sessions/{id}/query): "HQRY" | u8 1 | blob payload | list input
//! upload (POST /v1/models):              "HUPL" | u8 1 | [u8; 16] key_id | u32 stages
//!                                        | (blob packing | list weights) per stage
//! blob = u32 len | bytes            list = u32 count | blob per item
//! ```

/// Content type of the binary bodies.
pub const OCTET_STREAM: &str = "application/octet-stream";
const VERSION: u8 = 1;
/// Most items in one list (ciphertexts of a stage, stages of a model).
pub const MAX_ITEMS: usize = 1 << 20;

/// A query: the sealed query message and the stage-0 input ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryBody {
    /// The sealed query message.
    pub payload: Vec<u8>,
    /// The input ciphertexts (none for a thin query).
    pub input: Vec<Vec<u8>>,
}

/// One uploaded stage: its packing (postcard) and its weight ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageBody {
    /// `hetee_he::ConvPacking`, postcard.
    pub packing: Vec<u8>,
    /// Encrypted packed weights in packing order.
    pub weights: Vec<Vec<u8>>,
}

/// A model upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBody {
    /// The key set the weights are encrypted under.
    pub key_id: [u8; 16],
    /// The stages in order.
    pub stages: Vec<StageBody>,
}

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        put_blob(out, i);
    }
}

/// A bounds-checked cursor.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err(format!(
                "the {} body is truncated: {n} bytes needed, {} left",
                self.what,
                self.b.len()
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn header(&mut self, magic: &[u8; 4]) -> Result<(), String> {
        let m = self.take(4)?;
        if m != magic {
            return Err(format!(
                "the {} body does not start with {:?}",
                self.what,
                String::from_utf8_lossy(magic)
            ));
        }
        match self.take(1)?[0] {
            VERSION => Ok(()),
            v => Err(format!(
                "the {} body has version {v}; this server reads version {VERSION}",
                self.what
            )),
        }
    }
    fn blob(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()?;
        Ok(self.take(n)?.to_vec())
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>, String> {
        let n = self.u32()?;
        // Each item needs at least its 4-byte length.
        if n > MAX_ITEMS || n.saturating_mul(4) > self.b.len() {
            return Err(format!("the {} body announces {n} items", self.what));
        }
        (0..n).map(|_| self.blob()).collect()
    }
    fn end(&self) -> Result<(), String> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} trailing bytes after the {} body",
                self.b.len(),
                self.what
            ))
        }
    }
}

impl QueryBody {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let size = 13 + self.payload.len() + self.input.iter().map(|c| 4 + c.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(b"HQRY");
        out.push(VERSION);
        put_blob(&mut out, &self.payload);
        put_list(&mut out, &self.input);
        out
    }

    /// Strict decoding.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b, what: "query" };
        r.header(b"HQRY")?;
        let payload = r.blob()?;
        let input = r.list()?;
        r.end()?;
        Ok(QueryBody { payload, input })
    }
}

impl UploadBody {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"HUPL".to_vec();
        out.push(VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&(self.stages.len() as u32).to_le_bytes());
        for s in &self.stages {
            put_blob(&mut out, &s.packing);
            put_list(&mut out, &s.weights);
        }
        out
    }

    /// Strict decoding.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b, what: "upload" };
        r.header(b"HUPL")?;
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(r.take(16)?);
        let n = r.u32()?;
        if n == 0 || n > MAX_ITEMS || n.saturating_mul(8) > r.b.len() {
            return Err(format!("the upload body announces {n} stages"));
        }
        let stages = (0..n)
            .map(|_| {
                Ok(StageBody {
                    packing: r.blob()?,
                    weights: r.list()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        r.end()?;
        Ok(UploadBody { key_id, stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_every_truncation() {
        let q = QueryBody {
            payload: vec![1, 2, 3],
            input: vec![vec![9; 10], vec![], vec![7; 3]],
        };
        let b = q.encode();
        assert_eq!(QueryBody::decode(&b).unwrap(), q);
        for n in 0..b.len() {
            assert!(QueryBody::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(QueryBody::decode(&longer).is_err());
        let u = UploadBody {
            key_id: [5; 16],
            stages: vec![
                StageBody {
                    packing: vec![1; 4],
                    weights: vec![vec![2; 8]; 3],
                },
                StageBody {
                    packing: vec![],
                    weights: vec![],
                },
            ],
        };
        let b = u.encode();
        assert_eq!(UploadBody::decode(&b).unwrap(), u);
        for n in 0..b.len() {
            assert!(UploadBody::decode(&b[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = b"HQRY\x01".to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(QueryBody::decode(&b).unwrap_err().contains("items"));
        let mut b = b"HUPL\x01".to_vec();
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(UploadBody::decode(&b).unwrap_err().contains("stages"));
        assert!(QueryBody::decode(b"HQRY\x02")
            .unwrap_err()
            .contains("version"));
    }
}
