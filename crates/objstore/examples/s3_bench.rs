//! The baseline of loadtest/compare.sh's "blob from S3" figure: how fast a
//! plain aws-sdk-s3 client, with no cache in the way, downloads the object
//! regcache is measured serving. `put` places the object the way regcache
//! itself would (objstore's multipart upload from a file); `get` downloads it
//! with the SDK directly, streaming the body to nowhere.
//!
//! ```text
//! s3_bench put --endpoint URL --bucket B --key K --file PATH
//! s3_bench get --endpoint URL --bucket B --key K [--runs N]
//! s3_bench find --endpoint URL --bucket B --prefix P
//! ```
//!
//! `find` prints the newest key under the prefix (regcache's keys end with
//! an upload id that sorts by time).
//!
//! Credentials and region come from the standard AWS environment variables
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); requests are
//! path-style. `get` prints one line, `bytes=N best_mib_s=X`: the best of N
//! runs, each timed from sending the request to the last byte.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use objstore::{ObjectStore, S3Config, S3Store, S3Timeouts};

const USAGE: &str = "usage: s3_bench put --endpoint URL --bucket B --key K --file PATH\n       \
                     s3_bench get --endpoint URL --bucket B --key K [--runs N]\n       \
                     s3_bench find --endpoint URL --bucket B --prefix P";

#[derive(Default)]
struct Args {
    endpoint: String,
    bucket: String,
    key: String,
    prefix: String,
    file: Option<PathBuf>,
    runs: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().context(USAGE)?;
    let mut args = Args {
        runs: 1,
        ..Args::default()
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--endpoint" => args.endpoint = value,
            "--bucket" => args.bucket = value,
            "--key" => args.key = value,
            "--prefix" => args.prefix = value,
            "--file" => args.file = Some(value.into()),
            "--runs" => args.runs = value.parse().context("--runs")?,
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    ensure!(
        !args.endpoint.is_empty() && !args.bucket.is_empty() && args.runs > 0,
        "--endpoint and --bucket are required, --runs at least 1\n{USAGE}"
    );
    let needed = if command == "find" {
        &args.prefix
    } else {
        &args.key
    };
    ensure!(
        !needed.is_empty(),
        "{command} needs --key (find: --prefix)\n{USAGE}"
    );
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    match command.as_str() {
        "put" => put(&args, region).await,
        "get" => get(&args, region).await,
        "find" => {
            let client = sdk_client(&args.endpoint, region).await;
            println!("{}", newest(&client, &args.bucket, &args.prefix).await?);
            Ok(())
        }
        _ => bail!("unknown command {command}\n{USAGE}"),
    }
}

/// Uploads `--file` with objstore, so the object is laid out (parts and all)
/// like one regcache uploaded.
async fn put(args: &Args, region: String) -> anyhow::Result<()> {
    let path = args.file.as_deref().context("put needs --file")?;
    let size = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    let store = S3Store::new(S3Config {
        bucket: args.bucket.clone(),
        prefix: String::new(),
        endpoint: Some(args.endpoint.clone()),
        region,
        force_path_style: true,
        timeouts: S3Timeouts::default(),
    })
    .await?;
    ObjectStore::S3(store).put_file(&args.key, path, size).await?;
    Ok(())
}

/// Downloads the object `--runs` times with the SDK alone and prints the
/// best throughput.
async fn get(args: &Args, region: String) -> anyhow::Result<()> {
    let client = sdk_client(&args.endpoint, region).await;
    let key = args.key.as_str();
    let (mut bytes, mut best) = (0u64, 0f64);
    for _ in 0..args.runs {
        let start = Instant::now();
        let mut body = client
            .get_object()
            .bucket(&args.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("GET {}/{key}", args.bucket))?
            .body;
        bytes = 0;
        while let Some(chunk) = body.try_next().await? {
            bytes += chunk.len() as u64;
        }
        let mib_s = bytes as f64 / 1_048_576.0 / start.elapsed().as_secs_f64();
        best = best.max(mib_s);
    }
    println!("bytes={bytes} best_mib_s={best:.1}");
    Ok(())
}

/// An SDK client with checksums as regcache's own has them: only where S3
/// requires them.
async fn sdk_client(endpoint: &str, region: String) -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The greatest key under `prefix` (one page of listing is plenty here).
async fn newest(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> anyhow::Result<String> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .with_context(|| format!("LIST {bucket}/{prefix}"))?;
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .max()
        .map(str::to_owned)
        .with_context(|| format!("no object under {bucket}/{prefix}"))
}
