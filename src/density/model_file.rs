//! The tagger's file format (little-endian): tags, the tag dictionary, then the sparse weights, each
//! row a feature hash and its (class, bfloat16 weight) entries.

use super::tagger::{TagDict, Tagger, Weights};

impl Tagger {
    /// The model built into the binary: trained on UD English-EWT v2.16 (CC BY-SA 4.0, see
    /// `assets/tagger/README.md`) by `pixforge density train-tagger` with its defaults.
    pub fn embedded() -> &'static Tagger {
        static MODEL: std::sync::OnceLock<Tagger> = std::sync::OnceLock::new();
        MODEL.get_or_init(|| {
            from_bytes(include_bytes!("../../assets/tagger/ewt-xpos.pxtag")).expect("the embedded tagger model parses")
        })
    }
}

const MAGIC: &[u8; 8] = b"PXTAGv3\0";

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_weights(out: &mut Vec<u8>, w: &Weights) {
    let rows = w.rows();
    put_u32(out, rows.len() as u32);
    for (f, entries) in rows {
        out.extend_from_slice(&f.to_le_bytes());
        out.push(entries.len() as u8);
        for (c, v) in entries {
            out.push(c);
            out.extend_from_slice(&bf16(v).to_le_bytes());
        }
    }
}

/// `v` rounded to bfloat16 (8 bits of precision: plenty for averaged perceptron weights).
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Serialises `t` (weights rounded to bfloat16).
pub fn to_bytes(t: &Tagger) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    put_u32(&mut out, t.tags.len() as u32);
    for tag in &t.tags {
        put_str(&mut out, tag);
    }
    let mut dict: Vec<(&String, &u16)> = t.tagdict.iter().collect();
    dict.sort();
    put_u32(&mut out, dict.len() as u32);
    for (w, c) in dict {
        put_str(&mut out, w);
        out.extend_from_slice(&c.to_le_bytes());
    }
    put_weights(&mut out, &t.weights);
    out
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self.b.get(self.p..self.p + n).ok_or_else(|| format!("tagger model truncated at byte {}", self.p))?;
        self.p += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("tagger model: bad UTF-8: {e}"))
    }
    fn weights(&mut self, n: usize) -> Result<Weights, String> {
        let nr = self.u32()? as usize;
        let mut rows = Vec::with_capacity(nr.min(1 << 22));
        let mut last = None;
        for _ in 0..nr {
            let f = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
            if last.is_some_and(|l| l >= f) {
                return Err(format!("tagger model: feature rows not in increasing order at byte {}", self.p));
            }
            last = Some(f);
            let k = self.u8()? as usize;
            let mut entries = Vec::with_capacity(k);
            for _ in 0..k {
                let c = self.u8()?;
                if c as usize >= n {
                    return Err(format!("tagger model: class {c} out of range ({n} tags) at byte {}", self.p));
                }
                let bits = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                entries.push((c, f32::from_bits((bits as u32) << 16)));
            }
            rows.push((f, entries));
        }
        Ok(Weights::from_rows(n, rows))
    }
}

/// Reads a model written by [`to_bytes`].
pub fn from_bytes(b: &[u8]) -> Result<Tagger, String> {
    if b.get(..8) != Some(&MAGIC[..]) {
        return Err(format!("not a pixforge tagger model: expected magic bytes {MAGIC:?} at the start"));
    }
    let mut r = Reader { b, p: 8 };
    let n = r.u32()? as usize;
    if n == 0 || n > 254 {
        return Err(format!("tagger model: expected 1..=254 tags, found {n}"));
    }
    let tags = (0..n).map(|_| r.string()).collect::<Result<Vec<_>, _>>()?;
    let nd = r.u32()? as usize;
    let mut tagdict = TagDict::default();
    for _ in 0..nd {
        let w = r.string()?;
        let c = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
        if c as usize >= n {
            return Err(format!("tagger model: tag dictionary entry {w:?} has class {c}, only {n} tags"));
        }
        tagdict.insert(w, c);
    }
    let weights = r.weights(n)?;
    if r.p != b.len() {
        return Err(format!("tagger model: {} unexpected bytes after the weights", b.len() - r.p));
    }
    let mut t = Tagger::new(tags, tagdict);
    t.weights = weights;
    Ok(t)
}
