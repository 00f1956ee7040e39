//! Transport security: TLS 1.3 on every connection, with no certificates to manage.
//!
//! A receiver makes a fresh key pair and a self-signed certificate when it starts
//! ([`ServerTls::ephemeral`]). A sender accepts any certificate whose key signs the TLS
//! handshake: the receiver's identity is proven afterwards by the passphrase, through the PAKE
//! in `protocol::handshake`, which is bound to this TLS channel by its exporter value
//! ([`binding`]). A man in the middle with its own certificate gets through TLS, and then
//! fails the PAKE.
//!
//! Only TLS 1.3 is offered, without session tickets or resumption (every connection runs a
//! full handshake, so every exporter value is fresh). Cipher suites, in order of preference:
//! AES-128-GCM (AES-NI and VAES make it the fastest on x86-64, and 128-bit keys are ample for
//! a session key), AES-256-GCM, then ChaCha20-Poly1305 for CPUs without AES instructions.
//! The crypto provider is aws-lc-rs (measured against ring in `docs/PERFORMANCE.md`).

use std::io;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, CommonState, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::handshake::{Binding, EXPORTER_LABEL};

/// The name a sender asks for (certificates are not checked against it).
const SERVER_NAME: &str = "tidegate";

/// A sender's side of a TLS connection.
pub type ClientStream<IO> = tokio_rustls::client::TlsStream<IO>;
/// A receiver's side of a TLS connection.
pub type ServerStream<IO> = tokio_rustls::server::TlsStream<IO>;

/// What TLS was negotiated on a connection, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Negotiated {
    /// `TLSv1.3`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}", self.version, self.cipher_suite)
    }
}

fn provider() -> CryptoProvider {
    use aws_lc_rs::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    }
}

/// A receiver's TLS identity: an ephemeral key pair and its self-signed certificate.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// A fresh key pair and certificate, held in memory only.
    ///
    /// # Errors
    /// When the crypto library fails to make a key.
    pub fn ephemeral() -> io::Result<Self> {
        let other = |e: &dyn std::fmt::Display| {
            io::Error::other(format!("making the TLS certificate: {e}"))
        };
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| other(&e))?;
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| other(&e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| other(&e))?;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// One identity made once per process, for harnesses that build many servers' state
    /// and never accept a connection (fuzzing, unit tests).
    #[cfg(any(test, feature = "fuzzing"))]
    #[allow(clippy::missing_panics_doc)] // a machine that cannot make a key cannot test either
    pub(crate) fn reused() -> Self {
        static ONE: OnceLock<ServerTls> = OnceLock::new();
        ONE.get_or_init(|| ServerTls::ephemeral().expect("a TLS key"))
            .clone()
    }

    /// Runs the server side of the TLS handshake on `io`.
    ///
    /// # Errors
    /// When the handshake fails or `io` does.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<ServerStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(io)
            .await
    }
}

/// Accepts any certificate, but checks that its key signed the handshake.
#[derive(Debug)]
struct AnyServerKey(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The passphrase, not a PKI, proves who the receiver is (see the module header).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = provider();
            let verifier = AnyServerKey(provider.signature_verification_algorithms);
            let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.resumption = rustls::client::Resumption::disabled();
            config.enable_sni = false;
            Ok(Arc::new(config))
        })
        .clone()
}

/// Runs the client side of the TLS handshake on `io`.
///
/// # Errors
/// When the handshake fails or `io` does.
pub async fn connect<IO>(io: IO) -> io::Result<ClientStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = client_config().map_err(io::Error::other)?;
    let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await
}

/// The connection's exporter value, which the PAKE binds to.
///
/// # Errors
/// Before the TLS handshake has completed.
pub fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> io::Result<Binding> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(io::Error::other)
}

/// What the connection negotiated.
pub fn negotiated(conn: &CommonState) -> Negotiated {
    Negotiated {
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "none".to_owned(),
        },
        cipher_suite: conn.negotiated_cipher_suite().map_or_else(
            || "none".to_owned(),
            |s| s.suite().as_str().unwrap_or("unknown").to_owned(),
        ),
    }
}

/// Whether a TLS failure means the peer does not speak TLS at all: a receiver of protocol
/// version 4 or older answers a `ClientHello` with a plaintext error frame.
pub fn not_tls(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType
                        | rustls::InvalidMessage::UnknownProtocolVersion
                )
            )
        })
}
