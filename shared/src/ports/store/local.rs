//! The object-store port on a local directory: the embedded default of the CLI.
//!
//! Writes go to a temporary file under `<root>/.compactor-tmp/` and become visible with one
//! `rename` (or `link` for create-if-absent), so a reader never sees half an object and a killed
//! process leaves no partial object behind (its temporary files, named after the process, are
//! removed by the next process that opens the store). Conditional operations serialise on an
//! advisory file lock, so several processes can share one directory safely.
//!
//! A delete of a given version has no check-then-act window against writers outside the
//! store: the file is first renamed away (atomic: whatever was at the key moves, and the key is
//! free), then checked; a version that is not the expected one is put back with a link that
//! never replaces (if the key was written again meanwhile, the moved file is kept beside it
//! under `<name>.kept-<id>.<ext>`). A note written before the renames, one per batch of
//! deletes, lets the next process finish the job if this one dies in between.
//!
//! One file on purpose (about 700 lines): every operation shares one discipline of temporary
//! names, advisory locks and renames, and the crash-safety argument reads best in one place.

use std::fs::{self, File};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::model::object::{validate_key, validate_prefix, ObjectMeta};
use crate::ports::store::{
    DeleteFailure, DeleteRequest, ListPage, ObjectSink, ObjectStore, PutMode,
};

/// Hidden working directory of the adapter; never listed.
const TMP_DIR: &str = ".compactor-tmp";
/// Keys per listing page, as S3's default `max-keys`.
const PAGE_SIZE: usize = 1000;

#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    page_size: usize,
    counter: AtomicU64,
    /// This process's identity tag, in its temporary file names.
    owner: String,
}

/// `dir/name.kept-<id>.ext` for `dir/name.ext`: the same suffix, so it stays a data file.
fn kept_name(path: &Path, id: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let kept = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.kept-{id}.{ext}"),
        _ => format!("{name}.kept-{id}"),
    };
    path.with_file_name(kept)
}

impl LocalStore {
    /// Opens (and creates if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::with_page_size(root, PAGE_SIZE)
    }

    /// A store whose listings return at most `page_size` entries per page (tests use small
    /// pages to exercise pagination).
    pub fn with_page_size(root: impl AsRef<Path>, page_size: usize) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| Error::io(root.display().to_string(), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io(root.display().to_string(), e))?;
        let tmp = root.join(TMP_DIR);
        let inner = Inner {
            root,
            tmp,
            page_size: page_size.max(1),
            counter: AtomicU64::new(0),
            owner: crate::support::process::ProcessIdentity::current().tag(),
        };
        inner.clean_dead_leftovers();
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Other(format!("local store worker panicked: {e}")))?
    }
}

