//! The binary limits glibc's malloc to two arenas (docs/ARCHITECTURE.md, "Two malloc arenas"):
//! it runs itself again with `MALLOC_ARENA_MAX=2`, in the same process, unless the operator
//! set the variable.

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

/// Starts the binary with `arena_max` (or without the variable), waits until it listens, and
/// returns the `MALLOC_ARENA_MAX` of the process it started (the pid it was given).
async fn arena_max_of_the_started_process(arena_max: Option<&str>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"));
    cmd.env_remove("MALLOC_ARENA_MAX")
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATA_DIR", dir.path());
    if let Some(v) = arena_max {
        cmd.env("MALLOC_ARENA_MAX", v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("listening on ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(listening, Ok(true), "the binary listens (as the same pid)");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let value = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("MALLOC_ARENA_MAX="))
        .map(str::to_string);
    child.kill().await.unwrap();
    value
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn the_server_runs_with_two_malloc_arenas_unless_the_operator_sets_them() {
    assert_eq!(
        arena_max_of_the_started_process(None).await.as_deref(),
        Some("2")
    );
    assert_eq!(
        arena_max_of_the_started_process(Some("4")).await.as_deref(),
        Some("4")
    );
}
