//! No secret ever reaches a log line or the transcript: the whole demo runs
//! with trace-level JSON logs, and its output is searched for every credential
//! the sandbox hands out and every token its fakes issue.

use std::process::Command;

#[test]
fn a_full_demo_at_trace_level_prints_no_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_access-bot"))
        .args(["--log-format", "json", "demo"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stderr.lines().count() > 100, "trace logging was on");
    // Every log line is JSON with `message` at the top level (where log
    // pipelines look for it), and lines about an issue carry its iid.
    let mut with_iid = 0;
    let mut with_message = 0;
    let mut lines = 0;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        lines += 1;
        assert!(v.get("fields").is_none(), "fields are flattened: {line}");
        if v.get("message").is_some_and(|m| m.is_string()) {
            with_message += 1;
        }
        if v.get("iid").is_some() || v.get("span").and_then(|s| s.get("iid")).is_some() {
            with_iid += 1;
        }
    }
    assert!(with_iid > 10);
    assert!(
        with_message * 10 >= lines * 9,
        "{with_message} of {lines} lines have a top-level message"
    );
    let all = format!("{stdout}\n{stderr}");
    for needle in [
        "glpat-sandbox-",       // GitLab tokens of every sandbox user
        "zd-secret-",           // Zendesk OAuth client secrets
        "zd-sandbox-",          // Zendesk access tokens the fake issues
        "ya29.sandbox-",        // Google access tokens the fake issues
        "BEGIN PRIVATE KEY",    // the service-account key
        "eyJhbGciOiJSUzI1NiIs", // a signed JWT assertion
        "Bearer ",
        "PRIVATE-TOKEN",
    ] {
        assert!(
            !all.contains(needle),
            "{needle:?} appears in the demo's output"
        );
    }
}
