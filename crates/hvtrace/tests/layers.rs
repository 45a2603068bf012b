//! The crate graph keeps the brief's layers: low layers stay low, and the
//! host never waits on the network (docs/architecture.md, "Crates" and
//! "Where the network sits").

use std::path::{Path, PathBuf};

fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// The `[dependencies]` table of crate `name`'s manifest (not its
/// dev-dependencies: tests may use anything).
fn dependencies(name: &str) -> String {
    let manifest = std::fs::read_to_string(crate_dir(name).join("Cargo.toml")).unwrap();
    let deps = manifest.split("\n[dependencies]").nth(1).expect("a [dependencies] table");
    deps.split("\n[").next().unwrap_or(deps).to_string()
}

#[test]
fn the_syscall_wrappers_depend_on_no_other_hvtrace_crate() {
    let deps = dependencies("hvtrace-sys");
    assert!(!deps.contains("hvtrace-"), "hvtrace-sys depends on: {deps}");
}

#[test]
fn the_host_links_no_network_client_and_opens_no_network_socket() {
    let deps = dependencies("hvtrace-host");
    for c in ["hvtrace-relayd", "hvtrace-consumer"] {
        assert!(!deps.contains(c), "hvtrace-host depends on {c}");
    }
    let mut files = 0;
    for f in std::fs::read_dir(crate_dir("hvtrace-host").join("src")).unwrap() {
        let path = f.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // The code, without its unit tests.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(&text);
        for net in ["std::net", "TcpStream", "UdpSocket"] {
            assert!(!code.contains(net), "{} uses {net}", path.display());
        }
        files += 1;
    }
    assert!(files >= 5, "read {files} files of hvtrace-host/src");
}
