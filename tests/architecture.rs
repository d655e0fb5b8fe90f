//! The shape the code must keep: every write to a target system (Zendesk,
//! a group directory: Google, Okta) goes through the one executor, `src/bot/execute.rs`, which accepts
//! only a proof (an approved plan, an expired grant, a reviewer's tick). The
//! adapters define the calls; the sandbox and the demo's seeding write to the
//! fakes' state directly; nothing else may call them.

use std::path::{Path, PathBuf};

/// The adapters' write methods, as they are called.
const WRITES: [&str; 12] = [
    // The account-system port's one door for a planned change.
    ".apply_change(",
    ".update_user(",
    ".create_or_update(",
    ".add_tags(",
    ".remove_tags(",
    ".add_membership(",
    ".remove_membership(",
    ".reassign(",
    ".add_member(",
    ".remove_member(",
    // Okta's own membership calls (behind `add_member`/`remove_member`).
    ".assign(",
    ".unassign(",
];

/// Files allowed to contain those calls, and why.
const ALLOWED: [&str; 9] = [
    "src/bot/execute.rs", // the one door
    "src/accounts.rs",    // the account-system port applies a change (`apply_change`)
    "src/groups.rs",      // the group-directory port, only in `apply_change` (below)
    "src/zendesk.rs",     // the adapter itself
    "src/google.rs",      // the adapter itself
    "src/okta.rs",        // the adapter itself
    "src/sandbox/",       // the fakes
    "src/demo.rs",        // seeds the fakes' state before the demo
    "src/bin/bench.rs",   // seeds the fakes' state before a benchmark
];

/// Every Rust file under `src/`: its path from the crate root (with `/`) and its text.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&f).unwrap();
            (rel, text)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether line `n` of `code` lies inside the top-level block that opens
/// with the line `opening` (and closes with the next `}` at column 0).
fn in_block(code: &str, n: usize, opening: &str) -> bool {
    let lines: Vec<&str> = code.lines().collect();
    let Some(start) = lines.iter().position(|l| *l == opening) else {
        return false;
    };
    let end = lines[start..]
        .iter()
        .position(|l| *l == "}")
        .map_or(lines.len(), |e| start + e);
    start < n && n < end
}

