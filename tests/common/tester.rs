//! The behaviour tests' DSL: a sandbox with the real bot connected to it,
//! named fixtures, actions as the people of the sandbox, and expectations.
//!
//! Every bot comment is checked by snapshot (`expect_comment`), in the order
//! the bot wrote it; when the tester is dropped, a bot comment no test read
//! fails the test (as bors' `BotTester` does), so a new, unexpected comment
//! cannot go unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use access_bot::bot::Bot;
use access_bot::sandbox::harness::{Comment, run_until_quiet};
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::zendesk::ZdUser;
use access_bot::sandbox::{GroupBackend, PROJECT, Ports, Sandbox};
use access_bot::store::Store;
use regex::Regex;

pub const MANAGER: &str = "AR-Approval::Manager Approved";
pub const OWNER: &str = "Zendesk::System Owner Approved";
pub const VERIFIED: &str = "US-Citizenship::Verified";
pub const GLOBAL_OKTA: &str = "okta-zendeskglobal-users@gitlab.com";
pub const FEDERAL_OKTA: &str = "okta-zendeskfederal-users@gitlab.com";
pub const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";

/// The name of the enclosing test function, for its snapshots' names
/// (`async fn` bodies are closures: those segments are dropped).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let full = std::any::type_name_of_val(&f);
        full.strip_suffix("::f")
            .unwrap_or(full)
            .split("::")
            .filter(|s| *s != "{{closure}}")
            .last()
            .unwrap_or("test")
    }};
}

/// `tester!(backend)`: a `Tester` named after the enclosing test function
/// (`tester!()`: with the default group backend).
#[macro_export]
macro_rules! tester {
    () => {
        $crate::common::tester::Tester::start(
            $crate::test_name!(),
            access_bot::sandbox::GroupBackend::default(),
        )
    };
    ($backend:expr) => {
        $crate::common::tester::Tester::start($crate::test_name!(), $backend)
    };
}

// ---------------------------------------------------------------- fixtures

/// An issue as a person files it.
#[derive(Debug, Clone)]
pub struct Issue {
    pub author: String,
    pub title: String,
    pub labels: Vec<String>,
    pub body: String,
}

impl Issue {
    /// One of the demo's issues (`access_bot::demo::bodies`), by name.
    pub fn demo(name: &str) -> Issue {
        let (_, author, title, labels, body) = access_bot::demo::bodies()
            .into_iter()
            .find(|b| b.0 == name)
            .unwrap_or_else(|| panic!("no demo body {name:?}"));
        Issue {
            author: author.into(),
            title: title.into(),
            labels: labels.into_iter().map(String::from).collect(),
            body,
        }
    }

    /// An issue of the people table (`rows`: name, email, username, manager)
    /// and then `items` (checklist and other lines), with `support::to do`.
    pub fn table(author: &str, title: &str, rows: &[[&str; 4]], items: &str) -> Issue {
        let mut body = TABLE.to_string();
        for [name, email, user, manager] in rows {
            body.push_str(&format!("| {name} | {email} | @{user} | @{manager} |\n"));
        }
        body.push('\n');
        body.push_str(items);
        Issue {
            author: author.into(),
            title: title.into(),
            labels: vec!["support::to do".into()],
            body,
        }
    }

    pub fn by(mut self, author: &str) -> Issue {
        self.author = author.into();
        self
    }

    pub fn titled(mut self, title: &str) -> Issue {
        self.title = title.into();
        self
    }

    pub fn labels(mut self, labels: &[&str]) -> Issue {
        self.labels = labels.iter().map(|l| l.to_string()).collect();
        self
    }

    /// The body with `from` replaced by `to` (a variant of a fixture).
    pub fn replace(mut self, from: &str, to: &str) -> Issue {
        self.body = self.body.replace(from, to);
        self
    }
}

pub mod fixtures {
    //! The issues the behaviour suites file, by what they are.
    use super::Issue;

