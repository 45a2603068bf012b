//! The trace directory: checked, created, opened once; `metadata`, the
//! stream files, the consumer's account and the `INCOMPLETE` marker created
//! in it; synced at the end.
//!
//! The consumer runs as root next to directories other users may write, so
//! it never looks a name up twice: the directory is opened once
//! (`O_NOFOLLOW`), and every file is created relative to that descriptor
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` (a name someone placed there, a
//! symbolic link included, is refused, never followed) and written only
//! through its descriptor; the `O_DIRECT` twin of a stream file is a reopen
//! of the open file, not of its name (`hvtrace_sys::fs`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use hvtrace_sys::fs;

use crate::stream::StreamFile;
use crate::ConsumerError;

/// Name of the marker left when the trace was cut short. The file is
/// empty: CTF readers (babeltrace2, babeltrace 1) take every non-empty
/// regular file of a trace directory but `metadata` for a stream, and fail
/// on one that is not; an empty file they skip.
pub const INCOMPLETE: &str = "INCOMPLETE";

pub use hvtrace_reader::ACCOUNT;

/// Disk space reserved for the account: a few lines per stream and loss
/// range (losses are kept as ranges of sequence numbers).
const ACCOUNT_RESERVE: u64 = 64 << 10;

/// Who may read a trace: its owner only (directory 0700, files 0600), or
/// also one group (0750 / 0640, like LTTng's `tracing` group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    group: Option<u32>,
}

impl Access {
    /// The owner only (`None`), or also `group`.
    pub fn new(group: Option<u32>) -> Self {
        Access { group }
    }

    fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    fn file_mode(&self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }
}

/// A trace directory opened once, its files created under its descriptor
/// (the consumer's; also `hvtrace record-kernel`'s, whose streams are
/// the kernel's).
#[derive(Debug)]
pub struct OutputDir {
    pub(crate) path: PathBuf,
    dir: OwnedFd,
    channel: String,
    access: Access,
}

fn is_trace_file(name: &str, channel: &str) -> bool {
    name == "metadata"
        || name == INCOMPLETE
        || name == ACCOUNT
        || name
            .strip_prefix(channel)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl OutputDir {
    /// Creates `path` if needed (refusing one that already holds a trace of
    /// `channel`), opens it and writes `metadata`; returns the `metadata`
    /// file too, which grows as the host registers classes.
    pub fn prepare(
        path: &Path,
        channel: &str,
        metadata: &str,
        access: Access,
    ) -> Result<(OutputDir, File), ConsumerError> {
        let created = match fs::create_dir(path, access.dir_mode()) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The parents are the operator's: made as `mkdir -p` would.
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(ConsumerError::output("cannot create output directory", path))?;
                }
                fs::create_dir(path, access.dir_mode())
                    .map_err(ConsumerError::output("cannot create output directory", path))?;
                true
            }
            Err(e) => return Err(ConsumerError::output("cannot create output directory", path)(e)),
        };
        let dir = fs::open_dir(path)
            .map_err(ConsumerError::output("cannot open output directory (a directory, not a link)", path))?;
        if created {
            // Exactly these bits whatever the umask, and the group's.
            fs::set_mode_and_group(&dir, access.dir_mode(), access.group)
                .map_err(ConsumerError::output("cannot set the mode and group of", path))?;
        }
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)))
            .or_else(|_| std::fs::read_dir(path))
            .map_err(ConsumerError::output("cannot list output directory", path))?;
        for e in listing {
            let e = e.map_err(ConsumerError::output("cannot list output directory", path))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_trace_file(&name, channel) {
                return Err(ConsumerError::OutputNotEmpty { dir: path.to_path_buf(), file: name });
            }
        }
        let out = OutputDir { path: path.to_path_buf(), dir, channel: channel.to_string(), access };
        let md = path.join("metadata");
        let mut f = out.create("metadata").map_err(ConsumerError::output("cannot create", &md))?;
        f.write_all(metadata.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(ConsumerError::output("cannot write", &md))?;
        Ok((out, f))
    }

    /// Creates the new file `name` in the directory, with the trace's mode
    /// and group.
    pub fn create(&self, name: &str) -> io::Result<File> {
        let f = fs::create_at(&self.dir, name, self.access.file_mode())?;
        fs::set_mode_and_group(&f, self.access.file_mode(), self.access.group)?;
        Ok(f)
    }

    /// Name of CPU `cpu`'s stream file.
    fn stream_name(&self, cpu: u32) -> String {
        format!("{}_{cpu}", self.channel)
    }

    pub(crate) fn create_stream(&self, cpu: u32, direct_min: Option<usize>) -> Result<StreamFile, ConsumerError> {
        let name = self.stream_name(cpu);
        let p = self.path.join(&name);
        let file = self.create(&name).map_err(ConsumerError::output("cannot create stream file", &p))?;
        Ok(StreamFile::new(&p, name, file, cpu, direct_min))
    }

    /// Creates the consumer's account and writes its first lines. Room for
    /// the rest is reserved now: the session may end on a full disk, which
    /// is when the account matters most.
    pub(crate) fn create_account(&self, header: &str) -> Result<File, ConsumerError> {
        let p = self.path.join(ACCOUNT);
        let mut f = self.create(ACCOUNT).map_err(ConsumerError::output("cannot create", &p))?;
        // A file system without fallocate only loses the guarantee.
        let _ = fs::reserve(&f, ACCOUNT_RESERVE);
        f.write_all(header.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(ConsumerError::output("cannot write", &p))?;
        Ok(f)
    }

    /// Leaves the (empty) `INCOMPLETE` marker.
    pub(crate) fn mark_incomplete(&self) -> io::Result<()> {
        self.create(INCOMPLETE)?.sync_all()
    }

    /// Whether `file` is still the stream file of `name` in the directory
    /// (not removed, renamed or replaced); why not, if not.
    pub(crate) fn still_holds(&self, name: &str, file: &File) -> Option<String> {
        match fs::same_file(&self.dir, name, file) {
            Ok(true) => None,
            Ok(false) => Some(match fs::kind_at(&self.dir, name) {
                Ok(Some(kind)) => format!("{name} was replaced during the session (now a {kind})"),
                Ok(None) => format!("{name} was removed or renamed during the session"),
                Err(e) => format!("{name} cannot be looked at: {e}"),
            }),
            Err(e) => Some(format!("{name} cannot be looked at: {e}")),
        }
    }

    /// Why the directory is no longer the trace at `path`, if it is not
    /// (removed, or moved and replaced).
    pub(crate) fn gone(&self) -> Option<String> {
        match fs::dir_still_at(&self.dir, &self.path) {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "the output directory {} was removed or replaced during the session: the trace is lost",
                self.path.display()
            )),
            Err(e) => Some(format!("the output directory {} cannot be looked at: {e}", self.path.display())),
        }
    }

    /// `fsync`s the directory, so the files' names are durable too.
    pub(crate) fn sync(&self) -> io::Result<()> {
        File::from(self.dir.try_clone()?).sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn refuses_a_directory_holding_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t");
        let o = OutputDir::prepare(&out, "chan", "/* CTF 1.8 */", Access::new(None)).unwrap().0;
        assert_eq!(std::fs::read_to_string(out.join("metadata")).unwrap(), "/* CTF 1.8 */");
        drop(o);
        let e = OutputDir::prepare(&out, "chan", "x", Access::new(None)).unwrap_err();
        assert!(e.to_string().contains("already holds a trace (found metadata)"), "{e}");
        // Unrelated files are fine, stream files are not.
        let other = dir.path().join("u");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "hi").unwrap();
        std::fs::write(other.join("chan_x"), "hi").unwrap();
        OutputDir::prepare(&other, "chan", "x", Access::new(None)).unwrap();
        let third = dir.path().join("v");
        std::fs::create_dir(&third).unwrap();
        std::fs::write(third.join("chan_12"), "").unwrap();
        let e = OutputDir::prepare(&third, "chan", "x", Access::new(None)).unwrap_err();
        assert!(matches!(e, ConsumerError::OutputNotEmpty { ref file, .. } if file == "chan_12"), "{e}");
        // A regular file in the way.
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = OutputDir::prepare(&file, "chan", "x", Access::new(None)).unwrap_err();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        // A link in the way, even to a directory.
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let e = OutputDir::prepare(&link, "chan", "x", Access::new(None)).unwrap_err();
        assert!(e.to_string().contains("not a link"), "{e}");
    }

    #[test]
    fn private_by_default_group_readable_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p");
        let o = OutputDir::prepare(&out, "chan", "x", Access::new(None)).unwrap().0;
        o.create_stream(0, None).unwrap();
        o.mark_incomplete().unwrap();
        assert_eq!(mode(&out), 0o700);
        for f in ["metadata", "chan_0", INCOMPLETE] {
            assert_eq!(mode(&out.join(f)), 0o600, "{f}");
        }
        let out = dir.path().join("g");
        // A group this process may give (its own): 0750 / 0640 and that group.
        let gid = std::fs::metadata(dir.path()).map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap();
        let o = OutputDir::prepare(&out, "chan", "x", Access::new(Some(gid))).unwrap().0;
        o.create_stream(1, None).unwrap();
        assert_eq!(mode(&out), 0o750);
        assert_eq!(mode(&out.join("chan_1")), 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(out.join("chan_1")).unwrap()), gid);
        // A marker someone else already put there is refused, not followed.
        std::os::unix::fs::symlink(dir.path().join("victim"), out.join(INCOMPLETE)).unwrap();
        assert_eq!(o.mark_incomplete().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!dir.path().join("victim").exists());
    }
}
