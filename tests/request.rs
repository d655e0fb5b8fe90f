//! Reading issues: the example formats (snapshots), bad inputs, and
//! properties of the checklist ticker and the email parser.

mod common;

use access_bot::cli::{OutputFormat, explain};
use access_bot::render::Templates;
use access_bot::request::{
    ItemAction, RequestError, RequestKind, checklist, email::Email, parse_request,
};
use common::*;
use proptest::prelude::*;

fn plan_text(title: &str, labels: &[&str], author: &str, body: &str) -> String {
    let cfg = config();
    let t = Templates::load(None).unwrap();
    let i = issue(title, labels, user(10, author), body);
    explain(&i, &cfg, &t, OutputFormat::Text).unwrap().text
}

#[test]
fn example_a_access_request() {
    insta::assert_snapshot!(plan_text(
        "Jane Doe, Zendesk Global; Google Group okta-zendeskglobal-users, Account Executive",
        &[
            "support::to do",
            "AR-Approval::Manager Approved",
            "ReadyForProvisioning"
        ],
        "jdoe",
        &example("a_access_request.md"),
    ));
}

#[test]
fn example_b_entitlement() {
    insta::assert_snapshot!(plan_text(
        "Role-based entitlements: Sam Rivera, Support Engineer",
        &["BaselineEntitlementAR", "support::to do"],
        "gitlab-employment-bot",
        &example("b_entitlement.md"),
    ));
}

#[test]
fn example_c_offboarding() {
    insta::assert_snapshot!(plan_text(
        "Offboarding: Alex Chen",
        &["offboarding"],
        "gitlab-employment-bot",
        &example("c_offboarding.md"),
    ));
}

#[test]
fn example_kinds_subjects_and_items() {
    let cfg = config();
    let a = parse_request(
        &issue(
            "Jane Doe, Zendesk Global; Google Group okta-zendeskglobal-users, Account Executive",
            &["support::to do"],
            user(10, "jdoe"),
            &example("a_access_request.md"),
        ),
        &cfg,
    )
    .unwrap();
    assert_eq!(a.kind, RequestKind::SpecialRequest);
    assert_eq!(a.subjects[0].email.as_str(), "jane.doe@gitlab.com");
    assert_eq!(a.subjects[0].manager.as_deref(), Some("mlee"));
    assert_eq!(a.items.len(), 2);
    assert_eq!(
        a.items[0].action,
        ItemAction::Account {
            instance: "global".into(),
            level: Some("Light Agent".into()),
            add_tags: vec!["partner_support_agent".into()],
            remove_tags: vec![],
        }
    );
    assert_eq!(
        a.items[0].justification.as_deref(),
        Some("I file Partner Support internal requests for my accounts.")
    );
    assert_eq!(a.unmanaged.len(), 1);

    let c = parse_request(
        &issue(
            "Offboarding: Alex Chen",
            &["offboarding"],
            user(16, "gitlab-employment-bot"),
            &example("c_offboarding.md"),
        ),
        &cfg,
    )
    .unwrap();
    assert_eq!(c.kind, RequestKind::Offboarding);
    assert_eq!(c.items.len(), 4);
    assert!(matches!(c.items[3].action, ItemAction::GroupRemove { .. }));
    assert_eq!(c.items[3].state, checklist::CheckState::Inapplicable);
}

fn errors(title: &str, body: &str) -> Vec<RequestError> {
    let cfg = config();
    parse_request(
        &issue(title, &["support::to do"], user(10, "jdoe"), body),
        &cfg,
    )
    .unwrap_err()
}

const HEAD: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";

#[test]
fn empty_and_huge_bodies() {
    assert_eq!(errors("x", "   \n"), vec![RequestError::EmptyDescription]);
    let huge = "a".repeat(1_048_577);
    assert!(matches!(
        errors("x", &huge)[0],
        RequestError::TooLarge(1_048_577)
    ));
    // 1 MB of checklist noise is parsed without trouble.
    let big = format!(
        "{HEAD}| A B | a@gitlab.com | @ab | @mlee |\n{}",
        "- [ ] Slack: #chan\n".repeat(50_000)
    );
    assert!(big.len() > 900_000);
    // Nothing for the bot: not a request at all (and so not commented on).
    assert_eq!(errors("zendesk", &big), vec![RequestError::UnknownKind]);
}

#[test]
fn unknown_kind() {
    let cfg = config();
    let e = parse_request(&issue("x", &[], user(10, "jdoe"), "text"), &cfg).unwrap_err();
    assert_eq!(e, vec![RequestError::UnknownKind]);
}

