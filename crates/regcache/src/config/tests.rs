use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::overrides::GcOverrides;
use super::*;
use crate::config::UpstreamOverride;
use upstream::Secret;

pub(super) fn write(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

pub(super) fn load_str(text: &str) -> Result<Config, ConfigError> {
    let file = write(text);
    load(Some(file.path()), &ServeOverrides::default())
}

/// Loads `[section]` with each body and checks that it fails with an error
/// naming the file and containing the expected text.
pub(super) fn assert_section_errors(section: &str, cases: Vec<(String, String)>) {
    for (body, expected) in cases {
        let text = format!("[{section}]\n{body}\n");
        let file = write(&text);
        let Err(err) = load(Some(file.path()), &ServeOverrides::default()) else {
            panic!("{text:?} loaded");
        };
        let (err, path) = (err.to_string(), file.path().display().to_string());
        assert!(
            err.contains(&expected),
            "{text:?}\n  gave: {err}\n  want: {expected}"
        );
        assert!(err.starts_with(&path), "{text:?}: no file path in {err}");
    }
}

fn upstream<'a>(cfg: &'a Config, name: &str) -> &'a UpstreamConfigEntry {
    cfg.upstreams.iter().find(|u| u.client.name == name).unwrap()
}

#[test]
fn embedded_default() {
    let cfg = load(None, &ServeOverrides::default()).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:5000".parse().unwrap());
    assert_eq!(cfg.data_dir, PathBuf::from("./regcache-data"));
    assert_eq!(cfg.default_upstream, "docker.io");
    let c = &cfg.cache;
    assert_eq!(c.memory_bytes, 128 << 20);
    assert_eq!(c.disk_bytes, 20 << 30);
    assert_eq!(c.tag_ttl, Duration::from_secs(60));
    assert_eq!(c.max_stale, Duration::from_secs(24 * 3600));
    assert_eq!(c.max_manifest_bytes, 4 << 20);
    assert_eq!(c.memory_object_max, 1 << 20);
    let names: Vec<_> = cfg.upstreams.iter().map(|u| u.client.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io",
            "ghcr.io",
            "quay.io",
            "registry.k8s.io",
            "gcr.io",
            "mcr.microsoft.com",
            "public.ecr.aws"
        ]
    );
    let hub = upstream(&cfg, "docker.io");
    assert_eq!(hub.client.remote_url.as_str(), "https://registry-1.docker.io/");
    assert_eq!(hub.client.connect_timeout, Duration::from_secs(10));
    assert_eq!(hub.client.read_timeout, Duration::from_secs(60));
    assert!(hub.client.username.is_none() && hub.client.password.is_none() && hub.tag_ttl.is_none());
    assert_eq!(load_str("").unwrap(), cfg, "an empty file is the default");
}

#[test]
fn sizes_and_durations_in_human_form() {
    let cfg = load_str(
        r#"
        [cache]
        memory_bytes = "1.5GiB"
        disk_bytes = 1000000
        tag_ttl = "5m"
        max_stale = "0s"
        max_manifest_bytes = "256 KiB"
        memory_object_max = 0
        "#,
    )
    .unwrap();
    let c = &cfg.cache;
    assert_eq!(c.memory_bytes, 3 << 29);
    assert_eq!(c.disk_bytes, 1_000_000);
    assert_eq!(c.tag_ttl, Duration::from_secs(300));
    assert_eq!(c.max_stale, Duration::ZERO);
    assert_eq!(c.max_manifest_bytes, 256 << 10);
    assert_eq!(c.memory_object_max, 0);
}

#[test]
fn a_small_memory_tier_caps_the_default_object_max() {
    let cfg = load_str("[cache]\nmemory_bytes = \"512KiB\"\n").unwrap();
    assert_eq!(cfg.cache.memory_object_max, 512 << 10);
}

