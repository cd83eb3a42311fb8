//! COCO compressed RLE (the `segmentation.counts` strings of SA-1B and COCO), as pycocotools'
//! `maskApi.c`: decode, encode, area and bounding box. Masks are column-major (index = x * h + y).

/// An uncompressed RLE mask: alternating 0-runs and 1-runs, starting with a 0-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    /// Mask height.
    pub h: u32,
    /// Mask width.
    pub w: u32,
    /// Run lengths.
    pub counts: Vec<u32>,
}

/// Why a counts string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RleError {
    /// A character outside '0'..='o'.
    #[error("RLE counts: byte {byte:#04x} at position {pos} is outside the codec's range '0'..'o'")]
    BadChar { byte: u8, pos: usize },
    /// The string ended inside a value.
    #[error("RLE counts: string ends inside a value")]
    Truncated,
    /// A decoded run is negative or does not fit 32 bits.
    #[error("RLE counts: run {index} decodes to {value}, expected 0..2^32")]
    BadRun { index: usize, value: i64 },
    /// The runs do not cover the mask exactly.
    #[error("RLE counts: runs sum to {sum} but size [{h}, {w}] has {expected} pixels")]
    WrongTotal { sum: u64, h: u32, w: u32, expected: u64 },
}

impl Rle {
    /// Reads a compressed counts string (`rleFrString`) for a mask of size `[h, w]`.
    pub fn from_string(s: &[u8], h: u32, w: u32) -> Result<Self, RleError> {
        let mut counts: Vec<u32> = Vec::with_capacity(s.len());
        let mut p = 0;
        while p < s.len() {
            let mut x: i64 = 0;
            let mut k = 0u32;
            loop {
                let byte = *s.get(p).ok_or(RleError::Truncated)?;
                if !(48..=111).contains(&byte) {
                    return Err(RleError::BadChar { byte, pos: p });
                }
                let c = (byte - 48) as i64;
                if k >= 12 {
                    return Err(RleError::BadRun { index: counts.len(), value: i64::MAX });
                }
                x |= (c & 0x1f) << (5 * k);
                let more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            let i = counts.len();
            if i > 2 {
                x += counts[i - 2] as i64;
            }
            if !(0..=u32::MAX as i64).contains(&x) {
                return Err(RleError::BadRun { index: i, value: x });
            }
            counts.push(x as u32);
        }
        let sum: u64 = counts.iter().map(|&c| c as u64).sum();
        let expected = h as u64 * w as u64;
        if sum != expected {
            return Err(RleError::WrongTotal { sum, h, w, expected });
        }
        Ok(Self { h, w, counts })
    }

    /// Writes the compressed counts string (`rleToString`).
    pub fn to_string_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = c as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut c = x & 0x1f;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                out.push((c + 48) as u8);
                if !more {
                    break;
                }
            }
        }
        out
    }

    /// Encodes a column-major binary mask of size `h` x `w` (`rleEncode`).
    pub fn encode(mask: &[u8], h: u32, w: u32) -> Self {
        let mut counts = Vec::new();
        let mut prev = 0u8;
        let mut run = 0u32;
        for &m in mask {
            let v = (m != 0) as u8;
            if v != prev {
                counts.push(run);
                run = 0;
                prev = v;
            }
            run += 1;
        }
        counts.push(run);
        Self { h, w, counts }
    }

    /// Decodes to a column-major binary mask (`rleDecode`).
    pub fn decode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.h as usize * self.w as usize);
        for (i, &c) in self.counts.iter().enumerate() {
            out.extend(std::iter::repeat_n((i % 2) as u8, c as usize));
        }
        out
    }

    /// Number of foreground pixels (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| c as u64).sum()
    }

    /// Bounding box `[x, y, w, h]` as pycocotools' `toBbox` (SA-1B's stored bbox is 1 smaller in w/h).
    pub fn bbox(&self) -> [u32; 4] {
        let h = self.h as u64;
        if h == 0 || self.counts.len() < 2 {
            // maskApi.c: fewer than one (0-run, 1-run) pair gives an empty box
            return [0; 4];
        }
        let m = self.counts.len() & !1; // ignore a trailing 0-run
        let (mut xs, mut ys, mut xe, mut ye) = (self.w as u64, h, 0u64, 0u64);
        let mut cc = 0u64;
        let mut xp = 0u64;
        for j in 0..m {
            cc += self.counts[j] as u64;
            let t = cc - (j % 2) as u64;
            let (x, y) = (t / h, t % h);
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        [xs as u32, ys as u32, (xe - xs + 1) as u32, (ye - ys + 1) as u32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_vectors() {
        let r = Rle::from_string(b"`04n0", 5, 10).unwrap();
        assert_eq!(r.counts, vec![16, 4, 30]);
        assert_eq!(r.area(), 4);
        assert_eq!(r.bbox(), [3, 1, 1, 4]);
        assert_eq!(r.to_string_bytes(), b"`04n0");
        let empty = Rle::from_string(b"b1", 5, 10).unwrap();
        assert_eq!((empty.counts.clone(), empty.area(), empty.bbox()), (vec![50], 0, [0, 0, 0, 0]));
    }

    #[test]
    fn sa1b_vector_and_roundtrip() {
        let s = br"QT]S18b^13M3N1O2N100O2N100O1O2N1O2N1O100O101N100O10000O100O010O01O1O1N1N3000000001N101N101N2N100O1O1O100O0100O10O0100O10000O01000O100O100O101N2O1N101N2N2O1N2O0O1O2N1N3M3JQ_\d1";
        let r = Rle::from_string(s, 1500, 2000).unwrap();
        assert_eq!(r.area(), 2381);
        assert_eq!(r.bbox(), [773, 789, 82, 47]);
        let m = r.decode();
        assert_eq!(Rle::encode(&m, 1500, 2000), r);
        assert_eq!(r.to_string_bytes(), s.to_vec());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(Rle::from_string(b"b1~", 5, 10), Err(RleError::BadChar { .. })));
        assert!(matches!(Rle::from_string(b"b1", 5, 11), Err(RleError::WrongTotal { .. })));
        assert!(matches!(Rle::from_string(b"2", 5, 10), Err(RleError::WrongTotal { .. })));
        assert!(matches!(Rle::from_string(b"b", 5, 10), Err(RleError::Truncated)));
    }
}