#[test]
fn table_with_missing_columns() {
    // GitLab shows the missing cells empty, and so does the bot read them.
    let body = "| Full name | Email | Manager |\n|---|---|---|\n| Jane | jane@gitlab.com |\n\n- [ ] Zendesk Global: add tag partner_support_agent\n";
    let r = parse_request(&issue("zendesk", &[], user(10, "jdoe"), body), &config()).unwrap();
    assert_eq!(r.subjects[0].manager, None);
    // Two tables of people, or a table and `Key: value` lines, are ambiguous.
    let two = format!(
        "{HEAD}| A B | a@gitlab.com | @ab | @mlee |\n\n{HEAD}| C D | c@gitlab.com | @cd | @mlee |\n\n- [ ] Zendesk Global: add tag partner_support_agent\n"
    );
    assert!(matches!(
        errors("zendesk", &two)[0],
        RequestError::TableRow { .. }
    ));
    let mixed = format!(
        "Email: c@gitlab.com\n\n{HEAD}| A B | a@gitlab.com | @ab | @mlee |\n\n- [ ] Zendesk Global: add tag partner_support_agent\n"
    );
    assert!(matches!(
        errors("zendesk", &mixed)[0],
        RequestError::TableRow { .. }
    ));
}

#[test]
fn duplicate_subjects() {
    let body = format!(
        "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n| Jane D | JANE@gitlab.com | @jd | @mlee |\n\n- [ ] Zendesk Global: add tag partner_support_agent\n"
    );
    assert_eq!(
        errors("zendesk tag", &body),
        vec![RequestError::DuplicateSubject("jane@gitlab.com".into())]
    );
}

#[test]
fn conflicting_items() {
    let body = format!(
        "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag partner_support_agent\n- [ ] Zendesk Global: remove tag partner_support_agent\n"
    );
    assert!(matches!(
        errors("zendesk tag", &body)[0],
        RequestError::Conflict(..)
    ));
    let body = format!(
        "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    assert!(matches!(
        errors("zendesk", &body)[0],
        RequestError::Conflict(..)
    ));
}

#[test]
fn roles_outside_the_table_are_refused() {
    for ask in [
        "Admin",
        "administrator access",
        "Agent - Billing Admin",
        "owner",
    ] {
        let body = format!(
            "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: {ask}\n"
        );
        let e = errors("zendesk", &body);
        assert!(
            matches!(&e[0], RequestError::UnknownAccessLevel { .. }),
            "{ask}: {e:?}"
        );
        assert!(
            e[0].to_string().contains("Light Agent"),
            "lists what is allowed"
        );
    }
}

#[test]
fn unknown_tags_are_refused() {
    let body = format!(
        "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `vip_admins`\n"
    );
    assert!(matches!(
        errors("zendesk tag", &body)[0],
        RequestError::UnknownTag { .. }
    ));
}

