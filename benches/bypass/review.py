"""Tries to reach /login (and host admin.example.com) through sluice without their limits.

Run by benches/bypass.sh, which starts the upstream (upstream.py) and sluice with the routes of
issue 13: `admin-host` (host admin.example.com), `login` (path_prefix /login), both 1/m burst 1,
then a catch-all. Both buckets are spent first; then every spelling is sent as an HTTP/1.1
origin-form target, an absolute-form target and an HTTP/2 `:path` (curl --http2-prior-knowledge
--path-as-is), plus other request-target forms, methods, rewrite headers and Host spellings.

A spelling "got through" when sluice forwarded it under another route's policy (its
RateLimit-Policy does not name login-limit / admin-limit) while the path (host) the upstream
received means /login (admin.example.com) to a family of upstream path handling (see
`families`). Output: one line per spelling, then the counts.
"""
import json, re, socket, subprocess, sys, unicodedata
from urllib.parse import unquote

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 18480
ADDR = ("127.0.0.1", PORT)
HOSTPORT = f"127.0.0.1:{PORT}"

def raw(request: bytes, timeout=5):
    s = socket.create_connection(ADDR, timeout=timeout)
    s.sendall(request)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return parse(out)

def parse(out: bytes):
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return {"status": None, "headers": {}, "body": out[:200]}
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return {"status": status, "headers": headers, "body": body}

def h1(target: str, host=HOSTPORT, extra="", method="GET", version="HTTP/1.1"):
    host_line = "" if host is None else f"Host: {host}\r\n"
    req = f"{method} {target} {version}\r\n{host_line}{extra}Connection: close\r\n\r\n"
    return raw(req.encode("utf-8", "surrogateescape"))

