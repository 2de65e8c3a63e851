//! Function configuration from the environment, read once per cold start.
//!
//! Only identifiers live here (secret ids, bus name); credentials are fetched
//! from Secrets Manager by the adapters and never pass through the environment.
//!
//! ecm-export's routes are loaded by [`load_export_routes`] from SSM Parameter
//! Store (`XECM_EXPORT_ROUTES_SSM_PATH`, the deployed setup) or, for small
//! local setups, from `XECM_EXPORT_ROUTES` (the JSON itself).

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

/// Where ecm-export's routes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportRoutesSource {
    /// `XECM_EXPORT_ROUTES_SSM_PATH`: every parameter under this path holds a
    /// JSON object with `routes` (a list) and/or `export_history`.
    SsmPath(String),
    /// `XECM_EXPORT_ROUTES`: the whole configuration as JSON (Lambda's 4 KB
    /// environment limit makes this a local-only choice).
    Inline(String),
}

impl ExportRoutesSource {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let path = get("XECM_EXPORT_ROUTES_SSM_PATH").filter(|v| !v.trim().is_empty());
        let inline = get("XECM_EXPORT_ROUTES").filter(|v| !v.trim().is_empty());
        match (path, inline) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                name: "XECM_EXPORT_ROUTES_SSM_PATH",
                reason: "XECM_EXPORT_ROUTES is set as well; set only one of them".into(),
            }),
            (Some(path), None) => {
                let path = path.trim().to_string();
                if !path.starts_with('/') || !path.ends_with('/') || path.len() < 3 {
                    return Err(ConfigError::Invalid {
                        name: "XECM_EXPORT_ROUTES_SSM_PATH",
                        reason: format!(
                            "{path:?} is not an SSM path; expected e.g. /xecm-sftp/export-routes/"
                        ),
                    });
                }
                Ok(Self::SsmPath(path))
            }
            (None, Some(json)) => Ok(Self::Inline(json)),
            (None, None) => Err(ConfigError::Missing {
                name: "XECM_EXPORT_ROUTES_SSM_PATH",
                hint: "the SSM Parameter Store path of the export routes, or XECM_EXPORT_ROUTES with the routes as JSON (see events/export-routes.json)",
            }),
        }
    }
}

/// Merges the route parameters found under an SSM path into one export
/// configuration: `routes` lists are concatenated in parameter-name order,
/// `export_history` must be given by exactly one parameter, and any other
/// key is refused. Errors name the parameter.
pub fn merge_route_parameters(
    path: &str,
    mut parameters: Vec<(String, String)>,
) -> Result<serde_json::Value, String> {
    if parameters.is_empty() {
        return Err(format!(
            "no parameters under SSM path {path}; expected one per export route and one with export_history"
        ));
    }
    parameters.sort();
    let mut routes = Vec::new();
    let mut history: Option<(String, serde_json::Value)> = None;
    for (name, value) in parameters {
        let doc: serde_json::Value = serde_json::from_str(&value)
            .map_err(|e| format!("SSM parameter {name} is not valid JSON: {e}"))?;
        let serde_json::Value::Object(map) = doc else {
            return Err(format!(
                "SSM parameter {name} must hold a JSON object with \"routes\" and/or \"export_history\""
            ));
        };
        for (key, value) in map {
            match key.as_str() {
                "routes" => match value {
                    serde_json::Value::Array(list) => routes.extend(list),
                    _ => return Err(format!("SSM parameter {name}: \"routes\" must be a list")),
                },
                "export_history" => {
                    if let Some((first, _)) = &history {
                        return Err(format!(
                            "SSM parameters {first} and {name} both set export_history; keep it in one"
                        ));
                    }
                    history = Some((name.clone(), value));
                }
                other => {
                    return Err(format!(
                        "SSM parameter {name}: unknown key {other:?} (expected \"routes\" or \"export_history\")"
                    ));
                }
            }
        }
    }
    let Some((_, history)) = history else {
        return Err(format!(
            "no parameter under SSM path {path} sets export_history"
        ));
    };
    Ok(serde_json::json!({"export_history": history, "routes": routes}))
}

