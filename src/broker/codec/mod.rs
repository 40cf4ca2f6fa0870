//! MQTT 3.1.1 and 5.0 wire codec: bytes to [`Packet`] and back, with no I/O.
//!
//! - [`decode`] takes one packet off the front of a buffer. An incomplete packet is `Ok(None)`
//!   (read more bytes), never an error. A packet announced larger than the limit fails as soon as
//!   its fixed header is read, so the buffer never grows past the limit.
//! - [`encode`] appends one packet to a buffer.
//!
//! Payloads and topics are sliced out of the read buffer without copying (`Bytes`).

mod decode;
mod encode;
mod error;
mod packet;

pub use decode::decode;
pub use encode::{encode, encoded_len, publish_len};
pub use error::DecodeError;
pub use packet::*;
