//! Talking to the witness over HTTP. Every failure says which stage it
//! happened at and whether it was the network (retry later) or an answer
//! (a typed rejection with the witness's code).

use serde_json::Value as Json;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug)]
pub enum CallError {
    /// The witness could not be reached or the exchange broke off.
    Network(String),
    /// The witness answered with a typed error.
    Rejected { code: String, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Network(m) => f.write_str(m),
            CallError::Rejected { code, message, .. } => write!(f, "{code}: {message}"),
        }
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

pub struct Client {
    pub url: String,
    token: String,
}

/// Largest response body read (a page of commits can be large).
const MAX_RESPONSE: u64 = 512 * 1024 * 1024;

impl Client {
    pub fn new(url: &str, token: &str) -> Client {
        Client {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    fn finish(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Json, CallError> {
        let mut resp = r.map_err(|e| {
            CallError::Network(format!("sending request to {}{what}: {e}", self.url))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| {
                CallError::Network(format!("reading response from {}{what}: {e}", self.url))
            })?;
        let body: Json = serde_json::from_str(&text).map_err(|e| {
            CallError::Network(format!(
                "response from {}{what} is not JSON ({e})",
                self.url
            ))
        })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_string();
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status >= 500 {
            return Err(CallError::Network(format!(
                "{}{what}: {code}: {message}",
                self.url
            )));
        }
        Err(CallError::Rejected { code, message })
    }

    pub fn get(&self, path: &str) -> Result<Json, CallError> {
        let r = agent()
            .get(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish(path, r)
    }

    /// Bytes `start..=end` of a binary resource (a 206 answer whose
    /// Content-Range must start at `start`; it may hold fewer bytes).
    pub fn get_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>, CallError> {
        let r = agent()
            .get(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Range", &format!("bytes={start}-{end}"))
            .call();
        let mut resp = r.map_err(|e| {
            CallError::Network(format!("sending request to {}{path}: {e}", self.url))
        })?;
        let status = resp.status().as_u16();
        if status != 206 {
            // Not a range: the witness's error (classified as for JSON
            // calls), or an answer that is not what was asked for.
            let what = self.finish(path, Ok(resp))?;
            return Err(CallError::Network(format!(
                "{}{path}: expected a byte range, got {what}",
                self.url
            )));
        }
        let starts_right = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
            == Some(start);
        if !starts_right {
            return Err(CallError::Network(format!(
                "{}{path}: the answer is not the range asked for",
                self.url
            )));
        }
        resp.body_mut()
            .with_config()
            .limit(end - start + 1)
            .read_to_vec()
            .map_err(|e| {
                CallError::Network(format!("reading response from {}{path}: {e}", self.url))
            })
    }

    pub fn post(&self, path: &str, body: &Json) -> Result<Json, CallError> {
        let r = agent()
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(path, r)
    }
}
