//! The processes the benchmark starts and stops: its own envtest (stopped on drop, also on
//! a panic), and the operator binary as a child process (stopped by its PID on drop).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The operator child running now (0: none), for the Ctrl-C handler.
static OPERATOR_PID: AtomicU32 = AtomicU32::new(0);
/// The envtest state dir this benchmark started, for the Ctrl-C handler.
static ENVTEST_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn envtest_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envtest/envtest.sh")
}

fn envtest_down(state_dir: &Path) {
    let status = Command::new("bash")
        .arg(envtest_script())
        .arg("down")
        .env("ENVTEST_STATE_DIR", state_dir)
        .stdout(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: `envtest.sh down` for {} failed: {status:?}", state_dir.display());
    }
}

/// Sends SIGTERM to exactly this PID (the `kill` utility: no libc binding needed).
fn terminate(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// On Ctrl-C: stop the operator child and the envtest this process started, then exit 130.
pub fn install_interrupt_cleanup() {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the operator and envtest");
            let pid = OPERATOR_PID.load(Ordering::SeqCst);
            if pid != 0 {
                terminate(pid);
            }
            if let Some(dir) = ENVTEST_DIR.lock().unwrap().take() {
                envtest_down(&dir);
            }
            std::process::exit(130);
        }
    });
}

/// An envtest started by this benchmark (`envtest.sh up` with its own state dir); `down` on drop.
pub struct Envtest {
    state_dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Envtest {
    pub fn up() -> Result<Self, String> {
        let state_dir = std::env::temp_dir().join(format!("envtest-ctlbench-{}", std::process::id()));
        *ENVTEST_DIR.lock().unwrap() = Some(state_dir.clone());
        let started = Instant::now();
        let output = Command::new("bash")
            .arg(envtest_script())
            .arg("up")
            .env("ENVTEST_STATE_DIR", &state_dir)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run envtest.sh: {e}"))?;
        // Constructed before the check, so that a half-started envtest is stopped too.
        let envtest = Self { kubeconfig: state_dir.join("kubeconfig"), state_dir };
        if !output.status.success() {
            return Err(format!("`envtest.sh up` failed ({})", output.status));
        }
        eprintln!("envtest up in {:.1} s ({})", started.elapsed().as_secs_f64(), envtest.state_dir.display());
        Ok(envtest)
    }
}

impl Drop for Envtest {
    fn drop(&mut self) {
        envtest_down(&self.state_dir);
        ENVTEST_DIR.lock().unwrap().take();
        eprintln!("envtest down ({})", self.state_dir.display());
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr")
}

/// `atlas-access-operator run` as a child process; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Operator {
    child: Option<Child>,
    pub pid: u32,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, args: &[String], log: PathBuf) -> Result<Self, String> {
        let http = free_port();
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"));
        command
            .arg("run")
            .arg(format!("--http-bind={http}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            // The operator's defaults (info, JSON lines), whatever the caller's shell has.
            .env_remove("RUST_LOG")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("WATCH_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        let child = command.spawn().map_err(|e| format!("cannot start the operator: {e}"))?;
        let pid = child.id();
        OPERATOR_PID.store(pid, Ordering::SeqCst);
        Ok(Self { child: Some(child), pid, http, log })
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET one of its HTTP endpoints.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
        let resp = client.get(format!("http://{}{path}", self.http)).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.get("/readyz").await, Some((200, _))) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!("the operator exited; log:\n{}", self.log_tail(40)));
            }
            if Instant::now() >= deadline {
                return Err(format!("the operator was not ready within {timeout:?}; log:\n{}", self.log_tail(40)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to its PID, up to 15 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if child.try_wait().ok().flatten().is_none() {
            terminate(self.pid);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        let _ = OPERATOR_PID.compare_exchange(self.pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Memory of a process from /proc/PID/status: (VmRSS, VmHWM) in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time a process used so far (utime + stime from /proc/PID/stat), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("unexpected /proc/PID/stat");
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    Ok((utime + stime) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `1.23 0.98 0.77` from /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}
