//! Runs the spec's Rust quick start, which hard-codes `redis://127.0.0.1:6379/`, against a
//! private `redis-server` that listens on port 6379 inside its own network namespace, so it
//! can neither clash with nor touch any other Redis: the `quickstart_redis` example under
//! `redis-tokio`, the `quickstart_smol` example (the same code on smol) under `redis-smol`.
//!
//! This test builds nothing: it runs the example binary cargo built next to it
//! (`target/<profile>/examples/<name>`). A plain `cargo test -p trypema --features <feature>`
//! builds examples; with a `--test` filter, build it first with
//! `cargo build -p trypema --features <feature> --example <name>`. Needs root (for
//! `unshare --net`), `ip`, `redis-server` and `redis-cli`; without root it says so and passes
//! without running anything (the only case in which it does not run).
#![cfg(trypema_redis)]

mod support;

use std::{path::PathBuf, process::Command};

use support::example_path;

/// The example of this test's runtime feature, and that feature.
const EXAMPLE: (&str, &str) = if cfg!(feature = "redis-smol") {
    ("quickstart_smol", "redis-smol")
} else {
    ("quickstart_redis", "redis-tokio")
};

/// `target/<profile>/examples/<name>`, found from this test's own executable
/// (`target/<profile>/deps/quickstart_example-<hash>`).
fn example_binary() -> PathBuf {
    let (name, feature) = EXAMPLE;
    let binary = example_path(name);
    assert!(
        binary.is_file(),
        "example binary {} not found: a plain `cargo test -p trypema --features {feature}` \
         builds it; with a `--test` filter, first run \
         `cargo build -p trypema --features {feature} --example {name}`",
        binary.display()
    );
    binary
}

/// The effective user id, from `/proc/self/status` (or `id -u` where there is no `/proc`).
fn effective_uid() -> Option<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // `Uid:	real	effective	saved	filesystem`
        return status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok());
    }
    let output = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[test]
fn quickstart_example_runs_against_a_redis_on_6379() {
    let (name, _) = EXAMPLE;
    match effective_uid() {
        Some(0) => {}
        uid => {
            eprintln!(
                "SKIPPED: running the {name} example needs root, for `unshare --net` (a private \
                 network namespace where redis-server can listen on 6379 without touching any \
                 other Redis); this process runs as uid {uid:?}"
            );
            return;
        }
    }
    let binary = example_binary();
    let pidfile = std::env::temp_dir().join(format!(
        "trypema-quickstart-{}-{:x}.pid",
        std::process::id(),
        rand::random::<u64>()
    ));
    // Inside the namespace: bring loopback up, start redis on 6379, wait for it, run the
    // example, always shut redis down, and exit with the example's status.
    let script = r#"
set -u
ip link set lo up || exit 90
redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$PIDFILE" --logfile '' >/dev/null || exit 91
tries=0
until [ "$(redis-cli -p 6379 ping 2>/dev/null)" = PONG ]; do
  tries=$((tries + 1))
  [ "$tries" -gt 100 ] && { echo 'redis-server did not answer PING' >&2; exit 92; }
  sleep 0.05
done
"$EXAMPLE"
status=$?
redis-cli -p 6379 shutdown nosave >/dev/null 2>&1
exit $status
"#;
    let output = Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("EXAMPLE", &binary)
        .env("PIDFILE", &pidfile)
        .output()
        .expect("failed to spawn `unshare` (util-linux); this test needs it, and root");
    let _ = std::fs::remove_file(&pidfile);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} example (in `unshare --net`) failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|line| line.trim() == "quickstart ok"),
        "{name} example did not print `quickstart ok`\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}
