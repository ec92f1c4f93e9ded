//! The state port on an embedded, file-backed database (redb): the CLI's default. Each
//! operation is one ACID write transaction, so the records survive process restarts and crashes.
//! One process at a time may write the file (a second writer gets a clear "in use" error);
//! any number may read it meanwhile (`compactor status`, `compactor plan`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, TableDefinition,
};

use crate::error::{Error, Result};
use crate::model::state::{PartitionId, PartitionRecord, PartitionStatus};
use crate::ports::state::StateStore;

const PARTITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("partitions");
const SWEEP_CURSORS: TableDefinition<&str, &str> = TableDefinition::new("sweep_cursors");
/// Separates dataset and partition in the table key; it cannot appear in either (keys reject
/// control characters).
const KEY_SEPARATOR: char = '\u{1f}';

enum Handle {
    Write(Database),
    Read(ReadOnlyDatabase),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handle::Write(_) => "writer",
            Handle::Read(_) => "reader",
        })
    }
}

#[derive(Clone, Debug)]
pub struct EmbeddedState {
    db: Arc<Handle>,
    path: PathBuf,
}

/// One writer, and readers beside it that follow its commits.
fn builder() -> Builder {
    let mut builder = Builder::new();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    builder
}

/// What an unreadable state file means, and what is safe to do about it.
fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::state(
            path.display().to_string(),
            "in use by another compactor process; wait for it to finish or point --state \
             elsewhere (compactor status and compactor plan can read it meanwhile)",
        ),
        other => Error::state(
            path.display().to_string(),
            format!(
                "is not a readable state file ({other}). It holds only progress, counters and \
                 leases, not data: moving it aside (mv {p} {p}.bad) is safe, and the next run \
                 starts a new one (work in progress may be redone; no file is lost, outputs have \
                 unique names and each partition's _compactor_manifest.json lists its files)",
                p = path.display()
            ),
        ),
    }
}

/// Creates a new state file so that it appears whole or not at all: a process killed while
/// creating one would otherwise leave a file without its header, which no later run can open.
/// The file is made beside its final name and linked into place only if nothing is there yet
/// (two first runs at once: the second one uses the first one's file).
fn create_atomically(path: &Path) -> Result<()> {
    let err = |e: std::io::Error| Error::state(path.display().to_string(), e);
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(
        ".new-{}",
        crate::support::process::ProcessIdentity::current().tag()
    ));
    let temp = std::path::PathBuf::from(temp);
    let created = builder().create(&temp).map_err(|e| open_error(&temp, e));
    let linked = created.and_then(|db| {
        drop(db);
        match std::fs::hard_link(&temp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(err(e)),
        }
    });
    let _ = std::fs::remove_file(&temp);
    linked
}

