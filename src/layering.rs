//! The layers of `lib.rs`, checked: every `crate::<module>` path in the sources (outside
//! comments and test modules) must name a module of a lower layer, or an earlier one of the
//! same layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules, bottom to top: a module may use only those before it.
const ORDER: [&str; 22] = [
    // 1. Data and pure functions.
    "canonical",
    "h1",
    "config",
    "client",
    "clock",
    "budget",
    "shutdown",
    "metrics",
    // 2. Decisions and their state.
    "store",
    "router",
    "limit",
    // 3. Upstreams and responses.
    "proxy",
    "body",
    "defer",
    "rescue",
    // 4. One config version's built form.
    "runtime",
    // 5. One request, and what runs beside.
    "pipeline",
    "supervise",
    // 6. Serving.
    "net",
    // 7. Supervision.
    "reload",
    "admin",
    "app",
];

/// Modules outside the order: the sample upstream (uses only layers 1–3) and this test.
const OUTSIDE: [&str; 2] = ["demo", "layering"];

/// Pins: no module uses a module above it (see the module docs).
#[test]
fn modules_use_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = BTreeSet::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_owned())
            .unwrap_or_default();
        if matches!(top.as_str(), "lib" | "main") || OUTSIDE.contains(&top.as_str()) {
            continue;
        }
        let from = rank(&top).unwrap_or_else(|| panic!("{top} is not in ORDER"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for used in crate_paths(&code_of(&text)) {
            if used == top || OUTSIDE.contains(&used.as_str()) {
                continue;
            }
            match rank(&used) {
                Some(to) if to < from => {}
                _ => {
                    wrong.insert(format!("{} uses crate::{used}", rel.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or unknown uses:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|m| *m == module)
}

/// Every `.rs` file below `dir`, test files excluded.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
    out
}

/// `text` without its comments and without its test modules (which may use anything).
fn code_of(text: &str) -> String {
    let code = ["#[cfg(test)]\nmod tests {", "#[cfg(all(test"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .map_or(text, |at| &text[..at]);
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of every `crate::…` in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
