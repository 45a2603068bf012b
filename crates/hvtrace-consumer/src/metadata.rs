//! The trace's `metadata`, following the host's metadata log: event classes
//! the host registers while this consumer is attached are appended to the
//! local `metadata` (and queued for the relay's metadata stream) before the
//! first packet that can hold a record of them is written.
//!
//! ## Why a packet never comes before its class
//! The host publishes a class's TSDL (bytes, then the log's length with
//! Release) before `register_event` returns its id, so every record of the
//! class is made after that store. A worker sees a packet only through the
//! ring's Acquire loads (`next_packet`), and then calls
//! [`MetadataLog::catch_up`], whose Acquire load of the length therefore
//! sees at least that class's block; the block is written (and handed to
//! the relay) before the packet. One atomic load per packet when nothing
//! changed; no waiting for the host either way.
//!
//! ## Trusting nothing in the log
//! The host (or anyone who can write its memfd) may publish any length: it
//! is bounded by this consumer's own mapping, must not go backwards, and
//! the new text must be whole top-level TSDL blocks (UTF-8, no control
//! characters, braces balanced outside strings and comments, ending on
//! `;`). A value that fails is counted once and reported
//! ([`MetadataReport`]); text that fails is skipped, never written, so the
//! trace's `metadata` is valid TSDL at every point the consumer may stop.
//! A local write that fails is cut back to the last whole block, and no
//! later class is appended after the gap (hvtrace's reader wants event ids
//! dense, so one class missing would make every later one unreadable).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hvtrace_proto::MAX_METADATA_LEN;
use hvtrace_sys::SharedMapping;
use serde::Serialize;

use crate::{ConsumerError, MappedMetaLog};

/// What happened to the metadata the host published after attach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetadataReport {
    /// Bytes of TSDL attach found in the host's log (the trace's start).
    pub initial_bytes: u64,
    /// Bytes of TSDL appended since (classes registered during the session).
    pub appended_bytes: u64,
    /// Times new TSDL was appended.
    pub appends: u64,
    /// Published lengths refused: beyond the log, going backwards, or
    /// covering text that is not whole TSDL blocks (the host's doing).
    pub refused: u64,
    /// Bytes of text skipped with those refusals.
    pub refused_bytes: u64,
    /// Appends of the local `metadata` that failed (cut back to the last
    /// whole block) or came after one that failed (not tried): the classes
    /// they held are missing from the trace.
    pub write_errors: u64,
    /// The first refusal or write error, if any.
    pub first_error: Option<String>,
}

/// The host's metadata log and what this consumer made of it.
pub(crate) struct MetadataLog {
    log: MappedMetaLog,
    /// The published length last taken (appended, or its text skipped).
    /// Stored (Release) only after the text reached every sink.
    seen: AtomicU64,
    /// The last published length refused, so a hostile value costs one
    /// look per packet, not a lock.
    refused: AtomicU64,
    /// Bytes in `Inner::text`, stored (Release) after it grew.
    text_len: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The local `metadata`, open for writing, and its whole length.
    file: Option<(File, u64)>,
    /// An append to `file` failed: later ones are not tried (see the
    /// module docs).
    file_failed: bool,
    /// Every byte of host TSDL taken so far, for the relay thread; `None`
    /// without a relay (the log may hold up to `MAX_METADATA_LEN`, and only
    /// a relay's metadata stream needs it again).
    text: Option<String>,
    report: MetadataReport,
}

impl MetadataLog {
    /// Maps the log (`len` bytes of `fd`, read-only) and returns it with
    /// the text published so far, which must start the trace's metadata.
    /// `for_relay`: keep a copy of all text taken, for [`Self::text_from`].
    pub(crate) fn attach(fd: OwnedFd, len: u64, for_relay: bool) -> Result<(MetadataLog, String), ConsumerError> {
        let proto = |m: String| ConsumerError::Protocol(format!("metadata log: {m}"));
        if len > MAX_METADATA_LEN {
            return Err(proto(format!("{len} bytes, more than the {MAX_METADATA_LEN} a consumer maps")));
        }
        // A log its owner could shrink would kill this process (SIGBUS).
        crate::require_shrink_seal(&fd, "metadata log")?;
        let map = SharedMapping::map_ro_lazy(&fd, len as usize)
            .map_err(ConsumerError::io("mapping the metadata log read-only"))?;
        let log = MappedMetaLog::attach(map).map_err(ConsumerError::io("attaching to the metadata log"))?;
        let me = MetadataLog {
            log,
            seen: AtomicU64::new(0),
            refused: AtomicU64::new(u64::MAX),
            text_len: AtomicU64::new(0),
            inner: Mutex::new(Inner { file: None, file_failed: false, text: None, report: MetadataReport::default() }),
        };
        let published = me.log.reader().published();
        let text = me.read(0, published).map_err(proto)?;
        if !text.starts_with("/* CTF 1.8 */") {
            return Err(proto("the text does not start with `/* CTF 1.8 */`".into()));
        }
        let mut inner = me.inner.lock().unwrap();
        inner.report.initial_bytes = text.len() as u64;
        inner.text = for_relay.then(|| text.clone());
        drop(inner);
        me.seen.store(published, Ordering::Relaxed);
        me.text_len.store(published, Ordering::Relaxed);
        Ok((me, text))
    }

