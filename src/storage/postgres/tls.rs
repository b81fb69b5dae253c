//! Connections to PostgreSQL, with TLS when configured (`PGSSL=true`): rustls with the
//! certificate authorities of `PGSSLROOTCERT` (a PEM bundle, e.g. the RDS one), or the
//! Mozilla roots when it is unset. The server's name is always verified.

use std::path::Path;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// TLS settings for PostgreSQL connections.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    config: Arc<rustls::ClientConfig>,
}

impl TlsSettings {
    /// Trusts the certificates in `root_cert` (PEM), or the Mozilla roots when `None`.
    pub fn new(root_cert: Option<&Path>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        match root_cert {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| anyhow::anyhow!("PGSSLROOTCERT {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("PGSSLROOTCERT {}: {e}", path.display()))?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "PGSSLROOTCERT {} holds no certificate",
                    path.display()
                );
                for cert in certs {
                    roots.add(cert)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Opens one connection, over TLS when `tls` is set.
pub async fn establish(
    url: &str,
    tls: Option<&TlsSettings>,
) -> Result<AsyncPgConnection, ConnectionError> {
    let Some(tls) = tls else {
        return AsyncPgConnection::establish(url).await;
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::BadConnection(e.to_string()))?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls.config).clone());
    let (client, connection) = config
        .connect(connector)
        .await
        .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}
