//! The Helm chart boots the cluster it describes: the chart rendered by
//! Helm's own engine for three members (helm/tests/render.py), and each
//! member run as the kubelet would run its pod, with the rendered container
//! arguments, environment (Secret references resolved) and config file, on
//! this machine. The pods' stable DNS names resolve to distinct loopback
//! addresses through /etc/hosts entries this test adds and removes; each
//! member listens on its own address (what the pod's network namespace
//! would give it). A real upstream and a real S3 server; skopeo pulls
//! through the members; one member is replaced as a rolling update does,
//! and pulls go on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::{Process, S3Server, SeededRegistry};

const RELEASE: &str = "regcache";
const NAMESPACE: &str = "cache";
const MEMBERS: usize = 3;
/// Where scripts/install-test-deps.sh installs Helm's engine for Python.
const CHART_TOOLS: &str = "/opt/regcache-test-deps/chart-tools";

/// The chart's objects for `values`, rendered by Helm.
fn render(values: &serde_json::Value) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tools = std::env::var("REGCACHE_CHART_TOOLS").unwrap_or_else(|_| CHART_TOOLS.to_owned());
    let out = std::process::Command::new("python3")
        .arg(root.join("helm/tests/render.py"))
        .args([&values.to_string(), RELEASE, NAMESPACE])
        .env("PYTHONPATH", tools)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("rendered objects")
}

fn object<'a>(objects: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    let mut found = objects.iter().filter(|o| o["kind"] == kind);
    let first = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

/// Lines added to /etc/hosts for the test's life.
struct Hosts {
    marker: String,
}

impl Hosts {
    fn add(names: &[(String, String)]) -> Hosts {
        let marker = format!("# regcache chart_boot {}", std::process::id());
        let mut text = std::fs::read_to_string("/etc/hosts").expect("reading /etc/hosts");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for (ip, name) in names {
            text.push_str(&format!("{ip} {name} {marker}\n"));
        }
        // In place: /etc/hosts may be a mount that cannot be renamed over.
        std::fs::write("/etc/hosts", text).expect("writing /etc/hosts (the test runs as root)");
        Hosts { marker }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            let kept: String = text
                .lines()
                .filter(|l| !l.ends_with(&self.marker))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept);
        }
    }
}

/// Secrets by name, each key → value.
type Secrets<'a> = BTreeMap<&'a str, BTreeMap<&'a str, String>>;

/// `text` with the pod's /etc/regcache mounts at `mounted`.
fn at_mount(text: &str, mounted: &Path) -> String {
    text.replace("/etc/regcache/", &format!("{}/", mounted.display()))
}

/// Writes what the pod mounts under /etc/regcache into `mounted`: the
/// ConfigMap's file, and each upstream Secret's keys as files.
fn mount(objects: &[serde_json::Value], mounted: &Path, secrets: &Secrets) {
    let toml = object(objects, "ConfigMap")["data"]["regcache.toml"]
        .as_str()
        .expect("the config");
    std::fs::write(mounted.join("regcache.toml"), at_mount(toml, mounted)).expect("writing the config");
    let pod = &object(objects, "StatefulSet")["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().expect("mounts");
    for volume in pod["volumes"].as_array().expect("volumes") {
        let Some(secret) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        let at = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .and_then(|m| m["mountPath"].as_str())
            .expect("the secret's mount");
        let dir = std::path::PathBuf::from(at_mount(&format!("{at}/"), mounted));
        std::fs::create_dir_all(&dir).expect("a mount dir");
        for item in volume["secret"]["items"].as_array().expect("items") {
            let key = item["key"].as_str().expect("a key");
            let path = item["path"].as_str().expect("a path");
            std::fs::write(dir.join(path), &secrets[secret][key]).expect("writing a secret key");
        }
    }
}

/// One pod: its name, its address, and the running member.
struct Pod {
    hostname: String,
    ip: String,
    data: tempfile::TempDir,
    process: Option<Process>,
}

impl Pod {
    fn host(&self) -> String {
        format!("{}:5000", self.ip)
    }
}

/// What the kubelet would start for a pod of the StatefulSet.
struct PodSpec {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl PodSpec {
    /// The container's arguments with `/etc/regcache` (where the pod
    /// mounts its ConfigMap and Secrets) at `mounted`, and its environment
    /// with Secret references resolved from `secrets` (name → key → value).
    fn of(objects: &[serde_json::Value], mounted: &Path, secrets: &Secrets) -> PodSpec {
        let container = &object(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0];
        let args = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| at_mount(a.as_str().expect("an arg"), mounted))
            .collect();
        let env = container["env"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let name = e["name"].as_str().expect("an env name").to_owned();
                let value = match e["value"].as_str() {
                    Some(v) => v.to_owned(),
                    None => {
                        let secret = &e["valueFrom"]["secretKeyRef"];
                        let (name, key) = (
                            secret["name"].as_str().expect("secret"),
                            secret["key"].as_str().expect("key"),
                        );
                        secrets[name][key].clone()
                    }
                };
                (name, value)
            })
            .collect();
        PodSpec { args, env }
    }

    /// Starts `pod`'s member: the pod's hostname, its own address for the
    /// two ports, its own volume at the data dir.
    fn start(&self, pod: &mut Pod) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"));
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOSTNAME", &pod.hostname)
            .env("REGCACHE_LISTEN", pod.host())
            .env("REGCACHE_CLUSTER_LISTEN", format!("{}:5001", pod.ip))
            .env("REGCACHE_DATA_DIR", pod.data.path());
        pod.process = Some(Process::start(cmd).expect("starting a member"));
    }
}

