//! The facts about an issue the core decides on, as plain data. The GitLab
//! adapter fills these from the API; tests and `plan --body-file` fill them by hand.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: u64,
    pub username: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueInput {
    pub iid: u64,
    pub title: String,
    pub description: String,
    pub labels: Vec<String>,
    pub author: UserRef,
    /// The author's email as GitLab knows it (for self-service light-agent requests).
    #[serde(default)]
    pub author_email: Option<String>,
    /// The author's display name in GitLab (ditto).
    #[serde(default)]
    pub author_name: Option<String>,
    #[serde(default)]
    pub web_url: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default = "opened")]
    pub state: String,
}

fn opened() -> String {
    "opened".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelAction {
    Add,
    Remove,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelEvent {
    pub id: u64,
    pub user: UserRef,
    pub created_at: DateTime<Utc>,
    /// `None` when the label was deleted since. Its current name: a label can
    /// be renamed, so decisions compare `label_id` where they can.
    pub label: Option<String>,
    /// The label's id, which stays the same when it is renamed.
    #[serde(default)]
    pub label_id: Option<u64>,
    pub action: LabelAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub id: u64,
    pub author: UserRef,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub system: bool,
}

impl Note {
    /// A system note recording a change of the description: a text edit, or a
    /// toggled checkbox (which GitLab writes *instead of* "changed the description").
    pub fn is_description_change(&self) -> bool {
        self.system
            && (self.body.starts_with("changed the description")
                || self.body.starts_with("marked the checklist item"))
    }

    pub fn is_text_edit(&self) -> bool {
        self.system && self.body.starts_with("changed the description")
    }
}

/// Everything the approval decision reads about one issue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueFacts {
    pub issue: IssueInput,
    pub label_events: Vec<LabelEvent>,
    pub notes: Vec<Note>,
}

/// A person as the company directory knows them (plain data; the directory
/// adapter fills it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub primary: super::Email,
    pub active: bool,
    pub manager: Option<super::Email>,
}
