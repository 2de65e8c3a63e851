//! SFTP connection settings, parsed from the shared-contract secret JSON:
//! `{"host","port","username","host_key_sha256":[..],"private_key","passphrase","password","root","client"}`.
//!
//! Fields are extracted one by one rather than through a derived
//! `Deserialize`: serde's messages quote the offending value, which for this
//! secret may be a key or a password. Our errors name the field only.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::paths::{PathError, RemoteRoot};

/// Why an SFTP secret could not be used. Permanent until the secret is fixed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("secret {secret_id}: not a JSON object")]
    NotJsonObject { secret_id: String },
    #[error("secret {secret_id}: field `{field}` is missing")]
    Missing {
        secret_id: String,
        field: &'static str,
    },
    #[error("secret {secret_id}: field `{field}` is invalid: {why}")]
    Invalid {
        secret_id: String,
        field: &'static str,
        why: &'static str,
    },
    #[error("secret {secret_id}: needs `private_key` or `password`")]
    NoCredential { secret_id: String },
    #[error("invalid SFTP root: {0}")]
    Root(#[from] PathError),
}

/// A pinned host key fingerprint in OpenSSH's `SHA256:<base64, no padding>`
/// form (what `ssh-keygen -lf key.pub -E sha256` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyPin(String);

impl HostKeyPin {
    /// Accepts `SHA256:` + 43 base64 characters; trailing `=` padding is
    /// tolerated and dropped so pins copied from other tools still compare.
    pub fn parse(s: &str) -> Option<Self> {
        let b64 = s.strip_prefix("SHA256:")?.trim_end_matches('=');
        let ok = b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        ok.then(|| Self(format!("SHA256:{b64}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How we authenticate. Secrets are `SecretString`: redacted in `Debug`.
#[derive(Debug, Clone)]
pub enum SftpAuth {
    /// OpenSSH or PEM private key text, optionally passphrase-protected.
    Key {
        pem: SecretString,
        passphrase: Option<SecretString>,
    },
    Password(SecretString),
}

/// Which SSH implementation talks to the server (secret field `client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SftpClient {
    /// libssh2 through the `ssh2` crate: the default. Addresses any file
    /// name, including names that are not UTF-8.
    #[default]
    Ssh2,
    /// Pure Rust: `russh` for SSH and our own SFTP v3 client, with
    /// pipelined reads and writes at a fraction of libssh2's CPU cost.
    Russh,
}

impl SftpClient {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ssh2 => "ssh2",
            Self::Russh => "russh",
        }
    }
}

/// Everything needed to open SFTP sessions to one server.
#[derive(Debug, Clone)]
pub struct SftpSettings {
    /// The SSH implementation to use.
    pub client: SftpClient,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Accepted host keys; several allow rotation. Never empty.
    pub host_key_sha256: Vec<HostKeyPin>,
    pub auth: SftpAuth,
    /// Bound on the TCP connect and on each blocking step of the handshake
    /// and authentication (so a connect takes at most about 3× this).
    pub connect_timeout: Duration,
    /// Per blocking libssh2 call (one read/write block, one request).
    pub io_timeout: Duration,
    /// The directory this store is confined to.
    pub root: RemoteRoot,
    /// Sessions (one per blocking thread) the store may open in parallel.
    pub max_sessions: usize,
    /// A pooled session idle for longer is probed (one round trip) before
    /// reuse, so a session that died while idle (Lambda freeze, server idle
    /// timeout) is replaced before a non-idempotent operation runs on it.
    pub idle_probe_after: Duration,
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_SESSIONS: usize = 4;
pub const DEFAULT_IDLE_PROBE_AFTER: Duration = Duration::from_secs(10);

fn opt_str<'a>(
    m: &'a Map<String, Value>,
    secret_id: &str,
    field: &'static str,
) -> Result<Option<&'a str>, SettingsError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(SettingsError::Invalid {
            secret_id: secret_id.to_owned(),
            field,
            why: "must be a string",
        }),
    }
}

