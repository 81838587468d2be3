//! Tests that could not run here, listed when the test binary exits. libtest
//! shows what a test prints only when it fails, so a "SKIPPED" line from a
//! passing test is invisible in a plain `cargo test`; the list, written
//! straight to stderr (not through the captured `eprintln!`) after the
//! results, is not.

use std::io::Write;
use std::sync::{Mutex, Once, PoisonError};

static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LIST_AT_EXIT: Once = Once::new();

/// A third-party tool a test needs is missing: says SKIPPED (with how to
/// install it), or fails under SMTP_SHAPER_REQUIRE_TOOLS=1 (CI).
pub fn skip_without(what: &str, install: &str) {
    assert!(
        std::env::var("SMTP_SHAPER_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{what} is required (SMTP_SHAPER_REQUIRE_TOOLS=1) but missing: {install}"
    );
    skipped(&format!("{what} is missing ({install})"));
}

/// The calling test (or a part of it) does not run, for the reason `why`:
/// said now (seen with `--nocapture`) and in the list at exit.
pub fn skipped(why: &str) {
    eprintln!("SKIPPED: {why}");
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    SKIPPED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(format!("{test}: {why}"));
    LIST_AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no arguments, which the C
        // library calls once at exit; libtest exits through `exit` both
        // when the tests pass (returning from main) and when they fail.
        unsafe { libc::atexit(list_skipped) };
    });
}

/// At exit: every skip, one a line, on stderr.
extern "C" fn list_skipped() {
    let mut skipped = SKIPPED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    skipped.sort();
    let mut text = format!(
        "\nSKIPPED {} (passed without running what needs it; \
         SMTP_SHAPER_REQUIRE_TOOLS=1 makes a missing tool a failure):\n",
        skipped.len()
    );
    for line in &skipped {
        text.push_str(&format!("  {line}\n"));
    }
    // Nothing to do about a closed stderr at exit.
    let _ = std::io::stderr().write_all(text.as_bytes());
}
