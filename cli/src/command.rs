//! What every command shares: where it writes ([`Terminal`]), what it reports back to the
//! binary ([`Outcome`]), and how corralctl marks the objects it writes ([`FIELD_MANAGER`],
//! [`APPLIED_BY_ANNOTATION`]).
//!
//! A leaf: the commands and the dispatch in `cli.rs` use it, and it uses nothing of the crate.

/// The field manager of every write corralctl makes.
pub const FIELD_MANAGER: &str = "corralctl";

/// The annotation `apply` puts on every object it applies, so that `apply --prune` deletes only
/// objects corralctl applied (never those a controller or another tool created).
pub const APPLIED_BY_ANNOTATION: &str = "corral.dev/applied-by";

/// Whether a command did what it was asked. Failures of single items (one document of many,
/// one name of several) are printed where they happen and make the command a [`Outcome::Failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    /// `Failed` if either is.
    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::Failed || other == Outcome::Failed {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        }
    }
}

/// Where a command writes: results to `out`, per-item errors and notes to `err`.
pub struct Terminal<'a> {
    pub out: &'a mut dyn std::io::Write,
    pub err: &'a mut dyn std::io::Write,
}
