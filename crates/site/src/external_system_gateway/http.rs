//! External systems over HTTP: definitions from the site config, request
//! building (path templates, query or JSON body, auth), one attempt with a
//! per-system timeout and a response size limit, and the transient/permanent
//! table of SPEC §4.2.

use std::{collections::HashMap, time::Duration};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sitelink_commons::TrackedOperationId;

use super::{ErrorClass, GatewayError};
use crate::store_and_forward::RetryPolicy;

/// `[external_systems.NAME]` in site.toml.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSystemConfig {
    pub base_url: String,
    #[serde(default)]
    pub auth: Auth,
    /// Whole-request timeout of one attempt, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Larger responses are an error (they are never buffered in memory).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    #[serde(default)]
    pub retry: RetryPolicy,
    pub methods: HashMap<String, MethodConfig>,
    /// Replay this system's parked calls at this pace when it comes back
    /// (off when absent).
    #[serde(default)]
    pub replay_parked_on_recovery: Option<super::recovery::ReplayPace>,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_response_bytes() -> usize {
    1024 * 1024
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    ApiKey {
        header: String,
        value: String,
    },
}

/// `[external_systems.NAME.methods.METHOD]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// GET, POST, PUT, PATCH or DELETE.
    pub http_method: String,
    /// Path below the base URL; `{name}` takes the parameter `name`
    /// (percent-encoded) and removes it from the rest.
    pub path: String,
    /// Where the other parameters go: `query` or `body` (JSON). Default:
    /// `query` for GET and DELETE, `body` otherwise.
    pub params: Option<ParamsIn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamsIn {
    Query,
    Body,
}

impl ExternalSystemConfig {
    /// Checks values; the error names the key below the system.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let url = Url::parse(&self.base_url)
            .map_err(|e| ("base_url".to_owned(), format!("{e}: {:?}", self.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err((
                "base_url".into(),
                format!("scheme must be http or https, got {:?}", url.scheme()),
            ));
        }
        self.retry.validate().map_err(|m| ("retry".to_owned(), m))?;
        for (name, m) in &self.methods {
            parse_method(&m.http_method).map_err(|e| (format!("methods.{name}.http_method"), e))?;
        }
        Ok(())
    }
}

fn parse_method(m: &str) -> Result<Method, String> {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(format!(
            "unsupported HTTP method {m:?} (GET, POST, PUT, PATCH or DELETE)"
        )),
    }
}

/// What `ExternalSystem.Call` returns to a script.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpResponse {
    pub status: u16,
    /// The parsed JSON body (`null` for an empty body).
    pub body: Value,
}

struct MethodDef {
    method: Method,
    path: String,
    params_in: ParamsIn,
}

struct System {
    base_url: Url,
    client: reqwest::Client,
    auth: Auth,
    max_response_bytes: usize,
    retry: RetryPolicy,
    methods: HashMap<String, MethodDef>,
}

/// All external systems of the site.
pub struct HttpSystems {
    systems: HashMap<String, System>,
}

