//! How the NATS client proves who it is ([`NatsAuth`]) and checks whom it talks to
//! ([`NatsTls`]). Files are read and checked once, before the first connection attempt, and a
//! server that refuses the credentials or a certificate that does not verify ends the
//! attempts at once: a wrong setting is reported as [`TransportError::Misconfigured`], not
//! retried until the connect timeout like an unreachable server.

use std::path::{Path, PathBuf};

use async_nats::{ConnectErrorKind, ConnectOptions};
use saga_core::ports::TransportError;

use crate::secrets::{ExposeSecret as _, SecretString, split_userinfo};

/// The credentials the client presents. `Debug` never shows a password, token or seed.
#[derive(Clone, Debug, Default)]
pub enum NatsAuth {
    /// Nothing beyond what the URL carries (`nats://user:password@host`, `nats://token@host`).
    #[default]
    None,
    /// A user name and password from the server's `authorization { users = [...] }`.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: SecretString,
    },
    /// The server's `authorization { token = ... }`.
    Token(SecretString),
    /// A file holding an nkey seed (`SU…`), for a server that lists the user's public nkey.
    NkeySeedFile(PathBuf),
    /// A `.creds` file (a user JWT and its seed), for a server in operator (JWT) mode.
    CredentialsFile(PathBuf),
}

/// TLS settings beyond what the URL asks for (a `tls://` URL always requires TLS).
#[derive(Clone, Debug, Default)]
pub struct NatsTls {
    /// Require TLS even on a `nats://` URL.
    pub required: bool,
    /// A PEM file of the certificate authorities to trust, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for a server that verifies clients (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub client_key: Option<PathBuf>,
    /// Start TLS before the server's greeting (the server's `handshake_first`).
    pub handshake_first: bool,
}

/// A file's text; `trim` drops surrounding whitespace (an nkey seed), which a `.creds` file
/// must keep (its sections end at a line break).
fn read_secret(what: &str, path: &Path, trim: bool) -> Result<SecretString, TransportError> {
    std::fs::read_to_string(path)
        .map(|text| SecretString::from(if trim { text.trim().to_owned() } else { text }))
        .map_err(|err| {
            TransportError::misconfigured(format!(
                "cannot read the {what} {}: {err}",
                path.display()
            ))
        })
}

fn check_file(what: &str, path: &Path) -> Result<(), TransportError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(TransportError::misconfigured(format!(
            "the {what} {} is not a readable file",
            path.display()
        )))
    }
}

