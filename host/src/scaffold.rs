//! `balut new`: writes a plugin crate to start from (a `cdylib` with a `Container`, its
//! `export_plugin!` line and a unit test on `balut_plugin_api::testing`).
//!
//! The templates are the files in `host/templates/`, compiled in. The crate depends on
//! `balut-plugin-api` by an absolute `path`: by default the `plugin-api/` folder of the
//! checkout this binary was built from (so `cargo install --path host` keeps pointing at
//! it), else `--plugin-api DIR`. The crate is a workspace of its own, so it builds wherever
//! it is written.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{NewArgs, PluginKind};

const CARGO_TOML: &str = include_str!("../templates/Cargo.toml.tmpl");
const README: &str = include_str!("../templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/gitignore.tmpl");
const SERVICE: &str = include_str!("../templates/service.rs.tmpl");
const WORKER: &str = include_str!("../templates/worker.rs.tmpl");

/// The `plugin-api/` folder of the checkout this binary was built from.
const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api");

/// Longest plugin name the export macro takes, in bytes.
const MAX_NAME_LEN: usize = 64;

/// Why `balut new` refused (exit 2) or failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("invalid plugin name `{name}`: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{} already exists and is not an empty folder: choose another --path", .0.display())]
    Occupied(PathBuf),
    #[error(
        "no balut-plugin-api crate at {}{}: pass --plugin-api DIR (the plugin-api/ folder of a Balut checkout)",
        .path.display(), .why
    )]
    NoApi { path: PathBuf, why: String },
    #[error("writing {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl NewError {
    /// 2 for what the command line asked wrongly, 1 for a failure to write.
    fn exit_code(&self) -> u8 {
        match self {
            NewError::Write { .. } => 1,
            _ => 2,
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// `balut new`: writes the crate and says what to do next.
pub fn main(args: &NewArgs) -> ExitCode {
    match write(args) {
        Ok(written) => {
            let dir = written.dir.display();
            println!(
                "wrote a {} plugin `{}` in {dir}",
                kind_name(args.kind),
                args.name
            );
            for file in &written.files {
                let file = file.strip_prefix(&written.dir).unwrap_or(file);
                println!("  {}", file.display());
            }
            println!("next:");
            println!("  cd {dir} && cargo test && cargo build --release");
            println!(
                "  cp target/release/lib{}.so /path/to/plugins/   # then: balut run --plugin-dir /path/to/plugins",
                lib_name(&args.name)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("balut new: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Checks the request and writes the crate.
pub fn write(args: &NewArgs) -> Result<Written, NewError> {
    check_name(&args.name)?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    check_free(&dir)?;
    let api = find_api(args.plugin_api.as_deref())?;
    let api = api.to_str().ok_or_else(|| NewError::NoApi {
        path: api.clone(),
        why: " (its path is not UTF-8)".to_owned(),
    })?;
    let vars = Vars {
        name: &args.name,
        lib_name: &lib_name(&args.name),
        api_path: &toml::Value::String(api.to_owned()).to_string(),
        kind_line: match args.kind {
            PluginKind::Service => "a small HTTP service",
            PluginKind::Worker => "a periodic worker",
        },
    };
    let source = match args.kind {
        PluginKind::Service => SERVICE,
        PluginKind::Worker => WORKER,
    };
    let files = [
        ("Cargo.toml", CARGO_TOML),
        ("README.md", README),
        (".gitignore", GITIGNORE),
        ("src/lib.rs", source),
    ];
    let mut written = Vec::new();
    for (file, template) in files {
        let path = dir.join(file);
        let text = vars.fill(template);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| NewError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| NewError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(Written {
        dir,
        files: written,
    })
}

fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Service => "service",
        PluginKind::Worker => "worker",
    }
}

/// The library's name (the `.so` is `lib<it>.so`): the crate name with `_` for `-`.
fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The values the templates' `{{...}}` stand for.
struct Vars<'a> {
    name: &'a str,
    lib_name: &'a str,
    /// Already a TOML string, quotes included.
    api_path: &'a str,
    kind_line: &'a str,
}

impl Vars<'_> {
    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", self.name)
            .replace("{{lib_name}}", self.lib_name)
            .replace("{{api_path}}", self.api_path)
            .replace("{{kind_line}}", self.kind_line)
    }
}

/// Names cargo refuses for a package, or that would clash with the template's
/// dependencies (compared with `-` as `_`): Rust's keywords (strict and reserved), the
/// standard library's crates, and the template's own dependencies.
const RESERVED: &str = "as async await break const continue crate dyn else enum extern \
    false fn for if impl in let loop match mod move mut pub ref return self static struct \
    super trait true type unsafe use where while abstract become box do final gen macro \
    override priv try typeof unsized virtual yield \
    std core alloc proc_macro test \
    serde balut_plugin_api";

/// A plugin name is also the crate's name: `a-z` first, then `a-z`, `0-9`, `-`, `_`, at
/// most 64 bytes, and not a name cargo or the template's dependencies reserve.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let refuse = |why| {
        Err(NewError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 64 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return refuse("it must start with a lowercase letter (a-z)");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    {
        return refuse("it may only contain a-z, 0-9, '-' and '_'");
    }
    if RESERVED.split_whitespace().any(|r| r == lib_name(name)) {
        return refuse("it is a Rust keyword or the name of a crate the plugin uses");
    }
    Ok(())
}

/// The target folder must not exist, or be an empty folder.
fn check_free(dir: &Path) -> Result<(), NewError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NewError::Write {
            path: dir.to_owned(),
            source,
        }),
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(dir).map_err(|source| NewError::Write {
                path: dir.to_owned(),
                source,
            })?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(NewError::Occupied(dir.to_owned()))
            }
        }
        Ok(_) => Err(NewError::Occupied(dir.to_owned())),
    }
}

