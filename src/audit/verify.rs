//! `audit verify`: checks a trail folder line by line and says where it was tampered with.
//!
//! What is checked, per line: the hash matches the line (else: changed); `prev` equals the
//! hash of the line before (else: inserted, deleted or reordered lines before it); record
//! sequence numbers go up by one (a gap: deleted; going back: reordered or inserted). Per
//! file: numbers follow each other (a gap: missing file), the first line is `open`, the last
//! line is a `checkpoint` that counts the file's records (else: truncated; only the newest
//! file may still be open), no incomplete last line.

use std::fmt;
use std::path::{Path, PathBuf};

use super::list_files;
use super::record::{GENESIS, Line, check_hash};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Line number from 1; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.file_name().map_or_else(
            || self.file.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        if self.line == 0 {
            write!(f, "{name}: {}", self.message)
        } else {
            write!(f, "{name}:{}: {}", self.line, self.message)
        }
    }
}

/// The result of a verification.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Records read.
    pub records: u64,
    /// What is wrong; empty when the trail is intact.
    pub problems: Vec<Problem>,
    /// Remarks that are not problems (trail starting after retention, file still open).
    pub notes: Vec<String>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Checker {
    report: Report,
    expected_prev: Option<String>,
    expected_seq: Option<u64>,
}

impl Checker {
    fn problem(&mut self, file: &Path, line: usize, message: impl Into<String>) {
        self.report.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }
}

/// Verifies the trail in `dir`.
pub fn verify(dir: &Path) -> std::io::Result<Report> {
    let files = list_files(dir)?;
    let mut c = Checker {
        report: Report::default(),
        expected_prev: None,
        expected_seq: None,
    };
    if files.is_empty() {
        c.problem(
            dir,
            0,
            "no audit files (audit-NNNNNNNN.jsonl) in this folder",
        );
        return Ok(c.report);
    }
    let last = files.len() - 1;
    let mut previous: Option<u64> = None;
    for (i, (number, path)) in files.iter().enumerate() {
        c.report.files += 1;
        match previous {
            Some(p) if *number != p + 1 => {
                let missing = if *number == p + 2 {
                    format!("audit file {} is missing", p + 1)
                } else {
                    format!("audit files {} to {} are missing", p + 1, number - 1)
                };
                c.problem(path, 0, missing);
            }
            None if *number > 1 => c.report.notes.push(format!(
                "the trail starts at file {number}: earlier files were deleted (retention?)"
            )),
            _ => {}
        }
        previous = Some(*number);
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                c.problem(path, 0, format!("cannot read: {e}"));
                c.expected_prev = None;
                continue;
            }
        };
        check_file(&mut c, *number, path, &text, i == last);
    }
    Ok(c.report)
}

fn check_file(c: &mut Checker, number: u64, path: &Path, text: &str, newest: bool) {
    let mut records = 0;
    let mut checkpoint_at = None;
    let mut lines = 0;
    if text.is_empty() {
        c.problem(path, 0, "empty file (truncated)");
    }
    for (idx, piece) in text.split_inclusive('\n').enumerate() {
        let n = idx + 1;
        lines = n;
        let Some(raw) = piece.strip_suffix('\n') else {
            c.problem(path, n, "truncated: the last line is incomplete");
            c.expected_prev = None;
            break;
        };
        if let Some(at) = checkpoint_at {
            c.problem(path, n, format!("line after the checkpoint (line {at})"));
        }
        let (stated, intact) = match check_hash(raw) {
            Ok(v) => v,
            Err(why) => {
                c.problem(path, n, format!("not an audit line: {why}"));
                c.expected_prev = None;
                continue;
            }
        };
        if !intact {
            c.problem(path, n, "changed: the line does not match its hash");
        }
        let line: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                c.problem(path, n, format!("not an audit line: {e}"));
                c.expected_prev = None;
                continue;
            }
        };
        match &c.expected_prev {
            Some(expected) if *expected != line.prev => c.problem(
                path,
                n,
                "chain broken: `prev` is not the hash of the line before \
                 (lines inserted, deleted or reordered before this one)",
            ),
            None if number == 1 && idx == 0 && line.prev != GENESIS => c.problem(
                path,
                n,
                "chain broken: the first line of the trail does not start from the genesis hash",
            ),
            _ => {}
        }
        c.expected_prev = Some(stated);
        if idx == 0 && line.kind != "open" {
            c.problem(path, n, "the file does not start with its `open` line");
        }
        match line.kind.as_str() {
            "open" => {
                if idx != 0 {
                    c.problem(path, n, "`open` line inside the file");
                }
                if line.file != Some(number) {
                    c.problem(
                        path,
                        n,
                        format!(
                            "the `open` line names file {:?}, the file name says {number} \
                             (renamed?)",
                            line.file
                        ),
                    );
                }
                match c.expected_seq {
                    Some(seq) if seq != line.seq => c.problem(
                        path,
                        n,
                        format!("the file starts at record {} but {seq} was next", line.seq),
                    ),
                    _ => {}
                }
                c.expected_seq = Some(line.seq);
            }
            "record" => {
                records += 1;
                c.report.records += 1;
                match c.expected_seq {
                    Some(seq) if line.seq > seq => {
                        let gap = line.seq - seq;
                        c.problem(
                            path,
                            n,
                            format!(
                                "{gap} record(s) missing before record {} (deleted)",
                                line.seq
                            ),
                        );
                        c.expected_seq = Some(line.seq + 1);
                    }
                    Some(seq) if line.seq < seq => c.problem(
                        path,
                        n,
                        format!(
                            "record {} out of order, {seq} expected (reordered or inserted)",
                            line.seq
                        ),
                    ),
                    _ => c.expected_seq = Some(line.seq + 1),
                }
            }
            "checkpoint" => {
                checkpoint_at = Some(n);
                if line.records != Some(records) {
                    c.problem(
                        path,
                        n,
                        format!(
                            "the checkpoint counts {:?} records, the file holds {records}",
                            line.records
                        ),
                    );
                }
                if line.file != Some(number) {
                    c.problem(path, n, "the checkpoint names another file");
                }
            }
            other => c.problem(path, n, format!("unknown line kind `{other}`")),
        }
    }
    if checkpoint_at.is_none() {
        if newest {
            c.report.notes.push(format!(
                "{} is still open (no checkpoint yet): its end cannot be checked",
                path.display()
            ));
        } else {
            c.problem(
                path,
                lines,
                "truncated: the file ends without its checkpoint",
            );
        }
    }
}
