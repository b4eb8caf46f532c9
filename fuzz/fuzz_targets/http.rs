//! Any request to the real router (with a real supervisor behind it) gets an answer: never
//! a panic or a 500, and every error is a JSON object with an `error` text.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use balut::fuzzing::{Api, HttpRequest};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    method: Method,
    path: Vec<Segment>,
    query: Option<String>,
    authorization: Option<Authorization>,
    last_event_id: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    with_token: bool,
}

#[derive(Debug, Arbitrary)]
enum Method {
    Get,
    Post,
    Head,
    Other(String),
}

/// Path segments: the API's own words (so most inputs reach a handler) or anything.
#[derive(Debug, Arbitrary)]
enum Segment {
    V1,
    Containers,
    Web,
    Plugins,
    Events,
    Reload,
    Start,
    Stop,
    Restart,
    Healthz,
    Readyz,
    Metrics,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Authorization {
    Right,
    Raw(String),
}

impl Input {
    fn request(self) -> HttpRequest {
        let segment = |s: &Segment| match s {
            Segment::V1 => "v1".to_owned(),
            Segment::Containers => "containers".to_owned(),
            Segment::Web => "web".to_owned(),
            Segment::Plugins => "plugins".to_owned(),
            Segment::Events => "events".to_owned(),
            Segment::Reload => "reload".to_owned(),
            Segment::Start => "start".to_owned(),
            Segment::Stop => "stop".to_owned(),
            Segment::Restart => "restart".to_owned(),
            Segment::Healthz => "healthz".to_owned(),
            Segment::Readyz => "readyz".to_owned(),
            Segment::Metrics => "metrics".to_owned(),
            Segment::Raw(raw) => raw.clone(),
        };
        let mut path = format!(
            "/{}",
            self.path.iter().map(segment).collect::<Vec<_>>().join("/")
        );
        if let Some(query) = &self.query {
            path.push('?');
            path.push_str(query);
        }
        HttpRequest {
            method: match self.method {
                Method::Get => "GET".to_owned(),
                Method::Post => "POST".to_owned(),
                Method::Head => "HEAD".to_owned(),
                Method::Other(other) => other,
            },
            path,
            authorization: self.authorization.map(|a| match a {
                Authorization::Right => format!("Bearer {}", Api::TOKEN),
                Authorization::Raw(raw) => raw,
            }),
            last_event_id: self.last_event_id,
            content_type: self.content_type,
            body: self.body,
            with_token: self.with_token,
        }
    }
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| match Api::new() {
        Ok(api) => api,
        Err(e) => panic!("setting up the API under test: {e:#}"),
    })
}

fuzz_target!(|input: Input| {
    let _ = api().check(&input.request());
});
