//! Any text as a configuration: a list of problems or a config, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_shaper::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
});
