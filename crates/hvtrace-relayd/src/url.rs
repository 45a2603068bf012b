//! [`RelaydUrl`]: `net://HOST[:CTRL_PORT[:DATA_PORT]]`, the syntax `lttng`
//! uses for a relay daemon.

use std::fmt;
use std::str::FromStr;

/// lttng-relayd's default control port (`DEFAULT_NETWORK_CONTROL_PORT`).
pub const DEFAULT_CONTROL_PORT: u16 = 5342;
/// lttng-relayd's default data port (`DEFAULT_NETWORK_DATA_PORT`).
pub const DEFAULT_DATA_PORT: u16 = 5343;

/// Where a relay daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaydUrl {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Control port: commands, metadata, indexes.
    pub control_port: u16,
    /// Data port: packet bytes.
    pub data_port: u16,
}

impl RelaydUrl {
    /// `(host, port)` of the control socket, for `TcpStream::connect`.
    pub fn control(&self) -> (&str, u16) {
        (&self.host, self.control_port)
    }

    /// `(host, port)` of the data socket.
    pub fn data(&self) -> (&str, u16) {
        (&self.host, self.data_port)
    }
}

/// Why a relay URL was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad relay URL {url:?}: {why} (expected net://HOST[:CONTROL_PORT[:DATA_PORT]])")]
pub struct UrlError {
    url: String,
    why: &'static str,
}

impl FromStr for RelaydUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let bad = |why| UrlError { url: url.to_string(), why };
        let rest = url
            .strip_prefix("net://")
            .or_else(|| url.strip_prefix("net6://"))
            .ok_or_else(|| bad("the scheme must be net:// (or net6://)"))?;
        // lttng allows a trailing /PATH for the trace's place on the relay;
        // hvtrace names that place itself (host and session name).
        if rest.contains('/') {
            return Err(bad("a path after the host is not supported; use --session"));
        }
        let (host, ports) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' around an IPv6 address"))?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?),
            };
            (h, ports)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = |s: &str| s.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("a port must be 1-65535"));
        let (control_port, data_port) = match ports {
            None => (DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT),
            Some(p) => match p.split_once(':') {
                Some((c, d)) => (port(c)?, port(d)?),
                None => (port(p)?, DEFAULT_DATA_PORT),
            },
        };
        Ok(RelaydUrl { host: host.to_string(), control_port, data_port })
    }
}

impl fmt::Display for RelaydUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "net://[{}]:{}:{}", self.host, self.control_port, self.data_port)
        } else {
            write!(f, "net://{}:{}:{}", self.host, self.control_port, self.data_port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<RelaydUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn lttng_syntax_with_default_ports() {
        let u = p("net://relay.example").unwrap();
        assert_eq!((u.host.as_str(), u.control_port, u.data_port), ("relay.example", 5342, 5343));
        let u = p("net://10.0.0.1:6000").unwrap();
        assert_eq!((u.control_port, u.data_port), (6000, 5343));
        let u = p("net://10.0.0.1:6000:6001").unwrap();
        assert_eq!((u.control_port, u.data_port), (6000, 6001));
        let u = p("net6://[::1]:7000:7001").unwrap();
        assert_eq!((u.host.as_str(), u.control_port, u.data_port), ("::1", 7000, 7001));
        assert_eq!(u.to_string(), "net://[::1]:7000:7001");
        assert_eq!(p("net://[fe80::1]").unwrap().control_port, 5342);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("tcp://h", "scheme"),
            ("net://", "no host"),
            ("net://h:0", "1-65535"),
            ("net://h:99999", "1-65535"),
            ("net://h:1:x", "1-65535"),
            ("net://h/trace", "path"),
            ("net://[::1", "unclosed"),
            ("net://[::1]5342", "':'"),
        ] {
            let e = p(url).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }
}
