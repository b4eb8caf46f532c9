//! Property tests of the config parser.

use super::*;
use proptest::prelude::*;

/// The sample config of `parses_a_full_file_in_order`, with supervision settings too.
const SAMPLE: &str = r#"
[host]
listen = "127.0.0.1:9000"
stop_timeout_ms = 500

[containers.web]
plugin = "http-echo"
config = { port = 8080, message = "hi" }
requires = ["alpha"]

[containers.alpha]
plugin = "ticker"
start_timeout_ms = 100
restart = "always"
backoff = { initial_ms = 50, max_restarts = 2, jitter = 0.1 }
liveness = { period_ms = 100, failure_threshold = 2, grace_ms = 0 }
"#;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Parsing never panics, and a refusal always says something.
fn parse_is_total(text: &str) -> Result<(), TestCaseError> {
    if let Err(message) = Config::parse(text) {
        prop_assert!(!message.trim().is_empty(), "empty error for {text:?}");
    }
    Ok(())
}

/// Lines worth inserting: fragments of valid and invalid TOML and of this schema.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[host]".to_owned()),
        Just("[containers.web]".to_owned()),
        Just("[containers.\"a b\"]".to_owned()),
        Just("[[containers]]".to_owned()),
        Just("requires = [\"web\"]".to_owned()),
        Just("requires = [\"nope\"]".to_owned()),
        Just("stop_timeout_ms = 0".to_owned()),
        Just("stop_timeout_ms = -1".to_owned()),
        Just("stop_timeout_ms = 18446744073709551616".to_owned()),
        Just("backoff = { jitter = nan }".to_owned()),
        Just("listen = \"nowhere\"".to_owned()),
        Just("plugin = \"\"\"".to_owned()),
        Just("x = [[[[[[[[".to_owned()),
        "[a-z_.]{1,20} = [0-9a-z\"{}\\[\\],.= -]{0,30}",
        any::<String>(),
    ]
}

#[test]
fn sample_is_valid() {
    let config = Config::parse(SAMPLE).unwrap();
    assert_eq!(config.containers.len(), 2);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        parse_is_total(&text)?;
    }

    #[test]
    fn toml_like_text_never_panics(
        text in "([\\[\\]{}\"'=,.#\\n a-z0-9_-]|containers|host|plugin|requires|_ms){0,200}",
    ) {
        parse_is_total(&text)?;
    }

    #[test]
    fn sample_with_byte_flips_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = SAMPLE.as_bytes().to_vec();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        parse_is_total(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn truncated_sample_never_panics(cut in 0..=SAMPLE.len()) {
        // The sample is ASCII, so every cut is on a character boundary.
        parse_is_total(&SAMPLE[..cut])?;
    }

    #[test]
    fn sample_with_inserted_lines_never_panics(
        inserts in prop::collection::vec((any::<prop::sample::Index>(), line()), 1..5),
    ) {
        let mut lines: Vec<String> = SAMPLE.lines().map(str::to_owned).collect();
        for (at, text) in inserts {
            let at = at.index(lines.len() + 1);
            lines.insert(at, text);
        }
        parse_is_total(&lines.join("\n"))?;
    }

    #[test]
    fn valid_configs_parse_and_round_trip(
        (names, requires, order) in valid_graph(),
        timeouts in prop::collection::vec(
            (prop::option::of(1..=i64::MAX as u64), prop::option::of(1..=i64::MAX as u64)),
            8,
        ),
        host_stop in 1..=i64::MAX as u64,
    ) {
        let mut text = format!("[host]\nstop_timeout_ms = {host_stop}\n");
        for &i in &order {
            text += &format!("\n[containers.\"{}\"]\nplugin = \"p{i}\"\n", names[i]);
            let (start, stop) = timeouts[i];
            if let Some(ms) = start {
                text += &format!("start_timeout_ms = {ms}\n");
            }
            if let Some(ms) = stop {
                text += &format!("stop_timeout_ms = {ms}\n");
            }
            if let Some(required) = &requires[i] {
                let quoted: Vec<String> =
                    required.iter().map(|&j| format!("\"{}\"", names[j])).collect();
                text += &format!("requires = [{}]\n", quoted.join(", "));
            }
        }
        let config = match Config::parse(&text) {
            Ok(config) => config,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
        };
        prop_assert_eq!(config.host.stop_timeout_ms, Millis(host_stop));
        let declared: Vec<&str> = config.containers.keys().map(|n| n.as_str()).collect();
        let expected: Vec<&str> = order.iter().map(|&i| names[i].as_str()).collect();
        prop_assert_eq!(declared, expected);
        for &i in &order {
            let name = ContainerName::try_from(names[i].clone()).unwrap();
            let container = &config.containers[&name];
            prop_assert_eq!(&container.plugin, &format!("p{i}"));
            let (start, stop) = timeouts[i];
            prop_assert_eq!(container.start_timeout_ms, start.map(Millis));
            prop_assert_eq!(container.stop_timeout_ms, stop.map(Millis));
            let got: Option<Vec<&str>> = container
                .requires
                .as_ref()
                .map(|r| r.iter().map(|n| n.as_str()).collect());
            let want: Option<Vec<&str>> = requires[i]
                .as_ref()
                .map(|r| r.iter().map(|&j| names[j].as_str()).collect());
            prop_assert_eq!(got, want);
        }
    }
}

/// Up to 8 distinct valid names; each container may require any of those before it
/// (so there is no cycle), and they are declared in a random order (so `requires`
/// also points forward in the file).
#[allow(clippy::type_complexity)]
fn valid_graph() -> impl Strategy<Value = (Vec<String>, Vec<Option<Vec<usize>>>, Vec<usize>)> {
    prop::collection::hash_set("[A-Za-z0-9_.-]{1,64}", 1..=8).prop_flat_map(|names| {
        let names: Vec<String> = names.into_iter().collect();
        let n = names.len();
        let requires: Vec<_> = (0..n)
            .map(|i| {
                prop::option::of(prop::collection::vec(0..i.max(1), 0..=i).prop_map(
                    move |mut r| {
                        r.retain(|&j| j < i);
                        r.sort_unstable();
                        r.dedup();
                        r
                    },
                ))
            })
            .collect();
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        (Just(names), requires, order)
    })
}
