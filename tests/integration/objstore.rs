//! `send --to s3://BUCKET/PREFIX` against a real Garage on loopback: the tree arrives with
//! each object's `blake3` metadata, sending again skips everything, a cancelled transfer
//! leaves no multipart upload open, bad credentials and a missing bucket fail at once, and a
//! fan-out to a receiver and the store reads the source once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use tidegate::objstore::S3Options;
use tidegate::{DestinationFailure, Progress, Transfer, TransferOptions};

use crate::common::garage::{Garage, REGION};
use crate::common::{data, fast_options, write_file, TestServer};

const MIB: u64 = 1 << 20;

fn s3_options(g: &Garage) -> S3Options {
    let mut o = S3Options::default();
    o.endpoint = Some(g.endpoint.clone());
    o.region = Some(REGION.into());
    o.access_key_id = Some(g.key_id.clone());
    o.secret_access_key = Some(g.secret.clone());
    o
}

fn options(g: &Garage) -> TransferOptions {
    let mut o = fast_options();
    o.s3 = s3_options(g);
    o.file_reports = true;
    o
}

fn client(g: &Garage) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&g.endpoint)
            .with_allow_http(true)
            .with_region(REGION)
            .with_bucket_name(&g.bucket)
            .with_access_key_id(&g.key_id)
            .with_secret_access_key(&g.secret)
            .build()
            .unwrap(),
    )
}

/// Every object under `prefix`: key → (bytes, blake3 metadata).
async fn objects(store: &AmazonS3, prefix: &str) -> BTreeMap<String, (Vec<u8>, Option<String>)> {
    use futures_util::StreamExt;
    let mut out = BTreeMap::new();
    let mut list = store.list(Some(&Key::parse(prefix).unwrap()));
    while let Some(meta) = list.next().await {
        let meta = meta.unwrap();
        let got = store.get(&meta.location).await.unwrap();
        let blake3 = got
            .attributes
            .get(&Attribute::Metadata("blake3".into()))
            .map(|v| v.to_string());
        let bytes = got.bytes().await.unwrap().to_vec();
        out.insert(meta.location.to_string(), (bytes, blake3));
    }
    out
}

/// Asserts that the object `key` in `got` holds `bytes` and their BLAKE3 root as metadata.
fn assert_holds(got: &BTreeMap<String, (Vec<u8>, Option<String>)>, key: &str, bytes: &[u8]) {
    let (stored, blake3) = &got[key];
    assert!(stored == bytes, "{key}: the stored bytes differ");
    assert_eq!(
        blake3.as_deref(),
        Some(blake3::hash(bytes).to_hex().as_str()),
        "{key}: blake3 metadata"
    );
}

/// The bucket's multipart uploads still open (S3's ListMultipartUploads).
async fn open_uploads(g: &Garage, store: &AmazonS3) -> usize {
    let options = SignedUrlOptions::new().with_query([("uploads", "")]);
    let url = store
        .signed_url_opts(
            Method::GET,
            &Key::default(),
            Duration::from_secs(60),
            &options,
        )
        .await
        .unwrap();
    let body = reqwest::get(url.as_str()).await.unwrap();
    assert!(body.status().is_success(), "{}: {:?}", g.endpoint, body);
    let text = body.text().await.unwrap();
    assert!(text.contains("ListMultipartUploadsResult"), "{text}");
    text.matches("<UploadId>").count()
}

fn tree(root: &Path, big: u64, small: usize) -> BTreeMap<String, Vec<u8>> {
    let mut want = BTreeMap::new();
    std::fs::create_dir_all(root.join("tree/empty")).unwrap();
    write_file(&root.join("tree/big"), big, 7);
    want.insert(
        "tree/big".to_owned(),
        std::fs::read(root.join("tree/big")).unwrap(),
    );
    for i in 0..small {
        let rel = format!("tree/d{}/e{}/f{i}", i % 7, i % 3);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = data(1 + (i * 997) % 20_000, i as u64);
        std::fs::write(&path, &bytes).unwrap();
        want.insert(rel, bytes);
    }
    want
}

