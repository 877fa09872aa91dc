//! nats-server configuration for operator mode, rendered as text.
//!
//! The configuration trusts one operator JWT, names the system account, and resolves accounts
//! with the server's built-in full resolver: the resolver keeps every account JWT in its
//! directory and accepts updated JWTs from system account users on `$SYS.REQ.CLAIMS.UPDATE`
//! (see [`push_account_jwt`](super::push_account_jwt)). The account JWTs are preloaded, and a
//! pushed JWT replaces the preloaded one, also across restarts, because the resolver stores it.
//!
//! Both listeners use TLS: the client port with `tls {}` and the WebSocket port with its own
//! `tls {}`. With TLS configured on the client port, nats-server 2.x rejects clients that do not
//! start TLS.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use nkeys::KeyPairType;

use super::{check_public_key, NatsSecurityError};

/// Seconds the server waits for a client's TLS handshake. The server's default of 0.5 s is
/// tight for clients on slow links.
pub const TLS_HANDSHAKE_TIMEOUT_SECS: u32 = 2;

/// Certificate and private key files, in PEM, of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate, optionally followed by intermediate certificates.
    pub certificate: PathBuf,
    /// The certificate's private key.
    pub private_key: PathBuf,
}

/// An account JWT to load at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadedAccount {
    /// The account's public key.
    pub public_key: String,
    /// The account JWT, signed by the operator.
    pub jwt: String,
}

/// Settings that [`render_server_config`] writes into the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address both listeners bind, such as `0.0.0.0` or `127.0.0.1`.
    pub host: String,
    /// Port of the NATS client listener (the NATS default is 4222).
    pub client_port: u16,
    /// Port of the WebSocket listener (443 lets nodes pass firewalls that only allow HTTPS).
    pub websocket_port: u16,
    /// TLS files of the client listener.
    pub client_tls: TlsFiles,
    /// TLS files of the WebSocket listener.
    pub websocket_tls: TlsFiles,
    /// The operator JWT.
    pub operator_jwt: String,
    /// Public key of the system account.
    pub system_account: String,
    /// Account JWTs to load at start; include the system account's.
    pub accounts: Vec<PreloadedAccount>,
    /// Directory of the full resolver's account JWT files.
    pub resolver_dir: PathBuf,
    /// Directory of the JetStream store.
    pub jetstream_dir: PathBuf,
    /// Most file storage JetStream offers, in bytes. Without it nats-server offers 75 % of the
    /// free disk space at start, so an account reservation could fail on a fuller disk.
    pub max_file_store: u64,
    /// Most memory storage JetStream offers, in bytes.
    pub max_memory_store: u64,
}

/// Renders `config` as nats-server configuration text.
///
/// Every value is checked before it is written, so a path or key cannot break out of its quoted
/// string and add settings.
pub fn render_server_config(config: &ServerConfig) -> Result<String, NatsSecurityError> {
    check_host(&config.host)?;
    check_token("operator JWT", &config.operator_jwt)?;
    check_public_key(
        "system account",
        &config.system_account,
        KeyPairType::Account,
    )?;
    for account in &config.accounts {
        check_public_key(
            "preloaded account",
            &account.public_key,
            KeyPairType::Account,
        )?;
        check_token("account JWT", &account.jwt)?;
    }
    // The resolver of a single server knows only preloaded and pushed accounts, and pushes come
    // from system account users, so the system account must be preloaded.
    if !config
        .accounts
        .iter()
        .any(|account| account.public_key == config.system_account)
    {
        return Err(NatsSecurityError::ConfigValue {
            what: "system account",
            value: config.system_account.clone(),
            reason: "its JWT is missing from the preloaded accounts; add it",
        });
    }

    let mut text = String::new();
    // Writing to a String cannot fail, so the results of writeln! are ignored below.
    let _ = writeln!(
        text,
        "# nats-server configuration for Warden: operator mode, TLS only."
    );
    let _ = writeln!(text, "host: \"{}\"", config.host);
    let _ = writeln!(text, "port: {}", config.client_port);
    let _ = writeln!(text);
    let _ = writeln!(text, "tls {{");
    write_tls_files(&mut text, "  ", &config.client_tls)?;
    let _ = writeln!(text, "  timeout: {TLS_HANDSHAKE_TIMEOUT_SECS}");
    let _ = writeln!(text, "}}");
    let _ = writeln!(text);
    let _ = writeln!(text, "websocket {{");
    let _ = writeln!(text, "  host: \"{}\"", config.host);
    let _ = writeln!(text, "  port: {}", config.websocket_port);
    let _ = writeln!(text, "  tls {{");
    write_tls_files(&mut text, "    ", &config.websocket_tls)?;
    let _ = writeln!(text, "  }}");
    let _ = writeln!(text, "}}");
    let _ = writeln!(text);
    let _ = writeln!(text, "jetstream {{");
    let _ = writeln!(
        text,
        "  store_dir: \"{}\"",
        quotable_path("JetStream directory", &config.jetstream_dir)?
    );
    // Every write reaches the disk before the broker acknowledges it. The default syncs every
    // 2 minutes, so a power loss could drop acknowledged tasks and reports.
    let _ = writeln!(text, "  sync_interval: always");
    let _ = writeln!(text, "  max_file_store: {}", config.max_file_store);
    let _ = writeln!(text, "  max_memory_store: {}", config.max_memory_store);
    let _ = writeln!(text, "}}");
    let _ = writeln!(text);
    let _ = writeln!(text, "operator: \"{}\"", config.operator_jwt);
    let _ = writeln!(text, "system_account: \"{}\"", config.system_account);
    let _ = writeln!(text);
    let _ = writeln!(text, "resolver {{");
    let _ = writeln!(text, "  type: full");
    let _ = writeln!(
        text,
        "  dir: \"{}\"",
        quotable_path("resolver directory", &config.resolver_dir)?
    );
    let _ = writeln!(text, "  allow_delete: false");
    let _ = writeln!(text, "}}");
    let _ = writeln!(text);
    let _ = writeln!(text, "resolver_preload {{");
    for account in &config.accounts {
        let _ = writeln!(text, "  \"{}\": \"{}\"", account.public_key, account.jwt);
    }
    let _ = writeln!(text, "}}");
    Ok(text)
}