/// Reads every parameter under `path` (recursively, decrypted), following
/// pagination. `Err((retryable, message))`.
pub async fn ssm_parameters_by_path(
    sdk: &aws_config::SdkConfig,
    path: &str,
) -> Result<Vec<(String, String)>, (bool, String)> {
    use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
    let client = aws_sdk_ssm::Client::new(sdk);
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let call = client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .set_next_token(next.take())
            .send();
        let page = match tokio::time::timeout(std::time::Duration::from_secs(25), call).await {
            Err(_) => return Err((true, format!("GetParametersByPath {path} timed out"))),
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                let retryable = match &e {
                    SdkError::TimeoutError(_)
                    | SdkError::DispatchFailure(_)
                    | SdkError::ResponseError(_) => true,
                    SdkError::ServiceError(se) => {
                        se.raw().status().is_server_error()
                            || matches!(
                                se.err().code(),
                                Some("ThrottlingException" | "InternalServerError")
                            )
                    }
                    _ => false,
                };
                return Err((
                    retryable,
                    format!(
                        "GetParametersByPath {path}: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(&e)
                    ),
                ));
            }
        };
        for p in page.parameters() {
            let name = p.name().unwrap_or_default().to_string();
            let value = p.value().unwrap_or_default().to_string();
            out.push((name, value));
        }
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// ecm-export's routes as JSON text, and where they came from (for error
/// messages). Called from the function's initialisation, so the routes are
/// read once per cold start. A configuration problem is permanent; an
/// unreachable Parameter Store is transient (the next invocation retries).
pub async fn load_export_routes(
    sdk: &aws_config::SdkConfig,
) -> Result<(String, String), crate::runtime::FunctionError> {
    use crate::runtime::FunctionError;
    let source = ExportRoutesSource::from_lookup(|name| std::env::var(name).ok())
        .map_err(|e| FunctionError::permanent("Config", e.to_string()))?;
    match source {
        ExportRoutesSource::Inline(json) => Ok(("XECM_EXPORT_ROUTES".to_string(), json)),
        ExportRoutesSource::SsmPath(path) => {
            let parameters =
                ssm_parameters_by_path(sdk, &path)
                    .await
                    .map_err(|(retryable, message)| {
                        if retryable {
                            FunctionError::transient("Config", message)
                        } else {
                            FunctionError::permanent("Config", message)
                        }
                    })?;
            let merged = merge_route_parameters(&path, parameters)
                .map_err(|message| FunctionError::permanent("Config", message))?;
            Ok((
                format!("export routes under SSM path {path}"),
                merged.to_string(),
            ))
        }
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

    #[test]
    fn export_routes_come_from_one_source() {
        assert_eq!(
            ExportRoutesSource::from_lookup(lookup(&[(
                "XECM_EXPORT_ROUTES_SSM_PATH",
                "/x/export-routes/"
            )])),
            Ok(ExportRoutesSource::SsmPath("/x/export-routes/".into()))
        );
        assert_eq!(
            ExportRoutesSource::from_lookup(lookup(&[("XECM_EXPORT_ROUTES", "{}")])),
            Ok(ExportRoutesSource::Inline("{}".into()))
        );
        let both = ExportRoutesSource::from_lookup(lookup(&[
            ("XECM_EXPORT_ROUTES_SSM_PATH", "/x/"),
            ("XECM_EXPORT_ROUTES", "{}"),
        ]))
        .unwrap_err();
        assert!(both.to_string().contains("only one"), "{both}");
        let none = ExportRoutesSource::from_lookup(lookup(&[])).unwrap_err();
        assert!(
            none.to_string().contains("XECM_EXPORT_ROUTES_SSM_PATH"),
            "{none}"
        );
        let bad = ExportRoutesSource::from_lookup(lookup(&[(
            "XECM_EXPORT_ROUTES_SSM_PATH",
            "export-routes",
        )]))
        .unwrap_err();
        assert!(bad.to_string().contains("not an SSM path"), "{bad}");
    }

    #[test]
    fn route_parameters_merge_into_the_sample_configuration() {
        let sample: serde_json::Value =
            serde_json::from_str(include_str!("../../../events/export-routes.json")).unwrap();
        let mut params = vec![(
            "/p/export_history".to_string(),
            serde_json::json!({"export_history": sample["export_history"]}).to_string(),
        )];
        for r in sample["routes"].as_array().unwrap() {
            params.push((
                format!("/p/routes/{}", r["name"].as_str().unwrap()),
                serde_json::json!({"routes": [r]}).to_string(),
            ));
        }
        // Parameter Store returns them in any order; the merge sorts by name.
        params.reverse();
        let merged = merge_route_parameters("/p/", params).unwrap();
        assert_eq!(merged["export_history"], sample["export_history"]);
        let names: Vec<_> = merged["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            ["contract-drafts", "customer-packages", "price-lists"]
        );
        crate::domain::export_route::ExportConfig::from_json(&merged.to_string())
            .expect("merged routes validate");
    }

    #[test]
    fn bad_route_parameters_are_named() {
        let p = |n: &str, v: &str| (n.to_string(), v.to_string());
        let e = merge_route_parameters("/p/", vec![]).unwrap_err();
        assert!(e.contains("no parameters under SSM path /p/"), "{e}");
        let e = merge_route_parameters("/p/", vec![p("/p/a", "{nope")]).unwrap_err();
        assert!(e.contains("/p/a is not valid JSON"), "{e}");
        let e = merge_route_parameters("/p/", vec![p("/p/a", r#"{"route":{}}"#)]).unwrap_err();
        assert!(
            e.contains("/p/a") && e.contains("unknown key \"route\""),
            "{e}"
        );
        let e = merge_route_parameters(
            "/p/",
            vec![
                p("/p/a", r#"{"export_history":{}}"#),
                p("/p/b", r#"{"export_history":{}}"#),
            ],
        )
        .unwrap_err();
        assert!(e.contains("/p/a and /p/b both set export_history"), "{e}");
        let e = merge_route_parameters("/p/", vec![p("/p/a", r#"{"routes":[]}"#)]).unwrap_err();
        assert!(e.contains("sets export_history"), "{e}");
        let e = merge_route_parameters("/p/", vec![p("/p/a", r#"{"routes":{}}"#)]).unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
    }
}
