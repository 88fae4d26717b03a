//! Real container runtimes pulling through the real binary, configured by
//! `regcache config containerd|podman`, and docs/clients.md checked against
//! what those generators print.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Regcache;
use tempfile::TempDir;
use testkit::{BuiltImage, OciLayout, Process, Registry, SeededRegistry};

/// Runs the regcache binary in `cwd` and returns its stdout; panics unless
/// it succeeds.
fn regcache_in(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running regcache");
    assert!(
        out.status.success(),
        "regcache {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `program` under coreutils' `timeout`: a stalled pull fails the test
/// instead of hanging CI.
fn bounded(program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120", program]);
    cmd
}

/// Runs a tool to completion; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A registry holding one random two-layer image under `repo_and_tag`, and
/// the layout it was built in.
fn upstream_with_image(repo_and_tag: &str) -> (Registry, OciLayout, BuiltImage) {
    let SeededRegistry {
        registry,
        layout,
        image,
        ..
    } = SeededRegistry::start(&[200_000, 30_000], repo_and_tag).expect("a registry with an image");
    registry.clear_log();
    (registry, layout, image)
}

/// Asserts that every request the upstream saw was for `repo` and that it
/// served each blob of `image` exactly once.
fn assert_only_served(registry: &Registry, repo: &str, image: &BuiltImage) {
    let requests = registry.requests();
    let prefix = format!("/v2/{repo}/");
    assert!(
        requests.iter().all(|r| r.path.starts_with(&prefix)),
        "requests for other repositories reached this upstream: {requests:?}"
    );
    for digest in image.blob_digests() {
        assert_eq!(
            registry.count("GET", &format!("{prefix}blobs/{digest}")),
            1,
            "{digest}: {requests:?}"
        );
    }
}

/// A containerd daemon with its root, state and socket in a temp dir under
/// /tmp: the socket path must stay within the ~108 bytes unix sockets allow.
struct Containerd {
    /// Killed, and its logs shown if the test failed, when dropped (before `dir`).
    _daemon: Process,
    dir: TempDir,
}

/// The snapshotter that works without overlay mounts, i.e. in any sandbox.
const SNAPSHOTTER: &str = "native";
const NAMESPACE: &str = "regcache-test";

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .expect("creating the containerd dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        // CRI is not needed by ctr; `opt` would install into /opt/containerd.
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\"]\n\
             [grpc]\n  address = \"{}\"\n",
            path("root"),
            path("state"),
            path("c.sock"),
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("writing the containerd config");
        let process = Process::spawn(Path::new("containerd"), &["--config", &path("config.toml")], &[])
            .expect("containerd is not installed: run scripts/install-test-deps.sh (as root)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process.logs().contains("containerd successfully booted") {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                process.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd {
            _daemon: process,
            dir,
        }
    }

    /// `ctr --address SOCK --namespace NS ARGS…`
    fn ctr(&self, args: &[&str]) -> String {
        let sock = self.dir.path().join("c.sock");
        let mut cmd = bounded("ctr");
        cmd.arg("--address")
            .arg(sock)
            .args(["--namespace", NAMESPACE])
            .args(args);
        run(&mut cmd)
    }
}

/// The directories in `dir`: unpacked snapshots of containerd's native
/// snapshotter, or layers of podman's vfs driver, each a full file tree.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a dir entry").path())
        .collect()
}

/// Every regular file of every layer of `image` (extracted with tar) must be
/// in one of the unpacked `trees` with the same content.
fn assert_unpacked(layout: &OciLayout, image: &BuiltImage, trees: &[PathBuf]) {
    let extracted = tempfile::tempdir().expect("creating a temp dir");
    for (digest, _) in &image.layer_digests {
        let mut tar = bounded("tar");
        tar.arg("-xzf")
            .arg(layout.blob_path(digest))
            .arg("-C")
            .arg(extracted.path());
        run(&mut tar);
    }
    let mut files = Vec::new();
    for top in std::fs::read_dir(extracted.path()).expect("reading extracted layers") {
        let top = top.expect("an extracted entry").path();
        for file in std::fs::read_dir(&top).expect("reading a layer dir") {
            files.push(file.expect("an extracted file").path());
        }
    }
    assert!(files.len() >= image.layer_digests.len(), "{files:?}");
    for file in files {
        let relative = file
            .strip_prefix(extracted.path())
            .expect("below the extract dir");
        let expected = testkit::sha256_file(&file).expect("hashing");
        let found = trees.iter().any(|s| {
            let candidate = s.join(relative);
            candidate.is_file() && testkit::sha256_file(&candidate).ok() == Some(expected.clone())
        });
        assert!(found, "{} is in none of {trees:?}", relative.display());
    }
}

