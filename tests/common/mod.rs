#![allow(dead_code)]
//! Shared helpers for the integration tests.

pub mod tester;

use std::path::Path;

use access_bot::config::Config;
use access_bot::request::{IssueFacts, IssueInput, LabelAction, LabelEvent, Note, UserRef};
use chrono::{DateTime, Duration, TimeZone, Utc};

pub fn config() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("bot.toml")).unwrap()
}

pub fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/issues")
            .join(name),
    )
    .unwrap()
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

pub fn at(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

pub fn user(id: u64, name: &str) -> UserRef {
    UserRef {
        id,
        username: name.into(),
    }
}

pub const BOT: u64 = 1;

pub fn issue(title: &str, labels: &[&str], author: UserRef, body: &str) -> IssueInput {
    IssueInput {
        iid: 42,
        title: title.into(),
        description: body.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        author,
        author_email: None,
        author_name: None,
        web_url: "https://gitlab.example/x/-/issues/42".into(),
        created_at: t0(),
        updated_at: None,
        state: "opened".into(),
    }
}

pub struct Facts {
    pub facts: IssueFacts,
    next_id: u64,
}

impl Facts {
    pub fn new(issue: IssueInput) -> Facts {
        Facts {
            facts: IssueFacts {
                issue,
                label_events: vec![],
                notes: vec![],
            },
            next_id: 100,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn label(&mut self, by: UserRef, label: &str, minute: i64) -> &mut Self {
        let id = self.id();
        self.facts.label_events.push(LabelEvent {
            id,
            user: by,
            created_at: at(minute),
            label: Some(label.into()),
            label_id: None,
            action: LabelAction::Add,
        });
        if !self.facts.issue.labels.iter().any(|l| l == label) {
            self.facts.issue.labels.push(label.into());
        }
        self
    }

    pub fn unlabel(&mut self, by: UserRef, label: &str, minute: i64) -> &mut Self {
        let id = self.id();
        self.facts.label_events.push(LabelEvent {
            id,
            user: by,
            created_at: at(minute),
            label: Some(label.into()),
            label_id: None,
            action: LabelAction::Remove,
        });
        self.facts.issue.labels.retain(|l| l != label);
        self
    }

    pub fn note(&mut self, by: UserRef, body: &str, system: bool, minute: i64) -> &mut Self {
        let id = self.id();
        self.facts.notes.push(Note {
            id,
            author: by,
            body: body.into(),
            created_at: at(minute),
            system,
        });
        self
    }
}
