//! Runs the `quickstart_redis` example (the spec's Rust quick start, which hard-codes
//! `redis://127.0.0.1:6379/`) against a private `redis-server` that listens on port 6379 inside
//! its own network namespace, so it can neither clash with nor touch any other Redis.
//!
//! This test builds nothing: it runs the example binary cargo built next to it
//! (`target/<profile>/examples/quickstart_redis`). A plain `cargo test -p trypema --all-features`
//! builds examples; with a `--test` filter, build it first with
//! `cargo build -p trypema --features redis-tokio --example quickstart_redis`. Needs root (for
//! `unshare --net`), `ip`, `redis-server` and `redis-cli`.
#![cfg(feature = "redis-tokio")]

mod support;

use std::{path::PathBuf, process::Command};

use support::example_path;

/// `target/<profile>/examples/quickstart_redis`, found from this test's own executable
/// (`target/<profile>/deps/quickstart_example-<hash>`).
fn example_binary() -> PathBuf {
    let binary = example_path("quickstart_redis");
    assert!(
        binary.is_file(),
        "example binary {} not found: a plain `cargo test -p trypema --all-features` builds it; \
         with a `--test` filter, first run \
         `cargo build -p trypema --features redis-tokio --example quickstart_redis`",
        binary.display()
    );
    binary
}

#[test]
fn quickstart_example_runs_against_a_redis_on_6379() {
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
        "quickstart example (in `unshare --net`, needs root) failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|line| line.trim() == "quickstart ok"),
        "quickstart example did not print `quickstart ok`\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}
