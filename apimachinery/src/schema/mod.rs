//! Structural schemas: a CRD version's `openAPIV3Schema`, used as the apiextensions-apiserver
//! uses it to prune, default and validate custom resources.
//!
//! - [`Structural::from_value`] parses the schema once (compiling `pattern`s), rejecting what
//!   cannot be used (wrong JSON types of keywords, `$ref`, tuple `items`, invalid regexes) and
//!   ignoring keywords that do not affect objects (`description`, `example`, …).
//! - [`Structural::prune`] removes fields the schema does not specify and returns their paths
//!   in strict-decoding form, sorted (`spec.foo`, `spec.items[0].bar`, `metadata.bogus`).
//! - [`Structural::apply_defaults`] drops `null`s the schema does not allow (unless defaulted)
//!   and fills in `default`s, recursively.
//! - [`Structural::validate`] checks an object against the schema, with kube-openapi's messages
//!   converted to [`FieldError`]s as the apiserver converts them, plus list-type
//!   (`x-kubernetes-list-type: set|map`) uniqueness and embedded-resource checks.
//!
//! The parsed schema and its parser are `structural.rs`; each operation is a module of its own
//! (`prune.rs`, `defaults.rs`, `validate.rs` with `listtype.rs`, `embedded.rs` and `formats.rs`)
//! that reads the schema's fields there. This module only names the operations.
//!
//! A field is *known* if (and only if) the schema at its parent lists it under `properties`,
//! the parent has an `additionalProperties` schema (or `true`), or the parent, or an ancestor
//! reached only through such known fields, has `x-kubernetes-preserve-unknown-fields: true`.
//! At the root, and in every `x-kubernetes-embedded-resource` object, `apiVersion`, `kind` and
//! `metadata` are always known, and inside that `metadata` exactly the fields of `ObjectMeta`.
//!
//! **Invariants:**
//! - Pruning never removes a known field, and after pruning, pruning again removes nothing.
//! - Nothing here panics on any object; malformed objects produce errors, not panics.
//!
//! **Not supported:** `x-kubernetes-validations` (CEL) rules are accepted but not evaluated;
//! [`Structural::uses_cel`] tells the server so it can warn. Formats `isbn*` and `creditcard`
//! are not checked. Regexes are Rust's `regex`, close to Go's RE2 except that `\d`, `\w`, `\s`
//! and `\b` are Unicode-aware.
//!
//! **Not responsible for:** the root `metadata` rules (see
//! [`crate::validation::validate_object_meta`]); checking that the schema itself is a valid
//! structural schema (the CRD author's, and the CRD registration's, job).

mod defaults;
mod embedded;
mod formats;
mod listtype;
mod prune;
mod structural;
#[cfg(test)]
mod test_support;
mod validate;

pub use structural::{JsonType, SchemaError, Structural};

use crate::validation::FieldError;
use serde_json::Value;

/// What a schema does to objects: each operation lives in its own module and reads the parsed
/// schema (`structural`).
impl Structural {
    /// Removes the fields of `object` that the schema does not know and returns their paths,
    /// sorted, as strict decoding reports them (`spec.foo`, `spec.items[0].bar`).
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        prune::prune(self, object)
    }

    /// Applies the schema's defaults to `object`: non-nullable `null`s without a default are
    /// removed, missing (or non-nullable `null`) fields with a default get it, recursively,
    /// including inside `items` and `additionalProperties`.
    pub fn apply_defaults(&self, object: &mut Value) {
        defaults::apply_defaults(self, object);
    }

    /// Validates `object` against the schema; empty when it is valid.
    pub fn validate(&self, object: &Value) -> Vec<FieldError> {
        validate::validate(self, object)
    }
}
