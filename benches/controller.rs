//! `cargo bench --bench controller [-- --objects N]`: the controller path end to end, the way
//! a cluster runs it: a real kube-apiserver (its own envtest), the simulator in-process on a
//! loopback port without rate limits or latency, and the release operator binary as a child
//! process (`atlas-access-operator run`), measured from outside: /proc of its PID, its
//! /metrics, the simulator's counters and the apiserver's own /metrics.
//!
//! Workload (N AtlasOrgUser, default 2,000): ceil(N/400) organizations of 400 users, N/100
//! AtlasTeamMembership of 40 members (half by username, half by orgUserRef; half the teams by
//! id, half by name), one credentials Secret (`--default-credentials-secret`, in the operator's
//! namespace, labelled so it is watched). Objects carry the `kubectl.kubernetes.io/
//! last-applied-configuration` annotation most users' objects have (`--no-last-applied`: none).
//!
//! Sequence:
//! 1. batch: N/10 objects in a namespace (and organizations) of their own; the operator
//!    (`--namespace` that one) converges them, is restarted (warm start), settles: RSS.
//! 2. full: N objects in a second namespace and new organizations; a fresh operator converges
//!    them from nothing (cold: time, Atlas calls by operation, RSS once quiet; its resync is
//!    long so that no resync wave mixes into the cold counts); it is restarted (warm start:
//!    status writes, RSS); then an idle window of `--idle-periods` resync periods (Atlas calls,
//!    apiserver requests, CPU, reconciles, status writes); then `--reactions` new AtlasOrgUser,
//!    one at a time, timed from the create to the watch event showing status PENDING.
//!
//! Without `--bench` (`cargo test --all-targets`) it only says how to run it. It exits
//! non-zero only when something does not converge or a measurement source is missing, never
//! because of a figure.

#[path = "ctlbench/cluster.rs"]
mod cluster;
#[path = "ctlbench/procs.rs"]
mod procs;
#[path = "ctlbench/prom.rs"]
mod prom;
#[path = "ctlbench/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use atlas_access_operator::sim::{Counters, SimConfig, SimState, Simulator};
use clap::Parser;
use futures::StreamExt;
use kube::Client;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;

use procs::Operator;
use workload::{Workload, pages};

const SYSTEM_NAMESPACE: &str = "ctlbench-system";
const SECRET_NAME: &str = "atlas-credentials";
const PUBLIC_KEY: &str = "ctlbench-public";
const PRIVATE_KEY: &str = "ctlbench-private-key";
/// Resync of the operator that converges from cold: long, so the cold counts hold no resync wave.
const COLD_RESYNC: &str = "1h";
/// The operator metrics this benchmark reads (see src/metrics.rs).
const RECONCILES: &str = "atlas_access_reconciles_total";
const STATUS_WRITES: &str = "atlas_access_status_writes_total";
const IN_FLIGHT: &str = "atlas_access_reconciles_in_flight";

