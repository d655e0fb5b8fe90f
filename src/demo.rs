//! `access-bot demo`: the bot's main job on the embedded sandbox. Starts the
//! fakes in process, files one issue per workflow (and one refused security
//! case), acts as the approvers, runs the bot until it is quiet, prints a
//! transcript, and checks that every workflow reached its expected end.

use std::fmt::Write as _;

use crate::sandbox::harness::run_until_quiet;
use crate::sandbox::scenario::ZendeskAccount;
use crate::sandbox::{Ports, Sandbox};

pub const GLOBAL_OKTA: &str = "okta-zendeskglobal-users@gitlab.com";
pub const FEDERAL_OKTA: &str = "okta-zendeskfederal-users@gitlab.com";

const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";

/// One line of an issue's story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A person's or the bot's action: a label, a tick, an edit, closing.
    Action(String),
    /// A comment, shown in full.
    Comment(String),
}

pub struct DemoIssue {
    pub name: &'static str,
    pub iid: u64,
}

pub struct Demo {
    pub sandbox: Sandbox,
    pub issues: Vec<DemoIssue>,
    pub transcript: String,
    pub failures: Vec<String>,
}

fn row(name: &str, email: &str, user: &str, manager: &str) -> String {
    format!("| {name} | {email} | @{user} | @{manager} |\n")
}

/// The issue bodies of the demo, also used by `plan` examples and tests.
pub fn bodies() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Vec<&'static str>,
    String,
)> {
    vec![
        (
            "role-based entitlement",
            "gitlab-employment-bot",
            "Role-based entitlements: Sam Rivera, Support Engineer",
            vec!["BaselineEntitlementAR", "support::to do", "AR-Approval::Manager Approved"],
            format!(
                "## Personal details\n\n{TABLE}{}\n## Provisioners only section\n\n#### IT to-do:\n* [ ]  `Google Workspace`: `Member of okta-zendeskglobal-users`\n\n#### Support to-do:\n* [ ]  `Zendesk Global`: `Agent, role Support Engineer`\n* [ ]  `Slack`: `#support_team-chat`\n",
                row("Sam Rivera", "sam.rivera@gitlab.com", "srivera", "kpatel")
            ),
        ),
        (
            "special request",
            "rkim",
            "Robin Kim, Zendesk Global, Support Engineer",
            vec!["support::to do", "AR-Approval::Needs Manager Approval"],
            format!(
                "## Step 1. Personal Information\n\n{TABLE}{}\n## Step 2. Access Request\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- Justification for this access: I am joining the AMER support rotation.\n",
                row("Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee")
            ),
        ),
        (
            "light agent, Zendesk Global",
            "jdoe",
            "Jane Doe: Zendesk Global light agent",
            vec!["support::to do"],
            "## Step 2. Access Request\n\n- [ ] Zendesk Global: Light Agent\n- Justification for this access: I read customer tickets for my accounts.\n".into(),
        ),
        (
            "light agent, Zendesk US Federal",
            "bli",
            "Bo Li: Zendesk US Federal light agent",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk US Federal: Light Agent\n- Justification for this access: I support a public-sector account.\n",
                row("Bo Li", "bo.li@gitlab.com", "bli", "mlee")
            ),
        ),
        (
            "light agent, US Federal, citizenship denied",
            "rkim",
            "Robin Kim: Zendesk US Federal light agent",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk US Federal: Light Agent\n- Justification for this access: public sector.\n",
                row("Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee")
            ),
        ),
        (
            "team tag",
            "jdoe",
            "Jane Doe: Zendesk Global tag partner_support_agent",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- Justification for this access: I file Partner Support requests.\n",
                row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
            ),
        ),
        (
            "team tag without an account",
            "mallory",
            "Mallory: Zendesk Global tag order management",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk Global: add tag `order_management_team`\n",
                row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
            ),
        ),
        (
            "role change",
            "mlee",
            "Role change: Alex Chen to Support Manager, Zendesk Global",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Manager\n- Justification for this access: promoted to Support Manager.\n",
                row("Alex Chen", "alex.chen@gitlab.com", "achen", "kpatel")
            ),
        ),
        (
            "offboarding",
            "gitlab-employment-bot",
            "Offboarding: Casey Quinn",
            vec!["offboarding"],
            format!(
                "## Team member details\n\n{TABLE}{}\n## Department tasks: Customer Support\n\n- [ ]  @zd-admin-1 @zd-admin-2: Remove the team member from Zendesk Global\n- [ ]  @it-ops-1: Remove the team member from Google Group okta-zendeskglobal-users\n- [ ]  @it-ops-1: Remove the team member from Slack\n- [ ]  @zd-admin-1: Delete any Support Team files attached to the user (if applicable)\n",
                row("Casey Quinn", "casey.quinn@gitlab.com", "cquinn", "mlee")
            ),
        ),
        (
            "security: self-approval",
            "mallory",
            "Mallory Mallet, Zendesk Global, Support Manager",
            vec!["support::to do"],
            format!(
                "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Manager\n- Justification for this access: trust me.\n",
                row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
            ),
        ),
    ]
}

