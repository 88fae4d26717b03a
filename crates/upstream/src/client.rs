//! The `Upstream` handle and the request path every operation shares:
//! authentication, manual redirects and connect retries.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use oci::RepoName;
use url::Url;

use crate::auth::{Auth, Credential};
use crate::config::{UpstreamConfig, remote_url_problem};
use crate::error::UpstreamError;
use crate::{challenge, retry, telemetry};

const USER_AGENT: &str = concat!("regcache/", env!("CARGO_PKG_VERSION"));
/// Registries redirect blobs once (to storage); a few more hops allow for
/// CDNs, a loop is cut off.
const MAX_REDIRECTS: usize = 5;

/// A client for one upstream registry. Cheap to clone: clones share the
/// connection pool and the token cache.
#[derive(Clone)]
pub struct Upstream {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub name: String,
    /// `remote_url` with a trailing `/`, so `v2/...` joins below its path.
    pub base: Url,
    http: reqwest::Client,
    auth: Auth,
}

/// One logical request to a registry endpoint.
pub(crate) struct Call<'a> {
    pub op: &'static str,
    pub repo: &'a RepoName,
    pub method: Method,
    pub url: Url,
    pub accept: Option<HeaderValue>,
    /// `Range: bytes=N-` for a blob read from offset N.
    pub from: Option<u64>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.inner.name)
            .field("remote_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Checks `remote_url` and gives it a trailing slash.
fn base_url(remote: &Url) -> Result<Url, UpstreamError> {
    if let Some(problem) = remote_url_problem(remote) {
        return Err(UpstreamError::Config(format!("remote url {problem}")));
    }
    let mut base = remote.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn proxy(
    url: Option<&Url>,
    make: impl Fn(&str) -> reqwest::Result<reqwest::Proxy>,
    which: &str,
) -> Result<Option<reqwest::Proxy>, UpstreamError> {
    url.map(|u| make(u.as_str()).map_err(|_| UpstreamError::Config(format!("invalid {which} proxy url"))))
        .transpose()
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let base = base_url(&cfg.remote_url)?;
        let auth = Auth::new(cfg.username.as_deref(), cfg.password.as_ref())?;
        // Proxies come from the config only, never from the environment, so
        // each upstream's route is explicit.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .user_agent(USER_AGENT);
        for p in [
            proxy(cfg.http_proxy.as_ref(), |u| reqwest::Proxy::http(u), "http")?,
            proxy(cfg.https_proxy.as_ref(), |u| reqwest::Proxy::https(u), "https")?,
        ]
        .into_iter()
        .flatten()
        {
            builder = builder.proxy(p);
        }
        let http = builder.build().map_err(|err| {
            UpstreamError::Config(format!("cannot build http client: {}", err.without_url()).to_lowercase())
        })?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                name: cfg.name,
                base,
                http,
                auth,
            }),
        })
    }

    /// The registry host clients use, e.g. `quay.io`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `<remote_url>/v2/<repo>/<tail...>`. The parts are validated names,
    /// tags and digests, whose alphabets need no escaping.
    pub(crate) fn url(&self, repo: &RepoName, tail: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        let path = format!(
            "{}v2/{}/{}",
            self.inner.base.path(),
            repo.as_str(),
            tail.join("/")
        );
        url.set_path(&path);
        url
    }

    /// Sends `call` through authentication and redirects; `Ok` only for a
    /// 2xx response, whose body the caller then reads.
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, UpstreamError> {
        let started = Instant::now();
        let result = match self.send_authorized(call).await {
            Ok(response) if !response.status().is_success() => {
                Err(UpstreamError::from_status(response.status(), response.headers()))
            }
            other => other,
        };
        let elapsed = started.elapsed();
        let status = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(err) => err.status_label(),
        };
        tracing::debug!(
            upstream = %self.inner.name,
            repo = %call.repo,
            op = call.op,
            status = %status,
            elapsed_ms = elapsed.as_millis() as u64,
            "upstream request done"
        );
        telemetry::request(&self.inner.name, call.op, status, elapsed);
        result
    }

    /// Anonymous (or cached credentials) first; on a 401, answer the
    /// challenge and retry once. A cached token that is refused is dropped
    /// and the flow redone once, which covers tokens revoked early.
    async fn send_authorized(&self, call: &Call<'_>) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{}:pull", call.repo);
        let mut credential = self.inner.auth.cached(&scope);
        let mut answered = false;
        loop {
            let response = self.follow(call, credential.as_ref()).await?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            // A 401 from a redirect target cannot be answered: our
            // credentials are never sent there.
            if answered || response.url().origin() != self.inner.base.origin() {
                return Err(UpstreamError::Unauthorized);
            }
            if matches!(credential, Some(Credential::Bearer(_))) {
                self.inner.auth.forget(&scope);
            }
            let challenges: Vec<_> = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(challenge::parse)
                .collect();
            tracing::debug!(
                upstream = %self.inner.name,
                repo = %call.repo,
                op = call.op,
                schemes = ?challenges.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
                "answering auth challenge"
            );
            let inner = &self.inner;
            credential = Some(
                inner
                    .auth
                    .authorize(&inner.http, &inner.name, &inner.base, &challenges, &scope)
                    .await?,
            );
            answered = true;
        }
    }

    /// Follows redirects by hand, so that `Authorization` goes only to the
    /// upstream's own origin: blob redirects point at pre-signed storage
    /// URLs that must not see (and may reject) our credentials.
    async fn follow(
        &self,
        call: &Call<'_>,
        credential: Option<&Credential>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url = call.url.clone();
        for hop in 0..=MAX_REDIRECTS {
            let authorization = credential
                .filter(|_| url.origin() == self.inner.base.origin())
                .map(Credential::header);
            let response = retry::send(&self.inner.name, call.op, || {
                let mut request = self.inner.http.request(call.method.clone(), url.clone());
                if let Some(accept) = &call.accept {
                    request = request.header(ACCEPT, accept.clone());
                }
                if let Some(from) = call.from {
                    request = request.header(RANGE, format!("bytes={from}-"));
                }
                if let Some(authorization) = authorization {
                    request = request.header(AUTHORIZATION, authorization.clone());
                }
                request
            })
            .await
            .map_err(UpstreamError::from_reqwest)?;
            let status = response.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::InvalidResponse("redirect without location".into()))?;
            let next = url
                .join(location)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    UpstreamError::InvalidResponse("redirect location is not an http(s) url".into())
                })?;
            // Host only: the query of a pre-signed URL is a credential.
            tracing::debug!(
                upstream = %self.inner.name,
                repo = %call.repo,
                op = call.op,
                hop,
                status,
                to_host = next.host_str().unwrap_or_default(),
                "following redirect"
            );
            url = next;
        }
        Err(UpstreamError::InvalidResponse("too many redirects".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream(remote: &str) -> Result<Upstream, UpstreamError> {
        Upstream::new(UpstreamConfig {
            name: "test".into(),
            remote_url: remote.parse().unwrap(),
            username: None,
            password: None,
            http_proxy: Some("http://proxy.invalid:3128".parse().unwrap()),
            https_proxy: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn builds_urls_under_a_path_prefix() {
        let repo: RepoName = "library/alpine".parse().unwrap();
        let cases = [
            (
                "https://registry-1.docker.io",
                "https://registry-1.docker.io/v2/library/alpine/manifests/3.20",
            ),
            (
                "http://127.0.0.1:5001/prefix",
                "http://127.0.0.1:5001/prefix/v2/library/alpine/manifests/3.20",
            ),
            (
                "http://127.0.0.1:5001/a/b/",
                "http://127.0.0.1:5001/a/b/v2/library/alpine/manifests/3.20",
            ),
        ];
        for (remote, want) in cases {
            let url = upstream(remote).unwrap().url(&repo, &["manifests", "3.20"]);
            assert_eq!(url.as_str(), want);
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let url = upstream("https://r.example")
            .unwrap()
            .url(&repo, &["blobs", &digest]);
        assert_eq!(url.path(), format!("/v2/library/alpine/blobs/{digest}"));
    }

    #[test]
    fn refuses_bad_remote_urls_without_echoing_them() {
        for remote in [
            "https://alice:hunter2@r.example",
            "ftp://r.example",
            "https://r.example/?x=1",
        ] {
            let err = upstream(remote).unwrap_err();
            assert!(matches!(err, UpstreamError::Config(_)), "{remote}");
            assert!(!err.to_string().contains("hunter2"));
        }
    }
}
