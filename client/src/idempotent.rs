//! "Already done" is success: the one place a client turns the API's answer to a repeated
//! create or delete into the outcome it wanted.
//!
//! A reconciler repeats its steps (it may stop at any `.await` and plan again), so a create of
//! an object it created before answers `409 AlreadyExists`, and a delete or patch of an object
//! already gone answers `404 NotFound`. Both mean the step is done. A `409 Conflict` (a write
//! made from a stale read) is *not* done: the caller must plan again, so it stays an error.
//!
//! # Guarantees
//! - [`Idempotent::or_exists`] maps only `409` with reason `AlreadyExists` to `Ok(None)`.
//! - [`Idempotent::or_gone`] maps only `404` to `Ok(None)`.
//! - [`Idempotent::or_gone_or_replaced`] also maps a `409` to `Ok(None)`: for a delete (or
//!   patch) with a `uid` precondition, a conflict means the name now belongs to another object,
//!   so the one meant is gone.
//! - Every other answer passes through unchanged.

/// Whether `error` is the API's `404 NotFound`.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Whether `error` is the API's `409 AlreadyExists` (a create of a name that is taken).
pub fn is_already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// Whether `error` is a `409` refusing a write made from a stale read (or a failed
/// precondition).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The outcome of an API call whose repetition is success.
pub trait Idempotent<T> {
    /// A create that found the object already there: `Ok(None)`.
    fn or_exists(self) -> Result<Option<T>, kube::Error>;
    /// A call on an object already gone: `Ok(None)`.
    fn or_gone(self) -> Result<Option<T>, kube::Error>;
    /// A call with a `uid` precondition on an object that is gone or was replaced: `Ok(None)`.
    fn or_gone_or_replaced(self) -> Result<Option<T>, kube::Error>;
}

impl<T> Idempotent<T> for Result<T, kube::Error> {
    fn or_exists(self) -> Result<Option<T>, kube::Error> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_already_exists(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn or_gone(self) -> Result<Option<T>, kube::Error> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn or_gone_or_replaced(self) -> Result<Option<T>, kube::Error> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_not_found(&error) || is_conflict(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", reason)
                .with_code(code)
                .boxed(),
        )
    }

    fn outcome(
        result: Result<u8, kube::Error>,
        f: fn(Result<u8, kube::Error>) -> Result<Option<u8>, kube::Error>,
    ) -> Result<Option<u8>, u16> {
        f(result).map_err(|error| match error {
            kube::Error::Api(status) => status.code,
            _ => 0,
        })
    }

    #[test]
    fn a_create_of_a_taken_name_is_done_and_a_stale_write_is_not() {
        let or_exists = |r: Result<u8, kube::Error>| r.or_exists();
        assert_eq!(outcome(Ok(1), or_exists), Ok(Some(1)));
        assert_eq!(
            outcome(Err(api_error(409, "AlreadyExists")), or_exists),
            Ok(None)
        );
        assert_eq!(
            outcome(Err(api_error(409, "Conflict")), or_exists),
            Err(409)
        );
        assert_eq!(
            outcome(Err(api_error(404, "NotFound")), or_exists),
            Err(404)
        );
    }

    #[test]
    fn a_call_on_a_gone_object_is_done() {
        let or_gone = |r: Result<u8, kube::Error>| r.or_gone();
        assert_eq!(outcome(Err(api_error(404, "NotFound")), or_gone), Ok(None));
        assert_eq!(outcome(Err(api_error(409, "Conflict")), or_gone), Err(409));
        assert_eq!(
            outcome(Err(api_error(500, "InternalError")), or_gone),
            Err(500)
        );
        let replaced = |r: Result<u8, kube::Error>| r.or_gone_or_replaced();
        assert_eq!(outcome(Err(api_error(409, "Conflict")), replaced), Ok(None));
        assert_eq!(outcome(Err(api_error(404, "NotFound")), replaced), Ok(None));
        assert_eq!(outcome(Err(api_error(422, "Invalid")), replaced), Err(422));
    }
}