/// The plugin-api crate to depend on, as an absolute path.
fn find_api(given: Option<&Path>) -> Result<PathBuf, NewError> {
    let (path, from) = match given {
        Some(path) => (path.to_owned(), ""),
        None => (
            PathBuf::from(BUILT_FROM),
            " (the checkout balut was built from)",
        ),
    };
    let missing = |why: &dyn fmt::Display| NewError::NoApi {
        path: path.clone(),
        why: format!("{from}: {why}"),
    };
    let resolved = std::fs::canonicalize(&path).map_err(|e| missing(&e))?;
    let manifest = std::fs::read_to_string(resolved.join("Cargo.toml")).map_err(|e| missing(&e))?;
    let manifest: toml::Table = manifest.parse().map_err(|e| missing(&e))?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str);
    if name != Some("balut-plugin-api") {
        return Err(missing(
            &"its Cargo.toml is not the package balut-plugin-api",
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, kind: PluginKind, path: &Path) -> NewArgs {
        NewArgs {
            name: name.to_owned(),
            kind,
            path: Some(path.to_owned()),
            plugin_api: None,
        }
    }

    #[test]
    fn names_follow_the_plugin_and_cargo_rules() {
        for good in ["hello", "my-plugin", "a_b-9", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("9lives", "start with a lowercase letter"),
            ("-x", "start with a lowercase letter"),
            ("Hello", "start with a lowercase letter"),
            ("hello world", "only contain"),
            ("héllo", "only contain"),
            ("a.so", "only contain"),
            ("fn", "keyword"),
            ("test", "keyword"),
            ("serde", "crate the plugin uses"),
            ("balut-plugin-api", "crate the plugin uses"),
        ] {
            let e = check_name(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn writes_a_crate_with_the_api_path_filled_in() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-svc");
        let written = write(&args("my-svc", PluginKind::Service, &dir)).unwrap();
        assert_eq!(written.files.len(), 4);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest: toml::Table = cargo.parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-svc"));
        let api = manifest["dependencies"]["balut-plugin-api"]["path"]
            .as_str()
            .unwrap();
        assert!(Path::new(api).is_absolute());
        assert!(Path::new(api).join("src/testing.rs").is_file(), "{api}");
        assert_eq!(
            manifest["dev-dependencies"]["balut-plugin-api"]["features"][0].as_str(),
            Some("testing")
        );
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"export_plugin!(name: "my-svc","#));
        assert!(lib.contains(r#"ctx.listener("http")"#));
        assert!(!lib.contains("{{"), "every placeholder filled");
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.contains("libmy_svc.so"));

        let dir = tmp.path().join("jobs");
        write(&args("jobs", PluginKind::Worker, &dir)).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("constructor: Worker::new"));
        assert!(!lib.contains("{{"));
    }

    #[test]
    fn refuses_a_folder_that_is_not_empty() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), "").unwrap();
        let e = write(&args("hello", PluginKind::Worker, tmp.path())).unwrap_err();
        assert!(matches!(e, NewError::Occupied(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("not an empty folder"), "{e}");
        // A file is refused too; an empty folder is fine.
        let e = write(&args("hello", PluginKind::Worker, &tmp.path().join("x"))).unwrap_err();
        assert!(matches!(e, NewError::Occupied(_)), "{e}");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write(&args("hello", PluginKind::Worker, &empty)).unwrap();
    }

    #[test]
    fn refuses_a_folder_that_is_not_the_plugin_api() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args("hello", PluginKind::Worker, &tmp.path().join("out"));
        a.plugin_api = Some(tmp.path().to_owned());
        let e = write(&a).unwrap_err();
        assert!(matches!(e, NewError::NoApi { .. }), "{e}");
        assert!(e.to_string().contains("--plugin-api DIR"), "{e}");
        assert!(!tmp.path().join("out").exists());
    }
}
