//! Secure deployments, against real servers this test starts for itself: a throwaway
//! PostgreSQL cluster that takes only TLS connections (password or client-certificate
//! authentication) and `nats-server`s with TLS and authorization, all with certificates from
//! a test CA made here. Then FTGO distributed runs over both with every secret set, and its
//! logs and metrics are searched for the secrets' values.
//!
//! Needs `SAGA_TEST_SECURE=1` (`.ci/run` sets it), PostgreSQL's server programs (`initdb`,
//! `pg_ctl`, `psql`: found under `/usr/lib/postgresql/*/bin`, or `SAGA_TEST_PG_BINDIR`) and
//! `nats-server` on the `PATH`. Without it the tests say they did not run.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use saga_core::ports::{Transport, TransportError};
use saga_core::{Headers, Message};
use saga_store::nats::{NatsAuth, NatsOptions, NatsTls, NatsTransport};
use saga_store::{Database, DatabaseError, DatabaseOptions, PostgresTls, SslMode};
use sqlx::Row;

mod common;
use common::{Deployment, assert_consistent, free_port, notice, place_all, wait_until_settled};

/// Whether the secure suites run: `SAGA_TEST_SECURE=1`; otherwise they say they did not.
fn enabled(test: &str) -> bool {
    if common::env("SAGA_TEST_SECURE").as_deref() == Some("1") {
        return true;
    }
    notice(&format!(
        "secure deployment test `{test}` did not run: set SAGA_TEST_SECURE=1 (needs initdb, \
         pg_ctl and nats-server)"
    ));
    false
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "saga-secure-{name}-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        // The PostgreSQL cluster's owner must get into it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A secret unique to this run, so that finding it anywhere means it leaked from here.
fn secret(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A certificate authority made for the test, and the certificates it signs.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "saga test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), issuer.pem()).expect("writes ca.pem");
        Self {
            issuer,
            dir: dir.to_owned(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `common_name`, valid for the DNS names or addresses `names`, written
    /// as `<file>.pem` and `<file>.key`; returns both paths.
    fn issue(&self, file: &str, common_name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let (cert_file, key_file) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("writes the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writes the key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        (cert_file, key_file)
    }
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("the program runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(uid, gid)` of the `postgres` user when this test runs as root (PostgreSQL refuses to
/// run as root), `None` otherwise.
fn cluster_owner() -> Option<(u32, u32)> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return None;
    }
    let id = |flag: &str| {
        run(Command::new("id").args([flag, "postgres"]))
            .trim()
            .parse::<u32>()
            .expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn postgres_bindir() -> PathBuf {
    if let Some(dir) = common::env("SAGA_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL's server programs: set SAGA_TEST_PG_BINDIR")
}

/// A throwaway PostgreSQL cluster on a free port that takes TCP connections over TLS only:
/// `saga_cert` by client certificate, everyone else by password (SCRAM). Its server
/// certificate is valid for `localhost` only. Stopped and deleted on drop.
struct TlsPostgres {
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
}

impl TlsPostgres {
    fn start(ca: &TestCa, dir: &Path) -> Self {
        let bin = postgres_bindir();
        let owner = cluster_owner();
        let data = dir.join("pgdata");
        let postgres = Self {
            bin,
            owner,
            data: data.clone(),
            socket_dir: dir.to_owned(),
            port: free_port(),
        };
        postgres.chown(dir);
        run(postgres
            .as_owner("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data));
        let (cert, key) = ca.issue("pg-server", "localhost", &["localhost"]);
        for (from, to) in [
            (cert, "server.crt"),
            (key, "server.key"),
            (ca.ca_file(), "root.crt"),
        ] {
            let target = data.join(to);
            std::fs::copy(from, &target).expect("copies a certificate file");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            postgres.chown(&target);
        }
        let settings = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'root.crt'\nfsync = off\nmax_connections = 200\n",
            postgres.port,
            dir.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("writes postgresql.conf");
        // No `host` or `hostnossl` line: a connection without TLS is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all saga_cert 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("writes pg_hba.conf");
        run(postgres
            .as_owner("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(dir.join("postgres.log"))
            .arg("-D")
            .arg(&data)
            .arg("start"));
        postgres
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }

    /// One of the cluster's programs, run as its owner.
    fn as_owner(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.owner {
            Some(_) => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    /// Runs SQL as the superuser in `database`, over the local socket.
    fn psql(&self, database: &str, sql: &str) -> String {
        run(self
            .as_owner("psql")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql]))
    }

    /// A URL for `user` (with `password`, if any) on `host` with `params`.
    fn url(&self, user: &str, password: Option<&str>, host: &str, params: &str) -> String {
        let credentials = match password {
            Some(password) => format!("{user}:{password}"),
            None => user.to_owned(),
        };
        format!(
            "postgres://{credentials}@{host}:{}/test?{params}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// A `nats-server` with JetStream on a free port, configured by `settings`; killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start(dir: &Path, name: &str, settings: &str) -> Self {
        let port = free_port();
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{settings}\n",
                dir.join(format!("{name}-js")).display()
            ),
        )
        .expect("writes the NATS configuration");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nats-server starts (is it on the PATH?)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {name} did not start: {}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://localhost:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TLS block of a NATS server configuration; `verify` makes clients show a certificate.
fn nats_tls_block(ca: &TestCa, name: &str, verify: bool) -> String {
    let (cert, key) = ca.issue(name, "localhost", &["localhost"]);
    format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: {verify}, timeout: 5 }}",
        cert.display(),
        key.display(),
        ca.ca_file().display()
    )
}

fn options(auth: NatsAuth, tls: NatsTls) -> NatsOptions {
    let stream = format!("SECURE_{}", uuid::Uuid::now_v7().simple()).to_uppercase();
    NatsOptions {
        subject_prefix: stream.to_lowercase(),
        stream,
        // Long, so that a wrong setting retried like an outage would show as a slow failure.
        connect_timeout: Duration::from_secs(20),
        auth,
        tls,
        ..NatsOptions::default()
    }
}

/// Connects (creating the streams), publishes a message and receives it back.
async fn round_trip(url: &str, options: NatsOptions) -> Result<(), TransportError> {
    let transport = NatsTransport::connect(url, options).await?;
    let message = Message::new(
        "secure.check",
        Headers::new().with("message-type", "Check"),
        "{}".to_owned(),
    );
    transport.publish(std::slice::from_ref(&message)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = transport
            .receive("secure.check", "g", 1, Duration::from_secs(1))
            .await?;
        if let Some(delivery) = got.first() {
            assert_eq!(delivery.message.id, message.id);
            transport.ack("secure.check", "g", delivery).await?;
            break;
        }
        assert!(Instant::now() < deadline, "the message did not come back");
    }
    transport.delete_streams().await?;
    Ok(())
}

/// A refusal came at once (not after the connect timeout), and `err` (shown and `Debug`)
/// names none of `secrets`.
fn assert_refused_at_once(
    case: &str,
    started: Instant,
    err: &(impl std::fmt::Display + std::fmt::Debug),
    secrets: &[&str],
) {
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{case}: took {:?}, like an unreachable server: {err}",
        started.elapsed()
    );
    let shown = format!("{err} {err:?}");
    for secret in secrets {
        assert!(
            !shown.contains(secret),
            "{case}: the error shows a secret: {shown}"
        );
    }
}

/// `round_trip` fails at once as a misconfiguration whose message names none of `secrets`.
async fn refused(url: &str, options: NatsOptions, secrets: &[&str], case: &str) {
    let started = Instant::now();
    let err = round_trip(url, options)
        .await
        .expect_err(&format!("{case}: connects"));
    assert_eq!(err.class(), "misconfigured", "{case}: {err}");
    assert_refused_at_once(case, started, &err, secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_each_kind_of_credential() {
    if !enabled("nats over TLS") {
        return;
    }
    let scratch = Scratch::new("nats");
    let ca = TestCa::new(&scratch.0);
    let (client_cert, client_key) = ca.issue("nats-client", "saga client", &["saga-client"]);
    let password = secret("nats-password");
    let token = secret("nats-token");
    let nkey = nkeys::KeyPair::new_user();
    let seed_file = scratch.0.join("user.nk");
    std::fs::write(&seed_file, nkey.seed().expect("seed")).expect("writes the seed");
    // Client certificates required; a user with a password and one with an nkey.
    let verifying = NatsServer::start(
        &scratch.0,
        "verifying",
        &format!(
            "{}\nauthorization {{ users: [ {{ user: saga, password: \"{password}\" }}, {{ nkey: {} }} ] }}",
            nats_tls_block(&ca, "nats-verifying", true),
            nkey.public_key()
        ),
    );
    // Server certificate only; a token.
    let token_server = NatsServer::start(
        &scratch.0,
        "token",
        &format!(
            "{}\nauthorization {{ token: \"{token}\" }}",
            nats_tls_block(&ca, "nats-token", false)
        ),
    );
    let tls = NatsTls {
        ca_file: Some(ca.ca_file()),
        client_cert: Some(client_cert.clone()),
        client_key: Some(client_key.clone()),
        ..NatsTls::default()
    };
    let ca_only = NatsTls {
        ca_file: Some(ca.ca_file()),
        ..NatsTls::default()
    };
    let with_password = |password: &str| NatsAuth::UserPassword {
        user: "saga".to_owned(),
        password: password.to_owned().into(),
    };

    // What works: each credential, over TLS, verified against the test CA.
    round_trip(
        &verifying.url("tls"),
        options(with_password(&password), tls.clone()),
    )
    .await
    .expect("user and password, with a client certificate");
    round_trip(
        &verifying.url("tls"),
        options(NatsAuth::NkeySeedFile(seed_file.clone()), tls.clone()),
    )
    .await
    .expect("an nkey seed file");
    round_trip(
        &token_server.url("tls"),
        options(NatsAuth::Token(token.clone().into()), ca_only.clone()),
    )
    .await
    .expect("a token");
    // A `nats://` URL upgrades to TLS when the server requires it.
    round_trip(
        &format!("nats://{token}@localhost:{}", token_server.port),
        options(NatsAuth::None, ca_only.clone()),
    )
    .await
    .expect("a token in the URL");

    // What does not, reported at once and without the secrets.
    let secrets = [password.as_str(), token.as_str()];
    refused(
        &verifying.url("tls"),
        options(with_password("not-the-password"), tls.clone()),
        &["not-the-password"],
        "a wrong password",
    )
    .await;
    refused(
        &token_server.url("tls"),
        options(NatsAuth::Token("not-the-token".into()), ca_only.clone()),
        &["not-the-token"],
        "a wrong token",
    )
    .await;
    refused(
        &format!("nats://not-the-token@localhost:{}", token_server.port),
        options(NatsAuth::None, ca_only.clone()),
        &["not-the-token"],
        "a wrong token in the URL",
    )
    .await;
    refused(
        &verifying.url("tls"),
        options(with_password(&password), ca_only.clone()),
        &secrets,
        "no client certificate",
    )
    .await;
    refused(
        &token_server.url("tls"),
        options(NatsAuth::Token(token.clone().into()), NatsTls::default()),
        &secrets,
        "a server certificate the system's roots do not trust",
    )
    .await;
    let missing = NatsTls {
        ca_file: Some(scratch.0.join("missing-ca.pem")),
        ..NatsTls::default()
    };
    refused(
        &token_server.url("tls"),
        options(NatsAuth::Token(token.clone().into()), missing),
        &secrets,
        "a CA file that is not there",
    )
    .await;
    refused(
        &verifying.url("tls"),
        options(
            NatsAuth::NkeySeedFile(scratch.0.join("missing.nk")),
            tls.clone(),
        ),
        &secrets,
        "an nkey seed file that is not there",
    )
    .await;
    let half = NatsTls {
        client_key: None,
        ..tls.clone()
    };
    refused(
        &verifying.url("tls"),
        options(with_password(&password), half),
        &secrets,
        "a client certificate without its key",
    )
    .await;
    // A `.creds` file (a user JWT and its seed) for a server in operator mode.
    let (operator_server, creds) = operator_mode_server(&scratch.0);
    round_trip(
        &operator_server.url("nats"),
        options(NatsAuth::CredentialsFile(creds.clone()), NatsTls::default()),
    )
    .await
    .expect("a .creds file");
    let stranger = scratch.0.join("stranger.creds");
    let other = nkeys::KeyPair::new_account();
    let foreign_user = nkeys::KeyPair::new_user();
    let foreign_jwt = nats_jwt(
        &other,
        &foreign_user.public_key(),
        "stranger",
        serde_json::json!({ "type": "user", "version": 2 }),
    );
    write_creds(&stranger, &foreign_jwt, &foreign_user);
    refused(
        &operator_server.url("nats"),
        options(NatsAuth::CredentialsFile(stranger), NatsTls::default()),
        &[],
        "a user of an account the operator did not sign",
    )
    .await;
    std::fs::write(scratch.0.join("garbage.creds"), "not a creds file").expect("writes");
    refused(
        &operator_server.url("nats"),
        options(
            NatsAuth::CredentialsFile(scratch.0.join("garbage.creds")),
            NatsTls::default(),
        ),
        &[],
        "a file that is not a .creds file",
    )
    .await;

    // `Debug` of the options shows no secret.
    let shown = format!(
        "{:?} {:?}",
        options(with_password(&password), tls.clone()),
        options(NatsAuth::Token(token.clone().into()), ca_only)
    );
    for secret in secrets {
        assert!(!shown.contains(secret), "Debug shows a secret: {shown}");
    }
}

/// Signs a NATS JWT for `subject` with `issuer`: `nats` is the claims' `nats` object.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let body = encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("signs");
    format!("{signed}.{}", encode(&signature))
}

/// A `nats-server` in operator (JWT) mode with one JetStream-enabled account, and a
/// `.creds` file for a user of it.
fn operator_mode_server(dir: &Path) -> (NatsServer, PathBuf) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "saga-test",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "saga",
        serde_json::json!({ "limits": unlimited, "type": "account", "version": 2 }),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "saga-user",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let server = NatsServer::start(
        dir,
        "operator",
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{ {}: \"{account_jwt}\", {}: \"{system_jwt}\" }}",
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    );
    let creds = dir.join("user.creds");
    write_creds(&creds, &user_jwt, &user);
    (server, creds)
}

/// Writes a `.creds` file: the user's JWT and its seed, each in its armour.
fn write_creds(path: &Path, jwt: &str, user: &nkeys::KeyPair) {
    let seed = user.seed().expect("seed");
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("writes the creds file");
}

/// Connects and returns `(current_user, ssl)` of the session.
async fn who_and_how(url: &str) -> Result<(String, bool), DatabaseError> {
    who_and_how_with(url, PostgresTls::default()).await
}

/// As [`who_and_how`], with TLS settings in the options.
async fn who_and_how_with(url: &str, tls: PostgresTls) -> Result<(String, bool), DatabaseError> {
    let options = DatabaseOptions {
        connect_timeout: Duration::from_secs(20),
        tls,
        ..DatabaseOptions::default()
    };
    let database = Database::connect_with(url, options).await?;
    let row =
        sqlx::query("SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(database.postgres_pool().expect("PostgreSQL"))
            .await
            .expect("reads pg_stat_ssl");
    let answer = (
        row.try_get::<String, _>(0).expect("user"),
        row.try_get::<bool, _>(1).expect("ssl"),
    );
    database.close().await;
    Ok(answer)
}

/// Connecting fails at once (not after the connect timeout) with an error that names none
/// of `secrets`.
async fn database_refused(url: &str, secrets: &[&str], case: &str) -> DatabaseError {
    let started = Instant::now();
    let err = who_and_how(url)
        .await
        .expect_err(&format!("{case}: connects"));
    assert_refused_at_once(case, started, &err, secrets);
    err
}

/// A cluster, its CA, and roles: `saga_app` (by password, owner of database `test`) and
/// `saga_cert` (by client certificate).
struct SecurePostgres {
    postgres: TlsPostgres,
    password: String,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn secure_postgres(ca: &TestCa, dir: &Path) -> SecurePostgres {
    let postgres = TlsPostgres::start(ca, dir);
    let password = secret("pg-password");
    postgres.psql(
        "postgres",
        &format!("CREATE ROLE saga_app LOGIN PASSWORD '{password}'; CREATE ROLE saga_cert LOGIN"),
    );
    postgres.psql("postgres", "CREATE DATABASE test OWNER saga_app");
    // `saga_cert`'s tables go in its own schema (first on its default search path).
    postgres.psql("test", "CREATE SCHEMA saga_cert AUTHORIZATION saga_cert");
    let (client_cert, client_key) = ca.issue("pg-client", "saga_cert", &["saga-client"]);
    SecurePostgres {
        postgres,
        password,
        client_cert,
        client_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_a_test_ca_and_client_certificates() {
    if !enabled("PostgreSQL over TLS") {
        return;
    }
    let scratch = Scratch::new("pg");
    let ca = TestCa::new(&scratch.0);
    let secure = secure_postgres(&ca, &scratch.0);
    let pg = &secure.postgres;
    let password = secure.password.as_str();
    let root = format!("sslrootcert={}", ca.ca_file().display());

    // Each sslmode that encrypts, verified against the test CA where it verifies.
    for params in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-ca&{root}"),
        format!("sslmode=verify-full&{root}"),
    ] {
        let url = pg.url("saga_app", Some(password), "localhost", &params);
        let (user, ssl) = who_and_how(&url).await.expect(&params);
        assert_eq!((user.as_str(), ssl), ("saga_app", true), "{params}");
    }
    // The certificate is for `localhost`: verify-ca takes it by address, verify-full not.
    let by_address = |params: &str| pg.url("saga_app", Some(password), "127.0.0.1", params);
    who_and_how(&by_address(&format!("sslmode=verify-ca&{root}")))
        .await
        .expect("verify-ca by address");
    let err = database_refused(
        &by_address(&format!("sslmode=verify-full&{root}")),
        &[password],
        "verify-full with a name the certificate is not for",
    )
    .await;
    assert!(matches!(err, DatabaseError::Tls { .. }), "{err}");
    // Without the test CA, the system's roots do not trust the server.
    let err = database_refused(
        &pg.url(
            "saga_app",
            Some(password),
            "localhost",
            "sslmode=verify-full",
        ),
        &[password],
        "verify-full without the CA",
    )
    .await;
    assert!(matches!(err, DatabaseError::Tls { .. }), "{err}");

    // A client certificate instead of a password.
    let with_cert = format!(
        "sslmode=verify-full&{root}&sslcert={}&sslkey={}",
        secure.client_cert.display(),
        secure.client_key.display()
    );
    let (user, ssl) = who_and_how(&pg.url("saga_cert", None, "localhost", &with_cert))
        .await
        .expect("client certificate");
    assert_eq!((user.as_str(), ssl), ("saga_cert", true));
    // The same, from `DatabaseOptions::tls` instead of the URL, over the URL's own settings.
    let tls = PostgresTls {
        mode: Some(SslMode::VerifyFull),
        root_cert: Some(ca.ca_file()),
        client_cert: Some(secure.client_cert.clone()),
        client_key: Some(secure.client_key.clone()),
    };
    let (user, ssl) = who_and_how_with(
        &pg.url("saga_cert", None, "localhost", "sslmode=disable"),
        tls.clone(),
    )
    .await
    .expect("client certificate from the options");
    assert_eq!((user.as_str(), ssl), ("saga_cert", true));
    let wrong_name = who_and_how_with(&pg.url("saga_cert", None, "127.0.0.1", ""), tls.clone())
        .await
        .expect_err("verify-full from the options checks the name");
    assert!(
        matches!(wrong_name, DatabaseError::Tls { .. }),
        "{wrong_name}"
    );
    let missing = PostgresTls {
        client_key: Some(scratch.0.join("missing.key")),
        ..tls
    };
    let err = who_and_how_with(&pg.url("saga_cert", None, "localhost", ""), missing)
        .await
        .expect_err("a key file that is not there");
    assert!(matches!(err, DatabaseError::Tls { .. }), "{err}");
    database_refused(
        &pg.url(
            "saga_cert",
            None,
            "localhost",
            &format!("sslmode=verify-full&{root}"),
        ),
        &[],
        "a certificate role without its certificate",
    )
    .await;

    // Authentication and plain connections are refused at once, and say why.
    let err = database_refused(
        &pg.url(
            "saga_app",
            Some("not-the-password"),
            "localhost",
            "sslmode=require",
        ),
        &["not-the-password"],
        "a wrong password",
    )
    .await;
    assert!(err.to_string().contains("password"), "{err}");
    let err = database_refused(
        &pg.url("saga_app", Some(password), "localhost", "sslmode=disable"),
        &[password],
        "no TLS",
    )
    .await;
    assert!(err.to_string().contains("no encryption"), "{err}");

    // The demo, as the README shows it, with `sslmode=require`.
    let url = pg.url("saga_app", Some(password), "localhost", "sslmode=require");
    let output = Command::new(env!("CARGO_BIN_EXE_ftgo"))
        .args(["demo", "--database-url", &url])
        .env("RUST_LOG", "debug")
        .output()
        .expect("ftgo runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "ftgo demo failed: {stdout}{stderr}"
    );
    assert!(stdout.contains("APPROVED"), "{stdout}");
    assert!(
        !stdout.contains(password) && !stderr.contains(password),
        "the demo's output shows the database password"
    );
}

/// The services of run-distributed.sh, each with a PostgreSQL role of its own.
const SERVICES: [&str; 4] = ["order", "consumer", "kitchen", "accounting"];

/// The least-privilege roles of docs/security.md, in a cluster for a deployment with schema
/// prefix `prefix`: `ftgo_<service>` owns `<prefix>_<service>` (and migrates it) and may use
/// nothing else; `ftgo_api` (the API process, which hosts the order API and the console over
/// every service's database) may read and write the rows of the four, and create nothing;
/// `ftgo_console` may only read. Returns each role's password.
///
/// With `queue`, the SQL queue's schema `<prefix>_messages` belongs to `ftgo_queue` (no
/// login), whose members are the service roles and `ftgo_api`: each process `SET ROLE`s to
/// it there, so the queue's tables are `ftgo_queue`'s whoever created them.
fn least_privilege_roles(pg: &TlsPostgres, prefix: &str, queue: bool) -> Vec<(String, String)> {
    let roles: Vec<(String, String)> = SERVICES
        .iter()
        .map(|s| format!("ftgo_{s}"))
        .chain(["ftgo_api".to_owned(), "ftgo_console".to_owned()])
        .map(|role| {
            let password = secret(&format!("pg-{role}"));
            (role, password)
        })
        .collect();
    let mut sql = String::from("REVOKE ALL ON DATABASE test FROM PUBLIC;\n");
    for (role, password) in &roles {
        sql.push_str(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT CONNECT ON DATABASE test TO {role};\n"
        ));
    }
    for service in SERVICES {
        let schema = format!("\"{prefix}_{service}\"");
        sql.push_str(&format!(
            "CREATE SCHEMA {schema} AUTHORIZATION ftgo_{service}; \
             GRANT USAGE ON SCHEMA {schema} TO ftgo_api, ftgo_console; \
             ALTER DEFAULT PRIVILEGES FOR ROLE ftgo_{service} IN SCHEMA {schema} \
               GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ftgo_api; \
             ALTER DEFAULT PRIVILEGES FOR ROLE ftgo_{service} IN SCHEMA {schema} \
               GRANT USAGE, SELECT ON SEQUENCES TO ftgo_api; \
             ALTER DEFAULT PRIVILEGES FOR ROLE ftgo_{service} IN SCHEMA {schema} \
               GRANT SELECT ON TABLES TO ftgo_console;\n"
        ));
    }
    if queue {
        sql.push_str(&format!(
            "CREATE ROLE ftgo_queue NOLOGIN; \
             CREATE SCHEMA \"{prefix}_messages\" AUTHORIZATION ftgo_queue; \
             GRANT ftgo_queue TO ftgo_order, ftgo_consumer, ftgo_kitchen, ftgo_accounting, ftgo_api;\n"
        ));
    }
    pg.psql("test", &sql);
    roles
}

/// Waits (up to 60 s) until `url` answers 200.
async fn wait_for_ok(client: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready at {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The SQLSTATE of `sql` run as the role of `url`, `None` if it succeeded.
async fn refusal(url: &str, sql: &str) -> Option<String> {
    let pool = sqlx::PgPool::connect(url).await.expect("connects");
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await;
    pool.close().await;
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(err)) => err.code().map(|c| c.into_owned()),
        Err(other) => panic!("{sql}: {other}"),
    }
}

/// How the services of a least-privilege deployment exchange messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    /// NATS JetStream over TLS, with a client certificate and a password.
    Nats,
    /// The SQL queue in the shared schema `<prefix>_messages`, owned by `ftgo_queue`.
    SqlQueue,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftgo_distributed_over_tls_under_least_privilege_roles_keeps_its_secrets_hidden() {
    if enabled("FTGO distributed over TLS") {
        least_privilege_deployment(Over::Nats).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftgo_on_the_sql_queue_under_least_privilege_roles() {
    if enabled("FTGO on the SQL queue under least-privilege roles") {
        least_privilege_deployment(Over::SqlQueue).await;
    }
}

/// FTGO's services as separate processes, each under its own role, over a TLS-only
/// PostgreSQL; every order settles consistently, no role reaches what it should not, and no
/// secret shows in logs, metrics, health or command lines.
async fn least_privilege_deployment(over: Over) {
    let scratch = Scratch::new("ftgo");
    let ca = TestCa::new(&scratch.0);
    let secure = secure_postgres(&ca, &scratch.0);
    let pg = &secure.postgres;
    let nats_password = secret("nats-password");
    let nats = (over == Over::Nats).then(|| {
        NatsServer::start(
            &scratch.0,
            "ftgo-nats",
            &format!(
                "{}\nauthorization {{ users: [ {{ user: ftgo, password: \"{nats_password}\" }} ] }}",
                nats_tls_block(&ca, "ftgo-nats", true)
            ),
        )
    });
    let (client_cert, client_key) = ca.issue("ftgo-nats-client", "ftgo", &["ftgo"]);
    let tls = format!("sslmode=verify-full&sslrootcert={}", ca.ca_file().display());
    let url_of = |roles: &[(String, String)], role: &str| {
        let (_, password) = roles.iter().find(|(r, _)| r == role).expect("a role");
        pg.url(role, Some(password), "localhost", &tls)
    };
    let path = |p: &Path| p.display().to_string();
    // The test itself reads every schema as a superuser.
    let admin = secret("pg-admin");
    pg.psql(
        "postgres",
        &format!("ALTER ROLE postgres PASSWORD '{admin}'"),
    );
    let console_token = secret("console-token");
    let mut settings = vec![
        ("RUST_LOG", "debug,h2=info,hyper=info,tower=info".to_owned()),
        ("SAGA_CONSOLE_TOKEN", console_token.clone()),
    ];
    match over {
        Over::Nats => settings.extend([
            ("NATS_USER", "ftgo".to_owned()),
            ("NATS_PASSWORD", nats_password.clone()),
            ("NATS_CA", path(&ca.ca_file())),
            ("NATS_CERT", path(&client_cert)),
            ("NATS_KEY", path(&client_key)),
        ]),
        Over::SqlQueue => settings.extend([
            ("TRANSPORT", "sql".to_owned()),
            ("QUEUE_ROLE", "ftgo_queue".to_owned()),
        ]),
    }
    let nats_url = nats
        .as_ref()
        .map_or("nats://127.0.0.1:1".to_owned(), |n| n.url("tls"));
    let mut deployment = Deployment::configure(
        &pg.url("postgres", Some(&admin), "localhost", &tls),
        &nats_url,
        settings,
    );
    let roles = least_privilege_roles(pg, &deployment.prefix, over == Over::SqlQueue);
    for (name, value) in deployment.vars.iter_mut() {
        if *name == "DATABASE_URL" {
            *value = url_of(&roles, "ftgo_api");
        }
    }
    for (var, role) in [
        ("DATABASE_URL_ORDER", "ftgo_order"),
        ("DATABASE_URL_CONSUMER", "ftgo_consumer"),
        ("DATABASE_URL_KITCHEN", "ftgo_kitchen"),
        ("DATABASE_URL_ACCOUNTING", "ftgo_accounting"),
        ("DATABASE_URL_API", "ftgo_api"),
    ] {
        deployment.vars.push((var, url_of(&roles, role)));
    }
    deployment.vars.push(("API_NO_MIGRATE", "1".to_owned()));
    // The services migrate their own schemas; then the API, which may not, starts.
    let client = reqwest::Client::new();
    for (i, name) in ["order", "consumer", "kitchen-1", "kitchen-2", "accounting"]
        .into_iter()
        .enumerate()
    {
        deployment.script(&["start-one", name]);
        let ready = format!(
            "http://127.0.0.1:{}/health/ready",
            deployment.health_base + i as u16
        );
        wait_for_ok(&client, &ready, name).await;
    }
    deployment.script(&["start-one", "api"]);
    wait_for_ok(&client, &format!("{}/health/ready", deployment.base), "api").await;
    let placed = place_all(&deployment.base, 0..40).await;
    let orders = deployment.schema("order").await;
    wait_until_settled(&orders, 40, Duration::from_secs(120)).await;
    orders.close().await;
    assert_consistent(&deployment, &placed).await;

    // Each service ran under its own role, which cannot reach another service's tables or
    // make new schemas.
    let prefix = deployment.prefix.clone();
    for (role, others) in [
        ("ftgo_consumer", ["order", "kitchen"]),
        ("ftgo_kitchen", ["accounting", "consumer"]),
        ("ftgo_order", ["kitchen", "accounting"]),
    ] {
        let url = url_of(&roles, role);
        for other in others {
            for sql in [
                format!("SELECT count(*) FROM \"{prefix}_{other}\".saga_received"),
                format!("INSERT INTO \"{prefix}_{other}\".saga_dead_letters DEFAULT VALUES"),
            ] {
                assert_eq!(
                    refusal(&url, &sql).await.as_deref(),
                    Some("42501"),
                    "{role}: {sql}"
                );
            }
        }
        let intruder = format!("CREATE SCHEMA intruder_{role}");
        assert_eq!(
            refusal(&url, &intruder).await.as_deref(),
            Some("42501"),
            "{role}"
        );
        assert_eq!(
            refusal(&url, "CREATE TABLE public.intruder (x int)")
                .await
                .as_deref(),
            Some("42501"),
            "{role}"
        );
    }
    let own = format!("SELECT count(*) FROM \"{prefix}_kitchen\".saga_received");
    assert_eq!(refusal(&url_of(&roles, "ftgo_kitchen"), &own).await, None);

    // The console's role reads the sagas with the operator tool, and can change nothing.
    let console = url_of(&roles, "ftgo_console");
    let cli = |args: &[&str]| {
        let schema = format!("{prefix}_order");
        let mut all = vec![
            "saga",
            "--database-url",
            &console,
            "--schema",
            &schema,
            "--no-migrate",
        ];
        all.extend_from_slice(args);
        <saga_ops::cli::Cli as clap::Parser>::parse_from(all)
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = saga_ops::cli::run(
        cli(&["list", "--json", "--limit", "100"]),
        &mut out,
        &mut err,
    )
    .await
    .expect("the read-only role lists the sagas");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let listed: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(40), "{listed}");
    for sql in [
        format!("UPDATE \"{prefix}_order\".saga_instances SET status = 'failed'"),
        format!("DELETE FROM \"{prefix}_kitchen\".saga_received"),
        format!("CREATE TABLE \"{prefix}_order\".intruder (x int)"),
    ] {
        assert_eq!(
            refusal(&console, &sql).await.as_deref(),
            Some("42501"),
            "console: {sql}"
        );
    }

    if over == Over::SqlQueue {
        let owners = pg.psql(
            "test",
            &format!(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{prefix}_messages'"
            ),
        );
        assert_eq!(
            owners.trim(),
            "ftgo_queue",
            "the queue's tables belong to its role"
        );
    }

    // The API's role reads and writes rows, and creates nothing.
    let api = url_of(&roles, "ftgo_api");
    let read = format!("SELECT count(*) FROM \"{prefix}_accounting\".saga_received");
    assert_eq!(refusal(&api, &read).await, None);
    let create = format!("CREATE TABLE \"{prefix}_order\".intruder (x int)");
    assert_eq!(refusal(&api, &create).await.as_deref(), Some("42501"));

    // What an operator or a scraper sees: the console's pages, metrics and health of every
    // process.
    let mut seen = String::new();
    let saga = listed[0]["saga_id"].as_str().expect("a saga id").to_owned();
    for page in [
        "/console".to_owned(),
        "/console/stats".to_owned(),
        "/console/dead-letters".to_owned(),
        format!("/console/sagas/{saga}"),
    ] {
        let response = client
            .get(format!("{}{page}", deployment.base))
            .bearer_auth(&console_token)
            .send()
            .await
            .expect("the console answers");
        assert!(
            response.status().is_success(),
            "{page}: {}",
            response.status()
        );
        seen.push_str(&response.text().await.expect("a page"));
    }
    for port in deployment.health_base..deployment.health_base + 5 {
        for page in ["metrics", "health/ready"] {
            let url = format!("http://127.0.0.1:{port}/{page}");
            let body = client.get(&url).send().await.expect(&url);
            seen.push_str(&body.text().await.expect("a body"));
        }
    }
    seen.push_str(
        &client
            .get(format!("{}/metrics", deployment.base))
            .send()
            .await
            .expect("API metrics")
            .text()
            .await
            .expect("a body"),
    );
    // The processes' command lines (what `ps` shows every user of the machine).
    for entry in std::fs::read_dir(&deployment.run_dir)
        .expect("run dir")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "pid") {
            let pid = std::fs::read_to_string(entry.path()).expect("pid file");
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
            seen.push_str(&String::from_utf8_lossy(&cmdline));
        }
    }
    deployment.script(&["stop"]);
    let mut logs = String::new();
    for entry in std::fs::read_dir(&deployment.run_dir)
        .expect("run dir")
        .flatten()
    {
        logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    let started = match over {
        Over::Nats => "NATS connected",
        Over::SqlQueue => "DEBUG",
    };
    assert!(
        logs.contains(started),
        "the logs are not the processes' logs"
    );
    let secrets: Vec<(String, &str)> = roles
        .iter()
        .map(|(role, password)| (format!("{role}'s password"), password.as_str()))
        .chain([("the NATS password".to_owned(), nats_password.as_str())])
        .chain([("the test's superuser password".to_owned(), admin.as_str())])
        .chain([("the console's token".to_owned(), console_token.as_str())])
        .collect();
    for (what, value) in &secrets {
        assert!(!logs.contains(value), "the logs show {what}");
        assert!(
            !seen.contains(value),
            "metrics, health or a command line show {what}"
        );
    }
    // The cluster and the NATS server go with the scratch directory.
}
