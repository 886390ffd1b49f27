//! Measurement of the server from outside: CPU time (user and kernel apart) and RSS of the
//! server process(es) from `/proc/<pid>/stat` and `/proc/<pid>/status`, and the machine's load
//! average. A sample is taken before connecting, at the end of the warm-up and at the end of
//! each phase; the differences are the phase's cost.

/// Server process figures from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// CPU seconds in user mode (`utime`).
    pub cpu_user_s: f64,
    /// CPU seconds in the kernel on the process's behalf (`stime`).
    pub cpu_sys_s: f64,
    pub rss_kb: u64,
}

impl ProcSample {
    /// User + kernel CPU seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_user_s + self.cpu_sys_s
    }
}

/// Clock ticks per second (the unit of `utime`/`stime`).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// CPU and RSS summed over the processes; `None` when there are none or one is gone.
pub fn sample_proc(pids: &[u32], ticks: f64) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        let s = sample_one(pid, ticks)?;
        total.cpu_user_s += s.cpu_user_s;
        total.cpu_sys_s += s.cpu_sys_s;
        total.rss_kb += s.rss_kb;
    }
    Some(total)
}

fn sample_one(pid: u32, ticks: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_user_s: utime / ticks,
        cpu_sys_s: stime / ticks,
        rss_kb,
    })
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
