//! Errors that teach: the YAML parser's and serde's messages, said the way a person who made
//! the mistake would understand them. Each rewrite keeps the place (line, column, field path);
//! only the words change.
//!
//! - "mapping values are not allowed in this context", most often a key indented deeper than
//!   the key before it, names both keys and their lines;
//! - a tab used for indentation says so, and that YAML indents with spaces;
//! - an unknown field suggests the nearest known one ("did you mean `queue_timeout`?").

/// The message for an error at 1-based `line` of `text`, taught where we know how.
pub(super) fn teach(message: &str, text: &str, line: Option<usize>) -> String {
    if message.starts_with("mapping values are not allowed") {
        if let Some(taught) = line.and_then(|line| deeper_key(text, line)) {
            return taught;
        }
        return "a `: ` here starts a mapping where a plain value was expected: indent this key \
                like its siblings, or quote the value if it contains `: `"
            .to_owned();
    }
    if message.contains("found a tab character") || message.contains("tab character") {
        return "a tab is not allowed for indentation in YAML: indent with spaces".to_owned();
    }
    if let Some(taught) = suggest_field(message) {
        return taught;
    }
    message.to_owned()
}

/// "indentation: `rate:` on line 11 is deeper than `name:` on line 10 (keys of one mapping line
/// up)", when line `line` holds a key indented deeper than the key on the line before it.
fn deeper_key(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = *lines.get(line.checked_sub(1)?)?;
    let (column, key) = key_of(here)?;
    let (before_at, before) = lines[..line - 1]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    let (before_column, before_key) = key_of(before)?;
    (column > before_column).then(|| {
        format!(
            "indentation: `{key}:` on line {line} is deeper than `{before_key}:` on line {}; keys of \
             one mapping line up (here at column {})",
            before_at + 1,
            before_column + 1
        )
    })
}

/// The 0-based column and text of the key a line starts with (`- ` list markers skipped).
fn key_of(line: &str) -> Option<(usize, &str)> {
    let mut column = line.len() - line.trim_start().len();
    let mut rest = line.trim_start();
    while let Some(item) = rest.strip_prefix("- ") {
        let trimmed = item.trim_start();
        column += rest.len() - trimmed.len();
        rest = trimmed;
    }
    let (key, _) = rest.split_once(':')?;
    let valid = !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || "_-".contains(c));
    valid.then_some((column, key))
}

/// serde's "unknown field `rat`, expected one of `name`, `rate`, …" with "; did you mean
/// `rate`?" when one known field is close enough to be what was meant.
fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (strsim::damerau_levenshtein(unknown, known), known))
        .min()?;
    let (distance, known) = nearest;
    // One edit in four characters: `rat` → `rate`, `queue_timout` → `queue_timeout`; not
    // `foo` → `key`.
    let close = distance > 0 && distance <= (known.len() / 4).max(1);
    close.then(|| format!("{message}; did you mean `{known}`?"))
}

#[cfg(test)]
mod tests {
    use super::teach;

    #[test]
    fn a_key_deeper_than_its_sibling_is_named_with_both_lines() {
        let text = "routes:\n  - name: x\n    rate_limits:\n      - name: l\n          rate: 5/s\n";
        let taught = teach(
            "mapping values are not allowed in this context",
            text,
            Some(5),
        );
        assert_eq!(
            taught,
            "indentation: `rate:` on line 5 is deeper than `name:` on line 4; keys of one \
             mapping line up (here at column 9)"
        );
    }

    #[test]
    fn a_colon_in_a_plain_value_is_explained() {
        let taught = teach(
            "mapping values are not allowed in this context",
            "a: b: c\n",
            Some(1),
        );
        assert!(taught.contains("quote the value"), "{taught}");
    }

    #[test]
    fn tabs_and_near_misses_teach() {
        let tab = teach(
            "found a tab character that violates indentation, while scanning a plain scalar at line 10 column 15",
            "",
            Some(11),
        );
        assert_eq!(
            tab,
            "a tab is not allowed for indentation in YAML: indent with spaces"
        );
        let typo = teach(
            "unknown field `queue_timout`, expected one of `max_inflight`, `queue`, `queue_timeout`",
            "",
            None,
        );
        assert!(typo.ends_with("; did you mean `queue_timeout`?"), "{typo}");
        let far = teach("unknown field `foo`, expected `key` or `rate`", "", None);
        assert!(!far.contains("did you mean"), "{far}");
    }
}
