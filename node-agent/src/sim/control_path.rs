//! The control path of a simulated sled: the agent's API client, as the simulator wires it
//! ([`ControlPath::client`]), so that the sled can be cut off from the API server or hang.
//!
//! # Guarantees
//! - *Partitioned*: every request fails at once, as a dropped connection would, and every
//!   response body under way (a watch) breaks at once. Nothing reaches the API server.
//! - *Frozen* (the whole sled hangs): a request waits, unsent, until the sled resumes, and a
//!   response body under way delivers nothing until then. A frozen sled that is powered off
//!   never sends what it waited to send: its agent dies first (`power.rs`).
//!
//! # Not responsible for
//! The agent's other doors (its hypervisor, its HTTP API): the machine and the sled's router
//! hang them (`machine.rs`, `power.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::http::Request;
use tower::BoxError;

use crate::sim::switch::Switch;

/// A request to the API server of a partitioned sled.
#[derive(Debug, thiserror::Error)]
#[error("the sled is cut off from the API server (a simulated partition)")]
pub struct Partitioned;

/// The switches between a sled's agent and the API server.
#[derive(Clone, Debug, Default)]
pub struct ControlPath {
    pub partitioned: Switch,
    pub frozen: Switch,
}

impl ControlPath {
    /// `client`, with every request and response passing this control path.
    pub fn client(&self, client: kube::Client) -> kube::Client {
        let namespace = client.default_namespace().to_string();
        let path = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let client = client.clone();
            let path = path.clone();
            async move {
                path.frozen.off().await;
                if path.partitioned.is_on() {
                    return Err(BoxError::from(Partitioned));
                }
                let response = client.send(request).await?;
                Ok::<_, BoxError>(response.map(|body| GatedBody::new(body, path)))
            }
        });
        kube::Client::new(service, namespace)
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that breaks when the partition starts and stalls while the sled hangs.
struct GatedBody {
    inner: kube::client::Body,
    partition_starts: Wait,
    thawed: Option<Wait>,
    frozen: Switch,
}

impl GatedBody {
    fn new(inner: kube::client::Body, path: ControlPath) -> GatedBody {
        let partitioned = path.partitioned.clone();
        GatedBody {
            inner,
            partition_starts: Box::pin(async move { partitioned.on().await }),
            thawed: None,
            frozen: path.frozen,
        }
    }
}

impl Body for GatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.partition_starts.as_mut().poll(context).is_ready() {
            return Poll::Ready(Some(Err(BoxError::from(Partitioned))));
        }
        if self.frozen.is_on() || self.thawed.is_some() {
            let frozen = self.frozen.clone();
            let thawed = self
                .thawed
                .get_or_insert_with(|| Box::pin(async move { frozen.off().await }));
            ready!(thawed.as_mut().poll(context));
            self.thawed = None;
        }
        Pin::new(&mut self.inner)
            .poll_frame(context)
            .map_err(BoxError::from)
    }
}