fn req_str<'a>(
    m: &'a Map<String, Value>,
    secret_id: &str,
    field: &'static str,
) -> Result<&'a str, SettingsError> {
    match opt_str(m, secret_id, field)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(SettingsError::Invalid {
            secret_id: secret_id.to_owned(),
            field,
            why: "must not be empty",
        }),
        None => Err(SettingsError::Missing {
            secret_id: secret_id.to_owned(),
            field,
        }),
    }
}

impl SftpSettings {
    /// Parses the shared-contract secret. The optional `root` defaults to `/`, timeouts
    /// and session count to the `DEFAULT_*` values; change them on the
    /// returned value (the route decides the root).
    pub fn from_secret_json(secret_id: &str, json: &str) -> Result<Self, SettingsError> {
        let not_obj = || SettingsError::NotJsonObject {
            secret_id: secret_id.to_owned(),
        };
        let v: Value = serde_json::from_str(json).map_err(|_| not_obj())?;
        let m = v.as_object().ok_or_else(not_obj)?;
        let invalid = |field, why| SettingsError::Invalid {
            secret_id: secret_id.to_owned(),
            field,
            why,
        };

        let host = req_str(m, secret_id, "host")?.to_owned();
        let port = match m.get("port") {
            None | Some(Value::Null) => 22,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("port", "must be an integer 1..=65535"))?,
            Some(_) => return Err(invalid("port", "must be an integer 1..=65535")),
        };
        let username = req_str(m, secret_id, "username")?.to_owned();

