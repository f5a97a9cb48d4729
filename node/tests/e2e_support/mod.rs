//! Shared by the end-to-end tests and the remote-overhead bench: start a `tandem-node dev`
//! fleet (the binary under test, passed in by the caller) and drive the device SDK.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tandem_device::{Client, Config, Error, Event, GenerateRequest, RouteChoice, Summary};

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The dev fleet process; SIGTERM on drop so a failing test leaves no processes behind.
pub struct Fleet {
    pub child: Child,
    pub node_pids: Vec<u32>,
    pub config: Config,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn start_fleet(bin: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("device.json");
    let mut child = Command::new(bin)
        .args(["dev", "--nodes", "2", "--write-config"])
        .arg(&cfg_path)
        .arg("--models")
        .arg(models_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let e2 = errors.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            e2.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut node_pids = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "tandem-node dev did not print `ready`; stderr:\n{}",
                    errors.lock().unwrap().join("\n")
                )
            });
        if line == "ready" {
            break;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() == Some(&"node") && w.get(2) == Some(&"pid") {
            node_pids.push(w[3].parse().unwrap());
        }
    }
    let config = Config::load(&cfg_path).expect("dev writes a valid device config");
    Fleet {
        child,
        node_pids,
        config,
        _dir: dir,
    }
}

/// Runs a request to the end: (text, token ids, summary, fallback reason).
pub async fn run(
    client: &Client,
    req: GenerateRequest,
) -> Result<(String, Vec<u32>, Summary, Option<String>), Error> {
    let mut events = client.generate(req);
    let (mut text, mut ids, mut fallback) = (String::new(), Vec::new(), None);
    while let Some(ev) = events.next().await {
        match ev? {
            Event::Text { text: t, token_ids } => {
                text.push_str(&t);
                ids.extend(token_ids);
            }
            Event::Fallback { reason } => fallback = Some(reason),
            Event::Done(s) => return Ok((text, ids, *s, fallback)),
        }
    }
    panic!("stream ended without Done or an error")
}

pub fn greedy(prompt: &str, max: u32, route: RouteChoice) -> GenerateRequest {
    GenerateRequest {
        max_new_tokens: max,
        route,
        ..GenerateRequest::new(prompt)
    }
}
