//! Working-directory packages: a runtime env's directory packed once by
//! the submitter, stored by content hash on the head, unpacked on every
//! node that runs the job.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::proto;

use super::*;

/// Packs a directory (files, recursively; symlinks are skipped).
pub(crate) fn pack_dir(dir: &Path) -> Result<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<proto::PackageFile>, total: &mut usize) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if meta.is_dir() {
                walk(root, &path, out, total)?;
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                *total += meta.len() as usize;
                if *total > MAX_PACKAGE_BYTES {
                    return Err(Error::InvalidArgument(format!(
                        "the working directory {} is larger than {} MiB",
                        root.display(),
                        MAX_PACKAGE_BYTES >> 20
                    )));
                }
                let data = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let rel = path.strip_prefix(root).unwrap_or(&path);
                out.push(proto::PackageFile {
                    path: rel.to_string_lossy().into_owned(),
                    mode: meta.permissions().mode() & 0o777,
                    data,
                });
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "the working directory {} does not exist or is not a directory",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files, &mut 0)?;
    Ok(proto::DirPackage { files }.encode_to_vec())
}

/// Where the package `hash` is unpacked on this machine.
/// (Under this user's private directory, which every node daemon checks
/// at start: [`crate::util::rayforge_tmp`].)
pub(crate) fn package_dir(hash: &str) -> PathBuf {
    std::env::temp_dir().join("rayforge").join("packages").join(hash)
}

/// The package hash of a `package://<sha256>` working dir.
pub(crate) fn package_hash(working_dir: &str) -> Option<&str> {
    working_dir.strip_prefix(PACKAGE_SCHEME)
}

/// Unpacks a package into [`package_dir`] unless it is there already;
/// returns the directory.
pub(crate) fn unpack(hash: &str, data: &[u8]) -> Result<PathBuf> {
    let dest = package_dir(hash);
    if dest.is_dir() {
        return Ok(dest);
    }
    let pkg = proto::DirPackage::decode(data)
        .map_err(|e| Error::InvalidArgument(format!("package {hash} is not a packed directory: {e}")))?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!("{hash}.{}.tmp", std::process::id()));
    let write = || -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        for f in &pkg.files {
            let rel = Path::new(&f.path);
            let safe = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe || f.path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "package {hash} holds a path outside its directory: `{}`",
                    f.path
                )));
            }
            let path = tmp.join(rel);
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            }
            std::fs::write(&path, &f.data).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            // Permission bits only: a submitted setuid, setgid or sticky
            // bit never survives onto this machine.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode((f.mode & 0o777) | 0o400));
        }
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another process unpacked it first.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(Error::io(format!("storing {}", dest.display()), e)),
        }
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r.map(|_| dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::hex;
    use sha2::{Digest, Sha256};

    #[test]
    fn packages_round_trip_and_refuse_escaping_paths() {
        let src = std::env::temp_dir().join(format!("rayforge-pkg-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha").unwrap();
        std::fs::write(src.join("sub/b.txt"), b"beta").unwrap();
        let data = pack_dir(&src).unwrap();
        let hash = hex(&Sha256::digest(&data));
        let out = unpack(&hash, &data).unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(std::fs::read(out.join("sub/b.txt")).unwrap(), b"beta");
        let _ = std::fs::remove_dir_all(&out);

        let evil = proto::DirPackage {
            files: vec![proto::PackageFile {
                path: "../escape.txt".into(),
                mode: 0o644,
                data: b"x".to_vec(),
            }],
        }
        .encode_to_vec();
        // A setuid (and setgid, sticky) bit is dropped on unpacking.
        let suid = proto::DirPackage {
            files: vec![proto::PackageFile {
                path: "tool".into(),
                mode: 0o7755,
                data: b"#!/bin/sh\n".to_vec(),
            }],
        }
        .encode_to_vec();
        let suid_hash = format!("suid{}", std::process::id());
        let out = unpack(&suid_hash, &suid).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("tool")).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
        }
        let _ = std::fs::remove_dir_all(&out);
        let err = unpack("evil0", &evil).unwrap_err();
        assert!(err.to_string().contains("outside its directory"), "{err}");
        assert!(!package_dir("evil0").exists());
        assert!(pack_dir(&src.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&src);
    }
}
