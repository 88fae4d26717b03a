//! The upstream list: built-in public registries, then `[[upstream]]`
//! tables (which override a built-in of the same name field by field), then
//! `--upstream NAME=URL` from the command line.

use std::collections::HashMap;
use std::time::Duration;

use upstream::{Secret, UpstreamConfig};
use url::Url;

use super::fields::{self, AtField, FieldError};
use super::raw::RawUpstream;
use super::validate::duration;
use super::{PasswordSource, UpstreamConfigEntry};
use crate::config::UpstreamOverride;

/// Served with no configuration at all; `builtin_upstreams = false` drops
/// them so that the cache is no open proxy to registries nobody chose.
const BUILTIN: [(&str, &str); 7] = [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("gcr.io", "https://gcr.io"),
    ("mcr.microsoft.com", "https://mcr.microsoft.com"),
    ("public.ecr.aws", "https://public.ecr.aws"),
];

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn resolve(
    builtin: bool,
    file: Vec<RawUpstream>,
    cli: &[UpstreamOverride],
) -> Result<Vec<UpstreamConfigEntry>, FieldError> {
    let mut entries: Vec<UpstreamConfigEntry> = Vec::new();
    if builtin {
        for (name, url) in BUILTIN {
            let url = Url::parse(url).expect("built-in upstream urls are valid");
            entries.push(bare(name, url));
        }
    }
    let cli_url = |name: &str| {
        cli.iter()
            .rev()
            .find(|o| o.name == name)
            .map(|o| o.remote_url.clone())
    };
    let mut seen = HashMap::new();
    for (i, raw) in file.into_iter().enumerate() {
        let field = format!("upstream[{i}]");
        fields::check_upstream_name(&raw.name).at(&format!("{field}.name"))?;
        if let Some(first) = seen.insert(raw.name.clone(), i) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("duplicate upstream {:?} (first at upstream[{first}])", raw.name),
            ));
        }
        let position = entries.iter().position(|e| e.client.name == raw.name);
        let url_from_cli = cli_url(&raw.name);
        let builtin_url = position.map(|p| entries[p].client.remote_url.clone());
        let entry = entry(&field, raw, url_from_cli, builtin_url)?;
        match position {
            Some(p) => entries[p] = entry,
            None => entries.push(entry),
        }
    }
    for o in cli {
        match entries.iter_mut().find(|e| e.client.name == o.name) {
            Some(e) => e.client.remote_url = o.remote_url.clone(),
            None => entries.push(bare(&o.name, o.remote_url.clone())),
        }
    }
    Ok(entries)
}

/// An upstream known only by name and URL: anonymous, default timeouts.
fn bare(name: &str, remote_url: Url) -> UpstreamConfigEntry {
    UpstreamConfigEntry {
        client: UpstreamConfig {
            name: name.to_owned(),
            remote_url,
            username: None,
            password: None,
            http_proxy: None,
            https_proxy: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
        },
        password_source: None,
        username_file: None,
        tag_ttl: None,
    }
}

/// One `[[upstream]]` table; the URL comes from the command line, else the
/// file, else the built-in of that name.
fn entry(
    field: &str,
    raw: RawUpstream,
    cli_url: Option<Url>,
    builtin_url: Option<Url>,
) -> Result<UpstreamConfigEntry, FieldError> {
    let at = |name: &str| format!("{field}.{name}");
    let url = |text: &Option<String>, check: fn(&str) -> Result<Url, String>, name| {
        text.as_deref().map(check).transpose().at(&at(name))
    };
    let file_url = url(&raw.remote_url, fields::check_remote_url, "remote_url")?;
    let remote_url = cli_url
        .or(file_url)
        .or(builtin_url)
        .ok_or_else(|| FieldError::new(at("remote_url"), "required for an upstream that is not built in"))?;
    let username = username(field, &raw)?;
    let (password, password_source) = match password(field, &raw, username.as_deref())? {
        Some((secret, source)) => (Some(secret), Some(source)),
        None => (None, None),
    };
    let timeout = |text: &Option<String>, default, name| {
        duration(text, default, &at(name)).and_then(|d| fields::positive(d).at(&at(name)))
    };
    Ok(UpstreamConfigEntry {
        client: UpstreamConfig {
            remote_url,
            password,
            http_proxy: url(&raw.http_proxy, fields::http_url, "http_proxy")?,
            https_proxy: url(&raw.https_proxy, fields::http_url, "https_proxy")?,
            connect_timeout: timeout(&raw.connect_timeout, DEFAULT_CONNECT_TIMEOUT, "connect_timeout")?,
            read_timeout: timeout(&raw.read_timeout, DEFAULT_READ_TIMEOUT, "read_timeout")?,
            username,
            name: raw.name,
        },
        password_source,
        username_file: raw.username_file,
        tag_ttl: raw
            .tag_ttl
            .as_deref()
            .map(fields::duration)
            .transpose()
            .at(&at("tag_ttl"))?,
    })
}

/// The username as written, or read from `username_file` (a Secret's
/// `username` key mounted as a file, as Kubernetes does).
fn username(field: &str, raw: &RawUpstream) -> Result<Option<String>, FieldError> {
    match (&raw.username, &raw.username_file) {
        (Some(_), Some(_)) => Err(FieldError::new(
            format!("{field}.username_file"),
            "username and username_file are mutually exclusive",
        )),
        (Some(user), None) => Ok(Some(user.clone())),
        (None, Some(path)) => read_line(path).map(Some).at(&format!("{field}.username_file")),
        (None, None) => Ok(None),
    }
}

/// Reads the password now, so that a missing secret stops the start
/// instead of failing the first authenticated pull.
fn password(
    field: &str,
    raw: &RawUpstream,
    username: Option<&str>,
) -> Result<Option<(Secret, PasswordSource)>, FieldError> {
    let (source, name) = match (&raw.password_file, &raw.password_env) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                format!("{field}.password_env"),
                "password_file and password_env are mutually exclusive",
            ));
        }
        (Some(path), None) => (PasswordSource::File(path.clone()), "password_file"),
        (None, Some(var)) => (PasswordSource::Env(var.clone()), "password_env"),
        (None, None) if username.is_some() => {
            return Err(FieldError::new(
                format!("{field}.username"),
                "needs password_file or password_env",
            ));
        }
        (None, None) => return Ok(None),
    };
    match username {
        None => {
            return Err(FieldError::new(
                format!("{field}.username"),
                format!("required with {name}"),
            ));
        }
        Some(user) if user.is_empty() || user.contains(':') => {
            return Err(FieldError::new(
                format!("{field}.username"),
                "must be non-empty and contain no ':'",
            ));
        }
        Some(_) => {}
    }
    let secret = read_secret(&source).at(&format!("{field}.{name}"))?;
    Ok(Some((secret, source)))
}

fn read_secret(source: &PasswordSource) -> Result<Secret, String> {
    let value = match source {
        PasswordSource::File(path) => read_line(path)?,
        PasswordSource::Env(var) => std::env::var(var).map_err(|e| format!("reading ${var}: {e}"))?,
    };
    if value.is_empty() {
        return Err("the password is empty".to_owned());
    }
    Ok(Secret::new(value))
}

/// A file's content without one trailing newline: editors and `echo` end
/// files with one that is no part of the value.
fn read_line(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}
