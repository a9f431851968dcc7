//! The defaults the docs state, against the code's.
//!
//! `docs/reference.md` is the one place defaults are written for users: each `### <section>` of
//! its "Configuration file" part has a table `field | type | default | bounds | meaning`. For
//! every row whose default is a value (`` `10s` ``, `` `64KiB` ``, `` `[]` ``, `` `reject` ``), a
//! config that gives the field that value must load to the same effective config (what
//! `GET /config` answers) as one that leaves it out: changing a default in the code without
//! the doc, or the doc without the code, fails here. The guide's config table repeats some of
//! them; each of those must equal the reference's.
//!
//! Rows without a value are not checked, by rule: `*required*` (no default), `absent…`, `—` or
//! an empty cell (the field is left out: `None`, no cap, no listener). A few more are named in
//! [`NOT_VALUES`] with the reason; any other default that is not a value fails the test, so a
//! new row is either checked or explained.

use std::path::Path;

use serde_json::{json, Value};

use super::super::from_yaml;

/// The reference, read at compile time: a change to it rebuilds the test.
const REFERENCE: &str = include_str!("../../../docs/reference.md");
/// The guide (docs/guide.md), whose config table repeats defaults.
const GUIDE: &str = include_str!("../../../docs/guide.md");

/// Rows whose default is not one value, and why: `(section, field, why)`.
const NOT_VALUES: &[(&str, &str, &str)] = &[
    (
        "server",
        "workers",
        "the number of CPUs: depends on the machine",
    ),
    ("store.tasks", "url", "store.redis's: another field's value"),
    (
        "store.tasks",
        "cluster",
        "store.redis's: another field's value",
    ),
    ("store.tasks", "ca", "store.redis's: another field's value"),
    (
        "upstreams.tls",
        "server_name",
        "the endpoint URL's host: another field's value",
    ),
    (
        "upstreams",
        "outlier",
        "a mapping of defaults, each checked in ### upstreams.outlier",
    ),
    (
        "upstreams",
        "retry",
        "a mapping of defaults, each checked in ### upstreams.retry",
    ),
    ("match", "host", "any host: the field is left out"),
    ("match", "methods", "any method: the field is left out"),
    (
        "rate_limits",
        "name",
        "a pattern, `limit-<index>`, not one value",
    ),
    (
        "rate_limits",
        "burst",
        "the rate's N: follows another field",
    ),
];

/// Where each section's fields go in [`base`], as a JSON pointer. The section `routes` uses a
/// route of its own: giving `rate_limits: []` to the route that holds the limit would change
/// more than one field.
const PLACES: &[(&str, &str)] = &[
    ("server", "/server"),
    ("admin", "/admin"),
    ("store.redis", "/store/redis"),
    ("store.tasks", "/store/tasks"),
    ("upstreams", "/upstreams/u"),
    ("upstreams.health_check", "/upstreams/u/health_check"),
    ("upstreams.outlier", "/upstreams/u/outlier"),
    ("upstreams.retry", "/upstreams/u/retry"),
    ("concurrency", "/upstreams/u/concurrency"),
    ("routes", "/routes/0"),
    ("match", "/routes/1/match"),
    ("rate_limits", "/routes/1/rate_limits/0"),
    ("defer", "/routes/1/defer"),
];

/// A config with every section that has defaults present and nearly empty, so that they all
/// apply. JSON is YAML, so it loads as a file would.
fn base() -> Value {
    let mut route = json!({
        "name": "limited",
        "upstream": "u",
        "match": {},
        "rate_limits": [{"key": "global", "rate": "10/s"}],
    });
    if cfg!(feature = "redis") {
        route["defer"] = json!({});
    }
    json!({
        "server": {"listen": "127.0.0.1:8080"},
        "admin": {"listen": "127.0.0.1:9901"},
        "store": {"redis": {"url": "redis://127.0.0.1:6379"}, "tasks": {}},
        "upstreams": {
            "u": {
                "endpoints": ["http://127.0.0.1:3000"],
                "concurrency": {"adaptive": {}},
                "health_check": {"path": "/healthz"},
                "outlier": {},
                "retry": {}
            }
        },
        "routes": [{"name": "plain", "upstream": "u"}, route],
    })
}

