//! The API token: where it comes from (`--token-file`, readable by its owner only, else
//! `BALUT_TOKEN`), how long it should be, and how a request carries it
//! (`Authorization: Bearer TOKEN`, the scheme in any case as RFC 7235 says).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use tracing::warn;

/// Tokens shorter than this are accepted with a warning: 16 random bytes is the least a
/// secret guarding a network API should have.
pub const SHORT: usize = 16;

/// The token for mutating requests: from `file`, else `BALUT_TOKEN`. A token file that
/// its group or others may read or write is refused, as ssh refuses such a private key.
pub fn read(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(file) => Some(read_file(file)?),
        None => std::env::var("BALUT_TOKEN").ok(),
    };
    let token = token.map(|t| t.trim().to_owned());
    if let (Some(file), Some("")) = (file, token.as_deref()) {
        bail!("the token file {} is empty", file.display());
    }
    Ok(token.filter(|t| !t.is_empty()))
}

/// [`read`] for the host: a token shorter than [`SHORT`] bytes is logged as a warning.
pub fn for_host(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = read(file)?;
    if let Some(token) = &token {
        if token.len() < SHORT {
            let from = match file {
                Some(file) => file.display().to_string(),
                None => "BALUT_TOKEN".to_owned(),
            };
            warn!(
                bytes = token.len(),
                from,
                "the API token is shorter than {SHORT} bytes: easy to guess; use a long \
                 random one (e.g. `head -c 32 /dev/urandom | base64`)"
            );
        }
    }
    Ok(token)
}

fn read_file(file: &Path) -> anyhow::Result<String> {
    let mut opened = std::fs::File::open(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    // The mode of the file opened, not of whatever the path names a moment later.
    let meta = opened
        .metadata()
        .with_context(|| format!("reading the token file {}", file.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "the token file {} can be read or changed by its group or others (mode {mode:04o}): \
             the token must be readable by its owner only; run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    let mut text = String::new();
    opened
        .read_to_string(&mut text)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    Ok(text)
}

/// The credentials of an `Authorization` header value of the `Bearer` scheme, the scheme
/// matched in any case, one or more spaces after it; `None` for another scheme or none.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for header in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR   s3cret",
        ] {
            assert_eq!(bearer(header), Some("s3cret"), "{header:?}");
        }
        for header in ["s3cret", "Basic s3cret", "Bearers3cret", "Bear s3cret", ""] {
            assert_eq!(bearer(header), None, "{header:?}");
        }
        // The credentials are kept as sent (a token may not contain a space, so a second
        // word makes it wrong, not another token).
        assert_eq!(bearer("Bearer a b"), Some("a b"));
        assert_eq!(bearer("Bearer "), Some(""));
    }

    #[test]
    fn a_token_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("a temp folder");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef-token\n").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read(Some(&file)).expect_err("refused").to_string();
            assert!(
                err.contains(&format!("{mode:04o}")) && err.contains("chmod 600"),
                "{err}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(
                read(Some(&file)).expect("owner-only is fine").as_deref(),
                Some("0123456789abcdef-token")
            );
        }
    }
}
