//! Garage, an S3-compatible store built for self-hosted clusters, started on loopback ports
//! for the object-store tests: one node ([`Garage::start`]) or a cluster
//! ([`Garage::cluster`]), with a layout, a bucket and a key made through Garage's own CLI.
//! Everything is stopped and deleted on drop.
//!
//! The binary is `$GARAGE_BIN`, else `garage` on the `PATH` or in `~/.cargo/bin`; `.ci/run`
//! installs it (`cargo install garage --locked`) when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region the test nodes sign for.
pub const REGION: &str = "garage";

/// A running Garage cluster with one bucket and one key allowed on it.
pub struct Garage {
    nodes: Vec<Node>,
    /// `http://127.0.0.1:PORT` of the first node's S3 API.
    pub endpoint: String,
    /// The bucket made for the test.
    pub bucket: String,
    /// Access key id of the key made for the test.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
    _dir: tempfile::TempDir,
}

struct Node {
    config: PathBuf,
    child: Option<Child>,
    s3_port: u16,
}

/// The garage binary.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GARAGE_BIN") {
        return bin.into();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("garage");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = Path::new(&home).join(".cargo/bin/garage");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "garage not found (set GARAGE_BIN, or install it: cargo install garage --locked; \
         .ci/run does this when it is missing)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run garage {args:?}: {e}"));
    assert!(
        out.status.success(),
        "garage {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Node {
    fn start(dir: &Path, n: usize, replication: usize, secret: &str) -> Node {
        let root = dir.join(format!("node{n}"));
        std::fs::create_dir_all(&root).unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = root.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(root.join("garage.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start garage");
        Node {
            config,
            child: Some(child),
            s3_port: s3,
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(binary())
                .arg("-c")
                .arg(&self.config)
                .arg("status")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "garage did not come up in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn id(&self) -> String {
        run(&self.config, &["node", "id", "-q"]).trim().to_owned()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Garage {
    /// One node, replication factor 1.
    pub fn start() -> Garage {
        Garage::cluster(1)
    }

    /// `n` nodes in one zone each, replication factor `n` (so every object is on every
    /// node, and writes need a quorum of them).
    pub fn cluster(n: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8 ^ std::process::id() as u8))
            .collect();
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node::start(dir.path(), i, n, &secret))
            .collect();
        for node in &nodes {
            node.wait_ready();
        }
        let first = &nodes[0].config;
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        for id in &ids[1..] {
            run(first, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("dc{}", i + 1);
            run(
                first,
                &["layout", "assign", "-z", &zone, "-c", "10G", short],
            );
        }
        run(first, &["layout", "apply", "--version", "1"]);
        let bucket = format!("tidegate-test-{}", std::process::id());
        // The layout takes a moment to reach every node.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(binary())
                .arg("-c")
                .arg(first)
                .args(["bucket", "create", &bucket])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "garage bucket create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let key: serde_json::Value = serde_json::from_str(&run(
            first,
            &["json-api", "CreateKey", r#"{"name": "tidegate-test"}"#],
        ))
        .unwrap();
        let key_id = key["accessKeyId"].as_str().unwrap().to_owned();
        let secret = key["secretAccessKey"].as_str().unwrap().to_owned();
        run(
            first,
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_id,
            ],
        );
        let endpoint = format!("http://127.0.0.1:{}", nodes[0].s3_port);
        Garage {
            nodes,
            endpoint,
            bucket,
            key_id,
            secret,
            _dir: dir,
        }
    }

    /// Runs the garage CLI against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        run(&self.nodes[0].config, args)
    }

    /// Kills node `i` (not the first, whose S3 API the tests use).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// The environment a sender needs: endpoint, region and the key.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}