impl Inner {
    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        if key == TMP_DIR || key.starts_with(&format!("{TMP_DIR}/")) {
            return Err(Error::InvalidKey {
                key: key.to_string(),
                reason: "the .compactor-tmp directory is reserved for the local store",
            });
        }
        Ok(self.root.join(key.trim_end_matches('/')))
    }

    /// A name unique to this process and call: `<process tag>-<nanos>-<n>`.
    fn temp_stem(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        format!("{}-{nanos:x}-{n}", self.owner)
    }

    fn temp_path(&self) -> PathBuf {
        self.tmp.join(format!("{}.tmp", self.temp_stem()))
    }

    /// Deletes each `(key, path, expected)` only if it is still that version, with no window in
    /// which a file written to the key by someone else could be deleted instead (see the module
    /// documentation). One note, written before the first rename, lists every delete of the
    /// batch with the trash name it moves to, so the next process can finish them all if this
    /// one dies part-way.
    fn delete_versions(&self, batch: &[(&str, PathBuf, &str)]) -> Vec<DeleteFailure> {
        if batch.is_empty() {
            return Vec::new();
        }
        let stem = self.temp_stem();
        let trash_of = |i: usize| self.tmp.join(format!("{stem}-{i}.trash"));
        let note = self.tmp.join(format!("{stem}.trash.json"));
        let entries: Vec<serde_json::Value> = batch
            .iter()
            .enumerate()
            .map(|(i, (key, _, expected))| {
                serde_json::json!({"key": key, "version": expected, "trash": format!("{stem}-{i}.trash")})
            })
            .collect();
        let record = serde_json::json!({ "entries": entries });
        if let Err(e) = fs::write(&note, record.to_string()) {
            return batch
                .iter()
                .map(|(key, _, _)| DeleteFailure {
                    key: key.to_string(),
                    reason: format!("cannot write {}: {e}", note.display()),
                })
                .collect();
        }
        let mut failures = Vec::new();
        for (i, (key, path, expected)) in batch.iter().enumerate() {
            let trash = trash_of(i);
            match fs::rename(path, &trash) {
                Ok(()) => failures.extend(self.settle_trash(key, &trash, expected)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failures.push(DeleteFailure {
                    key: key.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        let _ = fs::remove_file(&note);
        failures
    }

    /// Deletes the file moved away from `key` if it is `expected`, else puts it back.
    fn settle_trash(&self, key: &str, trash: &Path, expected: &str) -> Option<DeleteFailure> {
        let path = self.path(key).ok()?;
        let moved = match fs::symlink_metadata(trash) {
            Ok(m) => meta_of(key, &m),
            Err(_) => return None,
        };
        if moved.version == expected {
            let _ = fs::remove_file(trash);
            self.prune_empty_parents(&path);
            return None;
        }
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        // Never delete what was not ours: when it cannot be put back, it stays in the trash.
        let stuck_in_trash = |e: std::io::Error| {
            Some(DeleteFailure {
                key: key.to_string(),
                reason: format!(
                    "object changed; it could not be put back ({e}) and is kept at {}",
                    trash.display()
                ),
            })
        };
        let reason = match fs::hard_link(trash, &path) {
            Ok(()) => format!(
                "object changed (version {} != {expected}); kept",
                moved.version
            ),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let kept = kept_name(&path, &self.temp_stem());
                match fs::hard_link(trash, &kept) {
                    Ok(()) => format!(
                        "object changed (version {} != {expected}) and was written again \
                         meanwhile; the changed version is kept as {}",
                        moved.version,
                        kept.display()
                    ),
                    Err(e) => return stuck_in_trash(e),
                }
            }
            Err(e) => return stuck_in_trash(e),
        };
        let _ = fs::remove_file(trash);
        Some(DeleteFailure {
            key: key.to_string(),
            reason,
        })
    }

    /// Removes what processes that no longer run left in the working directory: temporary
    /// files, and deletes they were in the middle of (finished as they would have been).
    fn clean_dead_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(owner) = name.split('-').next() else {
                continue;
            };
            let alive = match crate::support::process::ProcessIdentity::parse(owner) {
                Some(identity) => identity.is_alive(),
                // Earlier versions named files after the bare PID.
                None => owner
                    .parse::<u32>()
                    .map_or(true, crate::support::process::pid_alive),
            };
            if alive {
                continue;
            }
            if let Some(stem) = name.strip_suffix(".trash.json") {
                let note: Option<serde_json::Value> = fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                for (key, version, trash) in note.as_ref().map(noted_deletes).unwrap_or_default() {
                    // Notes of earlier versions name one delete, trashed as `<stem>.trash`.
                    let trash = self
                        .tmp
                        .join(trash.unwrap_or_else(|| format!("{stem}.trash")));
                    if let Some(failure) = self
                        .locked(|| Ok(self.settle_trash(&key, &trash, &version)))
                        .ok()
                        .flatten()
                    {
                        tracing::warn!(
                            key = failure.key,
                            reason = failure.reason,
                            "finished a delete a dead process had begun"
                        );
                    }
                }
                let _ = fs::remove_file(entry.path());
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Runs `f` while holding the store-wide advisory lock (shared across processes).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let lock_path = self.tmp.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(lock_path.display().to_string(), e))?;
        lock.lock()
            .map_err(|e| Error::io(lock_path.display().to_string(), e))?;
        let result = f();
        // Closing the descriptor releases the lock even if unlock fails.
        let _ = lock.unlock();
        result
    }

    fn meta(&self, key: &str, path: &Path) -> Result<Option<ObjectMeta>> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => Ok(Some(meta_of(key, &m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(key, e)),
        }
    }

    fn install(&self, tmp: &Path, key: &str, mode: &PutMode) -> Result<ObjectMeta> {
        let dest = self.path(key)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(key, e))?;
        }
        let outcome = self.locked(|| {
            match mode {
                PutMode::Overwrite => fs::rename(tmp, &dest).map_err(|e| Error::io(key, e))?,
                PutMode::IfAbsent => match fs::hard_link(tmp, &dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(Error::PreconditionFailed {
                            key: key.to_string(),
                            reason: "object already exists".into(),
                        })
                    }
                    Err(e) => return Err(Error::io(key, e)),
                },
                PutMode::IfMatch(expected) => {
                    let current = self.meta(key, &dest)?;
                    match current {
                        Some(m) if &m.version == expected => {
                            fs::rename(tmp, &dest).map_err(|e| Error::io(key, e))?
                        }
                        Some(m) => {
                            return Err(Error::PreconditionFailed {
                                key: key.to_string(),
                                reason: format!(
                                    "version is {} but the write expected {expected}",
                                    m.version
                                ),
                            })
                        }
                        None => {
                            return Err(Error::PreconditionFailed {
                                key: key.to_string(),
                                reason: "object does not exist".into(),
                            })
                        }
                    }
                }
            }
            self.meta(key, &dest)?.ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })
        });
        // After a rename the temp file is gone; after a link (or a refusal) it is not.
        let _ = fs::remove_file(tmp);
        outcome
    }

    fn list(&self, prefix: &str, delimiter: Option<char>, token: Option<&str>) -> Result<ListPage> {
        validate_prefix(prefix)?;
        if delimiter.is_some_and(|d| d != '/') {
            return Err(Error::Store {
                operation: "list",
                key: prefix.to_string(),
                message: "the local store only supports '/' as delimiter".into(),
            });
        }
        let (dir_key, name_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let dir = if dir_key.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_key)?
        };
        let mut objects = Vec::new();
        let mut prefixes = Vec::new();
        if delimiter.is_some() {
            for (name, _, meta) in read_dir_sorted(&dir, dir_key.is_empty())? {
                if !name.starts_with(name_prefix) {
                    continue;
                }
                let key = format!("{dir_key}{name}");
                if meta.is_dir() {
                    prefixes.push(format!("{key}/"));
                } else if meta.is_file() {
                    objects.push(meta_of(&key, &meta));
                }
            }
        } else {
            let mut stack = vec![(dir.clone(), dir_key.to_string(), true)];
            while let Some((path, key_prefix, top)) = stack.pop() {
                for (name, child, meta) in read_dir_sorted(&path, path == self.root)? {
                    if top && !name.starts_with(name_prefix) {
                        continue;
                    }
                    let key = format!("{key_prefix}{name}");
                    if meta.is_dir() {
                        stack.push((child, format!("{key}/"), false));
                    } else if meta.is_file() {
                        objects.push(meta_of(&key, &meta));
                    }
                }
            }
        }
        // S3 returns keys and common prefixes merged in byte order and pages over both.
        enum Entry {
            Object(ObjectMeta),
            Prefix(String),
        }
        let mut entries: Vec<(String, Entry)> = objects
            .into_iter()
            .map(|o| (o.key.clone(), Entry::Object(o)))
            .chain(prefixes.into_iter().map(|p| (p.clone(), Entry::Prefix(p))))
            .filter(|(k, _)| token.is_none_or(|t| k.as_str() > t))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let more = entries.len() > self.page_size;
        entries.truncate(self.page_size);
        let next_token = if more {
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let mut page = ListPage {
            next_token,
            ..ListPage::default()
        };
        for (_, entry) in entries {
            match entry {
                Entry::Object(o) => page.objects.push(o),
                Entry::Prefix(p) => page.common_prefixes.push(p),
            }
        }
        Ok(page)
    }

    /// Removes now-empty directories between `path` and the root, as S3 has no directories.
    fn prune_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// The deletes a note lists: `(key, version, trash file name)`; a note of an earlier version
