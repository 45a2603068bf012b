//! The control socket: one thread accepts, one thread per connection answers
//! requests in order. Every request gets exactly one reply; a malformed one
//! gets an error reply and the connection stays usable. A connection that
//! mapped the channel holds one reference until it unmaps or goes away.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hvtrace_proto::{
    decode_request, try_encode_reply, ChannelState, ErrorCode, MapInfo, Reply, Request, StatusInfo, MAP_MAX_RINGS,
    MAX_MESSAGE,
};
use hvtrace_sys::epoll::Poller;
use hvtrace_sys::seqpacket::{Conn, Listener};

use crate::channel::Channel;
use crate::notice::Notice;
use crate::Shared;

const LISTENER: u64 = 0;
const SHUTDOWN: u64 = 1;

pub(crate) fn serve(shared: Arc<Shared>, listener: Listener) {
    let mut poller = match Poller::new() {
        Ok(p) => p,
        Err(e) => return shared.notices.say(Notice::ServerDisabled(format!("epoll: {e}"))),
    };
    if let Err(e) = poller.add(&listener, LISTENER).and_then(|_| poller.add(&shared.shutdown_fd, SHUTDOWN)) {
        return shared.notices.say(Notice::ServerDisabled(e.to_string()));
    }
    let mut events = Vec::with_capacity(4);
    while !shared.shutdown.load(Ordering::Acquire) {
        if poller.wait(&mut events, None).is_err() {
            continue;
        }
        if !events.iter().any(|e| e.token == LISTENER) {
            continue;
        }
        match listener.accept() {
            Ok(conn) => {
                let s = shared.clone();
                let spawned =
                    std::thread::Builder::new().name("hvtrace-conn".into()).spawn(move || serve_conn(s, conn));
                if let Err(e) = spawned {
                    let reason = format!("cannot start a thread to serve it: {e}");
                    shared.notices.say(Notice::ConnectionDropped { pid: None, reason });
                }
            }
            Err(e) => shared.notices.say(Notice::AcceptFailed(e.to_string())),
        }
    }
}

fn allowed(shared: &Shared, conn: &Conn) -> Result<(), String> {
    let peer = conn.peer_cred().map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = euid();
    if peer.uid == me || peer.uid == 0 || shared.cfg.allow_gid == Some(peer.gid) {
        Ok(())
    } else {
        Err(format!(
            "permission denied: peer uid {} (pid {}) is not uid {me} nor in the allowed group",
            peer.uid, peer.pid
        ))
    }
}

