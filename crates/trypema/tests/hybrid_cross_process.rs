//! Zero overshoot across processes: three processes hammer one key of capacity 300
//! (W = 1 s, rate 300) through the hybrid provider for 3 s, released together, and the
//! merged `Allowed` timestamps never hold more than 300 in any 1000 ms span.
//!
//! The processes are the `hammer` example (two of them, or three) and, when `node` is
//! available, the addon is built and `__test__/fixtures/hybrid-hammer.mjs` exists, one Node
//! process running that fixture with the same arguments and output format. Needs
//! `TRYPEMA_TEST_REDIS_URL` and the example built:
//! `cargo build -p trypema --features redis-tokio --example hammer`.
#![cfg(feature = "redis-tokio")]

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use support::{busiest_window, example_path, hybrid_redis_url, unique};

const RATE: u64 = 300;
const WINDOW_S: u64 = 1;
const DURATION_MS: u64 = 3000;
const CONCURRENCY: usize = 32;

/// `target/<profile>/examples/hammer`, next to this test's `target/<profile>/deps/`.
fn hammer_path() -> PathBuf {
    let path = example_path("hammer");
    assert!(
        path.is_file(),
        "{} is missing: build it first with \
         `cargo build -p trypema --features redis-tokio --example hammer` \
         (a plain `cargo test -p trypema --features redis-tokio` builds it too)",
        path.display()
    );
    path
}

/// The Node fixture, if it can run here: the file exists, the addon is built and `node` runs.
fn node_fixture() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixture = root.join("__test__/fixtures/hybrid-hammer.mjs");
    if !fixture.is_file() {
        return None;
    }
    let addon_built = std::fs::read_dir(&root)
        .ok()?
        .filter_map(Result::ok)
        .any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("trypema.") && name.ends_with(".node")
        });
    let node_runs = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    (addon_built && node_runs).then_some(fixture)
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

/// One load-generating child process.
struct Hammer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

/// Reads `stream` to the end, reporting a line `ready` on `ready` as it passes.
fn collect(
    stream: impl Read + Send + 'static,
    ready: mpsc::Sender<usize>,
    index: usize,
) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "ready" {
                let _ = ready.send(index);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

impl Hammer {
    fn spawn(
        name: String,
        mut command: Command,
        ready: &mpsc::Sender<usize>,
        index: usize,
    ) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let stdin = child.stdin.take();
        let stdout = collect(child.stdout.take().expect("stdout"), ready.clone(), index);
        let stderr = collect(child.stderr.take().expect("stderr"), ready.clone(), index);
        Self {
            name,
            child,
            stdin,
            stdout,
            stderr,
        }
    }
}

/// What one process reported.
struct Report {
    name: String,
    allowed: u64,
    rejected: u64,
    errors: u64,
    allowed_at_ms: Vec<f64>,
}

fn number_field(json: &str, name: &str) -> Option<u64> {
    let at = json.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn timestamps_field(json: &str) -> Option<Vec<f64>> {
    let at = json.find("\"allowed_at_ms\"")?;
    let open = at + json[at..].find('[')?;
    let close = open + json[open..].find(']')?;
    json[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().ok())
        .collect()
}

fn parse_report(name: &str, stdout: &str, stderr: &str) -> Report {
    let json = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!("{name} printed no JSON line; stdout {stdout:?}, stderr {stderr:?}")
        });
    let field = |field: &str| {
        number_field(json, field)
            .unwrap_or_else(|| panic!("{name}: no number {field:?} in {json:.300}"))
    };
    let allowed_at_ms = timestamps_field(json)
        .unwrap_or_else(|| panic!("{name}: no allowed_at_ms list in {json:.300}"));
    Report {
        name: name.to_string(),
        allowed: field("allowed"),
        rejected: field("rejected"),
        errors: field("errors"),
        allowed_at_ms,
    }
}

