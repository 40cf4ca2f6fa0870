//! A bounds-checked cursor over one packet body: the MQTT data representations (3.1.1 §1.5,
//! 5.0 §1.5) read without copying, every overrun reported as a malformed packet.

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use super::DecodeError;

/// A cursor over one packet body (or one property block), named after its packet for errors.
pub(super) struct Reader {
    data: Bytes,
    pos: usize,
    pub(super) packet: &'static str,
}

impl Reader {
    pub(super) fn new(data: Bytes, packet: &'static str) -> Reader {
        Reader {
            data,
            pos: 0,
            packet,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(super) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
        }
    }

    /// Checks a remaining length that the spec fixes, before reading anything.
    pub(super) fn expect_len(&self, expected: usize) -> Result<(), DecodeError> {
        if self.remaining() != expected {
            return Err(DecodeError::InvalidRemainingLength {
                packet: self.packet,
                expected,
                actual: self.remaining(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes: [u8; N] = self
            .data
            .get(self.pos..self.pos + N)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.truncated())?;
        self.pos += N;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Variable Byte Integer, at most 4 bytes (5.0 §1.5.5, 3.1.1 §2.2.3).
    pub(super) fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong { field })
    }

    /// The next `n` bytes, zero copy.
    pub(super) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let bytes = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(bytes)
    }

    /// A reader over the next `n` bytes, which it consumes from this one.
    pub(super) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?, self.packet))
    }

    /// Binary Data: two-byte length then the bytes (5.0 §1.5.6).
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 Encoded String: well-formed and without U+0000 [MQTT-1.5.3-1], [MQTT-1.5.3-2].
    pub(super) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        let string = ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if string.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(string)
    }

    /// Everything left (a PUBLISH payload, SUBACK codes). Hands over the buffer itself rather
    /// than a slice of it, which saves a reference count increment and decrement.
    pub(super) fn rest(&mut self) -> Bytes {
        let mut bytes = std::mem::take(&mut self.data);
        bytes.advance(self.pos);
        self.pos = 0;
        bytes
    }

    /// Every byte must have been read.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra,
            }),
        }
    }
}
