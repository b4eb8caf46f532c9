//! Listening sockets the host holds for containers (`[containers.NAME.listen]`), like
//! systemd's socket activation: bound before the container first starts and kept open
//! across its restarts, hot reloads and rollbacks, so connections wait in the socket's
//! backlog instead of being refused while an instance changes. A container takes a new
//! descriptor of the same socket from its `Context` (`services.rs`, `isolation/`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use socket2::{Domain, SockAddr, Socket, Type};

/// Connections the kernel queues for a held socket while no instance accepts (a reload).
const BACKLOG: i32 = 1024;

/// Where a held socket listens: `"127.0.0.1:8080"`, `"[::1]:8080"` or `"unix:/run/x.sock"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl TryFrom<String> for Address {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{text:?}: a Unix socket path must be absolute"));
            }
            return Ok(Self::Unix(path));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            format!("{text:?} is neither HOST:PORT (an IP address and a port) nor unix:/PATH")
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One held socket.
#[derive(Debug, Clone)]
pub struct Held {
    pub address: Address,
    pub fd: Arc<OwnedFd>,
}

/// A container's held sockets by name.
pub type Listeners = BTreeMap<String, Held>;

/// Every container's held sockets.
#[derive(Debug, Default)]
pub struct Sockets {
    by_container: BTreeMap<String, Listeners>,
}

impl Sockets {
    /// The sockets `container` should hold, bound now where not yet held at that address.
    /// A socket no longer wanted (or wanted at another address) is closed first, so an
    /// address can move from one name to another. The error names the container, the
    /// socket and the address.
    pub fn ensure(
        &mut self,
        container: &str,
        wanted: &BTreeMap<String, Address>,
    ) -> Result<Listeners, String> {
        let held = self.by_container.entry(container.to_owned()).or_default();
        let unwanted: Vec<String> = held
            .iter()
            .filter(|(name, h)| wanted.get(*name) != Some(&h.address))
            .map(|(name, _)| name.clone())
            .collect();
        for name in unwanted {
            if let Some(old) = held.remove(&name) {
                close(old);
            }
        }
        for (name, address) in wanted {
            if held.contains_key(name) {
                continue;
            }
            let fd = bind(address).map_err(|e| {
                format!("containers.{container}.listen.{name}: cannot listen on {address}: {e}")
            })?;
            held.insert(
                name.clone(),
                Held {
                    address: address.clone(),
                    fd: Arc::new(fd),
                },
            );
        }
        Ok(held.clone())
    }

    /// The sockets `container` holds now.
    pub fn held(&self, container: &str) -> Listeners {
        self.by_container
            .get(container)
            .cloned()
            .unwrap_or_default()
    }

    /// Closes every held socket (at shutdown).
    pub fn release_all(&mut self) {
        let containers: Vec<String> = self.by_container.keys().cloned().collect();
        for container in containers {
            self.release(&container);
        }
    }

    /// Closes the sockets of a container that is gone (a Unix socket's file is removed).
    pub fn release(&mut self, container: &str) {
        if let Some(held) = self.by_container.remove(container) {
            for held in held.into_values() {
                close(held);
            }
        }
    }
}

/// Closes one socket (the last holder's copy, once instances let go) and removes a Unix
/// socket's file.
fn close(held: Held) {
    if let Address::Unix(path) = &held.address {
        let _ = std::fs::remove_file(path);
    }
    drop(held);
}

fn bind(address: &Address) -> std::io::Result<OwnedFd> {
    let (socket, addr) = match address {
        Address::Tcp(addr) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            (socket, SockAddr::from(*addr))
        }
        Address::Unix(path) => {
            remove_stale(path)?;
            (
                Socket::new(Domain::UNIX, Type::STREAM, None)?,
                SockAddr::unix(path)?,
            )
        }
    };
    socket.bind(&addr)?;
    socket.listen(BACKLOG)?;
    Ok(OwnedFd::from(socket))
}

/// Removes a Unix socket file nothing listens on (left by a host that died); refuses
/// anything else at that path.
fn remove_stale(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "something other than a socket is at that path",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process listens there",
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(pairs: &[(&str, &str)]) -> BTreeMap<String, Address> {
        pairs
            .iter()
            .map(|(n, a)| ((*n).to_owned(), Address::try_from((*a).to_owned()).unwrap()))
            .collect()
    }

    #[test]
    fn addresses_parse_with_clear_errors() {
        assert!(matches!(
            Address::try_from("127.0.0.1:80".to_owned()),
            Ok(Address::Tcp(_))
        ));
        assert!(matches!(
            Address::try_from("[::1]:80".to_owned()),
            Ok(Address::Tcp(_))
        ));
        assert!(matches!(
            Address::try_from("unix:/run/x.sock".to_owned()),
            Ok(Address::Unix(_))
        ));
        let e = Address::try_from("localhost:80".to_owned()).unwrap_err();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = Address::try_from("unix:x.sock".to_owned()).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn a_socket_is_kept_while_wanted_and_an_address_in_use_is_named() {
        let mut sockets = Sockets::default();
        let first = sockets
            .ensure("web", &wanted(&[("http", "127.0.0.1:0")]))
            .unwrap();
        let again = sockets
            .ensure("web", &wanted(&[("http", "127.0.0.1:0")]))
            .unwrap();
        assert!(
            Arc::ptr_eq(&first["http"].fd, &again["http"].fd),
            "kept, not bound again"
        );

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let busy = format!("127.0.0.1:{port}");
        let e = sockets
            .ensure("api", &wanted(&[("http", &busy)]))
            .unwrap_err();
        assert!(
            e.starts_with(&format!(
                "containers.api.listen.http: cannot listen on {busy}: "
            )),
            "{e}"
        );

        sockets.release("web");
        assert!(sockets.ensure("web", &BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn a_unix_socket_replaces_a_stale_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let address = format!("unix:{}", path.display());
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale); // the file stays, nothing listens
        let mut sockets = Sockets::default();
        sockets.ensure("a", &wanted(&[("s", &address)])).unwrap();
        let e = Sockets::default()
            .ensure("b", &wanted(&[("s", &address)]))
            .unwrap_err();
        assert!(e.contains("another process listens there"), "{e}");
        sockets.release("a");
        assert!(!path.exists());
    }
}
