//! The secrets port: secret strings by id (Secrets Manager in production),
//! and the typed, `secrecy`-wrapped forms of the project's JSON secrets
//! (SFTP, webhook; the ECM secret is parsed by `adapters::otcs::EcmSettings`).
//! Errors name the secret id and, for a bad secret, the field, but never a value.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{Map, Value};

/// Why a secret could not be had or used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {secret_id}: not found")]
    NotFound { secret_id: String },
    #[error("secret {secret_id}: access denied")]
    AccessDenied { secret_id: String },
    #[error("secret {secret_id}: has no string value (binary secrets are not supported)")]
    NotString { secret_id: String },
    /// `detail` says where parsing failed (line/column), never what was there.
    #[error("secret {secret_id}: not a JSON object: {detail}")]
    NotJson { secret_id: String, detail: String },
    #[error("secret {secret_id}: missing field `{field}`")]
    MissingField { secret_id: String, field: String },
    #[error("secret {secret_id}: field `{field}` is invalid: {reason}")]
    InvalidField {
        secret_id: String,
        field: String,
        reason: String,
    },
    #[error("secret {secret_id}: transient failure, a retry may help: {detail}")]
    Transient { secret_id: String, detail: String },
    #[error("secret {secret_id}: {detail}")]
    Other { secret_id: String, detail: String },
}

impl SecretsError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SecretsError::Transient { .. })
    }
}

/// Where secrets come from.
#[async_trait]
pub trait Secrets: Send + Sync {
    /// The secret's string value (for our secrets: a JSON document).
    async fn get(&self, secret_id: &str) -> Result<SecretString, SecretsError>;

    /// The secret's value read from its source again, bypassing any cache:
    /// for credentials the far side has just refused (a rotation).
    async fn refresh(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        self.get(secret_id).await
    }
}

/// Parses a secret with a typed parser, e.g.
/// `get_parsed(&secrets, id, WebhookSecret::from_json)`. (The SFTP secret is
/// parsed by the SFTP adapter: `adapters::sftp::SftpSettings::from_secret_json`.)
pub async fn get_parsed<T>(
    secrets: &dyn Secrets,
    secret_id: &str,
    parse: fn(&str, &str) -> Result<T, SecretsError>,
) -> Result<T, SecretsError> {
    use secrecy::ExposeSecret;
    let raw = secrets.get(secret_id).await?;
    parse(secret_id, raw.expose_secret())
}

/// Field access over a secret's JSON object with errors that name the secret
/// and the field. Values never appear in errors.
pub struct SecretFields<'a> {
    secret_id: &'a str,
    obj: Map<String, Value>,
}

impl<'a> SecretFields<'a> {
    pub fn parse(secret_id: &'a str, json: &str) -> Result<Self, SecretsError> {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(obj)) => Ok(Self { secret_id, obj }),
            Ok(_) => Err(SecretsError::NotJson {
                secret_id: secret_id.into(),
                detail: "the top level is not an object".into(),
            }),
            Err(e) => Err(SecretsError::NotJson {
                secret_id: secret_id.into(),
                // Only the position: serde_json's message can quote content.
                detail: format!("syntax error at line {} column {}", e.line(), e.column()),
            }),
        }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> SecretsError {
        SecretsError::InvalidField {
            secret_id: self.secret_id.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn missing(&self, field: &str) -> SecretsError {
        SecretsError::MissingField {
            secret_id: self.secret_id.into(),
            field: field.into(),
        }
    }

    /// A string field; absent, `null` and empty count as missing.
    pub fn opt_str(&self, field: &str) -> Result<Option<String>, SecretsError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.invalid(field, "expected a string")),
        }
    }

    pub fn str(&self, field: &str) -> Result<String, SecretsError> {
        self.opt_str(field)?.ok_or_else(|| self.missing(field))
    }

    pub fn opt_secret(&self, field: &str) -> Result<Option<SecretString>, SecretsError> {
        Ok(self.opt_str(field)?.map(SecretString::from))
    }

    pub fn secret(&self, field: &str) -> Result<SecretString, SecretsError> {
        Ok(SecretString::from(self.str(field)?))
    }

    pub fn opt_u16(&self, field: &str) -> Result<Option<u16>, SecretsError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| *v > 0)
                .map(Some)
                .ok_or_else(|| self.invalid(field, "expected a number 1-65535")),
            Some(_) => Err(self.invalid(field, "expected a number")),
        }
    }

    /// A non-empty list of non-empty strings.
    pub fn str_list(&self, field: &str) -> Result<Vec<String>, SecretsError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Err(self.missing(field)),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        _ => {
                            return Err(
                                self.invalid(field, format!("item {i} is not a non-empty string"))
                            );
                        }
                    }
                }
                if out.is_empty() {
                    return Err(self.invalid(field, "the list is empty"));
                }
                Ok(out)
            }
            Some(_) => Err(self.invalid(field, "expected a list of strings")),
        }
    }
}

/// The webhook secret: HMAC keys, current first, previous ones still accepted.
#[derive(Debug, Clone)]
pub struct WebhookSecret {
    pub hmac_keys: Vec<SecretString>,
}

impl WebhookSecret {
    pub fn from_json(secret_id: &str, json: &str) -> Result<Self, SecretsError> {
        let f = SecretFields::parse(secret_id, json)?;
        Ok(Self {
            hmac_keys: f
                .str_list("hmac_keys")?
                .into_iter()
                .map(SecretString::from)
                .collect(),
        })
    }
}

/// An in-memory [`Secrets`] for unit tests.
#[derive(Debug, Default)]
pub struct MemorySecrets {
    values: Mutex<HashMap<String, SecretString>>,
}

impl MemorySecrets {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, secret_id: &str, value: &str) {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(secret_id.into(), SecretString::from(value.to_string()));
    }
}

#[async_trait]
impl Secrets for MemorySecrets {
    async fn get(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(secret_id)
            .cloned()
            .ok_or_else(|| SecretsError::NotFound {
                secret_id: secret_id.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn not_json_does_not_leak_content() {
        let err = WebhookSecret::from_json("wh", "hunter2-not-json").unwrap_err();
        assert!(matches!(err, SecretsError::NotJson { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn webhook_keys_keep_their_order() {
        let w = WebhookSecret::from_json("wh", r#"{"hmac_keys":["cur","prev"]}"#).unwrap();
        let keys: Vec<&str> = w.hmac_keys.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, ["cur", "prev"]);
        assert!(WebhookSecret::from_json("wh", r#"{"hmac_keys":[]}"#).is_err());
    }
}
