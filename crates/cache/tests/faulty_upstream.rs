//! Fault injection: an upstream (a scripted test server, not a registry)
//! that sends blob bytes which do not match the requested digest, or ends
//! the body early. Nothing may be stored and every client's stream must end
//! with an error.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{cache_over, drain, scripted_upstream};
use oci::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_never_stored_and_every_client_sees_an_error() {
    let hits = Arc::new(AtomicUsize::new(0));
    let url = scripted_upstream(vec![7u8; 3 << 20], Arc::clone(&hits)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cache, source, disk) = cache_over(dir.path(), &url).await;
    let cache = Arc::new(cache);
    let source = Arc::new(source);
    let claimed = Digest::sha256_of(b"the bytes the client asked for");
    let repo: oci::RepoName = "library/x".parse().unwrap();

    let clients: Vec<_> = (0..5)
        .map(|_| {
            let (cache, source, repo, claimed) =
                (cache.clone(), source.clone(), repo.clone(), claimed.clone());
            tokio::spawn(async move {
                match cache.blob(&source, &repo, &claimed, None).await {
                    Ok(hit) => drain(hit.body).await.map(|_| ()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            })
        })
        .collect();
    for client in clients {
        assert!(
            client.await.unwrap().is_err(),
            "a client received a blob that does not match its digest"
        );
    }
    assert_eq!(disk.size_of(&claimed), None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "temp file left behind"
    );

    // The next request fetches again (nothing bad was cached) and fails again.
    let before = hits.load(Ordering::SeqCst);
    let again = match cache.blob(&source, &repo, &claimed, None).await {
        Ok(hit) => drain(hit.body).await.map(|_| ()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    assert!(again.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_bytes_are_stored_once_and_served_from_disk() {
    let content = vec![42u8; 1 << 20];
    let digest = Digest::sha256_of(&content);
    let hits = Arc::new(AtomicUsize::new(0));
    let url = scripted_upstream(content.clone(), Arc::clone(&hits)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cache, source, disk) = cache_over(dir.path(), &url).await;
    let repo: oci::RepoName = "library/x".parse().unwrap();
    for _ in 0..3 {
        let hit = cache.blob(&source, &repo, &digest, None).await.unwrap();
        assert_eq!(hit.size, content.len() as u64);
        assert_eq!(drain(hit.body).await.unwrap(), content);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Clients may finish reading before the download is committed.
    for _ in 0..500 {
        if disk.size_of(&digest).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(disk.size_of(&digest), Some(content.len() as u64));
}
