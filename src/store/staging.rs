//! Stage folders that may live in a store: reading a file or listing a folder wherever it is, and a
//! local working folder ([`Staging`]) for a folder in a store, into which a stage fetches what it
//! reads and from which it publishes what it writes (each file whole, the done marker last).

use super::{is_remote, Remote};
use crate::shards::Worker;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The client for the store prefix `url`, made once per process and shared.
pub fn remote(url: &str) -> anyhow::Result<Remote> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Remote>>> = OnceLock::new();
    let key = url.trim_end_matches('/').to_string();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = clients.get(&key) {
        return Ok(r.clone());
    }
    let r = Remote::open(&key)?;
    clients.insert(key, r.clone());
    Ok(r)
}

/// The client of `dir` when it names a store prefix.
fn remote_of(dir: &Path) -> anyhow::Result<Option<Remote>> {
    if is_remote(dir) {
        Ok(Some(remote(&dir.to_string_lossy())?))
    } else {
        Ok(None)
    }
}

/// The bytes of file `name` in `dir` (a folder or a store prefix), or `None` when there is none.
pub fn read_in(dir: &Path, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match remote_of(dir)? {
        Some(r) => r.read(name),
        None => {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow::anyhow!("{}: cannot read: {e}", p.display())),
            }
        }
    }
}

/// The parent prefix and object name of a store URL naming one object (`s3://b/p/x.parquet`).
fn split_object(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let text = path.to_string_lossy();
    text.trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(parent, _)| parent.contains("://") && !parent.ends_with('/'))
        .map(|(parent, name)| (PathBuf::from(parent), name.to_string()))
        .ok_or_else(|| anyhow::anyhow!("{text}: expected the URL of an object (scheme://bucket/…/name)"))
}

/// The bytes of the file (or store object) `path`, read whole; a missing one is an error naming it.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    if !is_remote(path) {
        return std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()));
    }
    let (parent, name) = split_object(path)?;
    read_in(&parent, &name)?.ok_or_else(|| anyhow::anyhow!("{}: cannot read: no such object", path.display()))
}

/// Writes `bytes` as the file (atomically: temporary name, then renamed) or store object (whole) `path`.
pub fn write_file(path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
    if !is_remote(path) {
        return Ok(crate::shards::write_atomic(path, &bytes)?);
    }
    let (parent, name) = split_object(path)?;
    remote(&parent.to_string_lossy())?.write(&name, bytes)
}

/// Whether the file (or store object) `path` exists.
pub fn exists(path: &Path) -> anyhow::Result<bool> {
    if !is_remote(path) {
        return Ok(path.is_file());
    }
    let (parent, name) = split_object(path)?;
    remote(&parent.to_string_lossy())?.exists(&name)
}

/// Creates the folder `dir` (a store prefix needs none).
pub fn create_dir(dir: &Path) -> anyhow::Result<()> {
    if is_remote(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))
}

/// Moves the finished local file `local` to `dest`: renamed into place when `dest` is a file, uploaded
/// whole (and the local file removed) when it names a store object.
pub fn put_file(local: &Path, dest: &Path) -> anyhow::Result<()> {
    if !is_remote(dest) {
        return std::fs::rename(local, dest).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", dest.display()));
    }
    let (parent, name) = split_object(dest)?;
    remote(&parent.to_string_lossy())?.upload(local, &name)?;
    let _ = std::fs::remove_file(local);
    Ok(())
}

