//! `hvtrace create|start|stop|destroy|status|flush --socket S`: the control
//! tool ("lttctl-xen"), one request per invocation.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use hvtrace_ctl::Client;
use hvtrace_proto::{ChannelConfig, Mode, Request};

use crate::size::parse_size;
use crate::Status;

/// The host to talk to.
#[derive(clap::Args)]
pub struct SocketArgs {
    /// The host's control socket (as given to `hvtrace sim --socket`).
    #[arg(long, short = 's')]
    pub socket: PathBuf,
}

/// The channel's geometry and mode, as every command that creates one takes them.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ChannelArgs {
    /// Bytes per sub-buffer (= CTF packet): a power of two, 4k..64M.
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    pub subbuf_size: u64,
    /// Sub-buffers per CPU ring: a power of two, 2..1024.
    #[arg(long, default_value_t = 8)]
    pub num_subbuf: u32,
    /// When a ring is full: `discard` drops new events (and counts them),
    /// `overwrite` keeps the newest data (flight recorder).
    #[arg(long, default_value = "discard")]
    pub mode: Mode,
}

impl ChannelArgs {
    /// The configuration to send with `create`, checked.
    pub fn config(&self) -> Result<ChannelConfig> {
        let cfg = ChannelConfig { subbuf_size: self.subbuf_size, num_subbuf: self.num_subbuf, mode: self.mode };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl std::fmt::Display for ChannelArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {} bytes per CPU, {} mode", self.num_subbuf, self.subbuf_size, self.mode)
    }
}

/// Create the host's trace channel: one ring per CPU of NUM_SUBBUF
/// sub-buffers of SUBBUF_SIZE bytes. Recording starts with `hvtrace start`.
#[derive(clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub sock: SocketArgs,
    #[command(flatten)]
    pub channel: ChannelArgs,
}

/// Show the channel's state, reference count and per-CPU counters.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sock: SocketArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn connect(sock: &SocketArgs) -> Result<Client> {
    Ok(Client::connect(&sock.socket, Some(Duration::from_secs(30)))?)
}

pub fn create(a: CreateArgs) -> Result<Status> {
    connect(&a.sock)?.simple(&Request::Create(a.channel.config()?))?;
    writeln!(std::io::stdout(), "channel created: {}", a.channel)?;
    Ok(Status::Ok)
}

pub fn simple(a: SocketArgs, req: Request) -> Result<Status> {
    let name = req.name();
    connect(&a)?.simple(&req)?;
    writeln!(std::io::stdout(), "{name}: ok")?;
    Ok(Status::Ok)
}

pub fn status(a: StatusArgs) -> Result<Status> {
    let st = connect(&a.sock)?.status()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&st)?)?;
    } else {
        write!(out, "{}", render_status(&st))?;
    }
    out.flush()?;
    Ok(Status::Ok)
}

/// Human rendering of a status reply.
pub fn render_status(st: &hvtrace_proto::StatusInfo) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "state: {}   references: {}", st.state, st.refcount);
    if st.destroy_pending {
        s.push_str("   destroy pending (memory freed when the last consumer unmaps)");
    }
    s.push('\n');
    if let Some(c) = &st.config {
        let _ = writeln!(s, "channel: {} x {} bytes per CPU, {} mode", c.num_subbuf, c.subbuf_size, c.mode);
    }
    if !st.rings.is_empty() {
        let _ = writeln!(
            s,
            "{:>4} {:>14} {:>14} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11}",
            "cpu", "produced B", "consumed B", "packets", "discarded", "full", "busy", "too big", "overwritten"
        );
        for r in &st.rings {
            let _ = writeln!(
                s,
                "{:>4} {:>14} {:>14} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11}",
                r.cpu,
                r.produced_bytes,
                r.consumed_bytes,
                r.delivered_subbufs,
                r.events_discarded,
                r.discarded_full,
                r.discarded_busy,
                r.discarded_too_big,
                r.overwritten
            );
        }
    }
    s
}
