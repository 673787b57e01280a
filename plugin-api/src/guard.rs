//! The panic boundary. Every function a plugin exports runs inside [`guard`], so a panic in
//! plugin code becomes an error value for the host instead of unwinding across the ABI (which
//! would abort the process).
//!
//! A plugin library carries its own copy of std, whose default panic hook would print the
//! panic to stderr before we catch it: the user would see a multi-line report besides the
//! host's one error line. So, inside a guard, a hook installed once per library records the
//! panic's location instead of printing it, and the location goes into the error text.
//! Outside a guard the previous hook runs as before (this matters when a plugin crate is
//! linked statically into a test binary).

use crate::pool::panic_message;
use abi_stable::std_types::{RResult, RString};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static GUARD_DEPTH: Cell<u32> = const { Cell::new(0) };
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARD_DEPTH.with(Cell::get) > 0 {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is caught without being printed and comes back as
/// `Err("message (at file:line:column)")`.
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_quiet_hook();
    GUARD_DEPTH.with(|d| d.set(d.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARD_DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| {
        let message = panic_message(&*payload);
        match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
            Some(location) => format!("{message} (at {location})"),
            None => message,
        }
    })
}

/// Runs `f`, turning both its `Err` and any panic into `RErr` with `what` as context.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match catch_panic(f) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(msg)) => RResult::RErr(RString::from(format!("{what}: {msg}"))),
        Err(panic) => RResult::RErr(RString::from(format!("{what}: plugin panicked: {panic}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_their_location() {
        let r: RResult<(), RString> = guard("matmul", || panic!("boom {}", 42));
        let e = r.unwrap_err();
        assert!(
            e.starts_with("matmul: plugin panicked: boom 42 (at "),
            "{e}"
        );
        assert!(e.contains("guard.rs:"), "{e}");
        let r = guard("rope", || Err::<(), _>("bad shape".to_string()));
        assert_eq!(r.unwrap_err().as_str(), "rope: bad shape");
        assert_eq!(guard("info", || Ok(7)).unwrap(), 7);
    }
}
