//! Crash-safety for real (#16): the bot killed at random points and after
//! every distinct write, with and without its state database, as real
//! processes, and two bots on separate databases at once, over a batch that
//! covers every workflow. Every trial must end in the reference end state
//! (Zendesk, Google, every issue's state, labels, ticks and the bot's comments
//! by kind, e-mails, merge requests, ops notices) with nothing done twice.
//!
//! A trial: a fresh sandbox, the batch filed, the bot running as a tokio
//! task (or the real binary) behind a gate that numbers its requests and
//! writes (`access_bot::sandbox::crash`). At a trigger the gate holds the
//! bot's traffic (before the request, or after the server performed it and
//! before the bot learns the answer), the harness aborts the task (SIGKILLs
//! the process), releases the gate, optionally deletes the database, and
//! starts a new bot. People act between cycles by a script of "when the issue
//! shows X, P does Y", so the script works however many cycles the bot needs.
//!
//! Replay: `CRASH_SEED=<seed> CRASH_ONLY=<trial> cargo test --test crash`
//! (the failure message prints both). `CRASH_PARALLEL` sets how many trials
//! run at once (default 6).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use access_bot::bot::Bot;
use access_bot::marker::Marker;
use access_bot::sandbox::crash::{EndState, Gate, People, Proxies, Trigger};
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{PROJECT, Ports, SUPPORT_TEAM, Sandbox};
use access_bot::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OnceCell, Semaphore};

const MANAGER: &str = "AR-Approval::Manager Approved";
const OWNER: &str = "Zendesk::System Owner Approved";
const VERIFIED: &str = "US-Citizenship::Verified";
const NOT_VERIFIED: &str = "US-Citizenship::Not Verified";
const GLOBAL_OKTA: &str = "okta-zendeskglobal-users@gitlab.com";
const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";
const DEFAULT_SEED: u64 = 16;

/// Random-kill trials per run, and kills in each.
const RANDOM_TRIALS: u64 = 20;
const KILLS_PER_TRIAL: usize = 6;
/// Real-process trials, and SIGKILLs in each.
const PROCESS_TRIALS: u64 = 4;
const PROCESS_KILLS: usize = 3;
/// Cycles without a write or a person's action that make a phase quiet.
const QUIET_CYCLES: u64 = 3;
/// Pause between two cycles of an in-process bot.
const CYCLE_PAUSE: Duration = Duration::from_millis(15);
/// A trial that has not ended by then did not converge.
const TRIAL_LIMIT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ the batch

/// Issues of the batch, in the order they are filed (so iids are the same in
/// every sandbox).
const NAMES: [&str; 12] = [
    "role-based entitlement",
    "special request",
    "light agent, Zendesk Global",
    "light agent, Zendesk US Federal",
    "light agent, US Federal, citizenship denied",
    "team tag",
    "team tag without an account",
    "role change",
    "offboarding",
    "security: self-approval",
    "time-bound grant",
    "offboarding, merge request closed unmerged",
];

#[derive(Debug, Clone)]
struct Batch {
    iid: BTreeMap<&'static str, u64>,
}

impl Batch {
    fn of(&self, name: &str) -> u64 {
        self.iid.get(name).copied().unwrap_or(0)
    }
    fn names(&self) -> BTreeMap<u64, String> {
        self.iid.iter().map(|(n, i)| (*i, n.to_string())).collect()
    }
}

fn account(
    name: &str,
    email: &str,
    role: &str,
    custom: Option<&str>,
    groups: &[&str],
    tickets: u32,
    login_days_ago: i64,
) -> ZendeskAccount {
    ZendeskAccount {
        instance: "global".into(),
        name: name.into(),
        email: email.into(),
        role: role.into(),
        custom_role: custom.map(str::to_string),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: tickets,
        suspended: false,
        last_login_days_ago: Some(login_days_ago),
    }
}

fn offboarding_body(name: &str, email: &str, user: &str) -> String {
    format!(
        "## Team member details\n\n{TABLE}| {name} | {email} | @{user} | @mlee |\n\n## Department tasks: Customer Support\n\n- [ ]  @zd-admin-1 @zd-admin-2: Remove the team member from Zendesk Global\n- [ ]  @it-ops-1: Remove the team member from Google Group okta-zendeskglobal-users\n- [ ]  @it-ops-1: Remove the team member from Slack\n- [ ]  @zd-admin-1: Delete any Support Team files attached to the user (if applicable)\n"
    )
}