/// Connection options carrying `auth` and `tls`, with every file checked and read: each
/// connection attempt starts from a clone of them.
pub(super) fn secured_options(
    auth: &NatsAuth,
    tls: &NatsTls,
) -> Result<ConnectOptions, TransportError> {
    let base = ConnectOptions::new();
    let mut options = match auth {
        NatsAuth::None => base,
        NatsAuth::UserPassword { user, password } => {
            base.user_and_password(user.clone(), password.expose_secret().to_owned())
        }
        NatsAuth::Token(token) => base.token(token.expose_secret().to_owned()),
        NatsAuth::NkeySeedFile(path) => base.nkey(
            read_secret("nkey seed file", path, true)?
                .expose_secret()
                .to_owned(),
        ),
        NatsAuth::CredentialsFile(path) => {
            let creds = read_secret("credentials file", path, false)?;
            base.credentials(creds.expose_secret()).map_err(|err| {
                TransportError::misconfigured(format!(
                    "the credentials file {} cannot be read as a NATS .creds file: {err}",
                    path.display()
                ))
            })?
        }
    };
    if tls.required {
        options = options.require_tls(true);
    }
    if tls.handshake_first {
        options = options.tls_first();
    }
    if let Some(ca) = &tls.ca_file {
        check_file("CA file", ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            check_file("client certificate", cert)?;
            check_file("client key", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(TransportError::misconfigured(
                "a NATS client certificate needs both a certificate and a key file",
            ));
        }
    }
    Ok(options)
}

/// Splits the credentials off `url` (`nats://user:password@host`, `nats://token@host`, each
/// part percent-decoded; every server of a comma-separated list may carry the same ones):
/// the client library does not read them from the URL, so they travel as [`NatsAuth`].
/// Credentials both in the URL and in `auth`, or different ones per server, are refused.
pub(super) fn credentials_from_url(
    url: &str,
    auth: &NatsAuth,
) -> Result<(String, NatsAuth), TransportError> {
    let mut servers = Vec::new();
    let mut found: Option<(String, Option<String>)> = None;
    for server in url.split(',') {
        let server = server.trim();
        let Some((before, userinfo, after)) = split_userinfo(server) else {
            servers.push(server.to_owned());
            continue;
        };
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| TransportError::misconfigured("NATS URL credentials are not UTF-8"))
        };
        let these = match userinfo.split_once(':') {
            Some((user, password)) => (decode(user)?, Some(decode(password)?)),
            None => (decode(userinfo)?, None),
        };
        if found.as_ref().is_some_and(|earlier| *earlier != these) {
            return Err(TransportError::misconfigured(
                "the servers of the NATS URL carry different credentials",
            ));
        }
        found = Some(these);
        servers.push(format!("{before}{after}"));
    }
    let auth = match (found, auth) {
        (None, auth) => auth.clone(),
        (Some((user, Some(password))), NatsAuth::None) => NatsAuth::UserPassword {
            user,
            password: password.into(),
        },
        (Some((token, None)), NatsAuth::None) => NatsAuth::Token(token.into()),
        (Some(_), _) => {
            return Err(TransportError::misconfigured(
                "NATS credentials are given both in the URL and in the options: keep one",
            ));
        }
    };
    Ok((servers.join(","), auth))
}

/// Whether a failed connection attempt is a wrong setting rather than an unreachable server:
/// refused credentials, a TLS setup error, or a TLS handshake that failed (rustls's error
/// inside an I/O error: a certificate that does not verify, or the server's alert when it
/// wanted a client certificate).
pub(super) fn is_misconfiguration(err: &async_nats::ConnectError) -> bool {
    matches!(
        err.kind(),
        ConnectErrorKind::ServerParse
            | ConnectErrorKind::Authentication
            | ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::Tls
    ) || crate::error::is_tls_handshake_failure(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str, auth: &NatsAuth) -> (String, String) {
        let (url, auth) = credentials_from_url(url, auth).expect("splits");
        let auth = match auth {
            NatsAuth::None => "none".to_owned(),
            NatsAuth::UserPassword { user, password } => {
                format!("{user}/{}", password.expose_secret())
            }
            NatsAuth::Token(token) => format!("token {}", token.expose_secret()),
            other => format!("{other:?}"),
        };
        (url, auth)
    }

    #[test]
    fn credentials_leave_the_url_for_the_options() {
        let none = NatsAuth::None;
        assert_eq!(
            split("nats://127.0.0.1:4222", &none),
            ("nats://127.0.0.1:4222".to_owned(), "none".to_owned())
        );
        assert_eq!(
            split("tls://saga:p%40ss@host:4222", &none),
            ("tls://host:4222".to_owned(), "saga/p@ss".to_owned())
        );
        assert_eq!(
            split("nats://s3cret@a:1, nats://s3cret@b:2", &none),
            (
                "nats://a:1,nats://b:2".to_owned(),
                "token s3cret".to_owned()
            )
        );
        assert_eq!(
            split("host:4222", &NatsAuth::Token("t".to_owned().into())),
            ("host:4222".to_owned(), "token t".to_owned())
        );
        for (url, auth) in [
            ("nats://a@h:1,nats://b@h:2", NatsAuth::None),
            ("nats://t@h:1", NatsAuth::Token("t".to_owned().into())),
            ("nats://%ff@h:1", NatsAuth::None),
        ] {
            let err = credentials_from_url(url, &auth).expect_err(url);
            assert_eq!(err.class(), "misconfigured", "{url}");
        }
    }
}