/// holds one delete without a trash name.
fn noted_deletes(note: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    let one = |n: &serde_json::Value| {
        Some((
            n["key"].as_str()?.to_string(),
            n["version"].as_str()?.to_string(),
            n["trash"].as_str().map(String::from),
        ))
    };
    match note["entries"].as_array() {
        Some(entries) => entries.iter().filter_map(one).collect(),
        None => one(note).into_iter().collect(),
    }
}

fn meta_of(key: &str, m: &fs::Metadata) -> ObjectMeta {
    let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    ObjectMeta {
        key: key.to_string(),
        size: m.len(),
        version: format!("{:x}-{:x}-{:x}", m.len(), mtime_ns, m.ino()),
        last_modified_ms: (mtime_ns / 1_000_000) as i64,
    }
}

/// Directory entries sorted by name; symlinks and non-UTF-8 names are skipped (a key must be
/// valid UTF-8 and must not lead outside the root). A missing directory reads as empty.
fn read_dir_sorted(dir: &Path, is_root: bool) -> Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir.display().to_string(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display().to_string(), e))?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(dir = %dir.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if is_root && name == TMP_DIR {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // deleted while listing
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        out.push((name, path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<char>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let (prefix, token) = (prefix.to_string(), token.map(str::to_string));
        self.blocking(move |inner| inner.list(&prefix, delimiter, token.as_deref()))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let path = inner.path(&key)?;
            inner.meta(&key, &path)
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let path = inner.path(&key)?;
            let file = open_existing(&key, &path)?;
            let size = file.metadata().map_err(|e| Error::io(&key, e))?.len();
            let start = range.start.min(size);
            let end = range.end.min(size).max(start);
            let mut buf = vec![0u8; (end - start) as usize];
            file.read_exact_at(&mut buf, start)
                .map_err(|e| Error::io(&key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64)> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let path = inner.path(&key)?;
            let file = open_existing(&key, &path)?;
            let size = file.metadata().map_err(|e| Error::io(&key, e))?.len();
            let start = size.saturating_sub(len);
            let mut buf = vec![0u8; (size - start) as usize];
            file.read_exact_at(&mut buf, start)
                .map_err(|e| Error::io(&key, e))?;
            Ok((Bytes::from(buf), size))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<(Bytes, ObjectMeta)> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let path = inner.path(&key)?;
            let file = open_existing(&key, &path)?;
            let meta = file.metadata().map_err(|e| Error::io(&key, e))?;
            let mut buf = vec![0u8; meta.len() as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(|e| Error::io(&key, e))?;
            Ok((Bytes::from(buf), meta_of(&key, &meta)))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let key = key.to_string();
        self.blocking(move |inner| {
            inner.path(&key)?;
            let tmp = inner.temp_path();
            let mut file = File::create(&tmp).map_err(|e| Error::io(&key, e))?;
            file.write_all(&data).map_err(|e| Error::io(&key, e))?;
            drop(file);
            inner.install(&tmp, &key, &mode)
        })
        .await
    }

    async fn put_stream(&self, key: &str) -> Result<Box<dyn ObjectSink>> {
        self.inner.path(key)?;
        let tmp = self.inner.temp_path();
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::io(key, e))?;
        Ok(Box::new(LocalSink {
            store: self.clone(),
            key: key.to_string(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
        }))
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        let (from, to) = (from.to_string(), to.to_string());
        self.blocking(move |inner| {
            let src = inner.path(&from)?;
            inner.path(&to)?;
            let tmp = inner.temp_path();
            // Objects are never written in place (every write renames a new file over the
            // key), so a hard link is as good a copy as a byte copy, and free. Byte copy only
            // where links cannot go (another file system).
            let copied = fs::hard_link(&src, &tmp).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Err(e),
                _ => fs::copy(&src, &tmp).map(|_| ()),
            });
            match copied {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound { key: from })
                }
                Err(e) => return Err(Error::io(&from, e)),
            }
            inner.install(&tmp, &to, &PutMode::IfAbsent)
        })
        .await
    }

    async fn delete_many(&self, requests: &[DeleteRequest]) -> Result<Vec<DeleteFailure>> {
        let requests = requests.to_vec();
        self.blocking(move |inner| {
            let mut failures = Vec::new();
            inner.locked(|| {
                let mut versioned = Vec::new();
                for request in &requests {
                    let path = match inner.path(&request.key) {
                        Ok(p) => p,
                        Err(e) => {
                            failures.push(DeleteFailure {
                                key: request.key.clone(),
                                reason: e.to_string(),
                            });
                            continue;
                        }
                    };
                    if let Some(expected) = &request.version {
                        versioned.push((request.key.as_str(), path, expected.as_str()));
                        continue;
                    }
                    match fs::remove_file(&path) {
                        Ok(()) => inner.prune_empty_parents(&path),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => failures.push(DeleteFailure {
                            key: request.key.clone(),
                            reason: e.to_string(),
                        }),
                    }
                }
                failures.extend(inner.delete_versions(&versioned));
                Ok(())
            })?;
            Ok(failures)
        })
        .await
    }
}

