//! What the export and report tests share: running the built binary in a
//! fresh temporary directory.

use std::path::PathBuf;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_hvtrace");

/// Runs `hvtrace ARGS`.
pub fn hvtrace(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("run hvtrace")
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An empty directory of its own for test `what` of suite `suite`.
pub fn tempdir(suite: &str, what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-{suite}-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