#[test]
fn only_the_executor_writes_to_target_systems() {
    let files = sources();
    assert!(files.len() > 20, "the sources were found: {}", files.len());
    let mut found = Vec::new();
    let mut in_executor = 0;
    let mut in_group_port = 0;
    for (rel, text) in files {
        // Unit tests inside a file may use mocks freely.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if let Some(w) = WRITES.iter().find(|w| line.contains(*w)) {
                if rel == "src/bot/execute.rs" {
                    in_executor += 1;
                }
                let allowed = if rel == "src/groups.rs" {
                    // The port's one door, `impl dyn GroupDirectory`, and nothing
                    // else in the file.
                    let inside = in_block(code, n, "impl dyn GroupDirectory {");
                    in_group_port += usize::from(inside);
                    inside
                } else {
                    ALLOWED.iter().any(|a| rel.starts_with(a))
                };
                if !allowed {
                    found.push(format!("{rel}:{}: {w} {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "writes to a target system outside the executor:\n{}",
        found.join("\n")
    );
    // The account change and the membership change (each port's
    // `apply_change`), and the seat reclaim.
    assert!(
        in_executor >= 3,
        "the executor makes the writes ({in_executor} found)"
    );
    // The group-directory port's door: an add and a remove.
    assert_eq!(in_group_port, 2, "the writes in the group port's door");
}

#[test]
fn the_executor_runs_steps_only_behind_a_proof() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exec = std::fs::read_to_string(root.join("src/bot/execute.rs")).unwrap();
    // The step runner is private to the executor; its public doors each
    // take a proof type that only the deciding module can build.
    assert!(
        exec.contains("\n    async fn run_steps("),
        "run_steps is private"
    );
    for door in [
        "plan: &Approved<Plan>",
        "expired: &Expired",
        "ticked: &ReviewerTicked",
    ] {
        assert!(exec.contains(door), "a door takes {door}");
    }
    let plan = std::fs::read_to_string(root.join("src/plan.rs")).unwrap();
    assert!(
        plan.contains("pub struct Expired {\n    iid: u64,"),
        "Expired's fields are private"
    );
    let seats = std::fs::read_to_string(root.join("src/seats.rs")).unwrap();
    assert!(
        seats.contains("pub struct ReviewerTicked {\n    by: String,"),
        "ReviewerTicked's fields are private"
    );
}

/// Files that may name a target system's own types, and why.
const TARGET_SPECIFIC: [&str; 10] = [
    "src/zendesk.rs",   // the adapters themselves
    "src/google.rs",    // the adapters themselves
    "src/okta.rs",      // the adapters themselves
    "src/directory.rs", // Google's directory of people
    "src/sandbox/",     // the fakes
    "src/config.rs",    // the configuration names each system's section
    "src/accounts.rs",  // the factory of account systems (one arm per system)
    "src/groups.rs",    // the factory of group directories (one arm per directory)
    "src/bin/",         // the benchmark drives the fakes
    "src/demo.rs",      // the demo seeds the fakes
];

#[test]
fn only_the_adapters_name_a_target_system_s_types() {
    // Everything else goes through the ports (`accounts`, `groups`): a second
    // account system or group directory then touches no planner or executor.
    let named = regex::Regex::new(r"zendesk::|google::|okta::|\bZendesk[A-Z][a-z]*\b").unwrap();
    // The configuration's own types are the configuration's business.
    let config = regex::Regex::new(r"config::Zendesk[A-Z][a-z]*\b").unwrap();
    let files = sources();
    let mut found = Vec::new();
    for (rel, text) in files {
        if TARGET_SPECIFIC.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if named.is_match(&config.replace_all(line, "")) {
                found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a target system's types outside its adapter:\n{}",
        found.join("\n")
    );
}

/// What the bot says and does in answer to a decision is computed apart
/// from doing it: the reply builders in `src/bot/reply.rs` await nothing and
/// touch no system or store; only `perform` (the interpreter) does.
#[test]
fn replies_are_computed_apart_from_carrying_them_out() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bot/reply.rs");
    let src = std::fs::read_to_string(&path).unwrap();
    let at = src
        .find("pub(super) async fn perform(")
        .expect("reply.rs has its interpreter, `perform`");
    // The code only: comments may name what the code must not do.
    let builders: String = src[..at]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for forbidden in [
        ".await",
        "async fn",
        "self.store",
        "self.gitlab",
        "self.notifier",
        "self.accounts",
        "self.groups",
        "write_back(",
        "tell_ops(",
    ] {
        assert!(
            !builders.contains(forbidden),
            "a reply builder uses {forbidden:?}: build a value, let `perform` act"
        );
    }
    // And the decisions that have a builder are carried out only through it.
    let process =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bot/process.rs"))
            .unwrap();
    for gone in [
        "kind: NoteKind::Invalid",
        "kind: NoteKind::Waiting",
        "kind: NoteKind::Plan",
        "comment::Refused {",
        "comment::CitizenshipDenied {",
        "kind: NoteKind::Result",
        "comment::Failed {",
        "comment::NeedsAccountFirst {",
        "NoticeKind::ManagerCannotTakeTickets",
    ] {
        assert!(!process.contains(gone), "process.rs builds {gone:?} itself");
    }
}

/// Every request an adapter makes goes through the one transport
/// (`src/http.rs`: attempts, timeout, 429 and 5xx handling, the hold after a
/// slow-down): no adapter sends a request itself.
#[test]
fn every_request_goes_through_the_shared_transport() {
    let files = sources();
    let mut found = Vec::new();
    for (rel, text) in files {
        // The transport itself; the fakes and the bench are not adapters.
        if rel == "src/http.rs" || rel.starts_with("src/sandbox/") || rel.starts_with("src/bin/") {
            continue;
        }
        // reqwest sends with `RequestBuilder::send` or `Client::execute`; a
        // call split over lines by rustfmt still has either on one line. An
        // `execute` elsewhere (SQL, the bot's executor) sends no request.
        let http = text.contains("reqwest");
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.contains(".send()") || (http && l.contains(".execute(")) {
                found.push(format!("{rel}:{}: {l}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "requests sent around the shared transport:\n{}",
        found.join("\n")
    );
}
