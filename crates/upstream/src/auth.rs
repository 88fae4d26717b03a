//! Registry authentication: anonymous first, then whatever the 401 challenge
//! asks for, Basic credentials or a bearer token from the token endpoint.
//! Tokens are cached per scope so most requests need no extra round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use url::Url;

use crate::challenge::Challenge;
use crate::config::Secret;
use crate::error::UpstreamError;
use crate::{body, retry, telemetry};

/// Token responses are tiny; anything bigger is not a token endpoint.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// The distribution token spec's lifetime when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Stop using a token this long before it expires, so it does not expire in
/// flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Above this many cached scopes, expired ones are swept on insert.
const SWEEP_ABOVE: usize = 1024;

/// An `Authorization` value, marked sensitive so it never appears in
/// `Debug` output.
#[derive(Clone)]
pub(crate) enum Credential {
    Basic(HeaderValue),
    Bearer(HeaderValue),
}

impl Credential {
    pub fn header(&self) -> &HeaderValue {
        match self {
            Credential::Basic(v) | Credential::Bearer(v) => v,
        }
    }
}

struct CachedToken {
    header: HeaderValue,
    fresh_until: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

pub(crate) struct Auth {
    basic: Option<HeaderValue>,
    /// Set once the upstream asked for Basic: later requests send it up
    /// front instead of paying a 401 round trip each time.
    basic_wanted: AtomicBool,
    /// Keyed by the request's scope (`repository:<name>:pull`).
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl Auth {
    pub fn new(username: Option<&str>, password: Option<&Secret>) -> Result<Auth, UpstreamError> {
        let basic = match (username, password) {
            (Some(user), password) => {
                let pair = format!("{user}:{}", password.map(Secret::expose).unwrap_or_default());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| UpstreamError::Config("credentials are not valid in a header".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
            (None, Some(_)) => return Err(UpstreamError::Config("password given without username".into())),
            (None, None) => None,
        };
        Ok(Auth {
            basic,
            basic_wanted: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// What to send before any challenge: Basic if the upstream wanted it
    /// before, else a still-fresh token for this scope, else nothing.
    pub fn cached(&self, scope: &str) -> Option<Credential> {
        if self.basic_wanted.load(Ordering::Relaxed) {
            return self.basic.clone().map(Credential::Basic);
        }
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens
            .get(scope)
            .filter(|t| t.fresh_until > Instant::now())
            .map(|t| Credential::Bearer(t.header.clone()))
    }

    /// Drops a token the upstream rejected, so the next attempt fetches anew.
    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
    }

    /// Answers a 401's challenges. `Unauthorized` when none can be answered
    /// (Basic asked but no credentials configured, or no known scheme).
    pub async fn authorize(
        &self,
        http: &reqwest::Client,
        upstream: &str,
        base: &Url,
        challenges: &[Challenge],
        scope: &str,
    ) -> Result<Credential, UpstreamError> {
        let bearer = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.param("realm").is_some_and(|r| !r.is_empty()));
        if let Some(challenge) = bearer {
            let (header, fresh_until) = self.fetch_token(http, upstream, base, challenge).await?;
            let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            if tokens.len() >= SWEEP_ABOVE {
                let now = Instant::now();
                tokens.retain(|_, t| t.fresh_until > now);
            }
            tokens.insert(
                scope.to_owned(),
                CachedToken {
                    header: header.clone(),
                    fresh_until,
                },
            );
            return Ok(Credential::Bearer(header));
        }
        match &self.basic {
            Some(basic) if challenges.iter().any(|c| c.scheme == "basic") => {
                self.basic_wanted.store(true, Ordering::Relaxed);
                Ok(Credential::Basic(basic.clone()))
            }
            _ => Err(UpstreamError::Unauthorized),
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        upstream: &str,
        base: &Url,
        challenge: &Challenge,
    ) -> Result<(HeaderValue, Instant), UpstreamError> {
        let realm = challenge.param("realm").unwrap_or_default();
        let mut url =
            Url::parse(realm).map_err(|_| UpstreamError::Auth("token realm is not a valid url".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Auth("token realm is not http(s)".into()));
        }
        // Credentials meant for an https registry never travel in clear text.
        if self.basic.is_some() && url.scheme() == "http" && base.scheme() == "https" {
            return Err(UpstreamError::Auth("token realm downgrades to plain http".into()));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            for scope in challenge.param("scope").unwrap_or_default().split_whitespace() {
                query.append_pair("scope", scope);
            }
        }
        tracing::debug!(
            upstream,
            op = "token",
            realm_host = url.host_str().unwrap_or_default(),
            "fetching token"
        );
        // Measured from before sending: the token was issued after this,
        // so the computed expiry errs on the early side.
        let started = Instant::now();
        let result = retry::send(upstream, "token", || {
            let request = http.get(url.clone());
            match &self.basic {
                Some(basic) => request.header(AUTHORIZATION, basic.clone()),
                None => request,
            }
        })
        .await
        .map_err(UpstreamError::from_reqwest);
        let status = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(err) => err.status_label(),
        };
        telemetry::request(upstream, "token", status, started.elapsed());
        let response = result?;
        let status = response.status();
        if !status.is_success() {
            return Err(match status.as_u16() {
                429 | 500..=599 => UpstreamError::from_status(status, response.headers()),
                code => UpstreamError::Auth(format!("token endpoint answered status {code}")),
            });
        }
        let bytes = body::read_bounded(response, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|err| match err {
                UpstreamError::TooLarge { .. } => UpstreamError::Auth("token response is too large".into()),
                other => other,
            })?;
        // serde's message could quote the token: report only that it failed.
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|_| UpstreamError::Auth("token response is not valid json".into()))?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| UpstreamError::Auth("token response has no token".into()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UpstreamError::Auth("token is not valid in a header".into()))?;
        header.set_sensitive(true);
        let lifetime = parsed
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let fresh_until = started + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        Ok((header, fresh_until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_sensitive_and_encoded() {
        let auth = Auth::new(Some("alice"), Some(&Secret::new("pw"))).unwrap();
        let basic = auth.basic.as_ref().unwrap();
        assert!(basic.is_sensitive());
        assert_eq!(basic, "Basic YWxpY2U6cHc=");
        assert!(!format!("{basic:?}").contains("YWxpY2U6cHc"));
        assert!(matches!(
            Auth::new(None, Some(&Secret::new("pw"))),
            Err(UpstreamError::Config(_))
        ));
    }

    #[test]
    fn cache_honours_freshness_and_forget() {
        let auth = Auth::new(None, None).unwrap();
        let header = HeaderValue::from_static("Bearer t");
        let now = Instant::now();
        let mut tokens = auth.tokens.lock().unwrap();
        tokens.insert(
            "fresh".into(),
            CachedToken {
                header: header.clone(),
                fresh_until: now + Duration::from_secs(60),
            },
        );
        tokens.insert(
            "stale".into(),
            CachedToken {
                header,
                fresh_until: now,
            },
        );
        drop(tokens);
        assert!(auth.cached("fresh").is_some());
        assert!(auth.cached("stale").is_none());
        assert!(auth.cached("other").is_none());
        auth.forget("fresh");
        assert!(auth.cached("fresh").is_none());
    }
}
