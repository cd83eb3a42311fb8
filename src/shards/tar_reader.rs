//! Reading WebDataset tars: members grouped into samples by key, read by offset.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One regular file inside a tar, located by its data offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TarMember {
    /// Member path inside the tar.
    pub name: String,
    /// Byte offset of the member's data in the tar file.
    pub offset: u64,
    /// Size of the member's data.
    pub size: u64,
}

/// The members of one WebDataset sample: `key` plus extension → member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarSample {
    /// The sample key (member path up to the first dot of its file name).
    pub key: String,
    /// Members by extension (`jpg`, `txt`, `json`, `seg.png`, ...).
    pub members: BTreeMap<String, TarMember>,
}

/// Splits a member path into WebDataset key and extension: `a/b.seg.png` → (`a/b`, `seg.png`).
pub fn split_key(name: &str) -> (&str, &str) {
    let base_start = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[base_start..].find('.') {
        Some(dot) => (&name[..base_start + dot], &name[base_start + dot + 1..]),
        None => (name, ""),
    }
}

/// Lists the regular files of the tar at `path` with their data offsets, in archive order.
pub fn index_tar(path: &Path) -> io::Result<Vec<TarMember>> {
    match index_tar_partial(path)? {
        (members, None) => Ok(members),
        (_, Some(e)) => Err(e),
    }
}

/// [`index_tar`] of a tar that may be cut or damaged: the members listed up to the first entry that
/// cannot be read (a member whose data the file cuts short is listed, and fails when read), and that
/// entry's error.
pub fn index_tar_partial(path: &Path) -> io::Result<(Vec<TarMember>, Option<io::Error>)> {
    let file = File::open(path)?;
    let mut ar = tar::Archive::new(io::BufReader::new(file));
    let mut out = Vec::new();
    let bad = |e: io::Error| io::Error::new(e.kind(), format!("{}: bad tar entry: {e}", path.display()));
    for entry in ar.entries()? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Ok((out, Some(bad(e)))),
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => return Ok((out, Some(bad(e)))),
        };
        out.push(TarMember { name, offset: entry.raw_file_position(), size: entry.size() });
    }
    Ok((out, None))
}

/// Groups consecutive members into samples by WebDataset key (archive order kept; hidden files skipped).
pub fn group_samples(members: Vec<TarMember>) -> Vec<TarSample> {
    let mut out: Vec<TarSample> = Vec::new();
    for m in members {
        let base = m.name.rsplit('/').next().unwrap_or("");
        if base.starts_with('.') || base.starts_with("._") {
            continue;
        }
        let (key, ext) = split_key(&m.name);
        let (key, ext) = (key.to_string(), ext.to_ascii_lowercase());
        match out.last_mut() {
            Some(s) if s.key == key => {
                s.members.insert(ext, m);
            }
            _ => out.push(TarSample { key, members: BTreeMap::from([(ext, m)]) }),
        }
    }
    out
}

/// Reads one member's bytes from the tar at `path`.
pub fn read_member(path: &Path, member: &TarMember) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(member.offset))?;
    let mut buf = vec![0u8; member.size as usize];
    f.read_exact(&mut buf).map_err(|e| {
        io::Error::new(e.kind(), format!("{}: member {} is truncated: {e}", path.display(), member.name))
    })?;
    Ok(buf)
}

/// A WebDataset shard opened for reading: its samples, each readable by member.
#[derive(Debug, Clone)]
pub struct WdsReader {
    /// Path of the tar.
    pub path: PathBuf,
    /// Samples in archive order.
    pub samples: Vec<TarSample>,
}

impl WdsReader {
    /// Indexes the tar at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { path: path.to_path_buf(), samples: group_samples(index_tar(path)?) })
    }

    /// Reads the member with extension `ext` of `sample`, if it has one.
    pub fn read(&self, sample: &TarSample, ext: &str) -> io::Result<Option<Vec<u8>>> {
        sample.members.get(ext).map(|m| read_member(&self.path, m)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(split_key("a/b.seg.png"), ("a/b", "seg.png"));
        assert_eq!(split_key("x.y/000.jpg"), ("x.y/000", "jpg"));
        assert_eq!(split_key("noext"), ("noext", ""));
    }
}
