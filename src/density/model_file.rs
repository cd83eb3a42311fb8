//! The tagger's file format: tags, the tag dictionary, and sparse weights (nonzero only), little-endian.

use super::tagger::Tagger;
use std::collections::HashMap;

const MAGIC: &[u8; 8] = b"PXTAGv1\0";

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Serialises `t`, dropping weights whose magnitude is below `min_weight`.
pub fn to_bytes(t: &Tagger, min_weight: f32) -> Vec<u8> {
    let n = t.tags.len();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for tag in &t.tags {
        put_str(&mut out, tag);
    }
    let mut dict: Vec<(&String, &u16)> = t.tagdict.iter().collect();
    dict.sort();
    out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    for (w, c) in dict {
        put_str(&mut out, w);
        out.extend_from_slice(&c.to_le_bytes());
    }
    let mut rows: Vec<(u64, u32)> = t.rows.iter().map(|(f, r)| (*f, *r)).collect();
    rows.sort();
    let mut body = Vec::new();
    let mut kept = 0u32;
    for (f, r) in rows {
        let row = &t.weights[r as usize * n..(r as usize + 1) * n];
        let nz: Vec<(usize, f32)> = row.iter().copied().enumerate().filter(|(_, w)| w.abs() >= min_weight).collect();
        if nz.is_empty() {
            continue;
        }
        kept += 1;
        body.extend_from_slice(&f.to_le_bytes());
        body.push(nz.len() as u8);
        for (c, w) in nz {
            body.push(c as u8);
            body.extend_from_slice(&w.to_le_bytes());
        }
    }
    out.extend_from_slice(&kept.to_le_bytes());
    out.extend_from_slice(&body);
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
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("tagger model: bad UTF-8: {e}"))
    }
}

/// Reads a model written by [`to_bytes`].
pub fn from_bytes(b: &[u8]) -> Result<Tagger, String> {
    if b.get(..8) != Some(&MAGIC[..]) {
        return Err("not a pixforge tagger model (bad magic bytes)".into());
    }
    let mut r = Reader { b, p: 8 };
    let n = r.u32()? as usize;
    let tags = (0..n).map(|_| r.string()).collect::<Result<Vec<_>, _>>()?;
    let nd = r.u32()? as usize;
    let mut tagdict = HashMap::with_capacity(nd);
    for _ in 0..nd {
        let w = r.string()?;
        let c = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
        tagdict.insert(w, c);
    }
    let nr = r.u32()? as usize;
    let mut rows = HashMap::with_capacity(nr);
    let mut weights = vec![0.0f32; nr * n];
    for i in 0..nr {
        let f = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let k = r.take(1)?[0] as usize;
        for _ in 0..k {
            let c = r.take(1)?[0] as usize;
            let w = f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
            if c >= n {
                return Err(format!("tagger model: class {c} out of range ({n} tags)"));
            }
            weights[i * n + c] = w;
        }
        rows.insert(f, i as u32);
    }
    Ok(Tagger { tags, rows, weights, tagdict })
}