/// Each bad input and the text its error must contain: the field first.
const BAD: &[(&str, &str)] = &[
    ("listen = \"nope\"", "listen: invalid socket address \"nope\""),
    ("listen = \"localhost\"", "listen: invalid socket address"),
    ("data_dir = \"\"", "data_dir: must not be empty"),
    (
        "default_upstream = \"example.com\"",
        "default_upstream: \"example.com\" is not a configured upstream",
    ),
    (
        "builtin_upstreams = false",
        "default_upstream: \"docker.io\" is not a configured upstream",
    ),
    (
        "[cache]\nmemory_bytes = \"12XB\"",
        "cache.memory_bytes: invalid size \"12XB\"",
    ),
    (
        "[cache]\nmemory_bytes = 0",
        "cache.memory_bytes: must be greater than zero",
    ),
    (
        "[cache]\ndisk_bytes = \"0GiB\"",
        "cache.disk_bytes: must be greater than zero",
    ),
    (
        "[cache]\nmax_manifest_bytes = -1",
        "cache.max_manifest_bytes: must not be negative",
    ),
    (
        "[cache]\nmemory_object_max = \"\"",
        "cache.memory_object_max: invalid size",
    ),
    (
        "[cache]\nmemory_bytes = \"1MiB\"\nmemory_object_max = \"2MiB\"",
        "cache.memory_object_max: 2097152 bytes exceeds cache.memory_bytes (1048576 bytes)",
    ),
    (
        "[cache]\ntag_ttl = \"5x\"",
        "cache.tag_ttl: invalid duration \"5x\"",
    ),
    (
        "[cache]\nmax_stale = \"soon\"",
        "cache.max_stale: invalid duration",
    ),
    (
        "[[upstream]]\nname = \"Quay.io\"",
        "upstream[0].name: \"Quay.io\" must be lowercase",
    ),
    (
        "[[upstream]]\nname = \"bad_host\"\nremote_url = \"https://x\"",
        "upstream[0].name: invalid name",
    ),
    (
        "[[upstream]]\nname = \"x.io:99999\"\nremote_url = \"https://x\"",
        "upstream[0].name: invalid name",
    ),
    (
        "[[upstream]]\nname = \"x.io/v2\"\nremote_url = \"https://x\"",
        "upstream[0].name: invalid name",
    ),
    (
        "[[upstream]]\nname = \"\"\nremote_url = \"https://x\"",
        "upstream[0].name: invalid name",
    ),
    (
        "[[upstream]]\nname = \"x.io\"",
        "upstream[0].remote_url: required for an upstream that is not built in",
    ),
    (
        "[[upstream]]\nname = \"x.io\"\nremote_url = \"x.io\"",
        "upstream[0].remote_url: invalid url",
    ),
    (
        "[[upstream]]\nname = \"x.io\"\nremote_url = \"ftp://x.io\"",
        "upstream[0].remote_url: scheme must be http or https",
    ),
    (
        "[[upstream]]\nname = \"x.io\"\nremote_url = \"https://u:p@x.io\"",
        "upstream[0].remote_url: must not contain credentials",
    ),
    (
        "[[upstream]]\nname = \"x.io\"\nremote_url = \"https://x.io/?a=b\"",
        "upstream[0].remote_url: must not have a query",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\n[[upstream]]\nname = \"quay.io\"",
        "upstream[1].name: duplicate upstream \"quay.io\" (first at upstream[0])",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\n[[upstream]]\nname = \"x.io\"\nremote_url = \"gopher://x\"",
        "upstream[1].remote_url: scheme must be http or https",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"u\"\npassword_file = \"/p\"\npassword_env = \"P\"",
        "upstream[0].password_env: password_file and password_env are mutually exclusive",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\npassword_env = \"P\"",
        "upstream[0].username: required with password_env",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\npassword_file = \"/p\"",
        "upstream[0].username: required with password_file",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"u\"",
        "upstream[0].username: needs password_file or password_env",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"a:b\"\npassword_env = \"P\"",
        "upstream[0].username: must be non-empty and contain no ':'",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"u\"\nusername_file = \"/u\"\npassword_env = \"P\"",
        "upstream[0].username_file: username and username_file are mutually exclusive",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername_file = \"/nonexistent/regcache\"\npassword_env = \"P\"",
        "upstream[0].username_file: reading /nonexistent/regcache",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"u\"\npassword_file = \"/nonexistent/regcache\"",
        "upstream[0].password_file: reading /nonexistent/regcache",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nusername = \"u\"\npassword_env = \"REGCACHE_TEST_UNSET_9F2C\"",
        "upstream[0].password_env: reading $REGCACHE_TEST_UNSET_9F2C",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nhttp_proxy = \"socks5://p:1080\"",
        "upstream[0].http_proxy: scheme must be http or https",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nhttps_proxy = \"http://u:p@proxy:3128\"",
        "upstream[0].https_proxy: must not contain credentials",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\ntag_ttl = \"forever\"",
        "upstream[0].tag_ttl: invalid duration",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nconnect_timeout = \"0s\"",
        "upstream[0].connect_timeout: must be greater than zero",
    ),
    (
        "[[upstream]]\nname = \"quay.io\"\nread_timeout = \"1 fortnight\"",
        "upstream[0].read_timeout: invalid duration",
    ),
];

