//! Reading mapping files: TOML with spans (for line numbers), field by field, gathering every
//! error instead of stopping at the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};
use xmpp_parsers::jid::DomainPart;

use super::compile::RuleCx;
use super::error::{MappingError, closest};
use super::rule::Rule;
use super::{MappingTable, overlap};

pub(crate) fn load_dir(dir: &Path, domain: &str) -> Result<MappingTable, Vec<MappingError>> {
    let mut loader = Loader::new(dir, domain);
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(e) if is_mapping_file(&e.path()) => files.push(e.path()),
                    Ok(_) => {}
                    Err(e) => loader.whole_file(dir, format!("cannot list the directory: {e}")),
                }
            }
        }
        Err(e) => {
            let message = format!(
                "no mapping rules in {} (cannot read it: {e})",
                dir.display()
            );
            loader.whole_file(dir, message);
            return Err(loader.errors);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for path in &files {
        match std::fs::read_to_string(path) {
            Ok(text) => loader.file(&text, path),
            Err(e) => {
                loader.files.push(path.clone());
                loader.whole_file(path, format!("cannot read the file: {e}"));
            }
        }
    }
    loader.finish(dir)
}

pub(crate) fn parse_one(
    text: &str,
    file: &Path,
    domain: &str,
) -> Result<MappingTable, Vec<MappingError>> {
    let mut loader = Loader::new(file, domain);
    loader.file(text, file);
    loader.finish(file)
}

fn is_mapping_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml") && path.is_file()
}

/// State across all files of one load.
struct Loader {
    /// The bridge domain, normalized.
    domain: Box<str>,
    rules: Vec<Rule>,
    /// `[[rule]]` tables seen, valid or not: none at all is its own error.
    seen: usize,
    /// A file could not be read or parsed, so its rules were not counted.
    broken: bool,
    /// Files in the order they were read: errors are reported file by file.
    files: Vec<PathBuf>,
    /// Rule names seen so far, with where, for "already used at".
    names: HashMap<String, String>,
    errors: Vec<MappingError>,
}

impl Loader {
    fn new(origin: &Path, domain: &str) -> Loader {
        let mut errors = Vec::new();
        let normalized = match DomainPart::new(domain) {
            Ok(d) if !domain.contains(['@', '/']) => Box::from(d.as_str()),
            Ok(_) | Err(_) => {
                errors.push(MappingError {
                    file: origin.to_path_buf(),
                    line: None,
                    rule: None,
                    field: Some("domain".to_string()),
                    message: format!("the bridge domain `{domain}` is not a valid JID domain"),
                });
                Box::from(domain)
            }
        };
        Loader {
            domain: normalized,
            rules: Vec::new(),
            seen: 0,
            broken: false,
            files: Vec::new(),
            names: HashMap::new(),
            errors,
        }
    }

    fn whole_file(&mut self, file: &Path, message: String) {
        self.broken = true;
        let file = file.to_path_buf();
        self.errors.push(MappingError {
            file,
            line: None,
            rule: None,
            field: None,
            message,
        });
    }

    fn file(&mut self, text: &str, file: &Path) {
        self.files.push(file.to_path_buf());
        let lines = LineIndex::new(text);
        let doc = match ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                self.broken = true;
                self.errors.push(MappingError {
                    file: file.to_path_buf(),
                    line: e.span().map(|s| lines.line(s.start)),
                    rule: None,
                    field: None,
                    message: format!("TOML syntax error: {}", e.message().trim_end()),
                });
                return;
            }
        };
        let root = doc.as_table();
        for (key, item) in root.iter() {
            let line = root
                .key(key)
                .and_then(|k| k.span())
                .map(|s| lines.line(s.start));
            let error = |message: String| MappingError {
                file: file.to_path_buf(),
                line,
                rule: None,
                field: None,
                message,
            };
            match (key, item) {
                ("rule", Item::ArrayOfTables(tables)) => {
                    for t in tables.iter() {
                        self.rule(file, &lines, t, t.span().map(|s| s.start));
                    }
                }
                ("rule", Item::Value(Value::Array(values))) => {
                    for v in values.iter() {
                        match v.as_inline_table() {
                            Some(t) => self.rule(file, &lines, t, v.span().map(|s| s.start)),
                            None => self.errors.push(error(format!(
                                "`rule` must hold tables, found {}",
                                v.type_name()
                            ))),
                        }
                    }
                }
                ("rule", Item::Table(_)) => self.errors.push(error(
                    "`[rule]` is a single table; write `[[rule]]` before each rule".to_string(),
                )),
                ("rule", other) => self.errors.push(error(format!(
                    "`rule` must be `[[rule]]` tables, found {}",
                    other.type_name()
                ))),
                _ => {
                    let hint = match closest(key, &["rule"]) {
                        Some(_) => "did you mean `[[rule]]`?",
                        None => "a mapping file holds only `[[rule]]` tables",
                    };
                    self.errors
                        .push(error(format!("unknown top-level key `{key}` ({hint})")));
                }
            }
        }
    }

    fn rule(&mut self, file: &Path, lines: &LineIndex, table: &dyn TableLike, at: Option<usize>) {
        self.seen += 1;
        let line = at.map_or(1, |o| lines.line(o));
        let mut cx = RuleCx::new(file, lines, table, line);
        let rule = cx.compile(&self.domain, &self.names);
        if let Some(name) = &cx.name {
            self.names
                .entry(name.clone())
                .or_insert_with(|| format!("{}:{line}", file.display()));
        }
        self.errors.append(&mut cx.errors);
        if let Some(rule) = rule {
            self.rules.push(rule);
        }
    }

    fn finish(mut self, origin: &Path) -> Result<MappingTable, Vec<MappingError>> {
        if self.seen == 0 && !self.broken {
            let message = format!("no mapping rules in {}", origin.display());
            self.whole_file(origin, message);
        }
        overlap::check(&self.rules, &mut self.errors);
        // File by file, line by line: the order an operator fixes them in. Stable, so errors
        // on one line keep the order of the checks. Errors about no file in particular (the
        // directory, the domain) come first; errors about a whole file, after its lines.
        let files = &self.files;
        self.errors.sort_by_key(|e| {
            let file = files.iter().position(|f| *f == e.file).map_or(0, |i| i + 1);
            (file, e.line.unwrap_or(usize::MAX))
        });
        if self.errors.is_empty() {
            Ok(MappingTable::new(self.rules, self.domain))
        } else {
            Err(self.errors)
        }
    }
}

/// Byte offset → 1-based line.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            starts: starts.collect(),
        }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}
