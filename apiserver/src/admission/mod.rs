//! The admission rules a server runs unless its [`crate::Config`] says otherwise. The mechanism
//! (what a rule sees, may do, and what is atomic) is the object layer's, `objects/admission.rs`;
//! this module holds rules.
//!
//! - [`fence`]: a write from an ended life of a sled is refused (fence tokens).
//! - [`annotations`]: an annotation Corral reads as a setting must hold a value it can use.

pub mod annotations;
pub mod fence;

use crate::objects::Admission;

/// Every rule a server runs by default, in order: the fence-token rules, then the annotations.
pub fn defaults() -> Admission {
    let mut rules = fence::rules();
    rules.extend(annotations::rules());
    Admission::new(rules)
}
