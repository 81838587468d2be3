//! Any bytes through the command line framer and parser: no panic, and a
//! framed line never contains CR, LF or NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_shaper::smtp::command::parse;
use smtp_shaper::smtp::line::{Framed, next_line};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        match next_line(rest, 512) {
            Framed::Incomplete => break,
            Framed::Bad { consumed, .. } => rest = &rest[consumed.max(1).min(rest.len())..],
            Framed::Line { len, consumed } => {
                let line = &rest[..len];
                assert!(!line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
                let _ = parse(line);
                rest = &rest[consumed..];
            }
        }
    }
});
