//! A real PD for tests of the joined mode ([`crate::join`]): `shared/pd/`
//! beside the checkout (tikv/pd built for this project; `start-pd.sh`
//! unpacks it with `xz` once and waits for it with `curl`), started on free
//! loopback ports and stopped by pid, plus a tiny HTTP/1.1 client and JSON
//! reader for PD's HTTP API (`/pd/api/v1/...`), so tests need no HTTP or
//! JSON crate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `shared/pd/` beside the checkout (`<x>/main` or CI's clone, with
/// `<x>/shared`).
///
/// # Panics
///
/// When `start-pd.sh` is not there: tests that need the real PD fail
/// rather than skip.
pub fn shared_pd_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = root.parent().expect("tests/ lives in the workspace");
    let dir = workspace.parent().map(|p| p.join("shared").join("pd")).unwrap_or_default();
    assert!(
        dir.join("start-pd.sh").is_file(),
        "the real PD is missing: expected {}/start-pd.sh (the `shared/` directory beside the \
         checkout, holding pd-server.xz; see issue 13). This test needs it and does not skip.",
        dir.display()
    );
    dir
}

/// A free loopback port, with its listener (drop it to release the port).
fn free_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

/// A single-node PD started by `start-pd.sh` on free loopback ports (with
/// `pd-fast.toml`), killed by its pid when dropped (its data directory is
/// removed then).
#[derive(Debug)]
pub struct RealPd {
    pid: u32,
    data: PathBuf,
    addr: String,
    client_port: u16,
    peer_port: u16,
}

impl RealPd {
    /// Starts PD and waits until it has a leader (about a second).
    ///
    /// # Panics
    ///
    /// When PD is missing ([`shared_pd_dir`]) or does not start.
    pub fn start() -> RealPd {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let data =
            std::env::temp_dir().join(format!("tikv-real-pd-{}-{nanos}", std::process::id()));
        let (client, client_port) = free_port();
        let (peer, peer_port) = free_port();
        drop((client, peer));
        let pid = launch(&data, client_port, peer_port);
        RealPd { pid, data, addr: format!("127.0.0.1:{client_port}"), client_port, peer_port }
    }

    /// Stops PD (by its pid) and starts it again on the same ports and data
    /// directory, as an operator restarts a PD: the cluster id, the
    /// bootstrapped cluster and the TSO window it saved survive. Waits until
    /// it has a leader again.
    ///
    /// # Panics
    ///
    /// When PD does not start again.
    pub fn restart(&mut self) {
        stop_process(self.pid);
        self.pid = launch(&self.data, self.client_port, self.peer_port);
    }

    /// PD's client address (`127.0.0.1:PORT`): gRPC and the HTTP API.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// PD's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Leaves PD running past this value, for a script that stops it itself
    /// (`real-pd`): returns its data directory, which the caller removes
    /// with its `.log`, `.stdout` and `.pid` siblings after killing the pid.
    pub fn detach(self) -> PathBuf {
        let pd = std::mem::ManuallyDrop::new(self);
        pd.data.clone()
    }
}

