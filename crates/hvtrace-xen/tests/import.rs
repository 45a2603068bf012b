//! Generated xentrace files imported and read back by babeltrace2.

mod common;

use common::*;
use hvtrace_xen::gen::Scenario;

#[test]
fn smoke() {
    let g = Scenario { cut: 7, ..Scenario::default() }.generate();
    std::fs::write("/tmp/xen/gen.xentrace", &g.bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, r) = import_generated(dir.path(), &g);
    eprintln!("{r:?}");
    let msgs = read_bt2(&out);
    eprintln!("{} msgs, first {:?}", msgs.len(), &msgs[..5]);
    for m in &msgs {
        if let Msg::Discarded(..) = m {
            eprintln!("{m:?}");
        }
    }
}
