//! Admission: the last word on a client's write before it is stored. Every registered rule sees
//! the object a create, replace, patch or apply would store — defaulted, validated, with its
//! managedFields — next to the stored object it replaces, and may refuse the write with a
//! Kubernetes `Status`.
//!
//! A write is *admitted* if (and only if) every rule of the server's [`Admission`] list, run in
//! order, lets it through; the first refusal is the reply and nothing is stored.
//!
//! # What a rule may do
//!
//! - Read the request: the kind, the subresource, the [`Verb`], the stored object (`old`, none
//!   for a create) and the object that would be stored (`new`).
//! - Read other objects through [`AdmissionRequest::objects`]: the store read a GET makes,
//!   consistent at the moment of the read.
//! - Refuse, with an [`ApiError`] that names the field (`details.causes`).
//!
//! # What a rule may not do
//!
//! - Write anything, or change the object: admission is pure refusal. A rule that wants a
//!   default is schema defaulting's business, not admission's.
//! - Keep state between calls: several API servers may share one store, and each runs its own
//!   rules.
//!
//! # What is atomic
//!
//! - A check of `new` against `old` is inside the same compare-and-swap as the write: `old` is
//!   the object at the revision the store write is conditional on, so if the write lands, the
//!   check was made against what it replaced. (A create is conditional on the key being absent.)
//! - A read of *another* object is not: that object may change between the read and the write.
//!   A rule that reads one must say why a decision made on a value that was current a moment
//!   before the write is acceptable (the fence-token rules do, `admission/fence.rs`).
//!
//! # Invariants
//!
//! - A refused write changes nothing: admission runs before the store write (and before the
//!   answer of a dry run), and its refusal is never retried as a lost race.
//! - A write that would change nothing is admitted like any other (`new` is the stored object):
//!   a client learns of a refusal even when its write was a repeat.
//! - With no rule, every write is admitted: the server behaves as without this step.
//!
//! # Not responsible for
//!
//! - Deletes, and the server's own writes (`mutate`: the garbage collector, the namespace
//!   finalizer): they store nothing a client computed.
//! - Schema validation and metadata rules: `pipeline.rs`, before admission.

use std::sync::Arc;

use serde_json::Value;

use super::subresource::Subresource;
use crate::error::{ApiResult, Target};
use crate::object;
use crate::resource::ResourceType;

/// What a client's write asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// POST. (A server-side apply that creates the object is [`Verb::Apply`] with no `old`.)
    Create,
    /// PUT.
    Update,
    /// A merge or JSON patch.
    Patch,
    /// A server-side apply.
    Apply,
}

/// One write as the rules see it.
pub struct AdmissionRequest<'a> {
    pub resource: &'a ResourceType,
    pub subresource: Option<Subresource>,
    pub verb: Verb,
    /// The stored object the write replaces, at the revision the write is conditional on;
    /// `None` for a create.
    pub old: Option<&'a Value>,
    /// The object the write would store.
    pub new: &'a Value,
    /// Reads of other objects (see the module docs on what is atomic).
    pub objects: &'a dyn ReadObjects,
    /// Who asked for the write (`None` for writes no client made).
    pub user: Option<&'a crate::auth::User>,
}

impl AdmissionRequest<'_> {
    /// The object written, as errors name it.
    pub fn target(&self) -> Target {
        self.resource.target(object::name(self.new))
    }

    /// Whether this write is to the status subresource of an object of `group`/`plural`.
    pub fn is_status_of(&self, group: &str, plural: &str) -> bool {
        self.subresource == Some(Subresource::Status)
            && self.resource.group == group
            && self.resource.plural == plural
    }
}

/// Reads of objects for admission rules: a consistent store read, as a GET makes.
#[async_trait::async_trait]
pub trait ReadObjects: Send + Sync {
    /// The object `name` (in `namespace`, for a namespaced kind) of the kind `group`/`plural`,
    /// if it exists; `None` too when the server serves no such kind.
    async fn read_object(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>>;
}

/// One admission rule. See the module docs for what it may and may not do.
#[async_trait::async_trait]
pub trait AdmissionRule: Send + Sync {
    /// A short name, for logs and `Debug`.
    fn name(&self) -> &'static str;

    /// Lets the write through (`Ok`) or refuses it with the `Status` the client gets.
    async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()>;
}

/// The rules a server runs, in order. Cheap to clone.
#[derive(Clone, Default)]
pub struct Admission {
    rules: Vec<Arc<dyn AdmissionRule>>,
}

impl Admission {
    /// No rule: every write is admitted.
    pub fn none() -> Admission {
        Admission::default()
    }

    /// These rules, run in this order.
    pub fn new(rules: Vec<Arc<dyn AdmissionRule>>) -> Admission {
        Admission { rules }
    }

    /// This list with `rule` run after the others.
    pub fn with(mut self, rule: Arc<dyn AdmissionRule>) -> Admission {
        self.rules.push(rule);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs every rule in order; the first refusal is the answer.
    pub async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()> {
        for rule in &self.rules {
            rule.admit(request).await.inspect_err(|refusal| {
                tracing::debug!(
                    rule = rule.name(),
                    resource = %request.target().qualified_resource(),
                    name = %object::name(request.new),
                    %refusal,
                    "admission refused a write"
                );
            })?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|rule| rule.name()))
            .finish()
    }
}
