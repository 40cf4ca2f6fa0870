//! TLS for broker listeners (rustls, through tokio-rustls): the server certificate chain and
//! key, and optionally a CA that client certificates must chain to.
//!
//! Every file is read and checked when the configuration is loaded, and again when the
//! broker starts, before any port is bound; an error names the key and the file.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, ServerConnection};

/// Settings of a TLS (or WebSocket over TLS) listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file of CA certificates: when set, clients must present a certificate that
    /// chains to one of them, or the handshake fails.
    pub client_ca_file: Option<PathBuf>,
    /// Use the Common Name of the client certificate as the user name (the CONNECT user name
    /// and password are then ignored, as Mosquitto's `use_identity_as_username`). Needs
    /// `client_ca_file`.
    pub identity_as_username: bool,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{key}: {}: {message}", path.display())]
    Invalid {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Invalid { key, .. } => key,
        }
    }
}

fn open(key: &'static str, path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })
}

fn invalid(key: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = open(key, path)?;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in the file",
        ));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| invalid(key, path, format!("a certificate does not parse: {e}")))?;
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "key_file";
    let mut reader = open(KEY, path)?;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| invalid(KEY, path, format!("not a PEM key file: {e}")))?
        .ok_or_else(|| {
            invalid(
                KEY,
                path,
                "no PEM private key (BEGIN PRIVATE KEY) in the file",
            )
        })
}

/// Reads the files of `settings` and builds the rustls server configuration.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("cert_file", &settings.cert_file)?;
    let key = load_key(&settings.key_file)?;
    // The provider is named, not taken from the process default: nothing else in the
    // process has to install one.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", &settings.cert_file, e.to_string()))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            const KEY: &str = "client_ca_file";
            let mut roots = RootCertStore::empty();
            for cert in load_certs(KEY, path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(KEY, path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(KEY, path, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "key_file",
            &settings.key_file,
            format!(
                "does not fit the certificate in {}: {e}",
                settings.cert_file.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}

/// The Common Name of the verified client certificate, if there is one.
pub fn client_common_name(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_string())
}
