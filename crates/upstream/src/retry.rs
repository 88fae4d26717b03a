//! Retries of requests that never reached the upstream.

use std::time::Duration;

/// Attempts per request, the first included.
const CONNECT_ATTEMPTS: u32 = 3;
const BASE_BACKOFF: Duration = Duration::from_millis(100);

fn backoff(retry: u32) -> Duration {
    BASE_BACKOFF * 2u32.pow(retry)
}

/// Sends the request `build` makes, retrying with backoff only when the
/// connection could not be made: then the upstream never saw the request,
/// so repeating it is safe. HTTP statuses and failures after sending are
/// returned as they are.
pub(crate) async fn send(
    upstream: &str,
    op: &'static str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut retry = 0;
    loop {
        match build().send().await {
            Err(err) if err.is_connect() && retry + 1 < CONNECT_ATTEMPTS => {
                let wait = backoff(retry);
                tracing::debug!(
                    upstream,
                    op,
                    retry,
                    wait_ms = wait.as_millis() as u64,
                    "connect failed, retrying"
                );
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles() {
        let waits: Vec<_> = (0..CONNECT_ATTEMPTS - 1).map(backoff).collect();
        assert_eq!(waits, [Duration::from_millis(100), Duration::from_millis(200)]);
    }
}