/// The world of the demo plus a second leaver (whose merge request a
/// maintainer closes unmerged), a person for the time-bound grant and an idle
/// seat; then every issue, filed by its author.
async fn prepare(sb: &Sandbox, people: &People) -> anyhow::Result<Batch> {
    {
        let mut w = sb.gitlab.lock();
        w.add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
        w.add_user("dgone", "Drew Gone", "drew.gone@gitlab.com");
        w.add_user("tbound", "Terry Bound", "terry.bound@gitlab.com");
        w.put_file(
            SUPPORT_TEAM,
            "main",
            "data/agents/dgone.yaml",
            "name: Drew Gone\n",
        );
    }
    {
        let mut g = sb.google.lock();
        g.users.insert("casey.quinn@gitlab.com".into());
        g.add_person("drew.gone@gitlab.com", Some("mlee@gitlab.com"));
        g.add_person("terry.bound@gitlab.com", Some("mlee@gitlab.com"));
        g.add_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");
        g.add_member(GLOBAL_OKTA, "drew.gone@gitlab.com");
    }
    sb.seed_zendesk(&account(
        "Alex Chen",
        "alex.chen@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER", "Support EMEA"],
        0,
        1,
    ))?;
    let mut casey = account(
        "Casey Quinn",
        "casey.quinn@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER"],
        7,
        3,
    );
    casey.tags = vec!["partner_support_agent".into(), "emea_shift".into()];
    casey.user_fields = [("region".to_string(), "EMEA".to_string())]
        .into_iter()
        .collect();
    sb.seed_zendesk(&casey)?;
    sb.seed_zendesk(&account(
        "Drew Gone",
        "drew.gone@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support EMEA"],
        2,
        2,
    ))?;
    sb.seed_zendesk(&account(
        "Dana Idle",
        "dana.idle@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &[],
        0,
        200,
    ))?;

    let demo = access_bot::demo::bodies();
    let expires = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    let mut iid = BTreeMap::new();
    for name in NAMES {
        let (author, title, labels, body): (&str, String, Vec<&str>, String) = match name {
            "time-bound grant" => (
                "tbound",
                "Terry Bound: temporary Zendesk Global access".into(),
                vec!["support::to do"],
                format!(
                    "{TABLE}| Terry Bound | terry.bound@gitlab.com | @tbound | @mlee |\n\nExpires: {expires}\n\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n- [ ] Access revoked on expiry\n"
                ),
            ),
            "offboarding, merge request closed unmerged" => (
                "gitlab-employment-bot",
                "Offboarding: Drew Gone".into(),
                vec!["offboarding"],
                offboarding_body("Drew Gone", "drew.gone@gitlab.com", "dgone"),
            ),
            _ => {
                let (_, author, title, labels, body) =
                    demo.iter()
                        .find(|b| b.0 == name)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("no demo issue {name}"))?;
                (author, title.to_string(), labels, body)
            }
        };
        let n = people.file_issue(author, &title, &labels, &body).await?;
        iid.insert(name, n);
    }
    Ok(Batch { iid })
}

// ------------------------------------------------------------------ the people

/// The phases of a trial: the batch, then time moved to the expiry
/// reminder, to the expiry, then the monthly seat review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Batch,
    Remind,
    Expire,
    Audit,
    Done,
}

impl Phase {
    /// The bot's clock, in days ahead of today.
    fn offset_days(self) -> i64 {
        match self {
            Phase::Batch => 0,
            Phase::Remind => 8,
            _ => 10,
        }
    }
    fn next(self) -> Phase {
        match self {
            Phase::Batch => Phase::Remind,
            Phase::Remind => Phase::Expire,
            Phase::Expire => Phase::Audit,
            _ => Phase::Done,
        }
    }
}

#[derive(Debug, Clone)]
enum Act {
    Label {
        who: &'static str,
        iid: u64,
        label: &'static str,
        /// Present but given before the latest plan: removed and given again.
        renew: bool,
    },
    Merge(u64),
    CloseMr(u64),
    TickSeat(u64),
}

fn user_id(sb: &Sandbox, name: &str) -> u64 {
    sb.gitlab
        .lock()
        .user_by_name(name)
        .map(|u| u.id)
        .unwrap_or(0)
}

/// An issue the bot has not finished: open, neither done nor refused.
fn unfinished(sb: &Sandbox, iid: u64) -> bool {
    let labels = sb.labels(iid);
    let st = &sb.config.bot.state_labels;
    sb.state(iid) == "opened" && !labels.contains(&st.done) && !labels.contains(&st.refused)
}