#[test]
fn bad_values_name_their_field() {
    for (text, expected) in BAD {
        let file = write(text);
        let Err(err) = load(Some(file.path()), &ServeOverrides::default()) else {
            panic!("{text:?} loaded");
        };
        let (err, path) = (err.to_string(), file.path().display().to_string());
        assert!(
            err.contains(expected),
            "{text:?}\n  gave: {err}\n  want: {expected}"
        );
        assert!(err.starts_with(&path), "{text:?}: no file path in {err}");
    }
}

#[test]
fn unknown_fields_and_bad_types_name_the_field_and_line() {
    for (text, expected, line) in [
        (
            "listen = \"0.0.0.0:5000\"\nbogus = 1",
            "unknown field `bogus`",
            "line 2",
        ),
        ("[cache]\nttl = \"5m\"", "unknown field `ttl`", "line 2"),
        (
            "[[upstream]]\nname = \"quay.io\"\npassword = \"x\"",
            "unknown field `password`",
            "line 3",
        ),
        (
            "[cache]\nmemory_bytes = true",
            "expected a size such as \"256MiB\"",
            "line 2",
        ),
        (
            "[[upstream]]\nremote_url = \"https://x\"",
            "missing field `name`",
            "line 1",
        ),
    ] {
        let file = write(text);
        let err = load(Some(file.path()), &ServeOverrides::default())
            .unwrap_err()
            .to_string();
        let path = file.path().display().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.contains(line), "{text:?}: no {line} in {err}");
        assert!(err.starts_with(&path), "{text:?}: no file path in {err}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let err = load(
        Some(Path::new("/nonexistent/regcache.toml")),
        &ServeOverrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading /nonexistent/regcache.toml: "),
        "{err}"
    );
}

#[test]
fn file_overrides_builtin_fields_and_adds_upstreams() {
    let cfg = load_str(
        r#"
        default_upstream = "registry.local:5000"
        [[upstream]]
        name = "docker.io"
        tag_ttl = "10m"
        read_timeout = "2m"
        [[upstream]]
        name = "registry.local:5000"
        remote_url = "http://10.0.0.7:5000/mirror"
        http_proxy = "http://proxy:3128"
        https_proxy = "http://proxy:3128"
        connect_timeout = "3s"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.upstreams.len(), 8);
    assert_eq!(cfg.default_upstream, "registry.local:5000");
    let hub = upstream(&cfg, "docker.io");
    assert_eq!(
        hub.client.remote_url.as_str(),
        "https://registry-1.docker.io/",
        "url kept from the built-in"
    );
    assert_eq!(hub.tag_ttl, Some(Duration::from_secs(600)));
    assert_eq!(hub.client.read_timeout, Duration::from_secs(120));
    assert_eq!(hub.client.connect_timeout, Duration::from_secs(10));
    let local = upstream(&cfg, "registry.local:5000");
    assert_eq!(local.client.remote_url.as_str(), "http://10.0.0.7:5000/mirror");
    assert_eq!(
        local.client.http_proxy.as_ref().map(url::Url::as_str),
        Some("http://proxy:3128/")
    );
    assert!(local.client.https_proxy.is_some());
    assert_eq!(local.client.connect_timeout, Duration::from_secs(3));
}

#[test]
fn without_builtins_only_configured_upstreams_exist() {
    let cfg = load_str(
        r#"
        builtin_upstreams = false
        default_upstream = "quay.io"
        [[upstream]]
        name = "quay.io"
        remote_url = "https://quay.io"
        "#,
    )
    .unwrap();
    let names: Vec<_> = cfg.upstreams.iter().map(|u| u.client.name.as_str()).collect();
    assert_eq!(names, ["quay.io"]);
    let err = load_str(
        "builtin_upstreams = false\ndefault_upstream = \"quay.io\"\n[[upstream]]\nname = \"quay.io\"",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("upstream[0].remote_url: required"),
        "{err}"
    );
}

