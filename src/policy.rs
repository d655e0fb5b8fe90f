//! What a request needs before the bot may act, computed from what it asks
//! for. Pure.
//!
//! Each change (a level, a tag, an Okta group) needs the approvals its
//! configuration names; a request needs the union over all its changes, plus
//! whatever its kind's policy adds. A kind or a title can add, never remove.
//! Only two things waive an approval, and both are shown with their reason:
//! - self-service: the requester asks a `self_service` level for themself,
//!   and the bot has established that they are that person;
//! - a trusted automation's template, for the approvals its policy names as
//!   `pre_approved` (never a verification such as citizenship).

use serde::Serialize;

use crate::config::Config;
use crate::request::{Email, ItemAction, Request, RequestKind};

/// One approval a change needs, and the configuration rule that says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    pub approval: String,
    pub because: String,
}

/// The approvals one checklist item's change needs.
#[derive(Debug, Clone, Serialize)]
pub struct ItemNeeds {
    /// Ordinal of the bot item.
    pub item: usize,
    /// What the item asks for, in words.
    pub change: String,
    pub needs: Vec<Need>,
    /// Needs lifted, each with why.
    pub waived: Vec<Need>,
}

/// Whether the request is the requester asking for themself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum SelfService {
    /// Not a self-service request (it asks for more than self-service levels).
    NotApplicable,
    /// The requester asks a self-service level for themself, verified.
    Verified,
    /// It would be, but the bot cannot establish that: the level's approvals apply.
    Unverified(String),
}

/// Whether a trusted automation's pre-approval applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Trust {
    /// Not a trusted kind.
    NotApplicable,
    /// Filed and kept by the automation: `pre_approved` applies.
    Intact,
    /// Someone else changed it: `if_edited` applies instead, with why.
    Lost(String),
}

/// Everything a request needs, with reasons.
#[derive(Debug, Clone, Serialize)]
pub struct Requirements {
    pub items: Vec<ItemNeeds>,
    /// Added by the request's kind (and every rule that matched it).
    pub kind_needs: Vec<Need>,
    /// The union, in order of first appearance, minus what is waived.
    pub required: Vec<String>,
    pub self_service: SelfService,
    /// A trusted author's issue: these were pre-approved by its template.
    pub pre_approved: Vec<String>,
    pub trust: Trust,
}

/// Who asked, as far as the bot can tell.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    pub username: String,
    /// The requester's company e-mail, from an identity source (never from the issue).
    pub email: Option<Email>,
}

/// Is this the requester asking self-service levels for themself?
pub fn self_service(request: &Request, requester: &Requester, cfg: &Config) -> SelfService {
    let asks_only_self_service = request.kind == RequestKind::LightAgent
        && request.items.iter().all(|it| match &it.action {
            ItemAction::Account {
                instance,
                level: Some(level),
                add_tags,
                remove_tags,
            } => {
                add_tags.is_empty()
                    && remove_tags.is_empty()
                    && cfg
                        .zendesk
                        .get(instance)
                        .and_then(|z| z.access_levels.get(level))
                        .is_some_and(|a| a.self_service)
            }
            ItemAction::GroupAdd { instance, .. } => request.items.iter().any(|o| {
                matches!(&o.action, ItemAction::Account { instance: i, level: Some(_), .. } if i == instance)
            }),
            _ => false,
        });
    if !asks_only_self_service {
        return SelfService::NotApplicable;
    }
    let [subject] = request.subjects.as_slice() else {
        return SelfService::Unverified(format!(
            "it names {} people; self-service is for the requester alone",
            request.subjects.len()
        ));
    };
    let Some(email) = &requester.email else {
        return SelfService::Unverified(format!(
            "the bot cannot establish the e-mail address of `@{}`, who filed it (no identity source knows them)",
            requester.username
        ));
    };
    if subject.email != *email {
        return SelfService::Unverified(format!(
            "it is for {}, not for `@{}` who filed it",
            crate::render::code_span(subject.email.as_str()),
            requester.username
        ));
    }
    if let Some(u) = &subject.gitlab_username
        && !u.eq_ignore_ascii_case(&requester.username)
    {
        return SelfService::Unverified(format!(
            "the row names {} as the GitLab user, not `@{}` who filed it",
            crate::render::code_span(&format!("@{u}")),
            requester.username
        ));
    }
    SelfService::Verified
}

fn needs(names: &[String], because: &str) -> Vec<Need> {
    names
        .iter()
        .map(|n| Need {
            approval: n.clone(),
            because: because.to_string(),
        })
        .collect()
}

