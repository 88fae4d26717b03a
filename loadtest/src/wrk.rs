//! Raw serving figures with the fastest clients at hand: wrk for many
//! connections, curl for one stream. k6 is the user's tool; on two cores it
//! would measure itself at these rates.

use std::process::Command;

use anyhow::{Context as _, bail};

/// What one wrk run measured.
pub struct WrkRun {
    pub requests_per_second: f64,
    pub requests: f64,
    /// Non-2xx answers or socket errors, as wrk words them: an error page is
    /// cheap to serve, so such a figure is not comparable.
    pub problems: Vec<String>,
}

/// `wrk -t2 -cCONNECTIONS -dSECONDS` on `url` with extra headers.
pub fn wrk(url: &str, connections: u32, seconds: u32, headers: &[&str]) -> anyhow::Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (installed by scripts/install-test-deps.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk {url} failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkRun> {
    let requests_per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    // "  12345 requests in 10.00s, 1.2GB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let problems = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .map(str::to_owned)
        .collect();
    Some(WrkRun {
        requests_per_second,
        requests,
        problems,
    })
}

/// One download of `url` to nowhere with curl: bytes and bytes per second.
pub fn curl(url: &str) -> anyhow::Result<(u64, f64)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "600", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_download} %{speed_download}"])
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        ["200", size, speed] if out.status.success() => Ok((size.parse()?, speed.parse()?)),
        _ => bail!("curl {url}: {text} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:1/x\n  2 threads and 64 connections\n  \
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    20.1ms   \
                    3.2ms  50.0ms   90.00%\n  31234 requests in 10.00s, 30.5GB read\n  Socket errors: \
                    connect 0, read 0, write 0, timeout 3\n  Non-2xx or 3xx responses: 12\nRequests/sec:   \
                    3123.40\nTransfer/sec:      3.05GB\n";
        let run = parse_wrk(text).expect("parsed");
        assert_eq!(run.requests_per_second, 3123.4);
        assert_eq!(run.requests, 31234.0);
        assert_eq!(run.problems.len(), 2);
        assert!(parse_wrk("garbage").is_none());
    }
}