/// "When the issue shows the bot's plan, `who` applies `label`": once per
/// plan (a newer plan than `who`'s label means the label is applied again),
/// and only a little after the plan, so that the two never share a timestamp.
fn approval(sb: &Sandbox, iid: u64, who: &'static str, label: &'static str) -> Option<Act> {
    if !unfinished(sb, iid) {
        return None;
    }
    let bot = user_id(sb, &sb.config.gitlab.bot_username);
    let person = user_id(sb, who);
    let w = sb.gitlab.lock();
    let issue = w.issue(PROJECT, iid)?;
    let plan = issue
        .notes
        .iter()
        .filter(|n| n.author == bot && !n.system)
        .filter(|n| Marker::peek(&n.body).is_some_and(|m| m.kind == "plan"))
        .max_by_key(|n| n.id)?;
    if chrono::Utc::now() - plan.created_at < chrono::Duration::milliseconds(5) {
        return None;
    }
    let given = issue
        .label_events
        .iter()
        .filter(|e| e.user == person && e.add && e.label == label)
        .map(|e| e.id)
        .max();
    let present = issue.labels.iter().any(|l| l == label);
    if present && given.is_some_and(|g| g > plan.id) {
        return None;
    }
    Some(Act::Label {
        who,
        iid,
        label,
        renew: present,
    })
}

/// The People team answers the e-mail it received about `email`.
fn mailed_about(sb: &Sandbox, email: &str) -> bool {
    sb.smtp
        .messages()
        .iter()
        .any(|m| m.to.iter().any(|t| t == "people-connect@gitlab.com") && m.body().contains(email))
}

fn open_mr(sb: &Sandbox, branch: &str) -> Option<u64> {
    sb.gitlab.lock().project(SUPPORT_TEAM).and_then(|p| {
        p.merge_requests
            .iter()
            .find(|m| m.source_branch == branch && m.state == "opened")
            .map(|m| m.iid)
    })
}

fn seat_review(sb: &Sandbox) -> Option<u64> {
    let label = sb.config.seat_audit.as_ref()?.label.clone();
    let w = sb.gitlab.lock();
    w.project(PROJECT)?
        .issues
        .iter()
        .find(|i| i.labels.contains(&label) && i.state == "opened")
        .map(|i| i.iid)
}

/// What the people do now, given what the issues show.
fn what_people_do(sb: &Sandbox, b: &Batch, phase: Phase) -> Vec<Act> {
    let mut acts = Vec::new();
    let mut approve = |name: &str, who: &'static str, label: &'static str| {
        if let Some(a) = approval(sb, b.of(name), who, label) {
            acts.push(a);
        }
    };
    approve("special request", "mlee", MANAGER);
    approve("special request", "lyle", OWNER);
    approve("light agent, Zendesk US Federal", "mlee", MANAGER);
    approve(
        "light agent, US Federal, citizenship denied",
        "mlee",
        MANAGER,
    );
    approve("team tag without an account", "mlee", MANAGER);
    approve("role change", "kpatel", MANAGER);
    approve("role change", "jason", OWNER);
    approve("security: self-approval", "mallory", MANAGER);
    approve("security: self-approval", "mallory", OWNER);
    approve("time-bound grant", "mlee", MANAGER);
    approve("time-bound grant", "jason", OWNER);
    // The team tag needs Jane's light agent first: her manager approves
    // once the Global request is closed.
    if sb.state(b.of("light agent, Zendesk Global")) == "closed" {
        approve("team tag", "mlee", MANAGER);
    }
    // The People team answers its e-mail with the verification label.
    if mailed_about(sb, "bo.li@gitlab.com") {
        approve(
            "light agent, Zendesk US Federal",
            "people-connect-1",
            VERIFIED,
        );
    }
    if mailed_about(sb, "robin.kim@gitlab.com") {
        approve(
            "light agent, US Federal, citizenship denied",
            "people-connect-1",
            NOT_VERIFIED,
        );
    }
    // A maintainer merges Casey's merge request, and closes Drew's unmerged.
    if let Some(mr) = open_mr(sb, "access-bot/offboard-cquinn") {
        acts.push(Act::Merge(mr));
    }
    if let Some(mr) = open_mr(sb, "access-bot/offboard-dgone") {
        acts.push(Act::CloseMr(mr));
    }
    // A reviewer ticks Dana's line of the seat review.
    if phase >= Phase::Audit
        && let Some(iid) = seat_review(sb)
        && sb
            .description(iid)
            .lines()
            .any(|l| l.contains("(dana.idle@gitlab.com)") && l.contains("- [ ]"))
    {
        acts.push(Act::TickSeat(iid));
    }
    acts
}

