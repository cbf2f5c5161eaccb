//! The admission rules a server runs unless its [`crate::Config`] says otherwise. The mechanism
//! (what a rule sees, may do, and what is atomic) is the object layer's, `objects/admission.rs`;
//! this module holds rules.
//!
//! - [`fence`]: a write from an ended life of a sled is refused (fence tokens).

pub mod fence;

use crate::objects::Admission;

/// Every rule a server runs by default, in order: the fence-token rules.
pub fn defaults() -> Admission {
    Admission::new(fence::rules())
}
