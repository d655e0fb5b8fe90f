//! Offboarding: "Delete any Support Team files attached to the
//! user (if applicable)". For each leaver the bot opens one merge request
//! deleting their file in the Support Team repository, links it on the
//! offboarding issue, and ticks the issue's item once the request is merged.

use crate::comment;
use crate::config::SupportTeamConfig;
use crate::gitlab::NewMergeRequest;
use crate::marker::short_hash;
use crate::request::Request;
use crate::request::checklist::{self, CheckState};
use crate::store::SupportMr;

use super::process::ProcessError;
use super::writeback::{Section, Ticks, Writeback};
use super::{Bot, Outcome};

fn branch_for(username: &str) -> String {
    format!("access-bot/offboard-{username}")
}

impl Bot {
    /// After an offboarding's Zendesk and Google work: one merge request per
    /// leaver with a file, or a note that there is none. Idempotent: the store
    /// is a cache, and GitLab is asked (a merge request from the branch in any
    /// state, the branch) before anything is created, so a crash anywhere, or
    /// a lost store, ends in one branch, one merge request and one comment.
    /// `Ok(Some(error))`: the repository refused; said on the issue, retried.
    pub(super) async fn support_team_files(
        &self,
        project: &str,
        req: &Request,
        wb: &mut Writeback,
    ) -> Result<Option<String>, ProcessError> {
        let Some(st) = self.cfg.support_team.clone() else {
            return Ok(None);
        };
        for s in &req.subjects {
            let Some(username) = s.gitlab_username.clone() else {
                continue;
            };
            let path = st.path.replace("{username}", &username);
            let row = match self.store.support_mr(project, req.iid, &username)? {
                Some(r) => r,
                None => {
                    match self
                        .open_support_mr(project, req, &st, &username, &path)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let text = e.to_string();
                            wb.sections.push(Section {
                                comment: comment::SupportTeam::Failed {
                                    path: path.clone(),
                                    repo: st.project.clone(),
                                    error: text.clone(),
                                }
                                .into(),
                                key: format!(
                                    "support-team:failed:{username}:{}",
                                    short_hash(&text)
                                ),
                            });
                            self.tell_ops(
                            crate::notify::NoticeKind::StepFailed,
                            format!("support team {}: {text}", st.project),
                            format!("#{}: cannot open the merge request deleting {path} in {}: {text}", req.iid, st.project),
                            Some(req.web_url.clone()),
                        )
                        .await;
                            return Ok(Some(text));
                        }
                    }
                }
            };
            let (repo, url) = (st.project.clone(), row.mr_url.clone());
            let (comment, key) = match row.state.as_str() {
                "none" => (
                    comment::SupportTeam::NoFile { path, repo },
                    format!("support-team:none:{username}"),
                ),
                _ => (
                    comment::SupportTeam::Opened { path, repo, url },
                    format!("support-team:mr:{username}"),
                ),
            };
            wb.sections.push(Section {
                comment: comment.into(),
                key,
            });
        }
        Ok(None)
    }

    async fn open_support_mr(
        &self,
        project: &str,
        req: &Request,
        st: &SupportTeamConfig,
        username: &str,
        path: &str,
    ) -> Result<SupportMr, ProcessError> {
        let branch = branch_for(username);
        let mut row = SupportMr {
            project: project.to_string(),
            iid: req.iid,
            username: username.to_string(),
            state: "none".into(),
            mr_iid: None,
            mr_url: None,
        };
        // Any merge request from the branch, whatever its state: one closed
        // unmerged was a person's decision, not a reason to open another (and
        // after losing the store, this is how the bot finds its own again).
        let mut from_branch = self
            .gitlab
            .merge_requests_from(&st.project, &branch)
            .await?;
        from_branch.sort_by_key(|m| (m.state == "closed", std::cmp::Reverse(m.iid)));
        let existing = from_branch.into_iter().next();
        let mr = match existing {
            Some(m) => m,
            None => {
                if !self.gitlab.branch_exists(&st.project, &branch).await? {
                    if !self
                        .gitlab
                        .file_exists(&st.project, path, &st.target_branch)
                        .await?
                    {
                        self.store.set_support_mr(&row)?;
                        return Ok(row);
                    }
                    self.gitlab
                        .delete_file(
                            &st.project,
                            path,
                            &branch,
                            &st.target_branch,
                            &format!(
                                "Remove {path}: {username} was offboarded\n\n{}",
                                req.web_url
                            ),
                        )
                        .await?;
                }
                let mut reviewer_ids = Vec::new();
                for r in &st.reviewers {
                    if let Some(u) = self.user(r).await {
                        reviewer_ids.push(u.id);
                    }
                }
                let description = self.templates.text(&comment::SupportTeamMr {
                    path: path.to_string(),
                    username: username.to_string(),
                    issue_url: req.web_url.clone(),
                })?;
                self.gitlab
                    .create_merge_request(
                        &st.project,
                        &NewMergeRequest {
                            source_branch: branch.clone(),
                            target_branch: st.target_branch.clone(),
                            title: format!("Remove {path} (offboarding)"),
                            description,
                            reviewer_ids,
                        },
                    )
                    .await?
            }
        };
        row.state = if mr.state == "merged" {
            "merged"
        } else {
            "open"
        }
        .into();
        row.mr_iid = Some(mr.iid);
        row.mr_url = Some(mr.web_url);
        self.store.set_support_mr(&row)?;
        if row.state == "merged" {
            // Merged before we recorded it (a crash): the follow-up ticks it.
            row.state = "open".into();
            self.store.set_support_mr(&row)?;
        }
        tracing::info!(iid = req.iid, username, mr = ?row.mr_iid, "Support Team merge request open");
        Ok(row)
    }

    /// The merge-request follow-ups (every `check_every`): merged requests
    /// tick their item on the offboarding issue and say so; closed ones say
    /// the file stays.
    pub(super) async fn support_team_followups(&self) -> Vec<(String, u64, Outcome)> {
        let Some(st) = self.cfg.support_team.clone() else {
            return Vec::new();
        };
        let rows = match self.store.open_support_mrs() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the open Support Team merge requests");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for row in rows.into_iter().filter(|r| self.may_write(&r.project)) {
            // Not while a task of this process works on the issue: next time.
            let Some(_claim) =
                super::process::InFlight::enter(&self.in_flight, &row.project, row.iid)
            else {
                continue;
            };
            let span = tracing::info_span!("issue", iid = row.iid, project = %row.project);
            let o = tracing::Instrument::instrument(self.follow_up(&st, &row), span).await;
            match o {
                Ok(Some(o)) => out.push((row.project.clone(), row.iid, o)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(iid = row.iid, error = %e, "Support Team follow-up failed; next time");
                    out.push((row.project.clone(), row.iid, Outcome::Failed(e.to_string())));
                }
            }
        }
        out
    }

    async fn follow_up(
        &self,
        st: &SupportTeamConfig,
        row: &SupportMr,
    ) -> Result<Option<Outcome>, ProcessError> {
        let Some(mr_iid) = row.mr_iid else {
            return Ok(None);
        };
        let mr = self.gitlab.merge_request(&st.project, mr_iid).await?;
        let kind = match mr.state.as_str() {
            "merged" => "merged",
            "closed" => "closed",
            _ => return Ok(None),
        };
        let issue = self.gitlab.issue(&row.project, row.iid).await?;
        let facts = self.notes_only(&row.project, &issue).await?;
        let mut wb = Writeback::default();
        if kind == "merged" {
            let wanted = st.item.to_lowercase();
            let items = checklist::parse(issue.description.as_deref().unwrap_or(""));
            if let Some(item) = items
                .iter()
                .find(|i| i.state == CheckState::Open && i.text.to_lowercase().contains(&wanted))
            {
                let n = items
                    .iter()
                    .filter(|i| i.text == item.text && i.index < item.index)
                    .count();
                wb.ticks = Ticks::ByText(vec![(item.text.clone(), n)]);
            }
        }
        let path = st.path.replace("{username}", &row.username);
        wb.sections.push(Section {
            comment: match kind {
                "merged" => comment::SupportTeam::Merged {
                    path,
                    url: row.mr_url.clone(),
                },
                _ => comment::SupportTeam::Closed {
                    path,
                    repo: st.project.clone(),
                    url: row.mr_url.clone(),
                },
            }
            .into(),
            key: format!("support-team:{kind}:{}", row.username),
        });
        let history = self.history(&row.project, &facts).await;
        self.write_back(&row.project, &issue, &history, wb).await?;
        self.store.set_support_mr(&SupportMr {
            state: kind.into(),
            ..row.clone()
        })?;
        Ok(Some(Outcome::Done))
    }
}