    /// The host TSDL taken so far, from byte `from` on (empty if none, or
    /// if it was attached without `for_relay`).
    pub(crate) fn text_from(&self, from: usize) -> String {
        if self.text_len.load(Ordering::Acquire) <= from as u64 {
            return String::new();
        }
        let inner = self.inner.lock().unwrap();
        inner.text.as_deref().and_then(|t| t.get(from..)).unwrap_or_default().to_string()
    }

    /// Appends from now on to the local `metadata`, which holds `len` bytes.
    pub(crate) fn set_file(&self, file: File, len: u64) {
        self.inner.lock().unwrap().file = Some((file, len));
    }

    /// Takes whatever the host published since the last call: call it after
    /// a packet was found ready and before it is written (see the module
    /// docs for why that order suffices).
    #[inline]
    pub(crate) fn catch_up(&self) {
        // Pairs with the host's Release store of the length.
        let published = self.log.reader().published();
        if published == self.seen.load(Ordering::Acquire) || published == self.refused.load(Ordering::Relaxed) {
            return;
        }
        self.catch_up_slow();
    }

    #[cold]
    fn catch_up_slow(&self) {
        let mut inner = self.inner.lock().unwrap();
        let published = self.log.reader().published();
        let seen = self.seen.load(Ordering::Relaxed);
        if published == seen || published == self.refused.load(Ordering::Relaxed) {
            return;
        }
        let refuse = |inner: &mut Inner, why: String, skipped: u64| {
            inner.report.refused += 1;
            inner.report.refused_bytes += skipped;
            inner.report.first_error.get_or_insert(why);
        };
        if published < seen {
            let why = format!("the host's metadata length went back from {seen} to {published}: ignored");
            refuse(&mut inner, why, 0);
            self.refused.store(published, Ordering::Relaxed);
            return;
        }
        let chunk = match self.read(seen, published) {
            Ok(c) => c,
            Err(why) => {
                let skipped = if published <= self.log.reader().capacity() { published - seen } else { 0 };
                refuse(&mut inner, format!("metadata bytes {seen}..{published} refused: {why}"), skipped);
                if skipped > 0 {
                    // Whole, but not TSDL: skip it, so what follows can be taken.
                    self.seen.store(published, Ordering::Release);
                } else {
                    self.refused.store(published, Ordering::Relaxed);
                }
                return;
            }
        };
        let inner = &mut *inner;
        match &mut inner.file {
            Some(_) if inner.file_failed => inner.report.write_errors += 1,
            // At the length kept, never through the file offset, which a
            // failed write leaves past the cut.
            Some((file, len)) => match file.write_all_at(chunk.as_bytes(), *len) {
                Ok(()) => *len += chunk.len() as u64,
                Err(e) => {
                    // Cut a partial block off: the file stays valid TSDL.
                    let cut = file.set_len(*len);
                    inner.file_failed = true;
                    inner.report.write_errors += 1;
                    inner.report.first_error.get_or_insert_with(|| {
                        format!("appending {} bytes to metadata: {e} (cut back: {cut:?})", chunk.len())
                    });
                }
            },
            None => {}
        }
        inner.report.appends += 1;
        inner.report.appended_bytes += chunk.len() as u64;
        if let Some(text) = &mut inner.text {
            text.push_str(&chunk);
            // The relay thread reads `text` after a packet queued behind this.
            self.text_len.store(text.len() as u64, Ordering::Release);
        }
        self.seen.store(published, Ordering::Release);
    }

    /// Copies and checks `text[from..to]` of the log.
    fn read(&self, from: u64, to: u64) -> Result<String, String> {
        let r = self.log.reader();
        if to > r.capacity() {
            return Err(format!("published length {to} is beyond the log's {} bytes of text", r.capacity()));
        }
        let mut bytes = vec![0; (to - from) as usize];
        if !r.copy(from, &mut bytes) {
            return Err(format!("bytes {from}..{to} are outside the log"));
        }
        whole_blocks(&bytes)?;
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }

    /// `fsync`s the local `metadata`.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        match &self.inner.lock().unwrap().file {
            Some((f, _)) => f.sync_all(),
            None => Ok(()),
        }
    }

    /// What happened so far.
    pub(crate) fn report(&self) -> MetadataReport {
        self.inner.lock().unwrap().report.clone()
    }
}

