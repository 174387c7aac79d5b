//! Helpers for the control-plane tests: SPDK's own client (`spdk-rpc` from PyPI `spdk==26.9`,
//! installed into target/venv by scripts/rpc/venv.sh, which these helpers run when the client
//! is missing), a minimal raw JSON-RPC client for what rpc.py cannot send (unknown keys,
//! malformed JSON, timing-critical loops), and waiting for sockets that appear at run time.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/launcher is two levels below the workspace root")
        .to_path_buf()
}

/// The `spdk-rpc` executable: `$SPINBLK_SPDK_RPC`, or target/venv/bin/spdk-rpc, created by
/// scripts/rpc/venv.sh if it is not there yet. Panics (a visible failure, never a silent skip)
/// when it cannot be had.
pub fn spdk_rpc_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SPINBLK_SPDK_RPC") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let out = Command::new("bash")
            .arg(root.join("scripts/rpc/venv.sh"))
            .output()
            .expect("run scripts/rpc/venv.sh");
        assert!(
            out.status.success(),
            "SPDK's client is needed for this test and scripts/rpc/venv.sh could not install it \
             (pip install spdk==26.9 into target/venv):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        assert!(path.exists(), "venv.sh printed {}", path.display());
        path
    })
    .clone()
}

/// An error answer as rpc.py prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    /// The JSON-RPC error code.
    pub code: i64,
    /// Its message.
    pub message: String,
    /// Everything rpc.py printed.
    pub output: String,
}

/// SPDK's rpc.py against one server socket.
pub struct SpdkRpc {
    socket: PathBuf,
}

impl SpdkRpc {
    /// A client of the server at `socket`.
    pub fn new(socket: &Path) -> SpdkRpc {
        SpdkRpc {
            socket: socket.to_path_buf(),
        }
    }

    /// Runs `spdk-rpc -s SOCKET args...` and returns what it printed on success.
    pub fn run(&self, args: &[&str]) -> Result<String, RpcFailure> {
        let out = Command::new(spdk_rpc_bin())
            .arg("-s")
            .arg(&self.socket)
            .arg("-t")
            .arg("30")
            .args(args)
            .output()
            .expect("run spdk-rpc");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            return Ok(stdout);
        }
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        // rpc.py prints "response:" and then the error object.
        let err = text
            .split("response:")
            .nth(1)
            .and_then(|r| {
                serde_json::Deserializer::from_str(r.trim())
                    .into_iter::<Value>()
                    .next()
            })
            .and_then(Result::ok);
        Err(RpcFailure {
            code: err.as_ref().and_then(|e| e["code"].as_i64()).unwrap_or(0),
            message: err
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .unwrap_or("")
                .to_string(),
            output: text,
        })
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args)
            .unwrap_or_else(|e| panic!("spdk-rpc {args:?} failed:\n{}", e.output))
    }

    /// Runs a command that must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("spdk-rpc {args:?} printed no JSON ({e}):\n{out}"))
    }

    /// Runs a command that must fail; returns the error.
    pub fn err(&self, args: &[&str]) -> RpcFailure {
        match self.run(args) {
            Ok(out) => panic!("spdk-rpc {args:?} succeeded, expected an error:\n{out}"),
            Err(e) => e,
        }
    }
}

/// A raw JSON-RPC connection: sends bytes, reads answers (each a JSON value and "\n").
pub struct RawRpc {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl RawRpc {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> RawRpc {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        RawRpc {
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    /// A second handle on the connection (for writes that may fail).
    pub fn try_clone_stream(&self) -> UnixStream {
        self.stream.try_clone().expect("clone stream")
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads the next answer; `None` if the server closed the connection first.
    pub fn read_answer(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("answers are JSON lines"));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the server has closed the connection within `wait` (anything it sent before
    /// closing is read and dropped).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut b = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return true
                }
                Err(_) => return false,
            }
        }
    }

    /// Calls `method` with `params` (omitted when `None`) and returns the whole answer.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_raw(serde_json::to_string(&req).expect("json").as_bytes());
        let answer = self.read_answer().expect("an answer");
        assert_eq!(answer["id"], id, "answers come in order");
        answer
    }

    /// Calls a method that must succeed; returns its result.
    pub fn ok(&mut self, method: &str, params: Option<Value>) -> Value {
        let a = self.call(method, params);
        assert!(a.get("result").is_some(), "{method} failed: {a}");
        a["result"].clone()
    }

    /// Calls a method that must fail; returns (code, message).
    pub fn err(&mut self, method: &str, params: Option<Value>) -> (i64, String) {
        let a = self.call(method, params);
        let e = a
            .get("error")
            .unwrap_or_else(|| panic!("{method} succeeded: {a}"));
        (
            e["code"].as_i64().expect("code"),
            e["message"].as_str().unwrap_or("").to_string(),
        )
    }
}
