//! Markdown-aware task-list parsing and byte-exact ticking.
//!
//! Block structure (lists, code blocks, block quotes, HTML blocks) comes from a
//! CommonMark parser so that an item inside a fenced or indented code block, a
//! block quote or an HTML comment never counts. The checkbox itself is read from
//! the raw bytes, because GitLab's `[~]` state is not part of CommonMark.
//!
//! Deliberate difference from GitLab: GitLab counts items inside block quotes;
//! we ignore them, because a quoted checklist is someone citing text, not asking.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// The state between the brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Open,
    Done,
    /// `[~]`: not applicable. Never ticked, never counted.
    Inapplicable,
}

/// One task-list item as found in the source text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChecklistItem {
    /// Position among all items of the document (0-based).
    pub index: usize,
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the state character between the brackets.
    pub state_offset: usize,
    pub state: CheckState,
    /// Nesting depth (0 for top-level list items).
    pub depth: usize,
    /// The item's first-line text after the checkbox, trimmed, as written.
    pub text: String,
    /// The item's own paragraph as GitLab shows it: Markdown emphasis and link
    /// targets dropped, code spans kept in backticks, lines joined. Meaning is
    /// read from this, never from text a reader cannot see.
    pub visible: String,
    /// The item holds raw HTML (a comment, a tag): what it shows and what it
    /// says can differ, so the bot does not act on it.
    pub has_html: bool,
    /// The nearest heading (or bold "step" line) above the item.
    pub section: Option<String>,
    /// The text of a directly following plain item that starts with "Justification".
    pub justification: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TickError {
    #[error("checklist item {0:?} is not in the description any more")]
    Missing(String),
    #[error("checklist item {0:?} is marked not applicable ([~]) and is left alone")]
    Inapplicable(String),
}

/// Parse every task-list item that GitLab would render as a checkbox, minus
/// those inside block quotes.
pub fn parse(text: &str) -> Vec<ChecklistItem> {
    let mut items: Vec<ChecklistItem> = Vec::new();
    let mut quote_depth = 0usize;
    let mut code_depth = 0usize;
    let mut list_item_depth = 0usize;
    let mut heading: Option<(usize, String)> = None; // (start offset, text so far)
    let mut section: Option<String> = None;
    let mut strong_para: Option<String> = None;
    let mut in_paragraph_start = false;
    // A plain (non-task) item directly after a task item may carry its justification.
    let mut last_task_item: Option<usize> = None;
    // The task item whose own text is being collected, and the list depth it lives at.
    let mut collecting: Option<(usize, usize)> = None;

    let line_starts = line_starts(text);
    for (event, range) in Parser::new_ext(text, Options::empty()).into_offset_iter() {
        match event {
            Event::Start(Tag::BlockQuote(_)) => quote_depth += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote_depth = quote_depth.saturating_sub(1),
            Event::Start(Tag::CodeBlock(_)) => code_depth += 1,
            Event::End(TagEnd::CodeBlock) => code_depth = code_depth.saturating_sub(1),
            Event::Start(Tag::Heading { level, .. }) => {
                heading = Some((range.start, String::new()));
                let _ = level == HeadingLevel::H1;
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((_, t)) = heading.take() {
                    section = Some(t.trim().to_string());
                }
                last_task_item = None;
            }
            Event::Start(Tag::Paragraph) => {
                in_paragraph_start = list_item_depth == 0;
                strong_para = None;
            }
            Event::End(TagEnd::Paragraph) => {
                // A paragraph that is a single bold line acts as a step title.
                if let Some(t) = strong_para.take() {
                    section = Some(t.trim().to_string());
                }
                in_paragraph_start = false;
            }
            Event::Start(Tag::Strong) if in_paragraph_start => {
                strong_para = Some(String::new());
            }
            // A nested list ends the parent item's own text.
            Event::Start(Tag::List(_)) if collecting.is_some_and(|(_, d)| list_item_depth > d) => {
                collecting = None;
            }
            Event::Code(t) if collecting.is_some() => {
                if let Some((i, _)) = collecting {
                    items[i].visible.push('`');
                    items[i].visible.push_str(&t);
                    items[i].visible.push('`');
                }
            }
            Event::Text(t) if collecting.is_some() => {
                if let Some((i, _)) = collecting {
                    items[i].visible.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak if collecting.is_some() => {
                if let Some((i, _)) = collecting {
                    items[i].visible.push(' ');
                }
            }
            Event::InlineHtml(_)
            | Event::Html(_)
            | Event::InlineMath(_)
            | Event::DisplayMath(_)
                if collecting.is_some() =>
            {
                if let Some((i, _)) = collecting {
                    items[i].has_html = true;
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, h)) = heading.as_mut() {
                    h.push_str(&t);
                } else if let Some(s) = strong_para.as_mut() {
                    s.push_str(&t);
                }
            }
            Event::End(TagEnd::Strong) => {
                in_paragraph_start = false;
            }
            Event::Start(Tag::Item) => {
                let depth = list_item_depth;
                list_item_depth += 1;
                strong_para = None;
                if quote_depth > 0 || code_depth > 0 {
                    continue;
                }
                match task_at(text, range.start) {
                    Some((state_offset, state, item_text)) => {
                        let line = line_of(&line_starts, range.start);
                        items.push(ChecklistItem {
                            index: items.len(),
                            line,
                            state_offset,
                            state,
                            depth,
                            text: item_text,
                            visible: String::new(),
                            has_html: false,
                            section: section.clone(),
                            justification: None,
                        });
                        last_task_item = Some(items.len() - 1);
                        collecting = Some((items.len() - 1, list_item_depth));
                    }
                    None => {
                        if let Some(i) = last_task_item.take() {
                            let plain = item_first_line(text, range.start);
                            if plain.to_ascii_lowercase().starts_with("justification") {
                                let value = plain
                                    .split_once(':')
                                    .map(|(_, v)| v.trim().to_string())
                                    .unwrap_or_default();
                                items[i].justification = Some(value);
                            }
                        }
                    }
                }
            }
            Event::End(TagEnd::Item) => {
                if collecting.is_some_and(|(_, d)| d == list_item_depth) {
                    collecting = None;
                }
                list_item_depth = list_item_depth.saturating_sub(1);
            }
            _ => {}
        }
    }
    for it in &mut items {
        it.visible = visible_text(&it.visible);
    }
    items
}

/// The collected text minus the checkbox, whitespace collapsed.
fn visible_text(collected: &str) -> String {
    let t = collected.trim_start();
    let t = ["[ ]", "[\t]", "[x]", "[X]", "[~]"]
        .iter()
        .find_map(|b| t.strip_prefix(b))
        .unwrap_or(t);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Set the given items to done. Returns the new text, in which exactly the
/// state bytes of the targeted open items changed; already ticked items are a
/// no-op. Items are identified by their index in `parse(text)`.
pub fn tick(text: &str, indices: &[usize]) -> Result<String, TickError> {
    let items = parse(text);
    let mut bytes = text.as_bytes().to_vec();
    for &i in indices {
        let item = items
            .get(i)
            .ok_or_else(|| TickError::Missing(format!("#{i}")))?;
        match item.state {
            CheckState::Done => {}
            CheckState::Inapplicable => return Err(TickError::Inapplicable(item.text.clone())),
            CheckState::Open => bytes[item.state_offset] = b'x',
        }
    }
    // Only ASCII bytes were replaced by ASCII, so this cannot fail; keep it total anyway.
    String::from_utf8(bytes).map_err(|_| TickError::Missing("utf-8".into()))
}

/// Find the item with this exact text (the n-th occurrence), as the plan recorded it.
pub fn find<'a>(
    items: &'a [ChecklistItem],
    text: &str,
    occurrence: usize,
) -> Option<&'a ChecklistItem> {
    items.iter().filter(|i| i.text == text).nth(occurrence)
}