async fn perform(sb: &Sandbox, people: &People, act: &Act) -> anyhow::Result<()> {
    match act {
        Act::Label {
            who,
            iid,
            label,
            renew,
        } => {
            if *renew {
                people.remove_label(who, *iid, label).await?;
            }
            people.add_label(who, *iid, label).await
        }
        Act::Merge(mr) => {
            sb.gitlab.lock().merge(SUPPORT_TEAM, *mr);
            Ok(())
        }
        Act::CloseMr(mr) => {
            sb.gitlab.lock().close_merge_request(SUPPORT_TEAM, *mr);
            Ok(())
        }
        Act::TickSeat(iid) => {
            let ticked = sb
                .description(*iid)
                .lines()
                .map(|l| {
                    if l.contains("(dana.idle@gitlab.com)") {
                        l.replacen("- [ ]", "- [x]", 1)
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            people.edit_description("lyle", *iid, &ticked).await
        }
    }
}

/// The month's seat review starts: everyone but Dana logged in today.
fn before_the_audit(sb: &Sandbox) {
    for z in sb.zendesk.values() {
        for u in z.server.lock().users.values_mut() {
            if u.email != "dana.idle@gitlab.com" {
                u.last_login_at = Some(chrono::Utc::now());
            }
        }
    }
}

// ------------------------------------------------------------------ the bots

/// What in-process bots share with the harness.
#[derive(Default)]
struct Shared {
    cycles: AtomicU64,
    stop: AtomicBool,
    audit_pending: AtomicBool,
    /// Held (shared) by the bots during a cycle, (exclusively) by the people
    /// while they act: people act between cycles, as in `demo.rs`.
    turn: tokio::sync::RwLock<()>,
}

/// One bot: connect (with a fresh store on `db`), then cycle until told to stop.
async fn bot_loop(
    cfg: access_bot::config::Config,
    secrets: access_bot::secret::Secrets,
    db: PathBuf,
    offset_days: i64,
    shared: Arc<Shared>,
) {
    let mut bot = loop {
        let store = match Store::open(&db) {
            Ok(s) => Arc::new(s),
            Err(_) => {
                tokio::time::sleep(CYCLE_PAUSE).await;
                continue;
            }
        };
        match Bot::connect_with(cfg.clone(), &secrets, store, Duration::from_millis(5)).await {
            Ok(b) => break b,
            Err(_) => tokio::time::sleep(CYCLE_PAUSE).await,
        }
    };
    bot.clock_offset = chrono::Duration::days(offset_days);
    while !shared.stop.load(Ordering::SeqCst) {
        {
            let _turn = shared.turn.read().await;
            if shared.audit_pending.load(Ordering::SeqCst) && bot.audit_seats(None).await.is_ok() {
                shared.audit_pending.store(false, Ordering::SeqCst);
            }
            bot.cycle().await;
            shared.cycles.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(CYCLE_PAUSE).await;
    }
}

enum Running {
    None,
    Tasks(Vec<tokio::task::JoinHandle<()>>),
    Process(std::process::Child),
}

/// How a trial runs its bots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    InProcess,
    /// The real binary for the batch phase (then in-process bots, which can
    /// move the clock, for the expiry and the seat review).
    RealProcess,
    /// Two in-process bots on separate databases, at once.
    TwoBots,
}

struct Bots {
    mode: Mode,
    cfg_for: Vec<access_bot::config::Config>,
    secrets: access_bot::secret::Secrets,
    dbs: Vec<PathBuf>,
    toml: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    shared: Arc<Shared>,
    running: Running,
    gate: Gate,
}

impl Bots {
    fn process_phase(&self, phase: Phase) -> bool {
        self.mode == Mode::RealProcess && phase == Phase::Batch
    }

    /// Cycles completed so far (polls, for a process).
    fn cycles(&self) -> u64 {
        match self.running {
            Running::Process(_) => self.gate.polls(),
            _ => self.shared.cycles.load(Ordering::SeqCst),
        }
    }

    fn quiet_cycles(&self) -> u64 {
        QUIET_CYCLES * self.dbs.len() as u64
    }

    fn start(&mut self, phase: Phase) -> anyhow::Result<()> {
        self.shared.stop.store(false, Ordering::SeqCst);
        if self.process_phase(phase) {
            let log = std::fs::File::create(&self.log)?;
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_access-bot"))
                .arg("--config")
                .arg(&self.toml)
                .arg("run")
                .env_clear()
                .envs(self.env.iter().cloned())
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?;
            self.running = Running::Process(child);
        } else {
            let tasks = self
                .dbs
                .iter()
                .zip(&self.cfg_for)
                .map(|(db, cfg)| {
                    tokio::spawn(bot_loop(
                        cfg.clone(),
                        self.secrets.clone(),
                        db.clone(),
                        phase.offset_days(),
                        self.shared.clone(),
                    ))
                })
                .collect();
            self.running = Running::Tasks(tasks);
        }
        Ok(())
    }

    /// SIGKILL: abort the tasks (their memory is gone), or kill the process.
    async fn kill(&mut self) {
        match std::mem::replace(&mut self.running, Running::None) {
            Running::Tasks(ts) => {
                for t in &ts {
                    t.abort();
                }
                for t in ts {
                    let _ = t.await;
                }
            }
            Running::Process(mut c) => {
                // SIGKILL.
                let _ = c.kill();
                let _ = tokio::task::spawn_blocking(move || c.wait()).await;
            }
            Running::None => {}
        }
    }

    /// Ask the bots to stop after their cycle (SIGTERM for a process).
    fn ask_to_stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Running::Process(c) = &self.running {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
    }

    fn stopped(&mut self) -> bool {
        match &mut self.running {
            Running::Tasks(ts) => ts.iter().all(|t| t.is_finished()),
            Running::Process(c) => matches!(c.try_wait(), Ok(Some(_))),
            Running::None => true,
        }
    }

    fn delete_databases(&self) {
        for db in &self.dbs {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
        }
    }
}

// ------------------------------------------------------------------ trials

#[derive(Debug, Clone)]
enum Kills {
    None,
    /// Random triggers, this many.
    Random(usize),
    /// After the n-th write.
    AfterWrite(u64),
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    mode: Mode,
    kills: Kills,
    delete_db: bool,
    seed: u64,
}

#[derive(Debug, Clone, Default)]
struct Outcome {
    name: String,
    seed: u64,
    kills: Vec<String>,
    end: EndState,
    /// Not converged: why.
    stuck: Option<String>,
    writes: u64,
    requests: u64,
    elapsed: Duration,
    diff: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.stuck.is_none() && self.diff.is_empty() && self.end.duplicates.is_empty()
    }

    fn duplicates(&self) -> usize {
        self.end.duplicates.len()
    }

    /// What went wrong, a line each (without the kill points).
    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.stuck.iter().cloned().collect();
        out.extend(self.diff.iter().map(|d| format!("diverged: {d}")));
        out.extend(
            self.end
                .duplicates
                .iter()
                .map(|(class, what)| format!("duplicate {class}: {what}")),
        );
        out
    }
}

/// The reference run's figures the random triggers are spread over.
#[derive(Debug, Clone, Default)]
struct Scale {
    requests: u64,
    writes: u64,
    millis: u64,
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn only() -> Option<String> {
    std::env::var("CRASH_ONLY").ok().filter(|s| !s.is_empty())
}

fn selected(name: &str) -> bool {
    only().is_none_or(|o| o == name)
}

fn parallel() -> usize {
    std::env::var("CRASH_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

static SLOTS: OnceCell<Arc<Semaphore>> = OnceCell::const_new();

async fn slots() -> Arc<Semaphore> {
    SLOTS
        .get_or_init(|| async { Arc::new(Semaphore::new(parallel())) })
        .await
        .clone()
}

fn trial_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("crash-{}", std::process::id()))
        .join(name)
}

/// A random kill point: a request (held before it reaches the server, or
/// after), a write, or a moment; spread so that `kills` of them fall within
/// about one run of the batch.
fn random_trigger(
    rng: &mut StdRng,
    gate: &Gate,
    scale: &Scale,
    kills: usize,
) -> (Option<Trigger>, Option<(Instant, u64)>) {
    let spread = (kills as u64 + 1).max(1);
    let r = rng.random_range(1..=(scale.requests / spread).max(2));
    let w = rng.random_range(1..=(scale.writes / spread).max(2));
    match rng.random_range(0..4u8) {
        0 => (Some(Trigger::BeforeRequest(gate.requests() + r)), None),
        1 => (Some(Trigger::AfterRequest(gate.requests() + r)), None),
        2 => (Some(Trigger::AfterWrite(gate.writes() + w)), None),
        _ => {
            let ms = rng.random_range(1..=(scale.millis / spread).max(2));
            (None, Some((Instant::now() + Duration::from_millis(ms), ms)))
        }
    }
}

/// Run one trial to its end and read the end state.
async fn trial(spec: Spec, scale: Scale, reference: Option<EndState>) -> Outcome {
    let _slot = slots().await.acquire_owned().await;
    let started = Instant::now();
    let mut out = Outcome {
        name: spec.name.clone(),
        seed: spec.seed,
        ..Default::default()
    };
    let r = run(&spec, &scale, &mut out).await;
    if let Err(e) = r {
        out.stuck = Some(format!("harness error: {e:#}"));
    }
    out.elapsed = started.elapsed();
    if let Some(reference) = reference {
        out.diff = out.end.diff(&reference);
    }
    if out.ok() {
        let _ = std::fs::remove_dir_all(trial_dir(&spec.name));
    }
    out
}

async fn run(spec: &Spec, scale: &Scale, out: &mut Outcome) -> anyhow::Result<()> {
    let sb = Sandbox::start(Ports::default()).await?;
    let people = People::new(&sb)?;
    let batch = prepare(&sb, &people).await?;
    let proxies: Proxies = sb.crash_proxies().await?;
    let gate = proxies.gate.clone();
    let dir = trial_dir(&spec.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let n = if spec.mode == Mode::TwoBots { 2 } else { 1 };
    let dbs: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("state-{i}.db"))).collect();
    let toml = dir.join("bot.toml");
    std::fs::write(
        &toml,
        proxies.config_toml(&sb, &dbs[0].display().to_string(), "1s"),
    )?;
    let mut bots = Bots {
        mode: spec.mode,
        cfg_for: dbs.iter().map(|d| proxies.config(&sb, d)).collect(),
        secrets: proxies.secrets(&sb),
        dbs,
        toml,
        env: proxies.env(&sb),
        log: dir.join("bot.log"),
        shared: Arc::new(Shared::default()),
        running: Running::None,
        gate: gate.clone(),
    };
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let planned = match spec.kills {
        Kills::None => 0,
        Kills::Random(k) => k,
        Kills::AfterWrite(_) => 1,
    };
    let arm = |rng: &mut StdRng, kills: usize, phase: Phase| -> Option<(Instant, u64)> {
        if kills >= planned {
            gate.arm(None);
            return None;
        }
        match spec.kills {
            Kills::AfterWrite(n) => {
                gate.arm(Some(Trigger::AfterWrite(n)));
                None
            }
            Kills::Random(k) => {
                if spec.mode == Mode::RealProcess && phase != Phase::Batch {
                    gate.arm(None);
                    return None;
                }
                let (t, d) = random_trigger(rng, &gate, scale, k);
                gate.arm(t);
                d
            }
            Kills::None => None,
        }
    };

    let mut phase = Phase::Batch;
    bots.start(phase)?;
    let mut deadline = arm(&mut rng, 0, phase);
    let t0 = Instant::now();
    let mut seen_writes = gate.writes();
    let mut last_change = bots.cycles();
    let mut stopping: Option<Phase> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if t0.elapsed() > TRIAL_LIMIT {
            out.stuck = Some(format!(
                "did not converge within {TRIAL_LIMIT:?} (phase {phase:?}, {} kills)",
                out.kills.len()
            ));
            break;
        }
        // A kill: the trigger fired, or the random moment came.
        let fired = gate.fired();
        if fired.is_some() || deadline.is_some_and(|(d, _)| Instant::now() >= d) {
            bots.kill().await;
            gate.release();
            if spec.delete_db {
                bots.delete_databases();
            }
            let at = fired.unwrap_or_else(|| {
                format!(
                    "at a moment, {} ms after the start",
                    deadline.map(|(_, ms)| ms).unwrap_or(0)
                )
            });
            out.kills.push(format!("{phase:?}: {at}"));
            if let Some(p) = stopping.take() {
                phase = p;
            }
            bots.start(phase)?;
            deadline = arm(&mut rng, out.kills.len(), phase);
            last_change = bots.cycles();
            continue;
        }
        if let Some(next) = stopping {
            if bots.stopped() {
                bots.kill().await;
                stopping = None;
                phase = next;
                if phase == Phase::Done {
                    break;
                }
                if phase == Phase::Audit {
                    before_the_audit(&sb);
                    bots.shared.audit_pending.store(true, Ordering::SeqCst);
                }
                // The real binary cannot move its clock: the later phases run
                // in process, without kills.
                if spec.mode == Mode::RealProcess {
                    gate.arm(None);
                    deadline = None;
                }
                bots.start(phase)?;
                last_change = bots.cycles();
            }
            continue;
        }
        // The people act on what the issues show, between the bots' cycles
        // (a process: when it has been idle for a while).
        let acts = {
            let shared = bots.shared.clone();
            let turn = shared.turn.try_write();
            let between = match bots.running {
                Running::Process(_) => gate.idle_for() >= Duration::from_millis(250),
                _ => turn.is_ok(),
            };
            let acts = if between {
                what_people_do(&sb, &batch, phase)
            } else {
                Vec::new()
            };
            for a in &acts {
                perform(&sb, &people, a).await?;
            }
            acts
        };
        let writes = gate.writes();
        if !acts.is_empty() || writes != seen_writes {
            seen_writes = writes;
            last_change = bots.cycles();
            continue;
        }
        let quiet = bots.cycles() >= last_change + bots.quiet_cycles()
            && !bots.shared.audit_pending.load(Ordering::SeqCst);
        if quiet {
            stopping = Some(phase.next());
            bots.ask_to_stop();
        }
    }
    bots.kill().await;
    gate.arm(None);
    gate.release();
    out.writes = gate.writes();
    out.requests = gate.requests();
    if std::env::var("CRASH_VERBOSE").is_ok() {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for (_, w) in gate.write_log() {
            *m.entry(w).or_insert(0) += 1;
        }
        for (w, n) in m {
            eprintln!("{}: writes: {n} {w}", spec.name);
        }
    }
    out.end = EndState::read(&sb, &batch.names());
    drop(proxies);
    Ok(())
}

