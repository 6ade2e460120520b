//! Counting what the test runners ran, so `cargo xtask test` can close on one plain line
//! (`tests: N passed, N failed, N skipped`) that covers every pass and every reliability step.
//!
//! Why: the suite has several runners (nextest twice, the plugins' `cargo test`, chaos,
//! fuzzing, Schemathesis), each with its own summary; a reader (or CI) looking at the end of
//! the log must see in one line how many tests ran in all and how many failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context, Result, bail};

/// Tests counted so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// The closing line: `tests: N passed, N failed, N skipped`.
    pub fn closing_line(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// The counts a runner's summary line reports, or `None` for any other line.
///
/// nextest: `Summary [  52.1s] 187 tests run: 185 passed, 2 failed, 3 skipped` (also
/// `timed out`, counted as failed); `cargo test`: `test result: ok. 5 passed; 0 failed;
/// 1 ignored; ...` once per test binary.
pub fn summary_counts(line: &str) -> Option<Tally> {
    let line = line.trim();
    let body = if let Some(at) = line.find(" run: ") {
        if !line.starts_with("Summary") {
            return None;
        }
        &line[at + " run: ".len()..]
    } else if let Some(rest) = line.strip_prefix("test result: ") {
        rest.split_once(". ").map(|(_, counts)| counts)?
    } else {
        return None;
    };
    let mut tally = Tally::default();
    for part in body.split([',', ';']) {
        let mut words = part.split_whitespace();
        let (Some(number), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => tally.passed += number,
            "failed" | "timed" => tally.failed += number,
            "skipped" | "ignored" => tally.skipped += number,
            _ => {}
        }
    }
    Some(tally)
}

/// Runs a test runner with its output passed through line by line, and adds what its summary
/// lines report to `tally`. Fails if the runner fails, after counting.
pub fn run_counted(command: &mut Command, tally: &mut Tally) -> Result<()> {
    let shown = crate::show(command);
    eprintln!("$ {shown}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out = thread::spawn(move || pass_through(stdout, std::io::stdout()));
    let err = thread::spawn(move || pass_through(stderr, std::io::stderr()));
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{shown}`"))?;
    let mut counted = out.join().expect("stdout reader does not panic");
    counted.add(err.join().expect("stderr reader does not panic"));
    tally.add(counted);
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

/// Copies `from` to `to` line by line (so the log stays live) and counts summary lines.
fn pass_through(from: impl Read, mut to: impl Write) -> Tally {
    let mut tally = Tally::default();
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        // A closed terminal must not stop the run; the count still matters.
        let _ = to.write_all(&line);
        let _ = to.flush();
        if let Some(counts) = summary_counts(&String::from_utf8_lossy(&line)) {
            tally.add(counts);
        }
        line.clear();
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nextest_summaries() {
        let line = "     Summary [  52.123s] 187 tests run: 185 passed, 2 failed, 3 skipped";
        assert_eq!(
            summary_counts(line),
            Some(Tally {
                passed: 185,
                failed: 2,
                skipped: 3
            })
        );
        let line = "     Summary [   1.000s] 1 test run: 1 passed, 1 timed out, 0 skipped";
        assert_eq!(
            summary_counts(line),
            Some(Tally {
                passed: 1,
                failed: 1,
                skipped: 0
            })
        );
    }

    #[test]
    fn reads_cargo_test_results() {
        let line = "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(
            summary_counts(line),
            Some(Tally {
                passed: 5,
                failed: 0,
                skipped: 1
            })
        );
        let line = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(summary_counts(line).map(|t| t.failed), Some(2));
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(
            summary_counts("        PASS [   0.010s] core tests::a"),
            None
        );
        assert_eq!(summary_counts("a dry run: 3 passed"), None);
        assert_eq!(summary_counts(""), None);
    }

    #[test]
    fn closing_line_has_the_plain_form() {
        let tally = Tally {
            passed: 264,
            failed: 0,
            skipped: 1,
        };
        assert_eq!(
            tally.closing_line(),
            "tests: 264 passed, 0 failed, 1 skipped"
        );
    }
}
