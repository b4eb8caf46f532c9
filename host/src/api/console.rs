//! The web console: one page and its assets (`host/console/`), compiled into the binary,
//! served under `/` and `/ui/` with a strict Content-Security-Policy; and `GET /v1/host`,
//! what the page (or any client) needs to know about the host itself.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AppState, error, shown};

/// The page's Content-Security-Policy: nothing but the host's own scripts, styles and
/// connections; no inline script or style, no framing, no forms.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file: its name under `/ui/assets/` (`index.html` is the page itself), its
/// content type and its bytes.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// An [`Asset`] of `host/console/`.
macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

/// Every file of the console. The script is ES modules: `app.js`, the page's entry, imports
/// the others by relative path (`./x.js`), with no build step.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("actions.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("containers.js", "text/javascript; charset=utf-8"),
    asset!("detail.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("events.js", "text/javascript; charset=utf-8"),
    asset!("format.js", "text/javascript; charset=utf-8"),
    asset!("host.js", "text/javascript; charset=utf-8"),
    asset!("plugins.js", "text/javascript; charset=utf-8"),
    asset!("stream.js", "text/javascript; charset=utf-8"),
    asset!("sync.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// Each asset's `ETag`, a hash of its bytes, computed once (same order as [`ASSETS`]).
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The routes of the console: `/`, `/ui`, `/ui/`, `/ui/containers/{name}`,
/// `/ui/assets/{file}` and `/v1/host`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/containers/{name}", get(page))
        .route("/ui/assets/{file}", get(asset))
        .route("/v1/host", get(host))
}

/// The asset named `name`, with its ETag.
fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    let at = ASSETS.iter().position(|a| a.name == name)?;
    Some((&ASSETS[at], ETAGS.get(at)?.as_str()))
}

/// `asset` with the console's headers, or 304 when the client has this version.
fn serve(asset: &'static Asset, etag: &'static str, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, HeaderValue::from_static(etag)),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

/// `GET /`, `/ui/`, `/ui/containers/{name}`: the page (which opens the container's detail
/// itself, from its address).
async fn page(request: HeaderMap) -> Response {
    match find("index.html") {
        Some((asset, etag)) => serve(asset, etag, &request),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the console page is missing",
        ),
    }
}

/// `GET /ui/assets/{file}`.
async fn asset(Path(file): Path<String>, request: HeaderMap) -> Response {
    match find(&file).filter(|(a, _)| a.name != "index.html") {
        Some((asset, etag)) => serve(asset, etag, &request),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no console asset named `{}`", shown(&file)),
        ),
    }
}

/// What `GET /v1/host` tells about the host: fixed for its life, set at start.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub version: &'static str,
    /// The plugin interface it implements, `MAJOR.MINOR`.
    pub interface: String,
    pub pid: u32,
    pub started_at: String,
    pub plugin_dir: String,
    pub config_file: Option<String>,
}

impl HostInfo {
    /// This process, started now, serving `plugin_dir` with `config_file`.
    pub fn new(plugin_dir: &std::path::Path, config_file: Option<&std::path::Path>) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            interface: crate::loader::InterfaceVersion::HOST.to_string(),
            pid: std::process::id(),
            started_at: crate::model::rfc3339(std::time::SystemTime::now()),
            plugin_dir: plugin_dir.display().to_string(),
            config_file: config_file.map(|p| p.display().to_string()),
        }
    }
}

/// `GET /v1/host`: the host's version, interface, pid, start time, folder and config
/// file, whether mutating requests need a token, and the id of the newest event (what a
/// state read right after reflects).
async fn host(State(app): State<AppState>) -> Response {
    #[derive(Serialize)]
    struct Answer<'a> {
        #[serde(flatten)]
        info: &'a HostInfo,
        token_required: bool,
        last_event_id: u64,
    }
    axum::Json(Answer {
        info: &app.host,
        token_required: app.token.is_some(),
        last_event_id: app.board.events.last_id(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_references_is_embedded() {
        let (page, _) = find("index.html").expect("the page is embedded");
        let text = std::str::from_utf8(page.body).expect("the page is UTF-8");
        let mut referenced = 0;
        for part in text.split("/ui/assets/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                .collect();
            assert!(find(&name).is_some(), "index.html references {name}");
            referenced += 1;
        }
        assert!(
            referenced >= 3,
            "the page references its script, style and icon"
        );
        assert!(!text.contains("http://") && !text.contains("https://"));
    }

    /// The modules `source` imports (`import ... from "./x.js"`, `import "./x.js"`), by
    /// their asset names.
    fn imports(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (at, _) in source.match_indices("import ") {
            // A statement: the keyword first on its line, up to its `;`.
            let line = source[..at].rfind('\n').map_or(0, |n| n + 1);
            if !source[line..at].trim().is_empty() {
                continue;
            }
            let statement = source[at..].split(';').next().unwrap_or_default();
            let Some(quoted) = statement.split(['"', '\'']).nth(1) else {
                continue;
            };
            let name = quoted
                .strip_prefix("./")
                .or_else(|| quoted.strip_prefix("/ui/assets/"))
                .unwrap_or_else(|| panic!("a module imports {quoted} from outside the assets"));
            found.push(name.to_string());
        }
        found
    }

    #[test]
    fn every_module_a_script_imports_is_embedded_and_none_import_in_a_cycle() {
        let scripts: Vec<&Asset> = ASSETS.iter().filter(|a| a.name.ends_with(".js")).collect();
        let mut graph = std::collections::BTreeMap::new();
        for script in &scripts {
            let text = std::str::from_utf8(script.body).expect("the script is UTF-8");
            let imported = imports(text);
            for name in &imported {
                assert!(find(name).is_some(), "{} imports {name}", script.name);
            }
            graph.insert(script.name, imported);
        }
        assert!(
            !graph["app.js"].is_empty(),
            "app.js, the entry, imports the modules"
        );
        // Every module is reached from the entry, and no import leads back to a module on
        // the way to it.
        fn visit<'a>(
            name: &'a str,
            graph: &'a std::collections::BTreeMap<&'static str, Vec<String>>,
            path: &mut Vec<&'a str>,
            reached: &mut std::collections::BTreeSet<&'a str>,
        ) {
            assert!(
                !path.contains(&name),
                "an import cycle: {} -> {name}",
                path.join(" -> ")
            );
            if !reached.insert(name) {
                return;
            }
            path.push(name);
            for next in &graph[name] {
                visit(next, graph, path, reached);
            }
            path.pop();
        }
        let mut reached = std::collections::BTreeSet::new();
        visit("app.js", &graph, &mut Vec::new(), &mut reached);
        let all: std::collections::BTreeSet<&str> = graph.keys().copied().collect();
        assert_eq!(
            reached, all,
            "every script is imported by the entry or its modules"
        );
    }

    #[test]
    fn etags_differ_per_asset_and_are_quoted() {
        let tags: std::collections::HashSet<&String> = ETAGS.iter().collect();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(ETAGS.iter().all(|t| t.starts_with('"') && t.ends_with('"')));
    }
}