#[test]
fn command_line_wins_over_file() {
    let file = write(
        r#"
        listen = "127.0.0.1:1"
        data_dir = "/from/file"
        [[upstream]]
        name = "docker.io"
        remote_url = "https://file.example"
        [[upstream]]
        name = "internal.example"
        "#,
    );
    let overrides = ServeOverrides {
        listen: Some("127.0.0.1:5555".parse().unwrap()),
        data_dir: Some(PathBuf::from("/from/cli")),
        upstreams: [
            "docker.io=http://127.0.0.1:5001",
            "internal.example=http://127.0.0.1:5002",
            "localhost:5003=http://127.0.0.1:5003",
        ]
        .iter()
        .map(|s| s.parse::<UpstreamOverride>().unwrap())
        .collect(),
        ..ServeOverrides::default()
    };
    let cfg = load(Some(file.path()), &overrides).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:5555".parse().unwrap());
    assert_eq!(cfg.data_dir, PathBuf::from("/from/cli"));
    assert_eq!(
        upstream(&cfg, "docker.io").client.remote_url.as_str(),
        "http://127.0.0.1:5001/"
    );
    assert_eq!(
        upstream(&cfg, "internal.example").client.remote_url.as_str(),
        "http://127.0.0.1:5002/"
    );
    assert_eq!(
        upstream(&cfg, "localhost:5003").client.remote_url.as_str(),
        "http://127.0.0.1:5003/"
    );
    assert_eq!(cfg.upstreams.len(), 9);
    // The same overrides apply on top of the embedded default.
    let cfg = load(None, &overrides).unwrap();
    assert_eq!(
        upstream(&cfg, "docker.io").client.remote_url.as_str(),
        "http://127.0.0.1:5001/"
    );
}

#[test]
fn passwords_are_read_at_load_and_never_rendered() {
    let secret = write("s3cr3t-from-file\r\n");
    let cfg = load_str(&format!(
        r#"
        [[upstream]]
        name = "quay.io"
        username = "robot"
        password_file = "{}"
        [[upstream]]
        name = "ghcr.io"
        username = "bot"
        password_env = "CARGO_PKG_NAME"
        "#,
        secret.path().display()
    ))
    .unwrap();
    let quay = upstream(&cfg, "quay.io");
    assert_eq!(quay.client.username.as_deref(), Some("robot"));
    assert_eq!(
        quay.client.password.as_ref().map(Secret::expose),
        Some("s3cr3t-from-file")
    );
    assert_eq!(
        quay.password_source,
        Some(PasswordSource::File(secret.path().to_owned()))
    );
    let ghcr = upstream(&cfg, "ghcr.io");
    // Cargo sets CARGO_PKG_NAME for the tests it runs.
    assert_eq!(
        ghcr.client.password.as_ref().map(Secret::expose),
        Some(env!("CARGO_PKG_NAME"))
    );
    assert_eq!(
        ghcr.password_source,
        Some(PasswordSource::Env("CARGO_PKG_NAME".into()))
    );

    let shown = format!("{}\n{cfg:?}", render_redacted(&cfg));
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(
        !shown.contains(&format!("\"{}\"", env!("CARGO_PKG_NAME"))),
        "{shown}"
    );
    assert!(shown.contains("password = \"[redacted]\""), "{shown}");
    assert!(
        shown.contains(&format!("password_file = \"{}\"", secret.path().display())),
        "{shown}"
    );
    assert!(shown.contains("password_env = \"CARGO_PKG_NAME\""), "{shown}");
}

/// A Kubernetes Secret mounted as files: `username` and `password` keys.
#[test]
fn a_username_is_read_from_its_file_and_shown_as_the_file() {
    let user = write("robot\n");
    let password = write("s3cr3t\n");
    let cfg = load_str(&format!(
        "[[upstream]]\nname = \"quay.io\"\nusername_file = \"{}\"\npassword_file = \"{}\"",
        user.path().display(),
        password.path().display()
    ))
    .unwrap();
    let quay = upstream(&cfg, "quay.io");
    assert_eq!(quay.client.username.as_deref(), Some("robot"));
    assert_eq!(quay.client.password.as_ref().map(Secret::expose), Some("s3cr3t"));
    let shown = render_redacted(&cfg);
    assert!(
        shown.contains(&format!("username_file = \"{}\"", user.path().display())),
        "{shown}"
    );
    assert!(!shown.contains("username = "), "{shown}");
    let colon = write("a:b");
    let refused = load_str(&format!(
        "[[upstream]]\nname = \"quay.io\"\nusername_file = \"{}\"\npassword_env = \"CARGO_PKG_NAME\"",
        colon.path().display()
    ));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("must be non-empty and contain no ':'")),
        "a username from a file is checked like one in the file"
    );
}

#[test]
fn rendered_config_loads_back_to_the_same_config() {
    let file = write(
        r#"
        listen = "127.0.0.1:5000"
        [cache]
        memory_bytes = "1.5GiB"
        disk_bytes = 1000
        max_stale = "90m"
        [[upstream]]
        name = "registry.local:5000"
        remote_url = "http://10.0.0.7:5000/mirror"
        https_proxy = "http://proxy:3128"
        tag_ttl = "0s"
        "#,
    );
    let cfg = load(Some(file.path()), &ServeOverrides::default()).unwrap();
    let rendered = render_redacted(&cfg);
    assert!(rendered.contains("memory_bytes = \"1536MiB\""), "{rendered}");
    assert!(rendered.contains("builtin_upstreams = false"), "{rendered}");
    assert_eq!(load_str(&rendered).unwrap(), cfg, "{rendered}");
}