/// Where a file bound for `dest` is written before [`put_file`] moves it there: beside it when
/// local, under the temporary directory for a store object.
pub fn temp_for(dest: &Path) -> PathBuf {
    if !is_remote(dest) {
        return crate::shards::temp_path(dest);
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::shards::temp_path(&std::env::temp_dir().join(name))
}

/// A local copy of what a stage reads of `path`: `path` itself when local; for a store prefix, the
/// objects directly under it that `wanted` accepts, downloaded into a new reading folder of this
/// process's (returned); for a store object, or a URL on a web server (which lists nothing), the
/// object (its local file returned). A store that cannot be listed is asked for the object.
pub fn local_copy(path: &Path, wanted: impl Fn(&str) -> bool) -> anyhow::Result<PathBuf> {
    if !is_remote(path) {
        return Ok(path.to_path_buf());
    }
    sweep_reading_dirs();
    let local = new_reading_dir(path);
    std::fs::create_dir_all(&local).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", local.display()))?;
    let text = path.to_string_lossy();
    let web = text.starts_with("http://") || text.starts_with("https://");
    let objects = if web { Vec::new() } else { remote(&text)?.list().unwrap_or_default() };
    if !objects.is_empty() {
        let r = remote(&text)?;
        for (name, _) in objects.iter().filter(|(n, _)| wanted(n)) {
            r.download(name, &local.join(name))?;
        }
        return Ok(local);
    }
    let missing = || anyhow::anyhow!("{}: no object and no objects under it", text.trim_end_matches('/'));
    let (parent, name) = split_object(path).map_err(|_| missing())?;
    let bytes = read_in(&parent, &name)?.ok_or_else(missing)?;
    let file = local.join(&name);
    crate::shards::write_atomic(&file, &bytes)?;
    Ok(file)
}

/// The names of the files directly in `dir` (a folder or a store prefix); none when it does not exist.
pub fn names_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    if let Some(r) = remote_of(dir)? {
        return Ok(r.list()?.into_iter().map(|(n, _)| n).collect());
    }
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// Where a stage writes `dir`: the folder itself when local; for a store prefix, a local folder of
/// this worker's under the temporary directory, named for the URL (so that the worker's share lock
/// lives there).
pub fn working_dir(dir: &Path, worker: Worker) -> PathBuf {
    if !is_remote(dir) {
        return dir.to_path_buf();
    }
    staging_root().join(format!("{}-{}-of-{}", url_digest(dir), worker.index, worker.count))
}

/// Where this process reads `dir`: the folder itself when local; for a store prefix, the working
/// folder of the last [`Staging::open_to_read`] of it in this process.
pub fn reading_dir(dir: &Path) -> PathBuf {
    if !is_remote(dir) {
        return dir.to_path_buf();
    }
    let key = url_digest(dir);
    let opened = READING.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    opened.unwrap_or_else(|| staging_root().join(format!("{key}-read-{}", std::process::id())))
}

/// The reading folders opened in this process, by URL digest.
static READING: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();

/// A new reading folder for `dir` (one per opening: several readers of one prefix may be open at
/// once), registered as its [`reading_dir`].
fn new_reading_dir(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = url_digest(dir);
    let local = staging_root().join(format!("{key}-read-{}-{n}", std::process::id()));
    READING.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner()).insert(key, local.clone());
    local
}

fn staging_root() -> PathBuf {
    std::env::temp_dir().join("pixforge-staging")
}

fn url_digest(dir: &Path) -> String {
    let url = dir.to_string_lossy();
    crate::image::sha256_hex(url.trim_end_matches('/').as_bytes())[..16].to_string()
}

