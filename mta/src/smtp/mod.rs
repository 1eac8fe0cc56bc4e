//! SMTP submission: STARTTLS, then AUTH, then mail, on every SMTP port.
//!
//! - [`conn`]: the buffered stream, lines and pipelined replies.
//! - [`data`]: the DATA reader (dot-unstuffing, size, line rules).
//! - [`session`]: the command state machine, generic over the stream so
//!   tests drive it on in-memory pipes.
//! - [`listener`]: accept loop and connection caps.

pub mod conn;
pub mod data;
pub mod listener;
pub mod session;

pub use listener::serve;
