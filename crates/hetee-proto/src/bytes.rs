//! Serde helpers that carry byte strings as bytes rather than as sequences
//! of `u8`. In postcard the two encodings are the same bytes on the wire
//! (a varint length, then the bytes), so this changes no format; it only
//! lets the (de)serializer copy a ciphertext at once instead of visiting
//! each of its ~57 000 bytes.
//!
//! Use `#[serde(with = "serde_bytes")]` on a `Vec<u8>`, and these modules
//! on lists of byte strings.

/// `Vec<Vec<u8>>` as a sequence of byte strings.
pub mod list {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serializes each element as bytes.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    /// Deserializes a sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// `Option<Vec<Vec<u8>>>` as an optional sequence of byte strings.
pub mod option_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serializes each element as bytes.
    pub fn serialize<S: Serializer>(v: &Option<Vec<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().map(|b| Bytes::new(b)).collect::<Vec<_>>())
            .serialize(s)
    }

    /// Deserializes an optional sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<u8>>>, D::Error> {
        let v: Option<Vec<ByteBuf>> = Deserialize::deserialize(d)?;
        Ok(v.map(|v| v.into_iter().map(ByteBuf::into_vec).collect()))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSeq {
        a: Vec<u8>,
        b: Vec<Vec<u8>>,
        c: Option<Vec<Vec<u8>>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        #[serde(with = "serde_bytes")]
        a: Vec<u8>,
        #[serde(with = "super::list")]
        b: Vec<Vec<u8>>,
        #[serde(with = "super::option_list")]
        c: Option<Vec<Vec<u8>>>,
    }

    #[test]
    fn the_postcard_bytes_are_the_same_either_way() {
        for c in [None, Some(vec![vec![], vec![9; 300]])] {
            let seq = AsSeq {
                a: (0..=255).collect(),
                b: vec![vec![1, 2, 3], vec![], vec![7; 1000]],
                c: c.clone(),
            };
            let bytes = AsBytes {
                a: seq.a.clone(),
                b: seq.b.clone(),
                c,
            };
            let wire = postcard::to_allocvec(&seq).unwrap();
            assert_eq!(wire, postcard::to_allocvec(&bytes).unwrap());
            assert_eq!(postcard::from_bytes::<AsBytes>(&wire).unwrap(), bytes);
            // Truncated input is an error, not a panic.
            for cut in [1, wire.len() / 2, wire.len() - 1] {
                assert!(postcard::from_bytes::<AsBytes>(&wire[..cut]).is_err());
            }
        }
    }
}