#[test]
fn processes_sharing_a_key_never_overshoot() {
    let url = hybrid_redis_url();
    let hammer = hammer_path();
    let node = node_fixture();
    let prefix = unique("hxproc");
    let key = "shared";
    let args = [
        url.clone(),
        "hybrid".into(),
        prefix.clone(),
        key.into(),
        RATE.to_string(),
        WINDOW_S.to_string(),
        DURATION_MS.to_string(),
        CONCURRENCY.to_string(),
    ];

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut processes = Vec::new();
    let rust_processes = if node.is_some() { 2 } else { 3 };
    for index in 0..rust_processes {
        let mut command = Command::new(&hammer);
        command.args(&args);
        processes.push(Hammer::spawn(
            format!("rust#{index}"),
            command,
            &ready_tx,
            index,
        ));
    }
    if let Some(fixture) = &node {
        let mut command = Command::new("node");
        command.arg(fixture).args(&args);
        processes.push(Hammer::spawn(
            "node".into(),
            command,
            &ready_tx,
            rust_processes,
        ));
    }
    drop(ready_tx);

    // Wait until every process is connected (the Rust hammer says `ready` on stderr; a Node
    // fixture that does not is given a few seconds), then release them together.
    let mut ready = vec![false; processes.len()];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready[..rust_processes].iter().all(|&r| r) {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(index) => ready[index] = true,
            Err(_) => {
                for process in &mut processes {
                    let _ = process.child.kill();
                }
                panic!("the hammer processes did not get ready within 15 s: {ready:?}");
            }
        }
    }
    if node.is_some() && !ready[rust_processes] {
        let until = Instant::now() + Duration::from_secs(3);
        while let Ok(index) = ready_rx.recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            ready[index] = true;
            if ready[rust_processes] {
                break;
            }
        }
    }
    let go_ms = epoch_ms();
    for process in &mut processes {
        if let Some(mut stdin) = process.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
    }

    // Collect the reports.
    let deadline = Instant::now() + Duration::from_millis(DURATION_MS) + Duration::from_secs(30);
    let mut reports = Vec::new();
    for mut process in processes {
        let status = loop {
            if let Some(status) = process.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = process.child.kill();
                panic!("{} did not finish in time", process.name);
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = process.stdout.join().expect("stdout reader");
        let stderr = process.stderr.join().expect("stderr reader");
        assert!(
            status.success(),
            "{} exited with {status}; stderr: {stderr}",
            process.name
        );
        reports.push(parse_report(&process.name, &stdout, &stderr));
    }

    for report in &reports {
        eprintln!(
            "{}: allowed {}, rejected {}, errors {}",
            report.name, report.allowed, report.rejected, report.errors
        );
    }
    for report in &reports {
        assert_eq!(report.errors, 0, "{} had errors", report.name);
        assert_eq!(
            report.allowed as usize,
            report.allowed_at_ms.len(),
            "{}: allowed and its timestamps disagree",
            report.name
        );
    }

    let mut all: Vec<f64> = reports
        .iter()
        .flat_map(|report| report.allowed_at_ms.iter().copied())
        .collect();
    all.sort_by(f64::total_cmp);
    assert!(!all.is_empty(), "nothing admitted");
    let capacity = (RATE * WINDOW_S) as usize;
    let window_ms = (WINDOW_S * 1000) as f64;

    // Zero overshoot: no 1000 ms span (starting at any admission) holds more than C.
    let (count, from) = busiest_window(&all, window_ms);
    let busiest = (count, from - go_ms);
    // Windows aligned on the release: [go + k s, go + (k + 1) s).
    let windows: Vec<usize> = (0..DURATION_MS.div_ceil(1000) + 1)
        .map(|k| {
            let from = go_ms + k as f64 * window_ms;
            all.iter()
                .filter(|&&at| at >= from && at < from + window_ms)
                .count()
        })
        .collect();
    eprintln!(
        "{} processes ({}), C = {capacity}: {} admitted; busiest 1000 ms span {} (from {:.1} ms \
         after go); per window after go {windows:?}",
        reports.len(),
        reports
            .iter()
            .map(|report| report.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        all.len(),
        busiest.0,
        busiest.1,
    );
    assert!(
        busiest.0 <= capacity,
        "{} admitted within 1000 ms starting {:.1} ms after go, C = {capacity}; per window \
         {windows:?}",
        busiest.0,
        busiest.1
    );
    // The middle windows (not the first, not the one the run ends in) are used at ≥ 90%.
    let middle = 1..(DURATION_MS / 1000) as usize - 1;
    assert!(!middle.is_empty());
    for k in middle {
        assert!(
            windows[k] * 10 >= capacity * 9,
            "window {k} after go admitted only {}, expected ≥ 90% of {capacity}; {windows:?}",
            windows[k]
        );
    }
}
