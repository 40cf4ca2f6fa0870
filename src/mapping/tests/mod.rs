//! Unit tests of the mapping table, table-driven: load errors, lookups both ways, precedence,
//! and the shipped `mappings/` directory.

mod errors;
mod files;
mod linking;
mod lookup;
mod patterns;
mod precedence;

use std::path::Path;

use super::{MappingError, MappingTable};

/// The bridge domain used throughout.
const DOMAIN: &str = "mqtt.example.org";
/// The file name `parse` reports.
const FILE: &str = "m.toml";

/// Compiles `text` as one file; panics with every error when it does not compile.
fn table(text: &str) -> MappingTable {
    match MappingTable::parse(text, Path::new(FILE), DOMAIN) {
        Ok(t) => t,
        Err(errors) => panic!("unexpected errors:\n{}", render(&errors)),
    }
}

/// The errors `text` compiles to; panics when it compiles.
fn errors(text: &str) -> Vec<MappingError> {
    match MappingTable::parse(text, Path::new(FILE), DOMAIN) {
        Ok(t) => panic!("expected errors, got a table:\n{}", t.describe()),
        Err(errors) => errors,
    }
}

fn render(errors: &[MappingError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

/// Expected error: (line, rule, field, message).
type Expect = (
    Option<usize>,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

struct Case {
    what: &'static str,
    toml: &'static str,
    expect: &'static [Expect],
}

/// Compiles `case.toml` and compares every error with `case.expect`, in order.
fn check(case: &Case) {
    let got = errors(case.toml);
    assert_eq!(
        got.len(),
        case.expect.len(),
        "{}: got\n{}",
        case.what,
        render(&got)
    );
    for (e, (line, rule, field, message)) in got.iter().zip(case.expect) {
        assert_eq!(e.file, Path::new(FILE), "{}: file of {e}", case.what);
        assert_eq!(e.line, *line, "{}: line of {e}", case.what);
        assert_eq!(e.rule.as_deref(), *rule, "{}: rule of {e}", case.what);
        assert_eq!(e.field.as_deref(), *field, "{}: field of {e}", case.what);
        assert_eq!(e.message, *message, "{}: message of {e}", case.what);
    }
}