#[test]
fn containerd_pulls_two_upstreams_through_ns_routing() {
    let (hub, hub_layout, hub_image) = upstream_with_image("library/app:v1");
    let (quay, quay_layout, quay_image) = upstream_with_image("team/tool:v2");
    let data = tempfile::tempdir().unwrap();
    let quay_arg = format!("quay.io={}", quay.url());
    let cache = Regcache::start(&hub, data.path(), &["--upstream", &quay_arg]);

    let certs = tempfile::tempdir().unwrap();
    let written = regcache_in(
        certs.path(),
        &[
            "config",
            "containerd",
            "--mirror",
            &cache.url(""),
            "--dir",
            "certs.d",
        ],
    );
    assert_eq!(
        written.lines().count(),
        7,
        "one file per built-in upstream:\n{written}"
    );
    let certs_d = certs.path().join("certs.d");
    let hosts = std::fs::read_to_string(certs_d.join("quay.io/hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!("[host.\"{}\"]", cache.url(""))),
        "{hosts}"
    );

    let containerd = Containerd::start();
    let certs_arg = certs_d.display().to_string();
    let pull = |reference: &str| {
        containerd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            &certs_arg,
            "--snapshotter",
            SNAPSHOTTER,
            reference,
        ])
    };
    pull("docker.io/library/app:v1");
    pull("quay.io/team/tool:v2");

    // containerd sent `?ns=quay.io` without a path prefix: only the ns can
    // have routed those requests to the quay.io upstream.
    assert_only_served(&hub, "library/app", &hub_image);
    assert_only_served(&quay, "team/tool", &quay_image);

    let ready = containerd.ctr(&["images", "check", "--quiet", "--snapshotter", SNAPSHOTTER]);
    for reference in ["docker.io/library/app:v1", "quay.io/team/tool:v2"] {
        assert!(
            ready.lines().any(|l| l == reference),
            "{reference} not complete and unpacked:\n{ready}"
        );
    }
    let snapshots = subdirs(
        &containerd
            .dir
            .path()
            .join("root/io.containerd.snapshotter.v1.native/snapshots"),
    );
    assert_unpacked(&hub_layout, &hub_image, &snapshots);
    assert_unpacked(&quay_layout, &quay_image, &snapshots);
}

/// podman with its storage (vfs: no overlay mounts needed), run dir, temp
/// dir, home and registries.conf all private to one test.
struct Podman {
    dir: TempDir,
}

impl Podman {
    fn new(registries_conf: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("podman-")
            .tempdir()
            .expect("creating the podman dir");
        for sub in ["root", "runroot", "tmp", "home", "run"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a podman dir");
        }
        std::fs::write(dir.path().join("registries.conf"), registries_conf).expect("writing registries.conf");
        Podman { dir }
    }

    fn podman(&self, args: &[&str]) -> String {
        let path = |name: &str| self.dir.path().join(name);
        let mut cmd = bounded("podman");
        cmd.arg("--root")
            .arg(path("root"))
            .arg("--runroot")
            .arg(path("runroot"))
            .arg("--tmpdir")
            .arg(path("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", path("registries.conf"))
            .env("HOME", path("home"))
            .env("XDG_RUNTIME_DIR", path("run"))
            .env("TMPDIR", path("tmp"));
        run(&mut cmd)
    }
}

#[test]
fn podman_pulls_through_a_path_prefix_mirror() {
    let (hub, _hub_layout, _) = upstream_with_image("library/app:v1");
    let (quay, quay_layout, image) = upstream_with_image("team/tool:v2");
    let data = tempfile::tempdir().unwrap();
    let quay_arg = format!("quay.io={}", quay.url());
    let cache = Regcache::start(&hub, data.path(), &["--upstream", &quay_arg]);

    let conf = regcache_in(
        data.path(),
        &[
            "config",
            "podman",
            "--mirror",
            &cache.host(),
            "--upstream",
            "quay.io",
            "--insecure",
        ],
    );
    assert!(
        conf.contains(&format!("location = \"{}/quay.io\"", cache.host())),
        "{conf}"
    );
    let podman = Podman::new(&conf);
    // The real quay.io is unreachable from here (and has no such image):
    // the pull succeeds only through the mirror.
    podman.podman(&["pull", "quay.io/team/tool:v2"]);
    let digest = podman.podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        "quay.io/team/tool:v2",
    ]);
    assert_eq!(digest.trim(), image.manifest_digest);
    assert_only_served(&quay, "team/tool", &image);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert_unpacked(
        &quay_layout,
        &image,
        &subdirs(&podman.dir.path().join("root/vfs/dir")),
    );
}

