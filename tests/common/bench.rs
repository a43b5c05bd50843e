//! `vsplice bench` as the bench tests run it: a server process that is ready once it printed
//! "listening on" and is killed on drop, and a client run to its end (exit code, stdout,
//! stderr) or parsed from its `--json`.

use std::io::Read;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{vsplice_bin, vsplice_json};

/// A running `vsplice bench server`, killed on drop.
pub struct BenchServer {
    child: Child,
}

impl BenchServer {
    /// `vsplice bench server ARGS...` (the address first), once it listens.
    pub fn start(args: &[&str]) -> BenchServer {
        let mut child = Command::new(vsplice_bin())
            .args(["bench", "server"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while !line.contains("listening on") {
            assert_eq!(out.read(&mut byte).unwrap(), 1, "server exited: {line}");
            line.push(byte[0] as char);
        }
        BenchServer { child }
    }

    /// `vsplice bench server LISTEN`.
    pub fn listen(listen: &str) -> BenchServer {
        BenchServer::start(&[listen])
    }

    /// `vsplice bench server LISTEN OPTIONS...` (`--max-sessions 2`).
    pub fn start_with(listen: &str, options: &[&str]) -> BenchServer {
        let mut args = vec![listen];
        args.extend_from_slice(options);
        BenchServer::start(&args)
    }

    /// The server's process id (for its `/proc` status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vsplice bench client ARGS...` to its end: exit code (-1 for a signal), stdout, stderr.
pub fn bench_client(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vsplice_bin())
        .args(["bench", "client"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vsplice bench client ARGS...` with its JSON output parsed.
pub fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench", "client"];
    all.extend_from_slice(args);
    vsplice_json(&all)
}
