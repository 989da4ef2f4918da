//! A real Garage (the reference S3-compatible store) for tests: one node, or a cluster of three
//! with replication factor 3, on 127.0.0.1 with ports of their own, a bucket and a key. Stopped
//! (killed) when dropped.
//!
//! Garage is a separate program (`cargo install --locked garage@2.5.0`, which `.ci/run` does).
//! Without it the tests skip with a notice, except under `CI`, where they fail.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The garage binary: `$GARAGE`, else `garage` on PATH, else `~/.cargo/bin/garage`.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE") {
        return Some(PathBuf::from(p));
    }
    let on_path = Command::new("garage").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if on_path.is_ok_and(|s| s.success()) {
        return Some(PathBuf::from("garage"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?.join(".cargo/bin/garage");
    home.exists().then_some(home)
}

/// Whether Garage can be run; skips (false) with a notice, or fails under `CI`.
pub fn available() -> bool {
    if binary().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "garage is not installed (cargo install --locked garage@2.5.0; .ci/run does this)"
    );
    eprintln!("skipping: garage is not installed (cargo install --locked garage@2.5.0)");
    false
}

/// Ports for one node: RPC and S3 API.
fn ports() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = 40000 + ((std::process::id() as u16 % 50) * 200 + slot * 2) % 10000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(base) && free(base + 1) {
            return (base, base + 1);
        }
    }
}

pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("garage.log")).unwrap();
        let child = Command::new(binary().unwrap())
            .args(["-c", self.config.to_str().unwrap(), "server"])
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        wait_port(self.s3_port);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "garage did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running Garage cluster with one bucket and a key that may use it.
pub struct Garage {
    _dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// One node, replication factor 1.
    pub fn single() -> Garage {
        Garage::cluster(1)
    }

    /// `n` nodes on 127.0.0.1, replication factor `n`, each in its own zone.
    pub fn cluster(n: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let nd = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&nd).unwrap();
            let (rpc, s3) = ports();
            let config = nd.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = {n}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
                    d = nd.display()
                ),
            )
            .unwrap();
            let mut node = Node { dir: nd, config, s3_port: s3, rpc_port: rpc, child: None };
            node.start();
            nodes.push(node);
        }
        let cli = |node: &Node, args: &[&str]| -> String { run(&node.config, args) };
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| cli(node, &["node", "id", "-q"]).trim().split('@').next().unwrap().to_string())
            .collect();
        for (i, node) in nodes.iter().enumerate().skip(1) {
            cli(&nodes[0], &["node", "connect", &format!("{}@127.0.0.1:{}", ids[i], node.rpc_port)]);
        }
        for (i, id) in ids.iter().enumerate() {
            cli(&nodes[0], &["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", id]);
        }
        cli(&nodes[0], &["layout", "apply", "--version", "1"]);
        let bucket = "recordings".to_string();
        // The layout takes a moment to reach every node.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(binary().unwrap())
                .args(["-c", nodes[0].config.to_str().unwrap(), "bucket", "create", &bucket])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "bucket create: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
        let key = cli(&nodes[0], &["key", "create", "callvault-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        cli(&nodes[0], &["bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "callvault-test"]);
        Garage { _dir: dir, nodes, bucket, key_id, secret }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }

    /// A `[storage.primary]` (or `[storage.backup]`) table for callvault's config.
    pub fn target_toml(&self, table: &str, prefix: &str) -> String {
        format!(
            "[storage.{table}]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"garage\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.endpoint(),
            self.bucket,
            self.key_id,
            self.secret
        )
    }

    /// A second bucket with the same key (for a backup target).
    pub fn create_bucket(&self, name: &str) {
        run(&self.nodes[0].config, &["bucket", "create", name]);
        run(
            &self.nodes[0].config,
            &["bucket", "allow", "--read", "--write", "--owner", name, "--key", "callvault-test"],
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

fn run(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary().unwrap()).arg("-c").arg(config).args(args).output().expect("run garage");
    assert!(
        out.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    callvault::seal::random(&mut b);
    b[0]
}