// ------------------------------------------------------------------ the reference

#[derive(Debug, Clone)]
struct Reference {
    end: EndState,
    scale: Scale,
}

static REFERENCE: OnceCell<Reference> = OnceCell::const_new();

/// The batch with no fault, once per test binary; it must itself be right.
async fn reference() -> Reference {
    REFERENCE
        .get_or_init(|| async {
            let t0 = Instant::now();
            let spec = Spec {
                name: "reference".into(),
                mode: Mode::InProcess,
                kills: Kills::None,
                delete_db: false,
                seed: seed(),
            };
            let out = trial(spec, Scale::default(), None).await;
            assert!(out.ok(), "the reference run failed: {:#?}", out.problems());
            let f = &out.end.facts;
            let fact = |k: &str| f.get(k).cloned().unwrap_or_default();
            for (what, ok) in [
                (
                    "Casey offboarded: end-user, suspended, tickets to the manager",
                    fact("zendesk global casey.quinn@gitlab.com")
                        .starts_with("end-user, suspended; groups []; tags []"),
                ),
                (
                    "the time-bound grant revoked on expiry: Terry back to end-user",
                    fact("zendesk global terry.bound@gitlab.com").starts_with("end-user;"),
                ),
                (
                    "the seat review reclaimed Dana's idle seat",
                    fact("zendesk global dana.idle@gitlab.com").starts_with("light agent;"),
                ),
                (
                    "two People-team e-mails",
                    fact("e-mails").contains("US Citizenship Verification Request\" #4")
                        && fact("e-mails").contains("US Citizenship Verification Request\" #5"),
                ),
                (
                    "Casey's merge request merged, Drew's closed",
                    fact("merge requests")
                        == "access-bot/offboard-cquinn -> main merged, access-bot/offboard-dgone -> main closed",
                ),
                (
                    "the security refusal told to ops",
                    fact("slack").contains("security reason"),
                ),
            ] {
                assert!(
                    ok,
                    "reference run: {what}: no\n{}",
                    f.iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            if std::env::var("CRASH_VERBOSE").is_ok() {
                for (k, v) in f {
                    eprintln!("reference: {k}: {v}");
                }
            }
            eprintln!(
                "crash: reference run: {} issues, {} writes, {} requests, {:.1}s",
                f.keys().filter(|k| k.ends_with(": state")).count(),
                out.writes,
                out.requests,
                t0.elapsed().as_secs_f64()
            );
            Reference {
                end: out.end.clone(),
                scale: Scale {
                    requests: out.requests,
                    writes: out.writes,
                    millis: out.elapsed.as_millis() as u64,
                },
            }
        })
        .await
        .clone()
}

// ------------------------------------------------------------------ reporting

/// Run the trials concurrently; print the section's summary line; fail with
/// every problem grouped by what diverged, with the trials that show it.
async fn section(title: &str, specs: Vec<Spec>, reference: &Reference) -> Vec<Outcome> {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for s in specs.into_iter().filter(|s| selected(&s.name)) {
        set.spawn(trial(
            s,
            reference.scale.clone(),
            Some(reference.end.clone()),
        ));
    }
    let mut outs = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(o) => outs.push(o),
            Err(e) => panic!("{title}: a trial panicked: {e}"),
        }
    }
    outs.sort_by(|a, b| a.name.cmp(&b.name));
    let kills: usize = outs.iter().map(|o| o.kills.len()).sum();
    let converged = outs
        .iter()
        .filter(|o| o.stuck.is_none() && o.diff.is_empty())
        .count();
    let dups: usize = outs.iter().map(Outcome::duplicates).sum();
    let raw: usize = outs
        .iter()
        .flat_map(|o| o.end.duplicates.iter())
        .filter(|(c, _)| c == "e-mail (raw)")
        .count();
    eprintln!(
        "crash: {title}: {} trials, {kills} kills, {} converged to the reference, {} with duplicates ({dups} duplicates, {raw} of them raw e-mail re-sends), {:.1}s",
        outs.len(),
        converged,
        outs.iter().filter(|o| o.duplicates() > 0).count(),
        t0.elapsed().as_secs_f64()
    );
    outs
}