/// What `request` needs, given whether it is verified self-service and
/// whether a trusted automation's pre-approval still applies.
pub fn requirements(
    request: &Request,
    cfg: &Config,
    self_service: SelfService,
    trust: Trust,
) -> Requirements {
    let ss = self_service == SelfService::Verified;
    let kind_policy = cfg.policy_for(request.kind);
    let pre_approved = if trust == Trust::Intact {
        kind_policy.pre_approved.clone()
    } else {
        Vec::new()
    };
    let covered = |level: Option<&String>| {
        kind_policy.pre_approved_levels.is_empty()
            || level.is_some_and(|l| kind_policy.pre_approved_levels.contains(l))
    };
    let mut items = Vec::new();
    for it in &request.items {
        let instance = it.action.instance();
        let Some(z) = cfg.zendesk.get(instance) else {
            continue;
        };
        let inst_rule = format!("zendesk.{instance}.requires");
        let (change, mut own, waivable) = match &it.action {
            ItemAction::Account {
                level,
                add_tags,
                remove_tags,
                ..
            } => {
                let mut own = Vec::new();
                let mut words = Vec::new();
                let mut waivable = true;
                if let Some(l) = level {
                    words.push(format!("{l} in {}", z.display_name));
                    match z.access_levels.get(l).and_then(|a| a.requires.as_ref()) {
                        Some(r) => own.extend(needs(
                            r,
                            &format!("zendesk.{instance}.access_levels.{l:?}.requires"),
                        )),
                        None => own.extend(needs(&cfg.changes.level, "changes.level")),
                    }
                }
                if !add_tags.is_empty() || !remove_tags.is_empty() {
                    waivable = false;
                    let tags: Vec<String> = add_tags
                        .iter()
                        .map(|t| format!("add tag {t}"))
                        .chain(remove_tags.iter().map(|t| format!("remove tag {t}")))
                        .collect();
                    words.push(tags.join(", "));
                    own.extend(needs(&cfg.changes.team_tag, "changes.team_tag"));
                }
                (words.join("; "), own, waivable)
            }
            ItemAction::GroupAdd { group, .. } => (
                format!("Okta group {group} ({})", z.display_name),
                needs(&cfg.changes.app_group, "changes.app_group"),
                true,
            ),
            ItemAction::AccountRemove { .. } => {
                (format!("remove from {}", z.display_name), Vec::new(), false)
            }
            ItemAction::GroupRemove { group, .. } => {
                (format!("remove from Okta group {group}"), Vec::new(), false)
            }
        };
        let mut waived = Vec::new();
        if ss && waivable {
            for n in own.drain(..) {
                waived.push(Need {
                    approval: n.approval,
                    because: format!(
                        "self-service: the requester asks it for themself ({} waives {})",
                        "self_service = true", n.because
                    ),
                });
            }
        }
        // The instance's own requirements apply to every change in it, self-service included.
        if !it.action.revokes() {
            own.extend(needs(&z.requires, &inst_rule));
        }
        let level = match &it.action {
            ItemAction::Account { level, .. } => level.as_ref(),
            _ => None,
        };
        let level_covered =
            !matches!(it.action, ItemAction::Account { level: Some(_), .. }) || covered(level);
        let (kept, lifted): (Vec<Need>, Vec<Need>) = own
            .into_iter()
            .partition(|n| !(level_covered && pre_approved.contains(&n.approval)));
        waived.extend(lifted.into_iter().map(|n| Need {
            because: format!(
                "pre-approved by the template of a trusted automation (policy.{}.pre_approved; was {})",
                request.kind, n.because
            ),
            approval: n.approval,
        }));
        items.push(ItemNeeds {
            item: it.ordinal,
            change,
            needs: dedup(kept),
            waived: dedup(waived),
        });
    }

    let mut kind_needs = needs(&kind_policy.approvals, &format!("policy.{}", request.kind));
    for k in &request.matched_kinds {
        if *k != request.kind {
            kind_needs.extend(needs(
                &cfg.policy_for(*k).approvals,
                &format!("policy.{k} (a [[kinds]] rule matched)"),
            ));
        }
    }
    if let Trust::Lost(why) = &trust {
        kind_needs.extend(needs(
            &kind_policy.if_edited,
            &format!("policy.{}.if_edited: {why}", request.kind),
        ));
    }
    let kind_needs: Vec<Need> = dedup(kind_needs)
        .into_iter()
        .filter(|n| !pre_approved.contains(&n.approval))
        .collect();

    let mut required: Vec<String> = Vec::new();
    for n in items
        .iter()
        .flat_map(|i| i.needs.iter())
        .chain(kind_needs.iter())
    {
        if !required.contains(&n.approval) {
            required.push(n.approval.clone());
        }
    }
    Requirements {
        items,
        kind_needs,
        required,
        self_service,
        pre_approved,
        trust,
    }
}

