//! The doors of a rack's sleds: the faults injected through each sled's fault API or its power
//! controller (docs/rack.md, "The fault-injection API of a simulated sled"), each written to the
//! fault schedule, and raw requests to either, over TLS as one of the rack's identities.

use std::net::SocketAddr;

use corral_crds::Sled;
use kube::api::Api;

use super::Rack;
use crate::apiserver::request_over_tls;
use crate::tls::ClientTls;

/// Where a sled's faults are injected: its agent's fault API, or its power controller (for
/// what the sled cannot serve itself).
#[derive(Clone, Copy, Debug)]
pub enum SledDoor {
    Agent,
    Power,
}

impl Rack {
    /// A fault of one VMM of `sled` — `crash`, `shutdown`, `kill`, `hang` — the one running
    /// the Vmm `namespace/name` (docs/rack.md, the fault API).
    pub async fn vmm_fault(
        &mut self,
        sled: &str,
        (namespace, name): (&str, &str),
        fault: &str,
    ) -> Result<(), String> {
        let path = format!("/vmms/{namespace}/{name}/{fault}");
        self.sled_fault(
            sled,
            SledDoor::Agent,
            &path,
            &format!("{fault} {namespace}/{name} on"),
        )
        .await
    }

    /// The guest of the Vmm `namespace/name` on `sled` dirties `bytes_per_second` from now on.
    pub async fn vmm_dirty_rate(
        &mut self,
        sled: &str,
        (namespace, name): (&str, &str),
        bytes_per_second: u64,
    ) -> Result<(), String> {
        let path = format!("/vmms/{namespace}/{name}/dirty-rate");
        let body = format!("{{\"bytesPerSecond\":{bytes_per_second}}}");
        let what = format!("{namespace}/{name} dirties {bytes_per_second} B/s on");
        self.sled_fault_with(sled, SledDoor::Agent, (&path, &body), &what)
            .await
    }

    /// Cuts the agent of `sled` off from the API server: every request of its API client fails
    /// at once; its guests run on and its fault API answers.
    pub async fn partition(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(sled, SledDoor::Agent, "/partition", "partition")
            .await
    }

    /// Ends the partition of `sled`.
    pub async fn heal(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(
            sled,
            SledDoor::Agent,
            "/partition/heal",
            "heal the partition of",
        )
        .await
    }

    /// Hangs the whole of `sled` with power on (agent and guests frozen; power off still
    /// works and ends it), through its power controller.
    pub async fn hang(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(sled, SledDoor::Power, "/hang", "hang")
            .await
    }

    /// Ends the hang of `sled`: it continues where it stopped.
    pub async fn resume(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(sled, SledDoor::Power, "/resume", "resume")
            .await
    }

    /// The power controller of `sled` stops answering (`GET/POST .../power` wait until the
    /// caller gives up); the other sleds' still answer.
    pub async fn power_controller_unresponsive(&mut self, sled: &str) -> Result<(), String> {
        let what = "stop answering: the power controller of";
        let path = "/power-controller/stop-answering";
        self.sled_fault(sled, SledDoor::Power, path, what).await
    }

    /// The power controller of `sled` answers again.
    pub async fn power_controller_answers(&mut self, sled: &str) -> Result<(), String> {
        let what = "answer again: the power controller of";
        let path = "/power-controller/answer";
        self.sled_fault(sled, SledDoor::Power, path, what).await
    }

    /// Cuts the power of `sled` through its power controller (its VMMs are gone, its agent
    /// dies with it).
    pub async fn power_off(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(sled, SledDoor::Power, "/power/off", "power off")
            .await
    }

    /// Powers `sled` on through its power controller (a new boot, a new epoch).
    pub async fn power_on(&mut self, sled: &str) -> Result<(), String> {
        self.sled_fault(sled, SledDoor::Power, "/power/on", "power on")
            .await
    }

    /// The agent of `sled` stops renewing its Lease (its guests and everything else go on).
    pub async fn stop_heartbeat(&mut self, sled: &str) -> Result<(), String> {
        let what = "stop the heartbeat of";
        self.sled_fault(sled, SledDoor::Agent, "/heartbeat/stop", what)
            .await
    }

