//! Shared by the benchmarks that run a cortexflow command and a peer tool as child processes:
//! wall time, CPU time and peak RSS of each child (`wait4(2)`), the CPU share other processes took
//! meanwhile (/proc/stat), thread settings for both sides, and reading a Float64 Parquet column.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use arrow::array::{Array, Float64Array};

/// `wait4(2)` with the C library's `struct rusage` (LP64: two `timeval`s then 14 longs).
#[cfg(unix)]
mod sys {
    use std::os::raw::{c_int, c_long};

    #[repr(C)]
    #[derive(Default)]
    struct Timeval {
        tv_sec: c_long,
        tv_usec: c_long,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Rusage {
        ru_utime: Timeval,
        ru_stime: Timeval,
        ru_maxrss: c_long,
        _rest: [c_long; 13],
    }

    impl Rusage {
        pub fn max_rss_kib(&self) -> f64 {
            // KiB on Linux, bytes on macOS
            if cfg!(target_os = "macos") {
                self.ru_maxrss as f64 / 1024.0
            } else {
                self.ru_maxrss as f64
            }
        }
        pub fn cpu_s(&self) -> f64 {
            let t = |v: &Timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
            t(&self.ru_utime) + t(&self.ru_stime)
        }
    }

    extern "C" {
        fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
        fn getrusage(who: c_int, rusage: *mut Rusage) -> c_int;
    }

    /// CPU time (user + system, all threads) this process has used so far.
    pub fn self_cpu_s() -> f64 {
        let mut ru = Rusage::default();
        // SAFETY: a valid pointer to a local; RUSAGE_SELF = 0.
        if unsafe { getrusage(0, &mut ru) } == 0 {
            ru.cpu_s()
        } else {
            f64::NAN
        }
    }

    /// Reaps `pid`; returns its exit code (`None` if it was killed by a signal) and its usage.
    pub fn wait_with_rusage(pid: u32) -> std::io::Result<(Option<i32>, Rusage)> {
        let mut status: c_int = 0;
        let mut ru = Rusage::default();
        loop {
            // SAFETY: valid pointers to locals; `pid` is our own unreaped child.
            let r = unsafe { wait4(pid as c_int, &mut status, 0, &mut ru) };
            if r == pid as c_int {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let code = if status & 0x7f == 0 {
            Some((status >> 8) & 0xff)
        } else {
            None
        };
        Ok((code, ru))
    }
}

#[cfg(not(unix))]
compile_error!("the benchmarks read peak memory with wait4(2) (Unix only)");

/// One child process run.
pub struct Run {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_mib: f64,
    /// CPU share taken by other processes during the run (see [`others_share`]).
    pub others: f64,
    pub stdout: String,
}

/// CPU time (user + system, all threads) used by this process so far (`getrusage(2)`).
pub fn self_cpu_s() -> f64 {
    sys::self_cpu_s()
}

pub fn self_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sets the thread environment of a child (identical for both tools).
pub fn with_threads(cmd: &mut Command, threads: usize) -> &mut Command {
    for k in [
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "RAYON_NUM_THREADS",
    ] {
        cmd.env(k, threads.to_string());
    }
    cmd
}

/// Spawns `cmd` with stdout/stderr in files under `log_dir`, waits with `wait4`, and fails with
/// the stderr tail if the child failed.
pub fn run_child(mut cmd: Command, log_dir: &Path, name: &str) -> anyhow::Result<Run> {
    let out_path = log_dir.join(format!("{name}.stdout"));
    let err_path = log_dir.join(format!("{name}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let s0 = cpu_sample();
    let t0 = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let (code, ru) = sys::wait_with_rusage(child.id())?;
    let wall_s = t0.elapsed().as_secs_f64();
    let s1 = cpu_sample();
    drop(child); // already reaped by wait4; dropping a Child neither waits nor kills
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if code != Some(0) {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = stderr
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{name} failed ({code:?}): {cmd:?}\n{stdout}\n{tail}");
    }
    Ok(Run {
        wall_s,
        others: others_share(s0, s1, ru.cpu_s(), wall_s),
        cpu_s: ru.cpu_s(),
        peak_mib: ru.max_rss_kib() / 1024.0,
        stdout,
    })
}

/// (total, idle) jiffies over all CPUs, and the number of CPUs, from /proc/stat.
pub fn cpu_sample() -> Option<(f64, f64, usize)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0.0);
    let ncpu = s
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    Some((total, idle, ncpu))
}

/// Share of the machine's CPU time between two samples spent by processes other than a child
/// that used `child_cpu_s` in that interval (0 for a quiet machine). BLAS thread pools that
/// spin-wait (OpenBLAS, OpenMP) slow down by an order of magnitude when another process takes a
/// core, so timings with a large share here are not representative.
pub fn others_share(a: Option<(f64, f64, usize)>, b: Option<(f64, f64, usize)>, child_cpu_s: f64, wall_s: f64) -> f64 {
    match (a, b) {
        (Some((t0, i0, n)), Some((t1, i1, _))) if t1 > t0 && n > 0 && wall_s > 0.0 => {
            let busy = 1.0 - (i1 - i0) / (t1 - t0);
            (busy - child_cpu_s / (wall_s * n as f64)).max(0.0)
        }
        _ => f64::NAN,
    }
}

/// A numeric column as f64 (integers cast; nulls as NaN).
pub fn f64_column(batches: &[arrow::array::RecordBatch], name: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(name).with_context(|| format!("no column {name}"))?;
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Float64)
            .with_context(|| format!("{name} is not numeric"))?;
        let a = col
            .as_any()
            .downcast_ref::<Float64Array>()
            .with_context(|| format!("{name} is not f64"))?;
        out.extend((0..a.len()).map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) }));
    }
    Ok(out)
}

/// Python with the peers (numpy, himalaya, …): `CORTEXFLOW_PYTHON`, else the project's `.venv`,
/// else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CORTEXFLOW_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// A benchmark's working folder: `CORTEXFLOW_BENCH_DIR`, else `<target dir>/<name>`.
pub fn bench_dir(name: &str) -> PathBuf {
    match std::env::var_os("CORTEXFLOW_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join(name),
    }
}