async fn send(
    paths: Vec<std::path::PathBuf>,
    to: Vec<String>,
    o: TransferOptions,
) -> tidegate::Report {
    Transfer::new(paths, to)
        .options(o)
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_arrives_with_its_blake3_metadata_and_sending_again_skips_it() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let want = tree(src.path(), 1 << 30, 2000);
    let to = format!("s3://{}/backup/2026", g.bucket);
    let report = send(vec![src.path().join("tree")], vec![to.clone()], options(&g)).await;
    assert!(report.success(), "{report:?}");
    let d = &report.destinations[0];
    assert_eq!(d.already_there, 0);
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("1 empty directory") && n.contains("tree/empty")),
        "{:?}",
        d.notes
    );
    let store = client(&g);
    let got = objects(&store, "backup/2026").await;
    assert_eq!(got.len(), want.len());
    for (rel, bytes) in &want {
        assert_holds(&got, &format!("backup/2026/{rel}"), bytes);
    }
    assert_eq!(open_uploads(&g, &store).await, 0);

    // Again: every object is there with the same size and root.
    let again = send(vec![src.path().join("tree")], vec![to], options(&g)).await;
    assert!(again.success(), "{again:?}");
    let d = &again.destinations[0];
    assert_eq!(d.already_there, want.len() as u64, "{d:?}");
    assert_eq!(d.bytes, 0, "nothing uploaded: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_large_file_is_uploaded_again_and_a_changed_small_one_too() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big");
    let small = src.path().join("small");
    write_file(&big, 40 * MIB, 1);
    std::fs::write(&small, data(5000, 1)).unwrap();
    let to = format!("s3://{}/", g.bucket);
    let paths = vec![big.clone(), small.clone()];
    let first = send(paths.clone(), vec![to.clone()], options(&g)).await;
    assert!(first.success(), "{first:?}");
    // Same sizes, other bytes: the roots differ from the stored metadata.
    write_file(&big, 40 * MIB, 2);
    std::fs::write(&small, data(5000, 2)).unwrap();
    let second = send(paths, vec![to], options(&g)).await;
    assert!(second.success(), "{second:?}");
    assert_eq!(second.destinations[0].already_there, 0);
    let got = objects(&client(&g), "").await;
    for (key, path) in [("big", &big), ("small", &small)] {
        assert_holds(&got, key, &std::fs::read(path).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_leaves_no_multipart_upload_open() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big");
    write_file(&big, 512 * MIB, 3);
    let mut transfer =
        Transfer::new(vec![big], vec![format!("s3://{}/c", g.bucket)]).options(options(&g));
    let mut events = transfer.subscribe();
    let handle = transfer.start().unwrap();
    // Cancel once some parts were stored, with more in flight.
    while let Some(event) = events.recv().await {
        if let Progress::Bytes { done_bytes, .. } = event {
            if done_bytes >= 30 * MIB {
                break;
            }
        }
    }
    handle.cancel();
    let report = handle.wait().await.unwrap();
    assert!(report.cancelled);
    let store = client(&g);
    assert_eq!(open_uploads(&g, &store).await, 0, "an upload was left open");
    assert!(objects(&store, "c").await.is_empty(), "nothing half-stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_bucket_fail_at_once() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let mut o = options(&g);
    o.s3.secret_access_key = Some("not the secret".into());
    let report = send(vec![file.clone()], vec![format!("s3://{}/", g.bucket)], o).await;
    let d = &report.destinations[0];
    assert_eq!(d.failure, Some(DestinationFailure::Authentication), "{d:?}");
    assert!(
        d.error
            .as_deref()
            .unwrap()
            .contains("refused the credentials"),
        "{d:?}"
    );

    let report = send(
        vec![file.clone()],
        vec!["s3://no-such-bucket/".into()],
        options(&g),
    )
    .await;
    let d = &report.destinations[0];
    assert!(
        d.error.as_deref().unwrap().contains("does not exist"),
        "{d:?}"
    );
    let mut o = options(&g);
    o.s3.access_key_id = None;
    let report = send(vec![file], vec![format!("s3://{}/", g.bucket)], o).await;
    assert!(
        report.destinations[0]
            .error
            .as_deref()
            .unwrap()
            .contains("AWS_ACCESS_KEY_ID"),
        "{report:?}"
    );
    assert!(objects(&client(&g), "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_to_a_receiver_and_an_object_store_reads_the_source_once() {
    let g = Garage::start();
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let want = tree(src.path(), 64 * MIB, 200);
    let total: u64 = want.values().map(|b| b.len() as u64).sum();
    let report = send(
        vec![src.path().join("tree")],
        vec![server.addr.to_string(), format!("s3://{}/fan", g.bucket)],
        options(&g),
    )
    .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.bytes, total, "the source was read once");
    let got = objects(&client(&g), "fan").await;
    assert_eq!(got.len(), want.len());
    for (rel, bytes) in &want {
        assert!(got[&format!("fan/{rel}")].0 == *bytes, "{rel}");
    }
    let root = server.stop().await;
    crate::common::assert_same_tree(&src.path().join("tree"), &root.path().join("tree"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_of_three_killed_mid_upload_loses_nothing() {
    let mut g = Garage::cluster(3);
    let src = tempfile::tempdir().unwrap();
    let want = tree(src.path(), 256 * MIB, 100);
    let mut transfer = Transfer::new(
        vec![src.path().join("tree")],
        vec![format!("s3://{}/k", g.bucket)],
    )
    .options(options(&g));
    let mut events = transfer.subscribe();
    let handle = transfer.start().unwrap();
    let mut killed = false;
    while let Some(event) = events.recv().await {
        if let Progress::Bytes { done_bytes, .. } = event {
            if !killed && done_bytes >= 40 * MIB {
                g.kill(2);
                killed = true;
            }
        }
    }
    let report = handle.wait().await.unwrap();
    assert!(killed, "the transfer ended before a node was killed");
    assert!(report.success(), "{report:?}");
    let got = objects(&client(&g), "k").await;
    assert_eq!(got.len(), want.len());
    for (rel, bytes) in &want {
        assert_holds(&got, &format!("k/{rel}"), bytes);
    }
}

/// Through the binary, with only the standard variables: `send --to s3://…` puts the tree in,
/// and `hash --check` on a sums file of `s3://` URLs finds every object OK. An object replaced
/// with other bytes and a missing one are each FAILED, with exit code 1; without credentials
/// the check stops at once and says which variables to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_into_the_store_and_checks_the_objects_against_sums() {
    use crate::common::process::{succeeds, tidegate};
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let want = tree(src.path(), 24 * MIB, 40);
    let to = format!("s3://{}/cli", g.bucket);
    succeeds(
        tidegate()
            .args(["send", "--no-progress", "--s3-sign-payload", "--to", &to])
            .arg(src.path().join("tree"))
            .envs(g.env()),
    );
    let url = |rel: &str| format!("{to}/{rel}");
    let mut sums: String = want
        .iter()
        .map(|(rel, bytes)| format!("{}  {}\n", blake3::hash(bytes).to_hex(), url(rel)))
        .collect();
    let sums_file = src.path().join("sums");
    std::fs::write(&sums_file, &sums).unwrap();
    let check = || {
        tidegate()
            .args(["hash", "--check", "--no-progress"])
            .arg(&sums_file)
            .envs(g.env())
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": OK")).count(),
        want.len(),
        "{stdout}"
    );

    // One object replaced by other bytes of the same length, and a line naming no object.
    let (victim, bytes) = want.iter().find(|(rel, _)| rel.ends_with("/f3")).unwrap();
    let mut other = bytes.clone();
    other[0] ^= 1;
    client(&g)
        .put(&Key::parse(format!("cli/{victim}")).unwrap(), other.into())
        .await
        .unwrap();
    sums.push_str(&format!(
        "{}  {}\n",
        blake3::hash(b"x").to_hex(),
        url("tree/missing")
    ));
    std::fs::write(&sums_file, &sums).unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: FAILED\n", url(victim))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: FAILED (", url("tree/missing")))
            && stdout.contains("no such object"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": OK")).count(),
        want.len() - 1
    );

    let out = tidegate()
        .args(["hash", "--check", "--no-progress"])
        .arg(&sums_file)
        .envs(g.env())
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A byte flipped on the way to the store, first in a whole object's body, then in a part's:
/// the store refuses the damaged request (the body's CRC-64, or the part's signed SHA-256, no
/// longer matches), the body is sent again from the chunks still held (the file is read
/// once), and each object holds its file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_damaged_on_the_way_is_refused_by_the_store_and_sent_again() {
    let g = Garage::start();
    let garage: std::net::SocketAddr = g.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = crate::common::Proxy::start(garage).await;
    let mut o = options(&g);
    o.s3.endpoint = Some(format!("http://{}", proxy.addr));
    let src = tempfile::tempdir().unwrap();
    let store = client(&g);
    for (name, size) in [("whole", 60_000), ("parts", 24 * MIB as usize)] {
        let file = src.path().join(name);
        let bytes = data(size, size as u64);
        std::fs::write(&file, &bytes).unwrap();
        // Past the request line and headers, well inside the body.
        proxy.corrupt_at(proxy.forwarded() + 4096 + size as u64 / 2);
        let report = send(
            vec![file],
            vec![format!("s3://{}/damaged", g.bucket)],
            o.clone(),
        )
        .await;
        assert!(proxy.corrupted(), "{name}: the byte was never flipped");
        assert!(report.success(), "{name}: {report:?}");
        assert_eq!(report.bytes, size as u64, "{name}: the file was read again");
        let got = objects(&store, "damaged").await;
        assert_holds(&got, &format!("damaged/{name}"), &bytes);
    }
    assert_eq!(open_uploads(&g, &store).await, 0);
}

