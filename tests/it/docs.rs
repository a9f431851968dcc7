//! The Markdown of the repository points only inside it (issue 29): a reader who clones sluice
//! can follow every link and run every command the docs show.

use std::path::{Component, Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.md` file of the tree, `target/` and `.git/` excepted (untracked files too: a doc
/// about to be committed is checked before it is).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if name != "target" && name != ".git" {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root(), &mut files);
    files.sort();
    files
}

/// `path` (relative, `/`-separated) joined to `base` (relative to the root) with `.` and `..`
/// resolved by name; `None` when a `..` climbs above the root.
fn resolve(base: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = base
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for c in Path::new(path).components() {
        match c {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// Link destinations of a Markdown text: inline `[text](dest)` / `![alt](dest)` and reference
/// definitions `[label]: dest`, with the byte ranges of the destinations (so the rest of the
/// text can be scanned without them).
fn links(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("](") {
        let start = from + at + 2;
        let end = text[start..]
            .find(|c: char| c == ')' || c.is_whitespace())
            .map_or(text.len(), |e| start + e);
        found.push((text[start..end].to_string(), start..end));
        from = end;
    }
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let (true, Some(colon)) = (trimmed.starts_with('['), trimmed.find("]: ")) {
            let lead = line.len() - trimmed.len();
            let start = offset + lead + colon + 3;
            let dest = text[start..offset + line.len()].split_whitespace().next();
            if let Some(dest) = dest {
                let start = start + text[start..].find(dest).unwrap();
                found.push((dest.to_string(), start..start + dest.len()));
            }
        }
        offset += line.len();
    }
    found
}

/// Why `dest`, a link destination in the file at `file` (relative to the root), leaves the
/// repository or names nothing in it, if it does. URLs, mail addresses and anchors stay.
fn link_leaves(file: &Path, dest: &str) -> Option<String> {
    let dest = dest.trim_start_matches('<').trim_end_matches('>');
    if dest.contains("://") || dest.starts_with("mailto:") || dest.starts_with('#') {
        return None;
    }
    let path = dest.split(['#', '?']).next().unwrap_or_default();
    let (base, path) = match path.strip_prefix('/') {
        // GitHub reads a leading slash as the repository's root.
        Some(from_root) => (Path::new(""), from_root),
        None => (file.parent().unwrap(), path),
    };
    match resolve(base, path) {
        None => Some(format!("the link ({dest}) climbs out of the repository")),
        Some(target) if !path.is_empty() && !root().join(&target).exists() => Some(format!(
            "the link ({dest}) names {}, which does not exist",
            target.display()
        )),
        Some(_) => None,
    }
}

/// Why `word`, a word of the text outside links (prose, `code`, fenced blocks), is a path that
/// leaves the repository, if it is. The docs' commands run from the project root, so a path is
/// resolved from there: `../shared/bench/run.sh` leaves, whichever file names it. Absolute
/// paths (`/etc/sluice/…`, URL paths such as `/x/../login`) are not relative paths.
fn word_leaves(word: &str) -> Option<String> {
    if word.starts_with('/') || word.contains("://") || !word.contains('/') {
        return None;
    }
    if !word.split('/').any(|segment| segment == "..") {
        return None;
    }
    match resolve(Path::new(""), word) {
        Some(_) => None,
        None => Some(format!("`{word}` is a path outside the repository")),
    }
}

/// Every place in `text` (the file at `file`, relative to the root) that leaves the repository,
/// as `line: why`.
fn outside_paths(file: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut rest = text.to_string();
    for (dest, range) in links(text) {
        if let Some(why) = link_leaves(file, &dest) {
            problems.push(format!("{}: {why}", line_of(range.start)));
        }
        // Blank the destination out (same length, so line numbers hold) for the word scan.
        rest.replace_range(range.clone(), &" ".repeat(range.len()));
    }
    for (n, line) in rest.lines().enumerate() {
        let words = line.split(|c: char| c.is_whitespace() || "`'\"()[]{}<>,;=|*".contains(c));
        for word in words {
            if let Some(why) = word_leaves(word.trim_end_matches([':', '.'])) {
                problems.push(format!("{}: {why}", n + 1));
            }
        }
    }
    problems
}

/// No Markdown file links to, or names as a relative path, anything outside the repository
/// (README and docs/benchmarks.md once ran the peer bench from `../shared/bench/`), and no
/// relative link names a file that is not there (docs/guide.md once linked `../reference.md`).
#[test]
fn no_markdown_points_outside_the_repository() {
    let files = markdown_files();
    assert!(files.iter().any(|f| f.ends_with("README.md")), "{files:?}");
    let mut problems = Vec::new();
    for path in files {
        let file = path.strip_prefix(root()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for problem in outside_paths(file, &text) {
            problems.push(format!("{}:{problem}", file.display()));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The checker itself: what it must catch and what it must let through.
#[test]
fn outside_paths_catches_what_leaves() {
    let doc = Path::new("docs/x.md");
    let caught = |text: &str| outside_paths(doc, text).len();
    assert_eq!(caught("see [the bench](../../shared/bench/run.sh)"), 1);
    assert_eq!(caught("[ref]: ../../outside.md"), 1);
    assert_eq!(caught("[gone](../no-such-file.md) [here](reference.md)"), 1);
    assert_eq!(caught("run `../shared/bench/run.sh` from the root"), 1);
    assert_eq!(
        caught("```sh\nTARGETS_FILE=x ../shared/bench/run.sh\n```"),
        1
    );
    assert_eq!(caught("`nginx -c ../shared/bench/nginx-upstream.conf`"), 1);
    assert_eq!(caught("a/../../b"), 1);
    // Inside: links relative to docs/, URLs, anchors, absolute and URL paths.
    assert_eq!(
        caught("[README](../README.md) [bench](../benches/peer/README.md)"),
        0
    );
    assert_eq!(
        caught("[x](#order-of-checks) [y](https://example.com/../a)"),
        0
    );
    assert_eq!(
        caught("`/x/../login` and `/a/../..`, `/etc/sluice/cert.pem`"),
        0
    );
    assert_eq!(caught("`benches/peer/run.sh`, 0..=128, 1..100, wait..."), 0);
}
