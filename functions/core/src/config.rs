//! Function configuration from the environment, read once per cold start.
//!
//! Only identifiers live here (secret ids, bus name); credentials are fetched
//! from Secrets Manager by the adapters and never pass through the environment.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {name} is not set ({hint})")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// What every function needs from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Secrets Manager id (name or ARN) of the Content Server secret.
    pub ecm_secret_id: String,
    /// EventBridge bus for audit events.
    pub event_bus: String,
    /// Short SFTP secret names used in routes → secret ids. A route's
    /// `sftp_secret` that is not in this map is used as the secret id itself.
    pub sftp_secrets: BTreeMap<String, String>,
    /// Webhook HMAC key secret (ecm-export only).
    pub webhook_secret_id: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The same as [`Config::from_env`] over any lookup, so tests need not
    /// touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str, hint: &'static str| -> Result<String, ConfigError> {
            match get(name) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(ConfigError::Missing { name, hint }),
            }
        };
        let ecm_secret_id = required(
            "XECM_ECM_SECRET_ID",
            "the Secrets Manager id of the Content Server secret",
        )?;
        let event_bus = required(
            "XECM_EVENT_BUS",
            "the EventBridge bus name for audit events",
        )?;
        let sftp_secrets = match get("XECM_SFTP_SECRETS") {
            None => BTreeMap::new(),
            Some(text) if text.trim().is_empty() => BTreeMap::new(),
            Some(text) => serde_json::from_str::<BTreeMap<String, String>>(&text).map_err(|e| {
                ConfigError::Invalid {
                    name: "XECM_SFTP_SECRETS",
                    reason: format!("expected a JSON object of secret name → secret id: {e}"),
                }
            })?,
        };
        let webhook_secret_id = get("XECM_WEBHOOK_SECRET_ID").filter(|v| !v.trim().is_empty());
        Ok(Self {
            ecm_secret_id,
            event_bus,
            sftp_secrets,
            webhook_secret_id,
        })
    }

    /// The secret id for a route's `sftp_secret` name.
    pub fn sftp_secret_id<'a>(&'a self, name: &'a str) -> &'a str {
        self.sftp_secrets
            .get(name)
            .map(String::as_str)
            .unwrap_or(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_variable_is_named() {
        let err = Config::from_lookup(lookup(&[("XECM_EVENT_BUS", "bus")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable XECM_ECM_SECRET_ID is not set (the Secrets Manager id of the Content Server secret)"
        );
    }

    #[test]
    fn sftp_secret_names_map_to_ids_or_pass_through() {
        let cfg = Config::from_lookup(lookup(&[
            ("XECM_ECM_SECRET_ID", "ecm"),
            ("XECM_EVENT_BUS", "bus"),
            (
                "XECM_SFTP_SECRETS",
                r#"{"acme":"arn:aws:secretsmanager:x:1:secret:acme"}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(
            cfg.sftp_secret_id("acme"),
            "arn:aws:secretsmanager:x:1:secret:acme"
        );
        assert_eq!(cfg.sftp_secret_id("other/id"), "other/id");
    }

    #[test]
    fn malformed_secret_map_is_refused_with_reason() {
        let err = Config::from_lookup(lookup(&[
            ("XECM_ECM_SECRET_ID", "ecm"),
            ("XECM_EVENT_BUS", "bus"),
            ("XECM_SFTP_SECRETS", "[1,2]"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("XECM_SFTP_SECRETS"), "{err}");
    }
}