#[derive(Parser, Debug)]
#[command(about = "Controller-path benchmark (issue 16)")]
struct Args {
    /// Set by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// AtlasOrgUser objects (plus one AtlasTeamMembership per 100).
    #[arg(long, default_value_t = 2000)]
    objects: usize,
    /// The operator's --resync-interval for the warm start and the idle window (default: 60 s
    /// per 2,000 objects, at least 60 s: 5 min at 10,000, the operator's own default; a shorter
    /// one saturates today's operator at 10,000 objects, which never settles then).
    #[arg(long, value_parser = humantime::parse_duration)]
    resync: Option<Duration>,
    /// Resync periods the idle window lasts.
    #[arg(long, default_value_t = 2)]
    idle_periods: u32,
    /// Use the API server KUBECONFIG names instead of starting an envtest.
    #[arg(long)]
    kubeconfig_from_env: bool,
    /// Objects without the kubectl last-applied-configuration annotation.
    #[arg(long)]
    no_last_applied: bool,
    /// Concurrent server-side applies when creating the objects.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// New AtlasOrgUser timed from create to PENDING in the converged cluster.
    #[arg(long, default_value_t = 20)]
    reactions: usize,
    /// How long convergence may take (default: 10 min + 0.2 s per object).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Skip the N/10 batch (and the bytes-per-object slope).
    #[arg(long)]
    no_batch: bool,
    /// An extra flag for every `atlas-access-operator run` (repeatable), e.g.
    /// `--operator-arg=--index-refresh-interval=5m`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Where the operator logs go (default: a temporary directory, kept).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// What the operator's /metrics says, summed over kinds.
#[derive(Debug, Clone, Default)]
struct OperatorFigures {
    /// Set by `wait_warm_settled` when the operator never went idle.
    saturated: bool,
    /// `AtlasOrgUser 3, AtlasTeamMembership 1`
    status_writes_by_kind: String,
    reconciles: f64,
    status_writes: f64,
    in_flight: f64,
}

async fn operator_figures(op: &Operator) -> Result<OperatorFigures, String> {
    let (code, text) = op.get("/metrics").await.ok_or("the operator's /metrics did not answer")?;
    if code != 200 {
        return Err(format!("the operator's /metrics answered {code}"));
    }
    let samples = prom::parse(&text);
    let source = "the operator's /metrics";
    prom::require(&samples, RECONCILES, source)?;
    prom::require(&samples, STATUS_WRITES, source)?;
    let by_kind = |name: &str| -> String {
        let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.name == name) {
            *kinds.entry(sample.labels.get("kind").cloned().unwrap_or_default()).or_default() += sample.value;
        }
        kinds.iter().map(|(k, n)| format!("{k} {n:.0}")).collect::<Vec<_>>().join(", ")
    };
    Ok(OperatorFigures {
        saturated: false,
        status_writes_by_kind: by_kind(STATUS_WRITES),
        reconciles: prom::sum(&samples, RECONCILES, &[]),
        status_writes: prom::sum(&samples, STATUS_WRITES, &[]),
        // Optional: settling also works without it.
        in_flight: prom::sum(&samples, IN_FLIGHT, &[]),
    })
}

struct Bench {
    args: Args,
    kube: Client,
    kubeconfig: PathBuf,
    sim_url: String,
    state: SimState,
    log_dir: PathBuf,
    timeout: Duration,
    resync: Duration,
    operators_started: usize,
}

