//! `openim-callback-receiver healthcheck`: probes `/healthz` and exits 0 or 1,
//! for a Docker HEALTHCHECK in an image that has no shell and no curl.
//! Speaks TLS when `server.tls` is set.

use crate::settings::ServerSettings;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// GETs `/healthz` on the receiver these settings describe; Ok when it answers 200.
pub fn probe(server: &ServerSettings, timeout: Duration) -> Result<(), String> {
    let target = reachable(server.listen);
    let stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|error| format!("connect {target}: {error}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|error| error.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|error| error.to_string())?;
    if server.tls.enabled() {
        let connection = rustls::ClientConnection::new(Arc::new(trust_own_certificate()), target.ip().into())
            .map_err(|error| format!("TLS to {target}: {error}"))?;
        get_healthz(rustls::StreamOwned::new(connection, stream), target)
    } else {
        get_healthz(stream, target)
    }
}

fn get_healthz(mut stream: impl Read + Write, target: SocketAddr) -> Result<(), String> {
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

/// The probe talks to its own process on loopback, whose certificate names
/// the public host, not 127.0.0.1: it checks liveness, not identity, so it
/// accepts any certificate (signatures are still verified).
fn trust_own_certificate() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