    /// Filed by the employment automation, pre-approved: Sam Rivera, Support Engineer.
    pub fn role_based_entitlement() -> Issue {
        Issue::demo("role-based entitlement")
    }
    /// Robin Kim asks to be a Support Engineer; needs the manager and a system owner.
    pub fn special_request() -> Issue {
        Issue::demo("special request")
    }
    /// Jane Doe asks for a Zendesk Global light agent seat (self-service).
    pub fn light_agent_global() -> Issue {
        Issue::demo("light agent, Zendesk Global")
    }
    /// Bo Li asks for a US Federal light agent seat (citizenship verification).
    pub fn light_agent_federal() -> Issue {
        Issue::demo("light agent, Zendesk US Federal")
    }
    /// Robin Kim asks for a US Federal seat; the People team will deny citizenship.
    pub fn light_agent_federal_denied() -> Issue {
        Issue::demo("light agent, US Federal, citizenship denied")
    }
    /// A team tag for someone without a Zendesk account.
    pub fn team_tag_without_an_account() -> Issue {
        Issue::demo("team tag without an account")
    }
    /// Casey Quinn leaves (filed by the automation; see `Tester::seed_leaver`).
    pub fn offboarding() -> Issue {
        Issue::demo("offboarding")
    }
    /// Jane Doe asks to be a Support Engineer in Zendesk Global (a special request).
    pub fn jane_support_engineer() -> Issue {
        Issue::table(
            "jdoe",
            "Jane Doe, Zendesk Global, Support Engineer",
            &[["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"]],
            "- [ ] Zendesk Global: Agent - Support Engineer\n",
        )
    }
}

/// A fresh, empty state database.
pub fn memory_store() -> Arc<Store> {
    Arc::new(Store::open(std::path::Path::new(":memory:")).unwrap())
}

/// A Zendesk Global account to seed, with nothing but a name, address and role.
pub fn account(name: &str, email: &str, role: &str) -> ZendeskAccount {
    ZendeskAccount {
        instance: "global".into(),
        name: name.into(),
        email: email.into(),
        role: role.into(),
        custom_role: None,
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    }
}

// ---------------------------------------------------------------- snapshots

/// What differs from run to run in a bot comment, made stable: the marker's
/// MAC and digests (they cover bodies that hold today's date), dates, the
/// sandbox's ports, and the ids of the approval labels a plan binds to (the
/// order in which issues looked at side by side create them varies).
pub fn normalise(body: &str) -> String {
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [
            (r"mac=[0-9A-Za-z_-]+", "mac=<mac>"),
            (r"\b[0-9a-f]{8,}\b", "<hex>"),
            (
                r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?(\.\d+)?(Z|[+-]\d{2}:?\d{2}| UTC)?)?",
                "<date>",
            ),
            (r"(127\.0\.0\.1|localhost):\d+", "$1:<port>"),
        ]
        .into_iter()
        .map(|(re, to)| (Regex::new(re).unwrap(), to))
        .collect()
    });
    static LABELS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\blabels=\S+").unwrap());
    static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r":\d+").unwrap());
    let mut out = body.to_string();
    for (re, to) in RULES.iter() {
        out = re.replace_all(&out, *to).into_owned();
    }
    LABELS
        .replace_all(&out, |m: &regex::Captures<'_>| {
            ID.replace_all(&m[0], ":<id>").into_owned()
        })
        .into_owned()
}

// ---------------------------------------------------------------- the tester

pub struct Tester {
    pub sb: Sandbox,
    pub bot: Bot,
    name: String,
    /// The bot comments (note ids) the test has read.
    read: BTreeSet<u64>,
    /// Snapshots taken so far, by issue (they number the next one).
    snapshots: BTreeMap<u64, usize>,
}

impl Tester {
    /// A sandbox whose instances keep their app groups in `backend`, and a bot.
    /// `name` names the snapshots (use `tester!`).
    pub async fn start(name: &str, backend: GroupBackend) -> Tester {
        let sb = Sandbox::start_with(Ports::default(), backend)
            .await
            .unwrap();
        let bot = sb.bot().await.unwrap();
        Tester {
            sb,
            bot,
            name: name.into(),
            read: BTreeSet::new(),
            snapshots: BTreeMap::new(),
        }
    }

    /// As `start` with the default backend, the bot on `store` (tests that
    /// keep or lose the state database across restarts).
    pub async fn with_store(name: &str, store: Arc<Store>) -> Tester {
        let sb = Sandbox::start(Ports::default()).await.unwrap();
        let bot = sb.bot_with_store(store).await.unwrap();
        Tester {
            sb,
            bot,
            name: name.into(),
            read: BTreeSet::new(),
            snapshots: BTreeMap::new(),
        }
    }

    /// Another bot on this sandbox with a database of its own (a replica on
    /// another host or volume). What it writes is read as the tester's bot's.
    pub async fn replica(&self) -> Bot {
        let path = std::env::temp_dir().join(format!("ab-replica-{}.db", rand::random::<u64>()));
        self.sb
            .bot_with_store(Arc::new(Store::open(&path).unwrap()))
            .await
            .unwrap()
    }

