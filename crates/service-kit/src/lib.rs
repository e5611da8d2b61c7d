//! Small pieces every binary of the system (`store`, `backfillers`,
//! `realtime-etl`) shares, so their flags accept the same forms and their
//! logs look alike.

pub mod logging;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let bad = || format!("invalid address {s:?}: expected HOST:PORT or :PORT");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A host name: must still have a numeric port.
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(bad()),
    }
    s.to_socket_addrs()
        .map_err(|e| format!("invalid address {s:?}: {e}"))?
        .next()
        .ok_or_else(bad)
}
