//! Optional TLS on the cluster's ports: gRPC between nodes, workers and
//! drivers, the head's HTTP port (jobs API, dashboard) and each node's
//! metrics port. Off unless configured; configured per process from the
//! environment, which every process of a cluster inherits from its daemon:
//!
//! - `RAYFORGE_TLS_CERT`, `RAYFORGE_TLS_KEY`: this process's certificate
//!   (chain) and private key, PEM files. Set by `rayforge start --tls-cert
//!   FILE --tls-key FILE`; its workers and the jobs it runs inherit them.
//! - `RAYFORGE_TLS_CA`: the PEM file of the certificate authority (or the
//!   self-signed certificate) that clients trust; default: the certificate.
//!   A client alone (`rayforge status`, a `JobClient` on a laptop) needs
//!   only this one.
//! - `RAYFORGE_TLS_SERVER_NAME`: the name clients check in the servers'
//!   certificates instead of the host they dial (on Kubernetes, pods are
//!   dialed by IP; give them a certificate for one name).
//!
//! With TLS on, gRPC over TCP and the HTTP ports speak only TLS (Unix
//! sockets between processes of one machine stay plain), and addresses
//! are `https://`.
//!
//! ```no_run
//! // What `rayforge start --tls-cert cert.pem --tls-key key.pem` sets up:
//! std::env::set_var("RAYFORGE_TLS_CERT", "cert.pem");
//! std::env::set_var("RAYFORGE_TLS_KEY", "key.pem");
//! assert!(rayforge::tls::settings().unwrap().is_some());
//! ```

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// This process's certificate (PEM file).
pub const ENV_CERT: &str = "RAYFORGE_TLS_CERT";
/// This process's private key (PEM file).
pub const ENV_KEY: &str = "RAYFORGE_TLS_KEY";
/// The certificate authority clients trust (PEM file).
pub const ENV_CA: &str = "RAYFORGE_TLS_CA";
/// The name clients check in the servers' certificates.
pub const ENV_SERVER_NAME: &str = "RAYFORGE_TLS_SERVER_NAME";

/// TLS as this process is configured for it.
#[derive(Debug)]
pub struct TlsSettings {
    /// Certificate and key, when this process serves (PEM).
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The authority clients trust (PEM).
    ca: Vec<u8>,
    /// The name checked in servers' certificates, when not the host dialed.
    server_name: Option<String>,
    server: OnceLock<std::result::Result<Arc<rustls::ServerConfig>, String>>,
    client: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>>,
}

/// The crypto provider: *ring*, which the workspace builds already (for
/// object storage); rustls 0.23.48 deprecates it only for lacking
/// post-quantum key exchange, and aws-lc-rs would add a C and CMake build
/// to every machine that builds rayforge.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    let p = rustls::crypto::ring::default_provider();
    Arc::new(p)
}

static SETTINGS: OnceLock<std::result::Result<Option<Arc<TlsSettings>>, String>> = OnceLock::new();

fn read(var: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading ${var} ({path})"), e))
}

fn load() -> Result<Option<Arc<TlsSettings>>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let (cert, key, ca) = (var(ENV_CERT), var(ENV_KEY), var(ENV_CA));
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err(Error::InvalidArgument(format!("${ENV_CERT} is set without ${ENV_KEY}"))),
        (None, Some(_)) => return Err(Error::InvalidArgument(format!("${ENV_KEY} is set without ${ENV_CERT}"))),
    };
    let ca_path = match (&ca, &identity) {
        (Some(ca), _) => ca.clone(),
        (None, Some((cert, _))) => cert.clone(),
        (None, None) => return Ok(None),
    };
    // The process-wide provider rustls needs when none is named (tonic's
    // TLS builds its configs that way).
    let _ = (*provider()).clone().install_default();
    let identity = match identity {
        Some((c, k)) => Some((read(ENV_CERT, &c)?, read(ENV_KEY, &k)?)),
        None => None,
    };
    let s = TlsSettings {
        identity,
        ca: read(ENV_CA, &ca_path)?,
        server_name: var(ENV_SERVER_NAME),
        server: OnceLock::new(),
        client: OnceLock::new(),
    };
    // Malformed files are refused now, naming them, not at the first call.
    if s.identity.is_some() {
        s.server_config()?;
    }
    s.client_config()?;
    Ok(Some(Arc::new(s)))
}

