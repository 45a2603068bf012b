//! The trace directory: checked, created, `metadata` written, stream files
//! created, synced at the end.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::stream::StreamFile;
use crate::ConsumerError;

/// Name of the marker left when the trace was cut short. The file is
/// empty: CTF readers (babeltrace2, babeltrace 1) take every non-empty
/// regular file of a trace directory but `metadata` for a stream, and fail
/// on one that is not; an empty file they skip.
pub const INCOMPLETE: &str = "INCOMPLETE";

#[derive(Debug)]
pub(crate) struct OutputDir {
    pub(crate) path: PathBuf,
    channel: String,
}

fn is_trace_file(name: &str, channel: &str) -> bool {
    name == "metadata"
        || name == INCOMPLETE
        || name
            .strip_prefix(channel)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl OutputDir {
    /// Creates `path` if needed (refusing one that already holds a trace of
    /// `channel`) and writes `metadata`.
    pub(crate) fn prepare(path: &Path, channel: &str, metadata: &str) -> Result<OutputDir, ConsumerError> {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(ConsumerError::output("cannot list output directory", path))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if is_trace_file(&name, channel) {
                        return Err(ConsumerError::OutputNotEmpty { dir: path.to_path_buf(), file: name });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(ConsumerError::output("cannot create output directory", path))?
            }
            Err(e) => return Err(ConsumerError::output("cannot open output directory", path)(e)),
        }
        let md = path.join("metadata");
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&md)
            .map_err(ConsumerError::output("cannot create (is the directory writable?)", &md))?;
        f.write_all(metadata.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(ConsumerError::output("cannot write", &md))?;
        Ok(OutputDir { path: path.to_path_buf(), channel: channel.to_string() })
    }

    /// Path of CPU `cpu`'s stream file.
    pub(crate) fn stream_path(&self, cpu: u32) -> PathBuf {
        self.path.join(format!("{}_{cpu}", self.channel))
    }

    pub(crate) fn create_stream(&self, cpu: u32, direct_min: Option<usize>) -> Result<StreamFile, ConsumerError> {
        let p = self.stream_path(cpu);
        StreamFile::create(&p, cpu, direct_min).map_err(ConsumerError::output("cannot create stream file", &p))
    }

    /// Leaves the (empty) `INCOMPLETE` marker.
    pub(crate) fn mark_incomplete(&self) -> io::Result<()> {
        File::create(self.path.join(INCOMPLETE))?.sync_all()
    }

    /// `fsync`s the directory, so the files' names are durable too.
    pub(crate) fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_holding_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t");
        let o = OutputDir::prepare(&out, "chan", "/* CTF 1.8 */").unwrap();
        assert_eq!(std::fs::read_to_string(out.join("metadata")).unwrap(), "/* CTF 1.8 */");
        drop(o);
        let e = OutputDir::prepare(&out, "chan", "x").unwrap_err();
        assert!(e.to_string().contains("already holds a trace (found metadata)"), "{e}");
        // Unrelated files are fine, stream files are not.
        let other = dir.path().join("u");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "hi").unwrap();
        std::fs::write(other.join("chan_x"), "hi").unwrap();
        OutputDir::prepare(&other, "chan", "x").unwrap();
        let third = dir.path().join("v");
        std::fs::create_dir(&third).unwrap();
        std::fs::write(third.join("chan_12"), "").unwrap();
        let e = OutputDir::prepare(&third, "chan", "x").unwrap_err();
        assert!(matches!(e, ConsumerError::OutputNotEmpty { ref file, .. } if file == "chan_12"), "{e}");
        // A regular file in the way.
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = OutputDir::prepare(&file, "chan", "x").unwrap_err();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }
}
