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
//! A trial goes through phases, each ended by a few quiet cycles (no write,
//! nobody acting): the batch; the clock 8 days ahead (the time-bound grant's
//! reminder); 10 days ahead (its expiry); the month's seat review. The real
//! binary runs the batch phase only (it cannot move its clock); in-process
//! bots on its database run the rest.
//!
//! What each trial must end with is compared as text (`EndState`): ids,
//! ports and times left out, issues by name. The reasons a trial failed come
//! with it: which issue or account differs and how, which comment (kind and
//! marker key), e-mail (Message-ID; identical bytes separately), merge
//! request or notice was duplicated, which issues were skipped as busy and
//! which leases were still in the database at the end.
//!
//! Replay: `CRASH_SEED=<seed> CRASH_ONLY=<trial> cargo test --test crash`
//! (the failure message prints both; `CRASH_ONLY` also takes a prefix such
//! as `random` or `write-offboarding`). `CRASH_PARALLEL` sets how many trials
//! run at once (default 12), `CRASH_VERBOSE=1` prints every trial and the
//! reference's facts.
//!
//! The budget (about two minutes in debug on two cores) decides two things:
//! the kill after every write runs on the batch in four parts (each part's
//! reference must end its issues as the full batch does), and each write is
//! tried with the database kept or deleted in turn, the seed deciding which
//! (`CRASH_BOTH=1`: both for every write, about twice as long).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use access_bot::bot::Bot;
use access_bot::marker::Marker;
use access_bot::sandbox::crash::{Difference, EndState, Gate, People, Proxies, Trigger};
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
/// A trial that has not ended by then did not converge. A trial alone takes
/// 10 to 25 s; twelve at once on a busy two-core machine take several times
/// that, and a stuck one never ends, so the bound is generous.
const TRIAL_LIMIT: Duration = Duration::from_secs(240);

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

/// A batch: which of the issues are filed, and whether time moves on to
/// the expiry and the seat review runs.
#[derive(Debug)]
struct BatchDef {
    name: &'static str,
    issues: &'static [&'static str],
    expiry: bool,
    audit: bool,
}

/// Every workflow: the random kills, the real processes and the two bots.
const FULL: BatchDef = BatchDef {
    name: "full",
    issues: &NAMES,
    expiry: true,
    audit: true,
};

/// The full batch in four parts, for a kill after every write (a trial per
/// write and database variant: the full batch each time would not fit the
/// time budget). Together they are the full batch.
const PARTS: [BatchDef; 4] = [
    BatchDef {
        name: "approvals",
        issues: &[
            "role-based entitlement",
            "special request",
            "team tag without an account",
            "role change",
            "security: self-approval",
        ],
        expiry: false,
        audit: false,
    },
    BatchDef {
        name: "light-agents",
        issues: &[
            "light agent, Zendesk Global",
            "light agent, Zendesk US Federal",
            "light agent, US Federal, citizenship denied",
            "team tag",
        ],
        expiry: false,
        audit: false,
    },
    BatchDef {
        name: "offboarding",
        issues: &["offboarding", "offboarding, merge request closed unmerged"],
        expiry: false,
        audit: false,
    },
    BatchDef {
        name: "time-bound",
        issues: &["time-bound grant"],
        expiry: true,
        audit: true,
    },
];

#[derive(Debug, Clone)]
struct Batch {
    iid: BTreeMap<&'static str, u64>,
    /// Issues filed later, by the people, when their time comes.
    deferred: Vec<&'static str>,
    bodies: BTreeMap<&'static str, Filing>,
}

/// Who files an issue, and what.
#[derive(Debug, Clone)]
struct Filing {
    author: &'static str,
    title: String,
    labels: Vec<&'static str>,
    body: String,
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
async fn prepare(sb: &Sandbox, people: &People, def: &BatchDef) -> anyhow::Result<Batch> {
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
    let mut bodies = BTreeMap::new();
    for name in NAMES.into_iter().filter(|n| def.issues.contains(n)) {
        let filing = match name {
            "time-bound grant" => Filing {
                author: "tbound",
                title: "Terry Bound: temporary Zendesk Global access".into(),
                labels: vec!["support::to do"],
                body: format!(
                    "{TABLE}| Terry Bound | terry.bound@gitlab.com | @tbound | @mlee |\n\nExpires: {expires}\n\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n- [ ] Access revoked on expiry\n"
                ),
            },
            "offboarding, merge request closed unmerged" => Filing {
                author: "gitlab-employment-bot",
                title: "Offboarding: Drew Gone".into(),
                labels: vec!["offboarding"],
                body: offboarding_body("Drew Gone", "drew.gone@gitlab.com", "dgone"),
            },
            _ => {
                let (_, author, title, labels, body) =
                    demo.iter()
                        .find(|b| b.0 == name)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("no demo issue {name}"))?;
                Filing {
                    author,
                    title: title.to_string(),
                    labels,
                    body,
                }
            }
        };
        bodies.insert(name, filing);
    }
    let mut batch = Batch {
        iid: BTreeMap::new(),
        deferred: Vec::new(),
        bodies,
    };
    for name in NAMES.into_iter().filter(|n| def.issues.contains(n)) {
        if name == "team tag" {
            batch.deferred.push(name);
        } else {
            batch.file(people, name).await?;
        }
    }
    Ok(batch)
}