/// The example in docs/configuration.md is a valid file.
#[test]
fn documented_example_loads() {
    let docs = include_str!("../../../../docs/configuration.md");
    let start = docs.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &docs[start..start + docs[start..].find("```").unwrap()];
    let secret = write("hunter2\n");
    let example = example
        .replace("/run/secrets/quay-password", &secret.path().display().to_string())
        .replace("DOCKERHUB_PASSWORD", "CARGO_PKG_NAME");
    let cfg = load_str(&example).unwrap();
    assert_eq!(
        upstream(&cfg, "quay.io")
            .client
            .password
            .as_ref()
            .map(Secret::expose),
        Some("hunter2")
    );
}

#[test]
fn gc_defaults_take_seconds_and_reject_a_zero_interval() {
    let default = load(None, &ServeOverrides::default()).unwrap().gc;
    assert_eq!(default.ttl, Duration::from_secs(168 * 3600));
    assert_eq!(default.interval, Duration::from_secs(3600));
    assert_eq!(default.sweep_delay, Duration::from_secs(600));
    assert_eq!(default.delete_rate, 1000);
    assert_eq!(default.orphan_grace, Duration::from_secs(24 * 3600));
    assert_eq!(default.bucket_bytes, None, "no budget unless set");
    let cfg = load_str(
        "[gc]\nttl = \"1s\"\ninterval = \"2s\"\nsweep_delay = \"0s\"\ndelete_rate = 50\n\
         orphan_grace = \"1s\"\nbucket_bytes = \"2GiB\"\n",
    )
    .unwrap();
    assert_eq!(cfg.gc.delete_rate, 50);
    assert_eq!(cfg.gc.orphan_grace, Duration::from_secs(1));
    assert_eq!(cfg.gc.bucket_bytes, Some(2 << 30));
    assert_eq!(
        (cfg.gc.ttl, cfg.gc.interval, cfg.gc.sweep_delay),
        (Duration::from_secs(1), Duration::from_secs(2), Duration::ZERO)
    );
    assert_eq!(
        load_str("[gc]\nttl = \"0s\"\n").unwrap().gc.ttl,
        Duration::ZERO,
        "idle expiry off"
    );
    assert_eq!(
        load_str(&render_redacted(&cfg)).unwrap().gc,
        cfg.gc,
        "renders back"
    );
    let flags = ServeOverrides {
        gc: GcOverrides {
            gc_ttl: Some("1h".into()),
            gc_sweep_delay: Some("5s".into()),
            gc_bucket_bytes: Some("10MiB".into()),
            ..GcOverrides::default()
        },
        ..ServeOverrides::default()
    };
    let file = write("[gc]\nttl = \"1s\"\ninterval = \"2s\"\n");
    let flagged = load(Some(file.path()), &flags).unwrap().gc;
    assert_eq!(
        (flagged.ttl, flagged.interval, flagged.sweep_delay),
        (
            Duration::from_secs(3600),
            Duration::from_secs(2),
            Duration::from_secs(5)
        ),
        "flags win over the file, field by field"
    );
    assert_eq!(flagged.bucket_bytes, Some(10 << 20));
    let bad = ServeOverrides {
        gc: GcOverrides {
            gc_interval: Some("0s".into()),
            ..GcOverrides::default()
        },
        ..ServeOverrides::default()
    };
    let err = load(None, &bad).unwrap_err().to_string();
    assert!(err.contains("gc.interval: must be greater than zero"), "{err}");
    assert_section_errors(
        "gc",
        vec![
            (
                "interval = \"0s\"".into(),
                "gc.interval: must be greater than zero".into(),
            ),
            ("ttl = \"a week\"".into(), "gc.ttl: invalid duration".into()),
            ("budget = 1".into(), "unknown field `budget`".into()),
            (
                "bucket_bytes = 0".into(),
                "gc.bucket_bytes: must be greater than zero".into(),
            ),
            (
                "orphan_grace = \"soon\"".into(),
                "gc.orphan_grace: invalid duration".into(),
            ),
            (
                "delete_rate = 0".into(),
                "gc.delete_rate: must be between 1 and".into(),
            ),
        ],
    );
}
