use proptest::prelude::*;

use super::*;

const REJECT: EscapedSlashes = EscapedSlashes::Reject;
const KEEP: EscapedSlashes = EscapedSlashes::Keep;

fn canon(raw: &str) -> Result<String, NotCanonical> {
    path(raw, REJECT).map(Cow::into_owned)
}

/// The spellings of `/login`, and the RFC 3986 §6.2.2 steps one by one.
#[test]
fn spellings_of_login_are_one_path() {
    for raw in [
        "/login",
        "/%6cogin",
        "/%6Cogin",
        "//login",
        "///login",
        "/./login",
        "/x/../login",
        "/%2e/login",
        "/x/%2E%2E/login",
        "/a/b/../../login",
        "/%6c%6f%67%69%6e",
    ] {
        assert_eq!(canon(raw).as_deref(), Ok("/login"), "{raw}");
    }
}

/// Escapes of reserved characters stay, upper-cased; raw bytes a path may not hold are
/// encoded; trailing slashes stay; case is significant.
#[test]
fn encoding_rules() {
    let cases = [
        ("/a%3fb", "/a%3Fb"),
        ("/a%3Bb", "/a%3Bb"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a\"b{c}[d]^e|f", "/a%22b%7Bc%7D%5Bd%5D%5Ee%7Cf"),
        ("/login/", "/login/"),
        ("/login/.", "/login/"),
        ("/login/x/..", "/login/"),
        ("/login//", "/login/"),
        ("/Login", "/Login"),
        ("/%7e%41", "/~A"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("/", "/"),
        ("//", "/"),
        ("/.", "/"),
        ("/a/..", "/"),
        ("/%25", "/%25"),
        ("/%256c", "/%256c"),
    ];
    for (raw, want) in cases {
        assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
    }
    assert_eq!(canon("*").as_deref(), Ok("*"));
    assert_eq!(canon(""), Err(NotCanonical::NotAPath));
}

/// What has no single meaning is refused, each with its own cause.
#[test]
fn refusals() {
    let cases = [
        ("/%", NotCanonical::PercentEncoding),
        ("/%4", NotCanonical::PercentEncoding),
        ("/%zz", NotCanonical::PercentEncoding),
        ("/a%00b", NotCanonical::Nul),
        ("/a\0b", NotCanonical::Nul),
        ("/login%2f", NotCanonical::EscapedSlash),
        ("/login%2F", NotCanonical::EscapedSlash),
        ("/a%5cb", NotCanonical::EscapedSlash),
        ("/a\\b", NotCanonical::EscapedSlash),
        ("/..", NotCanonical::AboveRoot),
        ("/a/../..", NotCanonical::AboveRoot),
        ("/%2e%2e/x", NotCanonical::AboveRoot),
        ("/./..", NotCanonical::AboveRoot),
        ("/x/..;/login", NotCanonical::DotParameters),
        ("/x/.;a/login", NotCanonical::DotParameters),
        ("/x/%2e%2e;/login", NotCanonical::DotParameters),
        ("login", NotCanonical::NotAPath),
    ];
    for (raw, want) in cases {
        assert_eq!(canon(raw), Err(want), "{raw}");
    }
}

/// With `escaped_slashes: keep`, escaped slashes and backslashes are forwarded encoded and
/// never split a segment (so `..%2F` is not a dot segment).
#[test]
fn keep_escaped_slashes() {
    let keep = |raw| path(raw, KEEP).map(Cow::into_owned);
    assert_eq!(keep("/a%2fb").as_deref(), Ok("/a%2Fb"));
    assert_eq!(keep("/a%5Cb").as_deref(), Ok("/a%5Cb"));
    assert_eq!(keep("/a\\b").as_deref(), Ok("/a%5Cb"));
    assert_eq!(keep("/x/..%2Flogin").as_deref(), Ok("/x/..%2Flogin"));
    assert_eq!(keep("/a%00"), Err(NotCanonical::Nul));
    assert!(matches!(path("/a%2Fb", KEEP), Ok(Cow::Borrowed(_))));
}

/// A canonical path comes back borrowed: nothing is allocated for it.
#[test]
fn canonical_paths_are_borrowed() {
    for raw in [
        "/",
        "/login",
        "/api/v1/orders/42",
        "/a;b=c",
        "/%C3%A9",
        "/x/",
        "*",
    ] {
        assert!(
            matches!(path(raw, REJECT), Ok(Cow::Borrowed(p)) if p == raw),
            "{raw}"
        );
    }
    assert!(matches!(path("/%6cogin", REJECT), Ok(Cow::Owned(_))));
}

/// `;` parameters are dropped for matching only.
#[test]
fn match_path_drops_parameters() {
    let cases = [
        ("/login", "/login"),
        ("/login;jsessionid=1", "/login"),
        ("/api;v=1/login;x", "/api/login"),
        ("/;x/login", "/login"),
        ("/login/;x", "/login/"),
        ("/;x", "/"),
        ("/a;", "/a"),
    ];
    for (p, want) in cases {
        assert_eq!(match_path(p), want, "{p}");
    }
    assert!(matches!(match_path("/login"), Cow::Borrowed(_)));
}

/// Host values: names, addresses, ports; one trailing dot dropped; the rest refused.
#[test]
fn hosts() {
    let ok = [
        ("api.example.com", "api.example.com", None),
        ("API.Example.com:8080", "API.Example.com", Some(8080)),
        ("admin.example.com.", "admin.example.com", None),
        ("admin.example.com.:443", "admin.example.com", Some(443)),
        ("localhost", "localhost", None),
        ("127.0.0.1:80", "127.0.0.1", Some(80)),
        ("[::1]", "[::1]", None),
        ("[2001:db8::1]:8443", "[2001:db8::1]", Some(8443)),
        ("svc_1.internal", "svc_1.internal", None),
        ("example.com:", "example.com", None),
    ];
    for (value, name, port) in ok {
        assert_eq!(host(value), Ok(Host { name, port }), "{value}");
    }
    for bad in [
        "",
        ".",
        "admin.example.com..",
        "a..b",
        ".a",
        "user@example.com",
        "example.com:80:80",
        "example.com:65536",
        "example.com:8o",
        "admin%2eexample.com",
        "a b",
        "a,b",
        "[::1",
        "[::1]x",
        "[fe80::1%25eth0]",
        "[v1.x]",
        "caf\u{e9}.example",
        &"a".repeat(64),
        &format!("{}.com", "a.".repeat(130)),
    ] {
        assert_eq!(host(bad), Err(NotCanonical::HostInvalid), "{bad:?}");
    }
    assert_eq!(host("\u{e9}.example"), Err(NotCanonical::HostInvalid));
}

/// `:authority` and `Host` agree when they name the same host and port.
#[test]
fn hosts_agree() {
    fn h(v: &str) -> Host<'_> {
        host(v).unwrap()
    }
    assert!(h("Example.com").agrees(&h("example.com.")));
    assert!(h("example.com:443").agrees(&h("example.com")));
    assert!(!h("example.com:443").agrees(&h("example.com:8443")));
    assert!(!h("decoy.invalid").agrees(&h("admin.example.com")));
}