impl Batch {
    async fn file(&mut self, people: &People, name: &'static str) -> anyhow::Result<()> {
        let f = self
            .bodies
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no issue {name} in the batch"))?;
        let iid = people
            .file_issue(f.author, &f.title, &f.labels, &f.body)
            .await?;
        self.iid.insert(name, iid);
        Ok(())
    }
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
    fn next(self, def: &BatchDef) -> Phase {
        match self {
            Phase::Batch if def.expiry => Phase::Remind,
            Phase::Remind => Phase::Expire,
            Phase::Batch | Phase::Expire if def.audit => Phase::Audit,
            _ => Phase::Done,
        }
    }
}

#[derive(Debug, Clone)]
enum Act {
    /// A deferred issue of the batch is filed.
    File(&'static str),
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

/// The People team answers the e-mail it received about `email`, or the
/// bot's note on the issue that mentions them (GitLab tells them).
fn asked_about(sb: &Sandbox, iid: u64, email: &str) -> bool {
    sb.smtp
        .messages()
        .iter()
        .any(|m| m.to.iter().any(|t| t == "people-connect@gitlab.com") && m.body().contains(email))
        || sb.bot_comments(iid).iter().any(|c| {
            c.body
                .match_indices("@people-connect-1")
                .any(|(i, _)| !c.body[..i].ends_with('`'))
        })
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
/// An issue's approvals, given together (in one turn between two cycles)
/// once the bot's plan is on the issue and `ready` holds.
fn approve(
    acts: &mut Vec<Act>,
    sb: &Sandbox,
    iid: u64,
    ready: bool,
    approvals: &[(&'static str, &'static str)],
) {
    if ready {
        acts.extend(
            approvals
                .iter()
                .filter_map(|(who, label)| approval(sb, iid, who, label)),
        );
    }
}

fn what_people_do(sb: &Sandbox, b: &Batch, phase: Phase) -> Vec<Act> {
    let mut acts = Vec::new();
    let a = &mut acts;
    approve(
        a,
        sb,
        b.of("special request"),
        true,
        &[("mlee", MANAGER), ("lyle", OWNER)],
    );
    approve(
        a,
        sb,
        b.of("team tag without an account"),
        true,
        &[("mlee", MANAGER)],
    );
    approve(
        a,
        sb,
        b.of("role change"),
        true,
        &[("kpatel", MANAGER), ("jason", OWNER)],
    );
    approve(
        a,
        sb,
        b.of("security: self-approval"),
        true,
        &[("mallory", MANAGER), ("mallory", OWNER)],
    );
    approve(
        a,
        sb,
        b.of("time-bound grant"),
        true,
        &[("mlee", MANAGER), ("jason", OWNER)],
    );
    approve(a, sb, b.of("team tag"), true, &[("mlee", MANAGER)]);
    // The People team answers its e-mail with the verification label, and
    // the manager approves at the same time.
    approve(
        a,
        sb,
        b.of("light agent, Zendesk US Federal"),
        asked_about(
            sb,
            b.of("light agent, Zendesk US Federal"),
            "bo.li@gitlab.com",
        ),
        &[("mlee", MANAGER), ("people-connect-1", VERIFIED)],
    );
    approve(
        a,
        sb,
        b.of("light agent, US Federal, citizenship denied"),
        asked_about(
            sb,
            b.of("light agent, US Federal, citizenship denied"),
            "robin.kim@gitlab.com",
        ),
        &[("mlee", MANAGER), ("people-connect-1", NOT_VERIFIED)],
    );
    // Jane asks for the team tag once her light-agent request is closed
    // (filed then, so that the bot's first plan does not depend on which of
    // the two it reads first).
    if b.deferred.contains(&"team tag") && sb.state(b.of("light agent, Zendesk Global")) == "closed"
    {
        acts.push(Act::File("team tag"));
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

async fn perform(
    sb: &Sandbox,
    people: &People,
    batch: &mut Batch,
    act: &Act,
) -> anyhow::Result<()> {
    match act {
        Act::File(name) => {
            batch.file(people, name).await?;
            batch.deferred.retain(|n| n != name);
            Ok(())
        }
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
    /// The bots' clock, in days ahead of today.
    offset_days: std::sync::atomic::AtomicI64,
    /// Issues reported busy, and how often.
    busy: std::sync::Mutex<BTreeMap<u64, usize>>,
    /// Failed attempts to open the store or connect, since the start.
    connect_failures: AtomicU64,
}

/// One bot: connect (with a fresh store on `db`), then cycle until told to stop.
async fn bot_loop(
    cfg: access_bot::config::Config,
    secrets: access_bot::secret::Secrets,
    db: PathBuf,
    shared: Arc<Shared>,
) {
    let bot = loop {
        let store = match Store::open(&db) {
            Ok(s) => Arc::new(s),
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(CYCLE_PAUSE).await;
                continue;
            }
        };
        match Bot::connect_with(cfg.clone(), &secrets, store, Duration::from_millis(5)).await {
            Ok(b) => break b,
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(CYCLE_PAUSE).await
            }
        }
    };
    while !shared.stop.load(Ordering::SeqCst) {
        {
            let _turn = shared.turn.read().await;
            bot.clock.set_offset(chrono::Duration::days(
                shared.offset_days.load(Ordering::SeqCst),
            ));
            if shared.audit_pending.load(Ordering::SeqCst) && bot.audit_seats(None).await.is_ok() {
                shared.audit_pending.store(false, Ordering::SeqCst);
            }
            // Each turn, every event once (poll, stale scan, expiries,
            // merge-request follow-ups), as a daemon does over time.
            let report = bot.once().await;
            let busy: Vec<u64> = report
                .outcomes
                .iter()
                .filter(|(_, _, o)| *o == access_bot::bot::Outcome::Busy)
                .map(|(_, iid, _)| *iid)
                .collect();
            if !busy.is_empty()
                && let Ok(mut m) = shared.busy.lock()
            {
                for iid in busy {
                    *m.entry(iid).or_insert(0) += 1;
                }
            }
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

impl Drop for Bots {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Tasks(ts) => ts.iter().for_each(|t| t.abort()),
            Running::Process(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Running::None => {}
        }
    }
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
        self.shared
            .offset_days
            .store(phase.offset_days(), Ordering::SeqCst);
        if self.process_phase(phase) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?;
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

    /// The end of a trial: the bots finish their cycle (within 10 s).
    async fn stop(&mut self) {
        self.ask_to_stop();
        let t0 = Instant::now();
        while !self.stopped() && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.kill().await;
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
    batch: &'static BatchDef,
    mode: Mode,
    kills: Kills,
    delete_db: bool,
    seed: u64,
}

#[derive(Debug, Clone, Default)]
struct Outcome {
    name: String,
    seed: u64,
    /// "kept" or "deleted at each kill".
    database: &'static str,
    kills: Vec<String>,
    end: EndState,
    /// Not converged: why.
    stuck: Option<String>,
    writes: u64,
    requests: u64,
    elapsed: Duration,
    diff: Vec<Difference>,
    /// Issues the bot skipped as busy (another runner's lease), and how often.
    busy: Vec<(String, usize)>,
    /// Leases still in a state database at the end: (issue, owner).
    leases: Vec<(String, String)>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.stuck.is_none() && self.diff.is_empty() && self.end.duplicates.is_empty()
    }

    fn duplicates(&self) -> usize {
        self.end.duplicates.len()
    }

    /// What went wrong: (signature, the same for the same bug in every
    /// trial; the details), an issue's facts on one line.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .stuck
            .iter()
            .map(|s| ("did not converge".to_string(), s.clone()))
            .collect();
        let mut by_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &self.diff {
            let (subject, field) = ISSUE_FACTS
                .iter()
                .find_map(|f| {
                    d.what
                        .strip_suffix(&format!(": {f}"))
                        .map(|s| (s.to_string(), format!("{f} ")))
                })
                .unwrap_or_else(|| (d.what.clone(), String::new()));
            by_subject
                .entry(subject)
                .or_default()
                .push(format!("{field}{:?} (expected {:?})", d.got, d.expected));
        }
        for (subject, details) in by_subject {
            out.push((
                format!("diverged: {subject}"),
                format!("diverged: {subject}: {}", details.join("; ")),
            ));
        }
        for (class, what) in &self.end.duplicates {
            let sig = what
                .split_whitespace()
                .map(|w| {
                    if w.trim_start_matches('x')
                        .chars()
                        .all(|c| c.is_ascii_digit())
                    {
                        "N"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            out.push((
                format!("duplicate {class}: {sig}"),
                format!("duplicate {class}: {what}"),
            ));
        }
        for (name, owner) in &self.leases {
            out.push((
                format!("lease: {name}"),
                format!(
                    "lease: {name} is still leased at the end, by {owner} (a bot that was killed)"
                ),
            ));
        }
        for (name, n) in &self.busy {
            out.push((
                format!("busy: {name}"),
                format!("busy: {name} was skipped as busy (held by another runner) in {n} cycles"),
            ));
        }
        out
    }
}

/// The facts of an issue in an end state.
const ISSUE_FACTS: [&str; 4] = ["state", "labels", "ticked", "bot comments"];

/// The reference run's figures the random triggers are spread over.
#[derive(Debug, Clone, Default)]
struct Scale {
    requests: u64,
    writes: u64,
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

/// `CRASH_ONLY`: one trial (`random-7`), or every trial whose name starts
/// with it and a dash (`random`, `write-offboarding`).
fn selected(name: &str) -> bool {
    only().is_none_or(|o| o == name || name.starts_with(&format!("{o}-")))
}

fn parallel() -> usize {
    std::env::var("CRASH_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

/// Where the trials keep their state databases, configuration and logs
/// (kept for the failed ones; emptied when a run starts).
fn trials_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash")
}

fn trial_dir(name: &str) -> PathBuf {
    trials_dir().join(name)
}

/// A random kill point close to now: one of the next few requests (held
/// before it reaches the server, or after its answer), the next write, or a
/// moment within 40 ms. `writes`: whether the next write may be it (not when
/// the bots are idle).
fn random_trigger(
    rng: &mut StdRng,
    gate: &Gate,
    scale: &Scale,
    writes: bool,
) -> (Option<Trigger>, Option<(Instant, String)>) {
    let per_write = (scale.requests / scale.writes.max(1)).max(2);
    let r = rng.random_range(1..=per_write);
    match rng.random_range(0..if writes { 4u8 } else { 3 }) {
        0 => (Some(Trigger::BeforeRequest(gate.requests() + r)), None),
        1 => (Some(Trigger::AfterRequest(gate.requests() + r)), None),
        2 => {
            let ms = rng.random_range(1..=40u64);
            let what = format!("at a moment, {ms} ms after write #{}", gate.writes());
            (
                None,
                Some((Instant::now() + Duration::from_millis(ms), what)),
            )
        }
        _ => (Some(Trigger::AfterWrite(gate.writes() + 1)), None),
    }
}

/// Run one trial to its end and read the end state.
async fn trial(spec: Spec, scale: Scale, reference: Option<EndState>) -> Outcome {
    let started = Instant::now();
    let mut out = Outcome {
        name: spec.name.clone(),
        seed: spec.seed,
        database: if spec.delete_db {
            "deleted at each kill"
        } else {
            "kept"
        },
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
    let mut batch = prepare(&sb, &people, spec.batch).await?;
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
        cfg_for: dbs
            .iter()
            .map(|d| {
                let mut cfg = proxies.config(&sb, d);
                // The clock moves ten days for the expiries, and a request's
                // age is read on it: requests left waiting are not to be
                // reminded in this test, whose batches must end alike.
                cfg.lifecycle.stale_reminder_after = access_bot::config::Dur::parse("60d").unwrap();
                cfg.lifecycle.stale_close_after = access_bot::config::Dur::parse("90d").unwrap();
                cfg
            })
            .collect(),
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
    // Random kills fall after writes drawn over the whole reference run (so
    // every phase gets its share); a trial that goes quiet before its kills
    // are spent is killed while idle.
    let (planned, mut targets) = match spec.kills {
        Kills::None => (0, Vec::new()),
        Kills::AfterWrite(_) => (1, Vec::new()),
        Kills::Random(k) => {
            let mut t: Vec<u64> = (0..k)
                .map(|_| rng.random_range(1..=scale.writes.max(1)))
                .collect();
            t.sort_unstable();
            t.reverse();
            (k, t)
        }
    };
    let mut phase = Phase::Batch;
    bots.start(phase)?;
    let t0 = Instant::now();
    let mut seen_writes = gate.writes();
    let mut last_change = bots.cycles();
    let mut stopping: Option<Phase> = None;
    // A kill is armed: the gate's trigger, or a moment.
    let mut armed = false;
    // ... on a write, which idle bots never make.
    let mut on_write = false;
    let mut deadline: Option<(Instant, String)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if t0.elapsed() > TRIAL_LIMIT {
            // Enough to tell a bot that stopped cycling (hung, or never
            // connected again) from one that never went quiet.
            out.stuck = Some(format!(
                "did not converge within {TRIAL_LIMIT:?} (phase {phase:?}, {} kills; {} cycles since the last write or action, {} writes in all, a kill armed: {armed}, {} failed connects)",
                out.kills.len(),
                bots.cycles().saturating_sub(last_change),
                gate.writes(),
                bots.shared.connect_failures.load(Ordering::SeqCst),
            ));
            break;
        }
        let quiet = bots.cycles() >= last_change + bots.quiet_cycles()
            && !bots.shared.audit_pending.load(Ordering::SeqCst);
        let may_kill = out.kills.len() < planned
            && stopping.is_none()
            && !(spec.mode == Mode::RealProcess && phase != Phase::Batch);
        // Arm the next kill when its write has come, or when the bots are idle.
        if may_kill && (!armed || (quiet && on_write)) {
            match spec.kills {
                Kills::AfterWrite(n) if !armed => {
                    gate.arm(Some(Trigger::AfterWrite(n)));
                    armed = true;
                }
                Kills::Random(_) => {
                    let due = targets.last().is_some_and(|t| gate.writes() + 1 >= *t);
                    if due || quiet {
                        let (t, d) = random_trigger(&mut rng, &gate, scale, !quiet);
                        on_write = matches!(t, Some(Trigger::AfterWrite(_)));
                        gate.arm(t);
                        deadline = d;
                        armed = true;
                    }
                }
                _ => {}
            }
        }
        // A kill: the trigger fired, or the moment came.
        let fired = gate.fired();
        let moment = deadline.as_ref().is_some_and(|(d, _)| Instant::now() >= *d);
        if fired.is_some() || moment {
            bots.kill().await;
            gate.arm(None);
            gate.release();
            if spec.delete_db {
                bots.delete_databases();
            }
            let at = fired
                .or_else(|| deadline.take().map(|(_, what)| what))
                .unwrap_or_default();
            out.kills.push(format!("{phase:?}: {at}"));
            targets.pop();
            armed = false;
            deadline = None;
            if let Some(p) = stopping.take() {
                phase = p;
            }
            bots.start(phase)?;
            last_change = bots.cycles();
            continue;
        }
        // The real binary ends the batch phase with SIGTERM; the later
        // phases run in process (they move the clock), without kills.
        if let Some(next) = stopping {
            if bots.stopped() {
                bots.kill().await;
                stopping = None;
                phase = next;
                gate.arm(None);
                armed = false;
                deadline = None;
                if phase == Phase::Done {
                    break;
                }
                if phase == Phase::Audit {
                    before_the_audit(&sb);
                    bots.shared.audit_pending.store(true, Ordering::SeqCst);
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
                perform(&sb, &people, &mut batch, a).await?;
            }
            acts
        };
        let writes = gate.writes();
        if !acts.is_empty() || writes != seen_writes {
            seen_writes = writes;
            last_change = bots.cycles();
            continue;
        }
        // Quiet: the next phase (unless random kills are still to come).
        if !quiet || (may_kill && matches!(spec.kills, Kills::Random(_))) {
            continue;
        }
        let next = phase.next(spec.batch);
        if bots.process_phase(phase) {
            gate.arm(None);
            armed = false;
            deadline = None;
            stopping = Some(next);
            bots.ask_to_stop();
            continue;
        }
        // In process: the next phase starts between two cycles, the bots
        // keep running (and can be killed) with the clock moved.
        let shared = bots.shared.clone();
        let Ok(_turn) = shared.turn.try_write() else {
            continue;
        };
        phase = next;
        if phase == Phase::Done {
            break;
        }
        shared
            .offset_days
            .store(phase.offset_days(), Ordering::SeqCst);
        if phase == Phase::Audit {
            before_the_audit(&sb);
            shared.audit_pending.store(true, Ordering::SeqCst);
        }
        last_change = bots.cycles();
    }
    gate.arm(None);
    gate.release();
    bots.stop().await;
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
    // Issues skipped as busy: from the cycles' reports, and the processes' logs.
    let mut busy = bots
        .shared
        .busy
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    if let Ok(log) = std::fs::read_to_string(&bots.log) {
        for l in log
            .lines()
            .filter(|l| l.contains("another runner is working on this issue"))
        {
            if let Some(iid) = l
                .split("iid=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse::<u64>().ok())
            {
                *busy.entry(iid).or_insert(0) += 1;
            }
        }
    }
    let mut names = batch.names();
    {
        let w = sb.gitlab.lock();
        for i in w
            .project(PROJECT)
            .map(|p| p.issues.as_slice())
            .unwrap_or(&[])
        {
            names.entry(i.iid).or_insert_with(|| i.title.clone());
        }
    }
    // Leases left in the state databases (every bot has stopped by now).
    for db in &bots.dbs {
        let Ok(c) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            continue;
        };
        let rows: Vec<(u64, String)> = c
            .prepare("SELECT iid, owner FROM lease ORDER BY iid")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
                    .collect()
            })
            .unwrap_or_default();
        for (iid, owner) in rows {
            let name = names
                .get(&iid)
                .cloned()
                .unwrap_or_else(|| format!("#{iid}"));
            out.leases.push((name, owner));
        }
    }
    out.busy = busy
        .into_iter()
        .map(|(iid, n)| {
            (
                names
                    .get(&iid)
                    .cloned()
                    .unwrap_or_else(|| format!("#{iid}")),
                n,
            )
        })
        .collect();
    drop(proxies);
    Ok(())
}

// ------------------------------------------------------------------ the reference

#[derive(Debug, Clone)]
struct Reference {
    end: EndState,
    scale: Scale,
}

static REFERENCES: [OnceCell<Reference>; 1 + PARTS.len()] =
    [const { OnceCell::const_new() }; 1 + PARTS.len()];

/// The issues' facts (`special request: labels`).
fn by_name(end: &EndState) -> BTreeMap<String, String> {
    end.facts
        .iter()
        .filter(|(k, _)| {
            [": state", ": labels", ": ticked", ": bot comments"]
                .iter()
                .any(|f| k.ends_with(f))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A batch with no fault, once per test binary; it must itself be right:
/// the full batch reaches every workflow's end, and each part ends each of
/// its issues as the full batch does.
async fn reference(def: &'static BatchDef) -> Reference {
    let i = PARTS
        .iter()
        .position(|p| std::ptr::eq(p, def))
        .map(|i| i + 1)
        .unwrap_or(0);
    if i > 0 {
        Box::pin(reference(&FULL)).await;
    }
    REFERENCES[i]
        .get_or_init(|| async {
            let t0 = Instant::now();
            let spec = Spec {
                name: format!("reference-{}", def.name),
                batch: def,
                mode: Mode::InProcess,
                kills: Kills::None,
                delete_db: false,
                seed: seed(),
            };
            let out = trial(spec, Scale::default(), None).await;
            assert!(
                out.ok(),
                "the reference run of the {} batch failed: {:#?}",
                def.name,
                out.problems()
            );
            let f = &out.end.facts;
            if std::env::var("CRASH_VERBOSE").is_ok() {
                for (k, v) in f {
                    eprintln!("reference {}: {k}: {v}", def.name);
                }
            }
            if i == 0 {
                check_full_reference(f, &out.end.at_most_once);
            } else if let Some(full) = REFERENCES[0].get() {
                let full = by_name(&full.end);
                for (k, v) in by_name(&out.end) {
                    assert_eq!(
                        full.get(&k),
                        Some(&v),
                        "the {} batch ends {k} otherwise than the full batch",
                        def.name
                    );
                }
            }
            eprintln!(
                "crash: reference run, {} batch: {} issues, {} writes, {} requests, {:.1}s",
                def.name,
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
                },
            }
        })
        .await
        .clone()
}

/// The full batch without faults reaches every workflow's expected end.
fn check_full_reference(f: &BTreeMap<String, String>, once: &BTreeMap<String, BTreeSet<String>>) {
    let none = BTreeSet::new();
    let slack = once.get("slack").unwrap_or(&none);
    let mails = once.get("e-mails").unwrap_or(&none);
    let fact = |k: &str| f.get(k).cloned().unwrap_or_default();
    for (what, ok) in [
        (
            "Casey offboarded: end-user, suspended, tickets to the manager",
            fact("zendesk global casey.quinn@gitlab.com")
                .starts_with("end-user, suspended; groups []; tags []")
                && fact("zendesk global mlee@gitlab.com").ends_with("open tickets 9"),
        ),
        (
            "the time-bound grant revoked on expiry: Terry back to end-user",
            fact("zendesk global terry.bound@gitlab.com").starts_with("end-user;")
                && fact("time-bound grant: bot comments").contains("expired"),
        ),
        (
            "the seat review reclaimed Dana's idle seat",
            fact("zendesk global dana.idle@gitlab.com").starts_with("light agent;"),
        ),
        (
            "two People-team e-mails",
            mails.iter().any(|m| {
                m.contains("US Citizenship Verification Request\" [light agent, Zendesk US Federal]")
            }) && mails.iter().any(|m| {
                m.contains(
                    "US Citizenship Verification Request\" [light agent, US Federal, citizenship denied]",
                )
            }),
        ),
        (
            "Casey's merge request merged, Drew's closed",
            fact("merge requests")
                == "access-bot/offboard-cquinn -> main merged, access-bot/offboard-dgone -> main closed",
        ),
        (
            "the security refusal told to ops",
            slack.iter().any(|n| n.contains("security reason")),
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
}

// ------------------------------------------------------------------ reporting

/// The four sections of the crash test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Random,
    Processes,
    TwoBots,
    Writes,
}

struct SectionResult {
    title: String,
    outcomes: Vec<Outcome>,
    /// The summary lines (figures for BENCHMARKS.md).
    summary: Vec<String>,
}

static RESULTS: OnceCell<BTreeMap<Section, SectionResult>> = OnceCell::const_new();

/// Every trial of every section, run once per test binary by whichever test
/// comes first, in one queue (the long trials first, so that the short ones
/// fill the end): the time budget holds only if the two cores never wait.
async fn results() -> &'static BTreeMap<Section, SectionResult> {
    RESULTS.get_or_init(run_all).await
}

async fn run_all() -> BTreeMap<Section, SectionResult> {
    let t0 = Instant::now();
    let _ = std::fs::remove_dir_all(trials_dir());
    let full = reference(&FULL).await;
    let mut parts = Vec::new();
    {
        let mut set = tokio::task::JoinSet::new();
        for (i, part) in PARTS.iter().enumerate() {
            set.spawn(async move { (i, reference(part).await) });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => parts.push(r),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        parts.sort_by_key(|(i, _)| *i);
    }
    let base = seed();
    let mut specs: Vec<(Section, Spec, Reference)> = Vec::new();
    for t in 1..=RANDOM_TRIALS {
        let spec = Spec {
            name: format!("random-{t}"),
            batch: &FULL,
            mode: Mode::InProcess,
            kills: Kills::Random(KILLS_PER_TRIAL),
            delete_db: t.is_multiple_of(2),
            seed: base.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t),
        };
        specs.push((Section::Random, spec, full.clone()));
    }
    for t in 1..=PROCESS_TRIALS {
        let spec = Spec {
            name: format!("process-{t}"),
            batch: &FULL,
            mode: Mode::RealProcess,
            kills: Kills::Random(PROCESS_KILLS),
            delete_db: t.is_multiple_of(2),
            seed: base.wrapping_mul(31).wrapping_add(1000 + t),
        };
        specs.push((Section::Processes, spec, full.clone()));
    }
    specs.push((
        Section::TwoBots,
        Spec {
            name: "two-bots".into(),
            batch: &FULL,
            mode: Mode::TwoBots,
            kills: Kills::None,
            delete_db: false,
            seed: base,
        },
        full.clone(),
    ));
    // Every write of every part, the database kept or deleted in turn (the
    // seed decides which n gets which); CRASH_BOTH=1: both for every n.
    let both = std::env::var("CRASH_BOTH").is_ok_and(|v| v == "1");
    for (part, (_, reference)) in PARTS.iter().zip(&parts) {
        for n in 1..=reference.scale.writes {
            let variants: &[bool] = if both {
                &[false, true]
            } else if n.wrapping_add(base).is_multiple_of(2) {
                &[true]
            } else {
                &[false]
            };
            for &delete in variants {
                let spec = Spec {
                    name: format!(
                        "write-{}-{n:03}-{}",
                        part.name,
                        if delete { "deleted" } else { "kept" }
                    ),
                    batch: part,
                    mode: Mode::InProcess,
                    kills: Kills::AfterWrite(n),
                    delete_db: delete,
                    seed: n,
                };
                specs.push((Section::Writes, spec, reference.clone()));
            }
        }
    }
    // Trials start in this order: each takes its slot before it is spawned
    // (a real process takes none: it mostly waits for its next poll).
    let mut set = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(parallel()));
    for (section, spec, r) in specs.into_iter().filter(|(_, s, _)| selected(&s.name)) {
        let scale = full.scale.clone();
        let slot = match spec.mode {
            Mode::RealProcess => None,
            _ => slots.clone().acquire_owned().await.ok(),
        };
        set.spawn(async move {
            let o = trial(spec, scale, Some(r.end)).await;
            drop(slot);
            (section, o, t0.elapsed())
        });
    }
    let mut by_section: BTreeMap<Section, (Vec<Outcome>, Duration)> = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((section, o, at)) => {
                let e = by_section.entry(section).or_default();
                e.0.push(o);
                e.1 = e.1.max(at);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let writes: u64 = parts.iter().map(|(_, r)| r.scale.writes).sum();
    let mut out = BTreeMap::new();
    for section in [
        Section::Random,
        Section::Processes,
        Section::TwoBots,
        Section::Writes,
    ] {
        let (mut outcomes, done_at) = by_section.remove(&section).unwrap_or_default();
        outcomes.sort_by(|a, b| a.name.cmp(&b.name));
        let title = match section {
            Section::Random => {
                format!("random kills (seed {base}; even trials delete the database at each kill)")
            }
            Section::Processes => {
                "real processes, SIGKILL (even trials delete the database)".to_string()
            }
            Section::TwoBots => "two bots on separate databases".to_string(),
            Section::Writes => format!(
                "a kill after each of the {writes} writes of the four parts of the batch, {}",
                if both {
                    "database kept and deleted for each"
                } else {
                    "database kept or deleted in turn"
                }
            ),
        };
        let mut summary = vec![summary_line(&title, &outcomes, done_at)];
        if section == Section::Writes {
            summary.push(format!(
                "crash: kill points covered: {} of {} (write, database) pairs",
                outcomes.iter().filter(|o| !o.kills.is_empty()).count(),
                outcomes.len()
            ));
        }
        if std::env::var("CRASH_VERBOSE").is_ok() {
            for o in &outcomes {
                eprintln!(
                    "crash: {}: {:.1}s, {} kills, {} writes, {} requests, {}",
                    o.name,
                    o.elapsed.as_secs_f64(),
                    o.kills.len(),
                    o.writes,
                    o.requests,
                    if o.ok() { "ok" } else { "FAILED" }
                );
            }
        }
        out.insert(
            section,
            SectionResult {
                title,
                outcomes,
                summary,
            },
        );
    }
    eprintln!("crash: all sections: {:.1}s", t0.elapsed().as_secs_f64());
    out
}

/// The section's figures: trials, kills, converged, duplicates.
fn summary_line(title: &str, outs: &[Outcome], done_at: Duration) -> String {
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
    format!(
        "crash: {title}: {} trials, {kills} kills, {converged} converged to the reference, {} with duplicates ({dups} duplicates, {raw} of them raw e-mail re-sends); done {:.1}s after the start",
        outs.len(),
        outs.iter().filter(|o| o.duplicates() > 0).count(),
        done_at.as_secs_f64()
    )
}

/// Print the section's figures; fail with every problem of its trials.
async fn check(section: Section) {
    let r = &results().await[&section];
    for l in &r.summary {
        eprintln!("{l}");
    }
    assert_none(vec![report(&r.title, &r.outcomes)]);
}

fn report(title: &str, outs: &[Outcome]) -> Option<String> {
    let failed: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    if failed.is_empty() {
        return None;
    }
    let mut s = format!(
        "{title}: {} of {} trials failed (seed {}). Replay one with CRASH_SEED={} CRASH_ONLY=<trial> cargo test --test crash; their state databases and process logs are in {}/<trial>\n\nBy problem (number of trials; the first trials, fewest kills first):\n",
        failed.len(),
        outs.len(),
        seed(),
        seed(),
        trials_dir().display()
    );
    // One bug is one line, whatever the trial.
    let mut by_problem: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for o in &failed {
        let mut sigs: Vec<String> = o.problems().into_iter().map(|(sig, _)| sig).collect();
        sigs.dedup();
        for p in sigs {
            by_problem.entry(p).or_default().push(o);
        }
    }
    let mut lines: Vec<(&String, &Vec<&Outcome>)> = by_problem.iter().collect();
    lines.sort_by_key(|(p, t)| (std::cmp::Reverse(t.len()), p.as_str()));
    for (p, trials) in lines {
        let mut first = trials.to_vec();
        first.sort_by_key(|o| (o.kills.len(), o.name.len(), o.name.clone()));
        s.push_str(&format!(
            "  {:>3}  {p}  [{}{}]\n",
            trials.len(),
            first
                .iter()
                .take(3)
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if trials.len() > 3 { ", ..." } else { "" }
        ));
    }
    s.push_str("\nTrials:\n");
    for o in failed.iter().take(40) {
        s.push_str(&format!(
            "  {} (trial seed {}, database {}; kills: {})\n",
            o.name,
            o.seed,
            o.database,
            if o.kills.is_empty() {
                "none".to_string()
            } else {
                o.kills.join("; ")
            }
        ));
        let problems = o.problems();
        for (_, p) in problems.iter().take(8) {
            s.push_str(&format!("      {p}\n"));
        }
        if problems.len() > 8 {
            s.push_str(&format!("      ... {} more\n", problems.len() - 8));
        }
    }
    if failed.len() > 40 {
        s.push_str(&format!("  ... and {} more trials\n", failed.len() - 40));
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
    check(Section::Random).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_every_distinct_write_converges_with_and_without_the_database() {
    check(Section::Writes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_killed_by_sigkill_restart_and_converge() {
    check(Section::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_on_separate_databases_converge_without_duplicates() {
    check(Section::TwoBots).await;
}
