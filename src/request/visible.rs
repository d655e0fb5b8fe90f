//! What a reader of the rendered issue sees, outside checklists: tables and
//! plain lines. Read with the same rules as the checklist: nothing inside code
//! (fenced or indented), block quotes, HTML blocks or HTML comments counts, and
//! inline HTML is flagged, because what it shows and what it says can differ.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// A Markdown table as rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub line: usize,
    pub header: Vec<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub cells: Vec<String>,
    /// A cell holds inline HTML.
    pub has_html: bool,
}

/// A line of a paragraph or of a plain (non-task) list item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line: usize,
    pub text: String,
    pub has_html: bool,
}

#[derive(Debug, Default)]
pub struct Visible {
    pub tables: Vec<Table>,
    pub lines: Vec<Line>,
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

/// Read the tables and plain lines of a description.
pub fn read(text: &str) -> Visible {
    let starts = line_starts(text);
    let mut out = Visible::default();
    let mut hidden = 0usize; // inside a quote, code block or HTML block
    let mut table: Option<Table> = None;
    let mut row: Option<Row> = None;
    let mut cell: Option<String> = None;
    let mut in_head = false;
    // The line being collected in a paragraph.
    let mut para: Option<Line> = None;
    let mut task_item_depth: Vec<bool> = Vec::new();

    let flush = |para: &mut Option<Line>, out: &mut Visible| {
        if let Some(l) = para.take() {
            let t = l.text.split_whitespace().collect::<Vec<_>>().join(" ");
            if !t.is_empty() {
                out.lines.push(Line { text: t, ..l });
            }
        }
    };

    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::BlockQuote(_) | Tag::CodeBlock(_) | Tag::HtmlBlock) => hidden += 1,
            Event::End(TagEnd::BlockQuote(_) | TagEnd::CodeBlock | TagEnd::HtmlBlock) => {
                hidden = hidden.saturating_sub(1)
            }
            _ if hidden > 0 => {}
            Event::Start(Tag::Item) => {
                let line = text[range.start..].lines().next().unwrap_or("");
                let after = line
                    .trim_start()
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .trim_start_matches(['-', '*', '+', '.', ')'])
                    .trim_start();
                let task = after.starts_with("[ ]")
                    || after.starts_with("[x]")
                    || after.starts_with("[X]")
                    || after.starts_with("[~]");
                task_item_depth.push(task);
                // Items of a tight list carry their text without a paragraph.
                flush(&mut para, &mut out);
                if !task {
                    para = Some(Line {
                        line: line_of(&starts, range.start),
                        text: String::new(),
                        has_html: false,
                    });
                }
            }
            Event::End(TagEnd::Item) => {
                flush(&mut para, &mut out);
                task_item_depth.pop();
            }
            Event::Start(Tag::List(_)) => flush(&mut para, &mut out),
            Event::Start(Tag::Table(_)) => {
                table = Some(Table {
                    line: line_of(&starts, range.start),
                    header: Vec::new(),
                    rows: Vec::new(),
                })
            }
            Event::End(TagEnd::Table) => out.tables.extend(table.take()),
            Event::Start(Tag::TableHead) => {
                in_head = true;
                row = Some(Row {
                    line: line_of(&starts, range.start),
                    cells: Vec::new(),
                    has_html: false,
                });
            }
            Event::End(TagEnd::TableHead) => {
                in_head = false;
                if let (Some(t), Some(r)) = (table.as_mut(), row.take()) {
                    t.header = r.cells;
                }
            }
            Event::Start(Tag::TableRow) => {
                row = Some(Row {
                    line: line_of(&starts, range.start),
                    cells: Vec::new(),
                    has_html: false,
                })
            }
            Event::End(TagEnd::TableRow) if !in_head => {
                if let (Some(t), Some(r)) = (table.as_mut(), row.take()) {
                    t.rows.push(r);
                }
            }
            Event::Start(Tag::TableCell) => cell = Some(String::new()),
            Event::End(TagEnd::TableCell) => {
                if let (Some(r), Some(c)) = (row.as_mut(), cell.take()) {
                    r.cells
                        .push(c.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
            Event::Start(Tag::Paragraph) => {
                flush(&mut para, &mut out);
                if !task_item_depth.last().copied().unwrap_or(false) {
                    para = Some(Line {
                        line: line_of(&starts, range.start),
                        text: String::new(),
                        has_html: false,
                    });
                }
            }
            Event::End(TagEnd::Paragraph) => flush(&mut para, &mut out),
            Event::SoftBreak | Event::HardBreak => {
                if let Some(l) = para.as_mut() {
                    let next = l.line + 1;
                    flush(&mut para, &mut out);
                    para = Some(Line {
                        line: next,
                        text: String::new(),
                        has_html: false,
                    });
                }
            }
            Event::Text(t) => {
                if let Some(c) = cell.as_mut() {
                    c.push_str(&t);
                } else if let Some(l) = para.as_mut() {
                    l.text.push_str(&t);
                }
            }
            Event::Code(t) => {
                if let Some(c) = cell.as_mut() {
                    c.push_str(&t);
                } else if let Some(l) = para.as_mut() {
                    l.text.push_str(&t);
                }
            }
            Event::InlineHtml(_)
            | Event::Html(_)
            | Event::InlineMath(_)
            | Event::DisplayMath(_) => {
                if cell.is_some() {
                    if let Some(r) = row.as_mut() {
                        r.has_html = true;
                    }
                } else if let Some(l) = para.as_mut() {
                    l.has_html = true;
                }
            }
            _ => {}
        }
    }
    flush(&mut para, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_outside_hidden_blocks() {
        let md = "<!--\n| Email |\n|---|\n| hidden@x.com |\n-->\n\n> | Email |\n> |---|\n> | quoted@x.com |\n\n```\n| Email |\n|---|\n| code@x.com |\n```\n\n| Name | Email |\n|---|---|\n| A \\| B | **a@x.com** |\n| C | c@x.com <!-- x --> |\n";
        let v = read(md);
        assert_eq!(v.tables.len(), 1, "{:?}", v.tables);
        let t = &v.tables[0];
        assert_eq!(t.header, vec!["Name", "Email"]);
        assert_eq!(t.rows[0].cells, vec!["A | B", "a@x.com"]);
        assert_eq!(t.rows[0].line, 19);
        assert!(t.rows[1].has_html);
    }

    #[test]
    fn lines_of_paragraphs_and_plain_items() {
        let md = "Email: a@x.com\nManager: @m\n\n- **Name**: Jane\n- [ ] Zendesk: x\n\n<!-- Email: hidden@x.com -->\n\n    Email: code@x.com\n";
        let v = read(md);
        let texts: Vec<_> = v.lines.iter().map(|l| (l.line, l.text.as_str())).collect();
        assert_eq!(
            texts,
            vec![(1, "Email: a@x.com"), (2, "Manager: @m"), (4, "Name: Jane")]
        );
    }
}