fn write_tls_files(
    text: &mut String,
    indent: &str,
    files: &TlsFiles,
) -> Result<(), NatsSecurityError> {
    let certificate = quotable_path("certificate file", &files.certificate)?;
    let private_key = quotable_path("private key file", &files.private_key)?;
    let _ = writeln!(text, "{indent}cert_file: \"{certificate}\"");
    let _ = writeln!(text, "{indent}key_file: \"{private_key}\"");
    Ok(())
}

/// Returns `path` as text that can stand between double quotes in the configuration.
fn quotable_path<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, NatsSecurityError> {
    let invalid = |reason| NatsSecurityError::ConfigValue {
        what,
        value: path.display().to_string(),
        reason,
    };
    let text = path
        .to_str()
        .ok_or_else(|| invalid("it is not valid UTF-8"))?;
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.contains(['"', '\\', '$']) || text.contains(char::is_control) {
        return Err(invalid(
            "it contains a quote, backslash, $ or control character; use a path without them",
        ));
    }
    Ok(text)
}

/// Checks that a JWT consists of base64url characters and dots only.
fn check_token(what: &'static str, token: &str) -> Result<(), NatsSecurityError> {
    let valid = !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(NatsSecurityError::ConfigValue {
            what,
            value: token.chars().take(32).collect(),
            reason: "a JWT contains only base64url characters and dots",
        });
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), NatsSecurityError> {
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
    if !valid {
        return Err(NatsSecurityError::ConfigValue {
            what: "listen host",
            value: host.to_owned(),
            reason: "use an IP address or a host name",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_security::BrokerKeys;
    use rand::SeedableRng;

    fn config() -> ServerConfig {
        let keys = BrokerKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(21)).unwrap();
        let tls = TlsFiles {
            certificate: PathBuf::from("/etc/warden/nats/server.pem"),
            private_key: PathBuf::from("/etc/warden/nats/server.key"),
        };
        ServerConfig {
            host: "127.0.0.1".to_owned(),
            client_port: 4222,
            websocket_port: 8443,
            client_tls: tls.clone(),
            websocket_tls: tls,
            operator_jwt: "eyJ0eXAi.eyJqdGki.c2lnbmF0dXJl".to_owned(),
            system_account: keys.system_account.public_key(),
            accounts: vec![
                PreloadedAccount {
                    public_key: keys.system_account.public_key(),
                    jwt: "eyJ0eXAi.eyJzeXMi.c2ln".to_owned(),
                },
                PreloadedAccount {
                    public_key: keys.app_account.public_key(),
                    jwt: "eyJ0eXAi.eyJhcHAi.c2ln".to_owned(),
                },
            ],
            resolver_dir: PathBuf::from("/var/lib/nats/jwt"),
            jetstream_dir: PathBuf::from("/var/lib/nats/jetstream"),
            max_file_store: 1 << 30,
            max_memory_store: 256 << 20,
        }
    }

    #[test]
    fn renders_operator_mode_with_tls() {
        let config = config();
        let text = render_server_config(&config).unwrap();
        for expected in [
            "port: 4222",
            "cert_file: \"/etc/warden/nats/server.pem\"",
            "key_file: \"/etc/warden/nats/server.key\"",
            "port: 8443",
            "store_dir: \"/var/lib/nats/jetstream\"",
            "sync_interval: always",
            "max_file_store: 1073741824",
            "max_memory_store: 268435456",
            "operator: \"eyJ0eXAi.eyJqdGki.c2lnbmF0dXJl\"",
            "type: full",
            "dir: \"/var/lib/nats/jwt\"",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(text.contains(&format!("system_account: \"{}\"", config.system_account)));
        assert!(text.contains(&format!(
            "\"{}\": \"eyJ0eXAi.eyJhcHAi.c2ln\"",
            config.accounts[1].public_key
        )));
        assert_eq!(text.matches("tls {").count(), 2, "{text}");
    }

    #[test]
    fn quote_in_path_rejected() {
        let mut config = config();
        config.resolver_dir = PathBuf::from("/tmp/x\"\n}\nauthorization {");
        let error = render_server_config(&config).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::ConfigValue { .. }),
            "{error}"
        );
    }

    #[test]
    fn non_jwt_operator_rejected() {
        let mut config = config();
        config.operator_jwt = "x\" }".to_owned();
        assert!(render_server_config(&config).is_err());
    }

    #[test]
    fn missing_system_account_jwt_rejected() {
        let mut config = config();
        config.accounts.clear();
        let error = render_server_config(&config).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn non_account_key_rejected() {
        let mut config = config();
        config.system_account = "UABC".to_owned();
        assert!(render_server_config(&config).is_err());
    }
}
