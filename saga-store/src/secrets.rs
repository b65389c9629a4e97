//! Secrets in settings. A password, token or key is held as a [`SecretString`], whose `Debug`
//! prints `[REDACTED]`; a URL is shown (in logs, errors, `Debug` output) only through
//! [`redact_url`], which removes the credentials it may carry.

pub use secrecy::{ExposeSecret, SecretString};

/// Query parameters whose values are secrets (`postgres://…?password=…`).
const SECRET_PARAMETERS: [&str; 4] = ["password", "sslpassword", "token", "pass"];

/// `url` with its credentials replaced by `***`: the password of `user:password@`; on any
/// scheme but PostgreSQL's, a lone `token@` too (NATS reads it as a token, PostgreSQL as a
/// user name); and the values of `password`, `sslpassword`, `token` and `pass` query
/// parameters.
pub fn redact_url(url: &str) -> String {
    // A NATS URL may list several servers, each with its own credentials.
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut shown = match before_query.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let authority_end = before_query[authority_start..]
                .find('/')
                .map_or(before_query.len(), |i| authority_start + i);
            let authority = &before_query[authority_start..authority_end];
            match authority.rfind('@') {
                Some(at) => {
                    let credentials = &authority[..at];
                    let postgres = before_query.starts_with("postgres");
                    let kept = match credentials.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None if postgres => credentials.to_owned(),
                        None => "***".to_owned(),
                    };
                    format!(
                        "{}{kept}{}",
                        &before_query[..authority_start],
                        &before_query[authority_start + at..]
                    )
                }
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        shown.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if SECRET_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown.push_str(&pairs.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_every_kind_of_credential_and_nothing_else() {
        assert_eq!(
            redact_url("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(
            redact_url("postgres://user@host/db"),
            "postgres://user@host/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=pw&PassWord=x"),
            "postgres://u@h/db?sslmode=require&password=***&PassWord=***"
        );
        assert_eq!(
            redact_url("nats://s3cret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(
            redact_url("nats://a:pw@h1:4222,nats://b:pw2@h2:4222"),
            "nats://a:***@h1:4222,nats://b:***@h2:4222"
        );
        assert_eq!(
            redact_url("tls://user:pa:ss@word@host:4222"),
            "tls://user:***@host:4222"
        );
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        // An `@` after the authority is not a credential separator.
        assert_eq!(
            redact_url("postgres://host/db?application_name=a@b"),
            "postgres://host/db?application_name=a@b"
        );
    }
}
