//! Directories only this user may write: where the project keeps what it
//! trusts on a machine (the local cluster's address and token, daemons'
//! pid files, the head's default state, fetched job binaries and packages).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `path` as a directory only this user can write, created (mode 0700) if
/// missing. One that exists must be a real directory (not a link) owned by
/// this user; one of ours open to others is closed to 0700. Anything else
/// is refused: another user may have made it first (in a shared `/tmp`)
/// to plant a token, a pid file or a program in it.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("private-doc-{}", std::process::id()));
/// let p = rayforge::util::private_dir(&dir).unwrap();
/// use std::os::unix::fs::PermissionsExt;
/// assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn private_dir(path: &Path) -> Result<PathBuf> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let refuse = |why: String| {
        Err(Error::InvalidArgument(format!(
            "refusing to use {}: {why}; another user may have made it to plant files there. \
             Remove it, or point TMPDIR at a directory of your own",
            path.display()
        )))
    };
    if !meta.file_type().is_dir() {
        return refuse("it is not a directory (a link or a file)".into());
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("closing {} to other users", path.display()), e))?;
    }
    Ok(path.to_path_buf())
}

/// This user's private directory under the temporary directory:
/// `$TMPDIR/rayforge`, checked by [`private_dir`].
pub fn rayforge_tmp() -> Result<PathBuf> {
    private_dir(&std::env::temp_dir().join("rayforge"))
}

/// Creates `path` as a new directory only this user can use (mode 0700),
/// failing if anything is there already: for names a process makes up
/// (session directories), which nobody else should have.
pub(crate) fn fresh_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_another_user_made_is_refused_and_ours_is_closed() {
        let base = std::env::temp_dir().join(format!("rf-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // Made: 0700.
        let mine = base.join("mine");
        private_dir(&mine).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&mine), 0o700);
        // Ours but open (as an older version left it): closed.
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&mine).unwrap();
        assert_eq!(mode(&mine), 0o700);
        // A link to a directory: refused, even one of ours.
        let link = base.join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        let err = private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory") && err.contains("link"), "{err}");
        // Another user's: refused, naming the owner (root can make one).
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = private_dir(&theirs).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534") && err.contains("TMPDIR"), "{err}");
        }
        // A fresh one fails if anything is there.
        assert!(fresh_private_dir(&mine).is_err());
        fresh_private_dir(&base.join("fresh")).unwrap();
        assert_eq!(mode(&base.join("fresh")), 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
