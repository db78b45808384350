//! The fuzz input as a little program: a cursor whose reads past the end
//! give zeros or nothing (shared by the `session` and `stack` targets).

/// Reads the input; past its end every read gives zeros / nothing.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub fn byte(&mut self) -> u8 {
        self.u8().unwrap_or(0)
    }
    pub fn u32(&mut self) -> u32 {
        let n = self.0.len().min(4);
        let mut b = [0u8; 4];
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u32::from_le_bytes(b)
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn blob(&mut self, max: usize) -> &'a [u8] {
        let n = self.u32() as usize;
        self.bytes(n.min(max))
    }
    pub fn blobs(&mut self, max: usize) -> Vec<Vec<u8>> {
        let n = self.byte() % 4;
        (0..n).map(|_| self.blob(max).to_vec()).collect()
    }
    pub fn patch(&mut self, cts: &mut [Vec<u8>]) {
        let total: usize = cts.iter().map(|c| c.len()).sum();
        for _ in 0..self.byte() % 9 {
            let (pos, x) = (self.u32() as usize, self.byte());
            if total == 0 {
                continue;
            }
            let mut pos = pos % total;
            for c in cts.iter_mut() {
                if pos < c.len() {
                    c[pos] ^= x.max(1);
                    break;
                }
                pos -= c.len();
            }
        }
    }
}