#[test]
fn emails_outside_the_allowed_domains_are_refused() {
    for e in [
        "a@gitlab.com.evil.io",
        "a@evil-gitlab.com",
        "a@sub.gitlab.com",
        "a@gmail.com",
    ] {
        let body = format!(
            "{HEAD}| Jane Doe | {e} | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        );
        assert!(
            matches!(
                errors("zendesk", &body)[0],
                RequestError::DomainNotAllowed { .. }
            ),
            "{e}"
        );
    }
    for e in [
        "a@gitlab.com@evil.io",
        "a@gitlаb.com",
        "a@gitlab.com.",
        "a+x@gitlab.com",
    ] {
        let body = format!(
            "{HEAD}| Jane Doe | {e} | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        );
        assert!(
            matches!(errors("zendesk", &body)[0], RequestError::BadSubject { .. }),
            "{e}"
        );
    }
}

#[test]
fn mentions_and_markdown_in_names_are_refused_and_escaped() {
    for name in ["@all", "/close", "Jane *Doe*!", "Jane \\@all"] {
        let body = format!(
            "{HEAD}| {name} | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        );
        let e = errors("zendesk", &body);
        let shown = e[0].to_string();
        assert!(
            matches!(e[0], RequestError::BadSubject { .. }),
            "{name}: {e:?}"
        );
        // The name only ever appears inside a code span.
        assert!(shown.contains('`') && !shown.contains("`@all`@"), "{shown}");
    }
    // HTML in a row: what it shows and what it says can differ.
    for cell in ["Jane <b>", "Jane <!-- Mallory -->", "<span>Jane</span>"] {
        let body = format!(
            "{HEAD}| {cell} | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        );
        assert!(
            matches!(errors("zendesk", &body)[0], RequestError::TableRow { .. }),
            "{cell}"
        );
    }
    // A link is read as GitLab shows it: its text.
    let body = format!(
        "{HEAD}| Jane [Doe](http://evil) | jane@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
    );
    let r = parse_request(&issue("zendesk", &[], user(10, "jdoe"), &body), &config()).unwrap();
    assert_eq!(r.subjects[0].name, "Jane Doe");
}

#[test]
fn light_agent_is_self_service() {
    let cfg = config();
    let mut i = issue(
        "Zendesk light agent",
        &["support::to do"],
        user(10, "jdoe"),
        "- [ ] Zendesk Global: Light Agent\n",
    );
    i.author_email = Some("Jane.Doe@gitlab.com".into());
    let r = parse_request(&i, &cfg).unwrap();
    assert_eq!(r.kind, RequestKind::LightAgent);
    assert_eq!(r.subjects[0].email.as_str(), "jane.doe@gitlab.com");
    // Naming someone else is a light-agent request too, but not self-service:
    // it needs the manager.
    i.description = format!(
        "{HEAD}| Bo Li | bo@gitlab.com | @bli | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
    );
    let r = parse_request(&i, &cfg).unwrap();
    assert_eq!(r.kind, RequestKind::LightAgent);
    let me = access_bot::policy::Requester {
        username: "jdoe".into(),
        email: access_bot::request::Email::parse("jane.doe@gitlab.com").ok(),
    };
    let ss = access_bot::policy::self_service(&r, &me, &cfg);
    assert!(matches!(ss, access_bot::policy::SelfService::Unverified(_)));
    assert_eq!(
        access_bot::policy::requirements(&r, &cfg, ss, access_bot::policy::Trust::NotApplicable)
            .required,
        vec!["manager"]
    );
    // Without a table and without the author's e-mail, nobody can be named.
    i.description = "- [ ] Zendesk Global: Light Agent\n".into();
    i.author_email = None;
    assert!(matches!(
        parse_request(&i, &cfg).unwrap_err()[0],
        RequestError::AuthorUnknown { .. }
    ));
}

#[test]
fn expiry_date_and_duration() {
    let cfg = config();
    let body = format!(
        "{HEAD}| Jane Doe | jane@gitlab.com | @jdoe | @mlee |\n\nExpires: 2026-12-31\n\n- [ ] Zendesk Global: add tag partner_support_agent\n"
    );
    let r = parse_request(
        &issue("zendesk tag", &["support::to do"], user(10, "jdoe"), &body),
        &cfg,
    )
    .unwrap();
    assert_eq!(r.expires.unwrap().0.to_string(), "2026-12-31");
    let body = body.replace("2026-12-31", "30d");
    let r = parse_request(
        &issue("zendesk tag", &["support::to do"], user(10, "jdoe"), &body),
        &cfg,
    )
    .unwrap();
    assert_eq!(r.expires.unwrap().0.to_string(), "2026-12-02");
    let body = body.replace("30d", "tomorrow-ish");
    assert!(matches!(
        parse_request(
            &issue("zendesk tag", &["support::to do"], user(10, "jdoe"), &body),
            &cfg
        )
        .unwrap_err()[0],
        RequestError::Expiry(_)
    ));
}

#[test]
fn digest_covers_the_bots_ticks_but_not_other_systems() {
    let cfg = config();
    let a = example("a_access_request.md");
    let d0 = parse_request(
        &issue("zendesk", &["support::to do"], user(10, "jdoe"), &a),
        &cfg,
    )
    .unwrap()
    .digest();
    let other = a.replacen("- [ ] Slack", "- [x] Slack", 1);
    let d1 = parse_request(
        &issue("zendesk", &["support::to do"], user(10, "jdoe"), &other),
        &cfg,
    )
    .unwrap()
    .digest();
    assert_eq!(d0, d1, "another system's tick is not the bot's business");
    let ours = a.replacen("- [ ] Google", "- [x] Google", 1);
    let d_ours = parse_request(
        &issue("zendesk", &["support::to do"], user(10, "jdoe"), &ours),
        &cfg,
    )
    .unwrap()
    .digest();
    assert_ne!(d0, d_ours, "a ticked bot item is one the plan leaves alone");
    let changed = a.replace("light agent, add tag", "Agent - Support Engineer, add tag");
    let d2 = parse_request(
        &issue("zendesk", &["support::to do"], user(10, "jdoe"), &changed),
        &cfg,
    )
    .unwrap()
    .digest();
    assert_ne!(d0, d2);
}

// ---- properties ----

fn line_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop_oneof![Just("- "), Just("* "), Just("+ "), Just("1. "), Just("2) ")],
            prop_oneof![Just("[ ]"), Just("[x]"), Just("[X]"), Just("[~]")],
            "[a-zA-Z0-9 `:@_.é|]{1,20}"
        )
            .prop_map(|(m, b, t)| format!("{m}{b} {t}")),
        "[ -~é]{0,30}",
        Just("```".to_string()),
        Just("> - [ ] quoted".to_string()),
        Just("  - [ ] nested".to_string()),
        Just("<!-- - [ ] hidden -->".to_string()),
    ]
}

proptest! {
    #[test]
    fn ticking_changes_exactly_the_targeted_brackets(
        lines in proptest::collection::vec(line_strategy(), 0..30),
        crlf in any::<bool>(),
        pick in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let text = lines.join(nl);
        let items = checklist::parse(&text);
        let open: Vec<_> = items.iter().filter(|i| i.state == checklist::CheckState::Open).collect();
        let targets: Vec<usize> = if open.is_empty() { vec![] } else {
            pick.iter().map(|p| open[p.index(open.len())].index).collect()
        };
        let ticked = checklist::tick(&text, &targets).unwrap();
        prop_assert_eq!(ticked.len(), text.len());
        let changed: Vec<usize> = text.bytes().zip(ticked.bytes()).enumerate()
            .filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
        let mut expected: Vec<usize> = targets.iter().map(|t| items[*t].state_offset).collect();
        expected.sort();
        expected.dedup();
        prop_assert_eq!(changed, expected);
        // Ticking again is a no-op; the parse sees the same items, now done.
        prop_assert_eq!(checklist::tick(&ticked, &targets).unwrap(), ticked.clone());
        let after = checklist::parse(&ticked);
        prop_assert_eq!(after.len(), items.len());
        for t in &targets {
            prop_assert_eq!(after[*t].state, checklist::CheckState::Done);
        }
    }

    #[test]
    fn parser_never_panics(text in "\\PC{0,400}") {
        let items = checklist::parse(&text);
        for i in &items {
            prop_assert!(matches!(&text.as_bytes()[i.state_offset], b' ' | b'\t' | b'x' | b'X' | b'~'));
        }
    }

    #[test]
    fn parsed_emails_are_plain(s in "\\PC{0,60}") {
        if let Ok(e) = Email::parse(&s) {
            let v = e.as_str();
            prop_assert_eq!(v.matches('@').count(), 1);
            prop_assert!(v.is_ascii());
            prop_assert!(!v.ends_with('.'));
            prop_assert!(!v.contains('+'));
            prop_assert!(!v.contains(' '));
        }
    }

    #[test]
    fn domain_check_is_exact(local in "[a-z]{1,8}", prefix in "[a-z]{0,6}", suffix in "[a-z.]{0,8}") {
        let allowed = vec!["gitlab.com".to_string()];
        let domain = format!("{prefix}gitlab.com{suffix}");
        if let Ok(e) = Email::parse(&format!("{local}@{domain}")) {
            prop_assert_eq!(e.domain_allowed(&allowed), domain == "gitlab.com");
        }
    }
}

#[test]
fn plan_explains_every_demo_issue() {
    let cfg = config();
    let t = Templates::load(None).unwrap();
    for (name, author, title, labels, body) in access_bot::demo::bodies() {
        let mut i = issue(title, &labels, user(10, author), &body);
        i.author_email = access_bot::sandbox::PEOPLE
            .iter()
            .find(|p| p.0 == author)
            .map(|p| p.2.to_string());
        let e = explain(&i, &cfg, &t, OutputFormat::Text).unwrap();
        assert!(e.actionable, "{name}: {}", e.text);
        assert!(e.text.contains("access-bot plan"), "{name}");
        let json = explain(&i, &cfg, &t, OutputFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json.text).unwrap();
        assert!(
            !v["plan"]["steps"].as_array().unwrap().is_empty()
                || !v["plan"]["blocked"].as_array().unwrap().is_empty(),
            "{name}"
        );
    }
}