/// The fenced code blocks of a markdown text: (info string, body), with the
/// indentation of the opening fence removed (blocks inside list items).
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for line in markdown.lines() {
        let indent = line.len() - line.trim_start().len();
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((indent, info.to_owned(), String::new())),
            (Some(_), Some(_)) => {
                let (_, info, body) = open.take().expect("an open block");
                blocks.push((info, body));
            }
            (Some((indent, _, body)), None) => {
                body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unclosed code block");
    blocks
}

/// Checks one snippet: a `console` block is a generator command and its
/// exact output; each `regcache` line of an `sh` block must run; a `toml`
/// block is containerd's `config_path` setting.
fn check_snippet(info: &str, body: &str) {
    match info {
        "console" => {
            let (command, expected) = body.split_once('\n').expect("a command line");
            let args: Vec<&str> = command
                .strip_prefix("$ regcache ")
                .unwrap_or_else(|| panic!("not a regcache command: {command}"))
                .split_whitespace()
                .collect();
            let cwd = tempfile::tempdir().expect("creating a temp dir");
            assert_eq!(regcache_in(cwd.path(), &args), expected, "output of {command}");
        }
        "sh" => {
            let cwd = tempfile::tempdir().expect("creating a temp dir");
            let commands: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("regcache ")).collect();
            assert!(!commands.is_empty(), "no regcache command in\n{body}");
            for command in commands {
                regcache_in(cwd.path(), &command.split_whitespace().collect::<Vec<_>>());
            }
        }
        "toml" => check_config_path(body),
        _ => panic!("unchecked snippet ({info:?}):\n{body}"),
    }
}

const CONFIG_PATH: &str = "config_path = \"/etc/containerd/certs.d\"";

/// The version 2 form is what this machine's containerd (1.6) reads: its
/// effective configuration must show the setting. containerd 2.x cannot be
/// installed here; its version 3 form is checked for the key it documents.
fn check_config_path(snippet: &str) {
    let parsed: toml::Table = toml::from_str(snippet).expect("valid toml");
    match parsed["version"].as_integer() {
        Some(2) => {
            let dir = tempfile::tempdir().expect("creating a temp dir");
            let file = dir.path().join("config.toml");
            std::fs::write(&file, snippet).expect("writing a containerd config");
            let dump = run(bounded("containerd")
                .arg("--config")
                .arg(&file)
                .args(["config", "dump"]));
            let section = "[plugins.\"io.containerd.grpc.v1.cri\".registry]";
            let after = &dump[dump
                .find(section)
                .unwrap_or_else(|| panic!("no {section} in\n{dump}"))..];
            let setting = after.lines().nth(1).expect("a line after the section header");
            assert_eq!(setting.trim(), CONFIG_PATH, "{dump}");
        }
        Some(3) => {
            let setting = &parsed["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"];
            assert_eq!(setting.as_str(), Some("/etc/containerd/certs.d"), "{snippet}");
        }
        version => panic!("unexpected containerd config version {version:?}:\n{snippet}"),
    }
}

#[test]
fn every_snippet_in_the_docs_is_checked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/clients.md")).unwrap();
    let blocks = fenced_blocks(&doc);
    let count = |info: &str| blocks.iter().filter(|(i, _)| i == info).count();
    assert_eq!(
        (count("console"), count("sh"), count("toml")),
        (3, 1, 2),
        "one block per runtime and version: {blocks:?}"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Pulling through it"))
        .unwrap();
    let readme_blocks = fenced_blocks(section);
    assert_eq!(readme_blocks.len(), 3, "{readme_blocks:?}");
    for (info, body) in blocks.iter().chain(&readme_blocks) {
        check_snippet(info, body);
    }
}