impl HttpSystems {
    pub fn new(
        configs: &std::collections::BTreeMap<String, ExternalSystemConfig>,
    ) -> anyhow::Result<Self> {
        let mut systems = HashMap::new();
        for (name, c) in configs {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(c.timeout_ms))
                .connect_timeout(Duration::from_millis(c.timeout_ms))
                .build()?;
            let mut base_url = Url::parse(&c.base_url)?;
            if !base_url.path().ends_with('/') {
                base_url.set_path(&format!("{}/", base_url.path()));
            }
            let methods = c
                .methods
                .iter()
                .map(|(m, mc)| {
                    let method = parse_method(&mc.http_method).map_err(anyhow::Error::msg)?;
                    let default_in = if matches!(method, Method::GET | Method::DELETE) {
                        ParamsIn::Query
                    } else {
                        ParamsIn::Body
                    };
                    Ok((
                        m.clone(),
                        MethodDef {
                            method,
                            path: mc.path.trim_start_matches('/').to_owned(),
                            params_in: mc.params.unwrap_or(default_in),
                        },
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            systems.insert(
                name.clone(),
                System {
                    base_url,
                    client,
                    auth: c.auth.clone(),
                    max_response_bytes: c.max_response_bytes,
                    retry: c.retry,
                    methods,
                },
            );
        }
        Ok(Self { systems })
    }

    fn resolve(&self, system: &str, method: &str) -> Result<(&System, &MethodDef), GatewayError> {
        let sys = self
            .systems
            .get(system)
            .ok_or_else(|| GatewayError::UnknownSystem(system.into()))?;
        let m = sys
            .methods
            .get(method)
            .ok_or_else(|| GatewayError::UnknownMethod {
                system: system.into(),
                method: method.into(),
            })?;
        Ok((sys, m))
    }

    /// Validates a call without making it (before a cached call is recorded).
    pub fn check(
        &self,
        system: &str,
        method: &str,
        params: &Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let (sys, m) = self.resolve(system, method)?;
        build_url(sys, m, params, &format!("{system}.{method}")).map(|_| ())
    }

    pub fn policy(&self, system: &str) -> RetryPolicy {
        self.systems
            .get(system)
            .map(|s| s.retry)
            .unwrap_or_default()
    }

    /// `Call`: the response, parsed as JSON. `idempotency_key` is set for
    /// attempts of cached calls.
    pub async fn call(
        &self,
        system: &str,
        method: &str,
        params: &Map<String, Value>,
        idempotency_key: Option<TrackedOperationId>,
    ) -> Result<HttpResponse, GatewayError> {
        let target = format!("{system}.{method}");
        let (sys, mut resp) = self
            .send(system, method, params, idempotency_key, &target)
            .await?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > sys.max_response_bytes {
                        return Err(failed(
                            &target,
                            ErrorClass::Permanent,
                            format!(
                            "response body larger than the limit of {} bytes (max_response_bytes)",
                            sys.max_response_bytes
                        ),
                            Some(format!("HTTP {status}")),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(failed(
                        &target,
                        classify_reqwest(&e),
                        format!("reading the response: {e}"),
                        Some(format!("HTTP {status}")),
                    ))
                }
            }
        }
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                let preview: String = String::from_utf8_lossy(&body[..body.len().min(80)]).into();
                failed(
                    &target,
                    ErrorClass::Permanent,
                    format!("response body is not JSON ({e}); it starts with {preview:?}"),
                    Some(format!("HTTP {status}")),
                )
            })?
        };
        Ok(HttpResponse { status, body })
    }

    /// One attempt of a cached call: success is any 2xx; the body is not
    /// needed and not read.
    pub async fn attempt(
        &self,
        system: &str,
        method: &str,
        params: &Map<String, Value>,
        id: TrackedOperationId,
    ) -> Result<(), GatewayError> {
        let target = format!("{system}.{method}");
        self.send(system, method, params, Some(id), &target)
            .await
            .map(|_| ())
    }

