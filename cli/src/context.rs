//! What every command works with: a client for the API server, the namespace it acts in, and
//! (read on first use) the catalog of served resource types.
//!
//! The namespace is `-n/--namespace` when given, else the kubeconfig context's namespace, else
//! `default` — kubectl's rule (kube-rs' `Client::default_namespace` carries the last two).

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use tokio::sync::OnceCell;

use crate::discovery::{Catalog, ResourceType};
use crate::error::{ApiFailure, Error};

pub struct Context {
    pub client: kube::Client,
    /// The namespace commands act in.
    pub namespace: String,
    /// Whether `-n` named it (a manifest's own namespace must then agree with it).
    pub namespace_explicit: bool,
    catalog: OnceCell<Catalog>,
    /// Who the API server knows this client as, asked on first use.
    user: OnceCell<String>,
}

impl Context {
    /// Connects with the kubeconfig at `kubeconfig`, or the one kubectl would read; every
    /// request names `command` in its `User-Agent` (`corralctl/VERSION (COMMAND)`), which the
    /// API server's audit trail records.
    pub async fn connect(
        kubeconfig: Option<&PathBuf>,
        namespace: Option<&str>,
        command: &str,
    ) -> Result<Context, Error> {
        let agent = format!("corralctl/{} ({command})", env!("CARGO_PKG_VERSION"));
        let client = corral_client::connect_as(kubeconfig.map(|p| p.as_path()), &agent).await?;
        Ok(Context::new(client, namespace))
    }

    pub fn new(client: kube::Client, namespace: Option<&str>) -> Context {
        let namespace_explicit = namespace.is_some();
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        Context {
            client,
            namespace,
            namespace_explicit,
            catalog: OnceCell::new(),
            user: OnceCell::new(),
        }
    }

    /// The user name the API server authenticates this client as (a `SelfSubjectReview`, as
    /// `kubectl auth whoami` asks).
    pub async fn user(&self) -> Result<&str, Error> {
        self.user
            .get_or_try_init(|| async {
                let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
                let review = api
                    .create(&PostParams::default(), &SelfSubjectReview::default())
                    .await
                    .map_err(Error::api("asking the API server who this client is"))?;
                Ok::<_, Error>(
                    review
                        .status
                        .and_then(|status| status.user_info)
                        .and_then(|user| user.username)
                        .unwrap_or_default(),
                )
            })
            .await
            .map(String::as_str)
    }

    /// The served resource types, discovered on first use.
    pub async fn catalog(&self) -> Result<&Catalog, Error> {
        self.catalog
            .get_or_try_init(|| async {
                Catalog::discover(&self.client)
                    .await
                    .map_err(|e| Error::Discovery(ApiFailure(e)))
            })
            .await
    }

    /// The type a user's word names.
    pub async fn resolve(&self, word: &str) -> Result<ResourceType, Error> {
        self.catalog()
            .await?
            .by_name(word)
            .cloned()
            .ok_or_else(|| Error::UnknownResource(word.to_string()))
    }

    /// The API of `resource` in `namespace` (ignored for cluster-scoped types); `None` means
    /// every namespace.
    pub fn api(&self, resource: &ResourceType, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resource.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resource.api_resource)
            }
            _ => Api::all_with(self.client.clone(), &resource.api_resource),
        }
    }

    /// The API of `resource` in the command's namespace.
    pub fn api_here(&self, resource: &ResourceType) -> Api<DynamicObject> {
        self.api(resource, Some(&self.namespace))
    }

    /// What `get` prints for a name that does not exist.
    pub fn not_found(&self, resource: &ResourceType, name: &str) -> String {
        let mut text = format!(
            "Error from server (NotFound): {} {name:?} not found",
            resource.plural_and_group()
        );
        if resource.namespaced {
            text.push_str(&format!(" in namespace {}", self.namespace));
        }
        text
    }
}