/// Checks that `text` is whole top-level TSDL blocks: UTF-8 without control
/// characters (but tab and line ends), braces balanced outside string
/// literals and comments, nothing left open, ending on `;` (or only
/// whitespace and comments). Enough that no garbage and no half block
/// reaches the trace; babeltrace2 judges the rest.
pub(crate) fn whole_blocks(text: &[u8]) -> Result<(), String> {
    let s = std::str::from_utf8(text).map_err(|e| format!("not UTF-8 ({e})"))?;
    if let Some(c) = s.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(format!("holds the control character {c:?}"));
    }
    #[derive(PartialEq)]
    enum In {
        Code,
        Str,
        Escape,
        LineComment,
        BlockComment,
    }
    let (mut state, mut depth, mut last) = (In::Code, 0u64, None);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        state = match (state, c) {
            (In::Code, '"') => In::Str,
            (In::Code, '/') if chars.peek() == Some(&'/') => In::LineComment,
            (In::Code, '/') if chars.peek() == Some(&'*') => {
                chars.next();
                In::BlockComment
            }
            (In::Code, c) => {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => return Err("a `}` closes nothing".into()),
                    '}' => depth -= 1,
                    _ => {}
                }
                if !c.is_whitespace() {
                    last = Some(c);
                }
                In::Code
            }
            (In::Str, '\\') => In::Escape,
            (In::Str, '"') => {
                last = Some('"');
                In::Code
            }
            (In::Str | In::Escape, _) => In::Str,
            (In::LineComment, '\n') => In::Code,
            (In::BlockComment, '*') if chars.peek() == Some(&'/') => {
                chars.next();
                In::Code
            }
            (s, _) => s,
        };
    }
    match state {
        In::Code | In::LineComment if depth == 0 && matches!(last, None | Some(';')) => Ok(()),
        In::Str | In::Escape => Err("ends inside a string".into()),
        In::BlockComment => Err("ends inside a comment".into()),
        _ if depth > 0 => Err(format!("ends with {depth} block(s) open")),
        _ => Err("does not end with `;`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const LEN: u64 = 8192;
    const TEXT: u64 = hvtrace_core::metalog::META_HEADER_LEN as u64;

    /// A metadata log as a host (or anyone holding its memfd) may write it:
    /// through `pwrite`, any bytes, any length.
    struct Forger(File);

    impl Forger {
        fn new(initial: &str, seal: bool) -> (Forger, OwnedFd) {
            let fd = hvtrace_sys::memfd::create_memfd("hvtrace-meta-test", LEN).unwrap();
            let f = File::from(fd.try_clone().unwrap());
            f.write_at(&hvtrace_core::metalog::META_MAGIC, 0).unwrap();
            f.write_at(&(LEN - TEXT).to_ne_bytes(), 8).unwrap();
            let me = Forger(f);
            me.put(0, initial);
            me.publish(initial.len() as u64);
            if seal {
                hvtrace_sys::memfd::seal_size(&fd).unwrap();
            }
            (me, fd)
        }
        fn put(&self, at: u64, text: &str) {
            self.0.write_at(text.as_bytes(), TEXT + at).unwrap();
        }
        fn publish(&self, len: u64) {
            self.0.write_at(&len.to_ne_bytes(), 16).unwrap();
        }
    }

    const START: &str = "/* CTF 1.8 */\ntrace { major = 1; };\n";
    const BLOCK: &str = "event {\n\tname = \"a\";\n\tid = 1;\n};\n\n";

    #[test]
    fn a_hostile_published_length_is_counted_once_and_never_reaches_the_trace() {
        let (host, fd) = Forger::new(START, true);
        let (log, initial) = MetadataLog::attach(fd, LEN, true).unwrap();
        assert_eq!((log.text_from(0).as_str(), initial.as_str()), (START, START));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata");
        std::fs::write(&path, START).unwrap();
        // Not `O_APPEND`, as the consumer's own `metadata`.
        log.set_file(File::options().write(true).open(&path).unwrap(), START.len() as u64);
        let mut end = START.len() as u64;
        let trace = || std::fs::read_to_string(&path).unwrap();

        // An honest append.
        host.put(end, BLOCK);
        end += BLOCK.len() as u64;
        host.publish(end);
        log.catch_up();
        assert_eq!(trace(), format!("{START}{BLOCK}"));

        // Beyond the log: refused, counted once however many packets look.
        host.publish(LEN);
        for _ in 0..1000 {
            log.catch_up();
        }
        let r = log.report();
        assert_eq!((r.refused, r.refused_bytes, r.appends), (1, 0, 1), "{r:?}");
        assert!(r.first_error.as_deref().unwrap().contains("beyond the log"), "{r:?}");
        // Backwards: refused too.
        host.publish(3);
        log.catch_up();
        log.catch_up();
        assert_eq!(log.report().refused, 2);
        // Garbage, and half a block: skipped, counted, not written.
        let junk = "event { name = \"x\0";
        host.put(end, junk);
        end += junk.len() as u64;
        host.publish(end);
        log.catch_up();
        let half = &BLOCK[..10];
        host.put(end, half);
        end += half.len() as u64;
        host.publish(end);
        log.catch_up();
        let r = log.report();
        assert_eq!((r.refused, r.refused_bytes), (4, (junk.len() + half.len()) as u64), "{r:?}");
        assert_eq!(trace(), format!("{START}{BLOCK}"), "nothing refused was written");
        // An honest block after all that is taken again.
        host.put(end, BLOCK);
        end += BLOCK.len() as u64;
        host.publish(end);
        log.catch_up();
        assert_eq!(trace(), format!("{START}{BLOCK}{BLOCK}"));
        assert_eq!(whole_blocks(trace().as_bytes()), Ok(()));
        assert_eq!(log.text_from(START.len()), format!("{BLOCK}{BLOCK}"), "the relay gets what the file got");
        let r = log.report();
        assert_eq!((r.appends, r.appended_bytes, r.write_errors), (2, 2 * BLOCK.len() as u64, 0));
    }

    #[test]
    fn without_a_relay_the_text_goes_to_the_file_and_no_copy_is_kept() {
        let (host, fd) = Forger::new(START, true);
        let (log, initial) = MetadataLog::attach(fd, LEN, false).unwrap();
        assert_eq!(initial, START);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata");
        std::fs::write(&path, START).unwrap();
        log.set_file(File::options().write(true).open(&path).unwrap(), START.len() as u64);
        host.put(START.len() as u64, BLOCK);
        host.publish((START.len() + BLOCK.len()) as u64);
        log.catch_up();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{START}{BLOCK}"));
        assert_eq!(log.report().appended_bytes, BLOCK.len() as u64);
        assert_eq!(log.text_from(0), "", "the text is kept only for a relay");
        assert!(log.inner.lock().unwrap().text.is_none());
    }

    #[test]
    fn a_log_that_is_unsealed_forged_or_too_big_is_refused_at_attach() {
        let err = |r: Result<(MetadataLog, String), ConsumerError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let (_h, fd) = Forger::new(START, false);
        assert!(err(MetadataLog::attach(fd, LEN, false)).contains("not sealed"));
        let (h, fd) = Forger::new(START, true);
        h.0.write_at(b"NOTMETA!", 0).unwrap();
        assert!(err(MetadataLog::attach(fd, LEN, false)).contains("magic"));
        let (_h, fd) = Forger::new("trace { };", true);
        assert!(err(MetadataLog::attach(fd, LEN, false)).contains("CTF 1.8"));
        let (h, fd) = Forger::new(START, true);
        h.publish(LEN);
        assert!(err(MetadataLog::attach(fd, LEN, false)).contains("beyond"));
        let (_h, fd) = Forger::new(START, true);
        assert!(err(MetadataLog::attach(fd, MAX_METADATA_LEN + 1, false)).contains("more than"));
        let (_h, fd) = Forger::new(START, true);
        assert!(err(MetadataLog::attach(fd, LEN + 4096, false)).contains("mapping"), "longer than the memfd");
    }

    #[test]
    fn whole_blocks_pass_and_cut_or_garbled_text_does_not() {
        let block =
            "event {\n\tname = \"a } \\\" {\";\n\tid = 3;\n\tstream_id = 0;\n\tfields := struct {\n\t};\n};\n\n";
        assert_eq!(whole_blocks(block.as_bytes()), Ok(()));
        assert_eq!(whole_blocks(b"/* CTF 1.8 */\ntrace { major = 1; };\n// note {\n"), Ok(()));
        assert_eq!(whole_blocks(b""), Ok(()));
        assert_eq!(whole_blocks(b"\n  /* only a comment { */\n"), Ok(()));
        // Every proper prefix of a block that cuts it open is refused.
        for cut in 1..block.trim_end().len() {
            assert!(whole_blocks(&block.as_bytes()[..cut]).is_err(), "prefix {cut} accepted: {:?}", &block[..cut]);
        }
        assert!(whole_blocks(b"event { };\0").unwrap_err().contains("control"));
        assert!(whole_blocks(b"event { };\xff").unwrap_err().contains("UTF-8"));
        assert!(whole_blocks(b"};").unwrap_err().contains("closes nothing"));
        assert!(whole_blocks(b"event { name = \"x").unwrap_err().contains("string"));
        assert!(whole_blocks(b"/* x").unwrap_err().contains("comment"));
        assert!(whole_blocks(b"event { }").unwrap_err().contains("`;`"));
    }
}
