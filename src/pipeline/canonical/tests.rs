use http::Method;
use proptest::prelude::*;

use super::*;
use crate::canonical::match_path;
use crate::config::{HostMatch, PathMatch, RouteMatch};
use crate::router::{Router, Target};

fn request(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
    let mut b = Request::builder().version(version).uri(uri);
    for h in hosts {
        b = b.header(HOST, *h);
    }
    b.body(()).expect("test request")
}

fn checked(mut req: Request<()>) -> Result<String, NotCanonical> {
    let (req, _) = check(&mut req, EscapedSlashes::Reject)?;
    Ok(req.uri().to_string())
}

/// The path is rewritten in place, query untouched; authority and scheme of an absolute-form
/// or HTTP/2 target stay.
#[test]
fn rewrites_path_keeps_query() {
    let r = request(Version::HTTP_11, "/%6cogin/./x/..?a=%6c&b=/../", &["h"]);
    assert_eq!(checked(r).as_deref(), Ok("/login/?a=%6c&b=/../"));
    let r = request(Version::HTTP_2, "https://api.example.com//login", &[]);
    assert_eq!(checked(r).as_deref(), Ok("https://api.example.com/login"));
    let r = request(Version::HTTP_11, "http://h/x/%2e%2e/login", &["h"]);
    assert_eq!(checked(r).as_deref(), Ok("http://h/login"));
}

/// A canonical request is left alone (the same URI, not a rebuilt one).
#[test]
fn canonical_request_untouched() {
    let mut r = request(Version::HTTP_11, "/login?x=1", &["h"]);
    let before = r.uri().clone();
    check(&mut r, EscapedSlashes::Reject).expect("canonical");
    assert_eq!(r.uri(), &before);
}

/// One valid `Host`; absent only on HTTP/1.0; `:authority` and `Host` must agree.
#[test]
fn host_rules() {
    let v11 = Version::HTTP_11;
    let cases: [(Request<()>, Result<(), NotCanonical>); 10] = [
        (request(v11, "/", &["admin.example.com"]), Ok(())),
        (request(v11, "/", &["admin.example.com."]), Ok(())),
        (
            request(v11, "/", &["admin.example.com.."]),
            Err(NotCanonical::HostInvalid),
        ),
        (
            request(v11, "/", &["decoy.invalid", "admin.example.com"]),
            Err(NotCanonical::HostRepeated),
        ),
        (request(v11, "/", &[]), Err(NotCanonical::HostMissing)),
        (request(Version::HTTP_10, "/", &[]), Ok(())),
        (
            request(Version::HTTP_2, "/", &[]),
            Err(NotCanonical::HostMissing),
        ),
        (
            request(Version::HTTP_2, "https://a.example/", &["b.example"]),
            Err(NotCanonical::HostMismatch),
        ),
        (
            request(Version::HTTP_2, "https://A.example:443/", &["a.example"]),
            Ok(()),
        ),
        (
            request(v11, "http://user@a.example/", &["a.example"]),
            Err(NotCanonical::HostInvalid),
        ),
    ];
    for (req, want) in cases {
        let what = format!("{:?} {} {:?}", req.version(), req.uri(), req.headers());
        assert_eq!(checked(req).map(drop), want, "{what}");
    }
}

/// A request whose host and path are both bad is refused for its host, as before the checks
/// were split; a bad path alone leaves the request as it came.
#[test]
fn host_fault_named_before_path_fault() {
    let r = request(Version::HTTP_11, "/a/%00", &["bad host"]);
    assert_eq!(checked(r).map(drop), Err(NotCanonical::HostInvalid));
    let mut r = request(Version::HTTP_11, "/a/%00", &["h"]);
    assert_eq!(
        check(&mut r, EscapedSlashes::Reject).map(drop),
        Err(NotCanonical::Nul)
    );
    assert_eq!(r.uri(), "/a/%00");
}

/// The host routes match: the authority's when there is one, else `Host`'s; no port, no
/// trailing dot, case as sent; none for HTTP/1.0 without `Host`.
#[test]
fn routed_host() {
    let cases = [
        (
            request(Version::HTTP_11, "/", &["Admin.Example.com.:8080"]),
            Some("Admin.Example.com"),
        ),
        (
            request(Version::HTTP_2, "https://a.example:443/", &["A.example"]),
            Some("a.example"),
        ),
        (
            request(Version::HTTP_11, "http://[::1]:80/x", &[]),
            Some("[::1]"),
        ),
        (request(Version::HTTP_10, "/", &[]), None),
    ];
    for (mut req, want) in cases {
        let (_, host) = check(&mut req, EscapedSlashes::Reject).expect("valid");
        assert_eq!(host, want);
    }
}

/// Routes of the shape, plus a few that path tricks could aim at.
fn router() -> Router {
    let route = |path: PathMatch, host: Option<&str>| RouteMatch {
        host: host.map(|h| HostMatch::Exact(h.to_owned())),
        path,
        methods: None,
    };
    Router::new(vec![
        route(PathMatch::Prefix("/login".into()), None),
        route(PathMatch::Exact("/a/b".into()), None),
        route(PathMatch::Prefix("/a".into()), Some("admin.example.com")),
        route(PathMatch::Prefix("/caf%C3%A9".into()), None),
        route(PathMatch::default(), None),
    ])
}

/// What the pipeline does up to routing: canonicalise, then route on the match path.
fn route_of(router: &Router, path: &str) -> Option<Option<usize>> {
    let mut req = request(Version::HTTP_11, "/", &["admin.example.com"]);
    *req.uri_mut() = format!("http://admin.example.com{path}").parse().ok()?;
    let (req, host) = check(&mut req, EscapedSlashes::Reject).ok()?;
    let matched = match_path(req.uri().path());
    Some(router.find(&Target {
        host,
        path: &matched,
        method: &Method::GET,
    }))
}

fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%6c"),
        Just("login"),
        Just("l"),
        Just("ogin"),
        Just("a"),
        Just("b"),
        Just(";x"),
        Just("%c3%a9"),
        Just("caf"),
        Just("%41"),
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|p| format!("/{}", p.concat()))
}

/// Pins the bypasses: every spelling of `/login` takes the `login` route.
#[test]
fn spellings_route_to_login() {
    let r = router();
    for p in [
        "/login",
        "/%6cogin",
        "//login",
        "/./login",
        "/x/../login",
        "/%2e/login",
        "/login;jsessionid=1",
        "/;x/login",
        "/login/",
        "/login.json",
        "/login.",
    ] {
        assert_eq!(route_of(&r, p), Some(Some(0)), "{p}");
    }
    assert_eq!(route_of(&r, "/login%2f"), None, "refused");
    assert_eq!(route_of(&r, "/caf%c3%a9/x"), Some(Some(3)));
}

proptest! {
    /// Routing `p` and routing its canonical form pick the same route.
    #[test]
    fn routing_p_and_its_canonical_form_agree(p in tricky_path()) {
        let r = router();
        if let Ok(canonical) = crate::canonical::path(&p, EscapedSlashes::Reject) {
            if let Some(direct) = route_of(&r, &p) {
                prop_assert_eq!(Some(direct), route_of(&r, &canonical), "{:?} vs {:?}", p, canonical);
            }
        }
    }
}
