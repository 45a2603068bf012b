//! An idle, started session costs the consumer no wake-up: its threads
//! sleep in epoll without a timeout. (Its own test binary, so no other test
//! runs in the process meanwhile.)

mod common;

use std::time::Duration;

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason};
use hvtrace_proto::{ChannelConfig, Mode, Request};

#[test]
fn idle_started_session_causes_no_consumer_wakeups() {
    let dir = TempDir::new("idle");
    let (_host, sock) = host(&dir.0, &[0, 1, 2], 3);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let consumer =
        Consumer::attach(&ConsumerConfig { threads: 2, ..ConsumerConfig::new(&sock, dir.0.join("trace")) }).unwrap();
    let run = std::thread::Builder::new().name("hvtrace-consume-main".into()).spawn(move || consumer.run()).unwrap();
    // Let the threads start and drain whatever is there.
    std::thread::sleep(Duration::from_millis(300));
    let (threads, before) = thread_switches("hvtrace-consume");
    assert_eq!(threads, 3, "the main consumer thread and 2 workers");
    let proc_before = hvtrace_sys::proc::voluntary_ctxt_switches(std::process::id()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) = thread_switches("hvtrace-consume");
    let proc_after = hvtrace_sys::proc::voluntary_ctxt_switches(std::process::id()).unwrap();
    println!(
        "idle 2 s: consumer threads {} voluntary switches; whole process {}",
        after - before,
        proc_after - proc_before
    );
    assert_eq!(after, before, "an idle consumer must not wake up");

    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.exit, ExitReason::Destroyed);
    assert_eq!(report.packets(), 0);
}