impl Demo {
    pub async fn run() -> anyhow::Result<Demo> {
        let sb = Sandbox::start(Ports::default()).await?;
        sb.gitlab
            .lock()
            .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
        sb.google
            .lock()
            .users
            .insert("casey.quinn@gitlab.com".into());
        // Alex is a Support Engineer today; Casey is leaving with open tickets.
        sb.seed_zendesk(&ZendeskAccount {
            instance: "global".into(),
            name: "Alex Chen".into(),
            email: "alex.chen@gitlab.com".into(),
            role: "agent".into(),
            custom_role: Some("Support Engineer".into()),
            groups: vec!["Support AMER".into(), "Support EMEA".into()],
            tags: vec![],
            user_fields: Default::default(),
            open_tickets: 0,
            suspended: false,
            last_login_days_ago: Some(1),
        })?;
        sb.seed_zendesk(&ZendeskAccount {
            instance: "global".into(),
            name: "Casey Quinn".into(),
            email: "casey.quinn@gitlab.com".into(),
            role: "agent".into(),
            custom_role: Some("Support Engineer".into()),
            groups: vec!["Support AMER".into()],
            tags: vec!["partner_support_agent".into(), "emea_shift".into()],
            user_fields: [("region".to_string(), "EMEA".to_string())]
                .into_iter()
                .collect(),
            open_tickets: 7,
            suspended: false,
            last_login_days_ago: Some(3),
        })?;
        sb.google
            .lock()
            .add_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");

        let bot = sb.bot().await?;
        let mut issues = Vec::new();
        for (name, author, title, labels, body) in bodies() {
            let iid = sb.file_issue(author, title, &labels, &body).await?;
            issues.push(DemoIssue { name, iid });
        }
        let iid = |n: &str| {
            issues
                .iter()
                .find(|i| i.name == n)
                .map(|i| i.iid)
                .unwrap_or(0)
        };

        // First pass: the bot reads everything, acts on what needs no approval, plans the rest.
        run_until_quiet(&bot, 4).await;

        // People approve.
        sb.add_label(
            "mlee",
            iid("special request"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "lyle",
            iid("special request"),
            "Zendesk::System Owner Approved",
        )
        .await?;
        sb.add_label(
            "mlee",
            iid("light agent, Zendesk US Federal"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "people-connect-1",
            iid("light agent, Zendesk US Federal"),
            "US-Citizenship::Verified",
        )
        .await?;
        sb.add_label(
            "mlee",
            iid("light agent, US Federal, citizenship denied"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "people-connect-1",
            iid("light agent, US Federal, citizenship denied"),
            "US-Citizenship::Not Verified",
        )
        .await?;
        sb.add_label(
            "mlee",
            iid("team tag without an account"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "kpatel",
            iid("role change"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "jason",
            iid("role change"),
            "Zendesk::System Owner Approved",
        )
        .await?;
        sb.add_label(
            "mallory",
            iid("security: self-approval"),
            "AR-Approval::Manager Approved",
        )
        .await?;
        sb.add_label(
            "mallory",
            iid("security: self-approval"),
            "Zendesk::System Owner Approved",
        )
        .await?;
        run_until_quiet(&bot, 4).await;
        // The team tag needs the light agent from the Global request first. Jane
        // has one now, so the plan the manager approves is not the plan the bot
        // first posted (it said "no account yet"): the bot posts a new plan and
        // the manager approves that one.
        sb.add_label("mlee", iid("team tag"), "AR-Approval::Manager Approved")
            .await?;
        run_until_quiet(&bot, 4).await;
        sb.remove_label("mlee", iid("team tag"), "AR-Approval::Manager Approved")
            .await?;
        sb.add_label("mlee", iid("team tag"), "AR-Approval::Manager Approved")
            .await?;
        run_until_quiet(&bot, 4).await;
        // A maintainer merges the merge request deleting Casey's Support Team file.
        let open_mrs: Vec<u64> = sb
            .gitlab
            .lock()
            .project(crate::sandbox::SUPPORT_TEAM)
            .map(|p| p.merge_requests.iter().map(|m| m.iid).collect())
            .unwrap_or_default();
        for mr in open_mrs {
            sb.gitlab.lock().merge(crate::sandbox::SUPPORT_TEAM, mr);
        }
        run_until_quiet(&bot, 4).await;

        // The monthly idle-seat review: everyone above logged in today, Dana not
        // for 200 days. The review issue lists her; a reviewer ticks her line.
        for z in sb.zendesk.values() {
            for u in z.server.lock().users.values_mut() {
                u.last_login_at = Some(chrono::Utc::now());
            }
        }
        sb.seed_zendesk(&ZendeskAccount {
            instance: "global".into(),
            name: "Dana Idle".into(),
            email: "dana.idle@gitlab.com".into(),
            role: "agent".into(),
            custom_role: Some("Support Engineer".into()),
            groups: vec![],
            tags: vec![],
            user_fields: Default::default(),
            open_tickets: 0,
            suspended: false,
            last_login_days_ago: Some(200),
        })?;
        bot.audit_seats(None).await?;
        let label = bot
            .cfg
            .seat_audit
            .as_ref()
            .map(|s| s.label.clone())
            .unwrap_or_default();
        let review = sb
            .gitlab
            .lock()
            .project(crate::sandbox::PROJECT)
            .and_then(|p| {
                p.issues
                    .iter()
                    .find(|i| i.labels.contains(&label))
                    .map(|i| i.iid)
            })
            .unwrap_or(0);
        let ticked: String = sb
            .description(review)
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
        sb.edit_description("lyle", review, &ticked).await?;
        run_until_quiet(&bot, 4).await;
        issues.push(DemoIssue {
            name: "seat review",
            iid: review,
        });

        let mut demo = Demo {
            sandbox: sb,
            issues,
            transcript: String::new(),
            failures: Vec::new(),
        };
        demo.write_transcript();
        demo.check();
        Ok(demo)
    }

    fn write_transcript(&mut self) {
        let sb = &self.sandbox;
        let mut t = String::new();
        for i in &self.issues {
            let labels = sb.labels(i.iid);
            let _ = writeln!(
                t,
                "\n=================================================================="
            );
            let _ = writeln!(t, "#{}  [{}]  state: {}", i.iid, i.name, sb.state(i.iid));
            let _ = writeln!(t, "labels: {}", labels.join(", "));
            let ticked = sb.ticked(i.iid);
            if !ticked.is_empty() {
                let _ = writeln!(t, "ticked: {}", ticked.join(" | "));
            }
            // The story, in order: who filed it, who applied which label
            // when, who ticked or edited what, and what the bot said.
            for (at, who, what) in self.timeline(i.iid) {
                match what {
                    Entry::Comment(body) => {
                        let _ = writeln!(t, "\n--- {at}  comment by @{who} ---");
                        for line in body
                            .lines()
                            .filter(|l| !l.trim_start().starts_with(crate::marker::PREFIX))
                        {
                            let _ = writeln!(t, "  {line}");
                        }
                    }
                    Entry::Action(text) => {
                        let _ = writeln!(t, "{at}  @{who} {text}");
                    }
                }
            }
        }
        let _ = writeln!(
            t,
            "\n==================================================================\nZendesk and Google afterwards:"
        );
        for (name, z) in &sb.zendesk {
            let w = z.server.lock();
            let _ = writeln!(t, "\nZendesk {name}:");
            for u in w.users.values().filter(|u| u.id != w.admin_id) {
                let role = match u
                    .custom_role_id
                    .and_then(|id| w.custom_roles.iter().find(|r| r.id == id))
                {
                    Some(r) if r.role_type == 1 => "light agent".to_string(),
                    Some(r) => format!("{} ({})", u.role, r.name),
                    None => u.role.clone(),
                };
                let _ = writeln!(
                    t,
                    "  {:<28} {:<32} groups [{}] tags [{}]{} open tickets {}",
                    u.email,
                    role,
                    w.groups_of(u.id).join(", "),
                    u.tags.join(", "),
                    if u.suspended { " SUSPENDED" } else { "" },
                    w.open_tickets_of(u.id)
                );
            }
        }
        let g = sb.google.lock();
        for (group, members) in &g.groups {
            let _ = writeln!(
                t,
                "\nGoogle group {group}: {}",
                members
                    .iter()
                    .map(|m| m.email.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        drop(g);
        let _ = writeln!(t, "\nE-mails sent (SMTP sink):");
        for m in sb.smtp.messages() {
            let _ = writeln!(
                t,
                "  to {}: {}",
                m.to.join(", "),
                m.header("Subject").unwrap_or_default()
            );
        }
        let _ = writeln!(t, "\nSlack notices to ops:");
        for text in sb.slack.texts() {
            let _ = writeln!(t, "  {}", text.lines().collect::<Vec<_>>().join(" / "));
        }
        self.transcript = t;
    }

    /// Everything that happened on an issue, oldest first: (time, who, what).
    pub fn timeline(&self, iid: u64) -> Vec<(String, String, Entry)> {
        let w = self.sandbox.gitlab.lock();
        let Some(issue) = w.issue(crate::sandbox::PROJECT, iid) else {
            return Vec::new();
        };
        let name = |id: u64| {
            w.user(id)
                .map(|u| u.username.clone())
                .unwrap_or_else(|| format!("user {id}"))
        };
        // (time, order among equal times, who, what)
        let mut events: Vec<(chrono::DateTime<chrono::Utc>, u64, String, Entry)> = vec![(
            issue.created_at,
            0,
            name(issue.author),
            Entry::Action(format!("filed the issue \"{}\"", issue.title)),
        )];
        for e in &issue.label_events {
            events.push((
                e.created_at,
                e.id,
                name(e.user),
                Entry::Action(format!(
                    "{} label `{}`",
                    if e.add { "added" } else { "removed" },
                    e.label
                )),
            ));
        }
        for n in &issue.notes {
            let entry = if n.system {
                Entry::Action(n.body.replace("**", "\""))
            } else {
                Entry::Comment(n.body.clone())
            };
            events.push((n.created_at, n.id, name(n.author), entry));
        }
        events.sort_by_key(|(at, id, _, _)| (*at, *id));
        events
            .into_iter()
            .map(|(at, _, who, what)| (at.format("%H:%M:%S%.3f").to_string(), who, what))
            .collect()
    }

    fn check(&mut self) {
        // The transcript tells who did what: the approvers' labels, the reviewer's tick.
        let (special_story, review_story) = {
            let iid_of = |n: &str| {
                self.issues
                    .iter()
                    .find(|i| i.name == n)
                    .map(|i| i.iid)
                    .unwrap_or(0)
            };
            let story = |n: &str| {
                self.timeline(iid_of(n))
                    .into_iter()
                    .filter_map(|(_, who, e)| match e {
                        Entry::Action(a) => Some(format!("@{who} {a}")),
                        Entry::Comment(_) => None,
                    })
                    .collect::<Vec<_>>()
            };
            (story("special request"), story("seat review"))
        };
        let sb = &self.sandbox;
        let iid = |n: &str| {
            self.issues
                .iter()
                .find(|i| i.name == n)
                .map(|i| i.iid)
                .unwrap_or(0)
        };
        let mut fail = |what: &str, ok: bool| {
            if !ok {
                self.failures.push(what.to_string());
            }
        };
        let zd = |inst: &str, email: &str| sb.zd(inst).user_by_email(email).cloned();
        let role_name = |inst: &str, id: Option<u64>| {
            let w = sb.zd(inst);
            id.and_then(|id| {
                w.custom_roles
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| r.name.clone())
            })
        };
        let done = |n: &str| sb.labels(iid(n)).contains(&"access-bot::done".to_string());
        let comments = |n: &str| {
            sb.bot_comments(iid(n))
                .iter()
                .map(|c| c.body.clone())
                .collect::<Vec<_>>()
                .join("\n")
        };

        // 1. Entitlement.
        let sam = zd("global", "sam.rivera@gitlab.com");
        fail(
            "entitlement: Sam is a Support Engineer",
            sam.as_ref().is_some_and(|u| {
                role_name("global", u.custom_role_id).as_deref() == Some("Support Engineer")
            }),
        );
        fail(
            "entitlement: Sam is in the Okta group",
            sb.google_member(GLOBAL_OKTA, "sam.rivera@gitlab.com"),
        );
        fail(
            "entitlement: done, Zendesk and Google items ticked",
            done("role-based entitlement") && sb.ticked(iid("role-based entitlement")).len() == 2,
        );
        // 2. Special request.
        let robin = zd("global", "robin.kim@gitlab.com");
        fail(
            "special request: Robin is a Support Engineer after both approvals",
            robin.as_ref().is_some_and(|u| {
                role_name("global", u.custom_role_id).as_deref() == Some("Support Engineer")
            }),
        );
        fail(
            "special request: the plan came first",
            comments("special request").contains("access-bot plan"),
        );
        // 3. Light agent Global.
        let jane = zd("global", "jane.doe@gitlab.com");
        fail(
            "light agent: Jane is a light agent",
            jane.as_ref()
                .is_some_and(|u| u.custom_role_id == sb.zd("global").light_agent_role()),
        );
        fail(
            "light agent: Okta group",
            sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        );
        fail(
            "light agent: the result says to wait 24 hours",
            comments("light agent, Zendesk Global").contains("wait 24 hours"),
        );
        fail(
            "light agent: closed",
            sb.state(iid("light agent, Zendesk Global")) == "closed",
        );
        // 4. Federal.
        let bo = zd("federal", "bo.li@gitlab.com");
        fail(
            "federal: Bo is a light agent in US Federal",
            bo.as_ref()
                .is_some_and(|u| u.custom_role_id == sb.zd("federal").light_agent_role()),
        );
        fail(
            "federal: Okta group",
            sb.google_member(FEDERAL_OKTA, "bo.li@gitlab.com"),
        );
        fail(
            "federal: citizenship request posted",
            comments("light agent, Zendesk US Federal").contains("US Citizen"),
        );
        fail(
            "federal denied: closed, nothing provisioned",
            sb.state(iid("light agent, US Federal, citizenship denied")) == "closed"
                && zd("federal", "robin.kim@gitlab.com").is_none(),
        );
        // 5. Team tags.
        fail(
            "team tag: Jane has partner_support_agent",
            zd("global", "jane.doe@gitlab.com")
                .is_some_and(|u| u.tags.contains(&"partner_support_agent".to_string())),
        );
        fail(
            "team tag without account: told to get a light agent first, nothing created",
            comments("team tag without an account").contains("light agent first")
                && zd("global", "mallory@gitlab.com").is_none(),
        );
        // 6. Role change.
        let alex = zd("global", "alex.chen@gitlab.com");
        fail(
            "role change: Alex is a Support Manager",
            alex.as_ref().is_some_and(|u| {
                role_name("global", u.custom_role_id).as_deref() == Some("Support Manager")
            }),
        );
        fail(
            "role change: Alex is in Support Managers",
            alex.as_ref().is_some_and(|u| {
                sb.zd("global")
                    .groups_of(u.id)
                    .contains(&"Support Managers".to_string())
            }),
        );
        // 7. Offboarding.
        let casey = zd("global", "casey.quinn@gitlab.com");
        let mlee = zd("global", "mlee@gitlab.com").map(|u| u.id).unwrap_or(0);
        fail(
            "offboarding: demoted and suspended",
            casey
                .as_ref()
                .is_some_and(|u| u.role == "end-user" && u.suspended && u.custom_role_id.is_none()),
        );
        fail(
            "offboarding: no tags, no fields, no groups",
            casey.as_ref().is_some_and(|u| {
                u.tags.is_empty()
                    && u.user_fields.is_empty()
                    && sb.zd("global").groups_of(u.id).is_empty()
            }),
        );
        fail(
            "offboarding: tickets went to the manager",
            casey
                .as_ref()
                .is_some_and(|u| sb.zd("global").open_tickets_of(u.id) == 0)
                && sb.zd("global").open_tickets_of(mlee) == 7,
        );
        fail(
            "offboarding: out of the Okta group",
            !sb.google_member(GLOBAL_OKTA, "casey.quinn@gitlab.com"),
        );
        fail(
            "offboarding: evidence table",
            comments("offboarding").contains("| Account | Before | After |"),
        );
        fail(
            "offboarding: Support Team file deleted by a merged merge request, item ticked",
            sb.gitlab
                .lock()
                .project(crate::sandbox::SUPPORT_TEAM)
                .is_some_and(|p| {
                    p.merge_requests.iter().any(|m| m.state == "merged")
                        && p.files
                            .get("main")
                            .is_some_and(|f| !f.contains_key("data/agents/cquinn.yaml"))
                })
                && sb
                    .ticked(iid("offboarding"))
                    .iter()
                    .any(|t| t.contains("Support Team")),
        );
        // 4b. The People team got the verification e-mail, once per Federal request.
        fail(
            "US Federal: the People team was e-mailed once per request",
            sb.smtp
                .messages()
                .iter()
                .filter(|m| {
                    m.header("Subject").as_deref() == Some("US Citizenship Verification Request")
                        && m.to == ["people-connect@gitlab.com"]
                })
                .count()
                == 2,
        );
        // 9. Seat review.
        fail(
            "seat review: Dana's idle seat reclaimed on the reviewer's tick, review closed",
            zd("global", "dana.idle@gitlab.com")
                .is_some_and(|u| u.custom_role_id == sb.zd("global").light_agent_role())
                && sb.state(iid("seat review")) == "closed",
        );
        fail(
            "transcript: the manager's and the system owner's approvals are in the special request's story",
            special_story
                .contains(&"@mlee added label `AR-Approval::Manager Approved`".to_string())
                && special_story
                    .contains(&"@lyle added label `Zendesk::System Owner Approved`".to_string()),
        );
        fail(
            "transcript: the reviewer's tick is in the seat review's story",
            review_story.iter().any(|a| {
                a.starts_with("@lyle marked the checklist item") && a.contains("dana.idle")
            }),
        );
        // 8. Security.
        fail(
            "self-approval: nothing granted",
            zd("global", "mallory@gitlab.com").is_none(),
        );
        fail(
            "self-approval: the comment says why",
            comments("security: self-approval").contains("self-approval does not count"),
        );
        fail(
            "self-approval: ops were told on Slack",
            sb.slack
                .texts()
                .iter()
                .any(|t| t.contains("security reason") || t.contains("does not count")),
        );
    }
}