/// Runs `start-pd.sh` (which waits until PD has a leader); returns PD's pid.
fn launch(data: &std::path::Path, client_port: u16, peer_port: u16) -> u32 {
    let dir = shared_pd_dir();
    let out = Command::new("bash")
        .arg(dir.join("start-pd.sh"))
        .arg(data)
        .arg(client_port.to_string())
        .arg(peer_port.to_string())
        .env("PD_EXTRA", format!("--config {}", dir.join("pd-fast.toml").display()))
        .output()
        .expect("run start-pd.sh (needs bash)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid =
        stdout.split_whitespace().find_map(|w| w.strip_prefix("pid=")).and_then(|p| p.parse().ok());
    match (out.status.success(), pid) {
        (true, Some(pid)) => pid,
        _ => panic!(
            "start-pd.sh failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Kills `pid` (SIGTERM) and waits up to 5 s for it to be gone.
fn stop_process(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    for _ in 0..50 {
        let gone = !Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if gone {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for RealPd {
    fn drop(&mut self) {
        stop_process(self.pid);
        let _ = std::fs::remove_dir_all(&self.data);
        for ext in ["log", "stdout", "pid"] {
            let _ = std::fs::remove_file(self.data.with_extension(ext));
        }
    }
}

/// One HTTP/1.1 request to PD's API; returns the status and the body
/// (chunked bodies decoded).
///
/// # Panics
///
/// On a connection failure or a malformed answer.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).expect("connect to PD's HTTP API");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return (status, rest.to_owned());
    }
    let mut out = String::new();
    let mut rest = rest;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (status, out)
}

/// `GET path`, answered 200 with JSON.
///
/// # Panics
///
/// On another status or malformed JSON.
pub fn get_json(addr: &str, path: &str) -> Json {
    let (status, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    Json::parse(&body)
}

/// `POST path` with a JSON body, answered 200.
///
/// # Panics
///
/// On another status.
pub fn post(addr: &str, path: &str, body: &str) {
    let (status, answer) = http(addr, "POST", path, Some(body));
    assert_eq!(status, 200, "POST {path} {body}: {answer}");
}

/// Just enough JSON for PD's answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null` (also what a missing key reads as).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number as written (PD's timestamps need all 64 bits).
    Num(String),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, fields in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole JSON text.
    ///
    /// # Panics
    ///
    /// On malformed JSON.
    pub fn parse(text: &str) -> Json {
        let mut p = JsonParser { s: text.as_bytes(), i: 0 };
        let v = p.value();
        p.ws();
        assert_eq!(p.i, p.s.len(), "trailing text after JSON: {text}");
        v
    }

    /// An object's field ([`Json::Null`] when missing or not an object).
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => {
                fields.iter().find(|(k, _)| k == key).map_or(&Json::Null, |f| &f.1)
            }
            _ => &Json::Null,
        }
    }

    /// An array's items (empty when not an array).
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            _ => &[],
        }
    }

    /// A number as `u64` (0 when not a number).
    ///
    /// # Panics
    ///
    /// On a number that is not a `u64`.
    pub fn u64(&self) -> u64 {
        match self {
            Json::Num(n) => n.parse().unwrap_or_else(|_| panic!("not a u64: {n}")),
            _ => 0,
        }
    }

    /// A string (empty when not a string).
    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => "",
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(self.s.get(self.i), Some(&c), "JSON: expected {:?} at {}", c as char, self.i);
        self.i += 1;
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Json::Obj(fields);
                }
                loop {
                    self.ws();
                    let Json::Str(key) = self.value() else { panic!("JSON: a key expected") };
                    self.eat(b':');
                    fields.push((key, self.value()));
                    self.ws();
                    self.i += 1;
                    if self.s[self.i - 1] == b'}' {
                        return Json::Obj(fields);
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Json::Arr(items);
                }
                loop {
                    items.push(self.value());
                    self.ws();
                    self.i += 1;
                    if self.s[self.i - 1] == b']' {
                        return Json::Arr(items);
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let c = self.s[self.i];
                    self.i += 1;
                    match c {
                        b'"' => return Json::Str(out),
                        b'\\' => {
                            let e = self.s[self.i];
                            self.i += 1;
                            match e {
                                b'n' => out.push('\n'),
                                b't' => out.push('\t'),
                                b'u' => {
                                    let hex = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                        .expect("hex escape");
                                    let code = u32::from_str_radix(hex, 16).expect("hex escape");
                                    out.push(char::from_u32(code).unwrap_or('?'));
                                    self.i += 4;
                                }
                                other => out.push(other as char),
                            }
                        }
                        _ => {
                            // Multi-byte UTF-8 goes through byte by byte.
                            let start = self.i - 1;
                            let mut end = self.i;
                            while end < self.s.len() && (self.s[end] & 0xC0) == 0x80 {
                                end += 1;
                            }
                            out.push_str(&String::from_utf8_lossy(&self.s[start..end]));
                            self.i = end;
                        }
                    }
                }
            }
            Some(b't') => {
                self.i += 4;
                Json::Bool(true)
            }
            Some(b'f') => {
                self.i += 5;
                Json::Bool(false)
            }
            Some(b'n') => {
                self.i += 4;
                Json::Null
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("a number");
                assert!(!text.is_empty(), "JSON: unexpected text at {start}");
                Json::Num(text.to_owned())
            }
        }
    }
}
