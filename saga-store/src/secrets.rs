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

/// One server's URL split around the credentials of its authority: `(before, userinfo,
/// after)` for `scheme://userinfo@host…`, `after` starting at the host; `None` when it
/// carries none. Without a `scheme://` the authority starts the string (`token@host:4222`);
/// it ends at the first `/`, `?` or `#`. [`redact_url`] hides, and the NATS transport takes,
/// exactly this part.
pub(crate) fn split_userinfo(server: &str) -> Option<(&str, &str, &str)> {
    let start = server.find("://").map_or(0, |i| i + 3);
    let end = server[start..]
        .find(['/', '?', '#'])
        .map_or(server.len(), |i| start + i);
    let at = start + server[start..end].rfind('@')?;
    Some((&server[..start], &server[start..at], &server[at + 1..]))
}

fn redact_one(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let credentials = match before_query.contains("://") {
        true => split_userinfo(before_query),
        false => None,
    };
    let mut shown = match credentials {
        Some((before, credentials, after)) => {
            let kept = match credentials.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if before_query.starts_with("postgres") => credentials.to_owned(),
                None => "***".to_owned(),
            };
            format!("{before}{kept}@{after}")
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
