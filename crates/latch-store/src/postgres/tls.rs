//! TLS to PostgreSQL, as the URL's `sslmode` and `sslrootcert` ask, with libpq's meanings:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | left out, `disable` | never | — |
//! | `prefer` | when the server offers it | not checked (`sslrootcert` is refused) |
//! | `require` | always | not checked; with `sslrootcert`, its chain (as `verify-ca`) |
//! | `verify-ca` | always | its chain, up to a CA of `sslrootcert` |
//! | `verify-full` | always | its chain, and that it names the URL's host |
//!
//! One difference: a URL without `sslmode` connects without TLS, where libpq's default
//! (`prefer`) encrypts whenever the server offers it but checks no certificate, which stops
//! only an eavesdropper that cannot also intercept. So TLS is used when the URL asks for it,
//! and only `verify-full` (or `verify-ca` on a private network) stops an active attacker.
//! `sslrootcert` is a PEM file; libpq's `~/.postgresql/root.crt` is not looked for.
//!
//! [`parse`] also gives a connection bounds on a silent server unless the URL sets its own
//! (`bound_silent_peers`), and reads latch's own `query_timeout` ([`Deadline`]).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use latch_core::StoreError;
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::deadline::Deadline;

/// Where and how to connect: tokio-postgres's settings, the TLS connector they use, and how
/// long to wait for an answer.
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    pub(crate) deadline: Deadline,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn invalid(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("invalid PostgreSQL URL: {what}"))
}

/// Reads a `postgres://` URL: `sslmode` and `sslrootcert` here, the rest by tokio-postgres.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let (base, query) = crate::split_postgres_query(url);
    let query = query.unwrap_or("");
    let (mut mode, mut root_file) = (None, None);
    let mut deadline = Deadline::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        // Decoded as tokio-postgres decodes it: `ssl%6Dode` is `sslmode` there too.
        match crate::decoded(key).as_ref() {
            "sslmode" => mode = Some(value()),
            "sslrootcert" => root_file = Some(value()),
            "query_timeout" => {
                let seconds: u64 = value().parse().map_err(|_| {
                    invalid("query_timeout must be a whole number of seconds (0: none)")
                })?;
                deadline = Deadline((seconds > 0).then(|| Duration::from_secs(seconds)));
            }
            _ => rest.push(pair),
        }
    }
    let (ssl_mode, check) = match (mode.as_deref(), &root_file) {
        // A CA given where no certificate would be checked is a mistake that would leave the
        // connection unverified (or in clear) without a word: refused.
        (None | Some("disable" | "prefer"), Some(_)) => {
            return Err(invalid(
                "sslrootcert is used only with sslmode=require, verify-ca or verify-full",
            ))
        }
        (None | Some("disable"), None) => (SslMode::Disable, Check::Nothing),
        (Some("prefer"), None) => (SslMode::Prefer, Check::Nothing),
        (Some("require"), None) => (SslMode::Require, Check::Nothing),
        (Some("require" | "verify-ca"), Some(_)) => (SslMode::Require, Check::Chain),
        (Some("verify-full"), Some(_)) => (SslMode::Require, Check::ChainAndName),
        (Some(m @ ("verify-ca" | "verify-full")), None) => {
            return Err(invalid(format_args!(
                "sslmode={m} needs sslrootcert=FILE, the PEM certificate of the CA that signed \
                 the server's"
            )))
        }
        (Some(other), _) => {
            return Err(invalid(format_args!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    let rebuilt = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config =
        tokio_postgres::Config::from_str(&rebuilt).map_err(|e| invalid(super::describe(&e)))?;
    config.ssl_mode(ssl_mode);
    let named: Vec<_> = rest
        .iter()
        .map(|p| crate::decoded(p.split_once('=').map_or(*p, |(k, _)| k)))
        .collect();
    let named: Vec<&str> = named.iter().map(|k| k.as_ref()).collect();
    bound_silent_peers(&mut config, &named);
    // Every connection, reads' included, must be to the primary: a standby replays the
    // primary's commits late, so an introspection read there could find a token active
    // after its revocation was answered `200`. A URL naming several hosts (libpq's failover
    // list) would otherwise take the first that answers, a standby included.
    match config.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => {}
        _ if named.contains(&"target_session_attrs") => {
            return Err(invalid(
                "target_session_attrs must be read-write: a standby could answer reads from \
                 before a revocation",
            ))
        }
        _ => {
            config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        }
    }
    let roots = match (&root_file, check) {
        (Some(file), Check::Chain | Check::ChainAndName) => Some(read_roots(file)?),
        _ => None,
    };
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(client_config(check, roots)?),
        deadline,
    })
}

