//! `openim-callback-receiver healthcheck`: probes `/healthz` and exits 0 or 1,
//! for a Docker HEALTHCHECK in an image that has no shell and no curl.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `/healthz` on the receiver listening at `listen`; Ok when it answers 200.
pub fn probe(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    let target = reachable(listen);
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|error| format!("connect {target}: {error}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|error| error.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|error| error.to_string())?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|error| format!("send to {target}: {error}"))?;
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).map_err(|error| format!("read from {target}: {error}"))?;
    match &status_line {
        b"HTTP/1.1 200" => Ok(()),
        other => Err(format!("{target}/healthz answered {:?}", String::from_utf8_lossy(other))),
    }
}

/// A wildcard listen address is reached through loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}
