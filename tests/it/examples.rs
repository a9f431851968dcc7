//! What a newcomer copies must work: every config in `examples/`, every sluice config block of
//! docs/migrating.md and the sluice configs of the peer bench (`benches/peer/`) pass
//! `sluice check` — exit 0 and no `warning:` line (issue 29).
//!
//! Files a config names under `/etc/sluice/` (TLS certificate and key, admin token) are made
//! for the test in a temporary directory and the config is checked as a copy naming them there:
//! `check` reads those files, so the example is checked whole, TLS included, not with its TLS
//! commented out.

use std::path::{Path, PathBuf};

use crate::support::bin::{self, finish};
use crate::support::temp_dir;
use rcgen::{CertificateParams, KeyPair};

/// Where a shipped config keeps the files an operator provides.
const OPERATOR_FILES: &str = "/etc/sluice/";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `sluice check -c <yaml written to a file>`; panics, naming `what`, unless it exits 0 with no
/// warning. Files under [`OPERATOR_FILES`] are made first (see [`materialise`]).
fn assert_checks(what: &str, yaml: &str) {
    let dir = temp_dir("examples");
    let yaml = materialise(what, yaml, &dir);
    let path = dir.join("config.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = finish(bin::command().args(["check", "-c"]).arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out.code,
        Some(0),
        "{what} does not pass `sluice check`:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("warning:"),
        "{what}: `sluice check` warns:\n{}",
        out.stderr
    );
}

/// Writes each file `yaml` names under [`OPERATOR_FILES`] into `dir` — a certificate (a name
/// ending in `cert.pem`) and its key (`key.pem`) generated with rcgen, a token (`.token`) —
/// and returns `yaml` naming them there. A file of another kind is a test failure: this
/// function would not know what to put in it.
fn materialise(what: &str, yaml: &str, dir: &Path) -> String {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut rest = yaml;
    while let Some(at) = rest.find(OPERATOR_FILES) {
        let name = rest[at + OPERATOR_FILES.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect::<String>()
            .trim_end_matches('.')
            .to_string();
        rest = &rest[at + OPERATOR_FILES.len()..];
        // The directory itself, named in a comment.
        if name.is_empty() {
            continue;
        }
        let content = if name.ends_with("cert.pem") {
            cert.pem()
        } else if name.ends_with("key.pem") {
            key.serialize_pem()
        } else if name.ends_with(".token") {
            "a-test-token-0123456789abcdef\n".to_string()
        } else {
            panic!("{what} names {OPERATOR_FILES}{name}: the test cannot make such a file");
        };
        std::fs::write(dir.join(&name), content).unwrap();
    }
    yaml.replace(OPERATOR_FILES, &format!("{}/", dir.display()))
}

/// The `.yaml` files of a directory of the repository, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every config in examples/ passes `check`, TLS and admin token included; the first one is the
/// README's "Your first config".
#[test]
fn examples_pass_check() {
    let files = yaml_files("examples");
    assert!(
        files.iter().any(|f| f.ends_with("first-config.yaml")),
        "examples/first-config.yaml is missing: {files:?}"
    );
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        assert_checks(&file.display().to_string(), &yaml);
    }
}

/// The first config has what issue 29's newcomer needed: TLS, an admin token, a capped upstream
/// with a queue, a critical route, a per-IP login limit and an API-key limit — so that dropping
/// one of them from the file fails here, not only in a reader's hands.
#[test]
fn first_config_covers_the_newcomer_case() {
    let yaml = std::fs::read_to_string(root().join("examples/first-config.yaml")).unwrap();
    for needed in [
        "tls:",
        "token_file:",
        "max_inflight:",
        "queue:",
        "priority: critical",
        "/login",
        "key: client_ip",
        "key: \"header:",
    ] {
        assert!(
            yaml.contains(needed),
            "examples/first-config.yaml lacks {needed}"
        );
    }
    assert!(
        yaml.lines().count() <= 35,
        "the first config is read in the README: keep it about 30 lines"
    );
}

/// The README's "Your first config" shows examples/first-config.yaml as it is: the one
/// `yaml` block of that section is the file, byte for byte.
#[test]
fn readme_shows_the_first_config_as_it_is() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let file = std::fs::read_to_string(root().join("examples/first-config.yaml")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Your first config"))
        .expect("README has a \"Your first config\" section");
    let blocks: Vec<Block> = fenced_blocks(section)
        .into_iter()
        .filter(|b| b.info == "yaml")
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "one yaml block in README's \"Your first config\""
    );
    assert_eq!(
        blocks[0].text, file,
        "README's first config differs from the file"
    );
}

/// A fenced block of a Markdown file: its info string, first line number and text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

/// The fenced (```) blocks of a Markdown text, in order.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_string(),
                        line: n + 2,
                        text: String::new(),
                    });
                }
            }
            Some(block) => {
                if trimmed.trim_end() == "```" {
                    blocks.push(open.take().unwrap());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "an unclosed ``` block");
    blocks
}

/// The blocks of docs/migrating.md marked ```yaml (exactly) are sluice configs: whole ones pass
/// `check`, fragments (first line `# fragment`) are valid YAML. Other peers' YAML is marked
/// ```yaml <peer> and left alone.
#[test]
fn migrating_configs_pass_check() {
    let doc = "docs/migrating.md";
    let markdown = std::fs::read_to_string(root().join(doc)).unwrap();
    let (mut whole, mut fragments) = (0, 0);
    for block in fenced_blocks(&markdown) {
        if block.info != "yaml" {
            continue;
        }
        let what = format!("{doc}:{}", block.line);
        if block.text.lines().next().map(str::trim) == Some("# fragment") {
            serde_yaml::from_str::<serde_yaml::Value>(&block.text)
                .unwrap_or_else(|e| panic!("{what}: a fragment that is not YAML: {e}"));
            fragments += 1;
        } else {
            assert_checks(&what, &block.text);
            whole += 1;
        }
    }
    // One worked example for each of NGINX, HAProxy, Traefik and Envoy at least: an extractor
    // that finds nothing must not pass.
    assert!(
        whole >= 4,
        "{doc}: {whole} whole sluice configs found, {fragments} fragments"
    );
}

/// The sluice configs the peer bench starts are valid: a broken one would make
/// `benches/peer/run.sh` fail only after it started NGINX and HAProxy.
#[test]
fn peer_bench_configs_pass_check() {
    let files = yaml_files("benches/peer");
    assert!(!files.is_empty());
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        assert_checks(&file.display().to_string(), &yaml);
    }
}
