//! The panic boundary. Every function a plugin exports runs inside [`guard`], so a panic in
//! plugin code becomes an error value for the host instead of unwinding across the ABI (which
//! would abort the process).

use crate::pool::panic_message;
use abi_stable::std_types::{RResult, RString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning both its `Err` and any panic into `RErr` with `what` as context.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(msg)) => RResult::RErr(RString::from(format!("{what}: {msg}"))),
        Err(payload) => RResult::RErr(RString::from(format!(
            "{what}: plugin panicked: {}",
            panic_message(&*payload)
        ))),
    }
}