fn report(title: &str, outs: &[Outcome]) -> Option<String> {
    let failed: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    if failed.is_empty() {
        return None;
    }
    // Group by problem, so that one bug is one paragraph.
    let mut by_problem: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for o in &failed {
        for p in o.problems() {
            by_problem.entry(p).or_default().push(o);
        }
    }
    let mut s = format!(
        "{title}: {} of {} trials failed (seed {}). Replay one with CRASH_SEED={} CRASH_ONLY=<trial> cargo test --test crash\n",
        failed.len(),
        outs.len(),
        seed(),
        seed()
    );
    for (problem, trials) in &by_problem {
        s.push_str(&format!("\n- {problem}\n  in {} trial(s):", trials.len()));
        for o in trials.iter().take(4) {
            s.push_str(&format!(
                "\n    {} (trial seed {}) kills: {}",
                o.name,
                o.seed,
                if o.kills.is_empty() {
                    "none".to_string()
                } else {
                    o.kills.join("; ")
                }
            ));
        }
        if trials.len() > 4 {
            s.push_str(&format!("\n    ... and {} more", trials.len() - 4));
        }
    }
    Some(s)
}

fn assert_none(reports: Vec<Option<String>>) {
    let text: Vec<String> = reports.into_iter().flatten().collect();
    assert!(text.is_empty(), "\n{}", text.join("\n\n"));
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_with_and_without_the_database_converge_without_duplicates() {
    let reference = reference().await;
    let base = seed();
    let specs = (1..=RANDOM_TRIALS)
        .map(|t| Spec {
            name: format!("random-{t}"),
            mode: Mode::InProcess,
            kills: Kills::Random(KILLS_PER_TRIAL),
            delete_db: t % 2 == 0,
            seed: base.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t),
        })
        .collect();
    let outs = section(
        &format!("random kills (seed {base}; even trials delete the database at each kill)"),
        specs,
        &reference,
    )
    .await;
    assert_none(vec![report("random kills", &outs)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_every_distinct_write_converges_with_and_without_the_database() {
    let reference = reference().await;
    let w = reference.scale.writes;
    let specs = (1..=w)
        .flat_map(|n| {
            [false, true].map(|delete| Spec {
                name: format!("write-{n}-{}", if delete { "deleted" } else { "kept" }),
                mode: Mode::InProcess,
                kills: Kills::AfterWrite(n),
                delete_db: delete,
                seed: n,
            })
        })
        .collect();
    let outs = section(
        &format!("a kill after each of the {w} writes, database kept and deleted"),
        specs,
        &reference,
    )
    .await;
    let covered = outs.iter().filter(|o| !o.kills.is_empty()).count();
    eprintln!(
        "crash: kill points covered: {covered} of {} (write, database) pairs",
        outs.len()
    );
    assert_none(vec![report("kill after every write", &outs)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_killed_with_sigkill_converge() {
    let reference = reference().await;
    let base = seed();
    let specs = (1..=PROCESS_TRIALS)
        .map(|t| Spec {
            name: format!("process-{t}"),
            mode: Mode::RealProcess,
            kills: Kills::Random(PROCESS_KILLS),
            delete_db: t % 2 == 0,
            seed: base.wrapping_mul(31).wrapping_add(1000 + t),
        })
        .collect();
    let outs = section(
        "real processes, SIGKILL (even trials delete the database)",
        specs,
        &reference,
    )
    .await;
    assert_none(vec![report("real processes", &outs)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_on_separate_databases_converge_without_duplicates() {
    let reference = reference().await;
    let specs = vec![Spec {
        name: "two-bots".into(),
        mode: Mode::TwoBots,
        kills: Kills::None,
        delete_db: false,
        seed: seed(),
    }];
    let outs = section("two bots on separate databases", specs, &reference).await;
    assert_none(vec![report("two bots", &outs)]);
}