    /// The agent of `sled` renews its Lease again.
    pub async fn resume_heartbeat(&mut self, sled: &str) -> Result<(), String> {
        let what = "resume the heartbeat of";
        self.sled_fault(sled, SledDoor::Agent, "/heartbeat/resume", what)
            .await
    }

    /// What the power controller of `sled` reads (`On` or `Off`), asked directly.
    pub async fn power_reads(&self, sled: &str) -> Result<String, String> {
        let (status, body) = self
            .sled_request(sled, SledDoor::Power, ("GET", "/power", ""), None)
            .await?;
        if status != 200 {
            return Err(format!("reading the power of {sled}: {status} {body}"));
        }
        let answer: serde_json::Value = serde_json::from_str(&body)
            .map_err(|error| format!("reading the power of {sled}: {error}: {body}"))?;
        answer["state"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("reading the power of {sled}: {body}"))
    }

    /// `POST path` on a door of `sled`, recorded in the fault schedule as `what sled`.
    async fn sled_fault(
        &mut self,
        sled: &str,
        door: SledDoor,
        path: &str,
        what: &str,
    ) -> Result<(), String> {
        self.sled_fault_with(sled, door, (path, ""), what).await
    }

    /// [`Rack::sled_fault`] with a JSON body.
    async fn sled_fault_with(
        &mut self,
        sled: &str,
        door: SledDoor,
        (path, body): (&str, &str),
        what: &str,
    ) -> Result<(), String> {
        self.fault(format!("{what} {sled}"));
        let (status, body) = self
            .sled_request(sled, door, ("POST", path, body), None)
            .await?;
        if !(200..300).contains(&status) {
            return Err(format!("{what} {sled}: {status} {body}"));
        }
        Ok(())
    }

    /// `METHOD path` with a JSON body on a door of `sled`, over TLS as `identity` (a
    /// `corral certs` name: `admin`, `controllers`, `node-SLED`; `None`: `admin`). The status
    /// and the body.
    pub async fn sled_request(
        &self,
        sled: &str,
        door: SledDoor,
        (method, path, body): (&str, &str, &str),
        identity: Option<&str>,
    ) -> Result<(u16, String), String> {
        let (address, prefix) = self.door(sled, door).await?;
        let path = format!("{prefix}{path}");
        match identity {
            None => request_over_tls(self.apiserver().tls(), address, method, &path, body).await,
            Some(name) => {
                let tls = ClientTls::from_pki(self.apiserver().pki(), Some(name))?;
                request_over_tls(&tls, address, method, &path, body).await
            }
        }
    }

    /// The address and path prefix of a door of `sled`: where its own process listens, or from
    /// its Sled — the agent's fault API (`status.agentAddress`) or its power controller
    /// (`spec.powerController`), URLs (`https://HOST:PORT/...`; a bare `HOST:PORT` is read too).
    pub async fn door(&self, sled: &str, door: SledDoor) -> Result<(SocketAddr, String), String> {
        // A sled of its own process listens where the rack told it to: no need to ask the API
        // (which may be the thing that is down).
        if let Some(agent) = self.agents.iter().find(|agent| agent.sled == sled) {
            return Ok(match door {
                SledDoor::Agent => (agent.fault, String::new()),
                SledDoor::Power => (agent.power, String::new()),
            });
        }
        let found = Api::<Sled>::all(self.client().clone())
            .get(sled)
            .await
            .map_err(|error| format!("reading sled {sled}: {error}"))?;
        let location = match door {
            SledDoor::Agent => found.status.and_then(|status| status.agent_address),
            SledDoor::Power => found.spec.power_controller,
        };
        let location = location.ok_or_else(|| format!("sled {sled} names no {door:?} address"))?;
        let without_scheme = location
            .split_once("://")
            .map_or(location.as_str(), |(_, rest)| rest);
        let (authority, path) = match without_scheme.split_once('/') {
            Some((authority, path)) => (authority, format!("/{path}")),
            None => (without_scheme, String::new()),
        };
        let address = authority
            .parse()
            .map_err(|error| format!("sled {sled}'s {door:?} address {location:?}: {error}"))?;
        Ok((address, path))
    }
}
