//! Process-wide counters for `/metrics`: API calls and errors by system (each
//! logical call, after its retries), and executed steps by outcome. Counted in
//! the adapters and the executor, rendered by `run`'s `/metrics`.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

/// (metric, label value, result).
type Key = (&'static str, String, &'static str);

static COUNTS: LazyLock<Mutex<BTreeMap<Key, u64>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn bump(metric: &'static str, label: &str, result: &'static str) {
    let mut m = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry((metric, label.to_string(), result)).or_insert(0) += 1;
}

/// One API call to `system` (`gitlab`, `zendesk.global`, `google`) ended.
pub fn api<T, E>(system: &str, r: &Result<T, E>) {
    bump("api", system, if r.is_ok() { "ok" } else { "error" });
}

/// One plan step was executed (`ok` or `failed`).
pub fn step(outcome: &'static str) {
    bump("step", "", outcome);
}

/// Prometheus text for the counters so far.
pub fn render() -> String {
    let m = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut s = String::from(
        "# HELP access_bot_api_calls_total API calls by system and result (after retries).\n# TYPE access_bot_api_calls_total counter\n",
    );
    for ((metric, system, result), n) in m.iter() {
        if *metric == "api" {
            s.push_str(&format!(
                "access_bot_api_calls_total{{system=\"{system}\",result=\"{result}\"}} {n}\n"
            ));
        }
    }
    s.push_str("# HELP access_bot_steps_total Plan steps executed, by outcome.\n# TYPE access_bot_steps_total counter\n");
    for ((metric, _, result), n) in m.iter() {
        if *metric == "step" {
            s.push_str(&format!(
                "access_bot_steps_total{{outcome=\"{result}\"}} {n}\n"
            ));
        }
    }
    s
}