/// This process's TLS settings, read from the environment on first use:
/// `None` when TLS is off; an error naming the file or variable that is
/// wrong (a key without a certificate, a file that is missing or not PEM).
pub fn settings() -> Result<Option<Arc<TlsSettings>>> {
    SETTINGS
        .get_or_init(|| load().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))
}

/// Whether this process speaks TLS (as a client at least).
pub fn enabled() -> bool {
    matches!(settings(), Ok(Some(_)))
}

/// `http` or `https`, as this process's ports speak.
pub fn http_scheme() -> &'static str {
    if enabled() {
        "https"
    } else {
        "http"
    }
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument(format!("{what} is not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} holds no certificate")));
    }
    Ok(certs)
}

impl TlsSettings {
    /// Certificate, key and trusted authority as PEM, for tonic.
    pub(crate) fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()))
    }

    pub(crate) fn ca_pem(&self) -> &[u8] {
        &self.ca
    }

    /// The name to check in a server's certificate when dialing `host`.
    pub(crate) fn server_name<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or(host)
    }

    /// The HTTP ports' TLS (ALPN http/1.1); an error without an identity.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        self.server
            .get_or_init(|| {
                let (cert, key) = self
                    .identity
                    .as_ref()
                    .ok_or_else(|| format!("this process has no certificate (${ENV_CERT}, ${ENV_KEY})"))?;
                let chain = certs(cert, &format!("${ENV_CERT}")).map_err(|e| e.to_string())?;
                use rustls::pki_types::pem::PemObject;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("${ENV_KEY} is not a PEM private key: {e}"))?;
                let mut c = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|e| format!("${ENV_CERT} and ${ENV_KEY} do not make an identity: {e}"))?;
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(c))
            })
            .clone()
            .map_err(Error::InvalidArgument)
    }

    /// What HTTPS clients trust: the configured authority only.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.client
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(&self.ca, "the trusted authority").map_err(|e| e.to_string())? {
                    roots.add(c).map_err(|e| format!("the trusted authority: {e}"))?;
                }
                let c = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Arc::new(c))
            })
            .clone()
            .map_err(Error::InvalidArgument)
    }
}

/// Files given on the command line (`rayforge start --tls-cert --tls-key
/// [--tls-ca]`), put in the environment before any thread starts so that
/// this process and every child reads them.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// This node's certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The authority clients trust (default: the certificate).
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Sets [`ENV_CERT`], [`ENV_KEY`] and [`ENV_CA`] for this process and
    /// its children. Call it before threads start (a daemon's first step).
    pub fn export(&self) {
        std::env::set_var(ENV_CERT, &self.cert);
        std::env::set_var(ENV_KEY, &self.key);
        std::env::set_var(ENV_CA, self.ca.as_ref().unwrap_or(&self.cert));
    }
}

/// A connector for HTTP clients of the cluster's ports: `https://` with the
/// trusted authority when TLS is configured (a configuration that does not
/// load trusts nothing, and [`settings`] says why), plain `http://` always.
pub fn https_connector() -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let client = match settings().and_then(|s| s.map(|t| t.client_config()).transpose()) {
        Ok(Some(c)) => (*c).clone(),
        other => {
            if let Err(e) = other {
                tracing::warn!("{e}");
            }
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(rustls::DEFAULT_VERSIONS)
                .unwrap_or_else(|_| unreachable!("ring supports rustls's default protocol versions"))
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_or_http()
        .enable_http1()
        .build()
}