/// An object larger than one copy may take (5 GiB on AWS, lowered here) gets its `blake3`
/// metadata by a copy onto itself in parts, and keeps its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_too_large_for_one_copy_gets_its_metadata_by_a_copy_in_parts() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("large");
    let bytes = data(20 * MIB as usize + 12_345, 5);
    std::fs::write(&file, &bytes).unwrap();
    let mut o = options(&g);
    o.s3.max_copy = 6 * MIB;
    let report = send(vec![file], vec![format!("s3://{}/copy", g.bucket)], o).await;
    assert!(report.success(), "{report:?}");
    let store = client(&g);
    assert_holds(&objects(&store, "copy").await, "copy/large", &bytes);
    assert_eq!(open_uploads(&g, &store).await, 0);
}

/// The objects `hash --check` is about to read are looked up for a progress total: their
/// sizes summed, and no total at all when one of them is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objects_to_check_are_sized_for_a_progress_total() {
    use tidegate::objstore::ObjectReader;
    let g = Garage::start();
    let store = client(&g);
    let mut total = 0;
    for (name, size) in [("a", 1000), ("b", 3 * MIB as usize + 17), ("c", 0)] {
        let key = Key::parse(format!("sized/{name}")).unwrap();
        store.put(&key, data(size, 9).into()).await.unwrap();
        total += size as u64;
    }
    let mut reader = ObjectReader::new(s3_options(&g));
    for name in ["a", "b", "c"] {
        reader
            .input(&format!("s3://{}/sized/{name}", g.bucket))
            .unwrap();
    }
    assert_eq!(reader.total_size().await, Some(total));
    // Only what was made since: nothing.
    assert_eq!(reader.total_size().await, Some(0));
    for name in ["a", "missing"] {
        reader
            .input(&format!("s3://{}/sized/{name}", g.bucket))
            .unwrap();
    }
    assert_eq!(reader.total_size().await, None);
}
