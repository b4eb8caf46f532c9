//! The config types as JSON, for the one-container view's `config` (`GET
//! /v1/containers/{name}`): each value as the file writes it.

use serde::{Serialize, Serializer};

use super::{ContainerConfig, ContainerName, Fraction, Millis, SocketName};
use crate::sockets::Address;

impl ContainerConfig {
    /// This entry, as resolved (defaults filled in), as JSON.
    pub fn entry_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("cannot show this entry: {e}") }),
        )
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl Serialize for Fraction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl Serialize for ContainerName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Serialize for SocketName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::Config;

    #[test]
    fn an_entry_shows_as_the_file_wrote_it_with_defaults() {
        let config = Config::parse(
            "[containers.web]\nplugin = \"http-echo\"\nconfig = { port = 8080 }\n\
             restart = \"always\"\nrequires = [\"db\"]\nlisten = { http = \"127.0.0.1:0\" }\n\
             backoff = { jitter = 0.5, max_ms = 2000 }\n\
             [containers.db]\nplugin = \"chaos\"\n",
        )
        .expect("a valid config");
        let web = config.containers.values().next().expect("web").entry_json();
        assert_eq!(web["plugin"], "http-echo");
        assert_eq!(web["config"], json!({ "port": 8080 }));
        assert_eq!(web["restart"], "always");
        assert_eq!(web["requires"], json!(["db"]));
        assert_eq!(web["listen"], json!({ "http": "127.0.0.1:0" }));
        assert_eq!(web["backoff"]["jitter"], 0.5);
        assert_eq!(web["backoff"]["max_ms"], 2000);
        assert_eq!(web["liveness"]["disabled"], false);
        assert_eq!(web["isolation"], serde_json::Value::Null);
    }
}