fn open_existing(key: &str, path: &Path) -> Result<File> {
    match File::open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
            key: key.to_string(),
        }),
        Err(e) => Err(Error::io(key, e)),
    }
}

struct LocalSink {
    store: LocalStore,
    key: String,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
}

#[async_trait]
impl ObjectSink for LocalSink {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::Store {
            operation: "write",
            key: self.key.clone(),
            message: "write after finish".into(),
        })?;
        file.write_all(&data)
            .await
            .map_err(|e| Error::io(&self.key, e))
    }

    /// A ranged file copy (the kernel's `copy_file_range` where the file system has it). The
    /// source's version is not checked here: the merge compares every input's version after
    /// writing and discards outputs made from a changed input.
    async fn copy_range(
        &mut self,
        source: &str,
        _version: &str,
        range: Range<u64>,
    ) -> Result<bool> {
        let mut file = self.file.take().ok_or_else(|| Error::Store {
            operation: "copy",
            key: self.key.clone(),
            message: "copy after finish".into(),
        })?;
        file.flush().await.map_err(|e| Error::io(&self.key, e))?;
        let mut out = file.into_inner().into_std().await;
        let src = self.store.inner.path(source)?;
        let (key, source) = (self.key.clone(), source.to_string());
        let copied = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut from = fs::File::open(&src).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound {
                    key: source.clone(),
                },
                _ => Error::io(&source, e),
            })?;
            from.seek(SeekFrom::Start(range.start))
                .map_err(|e| Error::io(&source, e))?;
            let want = range.end - range.start;
            let n =
                std::io::copy(&mut from.take(want), &mut out).map_err(|e| Error::io(&key, e))?;
            if n != want {
                return Err(Error::CorruptInput {
                    key: source,
                    reason: format!(
                        "ends before byte {} (copied {n} of {want} bytes)",
                        range.end
                    ),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Other(format!("local copy worker panicked: {e}")))?;
        let out = copied?;
        self.file = Some(tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::from_std(out),
        ));
        Ok(true)
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        if let Some(mut file) = self.file.take() {
            file.flush().await.map_err(|e| Error::io(&self.key, e))?;
        }
        let (tmp, key) = (self.tmp.clone(), self.key.clone());
        self.store
            .blocking(move |inner| inner.install(&tmp, &key, &PutMode::Overwrite))
            .await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
        Ok(())
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