/// Counts as GitLab's `task_completion_status` does: `[~]` is not counted.
/// (GitLab also counts quoted items; we compare only where no quotes hold items.)
pub fn completion(items: &[ChecklistItem]) -> (usize, usize) {
    let counted: Vec<_> = items
        .iter()
        .filter(|i| i.state != CheckState::Inapplicable)
        .collect();
    let done = counted
        .iter()
        .filter(|i| i.state == CheckState::Done)
        .count();
    (counted.len(), done)
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn line_of(starts: &[usize], offset: usize) -> usize {
    match starts.binary_search(&offset) {
        Ok(i) => i + 1,
        Err(i) => i,
    }
}

fn item_first_line(text: &str, start: usize) -> String {
    let rest = &text[start..];
    let line = rest.split('\n').next().unwrap_or("").trim_end_matches('\r');
    let after_marker = skip_marker(line).unwrap_or(line);
    after_marker.trim().to_string()
}

/// Skip a list marker (`-`, `*`, `+`, `1.`, `1)`) and the whitespace after it.
fn skip_marker(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let mut i = 0;
    match b.first()? {
        b'-' | b'*' | b'+' => i = 1,
        b'0'..=b'9' => {
            while i < b.len() && i < 9 && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'.' || b[i] == b')') {
                i += 1;
            } else {
                return None;
            }
        }
        _ => return None,
    }
    let ws = b[i..]
        .iter()
        .take_while(|c| **c == b' ' || **c == b'\t')
        .count();
    if ws == 0 && i < b.len() {
        return None;
    }
    Some(&line[i + ws..])
}

