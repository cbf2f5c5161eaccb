//! The object layer: every change the server makes to an object — create, replace, patch and
//! server-side apply, delete, and the server's own read-modify-write — in one place, with no
//! HTTP in it.
//!
//! Handlers decode a request into a [`WriteContext`] (or an [`ObjectRef`] and
//! [`DeleteOptions`]) and a body, call one operation here, and render what it returns; the
//! garbage collector calls [`delete`] and [`mutate`], and start-up [`ensure_namespace`].
//!
//! Every client write goes through the same steps, in Kubernetes' order: type meta →
//! unknown-field check (`fieldValidation`) → server-owned metadata → defaulting → validation
//! (schema and metadata) → field-manager bookkeeping → no-op check → object limits → admission
//! (the server's rules, `admission.rs`) → conditional store write.
//!
//! # Invariants
//!
//! - Every store write is conditional on the revision it was computed from: a create on the
//!   key being absent, an update or delete on the revision it read. A read-modify-write that
//!   loses a race is recomputed from a fresh read (patch, delete, mutate) or refused with
//!   `Conflict` (replace, whose revision the client named).
//! - `generation` rises exactly when something outside `metadata` and `status` changes, and
//!   once when deletion starts; status writes never bump it.
//! - A write that changes nothing gets the current object back: no new revision, no event.
//! - `dryRun=All` runs every step but the store write.
//! - Nothing is stored that is nested deeper or is larger than `Config::object_limits`
//!   (checked on the object as it would be stored, before admission): every stored object can
//!   be read back by the store's decoder, the watch cache and every `serde_json` client.
//! - Nothing is stored that an admission rule refused; a refusal is never retried.
//! - An object whose deletion has started and whose last finalizer is removed is deleted.
//!
//! # Assumptions
//!
//! - Several API servers may write the same objects at once: nothing here keeps state
//!   between calls, and the store's conditions are the only arbiter.
//! - The watch cache may lag the store; it is read only where a stale answer is safe (the
//!   replace fast path, whose write is conditional, and namespace admission, see
//!   `namespace.rs`).
//!
//! # Not responsible for
//!
//! - Paths, bodies, content types, status codes and headers: `handlers`.
//! - Reads, lists and watches: `handlers` over the store and the watch cache.
//! - Deciding what to collect and when: the garbage collector (`gc.rs`).

mod admission;
mod context;
mod create;
mod delete;
mod managed_fields;
mod mutate;
mod namespace;
mod patch;
mod pipeline;
mod subresource;
mod update;

pub use admission::{Admission, AdmissionRequest, AdmissionRule, ReadObjects, Verb};
pub use context::{ObjectRef, Warnings, WriteContext, WriteKind, Written};
pub use create::create;
pub use delete::{DeleteOptions, Deleted, FOREGROUND, ORPHAN, Propagation, delete};
pub use mutate::mutate;
pub use namespace::ensure_namespace;
pub use patch::{Patch, patch};
pub use subresource::Subresource;
pub use update::replace;
