//! Files a component that runs as its own user must reach, and those it must not.
//!
//! The Warden runs as root when a component has a `user`. The state directory becomes
//! traversable (mode 0711) but not listable, so the component reaches its configuration, its
//! installed releases and the managed TLS files by path. Secrets in the state directory (the
//! node key, the broker credentials) stay mode 0600, and the sled database directory stays
//! 0700. The managed TLS key goes to root and the component's group with mode 0640.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::unistd::{fchownat, Gid, Uid};

use super::definition::RunAs;
use crate::tls::TlsFiles;

/// Mode of the state directory while a component runs as another user.
pub const STATE_DIR_MODE: u32 = 0o711;

/// Makes the state directory traversable for components with their own user, and keeps the
/// sled database directory private.
pub fn open_state_dir(state_dir: &Path) -> Result<(), String> {
    set_mode(state_dir, STATE_DIR_MODE)?;
    let db = state_dir.join("db");
    if db.is_dir() {
        set_mode(&db, 0o700)?;
    }
    Ok(())
}

/// Checks the component's data directory before a start: a new one (created by the caller
/// just now) is given to `user`, and an existing one must already belong to it. An empty one
/// that belongs to the Warden counts as new, since the Warden may have crashed between creating
/// it and giving it away.
pub fn own_data_dir(data_dir: &Path, user: &RunAs, created: bool) -> Result<(), String> {
    if created {
        return give(data_dir, Some(user.uid), Some(user.gid));
    }
    let unreadable = |error: std::io::Error| {
        format!("cannot read data directory {}: {error}", data_dir.display())
    };
    let owner = std::fs::metadata(data_dir).map_err(unreadable)?.uid();
    if owner == user.uid {
        return Ok(());
    }
    // Only a real directory, not a link to one: the Warden creates directories, never links.
    let own_empty_dir = std::fs::symlink_metadata(data_dir).map_err(unreadable)?;
    let empty = own_empty_dir.file_type().is_dir()
        && own_empty_dir.uid() == nix::unistd::geteuid().as_raw()
        && std::fs::read_dir(data_dir)
            .map_err(unreadable)?
            .next()
            .is_none();
    if empty {
        return give(data_dir, Some(user.uid), Some(user.gid));
    }
    Err(format!(
        "data directory {} belongs to uid {owner}, but the component runs as {} (uid {}); run `chown -R {}: {}`",
        data_dir.display(),
        user.name,
        user.uid,
        user.name,
        data_dir.display()
    ))
}

/// Lets the component's group read the managed TLS key, if `key` is it. The Warden writes a
/// new key with mode 0600 at every renewal, so this runs before every start.
pub fn share_managed_key(key: &Path, managed: &TlsFiles, user: &RunAs) -> Result<(), String> {
    if key != managed.key {
        return Ok(());
    }
    let Some(directory) = managed.key.parent() else {
        return Ok(());
    };
    give(directory, None, Some(user.gid))?;
    set_mode(directory, 0o750)?;
    give(&managed.key, None, Some(user.gid))?;
    set_mode(&managed.key, 0o640)
}

/// Changes the owner of `path` itself: a symbolic link put in its place (by a user who can
/// write to its parent) gets the new owner, not the file it points to.
fn give(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    fchownat(
        None,
        path,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| format!("cannot change the owner of {}: {errno}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot set mode {mode:o} on {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> RunAs {
        RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn new_data_dir_given_to_user() {
        if !is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        own_data_dir(dir.path(), &nobody(), true).unwrap();
        let metadata = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(metadata.uid(), 65534);
        assert_eq!(metadata.gid(), 65534);
        own_data_dir(dir.path(), &nobody(), false).unwrap();
    }

    #[test]
    fn data_dir_link_target_kept() {
        if !is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("data");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        own_data_dir(&link, &nobody(), true).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
    }

    #[test]
    fn empty_data_dir_of_warden_given_to_user() {
        if !is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        own_data_dir(dir.path(), &nobody(), false).unwrap();
        assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), 65534);
    }

    #[test]
    fn link_to_empty_warden_dir_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("data");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = own_data_dir(&link, &nobody(), false).unwrap_err();
        assert!(error.contains("chown -R nobody:"), "{error}");
        let owner = std::fs::metadata(&target).unwrap().uid();
        assert_eq!(owner, nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn foreign_data_dir_rejected() {
        let dir = tempfile::tempdir().unwrap();
        // Not empty, so not one the Warden may have just created.
        std::fs::write(dir.path().join("segment"), b"data").unwrap();
        let error = own_data_dir(dir.path(), &nobody(), false).unwrap_err();
        assert!(error.contains("chown -R nobody:"), "{error}");
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
    }

    #[test]
    fn managed_key_shared_with_group() {
        if !is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let managed = TlsFiles::new(dir.path());
        std::fs::create_dir_all(managed.key.parent().unwrap()).unwrap();
        crate::executor::write_private(&managed.key, b"key").unwrap();
        share_managed_key(&managed.key, &managed, &nobody()).unwrap();
        let metadata = std::fs::metadata(&managed.key).unwrap();
        assert_eq!(metadata.uid(), 0);
        assert_eq!(metadata.gid(), 65534);
        assert_eq!(metadata.permissions().mode() & 0o777, 0o640);
        let tls_dir = std::fs::metadata(managed.key.parent().unwrap()).unwrap();
        assert_eq!(tls_dir.permissions().mode() & 0o777, 0o750);
    }

    #[test]
    fn other_key_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let managed = TlsFiles::new(dir.path());
        let own = dir.path().join("own.key");
        crate::executor::write_private(&own, b"key").unwrap();
        share_managed_key(&own, &managed, &nobody()).unwrap();
        let metadata = std::fs::metadata(&own).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn state_dir_traversable_db_private() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        open_state_dir(dir.path()).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o711);
        assert_eq!(mode(&dir.path().join("db")), 0o700);
    }
}
