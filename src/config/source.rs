//! Walks the merged configuration (TOML file + `BRIDGE_*` environment) key by key, so that
//! every error is found in one run and reported with where the value came from: the file and
//! line, or the environment variable.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Value};
use figment::{Figment, Source};
use serde::de::DeserializeOwned;

use crate::suggest::closest;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `path/to/file.toml:LINE`, `environment variable BRIDGE_X__Y`, or the file alone.
    pub origin: String,
    /// Dotted key, e.g. `broker.max_connections`; empty for whole-file problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where values came from, and the errors found so far.
pub(super) struct Context {
    figment: Figment,
    file: PathBuf,
    /// The file's text, parsed with spans, for line numbers.
    spans: Option<toml_edit::ImDocument<String>>,
    errors: Vec<ConfigError>,
}

impl Context {
    /// A context over a merged figment whose file part is `file`.
    pub(super) fn new(figment: Figment, file: &Path) -> Self {
        let spans = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.parse().ok());
        Context {
            figment,
            file: file.to_path_buf(),
            spans,
            errors: Vec::new(),
        }
    }

    /// Records an error at `key`.
    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin(key);
        self.errors.push(ConfigError {
            origin,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Records an error already located elsewhere (a mapping file's `file:line: ...`).
    pub(super) fn external_error(&mut self, message: String) {
        let (origin, message) = match message.split_once(": ") {
            Some((origin, rest)) => (origin.to_string(), rest.to_string()),
            None => (String::new(), message),
        };
        self.errors.push(ConfigError {
            origin,
            key: String::new(),
            message,
        });
    }

    /// Records an error about the whole file.
    pub(super) fn file_error(&mut self, message: impl Into<String>) {
        let origin = self.file.display().to_string();
        self.errors.push(ConfigError {
            origin,
            key: String::new(),
            message: message.into(),
        });
    }

    /// Whether any error was recorded so far.
    pub(super) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors, or `Ok` when there are none.
    pub(super) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    fn origin(&self, key: &str) -> String {
        let Some(meta) = self.figment.find_metadata(key) else {
            // A missing key: point at its table (`[xmpp]`), which is where it belongs.
            return match key.rsplit_once('.') {
                Some((parent, _)) => self.origin(parent),
                None => self.file.display().to_string(),
            };
        };
        match &meta.source {
            Some(Source::File(path)) => match self.line_of(key) {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            },
            _ if meta.name.contains("environment") => {
                format!("environment variable {}", env_var_name(key))
            }
            _ => format!("{} ({key})", meta.name),
        }
    }

    /// 1-based line of `key` in the file.
    fn line_of(&self, key: &str) -> Option<usize> {
        let doc = self.spans.as_ref()?;
        let mut table: &dyn toml_edit::TableLike = doc.as_table();
        let mut span = None;
        for part in key.split('.') {
            let (k, item) = table.get_key_value(part)?;
            span = k.span().or_else(|| item.span());
            match item.as_table_like() {
                Some(t) => table = t,
                None => break,
            }
        }
        let start = span?.start;
        Some(doc.raw()[..start].matches('\n').count() + 1)
    }
}

/// One table of the configuration; keys are taken out as they are read, and what is left at
/// [`Section::finish`] is unknown.
pub(super) struct Section {
    path: String,
    dict: Dict,
}

impl Section {
    /// The root of the merged configuration.
    pub(super) fn root(dict: Dict) -> Self {
        Section {
            path: String::new(),
            dict,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key` as `T`; `None` when absent or invalid (the error is recorded).
    pub(super) fn take<T: DeserializeOwned>(&mut self, cx: &mut Context, key: &str) -> Option<T> {
        let value = self.dict.remove(key)?;
        match value.deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                cx.error(&self.key_path(key), describe(&e));
                None
            }
        }
    }

    /// The value of `key` converted by `parse`, or `default` when absent or invalid.
    pub(super) fn take_with<R: DeserializeOwned, T>(
        &mut self,
        cx: &mut Context,
        key: &str,
        default: T,
        parse: impl FnOnce(R) -> Result<T, String>,
    ) -> T {
        let Some(raw) = self.take::<R>(cx, key) else {
            return default;
        };
        match parse(raw) {
            Ok(v) => v,
            Err(message) => {
                cx.error(&self.key_path(key), message);
                default
            }
        }
    }

    /// A nested table; an empty one when absent, an error when not a table. `None` when
    /// absent, so optional sections can be told apart.
    pub(super) fn section(&mut self, cx: &mut Context, key: &str) -> Option<Section> {
        let path = self.key_path(key);
        match self.dict.remove(key)? {
            Value::Dict(_, dict) => Some(Section { path, dict }),
            other => {
                cx.error(
                    &path,
                    format!("expected a table, found {}", other.to_actual()),
                );
                Some(Section {
                    path,
                    dict: Dict::new(),
                })
            }
        }
    }

    /// Reports every key not taken as unknown, with a suggestion when one is close.
    pub(super) fn finish(self, cx: &mut Context, known: &[&str]) {
        for key in self.dict.keys() {
            let path = self.key_path(key);
            let hint = closest(key, known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_else(|| format!(" (known keys: {})", known.join(", ")));
            cx.error(&path, format!("unknown key{hint}"));
        }
    }
}

/// The environment variable that sets `key` (`broker.listen` → `BRIDGE_BROKER__LISTEN`).
fn env_var_name(key: &str) -> String {
    format!(
        "{}{}",
        super::ENV_PREFIX,
        key.replace('.', "__").to_uppercase()
    )
}

/// Turns a figment/serde error into one plain sentence.
fn describe(e: &figment::Error) -> String {
    e.kind.to_string()
}
