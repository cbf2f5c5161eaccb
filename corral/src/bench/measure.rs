//! What the benchmarks measure of a process and how they sum it up: CPU time and peak memory
//! (from `/proc`), and percentiles.

use std::fmt::Write as _;

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process (`"self"` or a pid) has used so far, from
/// `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// The peak resident memory of a process (`"self"` or a pid), from `/proc/PID/status`
/// (`VmHWM`).
pub(crate) fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The `p`th quantile (0..=1) of sorted values, nearest rank; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The measured processes of a benchmark rack; `None` for one that does not run.
pub(crate) struct Pids {
    pub(crate) apiserver: Option<u32>,
    pub(crate) controllers: Option<u32>,
    pub(crate) power_sim: Option<u32>,
    pub(crate) etcd: Option<u32>,
}

/// CPU seconds of each measured process at one moment.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuSample {
    apiserver: f64,
    controllers: f64,
    power_sim: f64,
    bench: f64,
    etcd: f64,
}

impl CpuSample {
    pub(crate) fn take(pids: &Pids) -> CpuSample {
        let of = |pid: Option<u32>| {
            pid.and_then(|pid| cpu_seconds(&pid.to_string()))
                .unwrap_or(0.0)
        };
        CpuSample {
            apiserver: of(pids.apiserver),
            controllers: of(pids.controllers),
            power_sim: of(pids.power_sim),
            bench: cpu_seconds("self").unwrap_or(0.0),
            etcd: of(pids.etcd),
        }
    }

    pub(crate) fn minus(self, earlier: CpuSample) -> CpuSample {
        CpuSample {
            apiserver: self.apiserver - earlier.apiserver,
            controllers: self.controllers - earlier.controllers,
            power_sim: self.power_sim - earlier.power_sim,
            bench: self.bench - earlier.bench,
            etcd: self.etcd - earlier.etcd,
        }
    }

    pub(crate) fn describe(&self, with_etcd: bool) -> String {
        let mut text = format!(
            "apiserver {:.1}, controllers {:.1}, power-sim {:.1}, bench client {:.1}",
            self.apiserver, self.controllers, self.power_sim, self.bench
        );
        if with_etcd {
            let _ = write!(text, ", etcd {:.1}", self.etcd);
        }
        text
    }
}