    /// Builds and sends the request; a non-2xx status is an error classified
    /// by the table of SPEC §4.2.
    async fn send(
        &self,
        system: &str,
        method: &str,
        params: &Map<String, Value>,
        idempotency_key: Option<TrackedOperationId>,
        target: &str,
    ) -> Result<(&System, reqwest::Response), GatewayError> {
        let (sys, m) = self.resolve(system, method)?;
        let (url, rest) = build_url(sys, m, params, target)?;
        let mut req = sys.client.request(m.method.clone(), url);
        req = match m.params_in {
            ParamsIn::Query => req.query(
                &rest
                    .iter()
                    .map(|(k, v)| (k.as_str(), scalar_text(v)))
                    .collect::<Vec<_>>(),
            ),
            ParamsIn::Body => req.json(&rest),
        };
        req = match &sys.auth {
            Auth::None => req,
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            Auth::Bearer { token } => req.bearer_auth(token),
            Auth::ApiKey { header, value } => req.header(header.as_str(), value.as_str()),
        };
        if let Some(id) = idempotency_key {
            req = req.header("Idempotency-Key", id.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| failed(target, classify_reqwest(&e), describe_reqwest(&e), None))?;
        let status = resp.status();
        if status.is_success() {
            return Ok((sys, resp));
        }
        Err(failed(
            target,
            classify_status(status),
            format!("HTTP {status}"),
            Some(format!("HTTP {}", status.as_u16())),
        ))
    }
}

fn failed(target: &str, class: ErrorClass, message: String, code: Option<String>) -> GatewayError {
    GatewayError::Failed {
        target: target.into(),
        class,
        message,
        code,
    }
}

/// SPEC §4.2: 408, 429 and 5xx are transient; everything else that is not a
/// success is permanent.
pub fn classify_status(status: StatusCode) -> ErrorClass {
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Connection refused/reset, DNS failure and timeouts are transient;
/// a request that could not even be built is permanent.
fn classify_reqwest(e: &reqwest::Error) -> ErrorClass {
    if e.is_builder() || e.is_redirect() {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The innermost cause says the most ("Connection refused").
    let mut cause: &dyn Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{what}: {cause}")
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fills the path template and returns the parameters left for the query or
/// body.
fn build_url(
    sys: &System,
    m: &MethodDef,
    params: &Map<String, Value>,
    target: &str,
) -> Result<(Url, Map<String, Value>), GatewayError> {
    let mut rest = params.clone();
    let mut path = String::with_capacity(m.path.len());
    let mut chars = m.path.char_indices().peekable();
    let mut last = 0;
    while let Some((i, c)) = chars.next() {
        if c != '{' {
            continue;
        }
        let Some(end) = m.path[i..].find('}') else {
            break;
        };
        let name = &m.path[i + 1..i + end];
        let value = rest.remove(name).ok_or_else(|| GatewayError::BadParams {
            target: target.into(),
            reason: format!("path parameter {name:?} is missing"),
        })?;
        if matches!(value, Value::Array(_) | Value::Object(_) | Value::Null) {
            return Err(GatewayError::BadParams {
                target: target.into(),
                reason: format!("path parameter {name:?} must be a string or number"),
            });
        }
        path.push_str(&m.path[last..i]);
        path.extend(utf8_percent_encode(&scalar_text(&value), NON_ALPHANUMERIC));
        last = i + end + 1;
        while chars.peek().is_some_and(|(j, _)| *j < last) {
            chars.next();
        }
    }
    path.push_str(&m.path[last..]);
    let url = sys
        .base_url
        .join(&path)
        .map_err(|e| GatewayError::BadParams {
            target: target.into(),
            reason: format!("bad URL path {path:?}: {e}"),
        })?;
    if m.params_in == ParamsIn::Query {
        if let Some((k, _)) = rest
            .iter()
            .find(|(_, v)| matches!(v, Value::Array(_) | Value::Object(_)))
        {
            return Err(GatewayError::BadParams {
                target: target.into(),
                reason: format!("query parameter {k:?} must be a scalar (this method sends parameters in the query)"),
            });
        }
    }
    Ok((url, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_of_spec_4_2() {
        for (code, class) in [
            (408, ErrorClass::Transient),
            (429, ErrorClass::Transient),
            (500, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (400, ErrorClass::Permanent),
            (404, ErrorClass::Permanent),
            (409, ErrorClass::Permanent),
        ] {
            assert_eq!(
                classify_status(StatusCode::from_u16(code).unwrap()),
                class,
                "{code}"
            );
        }
    }

    #[test]
    fn path_templates_take_and_encode_their_parameters() {
        let mut configs = std::collections::BTreeMap::new();
        configs.insert(
            "erp".to_owned(),
            toml::from_str::<ExternalSystemConfig>(
                r#"base_url = "http://h/api"
                   methods.get = { http_method = "GET", path = "/orders/{id}/lines" }"#,
            )
            .unwrap(),
        );
        let s = HttpSystems::new(&configs).unwrap();
        let (sys, m) = s.resolve("erp", "get").unwrap();
        let params: Map<String, Value> =
            serde_json::from_str(r#"{"id": "a/b c", "x": 1}"#).unwrap();
        let (url, rest) = build_url(sys, m, &params, "erp.get").unwrap();
        assert_eq!(url.as_str(), "http://h/api/orders/a%2Fb%20c/lines");
        assert_eq!(rest.len(), 1);
        let err = build_url(sys, m, &Map::new(), "erp.get").unwrap_err();
        assert!(
            err.to_string().contains("path parameter \"id\" is missing"),
            "{err}"
        );
    }
}
