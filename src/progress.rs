//! A one-line progress display for long work, shown only when stderr is a
//! terminal (never in logs, pipelines or tests).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Progress {
    what: &'static str,
    total: usize,
    done: AtomicUsize,
    on: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: usize) -> Progress {
        Progress {
            what,
            total,
            done: AtomicUsize::new(0),
            // Worth showing only for long work, and only to a person.
            on: total >= 200 && std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&self, n: usize) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.on {
            let width = 30;
            let filled = (done * width)
                .checked_div(self.total)
                .unwrap_or(width)
                .min(width);
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{} [{}{}] {done}/{}",
                self.what,
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            let _ = err.flush();
        }
    }

    pub fn finish(&self) {
        if self.on {
            let _ = writeln!(std::io::stderr());
        }
    }
}
