//! The processes under test: wsnotify instances and a private
//! redis-server, each started pinned to a core with `taskset`, killed when
//! dropped; their resident memory and CPU time read from `/proc`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::Conn;

/// Settings every benchmarked wsnotify gets, whatever the scenario: no
/// periodic notification, no heartbeat and no idle timeout (the generator's
/// clients never answer pings, and a heartbeat in the middle of a
/// measurement would be 10k extra frames), logs at `warn` (but not the
/// open-server warnings of start-up).
pub const QUIET: &[(&str, &str)] = &[
    ("NOTIFICATION_INTERVAL", "0"),
    ("HEARTBEAT_INTERVAL", "0"),
    ("IDLE_TIMEOUT", "0"),
    ("RUST_LOG", "warn,wsnotify::auth=error"),
];

/// A free TCP port on the loopback interface.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} of {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a /proc status value")?
        .parse()?)
}

/// User + system CPU time of process `pid` (all its threads), in seconds;
/// `/proc` counts it in clock ticks (10 ms).
pub fn cpu_s(pid: u32) -> Result<f64> {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// This process's CPU time, in seconds.
pub fn own_cpu_s() -> f64 {
    cpu_of("/proc/self/stat").unwrap_or(f64::NAN)
}

/// This process's CPU time to the nanosecond (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn own_cpu_exact_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The scheduler's run time of process `pid`'s live threads, in seconds
/// (the first field of each `/proc/PID/task/TID/schedstat`, in ns).
pub fn run_time_s(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let ns: u64 = tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    ns as f64 / 1e9
}

fn cpu_of(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // The command name is in parentheses and may hold spaces: the fields
    // after it are `state ppid … utime(14) stime(15)`.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / per_s)
}

/// CPU seconds of the whole machine, all cores, from `/proc/stat`: time
/// spent in processes (user, nice, system, steal), and in interrupts (irq,
/// softirq). Loopback TCP receives run in softirq context, which the kernel
/// accounts apart from the process that caused them, so the measured
/// processes' own network work shows up in the second figure, not the first.
pub fn machine_cpu_s() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (f64::NAN, f64::NAN);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        return (f64::NAN, f64::NAN);
    }
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let tasks = f[0] + f[1] + f[2] + f[7];
    let interrupts = f[5] + f[6];
    (tasks as f64 / per_s, interrupts as f64 / per_s)
}

/// Every thread of process `pid`: its id, its name (`comm`, at most 15
/// bytes) and its CPU seconds so far.
pub fn thread_cpu(pid: u32) -> Vec<(u64, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u64, String, f64)> = tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let tid = dir.file_name()?.to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let cpu = cpu_of(dir.join("stat").to_str()?).ok()?;
            Some((tid, comm.trim().to_owned(), cpu))
        })
        .collect();
    threads.sort_by_key(|t| t.0);
    threads
}

/// The load averages (1, 5, 15 min) of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time of some processes and of the machine, at one instant.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    procs: Vec<f64>,
    machine: (f64, f64),
}

/// CPU used between two [`CpuMark`]s.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// Seconds per process, in the order given to [`CpuMark::take`].
    pub procs: Vec<f64>,
    pub wall_s: f64,
    /// Seconds the whole machine spent in processes (see [`machine_cpu_s`]).
    pub machine_s: f64,
    /// Seconds the whole machine spent in interrupts (mostly loopback
    /// receives: the measured processes' network work).
    pub interrupts_s: f64,
}

impl CpuUse {
    /// What the rest of the machine used meanwhile (the other engineer's
    /// compiler, say): process time of the machine minus the processes
    /// measured (interrupts not included).
    pub fn others_s(&self) -> f64 {
        self.machine_s - self.procs.iter().filter(|v| !v.is_nan()).sum::<f64>()
    }
}

impl CpuMark {
    /// Reads the CPU time of `pids` now: `Some(0)` is this process, `None`
    /// counts zero.
    pub fn take(pids: &[Option<u32>]) -> CpuMark {
        CpuMark::read(pids, own_cpu_s, |pid| cpu_s(pid).unwrap_or(f64::NAN))
    }

    /// As [`CpuMark::take`], with each process's time to the nanosecond:
    /// the scheduler's run time of its threads (`/proc/PID/task/*/schedstat`)
    /// and this process's `CLOCK_PROCESS_CPUTIME_ID`, instead of 10 ms ticks.
    /// Threads that exit in between drop out of the sum.
    pub fn take_exact(pids: &[Option<u32>]) -> CpuMark {
        CpuMark::read(pids, own_cpu_exact_s, run_time_s)
    }

    /// The mark of `pids`, this process's time by `own`, others' by `other`.
    fn read(pids: &[Option<u32>], own: fn() -> f64, other: fn(u32) -> f64) -> CpuMark {
        let procs = pids
            .iter()
            .map(|pid| match pid {
                Some(0) => own(),
                Some(pid) => other(*pid),
                None => 0.0,
            })
            .collect();
        CpuMark {
            at: Instant::now(),
            procs,
            machine: machine_cpu_s(),
        }
    }

    /// What was used since `earlier`.
    pub fn since(&self, earlier: &CpuMark) -> CpuUse {
        CpuUse {
            procs: self
                .procs
                .iter()
                .zip(&earlier.procs)
                .map(|(a, b)| a - b)
                .collect(),
            wall_s: self.at.duration_since(earlier.at).as_secs_f64(),
            machine_s: self.machine.0 - earlier.machine.0,
            interrupts_s: self.machine.1 - earlier.machine.1,
        }
    }
}

