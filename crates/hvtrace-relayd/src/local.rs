//! [`LocalRelayd`]: an `lttng-relayd` started on this machine, on free
//! loopback ports, writing under a directory of its own. For tests,
//! benchmarks and trying things out; production relays are started by
//! whoever runs the fleet.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RelaydUrl;

/// A running `lttng-relayd`, killed on drop.
#[derive(Debug)]
pub struct LocalRelayd {
    child: Child,
    /// Control and data ports, as a URL.
    pub url: RelaydUrl,
    /// The live (viewer) port.
    pub live_port: u16,
    /// Where it writes traces (`OUTPUT/HOST/SESSION/`).
    pub output: PathBuf,
    /// Its standard error (warnings and errors), for failure messages.
    /// Not verbose: `-vv` logs lines per packet, which would cost a
    /// benchmark CPU.
    pub log: PathBuf,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

impl LocalRelayd {
    /// Starts `lttng-relayd` writing under `output` (its log beside it, in
    /// `output.log`). `Ok(None)` when `lttng-relayd` is not installed.
    pub fn spawn(output: &Path) -> io::Result<Option<LocalRelayd>> {
        // Free ports are picked, then released for the relay to bind: another
        // process may take one in between, so a start that fails is retried.
        let mut last = None;
        for _ in 0..5 {
            let (c, d, l) = (free_port()?, free_port()?, free_port()?);
            if c == d || d == l || c == l {
                continue;
            }
            let log = output.with_extension("log");
            let child = Command::new("lttng-relayd")
                .arg(format!("--control-port=tcp://127.0.0.1:{c}"))
                .arg(format!("--data-port=tcp://127.0.0.1:{d}"))
                .arg(format!("--live-port=tcp://127.0.0.1:{l}"))
                .arg("--output")
                .arg(output)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let url = RelaydUrl { host: "127.0.0.1".into(), control_port: c, data_port: d };
            let mut r = LocalRelayd { child, url, live_port: l, output: output.to_path_buf(), log };
            match r.wait_listening(Duration::from_secs(10)) {
                Ok(()) => return Ok(Some(r)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free ports")))
    }

    /// Waits until the live port (opened last) accepts connections.
    fn wait_listening(&mut self, limit: Duration) -> io::Result<()> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Err(io::Error::other(format!("lttng-relayd exited at start ({st}): {}", self.log_text())));
            }
            let ports = [self.url.control_port, self.url.data_port, self.live_port];
            if ports.iter().all(|&p| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok()) {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "lttng-relayd does not listen"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `net://127.0.0.1:LIVE/host/HOST/SESSION`, what a live viewer opens.
    pub fn live_url(&self, hostname: &str, session: &str) -> String {
        format!("net://127.0.0.1:{}/host/{hostname}/{session}", self.live_port)
    }

    /// The directory of a session's trace.
    pub fn trace_dir(&self, hostname: &str, session: &str) -> PathBuf {
        self.output.join(hostname).join(session)
    }

    /// Waits (at most `limit`) until the relay lists `session`: a viewer
    /// started before that, told to end when the session is not found (as
    /// tests tell it, so that it cannot hang), ends at once.
    pub fn wait_for_session(&self, session: &str, limit: Duration) -> io::Result<()> {
        self.wait_listed(session, limit, "no session", |_| true)
    }

    /// Waits (at most `limit`) until the relay lists a viewer attached to
    /// `session`. A viewer attaches "at the last index": one that must see
    /// a session from its start has to be attached before it records.
    pub fn wait_for_viewer(&self, session: &str, limit: Duration) -> io::Result<()> {
        self.wait_listed(session, limit, "no viewer on", |l| !l.contains(" 0 client(s)"))
    }

    /// Waits until the relay's session list, asked with `babeltrace2 -i
    /// lttng-live` (which must be installed), has a line for `session` that
    /// `ok` accepts.
    fn wait_listed(&self, session: &str, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> io::Result<()> {
        let t = Instant::now();
        loop {
            let o = Command::new("babeltrace2")
                .args(["-i", "lttng-live"])
                .arg(format!("net://127.0.0.1:{}", self.live_port))
                .output()?;
            let list = String::from_utf8_lossy(&o.stdout);
            // "net://…/host/H/SESSION (timer = …, N stream(s), 1 client(s) connected)"
            if list.lines().any(|l| l.contains(&format!("/{session} ")) && ok(l)) {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} {session}: {list}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The relay's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the relay (SIGKILL) and waits for it: it goes away without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalRelayd {
    fn drop(&mut self) {
        self.kill();
    }
}
