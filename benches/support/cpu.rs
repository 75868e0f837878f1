//! Where the CPU time of a scenario goes: the server, the bench client, and the rest of the
//! machine (Postgres, mostly).
//!
//! On a small machine the bench, the server and Postgres share the same cores, so a throughput
//! number alone cannot say whether the server got faster or merely left more CPU to Postgres.
//! A snapshot before and after a scenario splits the machine's busy time into the server
//! process, this process, and the remainder, which is attributed to "Postgres and other"; the
//! remainder is split further into the Postgres backends of the bench's own databases, the
//! Postgres background processes and the rest, because the machine may be shared.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Clock ticks per second of the `/proc` counters.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat`; `None` reads this process (`/proc/self/stat`).
pub fn process_cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    Ok(process_ticks(pid)? as f64 / clock_ticks_per_second())
}

/// Clock ticks (user + system) a process has used so far.
fn process_ticks(pid: Option<u32>) -> anyhow::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name come state (field 3) .. utime (field 14) and stime (field 15).
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("{path} has too few fields");
    };
    Ok(utime.parse::<u64>()? + stime.parse::<u64>()?)
}

/// Busy CPU seconds of the whole machine (all cores) since boot, from the `cpu` line of
/// `/proc/stat`: everything but idle and iowait (guest time is already inside user).
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing the cpu line of /proc/stat")?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy: u64 = values
        .iter()
        .take(8)
        .enumerate()
        .filter(|(position, _)| *position != 3 && *position != 4)
        .map(|(_, value)| value)
        .sum();
    Ok(busy as f64 / clock_ticks_per_second())
}

/// CPU ticks of the Postgres processes, by process, split into the backends of our databases
/// and the shared background processes (checkpointer, WAL writer, …).
///
/// Backends show their database in their process title (`postgres: 15/main: root <db>
/// 127.0.0.1(port) idle`), so on a machine shared with other work the bench can tell its own
/// backends from everyone else's. A process that exits between two snapshots loses its ticks
/// (they fall into the remainder), which for pooled connections does not happen mid-scenario.
#[derive(Debug, Clone, Default)]
pub struct PostgresTicks {
    ours: HashMap<u32, u64>,
    background: HashMap<u32, u64>,
}

impl PostgresTicks {
    /// Reads every `postgres` process; `database_marker` is a prefix of our databases' names.
    pub fn take(database_marker: &str) -> Self {
        let mut ticks = Self::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() != "postgres" {
                continue;
            }
            let title = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let Ok(used) = process_ticks(Some(pid)) else {
                continue;
            };
            if title.contains(database_marker) {
                ticks.ours.insert(pid, used);
            } else if !(title.contains('(') || title.contains("[local]")) {
                // No client address: the postmaster or a background process.
                ticks.background.insert(pid, used);
            }
        }
        ticks
    }

    /// CPU seconds of (our backends, background) between `self` and `later`.
    fn until(&self, later: &Self) -> (f64, f64) {
        let delta = |before: &HashMap<u32, u64>, after: &HashMap<u32, u64>| {
            let ticks: u64 = after
                .iter()
                .map(|(pid, used)| used.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            ticks as f64 / clock_ticks_per_second()
        };
        (
            delta(&self.ours, &later.ours),
            delta(&self.background, &later.background),
        )
    }
}

/// CPU counters at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    machine_busy: f64,
    server: f64,
    bench: f64,
    postgres: PostgresTicks,
}

impl CpuSnapshot {
    /// Reads the counters now; `server_pid` is the server process, if one runs, and
    /// `database_marker` a prefix of the names of the databases the bench created.
    pub fn take(server_pid: Option<u32>, database_marker: &str) -> anyhow::Result<Self> {
        let postgres = PostgresTicks::take(database_marker);
        Ok(Self {
            at: Instant::now(),
            machine_busy: machine_busy_seconds()?,
            server: match server_pid {
                Some(pid) => process_cpu_seconds(Some(pid))?,
                None => 0.0,
            },
            bench: process_cpu_seconds(None)?,
            postgres,
        })
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn until(&self, later: &Self) -> CpuSplit {
        let machine = (later.machine_busy - self.machine_busy).max(0.0);
        let server = (later.server - self.server).max(0.0);
        let bench = (later.bench - self.bench).max(0.0);
        // Per-process and machine counters tick separately, so the remainders can dip a little
        // below zero on an idle machine.
        let other = (machine - server - bench).max(0.0);
        let (postgres_ours, postgres_background) = self.postgres.until(&later.postgres);
        CpuSplit {
            wall: later.at.duration_since(self.at),
            server,
            bench,
            other,
            postgres_ours,
            postgres_background,
            rest: (other - postgres_ours - postgres_background).max(0.0),
            machine,
        }
    }
}

/// CPU seconds of one scenario, split by who used them.
#[derive(Debug, Clone, Copy)]
pub struct CpuSplit {
    pub wall: Duration,
    /// The callstore server process.
    pub server: f64,
    /// This bench process (gRPC client, encoding, COPY driver).
    pub bench: f64,
    /// Machine busy time not used by the two above: Postgres and anything else running.
    pub other: f64,
    /// Of `other`: the Postgres backends of the bench's own databases.
    pub postgres_ours: f64,
    /// Of `other`: Postgres background processes (WAL writer, checkpointer, …), shared with
    /// whatever else uses the same Postgres server.
    pub postgres_background: f64,
    /// Of `other`: the rest of the machine (other processes, exited backends, the kernel).
    pub rest: f64,
    /// Machine busy time (all cores).
    pub machine: f64,
}

impl CpuSplit {
    /// Busy cores on average: machine CPU-seconds per wall second (at most the core count).
    pub fn cores_busy(&self) -> f64 {
        let wall = self.wall.as_secs_f64();
        if wall > 0.0 { self.machine / wall } else { 0.0 }
    }
}

/// The rows that split "postgres+other" and say how busy the machine was, under a bench's own
/// CPU-s row.
pub fn machine_rows(table: &mut crate::support::report::Table, cpu: &CpuSplit) {
    table.row(
        "of postgres+other: our postgres backends / postgres background / rest of machine",
        format!(
            "{:.2} / {:.2} / {:.2}",
            cpu.postgres_ours, cpu.postgres_background, cpu.rest
        ),
        "",
        "",
    );
    table.row(
        "CPU-s per wall-s (machine)",
        format!(
            "{:.2} of {} cores ({:.2} CPU-s over {})",
            cpu.cores_busy(),
            std::thread::available_parallelism().map_or(0, usize::from),
            cpu.machine,
            crate::support::report::seconds(cpu.wall)
        ),
        "",
        "",
    );
}
