//! How a connection is secured: libpq's `sslmode` and `sslrootcert`, over
//! rustls.
//!
//! The driver (`tokio-postgres`) knows only `disable`, `prefer` and
//! `require`, and no `sslrootcert`; a connection string says what libpq
//! would accept. So [`split`] takes the TLS options out of the string, the
//! driver gets the rest with the mode it knows, and the verification is
//! ours, in the rustls configuration:
//!
//! | `sslmode` | encrypted | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `allow`, `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given: then as `verify-ca` (as libpq does) |
//! | `verify-ca` | always | signed by a root in `sslrootcert` |
//! | `verify-full` | always | signed by a root in `sslrootcert`, for the host name connected to |
//!
//! `sslrootcert` is a PEM file, or `system` for the system's roots
//! (`/etc/ssl/certs` and its kin); without it, `verify-*` reads
//! `~/.postgresql/root.crt`, as libpq does.
//!
//! TLS and `fork()`: a TLS session is state in this process's memory (keys,
//! sequence numbers) on top of the socket. A forked child that wrote on an
//! inherited session would desynchronise it for the parent ("SSL error:
//! decryption failed or bad record mac"). The fork guard's rule already
//! prevents it: a child never uses or closes an inherited connection, its
//! socket is pointed at `/dev/null`, and the child opens its own session.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: use disable, allow, prefer, require, \
                     verify-ca or verify-full"
                ));
            }
        })
    }

    /// What the driver is told: whether to try TLS, and whether to insist.
    pub(crate) fn driver(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS options a connection string carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) mode: SslMode,
    pub(crate) root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (a URL or
/// `key=value` pairs); returns the rest, for the driver, and the options.
/// A string that does not parse is returned whole: the driver's parser then
/// says what is wrong with it.
///
/// # Errors
///
/// An `sslmode` libpq would not accept either.
pub(crate) fn split(connection_string: &str) -> Result<(String, TlsOptions), String> {
    let s = connection_string.trim();
    let (rest, pairs) = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        split_url(s)
    } else {
        split_pairs(s)
    };
    let mut options = TlsOptions::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => options.mode = SslMode::parse(&value)?,
            _ => options.root_cert = Some(value),
        }
    }
    Ok((rest, options))
}

fn is_tls_key(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// `postgresql://...?a=b&sslmode=x`: the query's TLS parameters out.
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(key);
        if is_tls_key(&key) {
            taken.push((key, percent_decode(value)));
        } else {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key=value key='quoted value'`: the TLS pairs out, every other pair kept
/// exactly as written.
fn split_pairs(s: &str) -> (String, Vec<(String, String)>) {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let written = rest;
        let Some((key, after)) = rest.split_once('=') else {
            return (s.to_owned(), Vec::new());
        };
        let key = key.trim();
        let after = after.trim_start();
        let Some((value, tail)) = pair_value(after) else {
            return (s.to_owned(), Vec::new());
        };
        let pair = &written[..written.len() - tail.len()];
        if is_tls_key(key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push(pair.trim());
        }
        rest = tail;
    }
    (kept.join(" "), taken)
}

/// One value, quoted (`'...'`, backslash escapes) or bare (up to white
/// space); the value and what follows it.
fn pair_value(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    if let Some(quoted) = s.strip_prefix('\'') {
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '\'' => return Some((value, &quoted[i + 1..])),
                c => value.push(c),
            }
        }
        None
    } else {
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                c if c.is_whitespace() => return Some((value, &s[i..])),
                c => value.push(c),
            }
        }
        Some((value, ""))
    }
}

/// The rustls provider: ring, named rather than left to the process
/// default, which is ambiguous when another crate enables a second one.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `options`, or `None` for `sslmode=disable`.
///
/// # Errors
///
/// The root certificates could not be read, or none were found.
pub(crate) fn connector(options: &TlsOptions) -> Result<Option<MakeRustlsConnect>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verify = match options.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Allow | SslMode::Prefer => None,
        SslMode::Require => options.root_cert.is_some().then_some(false),
        SslMode::VerifyCa => Some(false),
        SslMode::VerifyFull => Some(true),
    };
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        None => Arc::new(NameUnchecked {
            chain: None,
            algorithms,
        }),
        Some(full) => {
            let roots = Arc::new(roots(options.root_cert.as_deref())?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
            if full {
                webpki
            } else {
                Arc::new(NameUnchecked {
                    chain: Some(webpki),
                    algorithms,
                })
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The roots `sslrootcert` names: a PEM file, `system`, or by default
/// `~/.postgresql/root.crt`.
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if root_cert == Some("system") {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            return Err("sslrootcert=system: no root certificates found on this system".into());
        }
        return Ok(roots);
    }
    let path = match root_cert {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".postgresql/root.crt")
        }
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(roots)
}

/// The lenient modes, which never check the host name: `verify-ca` (with
/// `chain`) checks that the certificate leads to a trusted root; `prefer`
/// and `require` without roots (no `chain`) do not check the certificate
/// at all, as libpq does not. Either way the session is encrypted and the
/// server's handshake signature is checked.
#[derive(Debug)]
struct NameUnchecked {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name, so a name error means
        // the chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_urls_and_pairs() {
        let (rest, tls) = split(
            "postgresql://u:p@db.example:5433/app?sslmode=verify-full&connect_timeout=5\
             &sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://u:p@db.example:5433/app?connect_timeout=5"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));

        let (rest, tls) =
            split("host=db user='a b' sslmode = require sslrootcert='/my ca.pem' dbname=x")
                .unwrap();
        assert_eq!(rest, "host=db user='a b' dbname=x");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert.as_deref(), Some("/my ca.pem"));

        let (rest, tls) = split("host=/tmp").unwrap();
        assert_eq!((rest.as_str(), tls), ("host=/tmp", TlsOptions::default()));
        assert!(
            split("host=db sslmode=verify")
                .unwrap_err()
                .contains("verify-full")
        );
        // Not parsable: left whole for the driver to explain.
        assert_eq!(split("host").unwrap().0, "host");
    }

    #[test]
    fn modes_map_to_the_drivers() {
        use postgres::config::SslMode as Driver;
        assert_eq!(SslMode::Disable.driver(), Driver::Disable);
        assert_eq!(SslMode::Allow.driver(), Driver::Prefer);
        assert_eq!(SslMode::VerifyCa.driver(), Driver::Require);
        let missing = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some("/no/such/ca.pem".into()),
        };
        let err = connector(&missing)
            .err()
            .expect("a missing root file is an error");
        assert!(err.contains("/no/such/ca.pem"), "{err}");
        assert!(connector(&TlsOptions::default()).unwrap().is_some());
    }
}
