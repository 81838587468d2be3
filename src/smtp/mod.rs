//! SMTP protocol pieces with no I/O: command parsing, command-line framing,
//! the DATA receiver, dot-stuffing, replies, header fields and the trace
//! header.
//!
//! Everything here works on byte slices and returns values, so the hard edges
//! (line limits, bare CR/LF, SMTP smuggling) are tested exhaustively without a
//! socket.

pub mod command;
pub mod data;
pub mod dsn;
pub mod header;
pub mod line;
pub mod reply;
pub mod trace;

pub use command::{Body, Command, CommandError, MailParams};
pub use data::{DataError, DataReceiver, dot_stuff};
pub use line::{LineError, next_line};
pub use reply::Reply;