/// Paths built from the characters that matter to normalisation, so that cases hit dots,
/// slashes, escapes and parameters often.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%5C"),
        Just("\\"),
        Just("%6c"),
        Just("%00"),
        Just("%"),
        Just("%4"),
        Just("%c3%a9"),
        Just("\u{e9}"),
        Just(";"),
        Just("a"),
        Just("login"),
        Just("~"),
        Just("%7E"),
        Just("\""),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn both_modes() -> impl Strategy<Value = EscapedSlashes> {
    prop_oneof![Just(REJECT), Just(KEEP)]
}

proptest! {
    /// Normalising twice changes nothing; a canonical path comes back borrowed.
    #[test]
    fn normalisation_is_idempotent(raw in tricky_path(), mode in both_modes()) {
        if let Ok(once) = path(&raw, mode) {
            let twice = path(&once, mode);
            prop_assert!(matches!(twice, Ok(Cow::Borrowed(_))), "{raw:?} → {once:?} → {twice:?}");
            prop_assert_eq!(twice.as_deref(), Ok(&*once));
        }
    }

    /// The output holds no `//`, `/./`, `/../`, and does not end in `/.` or `/..`.
    #[test]
    fn output_has_no_dot_segments_or_empty_segments(raw in tricky_path(), mode in both_modes()) {
        if let Ok(p) = path(&raw, mode) {
            prop_assert!(p.starts_with('/'));
            for bad in ["//", "/./", "/../"] {
                prop_assert!(!p.contains(bad), "{raw:?} → {p:?}");
            }
            prop_assert!(!p.ends_with("/.") && !p.ends_with("/.."), "{raw:?} → {p:?}");
            let m = match_path(&p);
            prop_assert!(!m.contains("//") && !m.contains(';'), "{p:?} → {m:?}");
        }
    }

    /// Arbitrary bytes (as hyper could never deliver them) never panic.
    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), mode in both_modes()) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = path(&text, mode);
        let _ = path(&format!("/{text}"), mode);
        let _ = match_path(&format!("/{text}"));
        let _ = host(&text);
    }

    /// A host that is accepted is accepted again without its port, and agrees with itself.
    #[test]
    fn accepted_hosts_are_stable(value in "[a-zA-Z0-9._:\\[\\]-]{0,24}") {
        if let Ok(h) = host(&value) {
            let again = host(h.name);
            prop_assert!(again.is_ok(), "{value:?} → {h:?}");
            prop_assert!(h.agrees(&again.unwrap()));
        }
    }
}