/// Counters of the kernel's TCP statistics (`TcpExt` in
/// `/proc/net/netstat`, machine-wide), e.g. `ListenOverflows`,
/// `ListenDrops`, `TCPSynRetrans`: dropped handshakes show up as
/// connections that take one SYN retransmission timeout (1 s) longer.
pub fn tcp_counters(names: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(head), Some(values)) = (lines.next(), lines.next()) else {
        return vec![0; names.len()];
    };
    let pairs: Vec<(&str, u64)> = head
        .split_whitespace()
        .zip(values.split_whitespace())
        .map(|(k, v)| (k, v.parse().unwrap_or(0)))
        .collect();
    names
        .iter()
        .map(|name| pairs.iter().find(|(k, _)| k == name).map_or(0, |p| p.1))
        .collect()
}

/// One process under test, killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    pub addr: SocketAddr,
    /// Once reaped by [`Proc::exited`]: its status and final CPU seconds.
    reaped: Option<(i32, f64)>,
}

impl Proc {
    /// Starts `bin` pinned to `cpu` with `args` and `envs`, listening on
    /// `port`; does not wait for it.
    pub fn spawn(
        name: &str,
        bin: &str,
        cpu: usize,
        port: u16,
        args: &[String],
        envs: &[(String, String)],
    ) -> Result<Proc> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {bin} (is it built? see the justfile)"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            addr: ([127, 0, 0, 1], port).into(),
            reaped: None,
        })
    }

    /// Starts a wsnotify from `bin` on a free port, pinned to `cpu`, with
    /// [`QUIET`] and `envs`, and waits until it listens.
    pub async fn wsnotify(
        name: &str,
        bin: &str,
        cpu: usize,
        envs: &[(&str, String)],
    ) -> Result<Proc> {
        let port = free_port()?;
        let mut all: Vec<(String, String)> = QUIET
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("PORT".into(), port.to_string()));
        all.extend(envs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let proc = Proc::spawn(name, bin, cpu, port, &[], &all)?;
        proc.wait_listening().await?;
        Ok(proc)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// CPU seconds so far (all of them, once it has exited and been reaped).
    pub fn cpu_s(&self) -> f64 {
        match self.reaped {
            Some((_, cpu)) => cpu,
            None => cpu_s(self.pid()).unwrap_or(f64::NAN),
        }
    }

    /// Sends SIGTERM (the graceful drain).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
    }

    /// The raw wait status, if it has exited; reaps it with `wait4`, which
    /// also gives its CPU time (no longer in `/proc` after the exit).
    pub fn exited(&mut self) -> Option<i32> {
        if let Some((status, _)) = self.reaped {
            return Some(status);
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 on our own child, no hang.
        let (reaped, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let r = libc::wait4(self.pid() as i32, &mut status, libc::WNOHANG, &mut usage);
            (r, usage)
        };
        if reaped != self.pid() as i32 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.reaped = Some((status, secs(usage.ru_utime) + secs(usage.ru_stime)));
        Some(status)
    }

    /// Waits until `GET /ready` answers 200 (wsnotify: its Redis link is
    /// up; sockudo: it accepts traffic), 10 s at most.
    pub async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = Conn::connect(self.addr).await
                && let Ok(reply) = conn.request("GET", "/ready", None).await
                && reply.status == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} on {} never became ready", self.name, self.addr)
    }

    /// Waits until the process accepts connections (10 s at most).
    pub async fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("{} did not listen on {}", self.name, self.addr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A reaped child's pid may already belong to another process.
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private redis-server (no persistence) on a free port.
pub struct Redis {
    pub proc: Proc,
}

impl Redis {
    /// Starts `redis-server` pinned to `cpu` and waits until it answers.
    pub async fn start(bin: &str, cpu: usize) -> Result<Redis> {
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "1000",
            "--loglevel",
            "warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn("redis", bin, cpu, port, &args, &[])?;
        proc.wait_listening().await?;
        let redis = Redis { proc };
        redis.command("PING").await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.proc.addr)
    }

    /// Empties every database, between runs.
    pub async fn flush(&self) -> Result<()> {
        self.command("FLUSHALL").await.map(|_| ())
    }

    /// Sends one inline command; answers the first reply line.
    pub async fn command(&self, inline: &str) -> Result<String> {
        let mut stream = TcpStream::connect(self.proc.addr).await?;
        stream.write_all(format!("{inline}\r\n").as_bytes()).await?;
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n") {
            if stream.read_buf(&mut reply).await? == 0 {
                bail!("redis closed the connection");
            }
        }
        let line = String::from_utf8_lossy(&reply).trim_end().to_owned();
        if line.starts_with('-') {
            bail!("redis: {line}");
        }
        Ok(line)
    }
}

/// Counts tracepoint events (e.g. `syscalls:sys_enter_writev`) of one
/// process with `perf stat`, between [`EventCounter::start`] and
/// [`EventCounter::stop`]. Needs `perf` and tracepoint access (root).
pub struct EventCounter {
    child: Child,
    events: Vec<String>,
}

impl EventCounter {
    /// Attaches `perf stat` to `pid`; waits briefly so the count covers
    /// what follows.
    pub async fn start(pid: u32, events: &[&str]) -> Result<EventCounter> {
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", &events.join(","), "-p"])
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start perf stat (is perf installed?)")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(EventCounter {
            child,
            events: events.iter().map(|e| e.to_string()).collect(),
        })
    }

    /// Stops the count (SIGINT, as Ctrl+C) and answers each event's total.
    pub fn stop(self) -> Result<Vec<u64>> {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let output = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stderr);
        // CSV lines: count,unit,event,…
        Ok(self
            .events
            .iter()
            .map(|event| {
                text.lines()
                    .find_map(|line| {
                        let mut fields = line.split(',');
                        let count = fields.next()?;
                        let name = fields.nth(1)?;
                        (name == event).then(|| count.parse().ok())?
                    })
                    .unwrap_or(0)
            })
            .collect())
    }
}