/// Closing a Unix socket whose peer's request is still unread resets the
/// connection: the peer's `recv` then fails with `ECONNRESET` instead of
/// returning the reply already queued for it (here, `Denied`). So read and
/// drop what the refused peer sends until it closes, for a bounded time.
fn linger_until_peer_closes(conn: &Conn) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    if conn.set_read_timeout(Some(LINGER)).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + LINGER;
    let mut buf = [0u8; 64];
    while std::time::Instant::now() < deadline {
        match conn.recv(&mut buf, 0) {
            Ok((0, _)) => return,
            Ok(_) => {}
            // A message larger than `buf` (or with descriptors) was consumed too.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
            Err(_) => return,
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// A connection's reference on a mapped channel.
struct MapRef(Arc<Channel>);

impl Drop for MapRef {
    fn drop(&mut self) {
        self.0.refs.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_conn(shared: Arc<Shared>, conn: Conn) {
    if let Err(msg) = allowed(&shared, &conn) {
        let _ = send(&conn, &Reply::error(ErrorCode::Denied, msg.clone()), &[]);
        linger_until_peer_closes(&conn);
        let pid = conn.peer_cred().ok().map(|c| c.pid);
        shared.notices.say(Notice::ConnectionDropped { pid, reason: msg });
        return;
    }
    let mut mapped: Option<MapRef> = None;
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    // Why the connection ended, unless its peer closed it.
    let dropped = loop {
        let n = match conn.recv(&mut buf, 0) {
            Ok((0, _)) => break None,
            Ok((n, _)) => n,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Truncated (oversized) message or unexpected descriptors.
                let _ = send(&conn, &Reply::error(ErrorCode::BadMessage, format!("bad message: {e}")), &[]);
                continue;
            }
            Err(e) => break Some(format!("receiving a request failed: {e}")),
        };
        let (name, (reply, fds)) = match decode_request(&buf[..n]) {
            Ok(req) => (req.name(), handle(&shared, &mut mapped, req)),
            Err(e) => ("bad message", (Reply::from(e), Vec::new())),
        };
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = send(&conn, &reply, &fds) {
            break Some(format!("sending the reply to `{name}` ({} descriptors) failed: {e}", fds.len()));
        }
    };
    if let Some(reason) = dropped {
        let pid = conn.peer_cred().ok().map(|c| c.pid);
        shared.notices.say(Notice::ConnectionDropped { pid, reason });
    }
    drop(mapped);
    release_retired(&shared);
}

fn send(conn: &Conn, reply: &Reply, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let bytes = match try_encode_reply(reply) {
        Ok(b) => b,
        Err(e) => {
            let err = Reply::error(ErrorCode::Internal, format!("reply too large: {e}"));
            return conn.send(&hvtrace_proto::encode_reply(&err), &[]);
        }
    };
    conn.send(&bytes, fds)
}

/// Frees a destroyed channel once nobody maps it.
fn release_retired(shared: &Shared) {
    let mut r = shared.retired.lock().unwrap();
    if r.as_ref().is_some_and(|ch| ch.refs.load(Ordering::Acquire) == 0) {
        *r = None;
    }
}

fn no_channel() -> Reply {
    Reply::error(ErrorCode::BadState, "no channel: send create first")
}

fn handle(shared: &Shared, mapped: &mut Option<MapRef>, req: Request) -> (Reply, Vec<OwnedFd>) {
    let current = || shared.current.lock().unwrap().clone();
    let ok = |r: Result<(), String>| match r {
        Ok(()) => Reply::Ok,
        Err(m) => Reply::error(ErrorCode::BadState, m),
    };
    let reply = match req {
        Request::Create(cfg) => match shared.create(cfg) {
            Ok(()) => Reply::Created,
            Err(r) => r,
        },
        Request::Start => current().map_or_else(no_channel, |ch| ok(ch.start())),
        Request::Stop => current().map_or_else(no_channel, |ch| ok(ch.stop(&shared.clock, ChannelState::Stopped))),
        Request::Flush => current().map_or_else(no_channel, |ch| {
            ch.flush(&shared.clock);
            Reply::Ok
        }),
        Request::Destroy => destroy(shared),
        Request::Status => Reply::Status(status(shared)),
        Request::Map => return map(shared, mapped),
        Request::MapRing { cpu } => return map_ring(mapped, cpu),
        Request::Unmap => match mapped.take() {
            Some(_) => Reply::Ok,
            None => Reply::error(ErrorCode::BadState, "nothing mapped on this connection"),
        },
    };
    (reply, Vec::new())
}

fn destroy(shared: &Shared) -> Reply {
    let Some(ch) = shared.current.lock().unwrap().take() else {
        return Reply::error(ErrorCode::BadState, "no channel to destroy (already destroyed, or never created)");
    };
    shared.generation.fetch_add(1, Ordering::AcqRel);
    // Status must say "destroyed" before consumers are woken to ask.
    *shared.last_state.lock().unwrap() = ChannelState::Destroyed;
    if ch.refs.load(Ordering::Acquire) > 0 {
        *shared.retired.lock().unwrap() = Some(ch.clone());
    }
    // Stop writers at once; flush so a consumer still gets everything.
    let r = ch.stop(&shared.clock, ChannelState::Destroyed);
    match r {
        Ok(()) => Reply::Ok,
        Err(m) => Reply::error(ErrorCode::Busy, m),
    }
}

pub(crate) fn status(shared: &Shared) -> StatusInfo {
    let live = shared.current.lock().unwrap().clone();
    let retired = shared.retired.lock().unwrap().clone();
    match (live, retired) {
        (Some(ch), _) => StatusInfo {
            state: ch.state(),
            refcount: ch.refs.load(Ordering::Acquire),
            destroy_pending: false,
            config: Some(ch.config),
            rings: ch.ring_status(),
        },
        (None, Some(ch)) => StatusInfo {
            state: ChannelState::Destroyed,
            refcount: ch.refs.load(Ordering::Acquire),
            destroy_pending: ch.refs.load(Ordering::Acquire) > 0,
            config: Some(ch.config),
            rings: ch.ring_status(),
        },
        (None, None) => StatusInfo { state: *shared.last_state.lock().unwrap(), ..Default::default() },
    }
}

fn map(shared: &Shared, mapped: &mut Option<MapRef>) -> (Reply, Vec<OwnedFd>) {
    if mapped.is_some() {
        return (Reply::error(ErrorCode::BadState, "already mapped on this connection"), Vec::new());
    }
    let Some(ch) = shared.current.lock().unwrap().clone() else { return (no_channel(), Vec::new()) };
    // One consumer at a time: two would share the rings' consumed positions
    // and each would skip, repeat or tear the other's packets. The reference
    // is taken here, before anything is handed out, so two racing `map`s
    // cannot both win; it is dropped when the holder unmaps or its
    // connection closes (it died), and the next consumer takes over.
    // Classes registered before or after this are all in the metadata log
    // the consumer follows, so none can be unknown to it.
    if !ch.take_consumer_ref() {
        let msg = format!(
            "another consumer is attached to channel {}; one consumer at a time (a new one can attach once it \
             unmaps or exits)",
            ch.name
        );
        return (Reply::error(ErrorCode::Busy, msg), Vec::new());
    }
    let held = MapRef(ch.clone());
    let mut metadata_len = 0;
    let mut fds = Vec::new();
    let mut rings = Vec::new();
    let gathered = (|| -> std::io::Result<()> {
        fds.push(ch.ctrl_fd()?);
        fds.push(ch.changed.try_clone()?.into_fd());
        // One message carries at most 253 descriptors: the rings beyond
        // the first MAP_MAX_RINGS are listed by `status` and mapped one by
        // one with `map_ring`, as a consumer maps a CPU that came online.
        for r in ch.rings().take(MAP_MAX_RINGS) {
            fds.push(r.data_fd_read_only()?);
            fds.push(r.wake.try_clone()?.into_fd());
            rings.push(ch.ring_info(r));
        }
        let (md, len) = ch.metadata_fd()?;
        fds.push(md);
        metadata_len = len;
        Ok(())
    })();
    if let Err(e) = gathered {
        drop(held);
        return (Reply::error(ErrorCode::Internal, format!("cannot hand out descriptors: {e}")), Vec::new());
    }
    let info = MapInfo {
        channel: ch.name.clone(),
        trace_uuid: ch.uuid,
        config: ch.config,
        ctrl_len: ch.ctrl_len(),
        rings,
        metadata_len,
    };
    *mapped = Some(held);
    (Reply::Mapped(info), fds)
}

fn map_ring(mapped: &Option<MapRef>, cpu: u32) -> (Reply, Vec<OwnedFd>) {
    let Some(MapRef(ch)) = mapped else {
        return (Reply::error(ErrorCode::BadState, "map the channel first"), Vec::new());
    };
    let Some(r) = ch.ring(cpu) else {
        return (Reply::error(ErrorCode::NotFound, format!("CPU {cpu} has no ring")), Vec::new());
    };
    match (r.data_fd_read_only(), r.wake.try_clone()) {
        (Ok(d), Ok(w)) => (Reply::RingMapped(ch.ring_info(r)), vec![d, w.into_fd()]),
        (Err(e), _) | (_, Err(e)) => (Reply::error(ErrorCode::Internal, e.to_string()), Vec::new()),
    }
}