/// One row of a field table of the reference.
#[derive(Debug)]
struct Row {
    /// The `### ` heading above the table.
    section: String,
    /// The field, backticks removed: `listen`, `adaptive.min_inflight`.
    field: String,
    /// The default cell as written.
    default: String,
    /// 1-based line in docs/reference.md, for messages.
    line: usize,
}

/// Every field-table row of the reference's "Configuration file" part.
fn reference_rows() -> Vec<Row> {
    let start = REFERENCE
        .find("\n## Configuration file\n")
        .expect("docs/reference.md has a `## Configuration file` part");
    let first_line = REFERENCE[..=start].matches('\n').count() + 1;
    let mut rows = Vec::new();
    let (mut section, mut default_column) = (String::new(), None);
    for (i, line) in REFERENCE[start + 1..].lines().enumerate().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            (section, default_column) = (heading.trim().to_owned(), None);
            continue;
        }
        let cells = cells(line);
        if cells.first().map(String::as_str) == Some("field") {
            default_column = cells.iter().position(|c| c == "default");
        } else if let (Some(column), Some(field)) = (default_column, cells.first()) {
            if let Some(field) = field.strip_prefix('`').and_then(|f| f.strip_suffix('`')) {
                rows.push(Row {
                    section: section.clone(),
                    field: field.to_owned(),
                    default: cells.get(column).cloned().unwrap_or_default(),
                    line: first_line + i,
                });
            }
        }
    }
    rows
}

/// The cells of a Markdown table row (an escaped `\|` stays inside its cell); none for other
/// lines.
fn cells(line: &str) -> Vec<String> {
    let Some(inner) = line.trim().strip_prefix('|') else {
        return Vec::new();
    };
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next_if_eq(&'|').is_some() => cells.last_mut().unwrap().push('|'),
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.pop(); // after the closing `|`
    cells.iter().map(|c| c.trim().to_owned()).collect()
}

/// What the reference says of a row's default: `Ok(value)`, as it would be written in the file,
/// or `Err(why)` it is not one value.
fn documented(row: &Row) -> Result<&str, String> {
    if let Some((.., why)) = NOT_VALUES
        .iter()
        .find(|(section, field, _)| *section == row.section && *field == row.field)
    {
        return Err((*why).to_owned());
    }
    let cell = row.default.as_str();
    if cell.starts_with("*required*") {
        return Err("required".to_owned());
    }
    if cell.is_empty() || cell == "—" || cell.starts_with("absent") {
        return Err("absent".to_owned());
    }
    // A value in backticks, perhaps followed by when it applies: "`2` (when `adaptive` is given
    // without it)".
    match cell.strip_prefix('`').and_then(|rest| rest.split_once('`')) {
        Some((value, _)) => Ok(value),
        None => panic!(
            "docs/reference.md:{}: ### {}, `{}`: the default {cell:?} is not a value in \
             backticks; write one, or add the row to NOT_VALUES with the reason",
            row.line, row.section, row.field
        ),
    }
}

/// The effective config of `config`, which must load.
fn effective(config: &Value, what: &str) -> Value {
    match from_yaml(&config.to_string(), Path::new("defaults.yaml")) {
        Ok(config) => serde_json::to_value(&config).unwrap(),
        Err(e) => panic!("{what}: the config does not load:\n{e}\n{config:#}"),
    }
}

#[test]
fn reference_defaults_are_the_codes() {
    // Pins: every default docs/reference.md states is the one the code applies.
    let base = base();
    let defaults = effective(&base, "the base config");
    let mut checked = 0;
    for row in reference_rows() {
        let Ok(value) = documented(&row) else {
            continue;
        };
        if row.section == "defer" && cfg!(not(feature = "redis")) {
            continue; // this build refuses `defer`
        }
        let at = format!(
            "docs/reference.md:{}: ### {}, `{}` (default `{value}`)",
            row.line, row.section, row.field
        );
        let Some((_, place)) = PLACES.iter().find(|(s, _)| *s == row.section) else {
            panic!("{at}: no place for section {:?} in PLACES", row.section);
        };
        let pointer = format!("{place}/{}", row.field.replace('.', "/"));
        let applied = defaults.pointer(&pointer);
        assert!(
            applied.is_some_and(|v| !v.is_null()),
            "{at}: the effective config has no {pointer}: {defaults:#}"
        );
        let mut given = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let value_yaml: Value = serde_yaml::from_str(value).unwrap();
        given.pointer_mut(parent).unwrap()[key] = value_yaml;
        let given = effective(&given, &at);
        assert_eq!(
            given.pointer(&pointer),
            applied,
            "{at}: giving the documented default loads differently from leaving it out \
             (left: the doc's value, right: the code's default)"
        );
        checked += 1;
    }
    // Not a count to keep: a floor that catches a table the parser no longer reads.
    assert!(checked >= 30, "only {checked} defaults checked");
}