/// Removes the reading folders of processes that are gone (killed before they could).
fn sweep_reading_dirs() {
    let Ok(entries) = std::fs::read_dir(staging_root()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit_once("-read-").and_then(|(_, p)| p.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !crate::shards::process_alive(p)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Empties `dir` but for share locks (a running process's lock is how a second one is refused).
fn clear_but_locks(dir: &Path) -> anyhow::Result<()> {
    let named = |e: std::io::Error| anyhow::anyhow!("{}: cannot clear the working folder: {e}", dir.display());
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(named)? {
        let entry = entry.map_err(named)?;
        if entry.file_name().to_string_lossy().starts_with(".pixforge-lock-") {
            continue;
        }
        let p = entry.path();
        if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.map_err(named)?;
    }
    Ok(())
}

/// A stage's folder, worked on locally: the folder itself, or for a store prefix a fresh local
/// working folder ([`working_dir`]) that starts empty, receives what the stage fetches, and is
/// removed when the `Staging` is dropped.
pub struct Staging {
    /// The local folder the stage reads and writes.
    pub dir: PathBuf,
    remote: Option<Remote>,
    listed: HashMap<String, u64>,
    /// The worker's share lock on a working folder it writes.
    lock: Option<crate::shards::ShareLock>,
}

impl Staging {
    /// Opens `dir` for `worker` to write into. A store prefix is listed once (a store that cannot
    /// be reached, a missing bucket or refused credentials fail here, naming it) and its working
    /// folder ([`working_dir`]) emptied.
    /// The worker's share lock is taken (in the working folder) before the folder is emptied, so a
    /// second process running the same share is refused without disturbing the first.
    pub fn open(dir: &Path, worker: Worker) -> anyhow::Result<Self> {
        Self::open_in(dir, working_dir(dir, worker), Some(worker))
    }

    /// Opens `dir` to read from: as [`Staging::open`], in a new folder of this process's (its
    /// [`reading_dir`] from now on).
    pub fn open_to_read(dir: &Path) -> anyhow::Result<Self> {
        if !is_remote(dir) {
            return Self::open_in(dir, dir.to_path_buf(), None);
        }
        sweep_reading_dirs();
        Self::open_in(dir, new_reading_dir(dir), None)
    }

    fn open_in(dir: &Path, local: PathBuf, share: Option<Worker>) -> anyhow::Result<Self> {
        let Some(remote) = remote_of(dir)? else {
            return Ok(Self { dir: dir.to_path_buf(), remote: None, listed: HashMap::new(), lock: None });
        };
        let listed = remote
            .list()
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e:#} (check the bucket, the credentials and AWS_ENDPOINT_URL / the cloud's variables)"
                )
            })?
            .into_iter()
            .collect();
        std::fs::create_dir_all(&local)
            .map_err(|e| anyhow::anyhow!("{}: cannot create the working folder: {e}", local.display()))?;
        let lock = share.map(|w| crate::shards::ShareLock::acquire(&local, w)).transpose()?;
        clear_but_locks(&local)?;
        Ok(Self { dir: local, remote: Some(remote), listed, lock })
    }

    /// Whether this folder holds the worker's share lock itself (a working folder for a store prefix).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// The store prefix, when the folder lives in one.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Whether `name` is there: listed in the store when the `Staging` was opened (or published
    /// since), else a file in the folder.
    pub fn has(&self, name: &str) -> bool {
        match &self.remote {
            Some(_) => self.listed.contains_key(name),
            None => self.dir.join(name).is_file(),
        }
    }

    /// The names of the folder's files (the store's listing for a prefix).
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        match &self.remote {
            Some(_) => Ok(self.listed.keys().cloned().collect()),
            None => names_in(&self.dir),
        }
    }

    /// Brings the listed objects `names` into the working folder (nothing to do for a local folder);
    /// names the store does not list are left out.
    pub fn fetch(&self, names: &[String]) -> anyhow::Result<()> {
        if let Some(r) = &self.remote {
            for name in names.iter().filter(|n| self.listed.contains_key(*n)) {
                r.download(name, &self.dir.join(name))?;
            }
        }
        Ok(())
    }

    /// The listed names of shard `shard`'s files (`{shard}.…` and `{shard}_…`).
    pub fn shard_files(&self, shard: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.strip_prefix(shard).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_')))
            .collect();
        names.sort();
        names
    }

    /// Uploads the working folder's files `names` to the store, in that order, and removes the local
    /// copies (nothing to do for a local folder). Names with no local file are left out.
    pub fn publish(&mut self, names: &[String]) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        for name in names {
            let local = self.dir.join(name);
            if let Ok(meta) = std::fs::metadata(&local) {
                r.upload(&local, name)?;
                self.listed.insert(name.clone(), meta.len());
            }
        }
        for name in names {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        Ok(())
    }

    /// Removes `name` from the folder (and from the store).
    pub fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(r) = &self.remote {
            r.delete(name)?;
            self.listed.remove(name);
        }
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!("{}: cannot remove: {e}", self.dir.join(name).display())),
        }
    }

    /// Removes the local copies of `names` from a working folder (a local folder is left as it is).
    pub fn forget(&self, names: &[String]) {
        if self.remote.is_some() {
            for name in names {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }

    /// The sub-folders of `sub` (`""`: the folder itself) in the store, or on disk for a local folder.
    pub fn subdirs(&self, sub: &str) -> anyhow::Result<Vec<String>> {
        match &self.remote {
            Some(r) => sub_remote(r, sub).list_dirs(),
            None => {
                let dir = self.dir.join(sub);
                let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
                Ok(entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect())
            }
        }
    }

    /// The names of the files directly in sub-folder `sub` (the store's for a prefix).
    pub fn names_under(&self, sub: &str) -> anyhow::Result<Vec<String>> {
        match &self.remote {
            Some(r) => Ok(sub_remote(r, sub).list()?.into_iter().map(|(n, _)| n).collect()),
            None => names_in(&self.dir.join(sub)),
        }
    }

    /// Brings every object directly under sub-folder `sub` of the store into the same sub-folder of
    /// the working folder (nothing to do for a local folder).
    pub fn fetch_under(&self, sub: &str) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        let from = sub_remote(r, sub);
        let to = self.dir.join(sub);
        std::fs::create_dir_all(&to).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", to.display()))?;
        for (name, _) in from.list()? {
            from.download(&name, &to.join(&name))?;
        }
        Ok(())
    }

    /// Uploads the files `names` of sub-folder `sub` of the working folder, in that order, keeping
    /// the local copies (nothing to do for a local folder).
    pub fn upload_under(&self, sub: &str, names: &[String]) -> anyhow::Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        let to = sub_remote(r, sub);
        for name in names {
            to.upload(&self.dir.join(sub).join(name), name)?;
        }
        Ok(())
    }

    /// Removes sub-folder `sub` from the store, at any depth (a local folder is left to its owner).
    pub fn delete_under(&self, sub: &str) -> anyhow::Result<()> {
        match &self.remote {
            Some(r) if !sub.is_empty() => sub_remote(r, sub).delete_all(),
            _ => Ok(()),
        }
    }

    /// The bytes of `name` (from the store for a prefix), or `None` when there is none.
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.remote {
            Some(r) => r.read(name),
            None => read_in(&self.dir, name),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.remote.is_some() {
            let _ = clear_but_locks(&self.dir);
            drop(self.lock.take());
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The prefix of sub-folder `sub` (`a/b`, or `""` for `r` itself).
fn sub_remote(r: &Remote, sub: &str) -> Remote {
    sub.split('/').filter(|p| !p.is_empty()).fold(r.clone(), |r, part| r.child(part))
}

/// Objects of a store prefix downloaded in order by a thread of their own, at most [`READ_AHEAD`]
/// ahead of the one asked for last, into the staging's working folder.
pub struct ReadAhead {
    shared: Arc<(Mutex<Ahead>, Condvar)>,
    staging: Arc<Staging>,
    order: Vec<String>,
}

/// Objects fetched ahead of the reader.
pub const READ_AHEAD: usize = 2;

#[derive(Default)]
struct Ahead {
    /// Index in the order of the next object asked for.
    wanted: usize,
    /// Downloads done (or failed, with the error).
    done: HashMap<String, Result<(), String>>,
    stop: bool,
    /// The thread has ended.
    finished: bool,
}

impl ReadAhead {
    /// Starts downloading `names` (in that order) from `staging`'s store.
    pub fn start(staging: Arc<Staging>, names: Vec<String>) -> Self {
        let shared = Arc::new((Mutex::new(Ahead::default()), Condvar::new()));
        let (s, st, order) = (shared.clone(), staging.clone(), names.clone());
        let started = std::thread::Builder::new().name("pixforge-read-ahead".into()).spawn(move || {
            let _finish = Finish(s.clone());
            for (i, name) in order.iter().enumerate() {
                {
                    let (lock, cv) = &*s;
                    let mut a = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while !a.stop && i > a.wanted + READ_AHEAD {
                        a = cv.wait(a).unwrap_or_else(|p| p.into_inner());
                    }
                    if a.stop {
                        return;
                    }
                }
                let r = st.fetch(std::slice::from_ref(name)).map_err(|e| format!("{e:#}"));
                let (lock, cv) = &*s;
                lock.lock().unwrap_or_else(|p| p.into_inner()).done.insert(name.clone(), r);
                cv.notify_all();
            }
        });
        if started.is_err() {
            shared.0.lock().unwrap_or_else(|p| p.into_inner()).finished = true;
        }
        Self { shared, staging, order: names }
    }

    /// The local file of `name` once downloaded (by the thread when `name` is in its order, else
    /// here). The caller removes it when done.
    pub fn take(&self, name: &str) -> anyhow::Result<PathBuf> {
        let Some(position) = self.order.iter().position(|n| n == name) else {
            self.staging.fetch(&[name.to_string()])?;
            return Ok(self.staging.dir.join(name));
        };
        let (lock, cv) = &*self.shared;
        let mut a = lock.lock().unwrap_or_else(|p| p.into_inner());
        a.wanted = a.wanted.max(position);
        cv.notify_all();
        loop {
            if let Some(r) = a.done.remove(name) {
                r.map_err(|e| anyhow::anyhow!(e))?;
                return Ok(self.staging.dir.join(name));
            }
            if a.finished {
                break;
            }
            a = cv.wait(a).unwrap_or_else(|p| p.into_inner());
        }
        drop(a);
        // Taken before (or the thread could not start): fetched again.
        self.staging.fetch(&[name.to_string()])?;
        Ok(self.staging.dir.join(name))
    }
}

/// Marks the read-ahead thread ended however it ends.
struct Finish(Arc<(Mutex<Ahead>, Condvar)>);

impl Drop for Finish {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap_or_else(|p| p.into_inner()).finished = true;
        cv.notify_all();
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_folder_is_its_own_working_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000_stats.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("00000.tar"), b"x").unwrap();
        let mut s = Staging::open(dir.path(), Worker::default()).unwrap();
        assert_eq!(s.dir, dir.path());
        assert!(s.has("00000.tar") && !s.has("00001.tar"));
        s.publish(&["00000.tar".into()]).unwrap();
        assert!(dir.path().join("00000.tar").is_file(), "a local folder keeps its files");
        assert_eq!(read_in(dir.path(), "00000_stats.json").unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(read_in(dir.path(), "none").unwrap(), None);
        let mut names = names_in(dir.path()).unwrap();
        names.sort();
        assert_eq!(names, ["00000.tar", "00000_stats.json"]);
        drop(s);
        assert!(dir.path().exists());
        assert_eq!(working_dir(dir.path(), Worker::default()), dir.path());
        let w = working_dir(Path::new("s3://b/p"), Worker { index: 1, count: 3 });
        assert!(w.starts_with(std::env::temp_dir()) && w.to_string_lossy().ends_with("-1-of-3"), "{w:?}");
    }
}