/// Per-operation request counts (all answers).
fn by_operation(c: &Counters) -> BTreeMap<String, u64> {
    c.requests.iter().map(|(op, by_status)| (op.clone(), by_status.values().sum())).collect()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Figures of one converge + warm start.
struct Phase {
    objects: usize,
    cold_seconds: f64,
    cold_calls_at_ready: BTreeMap<String, u64>,
    cold_calls_quiet: BTreeMap<String, u64>,
    cold_quiet_after: f64,
    digest_challenges: u64,
    cold_rss: (u64, u64),
    warm_rss: (u64, u64),
    warm_status_writes: f64,
    warm_status_writes_by_kind: String,
    warm_apiserver_status_writes: f64,
    warm_reconciles: f64,
    warm_settle_seconds: f64,
    warm_saturated: bool,
}

impl Bench {
    fn operator_args(&self, namespace: &str, resync: &str) -> Vec<String> {
        let mut args = vec![
            format!("--atlas-url={}", self.sim_url),
            "--atlas-insecure-http".into(),
            format!("--default-credentials-secret={SYSTEM_NAMESPACE}/{SECRET_NAME}"),
            format!("--operator-namespace={SYSTEM_NAMESPACE}"),
            format!("--namespace={namespace}"),
            format!("--resync-interval={resync}"),
            "--invitations-per-minute=0".into(),
        ];
        args.extend(self.args.operator_args.iter().cloned());
        args
    }

    async fn start_operator(&mut self, namespace: &str, resync: &str, what: &str) -> Result<Operator, String> {
        self.operators_started += 1;
        let log = self.log_dir.join(format!("operator-{}-{what}.log", self.operators_started));
        let args = self.operator_args(namespace, resync);
        let mut op = Operator::start(&self.kubeconfig, &args, log)?;
        op.wait_ready(Duration::from_secs(120)).await?;
        Ok(op)
    }

    /// Waits until every object of the namespace is Ready; the seconds since `since`.
    async fn wait_all_ready(
        &self,
        op: &mut Operator,
        namespace: &str,
        expected: usize,
        since: Instant,
    ) -> Result<f64, String> {
        let users = cluster::ReadyWatch::start(cluster::dynamic_api(&self.kube, namespace, "AtlasOrgUser"));
        let teams = cluster::ReadyWatch::start(cluster::dynamic_api(&self.kube, namespace, "AtlasTeamMembership"));
        let deadline = Instant::now() + self.timeout;
        let mut last_report = Instant::now();
        loop {
            if let (Some((nu, ru)), Some((nt, rt))) = (users.counts(), teams.counts()) {
                if nu + nt >= expected && ru + rt == nu + nt {
                    return Ok(since.elapsed().as_secs_f64());
                }
                if last_report.elapsed() >= Duration::from_secs(30) {
                    eprintln!(
                        "  {:.0} s: {}/{} Ready ({ru}/{nu} AtlasOrgUser, {rt}/{nt} AtlasTeamMembership)",
                        since.elapsed().as_secs_f64(),
                        ru + rt,
                        expected
                    );
                    last_report = Instant::now();
                }
            }
            if !op.is_running() {
                return Err(format!("the operator exited; log tail:\n{}", op.log_tail(40)));
            }
            if Instant::now() >= deadline {
                let mut stuck = users.stuck(15);
                stuck.extend(teams.stuck(15));
                return Err(format!(
                    "not converged within {:?}: {:?} AtlasOrgUser and {:?} AtlasTeamMembership (seen, Ready); stuck:\n  {}\n--- operator log tail ({}) ---\n{}",
                    self.timeout,
                    users.counts(),
                    teams.counts(),
                    stuck.join("\n  "),
                    op.log.display(),
                    op.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until neither the reconcile counter nor the simulator's request count moved for
    /// `quiet` (at most `cap`); the seconds it took.
    async fn wait_quiet(&self, op: &Operator, quiet: Duration, cap: Duration) -> Result<f64, String> {
        let started = Instant::now();
        let mut last = (operator_figures(op).await?.reconciles, self.state.counters().total_requests());
        let mut since = Instant::now();
        while started.elapsed() < cap {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = (operator_figures(op).await?.reconciles, self.state.counters().total_requests());
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// After a (re)start: every object reconciled at least once (or no reconcile for 10 s, for
    /// a controller that skips some), nothing in flight, and no status write for 5 s.
    async fn wait_warm_settled(&self, op: &mut Operator, objects: usize) -> Result<OperatorFigures, String> {
        let deadline = Instant::now() + self.timeout;
        let (mut last_writes, mut last_reconciles) = (f64::NAN, f64::NAN);
        let (mut writes_since, mut reconciles_since) = (Instant::now(), Instant::now());
        loop {
            let f = operator_figures(op).await?;
            if f.status_writes != last_writes {
                last_writes = f.status_writes;
                writes_since = Instant::now();
            }
            if f.reconciles != last_reconciles {
                last_reconciles = f.reconciles;
                reconciles_since = Instant::now();
            }
            let all_seen = f.reconciles >= objects as f64
                || (f.reconciles > 0.0 && reconciles_since.elapsed() >= Duration::from_secs(10));
            if all_seen && f.in_flight == 0.0 && writes_since.elapsed() >= Duration::from_secs(5) {
                return Ok(f);
            }
            // Into its resyncs before the start-up wave ended: busy all the time (the resync is
            // too short for this many objects); measure from here, and say so.
            if f.reconciles >= 2.0 * objects as f64 {
                eprintln!(
                    "  warning: the operator never went idle after its restart ({} reconciles for {objects} objects, {} in flight): saturated at resync {}",
                    f.reconciles,
                    f.in_flight,
                    humantime::format_duration(self.resync)
                );
                return Ok(OperatorFigures { saturated: true, ..f });
            }
            if !op.is_running() {
                return Err(format!("the operator exited; log tail:\n{}", op.log_tail(40)));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the warm start did not settle within {:?} ({} reconciles for {objects} objects)",
                    self.timeout, f.reconciles
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn status_writes_seen_by_apiserver(&self) -> Result<f64, String> {
        let requests = prom::apiserver_requests(&cluster::apiserver_metrics(&self.kube).await?);
        Ok(requests
            .iter()
            .filter(|((verb, resource), _)| {
                resource.starts_with("atlas") && resource.ends_with("/status") && verb != "GET" && verb != "WATCH"
            })
            .map(|(_, n)| n)
            .sum::<f64>()
            + 0.0)
    }

    /// Creates the workload's objects; the seconds it took.
    async fn create(&self, w: &Workload) -> Result<f64, String> {
        let started = Instant::now();
        cluster::apply_all(&self.kube, &w.users, self.args.writers).await?;
        cluster::apply_all(&self.kube, &w.teams, self.args.writers).await?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Cold convergence with a fresh operator, then a warm restart. The warm operator is
    /// returned still running (resync `--resync`).
    async fn converge_and_restart(&mut self, w: &Workload, label: &str) -> Result<(Phase, Operator), String> {
        let objects = w.objects();
        self.state.reset_counters();
        let started = Instant::now();
        let mut cold = self.start_operator(&w.namespace, COLD_RESYNC, &format!("{label}-cold")).await?;
        let cold_seconds = self.wait_all_ready(&mut cold, &w.namespace, objects, started).await?;
        let at_ready = self.state.counters();
        eprintln!("  {label}: {objects} objects Ready {cold_seconds:.1} s after the operator started");
        let cold_quiet_after = self.wait_quiet(&cold, Duration::from_secs(5), Duration::from_secs(120)).await?;
        let quiet = self.state.counters();
        let cold_rss = procs::memory_kib(cold.pid)?;
        cold.stop();

        let status_before = self.status_writes_seen_by_apiserver().await?;
        let warm_started = Instant::now();
        let resync = humantime::format_duration(self.resync).to_string();
        let mut warm = self.start_operator(&w.namespace, &resync, &format!("{label}-warm")).await?;
        let settled = self.wait_warm_settled(&mut warm, objects).await?;
        let warm_settle_seconds = warm_started.elapsed().as_secs_f64();
        let warm_apiserver_status_writes = self.status_writes_seen_by_apiserver().await? - status_before;
        // A moment at rest before reading memory.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let warm_rss = procs::memory_kib(warm.pid)?;
        eprintln!("  {label}: warm start settled in {warm_settle_seconds:.1} s, VmRSS {}", mib(warm_rss.0));
        let phase = Phase {
            objects,
            cold_seconds,
            cold_calls_at_ready: by_operation(&at_ready),
            cold_calls_quiet: by_operation(&quiet),
            cold_quiet_after,
            digest_challenges: quiet.digest_challenges,
            cold_rss,
            warm_rss,
            warm_status_writes: settled.status_writes,
            warm_status_writes_by_kind: settled.status_writes_by_kind.clone(),
            warm_apiserver_status_writes,
            warm_reconciles: settled.reconciles,
            warm_settle_seconds,
            warm_saturated: settled.saturated,
        };
        Ok((phase, warm))
    }

    /// Create -> PENDING for new AtlasOrgUser, one at a time (a watch on each, opened before
    /// its create): the latencies in ms.
    async fn reactions(&self, w: &Workload) -> Result<Vec<f64>, String> {
        let api = cluster::dynamic_api(&self.kube, &w.namespace, "AtlasOrgUser");
        let org = &w.orgs[0];
        let mut out = Vec::new();
        for i in 0..self.args.reactions {
            let u = workload::USERS_PER_ORG + 1000 + i;
            let manifest = workload::user_manifest(&w.namespace, "reaction", org, u, !self.args.no_last_applied);
            let name = manifest["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut stream = watcher(api.clone(), config).boxed();
            // The (empty) first listing: the watch is open before the create.
            loop {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Some(Ok(watcher::Event::InitDone))) => break,
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(format!("watching {name}: {e}")),
                    Ok(None) | Err(_) => return Err(format!("the watch of {name} did not start")),
                }
            }
            let started = Instant::now();
            api.patch(&name, &PatchParams::apply(cluster::MANAGER).force(), &Patch::Apply(&manifest))
                .await
                .map_err(|e| format!("creating {name}: {e}"))?;
            let deadline = started + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.next()).await {
                    Ok(Some(Ok(watcher::Event::Apply(o)))) => {
                        let value = serde_json::to_value(&o).unwrap_or_default();
                        if value["status"]["membershipStatus"] == "PENDING" {
                            out.push(started.elapsed().as_secs_f64() * 1000.0);
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => eprintln!("  watching {name}: {e} (the watcher retries)"),
                    Ok(None) | Err(_) => {
                        let now = api
                            .get_opt(&name)
                            .await
                            .ok()
                            .flatten()
                            .map(|o| serde_json::to_value(o).unwrap_or_default());
                        return Err(format!(
                            "{name} did not show status.membershipStatus PENDING within 60 s; status: {}",
                            now.map(|v| v["status"].to_string()).unwrap_or_else(|| "(object gone)".into())
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The minimum calls of each operation to converge `w` from empty organizations.
fn cold_minimums(w: &Workload) -> BTreeMap<&'static str, u64> {
    let orgs = w.orgs.len() as u64;
    let teams = w.team_count() as u64;
    BTreeMap::from([
        // Each organization's users listed once (the owner only: one page).
        ("listOrgUsers", orgs),
        ("createOrgUser", w.users.len() as u64),
        // A team named by name is looked up once; one named by id needs no lookup.
        ("getOrgTeamByName", w.teams_by_name() as u64),
        ("getOrgTeam", 0),
        // Each team's members listed once (40 < one page).
        ("listOrgTeamUsers", teams * pages(workload::MEMBERS_PER_TEAM) as u64),
        // `:addUser` takes one user per call; the deprecated bulk `addOrgTeamUsers` a team's
        // whole list.
        ("addOrgTeamUser", w.member_count() as u64),
        ("addOrgTeamUsers", teams),
    ])
}

/// Atlas calls one resync period needs at idle: every organization's listing, each team's
/// member listing.
/// An `--index-refresh-interval` longer than the resync (given with `--operator-arg`) lists
/// each organization only every so many periods.
fn idle_lower_bound(w: &Workload, resync: Duration, index_refresh: Option<Duration>) -> (f64, u64) {
    let org_pages: u64 = w.orgs.iter().map(|o| pages(w.atlas_users(o)) as u64).sum();
    let share = match index_refresh {
        Some(refresh) if refresh > resync => resync.as_secs_f64() / refresh.as_secs_f64(),
        _ => 1.0,
    };
    (org_pages as f64 * share, w.team_count() as u64 * pages(workload::MEMBERS_PER_TEAM) as u64)
}

/// The `--index-refresh-interval` among the `--operator-arg`s, if any.
fn index_refresh_arg(args: &[String]) -> Option<Duration> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = match arg.strip_prefix("--index-refresh-interval") {
            Some("") => iter.next()?.clone(),
            Some(rest) => match rest.strip_prefix('=') {
                Some(v) => v.to_string(),
                None => continue,
            },
            None => continue,
        };
        return humantime::parse_duration(&value).ok();
    }
    None
}

fn fmt_calls(calls: &BTreeMap<String, u64>) -> String {
    calls.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", ")
}

async fn run(args: Args) -> Result<(), String> {
    let load_before = procs::load_average();
    // Stopped when `run` returns, an error or a panic included (after the operator: declared first).
    let envtest = if args.kubeconfig_from_env { None } else { Some(procs::Envtest::up()?) };
    let kubeconfig = match &envtest {
        Some(e) => e.kubeconfig.clone(),
        None => PathBuf::from(std::env::var("KUBECONFIG").map_err(|_| "--kubeconfig-from-env: KUBECONFIG is not set")?),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = cluster::client_from(&kubeconfig).await?;
    cluster::install_crds(&kube).await?;
    cluster::create_namespace(&kube, SYSTEM_NAMESPACE).await?;
    cluster::create_credentials_secret(&kube, SYSTEM_NAMESPACE, SECRET_NAME, PUBLIC_KEY, PRIVATE_KEY).await?;

    let config = SimConfig { request_log_capacity: 0, ..SimConfig::default() }
        .with_api_key(PUBLIC_KEY, PRIVATE_KEY)
        .without_limits();
    let sim = Simulator::start(config).map_err(|e| format!("simulator: {e}"))?;
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ctlbench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let timeout = args.timeout.unwrap_or(Duration::from_secs(600) + Duration::from_millis(200) * args.objects as u32);
    let n = args.objects;
    let suffix = format!("{:04}", rand::random::<u16>() % 10_000);
    let resync = args.resync.unwrap_or_else(|| Duration::from_secs((60 * n as u64 / 2000).max(60)));
    let mut bench = Bench {
        resync,
        kube: kube.clone(),
        kubeconfig: kubeconfig.clone(),
        sim_url: sim.base_url(),
        state: sim.state(),
        log_dir: log_dir.clone(),
        timeout,
        operators_started: 0,
        args,
    };
    let last_applied = !bench.args.no_last_applied;
    eprintln!("operator logs in {}", log_dir.display());

    // 1. The batch: N/10 objects.
    let batch = if bench.args.no_batch || n < 10 {
        None
    } else {
        let ns = format!("ctlbench-batch-{suffix}");
        cluster::create_namespace(&kube, &ns).await?;
        let w = Workload::seed(&bench.state, &ns, "batch", n / 10, last_applied);
        let took = bench.create(&w).await?;
        eprintln!("batch: {} objects created in {took:.1} s", w.objects());
        let (phase, mut warm) = bench.converge_and_restart(&w, "batch").await?;
        warm.stop();
        Some(phase)
    };

    // 2. All N.
    let ns = format!("ctlbench-{suffix}");
    cluster::create_namespace(&kube, &ns).await?;
    let w = Workload::seed(&bench.state, &ns, "full", n, last_applied);
    let took = bench.create(&w).await?;
    eprintln!("full: {} objects created in {took:.1} s", w.objects());
    // The apiserver's own background (no operator running), to set the idle figure against.
    let background_window = Duration::from_secs(20);
    let bg_before = prom::apiserver_requests(&cluster::apiserver_metrics(&kube).await?);
    tokio::time::sleep(background_window).await;
    let bg = prom::diff(&bg_before, &prom::apiserver_requests(&cluster::apiserver_metrics(&kube).await?));
    let (full, mut warm) = bench.converge_and_restart(&w, "full").await?;

    // 3. Idle: `--idle-periods` resync periods, nothing changing. Every object was just
    // reconciled by the warm start, so its resyncs come about 1, 2, ... periods from now (with
    // the operator's jitter): a window starting half a period from now holds each of them once
    // per period, where one starting now would cut the last wave in half.
    let window = resync * bench.args.idle_periods.max(1);
    tokio::time::sleep(resync / 2).await;
    eprintln!("idle window: {} s", window.as_secs());
    bench.state.reset_counters();
    let api_before = prom::apiserver_requests(&cluster::apiserver_metrics(&kube).await?);
    let op_before = operator_figures(&warm).await?;
    let cpu_before = procs::cpu_seconds(warm.pid)?;
    let idle_started = Instant::now();
    tokio::time::sleep(window).await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let cpu_after = procs::cpu_seconds(warm.pid)?;
    let op_after = operator_figures(&warm).await?;
    let api_idle = prom::diff(&api_before, &prom::apiserver_requests(&cluster::apiserver_metrics(&kube).await?));
    let idle_calls = by_operation(&bench.state.counters());
    let idle_rss = procs::memory_kib(warm.pid)?;
    if !warm.is_running() {
        return Err(format!("the operator exited during the idle window; log tail:\n{}", warm.log_tail(40)));
    }

    // 4. Reaction.
    let mut reactions = bench.reactions(&w).await?;
    reactions.sort_by(f64::total_cmp);
    warm.stop();
    let load_after = procs::load_average();

    // The table.
    let periods = idle_seconds / resync.as_secs_f64();
    let idle_total: u64 = idle_calls.values().sum();
    let (org_pages, team_pages) = idle_lower_bound(&w, resync, index_refresh_arg(&bench.args.operator_args));
    let lower = org_pages + team_pages as f64;
    let per_period = idle_total as f64 / periods;
    let idle_list_users = *idle_calls.get("listOrgUsers").unwrap_or(&0) as f64 / periods;
    let idle_list_members = *idle_calls.get("listOrgTeamUsers").unwrap_or(&0) as f64 / periods;
    let idle_reconciles = op_after.reconciles - op_before.reconciles;
    let idle_cpu = cpu_after - cpu_before;
    let idle_status_writes = op_after.status_writes - op_before.status_writes;
    let idle_apiserver_status: f64 = api_idle
        .iter()
        .filter(|((verb, r), _)| r.starts_with("atlas") && r.ends_with("/status") && verb != "GET" && verb != "WATCH")
        .map(|(_, n)| n)
        .sum::<f64>()
        + 0.0;
    let non_watch: Vec<(&(String, String), &f64)> = {
        let mut v: Vec<_> = api_idle.iter().filter(|((verb, _), _)| verb != "WATCH").collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v
    };
    let non_watch_total: f64 = non_watch.iter().map(|(_, n)| **n).sum();
    // `+ 0.0`: an empty f64 sum is -0.0.
    let watches: f64 = api_idle.iter().filter(|((verb, _), _)| verb == "WATCH").map(|(_, n)| n).sum::<f64>() + 0.0;
    let bg_total: f64 = bg.iter().filter(|((verb, _), _)| verb != "WATCH").map(|(_, n)| n).sum();
    let describe = |rows: &[(&(String, String), &f64)], secs: f64| -> String {
        let shown: Vec<String> =
            rows.iter().take(6).map(|((verb, r), n)| format!("{verb} {r} {:.2}/s", **n / secs)).collect();
        if shown.is_empty() { "none".into() } else { shown.join(", ") }
    };
    let bg_rows: Vec<(&(String, String), &f64)> = {
        let mut v: Vec<_> = bg.iter().filter(|((verb, _), _)| verb != "WATCH").collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v
    };

    println!();
    println!("## Controller benchmark (`cargo bench --bench controller -- --objects {n}`)");
    println!();
    println!(
        "Machine: {} CPUs, load average {load_before} before, {load_after} after (1/5/15 min). Timings (convergence, \
         reaction, CPU) are noisy on a shared machine; counts are not.",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0)
    );
    println!(
        "Workload: {} AtlasOrgUser over {} orgs, {} AtlasTeamMembership of {} ({} by name, the rest by id; members half by \
         username, half by orgUserRef); last-applied annotation: {}; simulator without rate limits or latency; operator \
         resync {} (cold operator: {COLD_RESYNC}), index refresh: operator default unless --operator-arg sets it.",
        w.users.len(),
        w.orgs.len(),
        w.team_count(),
        workload::MEMBERS_PER_TEAM,
        w.teams_by_name(),
        if last_applied { "yes" } else { "no" },
        humantime::format_duration(resync),
    );
    println!();
    println!("| figure | measured | bound / detail |");
    println!("|---|---|---|");
    println!(
        "| controller RSS, {n} converged, warm start (settled + 5 s) | VmRSS {} (VmHWM {}) | after {:.0} s idle: VmRSS {} (VmHWM {}) |",
        mib(full.warm_rss.0),
        mib(full.warm_rss.1),
        idle_seconds,
        mib(idle_rss.0),
        mib(idle_rss.1)
    );
    println!(
        "| controller RSS after a cold convergence (quiet) | VmRSS {} (VmHWM {}) | |",
        mib(full.cold_rss.0),
        mib(full.cold_rss.1)
    );
    match &batch {
        Some(b) => {
            let slope = (full.warm_rss.0 as f64 - b.warm_rss.0 as f64) * 1024.0 / (full.objects - b.objects) as f64;
            println!(
                "| bytes per object (warm-start VmRSS slope, {} -> {} objects) | {:.1} KiB | VmRSS {} at {} objects, {} at {} |",
                b.objects,
                full.objects,
                slope / 1024.0,
                mib(b.warm_rss.0),
                b.objects,
                mib(full.warm_rss.0),
                full.objects
            );
        }
        None => println!("| bytes per object | not measured (--no-batch) | |"),
    }
    println!(
        "| cold convergence: operator start -> all {} objects Ready | {:.1} s | quiet {:.1} s later |",
        full.objects, full.cold_seconds, full.cold_quiet_after
    );
    let minimums = cold_minimums(&w);
    let mut ops: Vec<String> = full.cold_calls_quiet.keys().cloned().collect();
    for op in minimums.keys() {
        if !ops.iter().any(|o| o == op) && (*op != "addOrgTeamUsers" && *op != "getOrgTeam") {
            ops.push((*op).to_string());
        }
    }
    let mut total_min = 0u64;
    for op in &ops {
        let at_ready = full.cold_calls_at_ready.get(op).copied().unwrap_or(0);
        let quiet = full.cold_calls_quiet.get(op).copied().unwrap_or(0);
        let min = minimums.get(op.as_str()).copied().unwrap_or(0);
        if op != "addOrgTeamUsers" || quiet > 0 {
            total_min += min;
        }
        let ratio = if min > 0 { format!("{:.2}x", quiet as f64 / min as f64) } else { "n/a (0 needed)".into() };
        println!("| cold `{op}` calls (at all-Ready / until quiet) | {at_ready} / {quiet} | minimum {min}: {ratio} |");
    }
    // addOrgTeamUser and addOrgTeamUsers are alternatives: the minimum counts the one used.
    if full.cold_calls_quiet.get("addOrgTeamUsers").copied().unwrap_or(0) > 0 {
        total_min -= minimums["addOrgTeamUser"].min(total_min);
    }
    let cold_total: u64 = full.cold_calls_quiet.values().sum();
    println!(
        "| cold Atlas calls, all operations (until quiet) | {cold_total} | minimum {total_min}: {:.2}x; {} digest challenges (401) included |",
        cold_total as f64 / total_min.max(1) as f64,
        full.digest_challenges
    );
    println!(
        "| Atlas calls per resync period at idle ({:.2} periods) | {per_period:.1} | lower bound {lower:.1} ({org_pages:.1} org listing pages + {team_pages} team member listings): {:.2}x; listOrgUsers {idle_list_users:.1}/period, listOrgTeamUsers {idle_list_members:.1}/period; all: {} |",
        periods,
        per_period / lower,
        fmt_calls(&idle_calls)
    );
    println!(
        "| API-server requests at idle (WATCH excluded) | {:.2}/s ({:.0} in {idle_seconds:.0} s) | {}; apiserver background without the operator {:.2}/s ({}) |",
        non_watch_total / idle_seconds,
        non_watch_total,
        describe(&non_watch, idle_seconds),
        bg_total / background_window.as_secs_f64(),
        describe(&bg_rows, background_window.as_secs_f64()),
    );
    println!(
        "| WATCH requests at idle | {watches:.0} | counted when a watch ends: watches the operator re-established |"
    );
    let per_reconcile =
        if idle_reconciles > 0.0 { format!("{:.3} ms", idle_cpu * 1000.0 / idle_reconciles) } else { "n/a".into() };
    println!(
        "| CPU per no-op reconcile (utime+stime / reconciles at idle) | {per_reconcile} | {idle_cpu:.2} CPU-s for {idle_reconciles:.0} reconciles ({:.2} per object and period); {:.2} CPU-s a minute at idle |",
        idle_reconciles / full.objects as f64 / periods,
        idle_cpu * 60.0 / idle_seconds
    );
    println!(
        "| status writes at idle | {idle_status_writes:.0} (operator metric) | {idle_apiserver_status:.0} status writes seen by the apiserver |"
    );
    println!(
        "| status writes on a warm restart of the converged cluster | {:.0} (operator metric: {}) | {:.0} seen by the apiserver; {:.0} reconciles, {} {:.1} s |",
        full.warm_status_writes,
        full.warm_status_writes_by_kind,
        full.warm_apiserver_status_writes,
        full.warm_reconciles,
        if full.warm_saturated { "NEVER IDLE (saturated), gave up waiting after" } else { "settled in" },
        full.warm_settle_seconds
    );
    println!(
        "| reaction: create -> status PENDING, {} new AtlasOrgUser one at a time | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms | converged {n} cluster, warm operator |",
        reactions.len(),
        percentile(&reactions, 50.0),
        percentile(&reactions, 99.0),
        reactions.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(b) = &batch {
        println!();
        println!(
            "Batch ({} objects): cold convergence {:.1} s, cold calls {}; warm start {:.0} status writes, VmRSS {} (VmHWM {}).",
            b.objects,
            b.cold_seconds,
            fmt_calls(&b.cold_calls_quiet),
            b.warm_status_writes,
            mib(b.warm_rss.0),
            mib(b.warm_rss.1)
        );
    }
    println!("Operator logs: {}", log_dir.display());
    drop(sim);
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // only say how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("controller benchmark: run it with `cargo bench --bench controller [-- --objects N]`");
        return;
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        procs::install_interrupt_cleanup();
        run(args).await
    });
    // The runtime's tasks (watches, the simulator) end before the exit code is decided.
    drop(runtime);
    if let Err(e) = result {
        eprintln!("controller benchmark failed: {e}");
        std::process::exit(1);
    }
}