fn dedup(v: Vec<Need>) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    for n in v {
        if !out.iter().any(|o| o.approval == n.approval) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{IssueInput, UserRef, parse_request};

    fn cfg() -> Config {
        Config::parse(
            include_str!("../bot.toml"),
            std::path::Path::new("bot.toml"),
        )
        .unwrap()
    }

    fn req(title: &str, labels: &[&str], body: &str) -> Request {
        let issue = IssueInput {
            iid: 1,
            title: title.into(),
            description: body.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            author: UserRef {
                id: 5,
                username: "jdoe".into(),
            },
            author_email: Some("jane.doe@gitlab.com".into()),
            author_name: Some("Jane Doe".into()),
            web_url: String::new(),
            created_at: chrono::Utc::now(),
            updated_at: None,
            state: "opened".into(),
        };
        parse_request(&issue, &cfg()).unwrap()
    }

    fn me() -> Requester {
        Requester {
            username: "jdoe".into(),
            email: Email::parse("jane.doe@gitlab.com").ok(),
        }
    }

    const ROW: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n";

    #[test]
    fn a_light_agent_title_does_not_lower_what_a_level_needs() {
        let c = cfg();
        let r = req(
            "Jane: Zendesk Global light agent",
            &[],
            &format!("{ROW}- [ ] Zendesk Global: Support Manager\n"),
        );
        let needs = requirements(&r, &c, self_service(&r, &me(), &c), Trust::NotApplicable);
        assert_eq!(needs.required, vec!["manager", "system_owner"]);
    }

    #[test]
    fn self_service_waives_only_the_level_and_only_when_verified() {
        let c = cfg();
        let r = req("x", &[], "- [ ] Zendesk Global: Light Agent\n");
        let ss = self_service(&r, &me(), &c);
        assert_eq!(ss, SelfService::Verified);
        assert!(
            requirements(&r, &c, ss, Trust::NotApplicable)
                .required
                .is_empty()
        );
        let stranger = Requester {
            username: "jdoe".into(),
            email: None,
        };
        let ss = self_service(&r, &stranger, &c);
        assert!(matches!(ss, SelfService::Unverified(_)));
        assert_eq!(
            requirements(&r, &c, ss, Trust::NotApplicable).required,
            vec!["manager"]
        );
        // US Federal keeps what the instance requires.
        let r = req("x", &[], "- [ ] Zendesk US Federal: Light Agent\n");
        let ss = self_service(&r, &me(), &c);
        assert_eq!(
            requirements(&r, &c, ss, Trust::NotApplicable).required,
            vec!["manager", "citizenship"]
        );
    }

    #[test]
    fn tags_and_okta_groups_need_their_own_approvals() {
        let c = cfg();
        let r = req(
            "x",
            &[],
            &format!("{ROW}- [ ] Zendesk Global: light agent, add tag `partner_support_agent`\n"),
        );
        let ss = self_service(&r, &me(), &c);
        assert_eq!(ss, SelfService::NotApplicable);
        assert_eq!(
            requirements(&r, &c, ss, Trust::NotApplicable).required,
            vec!["manager"]
        );
        let r = req(
            "x",
            &[],
            &format!("{ROW}- [ ] Google Group: okta-zendeskglobal-users\n"),
        );
        let ss = self_service(&r, &me(), &c);
        assert_eq!(
            requirements(&r, &c, ss, Trust::NotApplicable).required,
            vec!["manager"]
        );
    }

    #[test]
    fn an_entitlement_keeps_verifications() {
        let c = cfg();
        let r = req(
            "Entitlement",
            &["BaselineEntitlementAR"],
            &format!("{ROW}* [ ]  `Zendesk US Federal`: `Light Agent`\n"),
        );
        let n = requirements(&r, &c, SelfService::NotApplicable, Trust::Intact);
        assert_eq!(n.required, vec!["citizenship"]);
        assert!(
            n.items[0]
                .waived
                .iter()
                .any(|w| w.approval == "manager" && w.because.contains("pre_approved"))
        );
    }
}