    // ------------------------------------------------------------ actions

    pub async fn file(&self, issue: &Issue) -> u64 {
        let labels: Vec<&str> = issue.labels.iter().map(String::as_str).collect();
        self.sb
            .file_issue(&issue.author, &issue.title, &labels, &issue.body)
            .await
            .unwrap()
    }

    pub async fn label(&self, user: &str, iid: u64, label: &str) {
        self.sb.add_label(user, iid, label).await.unwrap()
    }

    pub async fn unlabel(&self, user: &str, iid: u64, label: &str) {
        self.sb.remove_label(user, iid, label).await.unwrap()
    }

    pub async fn comment(&self, user: &str, iid: u64, body: &str) {
        self.sb.comment_as(user, iid, body).await.unwrap()
    }

    pub async fn edit(&self, user: &str, iid: u64, body: &str) {
        self.sb.edit_description(user, iid, body).await.unwrap()
    }

    /// Run the bot's cycles until one finds nothing to do (at most three).
    pub async fn run(&self) {
        run_until_quiet(&self.bot, 3).await;
    }

    /// As `run`, with at most `max` cycles.
    pub async fn run_for(&self, max: usize) {
        run_until_quiet(&self.bot, max).await;
    }

    /// As `run_for`, returning each cycle's report.
    pub async fn run_reports(&self, max: usize) -> Vec<access_bot::bot::CycleReport> {
        run_until_quiet(&self.bot, max).await
    }

    /// A restart: the bot is gone, a new one with an empty database takes over.
    pub async fn restart(&mut self) {
        self.bot = self.sb.bot().await.unwrap();
    }

    /// A restart on `store`: kept (the same `Arc`) or lost (a new one).
    pub async fn restart_with(&mut self, store: Arc<Store>) {
        self.bot = self.sb.bot_with_store(store).await.unwrap();
    }

    /// A leaver with `tickets` open tickets, an agent account and the Okta group.
    pub fn seed_leaver(&self, tickets: u32) {
        let sb = &self.sb;
        sb.gitlab
            .lock()
            .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
        sb.add_directory_user("casey.quinn@gitlab.com");
        sb.seed_zendesk(&ZendeskAccount {
            custom_role: Some("Support Engineer".into()),
            groups: vec!["Support AMER".into()],
            tags: vec!["partner_support_agent".into(), "emea_shift".into()],
            user_fields: [("region".to_string(), "EMEA".to_string())]
                .into_iter()
                .collect(),
            open_tickets: tickets,
            last_login_days_ago: Some(3),
            ..account("Casey Quinn", "casey.quinn@gitlab.com", "agent")
        })
        .unwrap();
        sb.seed_group_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");
    }

    // ------------------------------------------------------------ expectations

    /// The next bot comment on `iid` the test has not read, checked against
    /// its snapshot (`<suite>__<test>__<iid>-<n>`).
    #[track_caller]
    pub fn expect_comment(&mut self, iid: u64) -> Comment {
        let c = self.unread(iid).into_iter().next().unwrap_or_else(|| {
            panic!(
                "expected another bot comment on #{iid}, found {} in all",
                self.sb.bot_comments(iid).len()
            )
        });
        self.read.insert(c.id);
        let n = self.snapshots.entry(iid).or_default();
        *n += 1;
        let name = format!("{}__{}-{}", self.name, iid, n);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_description(format!("bot comment {n} on issue #{iid}"));
        settings.set_omit_expression(true);
        let suite = module_path!().split("::").next().unwrap_or("tests");
        let file = format!("{suite}__{name}");
        settings.bind(|| insta::assert_snapshot!(file.as_str(), normalise(&c.body)));
        c
    }

    /// Every bot comment on `iid` the test has not read, each checked against
    /// its snapshot, oldest first.
    #[track_caller]
    pub fn expect_comments(&mut self, iid: u64) -> Vec<Comment> {
        (0..self.unread(iid).len())
            .map(|_| self.expect_comment(iid))
            .collect()
    }

    /// Every bot comment on every issue the test has not read, by snapshot:
    /// the rest of what the bot said, for tests about something else. A new
    /// comment still fails them (it has no snapshot yet).
    #[track_caller]
    pub fn expect_rest(&mut self) {
        for iid in self.iids() {
            self.expect_comments(iid);
        }
    }

