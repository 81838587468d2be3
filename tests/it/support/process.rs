//! Other processes: the real binary on its own config file, for tests that
//! kill it, a `redis-server` for cluster mode, and a python3 with the
//! modules a test checks mail with.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{skip_without, test_config_toml};

/// The binary running on its own config file.
pub struct Process {
    pub child: std::process::Child,
    pub address: SocketAddr,
}

pub fn write_config(dir: &Path, listen: SocketAddr, gateway: SocketAddr) -> std::path::PathBuf {
    write_config_with(dir, listen, gateway, "")
}

/// The test config with `shaping` lines added to its [gateways.shaping].
pub fn write_config_with(
    dir: &Path,
    listen: SocketAddr,
    gateway: SocketAddr,
    shaping: &str,
) -> std::path::PathBuf {
    let path = dir.join("smtp-shaper.toml");
    let toml = test_config_toml(&listen.to_string(), &dir.join("spool"), gateway).replace(
        "[gateways.shaping]",
        &format!("[gateways.shaping]\n{shaping}"),
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the binary on `config`; its warnings and errors are appended to
/// `smtp-shaper.log` beside the config file (to read when a test fails).
pub async fn spawn(config: &Path, address: SocketAddr) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("smtp-shaper.log"))
        .expect("open the log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start smtp-shaper");
    let process = Process { child, address };
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("smtp-shaper did not start listening on {address}");
}

impl Process {
    /// SIGKILL: no chance to sync or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a loopback port, with no persistence (a restart is
/// an empty Redis: the case the nodes must rebuild from).
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Option<Redis> {
        Redis::start_with(port, &["--port", &port.to_string()])
    }

    /// A server listening on `port` as `args` say (e.g. TLS only).
    pub fn start_with(port: u16, args: &[&str]) -> Option<Redis> {
        let child = std::process::Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(_) => {
                skip_without("redis-server", "apt-get install redis-server");
                return None;
            }
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis { child, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `redis-cli` (comes with redis-server) on this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A python3 that can `import module`, or None after saying what to
/// install (`package`).
pub fn python_with(module: &str, package: &str) -> Option<&'static str> {
    let found = ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|status| status.success())
    });
    if found.is_none() {
        skip_without(
            &format!("python3 with the {module} module"),
            &format!("apt-get install {package}"),
        );
    }
    found
}
