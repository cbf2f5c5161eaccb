//! Pure Kubernetes API machinery for the API server: everything about objects that needs no
//! I/O, so it can be unit-tested table-style and property-tested.
//!
//! - [`labels`] and [`fields`]: selector parsing and matching.
//! - [`patch`]: RFC 7386 merge patch and RFC 6902 JSON patch with Kubernetes' semantics.
//! - [`limits`]: how deep and how large an object may be.
//! - [`validation`]: names, label keys and values, field-error values.
//! - [`schema`]: structural `openAPIV3Schema` — validation, defaulting, pruning of unknown fields.
//! - [`managed`]: server-side apply — field sets, `managedFields`, conflicts.
//! - [`jsonpath`]: the JSONPath subset used by printer columns and selectable fields.
//! - [`duration`]: human ages for Table date cells.
//!
//! **Architecture invariant:** this crate does no I/O and knows no Corral kind; it would serve
//! any custom resource.

pub mod duration;
pub mod fields;
pub mod jsonpath;
pub mod labels;
pub mod limits;
pub mod managed;
pub mod patch;
pub mod schema;
pub mod validation;