#[test]
fn not_values_name_existing_rows() {
    // Pins: NOT_VALUES does not outlive the rows it explains.
    let rows = reference_rows();
    for (section, field, _) in NOT_VALUES {
        assert!(
            rows.iter()
                .any(|r| r.section == *section && r.field == *field),
            "NOT_VALUES names ### {section} `{field}`, which docs/reference.md no longer has"
        );
    }
}

#[test]
fn readme_defaults_are_the_references() {
    // Pins: each default the guide's config table repeats is the reference's.
    let rows = reference_rows();
    let sections: Vec<&str> = rows.iter().map(|r| r.section.as_str()).collect();
    let mut checked = 0;
    for (section, field, stated) in readme_defaults(&sections) {
        let Some(row) = rows
            .iter()
            .find(|r| r.section == section && r.field == field)
        else {
            panic!("docs/guide.md: `{field}` of {section} is not in docs/reference.md");
        };
        let Ok(value) = documented(row) else {
            continue; // the reference states no one value: the guide's words are a note
        };
        assert_eq!(
            stated, value,
            "docs/guide.md: the default of {section} `{field}` is {stated:?}; docs/reference.md:{} \
             says {value:?}",
            row.line
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} guide defaults checked");
}

/// The guide's `| section | fields (default) |` table as `(section, field, default)`: the
/// first word of the parenthesis after each field (`` `timeout` (30s, until …) `` → `30s`).
/// Fields in `{…}` belong to the section named before the brace (`rate_limits[]`), to
/// `<parent>.<name>` (`tls` in `server`) or, when the reference has neither, to the parent
/// section under a prefix (`adaptive.min_inflight`).
fn readme_defaults(sections: &[&str]) -> Vec<(String, String, String)> {
    let table = GUIDE
        .split_once("| section | fields (default) |")
        .expect("docs/guide.md has the `| section | fields (default) |` table")
        .1;
    let mut found = Vec::new();
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells = cells(line);
        let section = cells[0]
            .trim_matches('`')
            .replace(".<name>", "")
            .replace("[]", "");
        readme_fields(&cells[1], (section, String::new()), sections, &mut found);
    }
    found
}

/// The fields and defaults of one guide cell, in the section and field prefix `at`.
fn readme_fields(
    cell: &str,
    at: (String, String),
    sections: &[&str],
    found: &mut Vec<(String, String, String)>,
) {
    let mut stack = vec![at];
    let (mut name, mut rest) = (None::<String>, cell);
    while let Some(c) = rest.chars().next() {
        let (section, prefix) = stack.last().unwrap().clone();
        if c == '`' {
            let (word, after) = rest[1..].split_once('`').unwrap();
            (name, rest) = (Some(word.replace("[]", "")), after);
            continue;
        }
        if c == '(' {
            let close = closing_paren(rest);
            if let Some(field) = name.take() {
                let default = first_word(&rest[1..close]);
                found.push((section, format!("{prefix}{field}"), default));
            }
            rest = &rest[close + 1..];
            continue;
        }
        if c == '{' {
            let field = name.take().unwrap_or_default();
            let nested = format!("{section}.{field}");
            stack.push(if sections.contains(&field.as_str()) {
                (field, String::new())
            } else if sections.contains(&nested.as_str()) {
                (nested, String::new())
            } else {
                (section, format!("{prefix}{field}."))
            });
        } else if c == '}' {
            stack.pop();
        }
        rest = &rest[c.len_utf8()..];
    }
}

/// The index of the `)` closing the `(` that `text` starts with.
fn closing_paren(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return i,
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("docs/guide.md: unclosed parenthesis in {text:?}");
}

/// `2s, a whole task write` → `2s`; `` `local` | `allow` `` → `local`; `[]: IP literals` → `[]`.
fn first_word(text: &str) -> String {
    let text = text.replace('`', "");
    let end = text.find([',', ':', ';', ' ']).unwrap_or(text.len());
    text[..end].to_owned()
}
