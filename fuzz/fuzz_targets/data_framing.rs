//! Any bytes as a DATA stream, fed in two chunks: no panic; an accepted
//! body, dot-stuffed as the relay emits it, reads back as the same body
//! (nothing can end DATA early or smuggle a second message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_shaper::smtp::{DataReceiver, dot_stuff};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize) % (data.len() + 1);
    let mut receiver = DataReceiver::new(1 << 20);
    let ended = match receiver.feed(&data[..split]) {
        Some(_) => true,
        None => receiver.feed(&data[split..]).is_some(),
    };
    if !ended {
        return;
    }
    if let Ok(body) = receiver.finish() {
        let mut wire = Vec::new();
        dot_stuff(&body, &mut wire);
        let mut again = DataReceiver::new(1 << 20);
        let consumed = again.feed(&wire).expect("the emitted DATA ends");
        assert_eq!(consumed, wire.len(), "ends exactly at the terminator");
        assert_eq!(again.finish().expect("emitted DATA is valid"), body);
    }
});
