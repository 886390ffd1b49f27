//! A full disk: the embedded store's `DATA_DIR` on a size-limited tmpfs (a real filesystem
//! that answers ENOSPC when full; no image file, no loop device), filled by a ballast file
//! once the service runs. Sends must be refused with `unavailable` (never `internal`, never
//! acked) and the condition logged once, not once per message; when the ballast goes, sending
//! works again by itself; the database is not corrupted, and after a restart (kill -9) every
//! acked message is there once.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::net::{is_root, run};
use crate::procs::{CHAT_BIN, Service, chat_command};
use crate::support::unique;
use crate::traffic::{Sent, check_stored, send, stored};

/// Size of the data filesystem.
const FS_SIZE: &str = "24m";

/// A tmpfs mounted for the test; unmounted on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).expect("mount point");
        let opts = format!("size={size},mode=0755");
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &opts,
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        Mount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let path = self.path.to_str().unwrap();
        let ok = Command::new("umount")
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            // Still busy (a process that has not exited yet): detach it now, freed when idle.
            let _ = Command::new("umount").args(["-l", path]).output();
        }
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("ballast");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("ballast: {e}"),
        }
    }
    // Small writes use up what a partial chunk could not.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {
        written += 512;
    }
    written
}

/// The WARN and ERROR lines of a log after byte `from`.
fn problems(log: &Path, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text[from.min(text.len())..]
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_as_unavailable_logs_once_and_heals_by_itself() {
    const TEST: &str = "a_full_disk_refuses_sends_as_unavailable_logs_once_and_heals_by_itself";
    if !is_root() {
        eprintln!("SKIPPED: lab::{TEST} (needs root to mount a tmpfs)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mount = Mount::tmpfs(&data, FS_SIZE);
    let log = dir.path().join("chat-service.log");
    let env = [
        ("HOST", "127.0.0.1"),
        ("STORAGE", "embedded"),
        ("DATA_DIR", data.to_str().unwrap()),
    ];
    let start = || {
        let mut cmd = Command::new(CHAT_BIN);
        cmd.env_clear().current_dir(dir.path());
        Service::start(
            "chat-service",
            chat_command(cmd, &env),
            Ipv4Addr::LOCALHOST,
            &log,
        )
    };
    let mut service = start().await;
    let room = unique("disk");
    let mut client = service.member(&unique("u"), &room).await;
    let body = "x".repeat(3000);
    let mut n = 0;
    let mut next_text = || {
        n += 1;
        format!("{n:05} {body}")
    };
    let mut sent: Vec<Sent> = Vec::new();
    for _ in 0..20 {
        let s = send(&mut client, "disk", &room, &next_text()).await;
        assert!(s.acked(), "{s:?}");
        sent.push(s);
    }

    let ballast = data.join("ballast");
    let filled = fill(&ballast);
    let mark = std::fs::metadata(&log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    // Space inside the store's files may take a few more messages; then sends are refused.
    let mut refused: Vec<Sent> = Vec::new();
    for _ in 0..2000 {
        let s = send(&mut client, "disk", &room, &next_text()).await;
        let failed = !s.acked();
        if failed {
            assert_eq!(s.error.as_deref(), Some("unavailable"), "{s:?}");
            refused.push(s);
        } else {
            sent.push(s);
        }
        if failed {
            break;
        }
    }
    assert!(
        !refused.is_empty(),
        "the disk never filled ({filled} bytes of ballast)"
    );
    let full_at = sent.len();
    for _ in 0..10 {
        let s = send(&mut client, "disk", &room, &next_text()).await;
        assert_eq!(s.error.as_deref(), Some("unavailable"), "{s:?}");
        refused.push(s);
    }
    let logged = problems(&log, mark);
    assert_eq!(
        logged.len(),
        1,
        "the full disk is logged once, not per message: {logged:#?}"
    );

    std::fs::remove_file(&ballast).expect("remove ballast");
    let freed = Instant::now();
    // Sending works again by itself: the refused messages, retried with their
    // clientMessageId, are acked (the first retries may still meet the condition).
    for r in &refused {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = send(&mut client, "disk", &room, &r.text).await;
            if s.acked() {
                sent.push(s);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still refused after the space came back: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let healed_in = freed.elapsed();

    service.proc.kill9();
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", data.join("chat.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open chat.db");
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut db)
            .await
            .expect("integrity_check");
        assert_eq!(check, "ok", "the database is not corrupted");
        db.close().await.expect("close");
    }
    let service = start().await;
    let ids = check_stored(&room, &stored(&service, &room).await, &sent);
    assert_eq!(ids.len(), sent.len());
    eprintln!(
        "lab: full disk ({FS_SIZE} tmpfs, {filled} bytes of ballast): refused after {} more \
         messages, {} refusals, logged {:?}; sending again {} ms after the space came back",
        full_at - 20,
        refused.len(),
        logged,
        healed_in.as_millis()
    );
    drop(service);
    drop(mount);
}