    /// The issues of the project, by iid.
    fn iids(&self) -> Vec<u64> {
        let w = self.sb.gitlab.lock();
        w.projects
            .iter()
            .filter(|p| p.path == PROJECT)
            .flat_map(|p| p.issues.iter().map(|i| i.iid))
            .collect()
    }

    /// The bot wrote nothing on `iid` the test has not read.
    #[track_caller]
    pub fn expect_no_comment(&self, iid: u64) {
        let unread = self.unread(iid);
        assert!(
            unread.is_empty(),
            "unread bot comments on #{iid}:\n{}",
            bodies(&unread)
        );
    }

    /// The bot comments on `iid` the test has not read, oldest first.
    fn unread(&self, iid: u64) -> Vec<Comment> {
        self.sb
            .bot_comments(iid)
            .into_iter()
            .filter(|c| !self.read.contains(&c.id))
            .collect()
    }

    /// Every bot comment on `iid`, counted as read: for tests that judge
    /// them by their own predicate (how many results, whatever else was said).
    pub fn read_all(&mut self, iid: u64) -> Vec<Comment> {
        let all = self.sb.bot_comments(iid);
        self.read.extend(all.iter().map(|c| c.id));
        all
    }

    /// The bot's machine records on `iid` (comments whose marker is of
    /// `kind`, such as the seat review's `seat-list`), counted as read: they
    /// list data for the bot, not words for people, so they are counted, not
    /// snapshotted.
    pub fn read_records(&mut self, iid: u64, kind: &str) -> Vec<Comment> {
        let records: Vec<Comment> = self
            .sb
            .bot_comments(iid)
            .into_iter()
            .filter(|c| c.marker.as_ref().is_some_and(|m| m.kind == kind))
            .collect();
        self.read.extend(records.iter().map(|c| c.id));
        records
    }

    #[track_caller]
    pub fn expect_ticked(&self, iid: u64, items: &[&str]) {
        assert_eq!(self.sb.ticked(iid), items, "ticked items on #{iid}");
    }

    #[track_caller]
    pub fn expect_ticked_count(&self, iid: u64, n: usize) {
        let t = self.sb.ticked(iid);
        assert_eq!(t.len(), n, "ticked items on #{iid}: {t:?}");
    }

    #[track_caller]
    pub fn expect_label(&self, iid: u64, label: &str) {
        let l = self.sb.labels(iid);
        assert!(
            l.iter().any(|x| x == label),
            "#{iid} lacks {label:?}: {l:?}"
        );
    }

    #[track_caller]
    pub fn expect_state(&self, iid: u64, state: &str) {
        assert_eq!(self.sb.state(iid), state, "state of #{iid}");
    }

    /// Nothing changed in Zendesk or the Okta groups for these addresses.
    #[track_caller]
    pub fn expect_untouched(&self, emails: &[&str]) {
        for e in emails {
            for inst in ["global", "federal"] {
                assert!(
                    self.zd_user(inst, e).is_none(),
                    "{e} got an account in {inst}"
                );
            }
            assert!(
                !self.sb.group_member(GLOBAL_OKTA, e) && !self.sb.group_member(FEDERAL_OKTA, e),
                "{e} got an Okta group"
            );
        }
    }

    pub fn zd_user(&self, instance: &str, email: &str) -> Option<ZdUser> {
        self.sb.zd(instance).user_by_email(email).cloned()
    }

    /// The name of a custom role of `instance`.
    pub fn role_name(&self, instance: &str, id: Option<u64>) -> Option<String> {
        let w = self.sb.zd(instance);
        id.and_then(|id| {
            w.custom_roles
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.name.clone())
        })
    }

    /// The custom role's name of the account of `email` in `instance`.
    pub fn custom_role_of(&self, instance: &str, email: &str) -> Option<String> {
        let u = self.zd_user(instance, email)?;
        self.role_name(instance, u.custom_role_id)
    }
}

fn bodies(cs: &[Comment]) -> String {
    cs.iter()
        .map(|c| c.body.as_str())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

impl Drop for Tester {
    /// A bot comment no test read fails the test (unless it already failed).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let mut missed = String::new();
        for iid in self.iids() {
            let unread = self.unread(iid);
            if !unread.is_empty() {
                missed.push_str(&format!("#{iid}:\n{}\n", bodies(&unread)));
            }
        }
        assert!(
            missed.is_empty(),
            "bot comments the test never read:\n{missed}"
        );
    }
}
