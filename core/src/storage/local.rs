//! Local storage: a directory on this machine (on a cluster, one every
//! node shares). Files are written under a temporary name beside their
//! destination, fsynced and renamed into place, the directory fsynced after.

use std::path::{Path, PathBuf};

use super::{file_store::sync_dir, random_u64, Entry};
use crate::error::{Error, Result};

fn err(uri: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage {
        uri: uri.to_string(),
        message: format!("{what}: {e}"),
        retriable: false,
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a storage thread failed: {e}")))?
}

fn tmp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{:x}", random_u64()))
}

/// Writes `tmp` through `fill`, fsyncs it and renames it to `path`.
fn write_whole(uri: &str, path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| err(uri, "writing", "no parent directory"))?;
    std::fs::create_dir_all(dir).map_err(|e| err(uri, &format!("creating {}", dir.display()), e))?;
    let tmp = tmp_beside(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(uri, "writing", e));
    }
    sync_dir(dir);
    Ok(())
}

pub(super) async fn put(uri: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    let (uri, path, bytes) = (uri.to_string(), path.to_path_buf(), bytes.to_vec());
    blocking(move || write_whole(&uri, &path, |f| std::io::Write::write_all(f, &bytes))).await
}

pub(super) async fn put_file(uri: &str, path: &Path, from: PathBuf) -> Result<()> {
    let (uri, path) = (uri.to_string(), path.to_path_buf());
    blocking(move || {
        let mut src = std::fs::File::open(&from).map_err(|e| err(&uri, &format!("opening {}", from.display()), e))?;
        write_whole(&uri, &path, |f| std::io::copy(&mut src, f).map(|_| ()))
    })
    .await
}

pub(super) async fn read(uri: &str, path: &Path) -> Result<Option<Vec<u8>>> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(uri, "reading", e)),
    }
}

pub(super) async fn download(uri: &str, path: &Path, to: &Path) -> Result<bool> {
    let (uri, path, to) = (uri.to_string(), path.to_path_buf(), to.to_path_buf());
    blocking(move || {
        let mut src = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(err(&uri, "reading", e)),
        };
        write_whole(&to.to_string_lossy(), &to, |f| std::io::copy(&mut src, f).map(|_| ()))?;
        Ok(true)
    })
    .await
}

pub(super) async fn list(uri: &str, root: &Path, prefix: &str) -> Result<Vec<Entry>> {
    let (uri, root, prefix) = (uri.to_string(), root.to_path_buf(), prefix.to_string());
    blocking(move || {
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let mut out = Vec::new();
        let mut stack = vec![(root.join(&dir_part), dir_part.clone())];
        while let Some((d, rel)) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                    continue
                }
                Err(e) => return Err(err(&uri, &format!("listing {}", d.display()), e)),
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Files being written (temporary names) are not files yet.
                if name.starts_with('.') && name.contains(".tmp-") {
                    continue;
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push((entry.path(), key)),
                    Ok(t) if t.is_file() && key.starts_with(&prefix) => out.push(Entry {
                        size: entry.metadata().map(|m| m.len()).unwrap_or(0),
                        key,
                    }),
                    _ => {}
                }
            }
        }
        Ok(out)
    })
    .await
}

pub(super) async fn delete(uri: &str, root: &Path, prefix: &str) -> Result<u64> {
    let entries = list(uri, root, prefix).await?;
    let (uri, root) = (uri.to_string(), root.to_path_buf());
    blocking(move || {
        let mut n = 0;
        for e in entries {
            let path = root.join(&e.key);
            match std::fs::remove_file(&path) {
                Ok(()) => n += 1,
                Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
                Err(x) => return Err(err(&uri, &format!("deleting {}", e.key), x)),
            }
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(n)
    })
    .await
}
