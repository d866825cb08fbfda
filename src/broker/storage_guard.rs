//! What keeps a damaged store from being served: the store's identity (an emptied or replaced
//! store) and its watermark (a store that lost writes it had flushed: truncated part-way).

use std::path::Path;

use super::StorageError;

/// A file beside sled's naming the store that lives in this directory (the same id is inside
/// the store): sled opens an emptied or deleted store as a new one, and without this the node
/// would start on it with its sessions and retained messages gone, saying nothing.
const MARKER: &str = "strait-store";

/// The store in `dir` must be the one its marker names. A new directory gets a new id (in the
/// store, flushed, then in the marker); a store from before markers gets its marker.
pub(super) fn check_identity(dir: &Path, db: &sled::Db) -> Result<(), StorageError> {
    let path = dir.join(MARKER);
    let damaged = |why: String| StorageError::Damaged { path: dir.display().to_string(), why };
    let in_file = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(damaged(format!("cannot read {}: {e}", path.display()))),
    };
    let meta = db.open_tree("meta")?;
    let in_store = meta.get("store_id")?.map(|v| String::from_utf8_lossy(&v).to_string());
    match (in_file, in_store) {
        (Some(f), Some(s)) if f == s => Ok(()),
        (Some(f), None) => Err(damaged(format!(
            "{} says this directory holds store {f}, but the sled store in it is new (its files were \
             emptied, deleted or replaced). It is not served empty: restore the directory from a backup, \
             or remove the whole directory to start afresh",
            path.display()
        ))),
        (Some(f), Some(s)) => Err(damaged(format!(
            "{} names store {f}, but the sled store in it is store {s} (files from two stores mixed)",
            path.display()
        ))),
        (None, found) => {
            let id = match found {
                Some(s) => s,
                None => {
                    let id = format!("{:016x}", rand::random::<u64>());
                    meta.insert("store_id", id.as_bytes())?;
                    db.flush()?;
                    id
                }
            };
            replace_file(&path, &id).map_err(|e| damaged(format!("cannot write {}: {e}", path.display())))
        }
    }
}

/// Replace `path` with one line, `text`: a temporary file, fsynced, then renamed over it.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{text}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The file beside sled's holding the last generation sealed (`seal`).
const WATERMARK: &str = "strait-watermark";

fn generation(db: &sled::Db) -> Result<u64, StorageError> {
    let meta = db.open_tree("meta")?;
    Ok(match meta.get("generation")? {
        Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
        None => 0,
    })
}

/// The store must have reached the generation its watermark names.
pub(super) fn check_watermark(dir: &Path, db: &sled::Db) -> Result<(), StorageError> {
    let path = dir.join(WATERMARK);
    let damaged = |why: String| StorageError::Damaged { path: dir.display().to_string(), why };
    let sealed = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| damaged(format!("{} is not a generation number ({e})", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(damaged(format!("cannot read {}: {e}", path.display()))),
    };
    let found = generation(db)?;
    if found < sealed {
        return Err(damaged(format!(
            "it holds the writes of generation {found}, but it had flushed generation {sealed} ({}): \
             its files lost data (truncated or replaced by older ones). It is not served like this: \
             restore the directory from a backup, or remove the whole directory to start afresh",
            path.display()
        )));
    }
    Ok(())
}

/// A new generation, flushed, then recorded in the watermark file (a temporary file, fsynced,
/// renamed).
pub(super) fn seal(dir: &Path, db: &sled::Db) -> Result<(), StorageError> {
    let next = generation(db)? + 1;
    db.open_tree("meta")?.insert("generation", &next.to_be_bytes())?;
    db.flush()?;
    let path = dir.join(WATERMARK);
    replace_file(&path, &next.to_string()).map_err(|e| StorageError::Io {
        path: dir.display().to_string(),
        why: format!("cannot write {}: {e}", path.display()),
    })
}

/// Open sled; a panic inside it (sled 0.34 panics on some damaged files instead of returning
/// an error) is reported as a damaged store.
pub(super) fn open(dir: &Path, cfg: &sled::Config) -> Result<sled::Result<sled::Db>, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open())).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        StorageError::Damaged {
            path: dir.display().to_string(),
            why: format!(
                "sled could not read it ({what}). It is not served: restore the directory from a backup, or \
                 remove the whole directory to start afresh"
            ),
        }
    })
}