/// If the list item starting at `start` is a task item, return the offset of
/// its state byte, the state and the text after the checkbox.
fn task_at(text: &str, start: usize) -> Option<(usize, CheckState, String)> {
    let line_end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let line = text[start..line_end].trim_end_matches('\r');
    let rest = skip_marker(line)?;
    let rest_offset = start + (line.len() - rest.len());
    let rb = rest.as_bytes();
    if rb.len() < 3 || rb[0] != b'[' || rb[2] != b']' {
        return None;
    }
    let state = match rb[1] {
        b' ' | b'\t' => CheckState::Open,
        b'x' | b'X' => CheckState::Done,
        b'~' => CheckState::Inapplicable,
        _ => return None,
    };
    // GitLab needs whitespace and some text after the checkbox.
    let after = &rest[3..];
    if !after.starts_with([' ', '\t']) || after.trim().is_empty() {
        return None;
    }
    Some((rest_offset + 1, state, after.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(md: &str) -> Vec<(String, CheckState)> {
        parse(md).into_iter().map(|i| (i.text, i.state)).collect()
    }

    #[test]
    fn all_markers_and_states() {
        let md = "- [ ] a\n* [x] b\n+ [X] c\n1. [ ] d\n2) [~] e\n";
        assert_eq!(
            texts(md),
            vec![
                ("a".into(), CheckState::Open),
                ("b".into(), CheckState::Done),
                ("c".into(), CheckState::Done),
                ("d".into(), CheckState::Open),
                ("e".into(), CheckState::Inapplicable),
            ]
        );
    }

    #[test]
    fn visible_text_is_what_gitlab_shows() {
        let md = "- [ ] Zendesk **Global**: [Light Agent](http://x) `tag`\n  continued\n  - [ ] child\n- [x] a <!-- hidden --> b\n";
        let items = parse(md);
        assert_eq!(
            items[0].visible,
            "Zendesk Global: Light Agent `tag` continued"
        );
        assert!(!items[0].has_html);
        assert_eq!(items[1].visible, "child");
        assert_eq!(items[2].visible, "a b");
        assert!(items[2].has_html);
        assert_eq!(items[2].text, "a <!-- hidden --> b");
    }

    #[test]
    fn ignores_code_quotes_and_comments() {
        let md = "```\n- [ ] fenced\n```\n\n~~~md\n- [ ] tilde\n~~~\n\nparagraph\n\n    - [ ] indented code\n\n> - [ ] quoted\n\n<!--\n- [ ] commented\n-->\n\n- [ ] real\n";
        assert_eq!(texts(md), vec![("real".into(), CheckState::Open)]);
    }

    #[test]
    fn nested_and_crlf() {
        let md = "- [ ] parent\r\n  - [x] child\r\n    - [ ] grandchild\r\n";
        let items = parse(md);
        assert_eq!(items.len(), 3);
        assert_eq!(items.iter().map(|i| i.depth).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(items[1].text, "child");
        let ticked = tick(md, &[0, 2]).unwrap();
        assert_eq!(
            ticked,
            "- [x] parent\r\n  - [x] child\r\n    - [x] grandchild\r\n"
        );
    }

    #[test]
    fn not_tasks() {
        // No text after the box, no space after the box, no space after the marker.
        let md = "- [ ] \n- [ ]x\n-[ ] y\n- [?] z\n- plain\n";
        assert!(parse(md).is_empty());
    }

    #[test]
    fn sections_and_justifications() {
        let md = "## Step 2. Access Request\n\n- [ ] Zendesk Global: Light Agent\n- Justification for this access: I file requests.\n- [ ] Other: x\n\n#### Support to-do:\n* [ ]  `Zendesk Global`: `Agent`\n\n**Step 3. Extra**\n\n- [ ] Thing: y\n";
        let items = parse(md);
        assert_eq!(items[0].section.as_deref(), Some("Step 2. Access Request"));
        assert_eq!(items[0].justification.as_deref(), Some("I file requests."));
        assert_eq!(items[1].justification, None);
        assert_eq!(items[2].section.as_deref(), Some("Support to-do:"));
        assert_eq!(items[2].text, "`Zendesk Global`: `Agent`");
        assert_eq!(items[3].section.as_deref(), Some("Step 3. Extra"));
    }

    #[test]
    fn tick_is_a_noop_on_done_and_refuses_inapplicable() {
        let md = "- [x] a\n- [~] b\n";
        assert_eq!(tick(md, &[0]).unwrap(), md);
        assert!(matches!(tick(md, &[1]), Err(TickError::Inapplicable(_))));
        assert!(matches!(tick(md, &[5]), Err(TickError::Missing(_))));
    }

    #[test]
    fn completion_ignores_inapplicable() {
        let items = parse("- [x] a\n- [ ] b\n- [~] c\n");
        assert_eq!(completion(&items), (2, 1));
    }

    #[test]
    fn two_spaces_after_bracket_are_kept() {
        let md = "- [ ]  @a @b: Remove the team member from Zendesk Global\n";
        assert_eq!(
            tick(md, &[0]).unwrap(),
            "- [x]  @a @b: Remove the team member from Zendesk Global\n"
        );
    }
}
