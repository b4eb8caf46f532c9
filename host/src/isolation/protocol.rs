//! The protocol between the host and an isolated container's process, over the socket pair
//! the child gets as file descriptor 3: frames of a 4-byte little-endian length and that
//! many bytes of JSON. Each side's first frame is its `Hello`; a child that hears another
//! protocol version exits with [`WRONG_PROTOCOL`], a host that hears one kills the child.
//!
//! The host sends `Call`s, each with an id; the child answers each with a `Reply` of the
//! same id, in any order, and sends what the plugin does of its own accord (log lines,
//! readiness, failures, the end of its work) as it happens.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol's version: both sides must speak the same.
pub const PROTOCOL: u32 = 1;
/// The child's exit code when the host speaks another protocol version.
pub const WRONG_PROTOCOL: i32 = 86;
/// The largest frame either side accepts. Log messages and field values are cut at 64 KiB
/// before they are sent, so only a log line with thousands of fields comes near it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Host to child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    Hello {
        protocol: u32,
    },
    Call {
        id: u64,
        timeout_ms: u64,
        call: Box<Call>,
    },
}

/// What the host asks the child to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// Open the host's private copy of the generation: sent once, first.
    Open {
        container: String,
        copy: PathBuf,
        file: PathBuf,
        generation: u64,
        sha256: String,
        plugin: String,
        version: String,
        interface: (u32, u32),
        default_requires: Vec<String>,
        /// The sockets the host holds for the container: name, address (as the config
        /// writes it) and the descriptor the child got it as.
        listeners: Vec<(String, String, i32)>,
        /// The most verbose plugin log level the host shows (0 error .. 4 trace; none
        /// when it shows none): the child does not send what would be dropped.
        max_level: Option<u8>,
    },
    Construct {
        container: String,
        config_json: String,
        /// What the previous instance handed over: its version and bytes.
        handover: Option<(u32, Vec<u8>)>,
    },
    Handover,
    Start,
    Stop,
    Health,
    Ready,
    Dispose,
}

/// Child to host.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHost {
    Hello {
        protocol: u32,
        pid: u32,
    },
    Reply {
        id: u64,
        result: Result<Answer, Refusal>,
    },
    Log {
        /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
        level: u8,
        message: String,
        fields: Vec<(String, String)>,
    },
    Ready(bool),
    Failed(String),
    Finished(String),
}

/// A call's successful result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Done,
    Health {
        healthy: bool,
        message: String,
        micros: u64,
    },
    /// `ready` of a plugin without a readiness check (interface 1.0).
    NoReadiness,
    Handover(Option<(u32, Vec<u8>)>),
}

/// Why a call did not succeed, as `loader::CallError` says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    Failed(String),
    Panicked(String),
    BadConfig(String),
    Timeout {
        call: String,
        ms: u64,
    },
    Stuck,
    NotConstructed,
    /// The library could not be opened in the child (the load error's text).
    NotOpened(String),
}

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes (at most {MAX_FRAME})", body.len()),
            )
        })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame)
}

/// Reads one frame: `None` at the end of the stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let body = read_body(input, u32::from_le_bytes(len) as usize)?;
    decode(&body).map(Some)
}

/// Reads a frame's body of `len` bytes, refusing more than [`MAX_FRAME`].
pub fn read_body(input: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    Ok(body)
}

/// Decodes a frame's body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> std::io::Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        let sent = ToHost::Reply {
            id: 7,
            result: Ok(Answer::Health {
                healthy: false,
                message: "disk full".into(),
                micros: 12,
            }),
        };
        write_frame(&mut wire, &sent).unwrap();
        write_frame(&mut wire, &ToHost::Ready(true)).unwrap();
        let mut input = wire.as_slice();
        let first: ToHost = read_frame(&mut input).unwrap().unwrap();
        assert!(matches!(
            first,
            ToHost::Reply {
                id: 7,
                result: Ok(Answer::Health { healthy: false, .. })
            }
        ));
        let second: ToHost = read_frame(&mut input).unwrap().unwrap();
        assert!(matches!(second, ToHost::Ready(true)));
        assert!(read_frame::<ToHost>(&mut input).unwrap().is_none());
    }

    #[test]
    fn an_oversized_or_garbled_frame_is_an_error() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(b"{}");
        assert!(read_frame::<ToHost>(&mut wire.as_slice()).is_err());
        let mut wire = 2u32.to_le_bytes().to_vec();
        wire.extend_from_slice(b"{]");
        assert!(read_frame::<ToHost>(&mut wire.as_slice()).is_err());
    }
}