/// Removes the half-made state files of creating processes that were killed.
fn remove_dead_creations(path: &Path) {
    use crate::support::process::ProcessIdentity;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.new-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let dead = file
            .strip_prefix(&prefix)
            .and_then(ProcessIdentity::parse)
            .is_some_and(|owner| !owner.is_alive());
        if dead {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl EmbeddedState {
    /// Opens (creating if needed) the state file for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::state(path.display().to_string(), e))?;
        }
        if !path.exists() {
            create_atomically(&path)?;
        }
        remove_dead_creations(&path);
        let db = builder().create(&path).map_err(|e| open_error(&path, e))?;
        let state = Self {
            db: Arc::new(Handle::Write(db)),
            path,
        };
        state.update_raw(|txn| {
            txn.open_table(PARTITIONS)?;
            txn.open_table(SWEEP_CURSORS)?;
            Ok(())
        })?;
        Ok(state)
    }

    /// Opens an existing state file for reading only, beside a process that may be writing
    /// it; every change is refused.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = builder()
            .open_read_only(&path)
            .map_err(|e| open_error(&path, e))?;
        Ok(Self {
            db: Arc::new(Handle::Read(db)),
            path,
        })
    }

    fn begin_read(&self) -> Result<ReadTransaction> {
        match self.db.as_ref() {
            Handle::Write(db) => db.begin_read(),
            Handle::Read(db) => db.begin_read(),
        }
        .map_err(|e| self.err(e))
    }

    fn writer(&self) -> Result<&Database> {
        match self.db.as_ref() {
            Handle::Write(db) => Ok(db),
            Handle::Read(_) => Err(self.err("opened read-only; nothing may be changed")),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::state(self.path.display().to_string(), e)
    }

    fn update_raw<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self.writer()?.begin_write().map_err(|e| self.err(e))?;
        let out = f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Reads the record (or a fresh one), lets `f` change it, and writes it back, all in one
    /// transaction. `f` returning an error aborts without writing.
    fn modify<T>(
        &self,
        id: &PartitionId,
        now_ms: i64,
        f: impl FnOnce(&mut PartitionRecord) -> Result<T>,
    ) -> Result<T> {
        let key = table_key(id);
        let txn = self.writer()?.begin_write().map_err(|e| self.err(e))?;
        let out = {
            let mut table = txn.open_table(PARTITIONS).map_err(|e| self.err(e))?;
            let mut record = match table.get(key.as_str()).map_err(|e| self.err(e))? {
                Some(bytes) => decode(&self.path, bytes.value())?,
                None => PartitionRecord::new(id.clone(), now_ms),
            };
            let out = f(&mut record)?;
            let bytes = serde_json::to_vec(&record).map_err(|e| self.err(e))?;
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            out
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }
}

fn table_key(id: &PartitionId) -> String {
    format!("{}{KEY_SEPARATOR}{}", id.dataset, id.partition)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<PartitionRecord> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::state(
            path.display().to_string(),
            format!(
                "record is unreadable ({e}); delete the state file to rebuild it from the store"
            ),
        )
    })
}

#[async_trait]
impl StateStore for EmbeddedState {
    fn describe(&self) -> String {
        format!("embedded state {}", self.path.display())
    }

    async fn update_record(
        &self,
        id: &PartitionId,
        now_ms: i64,
        change: &mut (dyn for<'r> FnMut(&'r mut PartitionRecord) -> Result<()> + Send),
    ) -> Result<()> {
        self.modify(id, now_ms, |record| change(record))
    }

    async fn get(&self, id: &PartitionId) -> Result<Option<PartitionRecord>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(PARTITIONS).map_err(|e| self.err(e))?;
        let value = table.get(table_key(id).as_str()).map_err(|e| self.err(e))?;
        value.map(|v| decode(&self.path, v.value())).transpose()
    }

    async fn list_by_status(
        &self,
        dataset: &str,
        status: PartitionStatus,
    ) -> Result<Vec<PartitionRecord>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(PARTITIONS).map_err(|e| self.err(e))?;
        let start = format!("{dataset}{KEY_SEPARATOR}");
        let end = format!(
            "{dataset}{}",
            char::from_u32(KEY_SEPARATOR as u32 + 1).unwrap_or('\u{20}')
        );
        let mut out = Vec::new();
        for entry in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.err(e))?
        {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            let record = decode(&self.path, value.value())?;
            if record.status == status {
                out.push(record);
            }
        }
        Ok(out)
    }

    async fn sweep_cursor(&self, dataset: &str) -> Result<Option<String>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SWEEP_CURSORS).map_err(|e| self.err(e))?;
        let value = table.get(dataset).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_string()))
    }

    async fn set_sweep_cursor(&self, dataset: &str, cursor: Option<&str>) -> Result<()> {
        self.update_raw(|txn| {
            let mut table = txn.open_table(SWEEP_CURSORS)?;
            match cursor {
                Some(c) => table.insert(dataset, c).map(|_| ())?,
                None => table.remove(dataset).map(|_| ())?,
            }
            Ok(())
        })
    }
}