/// Connection settings, each unless the URL names it (libpq's parameter names), that bound
/// how long a PostgreSQL that stops answering without closing the connection (a network
/// partition dropping packets, a frozen host) keeps requests waiting before they fail with
/// `503`: the kernel's own defaults let a connection wait for many minutes (two hours of
/// silence before the first keepalive probe). A connection attempt gives up after 10 s; one
/// whose sent data goes unacknowledged for 30 s is dropped (`tcp_user_timeout`, Linux), as
/// is one silent for 15 s that then misses 3 probes 5 s apart (keepalives).
fn bound_silent_peers(config: &mut tokio_postgres::Config, named: &[&str]) {
    let unnamed = |key: &str| !named.contains(&key);
    if unnamed("connect_timeout") {
        config.connect_timeout(Duration::from_secs(10));
    }
    if unnamed("tcp_user_timeout") {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    if unnamed("keepalives_idle") {
        config.keepalives_idle(Duration::from_secs(15));
    }
    if unnamed("keepalives_interval") {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if unnamed("keepalives_retries") {
        config.keepalives_retries(3);
    }
}

fn read_roots(file: &str) -> Result<RootCertStore, StoreError> {
    let unreadable = |e: &dyn std::fmt::Display| invalid(format_args!("sslrootcert {file}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    Ok(roots)
}

fn client_config(check: Check, roots: Option<RootCertStore>) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: TlsError| invalid(format_args!("TLS settings: {e}"));
    let chain = roots
        .map(|roots| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| invalid(format_args!("sslrootcert: {e}")))
        })
        .transpose()?;
    let verifier: Arc<dyn ServerCertVerifier> = match chain {
        Some(chain) if check == Check::ChainAndName => chain,
        chain => Arc::new(Lenient {
            chain,
            provider: provider.clone(),
        }),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The checks short of `verify-full`: none (`prefer`, and `require` without a CA: any
/// certificate, as libpq), or the chain up to a trusted CA whatever host the certificate names
/// (`verify-ca`). The handshake's signatures are always checked, so the peer holds the
/// certificate's key, whoever it is.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_server_is_given_up_on_in_seconds_unless_the_url_says_otherwise() {
        use std::time::Duration;
        let secs = Duration::from_secs;
        let config = parse("postgres://u@h/db").unwrap().config;
        assert_eq!(config.get_connect_timeout(), Some(&secs(10)));
        assert_eq!(config.get_tcp_user_timeout(), Some(&secs(30)));
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), secs(15));
        assert_eq!(config.get_keepalives_interval(), Some(secs(5)));
        assert_eq!(config.get_keepalives_retries(), Some(3));
        let url = "postgres://u@h/db?connect_timeout=2&keepalives_idle=60&keepalives_retries=9\
                   &tcp_user_timeout=7&keepalives_interval=1";
        let config = parse(url).unwrap().config;
        assert_eq!(config.get_connect_timeout(), Some(&secs(2)));
        assert_eq!(config.get_tcp_user_timeout(), Some(&secs(7)));
        assert_eq!(config.get_keepalives_idle(), secs(60));
        assert_eq!(config.get_keepalives_interval(), Some(secs(1)));
        assert_eq!(config.get_keepalives_retries(), Some(9));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_here_and_the_rest_by_tokio_postgres() {
        let target = parse("postgres://u@h:5433/db?application_name=x&sslmode=require").unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.config.get_dbname(), Some("db"));
        for (url, mode) in [
            ("postgres://u@h/db", SslMode::Disable),
            ("postgres://u@h/db?sslmode=disable", SslMode::Disable),
            ("postgres://u@h/db?sslmode=prefer", SslMode::Prefer),
        ] {
            assert_eq!(parse(url).unwrap().config.get_ssl_mode(), mode, "{url}");
        }
        for (url, says) in [
            ("postgres://u@h/db?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://u@h/db?sslmode=verify-ca", "needs sslrootcert"),
            ("postgres://u@h/db?sslmode=allow", "is not one of"),
            ("postgres://u@h/db?sslrootcert=/ca.pem", "used only with"),
            (
                "postgres://u@h/db?sslmode=prefer&sslrootcert=/ca.pem",
                "used only with",
            ),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
                "sslrootcert /nonexistent.pem",
            ),
            (
                "postgres://u@h/db?sslmode=require&bogus=1",
                "unknown option",
            ),
        ] {
            let Err(e) = parse(url) else {
                panic!("{url} was accepted")
            };
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn a_question_mark_in_a_password_is_the_passwords_and_keys_are_percent_decoded() {
        // Read as libpq and tokio-postgres read it: the user info runs to the first `@`.
        // Split at its first `?`, the `sslmode` after the host went unseen and the
        // connection was made in clear.
        let target = parse("postgres://u:pw?x@h/db?sslmode=require").unwrap();
        assert_eq!(target.config.get_password(), Some(&b"pw?x"[..]));
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.config.get_dbname(), Some("db"));
        // tokio-postgres decodes keys: `ssl%6Dode` is `sslmode`, and must be read as such
        // here, not passed on to be overridden with `disable`.
        let target = parse("postgres://u@h/db?ssl%6Dode=require").unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        let target = parse("postgres://u@h/db?query%5Ftimeout=3").unwrap();
        assert_eq!(target.deadline, Deadline(Some(Duration::from_secs(3))));
    }

    #[test]
    fn every_connection_is_to_a_primary() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@primary,standby/db",
            "postgres://u@h/db?target_session_attrs=read-write",
        ] {
            assert_eq!(
                parse(url).unwrap().config.get_target_session_attrs(),
                TargetSessionAttrs::ReadWrite,
                "{url}"
            );
        }
        assert!(parse("postgres://u@primary,standby/db?target_session_attrs=any").is_err());
    }

    #[test]
    fn query_timeout_is_latchs_own_parameter_in_whole_seconds() {
        let deadline = |url: &str| parse(url).map(|t| t.deadline);
        assert_eq!(
            deadline("postgres://u@h/db").unwrap(),
            Deadline(Some(Duration::from_secs(10)))
        );
        let target = parse("postgres://u@h/db?query_timeout=3&application_name=x").unwrap();
        assert_eq!(target.deadline, Deadline(Some(Duration::from_secs(3))));
        assert_eq!(
            target.config.get_application_name(),
            Some("x"),
            "not passed on to tokio-postgres, which would refuse it"
        );
        assert_eq!(
            deadline("postgres://u@h/db?query_timeout=0").unwrap(),
            Deadline(None)
        );
        for bad in ["-1", "1.5", "", "ten"] {
            let Err(e) = deadline(&format!("postgres://u@h/db?query_timeout={bad}")) else {
                panic!("query_timeout={bad} was accepted")
            };
            assert!(e.to_string().contains("whole number of seconds"), "{e}");
        }
    }
}
