//! The generators' output, byte for byte, and their input checks.

use super::*;

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn containerd_renders_one_file_per_upstream() {
    let text = containerd(
        "http://regcache.example:5000",
        &names(&["docker.io", "registry.local:5000"]),
    );
    assert_eq!(
        text,
        r#"# /etc/containerd/certs.d/docker.io/hosts.toml
server = "https://registry-1.docker.io"

[host."http://regcache.example:5000"]
  capabilities = ["pull", "resolve"]

# /etc/containerd/certs.d/registry.local:5000/hosts.toml
server = "https://registry.local:5000"

[host."http://regcache.example:5000"]
  capabilities = ["pull", "resolve"]
"#
    );
    let one = hosts_toml(
        &upstreams(&names(&["quay.io"]))[0],
        "http://regcache.example:5000",
    );
    let file: toml::Table = toml::from_str(&one).unwrap();
    assert_eq!(file["server"].as_str(), Some("https://quay.io"));
    assert_eq!(
        file["host"]["http://regcache.example:5000"]["capabilities"][1].as_str(),
        Some("resolve")
    );
}

#[test]
fn default_is_every_builtin_upstream() {
    let builtin: Vec<String> = config::load(None, &ServeOverrides::default())
        .unwrap()
        .upstreams
        .into_iter()
        .map(|u| u.client.name)
        .collect();
    let listed: Vec<String> = upstreams(&[]).into_iter().map(|u| u.name).collect();
    assert_eq!(listed, builtin);
    assert_eq!(listed.len(), 7);
    let text = containerd("https://cache.example", &[]);
    assert_eq!(text.matches("# /etc/containerd/certs.d/").count(), 7);
    for server in [
        "https://registry-1.docker.io",
        "https://quay.io",
        "https://public.ecr.aws",
    ] {
        assert!(text.contains(&format!("server = \"{server}\"\n")), "{server}");
    }
}

#[test]
fn duplicate_upstreams_are_listed_once() {
    let listed = upstreams(&names(&["quay.io", "ghcr.io", "quay.io"]));
    assert_eq!(
        listed,
        [
            Upstream {
                name: "quay.io".into(),
                server: "https://quay.io".into()
            },
            Upstream {
                name: "ghcr.io".into(),
                server: "https://ghcr.io".into()
            },
        ]
    );
}

#[test]
fn podman_renders_path_prefix_mirrors() {
    let text = podman("127.0.0.1:5000", &names(&["quay.io", "docker.io"]), true);
    assert_eq!(
        text,
        r#"[[registry]]
location = "quay.io"

[[registry.mirror]]
location = "127.0.0.1:5000/quay.io"
insecure = true

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "127.0.0.1:5000/docker.io"
insecure = true
"#
    );
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(parsed["registry"].as_array().map(Vec::len), Some(2));
    let secure = podman("cache.example", &names(&["quay.io"]), false);
    assert!(!secure.contains("insecure"), "{secure}");
}

#[test]
fn docker_renders_daemon_json() {
    assert_eq!(
        docker("https://cache.example"),
        "{ \"registry-mirrors\": [\"https://cache.example\"] }\n"
    );
}

#[test]
fn mirror_urls_are_normalized_origins() {
    for (text, expected) in [
        ("http://regcache.example:5000", "http://regcache.example:5000"),
        ("http://regcache.example:5000/", "http://regcache.example:5000"),
        ("HTTPS://Cache.Example:443/", "https://cache.example"),
        ("http://10.96.0.50:80", "http://10.96.0.50"),
    ] {
        assert_eq!(mirror_url(text).as_deref(), Ok(expected), "{text}");
    }
}

#[test]
fn bad_mirrors_and_names_are_rejected() {
    for (text, expected) in [
        ("ftp://cache.example", "scheme must be http or https"),
        ("cache.example:5000", "scheme must be http or https"),
        ("http://u:p@cache.example", "credentials"),
        ("http://cache.example/v2", "must have no path"),
        ("http://cache.example/?x=1", "query"),
    ] {
        let err = mirror_url(text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
    for (text, expected) in [
        ("http://cache.example:5000", "without a scheme"),
        ("cache.example/quay.io", "invalid name"),
        ("Cache.example", "lowercase"),
        ("cache.example:0", "invalid name"),
    ] {
        let err = mirror_host(text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
    assert!(upstream_name("Quay.io").unwrap_err().contains("lowercase"));
    assert!(upstream_name("quay.io/x").unwrap_err().contains("invalid name"));
}

#[test]
fn writes_hosts_files_under_dir() {
    let dir = tempfile::tempdir().unwrap();
    write_hosts_files(dir.path(), "http://cache:5000", &names(&["quay.io", "ghcr.io"])).unwrap();
    let quay = std::fs::read_to_string(dir.path().join("quay.io/hosts.toml")).unwrap();
    assert!(quay.starts_with("server = \"https://quay.io\"\n"), "{quay}");
    assert!(dir.path().join("ghcr.io/hosts.toml").is_file());
    assert!(!dir.path().join("docker.io").exists());
}
