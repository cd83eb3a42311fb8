//! A reader of TensorBoard event files written apart from pixforge's writer: TFRecord framing with
//! both masked CRC-32C checked (computed bit by bit here), and the few `tensorflow.Event` fields a
//! test looks at, decoded from the protocol-buffer wire format.

use std::path::Path;

/// One value of an event's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub step: u64,
    pub tag: String,
    pub scalar: Option<f32>,
    /// An image's (width, height, encoded bytes).
    pub image: Option<(u64, u64, Vec<u8>)>,
}

/// What an event file holds.
#[derive(Debug, Default)]
pub struct Events {
    pub file_version: Option<String>,
    /// The steps of session starts.
    pub session_starts: Vec<u64>,
    pub values: Vec<Value>,
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The format's mask: the CRC rotated right by 15 bits, plus a constant.
fn masked(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The fields of a message: (field number, wire type, raw value: varint or bytes).
fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(b, &mut at);
                out.push((field, wire, Vec::new(), v));
            }
            1 => {
                out.push((field, wire, b[at..at + 8].to_vec(), 0));
                at += 8;
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                out.push((field, wire, b[at..at + n].to_vec(), 0));
                at += n;
            }
            5 => {
                out.push((field, wire, b[at..at + 4].to_vec(), 0));
                at += 4;
            }
            w => panic!("wire type {w} not expected in an event"),
        }
    }
    out
}

/// Reads every record of `path`, panicking on a bad CRC.
pub fn read(path: &Path) -> Events {
    let data = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut events = Events::default();
    while at < data.len() {
        let len_bytes = &data[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()), masked(len_bytes), "length CRC");
        let record = &data[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(data[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked(record), "record CRC at byte {at}");
        at += 16 + len;
        let mut step = 0;
        for (field, _, bytes, v) in fields(record) {
            match field {
                2 => step = v,
                3 => events.file_version = Some(String::from_utf8(bytes).unwrap()),
                5 => {
                    for (f, _, value, _) in fields(&bytes) {
                        assert_eq!(f, 1);
                        let mut val = Value { step, tag: String::new(), scalar: None, image: None };
                        for (vf, _, vb, _) in fields(&value) {
                            match vf {
                                1 => val.tag = String::from_utf8(vb).unwrap(),
                                2 => val.scalar = Some(f32::from_le_bytes(vb[..4].try_into().unwrap())),
                                4 => {
                                    let (mut w, mut h, mut png) = (0, 0, Vec::new());
                                    for (imf, _, imb, imv) in fields(&vb) {
                                        match imf {
                                            1 => h = imv,
                                            2 => w = imv,
                                            4 => png = imb,
                                            _ => {}
                                        }
                                    }
                                    val.image = Some((w, h, png));
                                }
                                _ => {}
                            }
                        }
                        events.values.push(val);
                    }
                }
                7 => {
                    let start = fields(&bytes).iter().any(|(f, _, _, v)| *f == 1 && *v == 1);
                    if start {
                        events.session_starts.push(step);
                    }
                }
                _ => {}
            }
        }
    }
    events
}

/// The event files in `dir`.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    v.sort();
    v
}
