//! `regcache config check` through the real binary: valid files print the
//! effective configuration with secrets redacted, invalid ones exit 1 with
//! an error naming the file and the field; flags and `REGCACHE_*` variables
//! apply as they do for `serve`.

use std::path::Path;
use std::process::{Command, Output};

fn config_check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["config", "check"])
        .arg(file)
        .env("REGCACHE_TEST_PASSWORD", "env-secret-4711")
        .output()
        .expect("running regcache")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing test file");
    path
}

#[test]
fn a_good_file_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "quay-password", "file-secret-0815\n");
    let config = write(
        dir.path(),
        "regcache.toml",
        &format!(
            r#"
            listen = "127.0.0.1:5000"
            [cache]
            memory_bytes = "256MiB"
            [[upstream]]
            name = "quay.io"
            username = "robot"
            password_file = "{}"
            [[upstream]]
            name = "registry.local:5000"
            remote_url = "http://127.0.0.1:5001"
            username = "ci"
            password_env = "REGCACHE_TEST_PASSWORD"
            "#,
            secret.display()
        ),
    );
    let out = config_check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for expected in [
        "listen = \"127.0.0.1:5000\"",
        "memory_bytes = \"256MiB\"",
        "name = \"docker.io\"",
        "name = \"registry.local:5000\"",
        "password = \"[redacted]\"",
        "password_env = \"REGCACHE_TEST_PASSWORD\"",
        &format!("password_file = \"{}\"", secret.display()),
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    for secret in ["file-secret-0815", "env-secret-4711"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn a_bad_file_exits_1_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[[upstream]]\nname = \"quay.io\"\n[[upstream]]\nname = \"x.io\"\nremote_url = \"ftp://x.io\"\n",
            "upstream[1].remote_url: scheme must be http or https",
        ),
        (
            "[cache]\nmemory_bytes = \"12XB\"\n",
            "cache.memory_bytes: invalid size \"12XB\"",
        ),
        ("listen = \"0.0.0.0:5000\"\nlsiten = \"x\"\n", "line 2"),
    ] {
        let config = write(dir.path(), "bad.toml", text);
        let out = config_check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {stderr}");
        assert!(stderr.contains(expected), "{text:?}: no {expected:?} in {stderr}");
        assert!(
            stderr.contains(&config.display().to_string()),
            "{text:?}: no path in {stderr}"
        );
    }
}

#[test]
fn check_shows_what_serve_would_run_with_variables_and_flags_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "regcache.toml", "listen = \"127.0.0.1:5000\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["config", "check", "--data-dir", "/srv/from-flag"])
        .env("REGCACHE_CONFIG", &config)
        .env("REGCACHE_LISTEN", "127.0.0.1:6000")
        .env("REGCACHE_NODE_ID", "3")
        .env("REGCACHE_CLUSTER_LISTEN", "127.0.0.1:6001")
        .env("REGCACHE_PEERS", "3=127.0.0.1:6001")
        .env("REGCACHE_GC_TTL", "2h")
        .output()
        .expect("running regcache");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "listen = \"127.0.0.1:6000\"",
        "data_dir = \"/srv/from-flag\"",
        "node_id = 3",
        "listen = \"127.0.0.1:6001\"",
        "ttl = \"2h\"",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }

    // A missing file is named, with the reason once.
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["config", "check", "/nonexistent/regcache.toml"])
        .output()
        .expect("running regcache");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: reading /nonexistent/regcache.toml"),
        "{stderr}"
    );
}
