//! The container list as `GET /v1/containers` serves it: rendered piecewise and cached
//! per board version, with isolated containers' process figures read at each request.

use std::borrow::Cow;

use axum::body::Bytes;

use crate::isolation::figures;
use crate::model::ContainerStatus;

/// The last rendering of the container list: the board version it shows, the whole body,
/// and each container's JSON with the status it was made from.
#[derive(Default)]
pub(super) struct ListCache {
    version: Option<u64>,
    pub(super) body: Bytes,
    parts: Vec<(ContainerStatus, Vec<u8>)>,
}

impl ListCache {
    /// Brings the rendering up to `version` of `containers`, serializing again only the
    /// containers that changed: with 1,000 containers and a probe result every few
    /// milliseconds, most changes touch one of them.
    ///
    /// Isolated containers' process figures are read at each request: a board with any
    /// of them is rendered again each time (only the containers whose figures changed).
    pub(super) fn update(
        &mut self,
        version: u64,
        containers: &[ContainerStatus],
    ) -> serde_json::Result<()> {
        let live = containers.iter().any(|c| c.process.is_some());
        if self.version == Some(version) && !live {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(containers.len());
        let mut old = std::mem::take(&mut self.parts).into_iter();
        for status in containers {
            let fresh = with_figures(status);
            let status = &*fresh;
            // The board keeps containers in registration order, so an unchanged one is at
            // the same place as last time.
            let part = match old.next() {
                Some((cached, json)) if cached == *status => (cached, json),
                _ => (status.clone(), serde_json::to_vec(status)?),
            };
            parts.push(part);
        }
        let mut body =
            Vec::with_capacity(parts.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"containers\":[");
        for (i, (_, json)) in parts.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json);
        }
        body.extend_from_slice(b"]}");
        self.parts = parts;
        self.body = Bytes::from(body);
        self.version = Some(version);
        Ok(())
    }
}

/// `status` with its process's figures as of now, if it is an isolated live instance.
pub(super) fn with_figures(status: &ContainerStatus) -> Cow<'_, ContainerStatus> {
    match status.process {
        Some(process) => {
            let mut fresh = status.clone();
            // A process that just ended keeps its pid (with zeroes) until the board says.
            fresh.process = Some(figures::of(process.pid).unwrap_or(process));
            Cow::Owned(fresh)
        }
        None => Cow::Borrowed(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::model::State;

    fn status(name: &str) -> ContainerStatus {
        ContainerStatus::registered(name, "chaos", Vec::new(), crate::model::Isolation::Thread)
    }

    /// What serializing the whole list at once gives.
    fn whole(containers: &[ContainerStatus]) -> serde_json::Value {
        json!({ "containers": containers })
    }

    #[test]
    fn the_list_rendered_piecewise_is_the_list() {
        let mut cache = ListCache::default();
        let mut containers: Vec<ContainerStatus> =
            ["a", "b", "c"].into_iter().map(status).collect();
        let check = |cache: &ListCache, containers: &[ContainerStatus]| {
            let body: serde_json::Value =
                serde_json::from_slice(&cache.body).expect("the list is JSON");
            assert_eq!(body, whole(containers));
        };
        cache.update(1, &containers).expect("renders");
        check(&cache, &containers);

        containers[1].state = State::Running;
        containers[1].last_error = Some("a \"quoted\" reason".to_owned());
        cache.update(2, &containers).expect("renders");
        check(&cache, &containers);

        // The same version is not rendered again, even if handed other content.
        let before = cache.body.clone();
        cache.update(2, &[]).expect("renders");
        assert_eq!(cache.body, before);

        containers.remove(0);
        containers.push(status("d"));
        cache.update(3, &containers).expect("renders");
        check(&cache, &containers);

        cache.update(4, &[]).expect("renders");
        check(&cache, &[]);
    }
}
