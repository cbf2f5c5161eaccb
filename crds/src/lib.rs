//! Corral's API types. Every kind lives in the API group [`GROUP`] at version [`VERSION`];
//! the CustomResourceDefinition YAML in this directory is what the API server serves.

/// The API group of every Corral kind.
pub const GROUP: &str = "corral.dev";
/// The served and stored version of every Corral kind.
pub const VERSION: &str = "v1alpha1";
