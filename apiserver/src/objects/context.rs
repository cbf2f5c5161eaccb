//! What an operation of the object layer acts on and what it gives back: the object's
//! address ([`ObjectRef`]), the client's intent beyond the body ([`WriteContext`]), and the
//! written object with its warnings ([`Written`]).
//!
//! # Assumptions
//!
//! - A context's version is one its kind serves (routing checked it): [`WriteContext::version`]
//!   relies on it.

use corral_apimachinery::limits;
use serde_json::Value;

use super::admission::{AdmissionRequest, ReadObjects, Verb};
use super::subresource::Subresource;
use crate::error::{ApiError, ApiResult, Target};
use crate::object::{self, Stored};
use crate::query::FieldValidation;
use crate::resource::{ResourceType, Version};
use crate::server::ApiServer;

/// How many times a read-modify-write (patch, delete, mutate) is recomputed from a fresh read
/// when another write got in first.
pub(super) const CONFLICT_RETRIES: usize = 16;

/// One object of one kind on one server: where every operation of the layer reads and writes.
#[derive(Clone, Copy)]
pub struct ObjectRef<'a> {
    pub server: &'a ApiServer,
    pub resource: &'a ResourceType,
    /// The namespace of a namespaced kind's object; `None` for cluster-scoped kinds.
    pub namespace: Option<&'a str>,
    /// Empty for a create that has no name yet.
    pub name: &'a str,
}

impl ObjectRef<'_> {
    /// The object's store key.
    pub fn key(&self) -> String {
        self.resource.key(self.namespace, self.name)
    }

    /// The object as errors name it.
    pub fn target(&self) -> Target {
        self.resource.target(self.name)
    }

    /// The object as stored now, if it exists (a read of the store, not of the cache).
    pub async fn read(&self) -> ApiResult<Option<Stored>> {
        let kv = self
            .server
            .store
            .get(&self.key())
            .await
            .map_err(|e| ApiError::from_store(e, &self.target()))?;
        kv.map(|kv| {
            object::decode(&kv).map_err(|e| ApiError::internal("stored object is corrupt", &e))
        })
        .transpose()
    }
}

#[async_trait::async_trait]
impl ReadObjects for ApiServer {
    async fn read_object(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let Some(resource) = self.registry.lookup(group, plural) else {
            return Ok(None);
        };
        let object_ref = ObjectRef {
            server: self,
            resource,
            namespace,
            name,
        };
        Ok(object_ref.read().await?.map(|stored| stored.object))
    }
}

/// A client's write to one object: where it goes and how, everything but the body.
pub struct WriteContext<'a> {
    pub object: ObjectRef<'a>,
    /// The version the client speaks (bodies in, objects out).
    pub version: &'a str,
    pub subresource: Option<Subresource>,
    /// Who `managedFields` records as making the write.
    pub field_manager: String,
    /// `fieldValidation` as the client sent it; read (and refused if unsupported) only when a
    /// body has unknown fields.
    pub field_validation: Option<&'a str>,
    /// `dryRun=All`: every step runs but the store write.
    pub dry_run: bool,
    /// Who asks (node restriction and RBAC's escalation checks read it, `authz`).
    pub user: Option<&'a crate::auth::User>,
}

impl<'a> WriteContext<'a> {
    pub fn resource(&self) -> &'a ResourceType {
        self.object.resource
    }

    /// The client's version of the kind.
    pub fn version(&self) -> &'a Version {
        self.object
            .resource
            .version(self.version)
            .expect("version was checked when routing")
    }

    /// The client's `apiVersion`.
    pub fn api_version(&self) -> String {
        self.object.resource.api_version(self.version)
    }

    pub fn key(&self) -> String {
        self.object.key()
    }

    pub fn target(&self) -> Target {
        self.object.target()
    }

    pub(super) fn field_validation(&self) -> ApiResult<FieldValidation> {
        FieldValidation::parse(self.field_validation)
    }

    /// Checks `new`, the object this write would store in place of `old` (`None` for a
    /// create), against the server's object limits ([`WriteContext::check_limits`]), then
    /// runs the server's admission rules (`admission.rs`) on it.
    pub(super) async fn admit(
        &self,
        verb: Verb,
        old: Option<&Value>,
        new: &Value,
    ) -> ApiResult<()> {
        let server = self.object.server;
        self.check_limits(new)?;
        let request = AdmissionRequest {
            resource: self.resource(),
            subresource: self.subresource,
            verb,
            old,
            new,
            objects: server,
            user: self.user,
        };
        crate::authz::admit(server, &request).await?;
        server.config.admission.admit(&request).await
    }

    /// Refuses (422 `Invalid`, naming the field) an object nested deeper or larger than the
    /// server's object limits: nothing is stored that the store's decoder, the watch cache or a
    /// `serde_json` client could not read back, inside a list or a Table too
    /// (`corral_apimachinery::limits`).
    fn check_limits(&self, object: &Value) -> ApiResult<()> {
        let limits = self.object.server.config.object_limits;
        match limits::object_violation(object, limits) {
            None => Ok(()),
            Some(error) => Err(ApiError::invalid(
                &self.resource().target(object::name(object)),
                &[error],
            )),
        }
    }

    /// `object` with the `apiVersion` and `kind` the client speaks.
    pub(super) fn present(&self, object: Value) -> Value {
        self.object.resource.present(self.version, object)
    }
}

/// Warnings for the client (unknown fields under `fieldValidation=Warn`).
#[derive(Default)]
pub struct Warnings(pub Vec<String>);

/// Whether a write made the object or changed (or kept) an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Created,
    Updated,
}

/// What a create or update did: the object as stored (or as it would be, on a dry run), with
/// its resourceVersion.
pub struct Written {
    pub object: Value,
    pub kind: WriteKind,
    pub warnings: Warnings,
}

impl Written {
    pub(super) fn new(object: Value, kind: WriteKind, warnings: Warnings) -> Written {
        Written {
            object,
            kind,
            warnings,
        }
    }
}