def h2(target: str, headers=()):
    cmd = ["curl", "-s", "-i", "--http2-prior-knowledge", "--path-as-is", "--max-time", "5"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://{HOSTPORT}{target}")
    out = subprocess.run(cmd, capture_output=True).stdout
    # curl prints "HTTP/2 200"
    return parse(out.replace(b"HTTP/2 ", b"HTTP/2.0 ", 1))

def resolve(path):
    out = []
    for seg in path.split("/")[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)

def decode(q):
    return unquote(q, errors="surrogateescape")

def strip_params(q):
    return "/".join(seg.split(";")[0] for seg in q.split("/"))

def families(p):
    """Which families of upstream path handling make p (the path it received) mean /login.

    rfc:      one percent-decoding, dot segments, merged slashes (Go, Python, Node, NGINX...)
    servlet:  rfc + raw ';' parameters stripped per segment (Tomcat, Jetty, Spring)
    format:   rfc + a '.ext' suffix of the last segment ignored (Rails, Spring MVC < 5.3)
    windows:  rfc + '\\' as '/', trailing dots and spaces of a segment trimmed (IIS, Win32)
    case:     any of the above, case-insensitively (IIS, ASP.NET)
    unicode:  NFKC compatibility forms folded (IIS best-fit mapping)
    double:   two percent-decodings (buggy stacks)
    """
    raw = p.split("?")[0].split("#")[0]
    out = set()
    def hit(x, fam):
        r = resolve(x if x.startswith("/") else "/" + x)
        if r == "/login" or r.startswith("/login/"):
            out.add(fam)
    once = decode(raw)
    hit(once, "rfc")
    hit(decode(strip_params(raw)), "servlet")
    hit(re.sub(r"\.[^/.]*$", "", once), "format")
    win = re.sub(r"::\$DATA(?=/|$)", "", once.replace("\\", "/"), flags=re.I)
    win = re.sub(r"[ .]+(?=/|$)", "", win)
    hit(win, "windows")
    for fam, x in [("rfc", once), ("servlet", decode(strip_params(raw))), ("windows", win),
                   ("format", re.sub(r"\.[^/.]*$", "", once))]:
        r = resolve(x).lower()
        if (r == "/login" or r.startswith("/login/")) and fam not in out:
            out.add("case")
    hit(unicodedata.normalize("NFKC", once), "unicode")
    hit(decode(once), "double")
    return out

def is_login(path):
    return path == "/login" or path.startswith("/login/")

def served_by(res, limit):
    return limit in res["headers"].get("ratelimit-policy", "")

def upstream_saw(res):
    try:
        return json.loads(res["body"])
    except Exception:
        return None

results = []

def record(kind, spelling, res, what):
    seen = upstream_saw(res) if res["status"] == 200 else None
    verdict = "refused" if res["status"] not in (200,) else "other-route"
    if res["status"] == 429 and served_by(res, what + "-limit"):
        verdict = "limited"
    elif res["status"] == 200 and served_by(res, what + "-limit"):
        verdict = "limited(admitted)"
    elif seen is not None:
        if what == "login":
            fams = families(seen["path"])
            if fams:
                verdict = "THROUGH[" + ",".join(sorted(fams)) + "]"
        else:
            host = seen["headers"].get("host", "").lower().split(":")[0].rstrip(".")
            absolute = seen["path"]
            if host == "admin.example.com" or "admin.example.com" in absolute.lower():
                verdict = "THROUGH[host]"
    results.append((kind, spelling, res["status"], verdict, seen and seen["path"]))

# --- spend the buckets
first = h1("/login")
assert first["status"] == 200 and served_by(first, "login-limit"), first
first = h1("/", host="admin.example.com")
assert first["status"] == 200 and served_by(first, "admin-limit"), first

# --- path spellings
letters = "login"
def enc(c, upper=False):
    h = "%%%02x" % ord(c)
    return h.upper() if upper else h

paths = set()
for i, c in enumerate(letters):
    for up in (False, True):
        paths.add("/" + letters[:i] + enc(c, up) + letters[i + 1:])
paths.add("/" + "".join(enc(c) for c in letters))
paths.add("/" + "".join(enc(c, True) for c in letters))
paths.add("/%256cogin")                       # double encoding
paths.add("/%25%36%63ogin")
paths.add("/%c1%acogin")                      # overlong UTF-8 'l'
paths.add("/%e0%81%acogin")
paths.add("/%u006cogin")                      # IIS %u
paths.add("/\uff4c\uff4f\uff47\uff49\uff4e")  # fullwidth
paths.add("/\u217cogin")                      # small roman numeral fifty (NFKC 'l')
paths.add("/l\u00f2gin".replace("\u00f2", "o\u0300"))  # combining accent
for pre in ["/", "//", "///", "/./", "/.//", "//./", "/x/../", "/x/./../", "/%2e/", "/%2E/",
            "/x/%2e%2e/", "/x/%2E%2E/", "/x/.%2e/", "/x/%2e./", "/%2e%2e/", "/../", "/x/..%2f",
            "/x/..%2F", "/x/..%5c", "/x/..\\", "/\\", "/%5c", "/%2f", "/%2F", "/;/", "/;x=1/",
            "/x/..;/", "/x/.;/", "/x;/../", "/.;/", "/%3b/", "\\", "/x/%2e%2e%2f", "/x%2f..%2f",
            "/x/....//", "/x/.../"]:
    paths.add(pre + "login")
for post in ["", "/", "//", "/.", "/./", "/..", "/x/..", "/%2e", "/%2e%2e", ";", ";x=1", ";/",
             "%3b", "%3bx", "%2f", "%2F", "%5c", "\\", "%00", "%20", "%09", "%0a", ".", "..",
             "~", ".json", "%2e", "?x=1", "#frag", "%23", "%3f", "/%3f", "%2f%2e%2e", "/../login",
             "/..;/", ";jsessionid=1", ";jsessionid=1/x", "%252f", "%u002f", "\uff0f", "\u2215",
             ".xml", ".html", ";.json", ".json;x", "%2ejson", "..json", ". ", "%20.", "::$DATA",
             "%3a%3a$DATA", "/.json", "/x.json"]:
    paths.add("/login" + post)
for case in ["/LOGIN", "/Login", "/lOgIn", "/%4cogin", "/%4COGIN"]:
    paths.add(case)
paths = sorted(paths)

for p in paths:
    record("h1 origin", p, h1(p), "login")
for p in paths:
    if p.startswith("/"):
        record("h1 absolute", "http://" + HOSTPORT + p, h1("http://" + HOSTPORT + p), "login")
for p in paths:
    if p.startswith("/") and "#" not in p:
        record("h2 :path", p, h2(p), "login")
# Other request-target and method forms.
for target, kw in [
    ("login", {}), ("*", {"method": "OPTIONS"}), ("/login", {"method": "get"}),
    ("/login", {"method": "LOGIN"}), ("/login", {"version": "HTTP/1.0"}),
    ("/login", {"version": "HTTP/1.0", "host": None}),
    ("https://" + HOSTPORT + "/login", {}), ("http://" + HOSTPORT, {}),
    ("http://user@" + HOSTPORT + "/login", {}),
    ("http://admin.example.com/login", {}),
    ("/anything", {"extra": "X-Original-URL: /login\r\n"}),
    ("/anything", {"extra": "X-Rewrite-URL: /login\r\n"}),
    ("/anything", {"extra": "X-Forwarded-Prefix: /login\r\n"}),
    ("/anything", {"extra": "X-HTTP-Method-Override: GET\r\nX-Original-URI: /login\r\n"}),
]:
    record("h1 other", f"{kw.get('method','GET')} {target} {kw.get('version','HTTP/1.1')} {kw.get('extra','').strip()}", h1(target, **kw), "login")

# --- host spellings (admin.example.com)
for host_lines in [
    "Host: ADMIN.EXAMPLE.COM", "Host: admin.example.com.", "Host: admin.example.com:80",
    "Host: admin.example.com:", "Host: admin.example.com..", "Host: admin.example.com.:80",
    "Host: admin%2eexample.com", "Host: admin.example.com%00", "Host: admin.example.com ",
    "Host: admin.example.com,decoy.invalid", "Host: decoy.invalid\r\nHost: admin.example.com",
    "Host: admin.example.com\r\nHost: admin.example.com", "Host: decoy.invalid:@admin.example.com",
    "Host: admin.example.com@decoy.invalid", "Host: admin.example.com\\", "Host: admin.example.com/",
    "Host: ａｄｍｉｎ.example.com", "Host: xn--admin.example.com", "Host: admin.example.com:0080",
    "Host: admin.example.com:65536", "Host: [admin.example.com]", "Host:admin.example.com",
    "Host: decoy.invalid\r\nX-Forwarded-Host: admin.example.com",
    "Host: decoy.invalid\r\nForwarded: host=admin.example.com",
]:
    req = f"GET / HTTP/1.1\r\n{host_lines}\r\nConnection: close\r\n\r\n"
    record("h1 host", host_lines.replace("\r\n", " | "), raw(req.encode()), "admin")
for target, host in [("http://admin.example.com/", "decoy.invalid"), ("http://decoy.invalid/", "admin.example.com"),
                     ("http://ADMIN.example.com./", "admin.example.com"), ("http://admin.example.com/", None)]:
    record("h1 absolute host", f"{target} Host: {host}", h1(target, host=host), "admin")
for hdrs in [["Host: admin.example.com"], [":authority: admin.example.com"]]:
    record("h2 host", " ".join(hdrs), h2("/", hdrs), "admin")
# curl sets :authority from the URL; a Host header next to it:
res = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--max-time", "5",
                      "--connect-to", f"admin.example.com:{PORT}:127.0.0.1:{PORT}",
                      f"http://admin.example.com:{PORT}/"], capture_output=True).stdout
record("h2 host", f":authority admin.example.com:{PORT} (via --connect-to)", parse(res.replace(b"HTTP/2 ", b"HTTP/2.0 ", 1)), "admin")

counts = {}
for kind, spelling, status, verdict, seen in results:
    counts[verdict] = counts.get(verdict, 0) + 1
width = max(len(s) for _, s, *_ in results)
for kind, spelling, status, verdict, seen in results:
    print(f"{kind:<17} {spelling!r:<{width+2}} {status!s:>4} {verdict:<18} {seen or ''}")
print()
print(f"tried {len(results)} spellings: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
