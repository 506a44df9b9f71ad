//! What /proc says about a benchmark's processes: their children, CPU
//! time and resident memory (Linux; zero elsewhere).

pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

struct ProcStat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU time (user + system) the processes have used so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| proc_stat(*p).map(|s| s.cpu_ticks))
        .sum();
    ticks as f64 / per_second
}

/// The CPU time some processes spend from `start` on, per operation.
pub struct CpuMeter<'a> {
    pids: &'a [u32],
    before: f64,
}

impl<'a> CpuMeter<'a> {
    pub fn start(pids: &'a [u32]) -> Self {
        CpuMeter {
            pids,
            before: cpu_seconds(pids),
        }
    }

    /// µs per operation since `start` (`None` without processes or
    /// operations).
    pub fn per_op_us(&self, ops: u64) -> Option<f64> {
        let used = cpu_seconds(self.pids) - self.before;
        (!self.pids.is_empty() && ops > 0).then(|| used * 1e6 / ops as f64)
    }
}

pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The machine's CPU time so far, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    idle: u64,
    total: u64,
}

impl MachineTicks {
    pub fn now() -> Self {
        let Ok(text) = std::fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user).
        let total = f.iter().take(8).sum();
        let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
        Self { idle, total }
    }

    /// The share of all cores' time since `earlier` that nothing ran.
    pub fn idle_share_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.idle.saturating_sub(earlier.idle) as f64 / total as f64
    }
}