        let pins = match m.get("host_key_sha256") {
            None | Some(Value::Null) => {
                return Err(SettingsError::Missing {
                    secret_id: secret_id.to_owned(),
                    field: "host_key_sha256",
                });
            }
            // A single string is accepted too: an easy mistake to forgive.
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .ok_or_else(|| invalid("host_key_sha256", "must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(invalid("host_key_sha256", "must be a list of strings")),
        };
        let host_key_sha256 = pins
            .iter()
            .map(|p| {
                HostKeyPin::parse(p.trim()).ok_or_else(|| {
                    invalid(
                        "host_key_sha256",
                        "each entry must look like SHA256:<43 base64 characters>",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if host_key_sha256.is_empty() {
            // No "accept unknown" mode: an empty list would be exactly that.
            return Err(invalid("host_key_sha256", "must pin at least one key"));
        }

        let private_key = opt_str(m, secret_id, "private_key")?.filter(|s| !s.trim().is_empty());
        let passphrase = opt_str(m, secret_id, "passphrase")?.filter(|s| !s.is_empty());
        let password = opt_str(m, secret_id, "password")?.filter(|s| !s.is_empty());
        let auth = match (private_key, password) {
            (Some(pem), _) => SftpAuth::Key {
                pem: SecretString::from(pem.to_owned()),
                passphrase: passphrase.map(|p| SecretString::from(p.to_owned())),
            },
            (None, Some(pw)) => SftpAuth::Password(SecretString::from(pw.to_owned())),
            (None, None) => {
                return Err(SettingsError::NoCredential {
                    secret_id: secret_id.to_owned(),
                });
            }
        };

        // The directory the account may use (e.g. a chroot's writable
        // `/data`, or a home directory); routes' paths resolve below it.
        let root = match opt_str(m, secret_id, "root")? {
            None => RemoteRoot::parse("/")?,
            Some(r) => RemoteRoot::parse(r.trim())
                .map_err(|_| invalid("root", "must be an absolute path without `..` or NUL"))?,
        };

        let client = match opt_str(m, secret_id, "client")?.map(str::trim) {
            None | Some("" | "ssh2") => SftpClient::Ssh2,
            Some("russh") => SftpClient::Russh,
            Some(_) => return Err(invalid("client", "must be \"ssh2\" or \"russh\"")),
        };

        Ok(Self {
            client,
            host,
            port,
            username,
            host_key_sha256,
            auth,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            root,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_probe_after: DEFAULT_IDLE_PROBE_AFTER,
        })
    }

    /// Sets the root from a route's configuration.
    pub fn with_root(mut self, root: &str) -> Result<Self, SettingsError> {
        self.root = RemoteRoot::parse(root)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const PIN: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

    fn parse(json: &str) -> Result<SftpSettings, SettingsError> {
        SftpSettings::from_secret_json("partner-a", json)
    }

    #[test]
    fn full_secret_with_key_parses_and_port_defaults_to_22() {
        let s = parse(&format!(
            r#"{{"host":"h","username":"u","host_key_sha256":["{PIN}"],"private_key":"-----BEGIN OPENSSH PRIVATE KEY-----x","passphrase":null,"password":null}}"#
        ))
        .unwrap();
        assert_eq!(s.port, 22);
        assert_eq!(s.host_key_sha256[0].as_str(), PIN);
        match &s.auth {
            SftpAuth::Key { pem, passphrase } => {
                assert!(pem.expose_secret().starts_with("-----BEGIN"));
                assert!(passphrase.is_none());
            }
            SftpAuth::Password(_) => panic!("expected key auth"),
        }
    }

    #[test]
    fn root_comes_from_the_secret_and_is_checked() {
        let base =
            format!(r#""host":"h","username":"u","host_key_sha256":["{PIN}"],"password":"p""#);
        let s = parse(&format!(r#"{{{base},"root":"/data"}}"#)).unwrap();
        assert_eq!(s.root.path().to_string_lossy(), "/data");
        let s = parse(&format!("{{{base}}}")).unwrap();
        assert_eq!(s.root.path().to_string_lossy(), "/");
        let err = parse(&format!(r#"{{{base},"root":"/data/../etc"}}"#)).unwrap_err();
        assert!(err.to_string().contains("`root`"), "{err}");
    }

    #[test]
    fn client_defaults_to_ssh2_and_names_a_bad_value() {
        let base =
            format!(r#""host":"h","username":"u","host_key_sha256":["{PIN}"],"password":"p""#);
        assert_eq!(
            parse(&format!("{{{base}}}")).unwrap().client,
            SftpClient::Ssh2
        );
        let s = parse(&format!(r#"{{{base},"client":"russh"}}"#)).unwrap();
        assert_eq!(s.client, SftpClient::Russh);
        let err = parse(&format!(r#"{{{base},"client":"putty"}}"#)).unwrap_err();
        assert!(err.to_string().contains("`client`"), "{err}");
    }

    #[test]
    fn password_secret_parses_and_debug_hides_it() {
        let s = parse(&format!(
            r#"{{"host":"h","port":2222,"username":"u","host_key_sha256":["{PIN}="],"password":"hunter2"}}"#
        ))
        .unwrap();
        assert_eq!(s.port, 2222);
        assert_eq!(s.host_key_sha256[0].as_str(), PIN, "padding dropped");
        assert!(matches!(s.auth, SftpAuth::Password(_)));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn errors_name_the_field_and_never_the_value() {
        let cases = [
            (r#"{"username":"u"}"#.to_owned(), "`host`"),
            (
                r#"{"host":"h","host_key_sha256":[]}"#.to_owned(),
                "`username`",
            ),
            (
                r#"{"host":"h","username":"u"}"#.to_owned(),
                "`host_key_sha256`",
            ),
            (
                r#"{"host":"h","username":"u","host_key_sha256":[],"password":"p"}"#.to_owned(),
                "`host_key_sha256`",
            ),
            (
                r#"{"host":"h","username":"u","host_key_sha256":["md5:aa"],"password":"p"}"#
                    .to_owned(),
                "`host_key_sha256`",
            ),
            (
                format!(
                    r#"{{"host":"h","port":"22","username":"u","host_key_sha256":["{PIN}"],"password":"p"}}"#
                ),
                "`port`",
            ),
            (
                format!(
                    r#"{{"host":"h","port":70000,"username":"u","host_key_sha256":["{PIN}"],"password":"p"}}"#
                ),
                "`port`",
            ),
            (
                format!(
                    r#"{{"host":"h","username":"u","host_key_sha256":["{PIN}"],"password":42}}"#
                ),
                "`password`",
            ),
        ];
        for (json, field) in cases {
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains(field), "{json} -> {err}");
            assert!(err.contains("partner-a"), "{err}");
        }
        let err = parse(&format!(
            r#"{{"host":"h","username":"u","host_key_sha256":["{PIN}"]}}"#
        ))
        .unwrap_err();
        assert!(matches!(err, SettingsError::NoCredential { .. }));
        let err = parse(r#"{"password":"hunter2" "#).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