/// `/status.json` once the member listens.
fn status(pod: &Pod) -> Option<serde_json::Value> {
    std::net::TcpStream::connect(pod.host()).ok()?;
    let (code, body) = common::raw_request(&pod.host(), "GET", "/status.json");
    (code == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// Waits until every pod sees the same leader among three voters.
fn wait_for_group(pods: &[Pod]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<Option<serde_json::Value>> = pods.iter().map(status).collect();
        let leaders: Vec<Option<u64>> = views
            .iter()
            .map(|v| v.as_ref().and_then(|v| v["raft"]["leader"].as_u64()))
            .collect();
        let members_ok = views.iter().all(|v| {
            v.as_ref()
                .and_then(|v| v["raft"]["members"].as_array().map(Vec::len))
                == Some(MEMBERS)
        });
        if members_ok && leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0].expect("a leader");
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = pods
                .iter()
                .filter_map(|p| p.process.as_ref().map(Process::logs))
                .collect();
            panic!("no agreed leader: {views:#?}\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pull(pod: &Pod, dest: &Path, blobs: &[String]) {
    let _ = std::fs::remove_dir_all(dest);
    let src = format!("docker://{}/app:v1", pod.host());
    let dst = format!("dir:{}", dest.display());
    if let Err(e) = testkit::skopeo(&["copy", "--src-tls-verify=false", &src, &dst]) {
        panic!("skopeo through {}: {e:#}", pod.hostname);
    }
    common::assert_dir_blobs_verified(dest, blobs);
}

#[test]
fn the_chart_boots_a_three_member_cluster_that_survives_a_rolling_update() {
    let seeded = SeededRegistry::start(&[3_000_000, 300_000], "library/app:v1").expect("a registry");
    let s3 = S3Server::start().expect("starting the S3 server");
    let s3_env: BTreeMap<&str, String> = s3.env().into_iter().collect();
    let values = serde_json::json!({
        "replicaCount": MEMBERS,
        "upstreams": [{"upstream": "docker.io", "remoteURL": seeded.url(), "secretReferenceName": "hub-robot"}],
        "storage": {"kind": "s3", "s3": {
            "bucket": s3.bucket(),
            "endpoint": s3.endpoint(),
            "region": s3_env["AWS_REGION"],
            "forcePathStyle": true,
            "existingSecret": "regcache-s3",
        }},
        "extraEnv": [{"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}],
        "persistence": {"size": "2Gi"},
    });
    let objects = render(&values);
    let secrets = BTreeMap::from([
        (
            "regcache-s3",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", s3_env["AWS_ACCESS_KEY_ID"].clone()),
                ("AWS_SECRET_ACCESS_KEY", s3_env["AWS_SECRET_ACCESS_KEY"].clone()),
            ]),
        ),
        (
            "hub-robot",
            BTreeMap::from([
                ("username", "robot\n".to_owned()),
                ("password", "s3cr3t\n".to_owned()),
            ]),
        ),
    ]);
    let mounted = tempfile::tempdir().expect("a dir");
    mount(&objects, mounted.path(), &secrets);
    let spec = PodSpec::of(&objects, mounted.path(), &secrets);

    let service = object(&objects, "StatefulSet")["spec"]["serviceName"]
        .as_str()
        .expect("serviceName")
        .to_owned();
    let mut pods: Vec<Pod> = (0..MEMBERS)
        .map(|i| Pod {
            hostname: format!("{RELEASE}-{i}"),
            ip: format!("127.0.{}.{}", 100 + std::process::id() % 100, i + 1),
            data: tempfile::tempdir().expect("a volume"),
            process: None,
        })
        .collect();
    let names: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                p.ip.clone(),
                format!("{}.{service}.{NAMESPACE}.svc.cluster.local", p.hostname),
            )
        })
        .collect();
    let _hosts = Hosts::add(&names);
    for pod in &mut pods {
        spec.start(pod);
    }
    let leader = wait_for_group(&pods);
    println!("the chart's members formed a group led by {leader}");

    let blobs = seeded.image.blob_digests();
    let pulled = tempfile::tempdir().expect("a dir");
    for (i, pod) in pods.iter().enumerate() {
        pull(pod, &pulled.path().join(i.to_string()), &blobs);
    }

    // A rolling update: the last pod first, stopped (SIGTERM) and started
    // again on its volume; the others keep serving meanwhile.
    let last = MEMBERS - 1;
    pods[last].process.as_mut().expect("running").stop();
    pull(&pods[0], &pulled.path().join("during"), &blobs);
    let mut pod = pods.pop().expect("the last pod");
    spec.start(&mut pod);
    pods.push(pod);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&pods[last]).is_none() || common::raw_request(&pods[last].host(), "GET", "/readyz").0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "the restarted member never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_group(&pods);
    pull(&pods[last], &pulled.path().join("after"), &blobs);
    for pod in &mut pods {
        if let Some(process) = pod.process.as_mut() {
            process.stop();
        }
    }
}
